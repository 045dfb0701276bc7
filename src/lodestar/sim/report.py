"""Reports for `lodestar compare`: summary.json, summary.md and plots.

Consumes: the per-(policy, seed) result dicts and their `RunRecord`s. Produces, in the output folder:
`summary.json` (`{"scenario", "runs": [result...], "policies": {name: mean over seeds}}`), `summary.md` (a table, one
row per policy, means over seeds, with each policy's mean-TTFT ratio to the best non-oracle policy), and the plots
`ttft_cdf.png` (TTFT CDF per policy, first seed) and `ttft_over_time.png` (rolling mean TTFT over simulated time).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lodestar.sim.runner import DONE, RunRecord
from lodestar.sim.scenario import Scenario

_KEYS = [("ttft_s", "mean"), ("ttft_s", "p50"), ("ttft_s", "p90"), ("ttft_s", "p99"), ("tpot_s", "mean"),
         ("e2e_s", "mean")]  # fmt: skip


def aggregate(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per policy: means over seeds of the headline statistics."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by.setdefault(r["policy"], []).append(r)
    agg: dict[str, dict[str, Any]] = {}
    for name, rs in by.items():
        a: dict[str, Any] = {"seeds": [r["seed"] for r in rs]}
        for sec, stat in _KEYS:
            a[f"{sec}_{stat}"] = float(np.mean([r[sec][stat] for r in rs]))
        a["prefix_hit_ratio"] = float(np.mean([r["prefix_hit_ratio"] for r in rs]))
        a["completed"] = int(sum(r["requests"]["completed"] for r in rs))
        a["failed"] = int(sum(r["requests"]["failed"] for r in rs))
        a["total"] = int(sum(r["requests"]["total"] for r in rs))
        a["ideal_ttft_s_mean"] = float(np.mean([r["ideal_ttft_s"]["mean"] for r in rs]))
        agg[name] = a
    return agg


def _markdown(sc: Scenario, agg: dict[str, dict[str, Any]]) -> str:
    real = {k: v for k, v in agg.items() if k != "oracle"}
    best = min(real, key=lambda k: real[k]["ttft_s_mean"]) if real else None
    lines = [
        f"Scenario `{sc.name}`: best non-oracle policy by mean TTFT: `{best}`.",
        "",
        "| policy | TTFT mean (s) | p50 | p90 | p99 | TPOT mean (ms) | E2E mean (s) | prefix hit | done/total "
        "| mean TTFT / best |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, a in sorted(agg.items(), key=lambda kv: kv[1]["ttft_s_mean"]):
        ratio = a["ttft_s_mean"] / agg[best]["ttft_s_mean"] if best and agg[best]["ttft_s_mean"] > 0 else 0.0
        lines.append(
            f"| {name} | {a['ttft_s_mean']:.3f} | {a['ttft_s_p50']:.3f} | {a['ttft_s_p90']:.3f} | "
            f"{a['ttft_s_p99']:.3f} | {a['tpot_s_mean'] * 1e3:.1f} | {a['e2e_s_mean']:.2f} | "
            f"{a['prefix_hit_ratio']:.1%} | {a['completed']}/{a['total']} | {ratio:.2f}x |"
        )
    any_a = next(iter(agg.values()), None)
    if any_a is not None:
        lines += [
            "",
            f"Ideal (no-queueing) TTFT mean: {any_a['ideal_ttft_s_mean']:.3f} s. Seeds: {any_a['seeds']}.",
        ]
    return "\n".join(lines) + "\n"


def _plots(out_dir: Path, results: list[dict[str, Any]], records: list[RunRecord]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first_seed = results[0]["seed"] if results else 0
    cmap = plt.get_cmap("tab20")
    styles = {
        name: (cmap(i % 20), "-" if i < 10 else "--") for i, name in enumerate(sorted({r["policy"] for r in results}))
    }
    pairs = [(r["policy"], rec) for r, rec in zip(results, records, strict=True) if r["seed"] == first_seed]
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    for name, rec in pairs:
        t = np.sort(rec.ttft[(rec.status == DONE) & ~np.isnan(rec.ttft)])
        if t.size:
            ax.plot(t, np.arange(1, t.size + 1) / t.size, label=name, color=styles[name][0], ls=styles[name][1])
    ax.set_xscale("log")
    ax.set_xlabel("TTFT (s)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"TTFT CDF (seed {first_seed})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(out_dir / "ttft_cdf.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    for name, rec in pairs:
        arr = np.array([r.arrival_s for r in rec.requests])
        ok = (rec.status == DONE) & ~np.isnan(rec.ttft)
        if not ok.any():
            continue
        span = max(arr.max(), 1e-9)
        edges = np.linspace(0, span, 41)
        idx = np.clip(np.digitize(arr[ok], edges) - 1, 0, 39)
        sums = np.bincount(idx, weights=rec.ttft[ok], minlength=40)
        counts = np.bincount(idx, minlength=40)
        with np.errstate(invalid="ignore"):
            ax.plot((edges[:-1] + edges[1:]) / 2, sums / counts, label=name, color=styles[name][0], ls=styles[name][1])
    ax.set_xlabel("arrival time (simulated s)")
    ax.set_ylabel("mean TTFT in window (s)")
    ax.set_yscale("log")
    ax.set_title("TTFT over time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(out_dir / "ttft_over_time.png", dpi=120)
    plt.close(fig)


def write_compare(out_dir: Path, sc: Scenario, results: list[dict[str, Any]], records: list[RunRecord]) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    agg = aggregate(results)
    (out_dir / "summary.json").write_text(json.dumps({"scenario": sc.name, "runs": results, "policies": agg}, indent=2))
    md = _markdown(sc, agg)
    (out_dir / "summary.md").write_text(f"# lodestar compare: {sc.name}\n\n" + md)
    _plots(out_dir, results, records)
    return md
