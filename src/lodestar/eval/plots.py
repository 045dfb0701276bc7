"""Plots of an evaluation: learning curves, prediction error over time, the ratio overview.

Consumes: an `EvalRun` and the per-scenario table of `lodestar.eval.report.aggregate`. Produces PNG files in the
given folder:
- `<scenario>.png`: rolling mean TTFT (30 s windows, mean over seeds) over simulated time for the learned policy,
  the best baseline, `prefix-cache` and the oracle (those that ran), with scenario events as dotted lines and the
  learned policy's time to converge (else the best baseline's) as a marker.
- `<scenario>-pred-error.png`: when some run's diagnostics hold `pred_error` = [(t, r2, rel_err), ...]: relative
  error and R^2 over simulated time, one line per policy and seed.
- `ratios.png`: per scenario, the learned policy's and the oracle's mean-TTFT ratio to the best baseline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lodestar.eval.metrics import mean_curve
from lodestar.eval.runner import EvalRun
from lodestar.eval.suite import ORACLE_POLICY, REFERENCE_POLICY


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _learning_curves(path: Path, name: str, ev: EvalRun, t: dict[str, Any], events: list[Any]) -> None:
    plt = _plt()
    runs = [r for r in ev.runs if r["scenario"] == name]
    shown: list[tuple[str, str]] = []
    for p, label in [
        (ev.learned, f"{ev.learned} (learned)"),
        (t["best_baseline_mean"], f"{t['best_baseline_mean']} (best baseline)"),
        (REFERENCE_POLICY, REFERENCE_POLICY),
        (ORACLE_POLICY, f"{ORACLE_POLICY} (sim only)"),
    ]:
        if p and p in t["policies"] and all(p != q for q, _ in shown):
            shown.append((p, label))
    if not shown:
        return
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ymax, ymin = 0.0, np.inf
    for i, (p, label) in enumerate(shown):
        curves = [(r["eval"]["curve"]["t"], r["eval"]["curve"]["ttft_mean_s"]) for r in runs if r["policy"] == p]
        x, y = mean_curve(curves)
        if x.size == 0:
            continue
        ok = ~np.isnan(y)
        if ok.any():
            ymax, ymin = max(ymax, float(y[ok].max())), min(ymin, float(y[ok][y[ok] > 0].min(initial=np.inf)))
        ax.plot(x, y, label=label, lw=2.0 if i == 0 else 1.2, ls="-" if p != ORACLE_POLICY else "--")
    conv_p = ev.learned if ev.learned in t["policies"] else t["best_baseline_mean"]
    conv = t["policies"].get(conv_p, {}).get("convergence_s") if conv_p else None
    if conv is not None:
        ax.axvline(conv, color="k", lw=0.8, alpha=0.6, label=f"{conv_p}: time to converge {conv:.0f} s")
    for ev_ in events:
        what = "slowdown" if ev_.slowdown is not None else "fail" if ev_.fail else "add"
        ax.axvline(ev_.at_s, color="grey", ls=":", lw=1)
        ax.annotate(what, (ev_.at_s, 0.03), xycoords=("data", "axes fraction"), fontsize=7, rotation=90)
    if np.isfinite(ymin) and ymin > 0 and ymax / ymin > 20:
        ax.set_yscale("log")
    ax.set_xlabel("arrival time (simulated s)")
    ax.set_ylabel("rolling mean TTFT, 30 s window (s)")
    ax.set_title(f"{name}: learning curves (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pred_error(path: Path, name: str, ev: EvalRun) -> None:
    series = []
    for r in ev.runs:
        diag = r["eval"].get("diagnostics") or {}
        pts = diag.get("pred_error") if isinstance(diag, dict) else None
        if not isinstance(pts, list):
            continue
        rows = [p for p in pts if isinstance(p, list) and len(p) >= 3 and p[0] is not None]
        if r["scenario"] == name and rows:
            series.append((f"{r['policy']} seed {r['seed']}", rows))
    if not series:
        return
    plt = _plt()
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for label, rows in series:
        tt = [p[0] for p in rows]
        a1.plot(tt, [np.nan if p[2] is None else p[2] for p in rows], label=label, lw=1)
        a2.plot(tt, [np.nan if p[1] is None else p[1] for p in rows], label=label, lw=1)
    a1.set_ylabel("relative error")
    a2.set_ylabel("R^2")
    a2.set_xlabel("simulated s")
    a1.set_title(f"{name}: reward-prediction error over time")
    for a in (a1, a2):
        a.grid(alpha=0.3)
    a1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ratios(path: Path, ev: EvalRun, table: dict[str, dict[str, Any]]) -> None:
    names = list(table)
    learned = [table[n]["ratios"]["learned_vs_best_mean"] for n in names]
    oracle = [table[n]["ratios"]["oracle_vs_best_mean"] for n in names]
    if not names or all(v is None for v in learned + oracle):
        return
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names) + 2), 4.5))
    x = np.arange(len(names))
    w = 0.4
    ax.bar(x - w / 2, [np.nan if v is None else v for v in learned], w, label=f"{ev.learned} / best baseline")
    ax.bar(x + w / 2, [np.nan if v is None else v for v in oracle], w, label="oracle / best baseline")
    ax.axhline(1.0, color="k", lw=0.8)
    vals = [v for v in learned + oracle if v is not None and v > 0]
    if vals and max(vals) / min(vals) > 10:
        ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("mean TTFT ratio (lower is better)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(folder: Path, ev: EvalRun, table: dict[str, dict[str, Any]]) -> list[Path]:
    """Write every plot that has data; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    events = {s.name: sorted(s.scenario.events, key=lambda e: e.at_s) for s in ev.suite.scenarios}
    for name, t in table.items():
        _learning_curves(folder / f"{name}.png", name, ev, t, events.get(name, []))
        _pred_error(folder / f"{name}-pred-error.png", name, ev)
    _ratios(folder / "ratios.png", ev, table)
    return sorted(folder.glob("*.png"))
