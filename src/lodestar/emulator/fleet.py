"""Several emulated engines in one event loop: what `lodestar up` starts next to the gateway.

Consumes: an engines spec such as `"h100:2,l4:2"` or `"a100-80g/llama-3-70b:1"` (comma-separated
`GPU[/MODEL][:COUNT]`, model default `llama-3-8b`) and shared settings (time scale, host, first port). Produces:
`EmulatorConfig`s (`parse_engines`), then running `EmulatorServer`s with their URLs and labels (`start_fleet`), and
their clean shutdown (`stop_fleet`). Engine ids are `e0, e1, ...` in spec order; port `base_port + i`, or any free
port when `base_port` is 0.
"""

from __future__ import annotations

from dataclasses import replace

from lodestar.emulator.server import EmulatorConfig, EmulatorServer
from lodestar.engine.hardware import get_gpu, get_model
from lodestar.errors import UserError


def parse_engines(spec: str, base: EmulatorConfig | None = None, base_port: int = 0) -> list[EmulatorConfig]:
    """`"h100:2,l4/llama-2-7b:1"` -> one config per engine (see the module docstring)."""
    base = base or EmulatorConfig()
    out: list[EmulatorConfig] = []
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        name, _, count_s = item.partition(":")
        gpu, _, model = name.partition("/")
        try:
            count = int(count_s) if count_s else 1
        except ValueError:
            raise UserError(f"--engines: bad count in {item!r}; expected GPU[/MODEL][:COUNT] like h100:2") from None
        if count < 1:
            raise UserError(f"--engines: count must be >= 1 in {item!r}")
        get_gpu(gpu.strip())
        model = model.strip() or base.model
        get_model(model)
        for _ in range(count):
            i = len(out)
            out.append(replace(base, gpu=gpu.strip(), model=model, engine_id=f"e{i}", seed=base.seed + i,
                               port=base_port + i if base_port else 0))  # fmt: skip
    if not out:
        raise UserError(f"--engines: no engine in {spec!r}; expected GPU[/MODEL][:COUNT],... like h100:2,l4:2")
    return out


async def start_fleet(configs: list[EmulatorConfig]) -> list[EmulatorServer]:
    """Start every engine (stopping those already started if one fails)."""
    servers: list[EmulatorServer] = []
    try:
        for cfg in configs:
            srv = EmulatorServer(cfg)
            await srv.start()
            servers.append(srv)
    except BaseException:
        await stop_fleet(servers)
        raise
    return servers


async def stop_fleet(servers: list[EmulatorServer]) -> None:
    for srv in servers:
        await srv.stop()


def labels(srv: EmulatorServer) -> dict[str, str]:
    """Discovery labels of an engine (what a policy may see about it)."""
    return {"gpu": srv.cfg.gpu, "model": srv.cfg.model, "tp": str(srv.cfg.tp)}
