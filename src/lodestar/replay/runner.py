"""Real-time replay of a workload against an OpenAI-compatible endpoint, and its result JSON.

Consumes: requests (lodestar.workload), the scenario they came from (for its name and the ideal-TTFT bound),
`ReplayOptions` (target URL, API, time and rate scales, concurrency bound). Produces: a `ReplayRecord` (one
`client.Outcome` per request) and the result JSON of `lodestar sim` (DESIGN.md 4.2, via `sim.results.stats` and
`sim.results.ideal_ttft`), plus the per-request CSV in the simulator's columns.

Timing: request i is sent at `arrival_i / rate_scale * time_scale` wall seconds after the start (its prompt text is
built then, so a finished earlier turn's answer can be resent). At most `max_concurrency` requests are in flight;
a request that must wait for a slot is sent late (counted in `late_starts`) and timed from when it is sent.
`time_scale` is the emulated engines' time scale: arrivals are stretched by it and every reported latency and
duration is divided by it, so the JSON is in modelled seconds, comparable with `lodestar sim` (`wall_s` stays wall
time). Latency statistics are over completed requests; TPOT = (E2E - TTFT) / (tokens - 1).
`prefix_hit_ratio` = cached prompt tokens / prompt tokens over completed requests, from the servers' usage blocks
(`prefix_hit_source: "usage"`), or 0.0 with `prefix_hit_source: "unavailable"` when no server reports it.
`per_instance` groups requests by the `x-lodestar-endpoint` response header (empty without a gateway).
"""

from __future__ import annotations

import asyncio
import csv
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from lodestar.errors import UserError
from lodestar.replay.client import Outcome, send
from lodestar.replay.text import PromptBuilder
from lodestar.request import Request
from lodestar.sim.results import CSV_FIELDS, ideal_ttft, stats
from lodestar.sim.scenario import Scenario
from lodestar.workload import scale_rate


@dataclass
class ReplayOptions:
    target: str
    api: str = "completions"  # completions | chat
    model: str | None = None  # None: the first model the target's /v1/models lists
    time_scale: float = 1.0
    rate_scale: float = 1.0
    max_concurrency: int = 256
    timeout_s: float = 600.0
    ignore_eos: bool = True
    resend_answers: bool = True
    policy: str = "live"  # the result JSON's `policy` label (the router behind the target)

    def check(self) -> None:
        if self.api not in ("completions", "chat"):
            raise UserError(f"--api: expected completions or chat, got {self.api!r}")
        if not self.target.startswith(("http://", "https://")):
            raise UserError(f"--target: expected a URL like http://127.0.0.1:8000, got {self.target!r}")
        for name, v in (("--time-scale", self.time_scale), ("--rate-scale", self.rate_scale),
                        ("--timeout", self.timeout_s)):  # fmt: skip
            if not v > 0:
                raise UserError(f"{name}: must be > 0, got {v}")
        if self.max_concurrency < 1:
            raise UserError(f"--max-concurrency: must be >= 1, got {self.max_concurrency}")


def base_url(target: str) -> str:
    url = target.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


@dataclass
class ReplayRecord:
    requests: list[Request]
    outcomes: list[Outcome]
    late_starts: int
    wall_s: float
    span_s: float  # modelled seconds from the start to the last response
    model: str | None = None
    target: str = ""
    notes: list[str] = field(default_factory=list)


async def _model_of(session: aiohttp.ClientSession, url: str) -> str | None:
    try:
        async with session.get(url + "/v1/models", timeout=aiohttp.ClientTimeout(total=10)) as r:
            if r.status == 200:
                data = (await r.json()).get("data") or []
                if data and isinstance(data[0], dict):
                    return str(data[0].get("id"))
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    return None


