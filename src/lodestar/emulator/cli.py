"""The `lodestar emulate` and `lodestar replay` commands (DESIGN.md 4.1).

Consumes: command-line flags. Produces: a running emulated engine (`emulate`, until Ctrl-C), or a replay's summary
on stdout and its result JSON / per-request CSV (`replay`). `register(app)` adds both commands to a Typer app (the
main CLI calls it). User mistakes raise `UserError` (one line, exit status 2, printed by the main CLI).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from lodestar.errors import UserError


def _progress_bar(enabled: bool) -> Any:
    """A rich progress bar on stderr when it is a terminal; None otherwise."""
    if not (enabled and sys.stderr.isatty()):
        return None
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("replay"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), console=Console(stderr=True), transient=True)  # fmt: skip


def emulate(
    gpu: Annotated[str, typer.Option(help="GPU type (h100, a100-80g, a100-40g, l40s, l4, a10g, a40).")] = "a100-80g",
    model: Annotated[
        str, typer.Option(help="Model (llama-3-8b, llama-2-7b, qwen-2.5-14b, llama-3-70b).")
    ] = "llama-3-8b",
    tp: Annotated[int, typer.Option(help="Tensor-parallel degree.")] = 1,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port).")] = 8000,
    time_scale: Annotated[float, typer.Option(help="Run X times slower than the modelled GPU (<1: faster).")] = 1.0,
    served_model_name: Annotated[str | None, typer.Option(help="Model name in the API (default: --model).")] = None,
    max_num_batched_tokens: Annotated[int, typer.Option(help="Token budget per step.")] = 8192,
    max_num_seqs: Annotated[int, typer.Option(help="Max running sequences.")] = 256,
    block_size: Annotated[
        int,
        typer.Option(
            help="KV block size, tokens (multiples of 16 keep prefix caching aligned with 64-character text blocks)."
        ),
    ] = 16,
    prefix_caching: Annotated[bool, typer.Option(help="Automatic prefix caching.")] = True,
    gpu_memory_utilization: Annotated[float, typer.Option(help="Fraction of GPU memory for weights + KV.")] = 0.9,
    max_model_len: Annotated[int | None, typer.Option(help="Context limit (default: what the KV cache holds).")] = None,
    default_max_tokens: Annotated[int, typer.Option(help="Output tokens when a request sets no max_tokens.")] = 256,
    seed: Annotated[int, typer.Option(help="Seed of the error-rate draws.")] = 0,
    slowdown: Annotated[float, typer.Option(help="Fault: every step lasts this many times longer.")] = 1.0,
    error_rate: Annotated[float, typer.Option(help="Fault: fraction of requests answered HTTP 500.")] = 0.0,
    stall_at: Annotated[float | None, typer.Option(help="Fault: stall the engine SECONDS after start.")] = None,
    stall_for: Annotated[float, typer.Option(help="Fault: how long a stall lasts, seconds.")] = 5.0,
    crash_at: Annotated[float | None, typer.Option(help="Fault: crash SECONDS after start.")] = None,
    crash_mode: Annotated[str, typer.Option(help="close (listener closed, connections dropped) or exit.")] = "close",
    restart_after: Annotated[float | None, typer.Option(help="Fault: a closed engine restarts after SECONDS.")] = None,
) -> None:
    """One emulated vLLM-compatible engine over HTTP (OpenAI endpoints, /metrics, /health, /admin/faults)."""
    from lodestar.emulator.faults import CRASH_MODES, FaultUpdate
    from lodestar.emulator.server import EmulatorConfig, serve_forever
    from lodestar.engine.engine import EngineConfig

    if crash_mode not in CRASH_MODES:
        raise UserError(f"--crash-mode: expected one of {', '.join(CRASH_MODES)}, got {crash_mode!r}")
    if not slowdown > 0:
        raise UserError(f"--slowdown: must be > 0, got {slowdown}")
    if not 0 <= error_rate <= 1:
        raise UserError(f"--error-rate: must be in [0, 1], got {error_rate}")
    for flag, v in (("--stall-at", stall_at), ("--crash-at", crash_at), ("--restart-after", restart_after)):
        if v is not None and v < 0:
            raise UserError(f"{flag}: must be >= 0, got {v}")
    if not stall_for > 0:
        raise UserError(f"--stall-for: must be > 0, got {stall_for}")
    for flag, n in (("--max-num-batched-tokens", max_num_batched_tokens), ("--max-num-seqs", max_num_seqs),
                    ("--block-size", block_size)):  # fmt: skip
        if n < 1:
            raise UserError(f"{flag}: must be >= 1, got {n}")
    if not 0 < gpu_memory_utilization <= 1:
        raise UserError(f"--gpu-memory-utilization: must be in (0, 1], got {gpu_memory_utilization}")
    engine = EngineConfig(max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
                          block_size=block_size, enable_prefix_caching=prefix_caching,
                          gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len)  # fmt: skip
    cfg = EmulatorConfig(gpu=gpu, model=model, tp=tp, host=host, port=port, time_scale=time_scale,
                         served_model_name=served_model_name, engine=engine, default_max_tokens=default_max_tokens,
                         seed=seed, slowdown=slowdown, error_rate=error_rate, allow_exit=True)  # fmt: skip
    schedule = []
    if stall_at is not None:
        schedule.append((stall_at, FaultUpdate(stall_s=stall_for)))
    if crash_at is not None:
        schedule.append((crash_at, FaultUpdate(crash=crash_mode, restart_after_s=restart_after)))

    def started(url: str) -> None:
        print(f"emulated {gpu} {model} (tp {tp}, time scale {time_scale:g}) listening on {url}", flush=True)
        print(f"  try: curl {url}/v1/completions -H 'Content-Type: application/json' "
              f"-d '{{\"prompt\": \"Hello\", \"max_tokens\": 16}}'", flush=True)  # fmt: skip

    asyncio.run(serve_forever(cfg, started, schedule))


def replay(
    target: Annotated[
        str, typer.Option(help="Base URL of an OpenAI-compatible endpoint (e.g. http://127.0.0.1:8000).")
    ],
    workload: Annotated[
        str | None,
        typer.Option(
            help="Scenario YAML/name (its workload), workload YAML, or 'synthetic' (default: synthetic, 2 req/s, 60 s)."
        ),
    ] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="Write the result JSON here.")] = None,
    requests_out: Annotated[Path | None, typer.Option(help="Write one CSV row per request here.")] = None,
    api: Annotated[str, typer.Option(help="completions or chat.")] = "completions",
    model: Annotated[str | None, typer.Option(help="Model name to send (default: the target's first model).")] = None,
    seed: Annotated[int | None, typer.Option(help="Workload seed (default: the scenario's).")] = None,
    duration: Annotated[float | None, typer.Option(help="Only requests arriving in the first SECONDS.")] = None,
    time_scale: Annotated[
        float,
        typer.Option(help="Stretch arrivals by X and divide reported times by X (use the engines' --time-scale)."),
    ] = 1.0,
    rate_scale: Annotated[float, typer.Option(help="Multiply the arrival rate.")] = 1.0,
    max_concurrency: Annotated[int, typer.Option(help="Max requests in flight.")] = 256,
    timeout: Annotated[float, typer.Option(help="Per-request timeout, wall seconds.")] = 600.0,
    ignore_eos: Annotated[bool, typer.Option(help="Send ignore_eos so engines generate max_tokens tokens.")] = True,
    resend_answers: Annotated[bool, typer.Option(help="Multi-turn: resend the answers received.")] = True,
    policy: Annotated[str, typer.Option(help="Label for the result JSON's 'policy' field.")] = "live",
    assume_gpu: Annotated[
        str,
        typer.Option(help="A bare workload assumes one instance of this GPU (for its load: and the ideal-TTFT bound)."),
    ] = "a100-80g",
    assume_model: Annotated[str, typer.Option(help="... and of this model.")] = "llama-3-8b",
    progress: Annotated[bool, typer.Option(help="Show a progress bar on a terminal.")] = True,
) -> None:
    """Replay a workload against an OpenAI endpoint in real time; client-side TTFT/TPOT/E2E, result JSON."""
    from lodestar.replay.runner import ReplayOptions, run_replay, write_requests_csv
    from lodestar.replay.workload import load_replay_workload

    reqs, sc, seed_used = load_replay_workload(workload, seed, duration, assume_gpu, assume_model)
    opts = ReplayOptions(target=target, api=api, model=model, time_scale=time_scale, rate_scale=rate_scale,
                         max_concurrency=max_concurrency, timeout_s=timeout, ignore_eos=ignore_eos,
                         resend_answers=resend_answers, policy=policy)  # fmt: skip
    opts.check()
    span = reqs[-1].arrival_s / rate_scale * time_scale
    print(f"replaying {len(reqs)} requests of {sc.name!r} over {span:.0f} s against {target}", file=sys.stderr)
    bar = _progress_bar(progress)
    if bar is not None:
        with bar:
            task = bar.add_task("replay", total=len(reqs))
            summary, rec = run_replay(reqs, sc, seed_used, opts, lambda d, n: bar.update(task, completed=d))
    else:
        summary, rec = run_replay(reqs, sc, seed_used, opts)
    q, t, p, e = summary["requests"], summary["ttft_s"], summary["tpot_s"], summary["e2e_s"]
    print(f"{q['completed']}/{q['total']} completed ({q['failed']} failed, {q['late_starts']} late) in "
          f"{summary['wall_s']:.1f} s wall; TTFT mean {t['mean']:.3f}s p50 {t['p50']:.3f}s p99 {t['p99']:.3f}s; "
          f"TPOT mean {p['mean'] * 1e3:.1f}ms; E2E mean {e['mean']:.2f}s; prefix hit "
          f"{summary['prefix_hit_ratio']:.1%} ({summary['prefix_hit_source']})")  # fmt: skip
    for msg, count in summary["errors"].items():
        print(f"  error x{count}: {msg}", file=sys.stderr)
    try:
        if out_file is not None:
            out_file.parent.mkdir(parents=True, exist_ok=True)
            out_file.write_text(json.dumps(summary, indent=2))
        if requests_out is not None:
            requests_out.parent.mkdir(parents=True, exist_ok=True)
            write_requests_csv(rec, requests_out, time_scale)
    except OSError as e:
        raise UserError(f"cannot write {e.filename}: {e.strerror}") from None


def register(app: typer.Typer) -> None:
    """Add `emulate` and `replay` to the `lodestar` command line."""
    app.command("emulate")(emulate)
    app.command("replay")(replay)
