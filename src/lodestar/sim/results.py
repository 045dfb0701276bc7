"""Summaries of a run: the result JSON contract (DESIGN.md 4.2), the per-request CSV, the ideal bound.

Consumes: a `RunRecord` and the scenario. Produces: a JSON-ready dict with at least the contract's fields
(`scenario, policy, seed, requests{total,completed,failed}, ttft_s, tpot_s, e2e_s, prefix_hit_ratio, ideal_ttft_s,
sim_duration_s, wall_s, per_instance`), plus extras (failovers, rejected, events/s, decision cost), and the CSV.
Latency statistics are over completed requests; times in seconds.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from lodestar.engine.perf_model import PerfModel
from lodestar.request import Request
from lodestar.sim.runner import DONE, FAILED, RunRecord
from lodestar.sim.scenario import Scenario


def stats(x: np.ndarray) -> dict[str, float]:
    x = x[~np.isnan(x)]
    if x.size == 0:
        return {"mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0}
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return {"mean": float(x.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def best_possible_hits(requests: list[Request], block_size: int) -> np.ndarray:
    """Per request, the longest block-aligned prefix any earlier request (or earlier answer) made cacheable."""
    seen: set[int] = set()
    out = np.zeros(len(requests), dtype=np.int64)
    for i, r in enumerate(requests):
        pos = hit = 0
        broken = False
        for key, n in zip(r.segment_keys, r.segment_tokens, strict=True):
            start, pos = pos, pos + n
            if not broken and key in seen:
                hit = (pos // block_size) * block_size
            elif not broken and pos // block_size > start // block_size:
                broken = True
            seen.add(key)
        if r.output_key is not None:
            seen.add(r.output_key)
        out[i] = min(hit, ((r.prompt_tokens - 1) // block_size) * block_size)
    return out


def ideal_ttft(requests: list[Request], scenario: Scenario) -> np.ndarray:
    """No-queueing lower bound: prefill of the uncached part alone, best cache hit, fastest instance type."""
    configs = []
    for g in scenario.cluster.instances + [e.add for e in scenario.events if e.add is not None]:
        cfg = g.engine.merged_over(scenario.cluster.engine)
        configs.append((PerfModel.create(g.gpu, g.model, g.tp), cfg.max_num_batched_tokens, cfg.block_size))
    bs = min(c[2] for c in configs)
    hits = best_possible_hits(requests, bs)
    out = np.empty(len(requests))
    cache: dict[tuple[int, int], float] = {}
    for i, r in enumerate(requests):
        key = (r.prompt_tokens - int(hits[i]), int(hits[i]))
        v = cache.get(key)
        if v is None:
            v = min(p.prefill_time(key[0], b, key[1]) for p, b, _ in configs)
            cache[key] = v
        out[i] = v
    return out


def tpot(rec: RunRecord) -> np.ndarray:
    out = np.array([r.output_tokens for r in rec.requests], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (rec.e2e - rec.ttft) / (out - 1)
    t[(out <= 1) | (rec.status != DONE)] = np.nan
    return t


def summarize(rec: RunRecord, scenario: Scenario, policy: str, seed: int) -> dict[str, Any]:
    done = rec.status == DONE
    prompt = np.array([r.prompt_tokens for r in rec.requests], dtype=np.int64)
    ttft = np.where(done, rec.ttft, np.nan)
    e2e = np.where(done, rec.e2e, np.nan)
    hit_ratio = float(rec.hit_tokens[done].sum() / max(1, prompt[done].sum()))
    ideal = ideal_ttft(rec.requests, scenario)
    per_instance = []
    for idx, inst in enumerate(rec.instances):
        mask = rec.instance == idx
        t = ttft[mask]
        t = t[~np.isnan(t)]
        per_instance.append(
            {
                "id": inst.id,
                "gpu": inst.gpu,
                "model": inst.model,
                "requests": int(mask.sum()),
                "ttft_s_mean": float(t.mean()) if t.size else 0.0,
                "failed_at_s": inst.failed_at_s,
                "added_at_s": inst.added_at_s,
            }
        )
    n = len(rec.requests)
    return {
        "scenario": scenario.name,
        "policy": policy,
        "seed": seed,
        "requests": {
            "total": n,
            "completed": int(done.sum()),
            "failed": int((rec.status == FAILED).sum()),
            "failovers": rec.failovers,
            "rejected": rec.rejected,
        },
        "ttft_s": stats(ttft),
        "tpot_s": stats(tpot(rec)),
        "e2e_s": stats(e2e),
        "prefix_hit_ratio": hit_ratio,
        "ideal_ttft_s": {"mean": float(ideal.mean()) if n else 0.0},
        "sim_duration_s": rec.sim_duration_s,
        "wall_s": rec.wall_s,
        "requests_per_wall_s": n / rec.wall_s if rec.wall_s > 0 else 0.0,
        "events": rec.events,
        "events_per_wall_s": rec.events / rec.wall_s if rec.wall_s > 0 else 0.0,
        "decision_us_mean": 1e6 * rec.decision_wall_s / max(1, rec.decisions),
        "per_instance": per_instance,
    }


CSV_FIELDS = [
    "id", "arrival_s", "instance", "gpu", "prompt_tokens", "output_tokens", "hit_tokens",
    "ttft_s", "tpot_s", "e2e_s", "status",
]  # fmt: skip


def write_requests_csv(rec: RunRecord, path: Path) -> None:
    status_name = {0: "pending", 1: "completed", 2: "failed"}
    tp = tpot(rec)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS)
        for i, r in enumerate(rec.requests):
            idx = int(rec.instance[i])
            inst = rec.instances[idx] if idx >= 0 else None

            def fmt(v: float) -> str:
                return "" if np.isnan(v) else f"{v:.6f}"

            w.writerow(
                [
                    r.id, f"{r.arrival_s:.6f}", inst.id if inst else "", inst.gpu if inst else "",
                    r.prompt_tokens, r.output_tokens, int(rec.hit_tokens[i]),
                    fmt(rec.ttft[i]), fmt(tp[i]), fmt(rec.e2e[i]), status_name[int(rec.status[i])],
                ]
            )  # fmt: skip