async def replay(
    requests: list[Request], opts: ReplayOptions, progress: Callable[[int, int], None] | None = None
) -> ReplayRecord:
    """Replay `requests` against `opts.target` in real time (see the module docstring)."""
    opts.check()
    url = base_url(opts.target)
    reqs = scale_rate(requests, opts.rate_scale) if opts.rate_scale != 1.0 else requests
    n = len(reqs)
    outcomes: list[Outcome] = [Outcome(ok=False, error="not sent")] * n
    builder = PromptBuilder(opts.resend_answers)
    slots = asyncio.Semaphore(opts.max_concurrency)
    done = 0
    late = 0
    last_end = 0.0
    connector = aiohttp.TCPConnector(limit=opts.max_concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        model = opts.model or await _model_of(session, url)
        t0 = time.perf_counter()

        async def one(i: int, r: Request) -> None:
            nonlocal done, last_end
            try:
                text = builder.text(r)
                out = await send(session, url, opts.api, model, text, r.output_tokens, opts.ignore_eos, opts.timeout_s)
                outcomes[i] = out
                if out.ok:
                    builder.answered(r, out.text)
                    out.text = ""  # keep memory flat: only the resent answers are kept
            finally:
                slots.release()
                last_end = time.perf_counter() - t0
                done += 1
                if progress is not None:
                    progress(done, n)

        tasks = []
        for i, r in enumerate(reqs):
            wait = t0 + r.arrival_s * opts.time_scale - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            if slots.locked():
                late += 1
            await slots.acquire()
            tasks.append(asyncio.create_task(one(i, r)))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    return ReplayRecord(reqs, outcomes, late, wall, last_end / opts.time_scale, model, url)


def summarize_replay(rec: ReplayRecord, scenario: Scenario, opts: ReplayOptions, seed: int) -> dict[str, Any]:
    """The result JSON (DESIGN.md 4.2) of a replay, latencies in modelled seconds (divided by the time scale)."""
    ts = opts.time_scale
    oc = rec.outcomes
    ok = np.array([o.ok for o in oc], dtype=bool)
    ttft = np.array([o.ttft_s for o in oc]) / ts
    e2e = np.array([o.e2e_s for o in oc]) / ts
    toks = np.array([o.tokens for o in oc], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(ok & (toks > 1), (e2e - ttft) / (toks - 1), np.nan)
    ttft[~ok] = np.nan
    e2e[~ok] = np.nan
    reported = [o for o in oc if o.ok and o.cached_tokens is not None]
    prompt_sum = sum((o.prompt_tokens or 0) for o in reported)
    hit = sum(o.cached_tokens or 0 for o in reported) / prompt_sum if prompt_sum else 0.0
    ideal = ideal_ttft(rec.requests, scenario)
    per: dict[str, list[float]] = {}
    for o in oc:
        if o.endpoint is not None:
            per.setdefault(o.endpoint, []).append(o.ttft_s / ts if o.ok else float("nan"))
    per_instance = []
    for ep, v in sorted(per.items()):
        arr = np.array(v)
        arr = arr[~np.isnan(arr)]
        per_instance.append(
            {"id": ep, "gpu": "", "requests": len(v), "ttft_s_mean": float(arr.mean()) if arr.size else 0.0}
        )
    errors = Counter(o.error for o in oc if not o.ok and o.error)
    n = len(oc)
    return {
        "scenario": scenario.name,
        "policy": opts.policy,
        "seed": seed,
        "requests": {
            "total": n,
            "completed": int(ok.sum()),
            "failed": int(n - ok.sum()),
            "late_starts": rec.late_starts,
        },
        "ttft_s": stats(ttft),
        "tpot_s": stats(tpot),
        "e2e_s": stats(e2e),
        "prefix_hit_ratio": float(hit),
        "prefix_hit_source": "usage" if reported else "unavailable",
        "ideal_ttft_s": {"mean": float(ideal.mean()) if n else 0.0},
        "sim_duration_s": rec.span_s,
        "wall_s": rec.wall_s,
        "per_instance": per_instance,
        "target": rec.target,
        "model": rec.model,
        "api": opts.api,
        "time_scale": ts,
        "rate_scale": opts.rate_scale,
        "errors": dict(errors.most_common(5)),
    }


def write_requests_csv(rec: ReplayRecord, path: Path, time_scale: float) -> None:
    """One row per request, in the simulator's CSV columns (times in modelled seconds)."""

    def fmt(v: float) -> str:
        return "" if np.isnan(v) else f"{v / time_scale:.6f}"

    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS)
        for r, o in zip(rec.requests, rec.outcomes, strict=True):
            tp = (o.e2e_s - o.ttft_s) / (o.tokens - 1) if o.ok and o.tokens > 1 else float("nan")
            w.writerow(
                [
                    r.id, f"{r.arrival_s:.6f}", o.endpoint or "", "", o.prompt_tokens or r.prompt_tokens, o.tokens,
                    o.cached_tokens if o.cached_tokens is not None else "", fmt(o.ttft_s if o.ok else float("nan")),
                    fmt(tp), fmt(o.e2e_s if o.ok else float("nan")), "completed" if o.ok else "failed",
                ]
            )  # fmt: skip


def run_replay(
    requests: list[Request],
    scenario: Scenario,
    seed: int,
    opts: ReplayOptions,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, Any], ReplayRecord]:
    """Blocking: replay, then summarize."""
    rec = asyncio.run(replay(requests, opts, progress))
    return summarize_replay(rec, scenario, opts, seed), rec
