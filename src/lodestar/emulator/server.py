"""One emulated vLLM-compatible engine over HTTP: configuration, lifecycle, routes, faults, crash and restart.

Consumes: an `EmulatorConfig` (GPU, model, engine settings, time scale, faults). Produces: an aiohttp server on
`host:port` with `/v1/completions`, `/v1/chat/completions`, `/v1/models` (openai_api.py), `/health`, `/metrics`
(metrics.py) and `/admin/faults` (GET state, POST a change: faults.py), backed by an `EngineDriver` that steps
the engine model on the wall clock (driver.py).

Python API (what `lodestar up` uses; several servers can share one event loop):

    srv = EmulatorServer(EmulatorConfig(gpu="h100", model="llama-3-8b", port=0, time_scale=4))
    url = await srv.start()          # "http://127.0.0.1:PORT"; port 0 picks a free port
    await srv.apply(FaultUpdate(slowdown=3.0))   # or crash / recover / stall
    await srv.stop()

`serve_forever(cfg)` runs one server until SIGINT/SIGTERM (the `lodestar emulate` command).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from lodestar.emulator import openai_api
from lodestar.emulator.driver import EngineDriver
from lodestar.emulator.faults import ErrorDraw, FaultUpdate, parse_update
from lodestar.emulator.metrics import EngineCollector, RequestMetrics, make_registry, render
from lodestar.engine.engine import Engine, EngineConfig
from lodestar.engine.perf_model import PerfModel
from lodestar.errors import UserError


@dataclass
class EmulatorConfig:
    gpu: str = "a100-80g"
    model: str = "llama-3-8b"
    tp: int = 1
    host: str = "127.0.0.1"
    port: int = 8000
    time_scale: float = 1.0  # X: every modelled duration x X (4 = four times slower than the modelled GPU)
    served_model_name: str | None = None  # default: `model`
    engine: EngineConfig = field(default_factory=EngineConfig)
    default_max_tokens: int = 256  # output length when a request gives no max_tokens
    seed: int = 0  # drives the error-rate draws
    engine_id: str = "emulated-0"
    slowdown: float = 1.0
    error_rate: float = 0.0
    allow_exit: bool = False  # may crash mode "exit" end the process (stand-alone `lodestar emulate` only)


class EmulatorServer:
    """See the module docstring."""

    def __init__(self, cfg: EmulatorConfig) -> None:
        if not cfg.time_scale > 0:
            raise UserError(f"--time-scale must be > 0, got {cfg.time_scale}")
        if cfg.default_max_tokens < 1:
            raise UserError(f"--default-max-tokens must be >= 1, got {cfg.default_max_tokens}")
        if not (0 <= cfg.port < 65536):
            raise UserError(f"--port must be in 0..65535, got {cfg.port}")
        self.cfg = cfg
        self.perf = PerfModel.create(cfg.gpu, cfg.model, cfg.tp)
        self.served_model_name = cfg.served_model_name or cfg.model
        self.default_max_tokens = cfg.default_max_tokens
        self.slowdown = 1.0
        self.errors = ErrorDraw(cfg.seed)
        self.started_at = time.time()
        self.crashed = False
        self.driver, self.req_metrics = self._new_engine()
        self.registry = make_registry(EngineCollector(lambda: (self.driver, self.req_metrics), self.served_model_name))
        self.port = cfg.port
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: list[asyncio.TimerHandle] = []
        self.app = self._make_app()
        self._initial = FaultUpdate(
            slowdown=cfg.slowdown if cfg.slowdown != 1.0 else None,
            error_rate=cfg.error_rate if cfg.error_rate else None,
        )

    def _new_engine(self) -> tuple[EngineDriver, RequestMetrics]:
        try:
            eng = Engine(self.cfg.engine_id, self.perf, self.cfg.engine)
        except ValueError as e:
            raise UserError(str(e)) from None
        metrics = RequestMetrics(eng.max_model_len)
        driver = EngineDriver(eng, self.cfg.time_scale, metrics)
        if self.slowdown != 1.0:
            driver.set_slowdown(self.slowdown)
        return driver, metrics

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app[openai_api.SERVER_KEY] = self
        app.router.add_post("/v1/completions", openai_api.handle_text_completion)
        app.router.add_post("/v1/chat/completions", openai_api.handle_chat_completion)
        app.router.add_get("/v1/models", openai_api.handle_models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/admin/faults", self._faults_get)
        app.router.add_post("/admin/faults", self._faults_post)
        return app

    # ---- lifecycle ----------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.cfg.host}:{self.port}"

    async def start(self) -> str:
        """Listen; returns the base URL."""
        self._runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        await self._open()
        await self.apply(self._initial)
        return self.url

    async def _open(self) -> None:
        assert self._runner is not None
        sock = socket.socket(socket.AF_INET6 if ":" in self.cfg.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.cfg.host, self.port))
        except OSError as e:
            sock.close()
            raise UserError(f"cannot listen on {self.cfg.host}:{self.port}: {e.strerror}") from None
        self.port = sock.getsockname()[1]
        self._site = web.SockSite(self._runner, sock)
        await self._site.start()

    async def stop(self) -> None:
        """Stop listening, end every request, release the port."""
        for h in self._timers:
            h.cancel()
        self._timers.clear()
        self.driver.fail("server shutting down")
        self.driver.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for t in list(self._tasks):
            t.cancel()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def schedule(self, at_s: float, update: FaultUpdate) -> None:
        """Apply `update` `at_s` seconds from now (fault flags of `lodestar emulate`)."""
        loop = asyncio.get_running_loop()
        self._timers.append(loop.call_later(at_s, lambda: self._spawn(self.apply(update))))

    # ---- faults -------------------------------------------------------------------------------------------------
    async def apply(self, u: FaultUpdate) -> None:
        if u.recover:
            self.slowdown = 1.0
            self.errors.rate = 0.0
            if self.crashed:
                await self.restart()
            else:
                self.driver.set_slowdown(1.0)
                self.driver.end_stall()
        if u.slowdown is not None:
            self.slowdown = u.slowdown
            self.driver.set_slowdown(u.slowdown)
        if u.error_rate is not None:
            self.errors.rate = u.error_rate
        if u.stall_s is not None:
            self.driver.stall(u.stall_s)
        if u.crash is not None:
            await self.crash(u.crash, u.restart_after_s)

    async def crash(self, mode: str = "close", restart_after_s: float | None = None) -> None:
        if mode == "exit":
            if not self.cfg.allow_exit:
                raise UserError("crash mode 'exit' is only available to a stand-alone `lodestar emulate`")
            os._exit(1)
        if self.crashed:
            return
        self.crashed = True
        self.driver.fail("engine crashed")
        if self._site is not None:
            await self._site.stop()
            self._site = None
        if self._runner is not None and self._runner.server is not None:
            for conn in self._runner.server.connections:
                conn.force_close()
        if restart_after_s is not None:
            loop = asyncio.get_running_loop()
            self._timers.append(loop.call_later(restart_after_s, lambda: self._spawn(self.restart())))

    async def restart(self) -> None:
        """A crashed engine comes back: a fresh engine (empty cache, counters from zero) on the same port."""
        if not self.crashed:
            return
        self.driver.close()
        self.driver, self.req_metrics = self._new_engine()
        await self._open()
        self.crashed = False

    def fault_state(self) -> dict[str, Any]:
        stall = self.driver.stalled_until
        return {
            "slowdown": self.slowdown,
            "error_rate": self.errors.rate,
            "stalled_for_s": max(0.0, stall - self.driver.clock.now()) if stall is not None else 0.0,
            "crashed": self.crashed,
            "time_scale": self.cfg.time_scale,
        }

    # ---- small routes -------------------------------------------------------------------------------------------
    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=render(self.registry), headers={"Content-Type": "text/plain; version=0.0.4"})

    async def _faults_get(self, request: web.Request) -> web.Response:
        return web.json_response(self.fault_state())

    async def _faults_post(self, request: web.Request) -> web.Response:
        try:
            u = parse_update(await request.json())
            if u.crash == "exit" and not self.cfg.allow_exit:
                raise UserError("crash mode 'exit' is only available to a stand-alone `lodestar emulate`")
        except json.JSONDecodeError:
            return openai_api.error_response(400, "the request body is not valid JSON")
        except UserError as e:
            return openai_api.error_response(400, str(e))
        if u.crash is not None:  # answer first: the crash closes this connection too
            crash = FaultUpdate(crash=u.crash, restart_after_s=u.restart_after_s)
            rest = FaultUpdate(u.slowdown, u.error_rate, u.stall_s, None, None, u.recover)
            await self.apply(rest)
            asyncio.get_running_loop().call_later(0.02, lambda: self._spawn(self.apply(crash)))
            return web.json_response({**self.fault_state(), "crashed": True})
        await self.apply(u)
        return web.json_response(self.fault_state())


async def serve_forever(cfg: EmulatorConfig, on_start: Callable[[str], None] | None = None,
                        schedule: list[tuple[float, FaultUpdate]] | None = None) -> None:  # fmt: skip
    """Run one emulated engine until SIGINT/SIGTERM."""
    srv = EmulatorServer(cfg)
    url = await srv.start()
    for at, u in schedule or []:
        srv.schedule(at, u)
    if on_start is not None:
        on_start(url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await srv.stop()
