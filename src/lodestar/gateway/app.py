"""The gateway process: wires discovery, monitoring, the policy and the proxy into one aiohttp server.

Consumes: a `GatewayConfig` (and optionally an already-built policy and a clock, for tests and embedding).
Produces: an HTTP server with the OpenAI routes (`/v1/completions`, `/v1/chat/completions`, `/v1/models`), the
operational routes (`/health`, `/ready`, `/metrics`) and the admin API (`/admin/...`, see `lodestar.gateway.admin`);
background tasks (health checks and scraping per backend, Kubernetes discovery when configured, and the learner's
training loop, which runs `policy.train(now)` in a worker thread every `train_interval_s`, so routing never waits
for training, and saves the learned model to the policy's `model_path`, when it has one, every
`model_save_interval_s` and at shutdown; the same file warm-starts the next run).

The policy sees, per decision, a `ClusterView` of the pool's candidates for the request's model: discovery facts
(`Endpoint.id`, labels), the latest scrape (`Endpoint.metrics`, stamped), and the router's bookkeeping
(`Endpoint.book`), all kept in the `Endpoint` objects shared by the pool and `RouterBookkeeping`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web

from lodestar.clock import Clock, WallClock
from lodestar.cluster_view import RouterBookkeeping
from lodestar.errors import UserError
from lodestar.gateway.admin import add_admin_routes
from lodestar.gateway.config import GatewayConfig
from lodestar.gateway.monitor import Monitor
from lodestar.gateway.observability import GatewayMetrics
from lodestar.gateway.parse import ClientError
from lodestar.gateway.pool import BackendPool
from lodestar.gateway.proxy import Proxy, error_response
from lodestar.policies.base import Policy, build_policy

log = logging.getLogger("lodestar.gateway")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), status=status, content_type="application/json")


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error leaves in OpenAI's shape; an unexpected exception is logged and is the only possible 500."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        etype = "invalid_request_error" if e.status < 500 else "server_error"
        allow = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
        return error_response(ClientError(e.status, e.reason or "error", etype=etype, headers=allow))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("internal error", extra={"path": request.path})
        return error_response(ClientError(500, "internal gateway error", etype="server_error"))


class Gateway:
    def __init__(self, cfg: GatewayConfig, clock: Clock | None = None, policy: Policy | None = None) -> None:
        self.cfg = cfg
        self.clock = clock or WallClock()
        self.policy = (
            policy if policy is not None else build_policy(cfg.policy, seed=cfg.seed, params=cfg.policy_params)
        )
        if self.policy.sim_only:
            raise UserError(
                f"policy {self.policy.name!r} is simulator-only (it needs engine internals); "
                "choose another policy for live serving"
            )
        if getattr(self.policy, "inline_training", None) is not None:
            self.policy.inline_training = False  # type: ignore[attr-defined]
        self.book = RouterBookkeeping()
        self.pool = BackendPool(
            self.book,
            breaker_failures=cfg.breaker_failures,
            breaker_open_s=cfg.breaker_open_s,
            breaker_max_open_s=cfg.breaker_max_open_s,
        )
        self.pool.on_removed.append(self._removed)
        self.metrics = GatewayMetrics(self.pool, self.clock, self.policy.name, self.policy)
        self.proxy = Proxy(cfg, self.pool, self.book, self.policy, self.clock, self.metrics)
        self.monitor = Monitor(self.pool, cfg, self.clock)
        for spec in cfg.backends:
            self.pool.add(spec.endpoint_id(), spec.url, spec.labels, spec.models, source="static")
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.kubernetes: Any = None

    def _removed(self, b: Any) -> None:
        self.metrics.forget(b.id)
        try:
            self.policy.on_endpoint_removed(b.id)
        except Exception:
            log.exception("policy.on_endpoint_removed failed", extra={"endpoint": b.id})

    # ---- the HTTP application ---------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[_errors], client_max_size=self.cfg.max_body_bytes + 1)
        px = self.proxy

        async def completions(request: web.Request) -> web.StreamResponse:
            return await px.handle(request, "completions")

        async def chat(request: web.Request) -> web.StreamResponse:
            return await px.handle(request, "chat")

        async def models(request: web.Request) -> web.Response:
            if not px.authorized(request):
                return error_response(
                    ClientError(401, "invalid or missing API key", code="invalid_api_key", etype="authentication_error")
                )
            return _json({"object": "list", "data": self.pool.models()})

        async def health(request: web.Request) -> web.Response:
            return _json({"status": "ok"})

        async def ready(request: web.Request) -> web.Response:
            n = sum(1 for b in self.pool.backends.values() if self.pool.available(b))
            return _json(
                {"ready": n > 0, "healthy_endpoints": n, "endpoints": len(self.pool.backends)}, status=200 if n else 503
            )

        async def metrics(request: web.Request) -> web.Response:
            body = self.metrics.render()  # on the loop: the collectors read live state
            return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

        app.router.add_post("/v1/completions", completions)
        app.router.add_post("/v1/chat/completions", chat)
        app.router.add_get("/v1/models", models)
        app.router.add_get("/health", health)
        app.router.add_get("/ready", ready)
        app.router.add_get("/metrics", metrics)
        add_admin_routes(app, self)
        return app

    # ---- lifecycle --------------------------------------------------------------------------------------------
    async def start(self, wait_first_checks_s: float = 5.0) -> None:
        """Start the background work and listen on `cfg.host:cfg.port` (port 0: any free port, see `self.port`)."""
        await self.proxy.start()
        await self.monitor.start()
        if self.cfg.kubernetes is not None:
            from lodestar.gateway.kubernetes import KubernetesDiscovery  # optional, imported only when configured

            self.kubernetes = KubernetesDiscovery(self.cfg.kubernetes, self.pool)
            self._tasks.append(asyncio.create_task(self.kubernetes.run(), name="kubernetes"))
        if getattr(self.policy, "learning", False) and hasattr(self.policy, "train"):
            self._tasks.append(asyncio.create_task(self._train_loop(), name="train"))
        await self.monitor.first_checks(wait_first_checks_s)
        self.runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.cfg.host, self.cfg.port, backlog=2048)
        await site.start()
        self.port = int(self.runner.addresses[0][1])
        log.info(
            "gateway listening",
            extra={
                "host": self.cfg.host,
                "port": self.port,
                "policy": self.policy.name,
                "endpoints": len(self.pool.backends),
            },
        )

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._tasks and getattr(self.policy, "learning", False):
            await self.save_model()  # what was learned since the last periodic save survives a restart
        self._tasks.clear()
        if self.kubernetes is not None:
            await self.kubernetes.close()
        if self.runner is not None:
            await self.runner.cleanup()
        await self.monitor.close()
        await self.proxy.close()

    async def _train_loop(self) -> None:
        interval = float(getattr(getattr(self.policy, "p", None), "train_interval_s", 0.5))
        train = self.policy.train  # type: ignore[attr-defined]
        next_save = self.clock.now() + self.cfg.model_save_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(train, self.clock.now())
            except Exception:
                log.exception("policy training failed")
            if self.clock.now() >= next_save:
                next_save = self.clock.now() + self.cfg.model_save_interval_s
                await self.save_model()

    def _model_path(self) -> str | None:
        return getattr(getattr(self.policy, "p", None), "model_path", None)

    async def save_model(self) -> None:
        """The learned model to its `model_path` (when it has one): copied here, between training steps, and
        written atomically on a worker thread. A failure is logged; the gateway keeps serving."""
        path = self._model_path()
        if not path:
            return
        from lodestar.learner.persist import snapshot, write_model

        try:
            await asyncio.to_thread(write_model, path, *snapshot(self.policy))  # type: ignore[arg-type]
        except Exception:
            log.exception("saving the learned model failed", extra={"path": path})

    async def serve_forever(self) -> None:
        try:
            await self.start()
            await asyncio.Event().wait()
        finally:
            await self.stop()


def run(cfg: GatewayConfig) -> None:
    """Blocking: serve until interrupted (Ctrl-C / SIGTERM)."""
    import signal

    async def main() -> None:
        gw = Gateway(cfg)
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            if task is not None:
                loop.add_signal_handler(sig, task.cancel)
        try:
            await gw.serve_forever()
        except asyncio.CancelledError:
            log.info("gateway stopped")

    run_loop(main())


def run_loop(coro: Any) -> None:
    """asyncio.run, on uvloop when it is installed (unless LODESTAR_NO_UVLOOP=1)."""
    import os

    try:
        if os.environ.get("LODESTAR_NO_UVLOOP") == "1":
            raise ImportError
        import uvloop  # optional: a faster event loop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)
