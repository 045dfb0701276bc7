"""`lodestar serve`: the gateway's command (registered on the main `lodestar` app by `register`).

Consumes: flags and/or a YAML config file (`--config`); flags win over the file; `LODESTAR_API_KEYS` and
`LODESTAR_ADMIN_KEY` from the environment. Produces: a running gateway until Ctrl-C or SIGTERM; every user mistake
is a `UserError` (one line, exit status 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lodestar.errors import UserError
from lodestar.kv_args import parse_kv


def serve_config(**flags: Any) -> Any:
    """Flags (None = not given) + the config file -> a validated `GatewayConfig`."""
    from lodestar.gateway.config import build_config, load_config, parse_backend_flag
    from lodestar.policies.base import policy_registry

    cfg_path = flags.pop("config")
    backends = [parse_backend_flag(b) for b in flags.pop("backend") or []]
    params = parse_kv(flags.pop("param"), "--param")
    keys = flags.pop("api_key")
    overrides = {
        **flags,
        "backends": backends or None,
        "policy_params": params or None,
        "api_keys": list(keys) if keys else None,
    }
    cfg = build_config(load_config(cfg_path), overrides, where=str(cfg_path) if cfg_path else "flags")
    reg = policy_registry()
    if cfg.policy not in reg:
        raise UserError(f"unknown policy {cfg.policy!r}; expected one of: {', '.join(reg)}")
    if reg[cfg.policy].sim_only:
        raise UserError(f"policy {cfg.policy!r} is simulator-only and cannot route live traffic")
    if not cfg.backends and cfg.kubernetes is None:
        raise UserError("no backends: give --backend URL (repeatable), backends: in --config, or kubernetes:")
    return cfg


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        backend: Annotated[
            list[str] | None, typer.Option("--backend", help="Engine base URL (or ID=URL); repeat.")
        ] = None,
        policy: Annotated[str | None, typer.Option("--policy", help="Routing policy (lodestar policies).")] = None,
        port: Annotated[int | None, typer.Option("--port", help="Listen port (default 8080).")] = None,
        host: Annotated[str | None, typer.Option("--host", help="Listen address (default 127.0.0.1).")] = None,
        config: Annotated[Path | None, typer.Option("--config", help="YAML config file (flags win).")] = None,
        param: Annotated[list[str] | None, typer.Option("--param", help="Policy parameter KEY=VALUE; repeat.")] = None,
        seed: Annotated[int | None, typer.Option("--seed")] = None,
        scrape_interval: Annotated[
            float | None, typer.Option("--scrape-interval", help="Seconds (default 0.05).")
        ] = None,
        health_interval: Annotated[float | None, typer.Option("--health-interval", help="Seconds (default 2).")] = None,
        connect_timeout: Annotated[float | None, typer.Option("--connect-timeout", help="Seconds (default 2).")] = None,
        first_byte_timeout: Annotated[float | None, typer.Option("--first-byte-timeout", help="Seconds (30).")] = None,
        max_retries: Annotated[int | None, typer.Option("--max-retries", help="Other endpoints to try (2).")] = None,
        max_concurrency: Annotated[int | None, typer.Option("--max-concurrency", help="Then 429 (2048).")] = None,
        max_body_bytes: Annotated[int | None, typer.Option("--max-body-bytes", help="Then 413 (8 MiB).")] = None,
        api_key: Annotated[
            list[str] | None, typer.Option("--api-key", help="Client bearer key; repeat. Prefer LODESTAR_API_KEYS.")
        ] = None,
        routing_hint_header: Annotated[
            str | None, typer.Option("--routing-hint-header", help="Enable endpoint hints in this header.")
        ] = None,
        log_level: Annotated[str | None, typer.Option("--log-level")] = None,
        log_requests: Annotated[bool | None, typer.Option("--log-requests/--no-log-requests")] = None,
    ) -> None:
        """The gateway: an OpenAI-compatible router in front of vLLM/SGLang engines (docs/gateway.md)."""
        cfg = serve_config(
            backend=backend,
            policy=policy,
            port=port,
            host=host,
            config=config,
            param=param,
            seed=seed,
            scrape_interval_s=scrape_interval,
            health_interval_s=health_interval,
            connect_timeout_s=connect_timeout,
            first_byte_timeout_s=first_byte_timeout,
            max_retries=max_retries,
            max_concurrency=max_concurrency,
            max_body_bytes=max_body_bytes,
            api_key=api_key,
            routing_hint_header=routing_hint_header,
            log_level=log_level,
            log_requests=log_requests,
        )
        from lodestar.gateway.app import run
        from lodestar.gateway.observability import setup_logging

        setup_logging(cfg.log_level)
        try:
            run(cfg)
        except OSError as e:  # e.g. the port is taken
            raise UserError(f"cannot serve on {cfg.host}:{cfg.port}: {e.strerror or e}") from None
