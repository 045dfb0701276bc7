"""`lodestar up`: emulated engines and the gateway in one command (the demo).

Consumes: an engines spec (`h100:2,l4:2`, see `lodestar.emulator.fleet.parse_engines`), a policy name and ports.
Produces: running emulated vLLM engines on loopback, a gateway in front of them that knows each engine's GPU and
model (discovery labels), a printed address and curl example, and a clean shutdown of everything on Ctrl-C or
SIGTERM (or after `--duration`, for scripts and tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console

from lodestar.errors import UserError


async def run_up(
    engines: str,
    policy: str,
    port: int,
    engine_port: int,
    time_scale: float,
    duration_s: float | None,
    out: Console,
    on_ready: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Start the fleet and the gateway, serve until cancelled or `duration_s`, stop both; returns the addresses."""
    from lodestar.emulator.fleet import labels, parse_engines, start_fleet, stop_fleet
    from lodestar.emulator.server import EmulatorConfig
    from lodestar.gateway.app import Gateway
    from lodestar.gateway.config import BackendSpec, GatewayConfig

    configs = parse_engines(engines, EmulatorConfig(time_scale=time_scale), base_port=engine_port)
    servers = await start_fleet(configs)
    gw = None
    try:
        backends = [BackendSpec(url=s.url, id=s.cfg.engine_id, labels=labels(s)) for s in servers]
        gw = Gateway(GatewayConfig(port=port, backends=backends, policy=policy))
        await gw.start()
        url = f"http://127.0.0.1:{gw.port}"
        model = configs[0].served_model_name or configs[0].model
        out.print(f"lodestar up: {len(servers)} emulated engine(s) behind the gateway at {url} (policy {policy})")
        for s in servers:
            out.print(f"  {s.cfg.engine_id}: {s.cfg.gpu} / {s.cfg.model} at {s.url}")
        out.print(
            f"try:  curl -N {url}/v1/completions -H 'Content-Type: application/json' "
            f"""-d '{{"model": "{model}", "prompt": "Hello", "max_tokens": 16, "stream": true}}'"""
        )
        out.print(f"      lodestar replay --target {url}        (Ctrl-C stops everything)")
        if on_ready is not None:
            on_ready(url)
        if duration_s is None:
            await asyncio.Event().wait()
        else:
            await asyncio.sleep(duration_s)
        return {"gateway": url, "engines": [s.url for s in servers]}
    finally:
        if gw is not None:
            await gw.stop()
        await stop_fleet(servers)
        out.print("lodestar up: stopped")


def register(app: typer.Typer, out: Console) -> None:
    @app.command("up")
    def up(
        engines: Annotated[str, typer.Option(help="Emulated engines, GPU[/MODEL][:COUNT],...")] = "h100:2,l4:2",
        policy: Annotated[str, typer.Option(help="Routing policy (see `lodestar policies`).")] = "lodestar",
        port: Annotated[int, typer.Option(help="Gateway port (0 = any free port).", min=0, max=65535)] = 8080,
        engine_port: Annotated[int, typer.Option(help="First engine port (0 = any free ports).", min=0)] = 0,
        time_scale: Annotated[float, typer.Option(help="Run engines this many times slower than modelled.")] = 1.0,
        duration: Annotated[float | None, typer.Option(help="Stop after SECONDS (default: until Ctrl-C).")] = None,
    ) -> None:
        """Emulated engines + the gateway in one command; Ctrl-C stops everything cleanly."""
        if time_scale <= 0:
            raise UserError(f"--time-scale must be > 0, got {time_scale}")
        from lodestar.gateway.app import run_loop

        async def main() -> None:
            task = asyncio.current_task()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                if task is not None:
                    loop.add_signal_handler(sig, task.cancel)
            with contextlib.suppress(asyncio.CancelledError):
                await run_up(engines, policy, port, engine_port, time_scale, duration, out)

        run_loop(main())
