"""The evaluation report: aggregation over seeds, ratios to the best baseline, results.json and summary.md.

Consumes: an `EvalRun` (`lodestar.eval.runner`). Produces, in the output folder: `results.json` (every run's
summary dict with its `eval` section, the per-scenario table, the geometric means, notes, skipped scenarios and
errors), `summary.md` (the tables described in docs/eval.md) and the plots of `lodestar.eval.plots`.

Aggregation: per scenario and policy, mean TTFT and P99 TTFT are means over seeds of each run's statistic.
Baselines are the registered policies other than the oracle, the learned policy, any `sim_only` policy and any
policy whose class declares `learning = True`. The best baseline is chosen per statistic (the lowest mean TTFT for
the mean ratio, the lowest P99 for the P99 ratio). Ratios below 1 mean "better than the baseline".
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from lodestar.eval.metrics import convergence_time, geomean, ratio, ratio_curve
from lodestar.eval.runner import EvalRun
from lodestar.eval.suite import ORACLE_POLICY, REFERENCE_POLICY, is_learning

RATIO_KEYS = [
    ("learned_vs_best_mean", "learned / best (mean)"),
    ("learned_vs_best_p99", "learned / best (P99)"),
    ("learned_vs_prefix_cache_mean", f"learned / {REFERENCE_POLICY} (mean)"),
    ("learned_vs_prefix_cache_p99", f"learned / {REFERENCE_POLICY} (P99)"),
    ("oracle_vs_best_mean", "oracle / best (mean)"),
    ("oracle_vs_best_p99", "oracle / best (P99)"),
]


def baseline_names(policies: list[str], learned: str) -> list[str]:
    """The non-learning baselines among `policies` (see the module docstring)."""
    from lodestar.policies.base import policy_registry

    reg = policy_registry()
    out = []
    for p in policies:
        cls = reg.get(p)
        if p in (ORACLE_POLICY, learned) or cls is None or cls.sim_only or is_learning(cls):
            continue
        out.append(p)
    return out


def _mean(vals: list[float | None]) -> float | None:
    xs = [v for v in vals if v is not None and math.isfinite(v)]
    return float(np.mean(xs)) if xs else None


def aggregate(ev: EvalRun) -> dict[str, dict[str, Any]]:
    """Per scenario (suite order): per-policy means over seeds, the best baselines, the ratios."""
    baselines = baseline_names(ev.policies, ev.learned)
    table: dict[str, dict[str, Any]] = {}
    for s in ev.suite.scenarios:
        runs = [r for r in ev.runs if r["scenario"] == s.name]
        if not runs:
            continue
        pol: dict[str, dict[str, Any]] = {}
        for p in ev.policies:
            rs = [r for r in runs if r["policy"] == p]
            if not rs:
                continue
            pol[p] = {
                "seeds": [r["seed"] for r in rs],
                "ttft_mean_s": _mean([r["ttft_s"]["mean"] for r in rs]),
                "ttft_p99_s": _mean([r["ttft_s"]["p99"] for r in rs]),
                "convergence_s": _mean([r["eval"]["convergence_s"] for r in rs]),
                "completed": sum(r["requests"]["completed"] for r in rs),
                "failed": sum(r["requests"]["failed"] for r in rs),
                "total": sum(r["requests"]["total"] for r in rs),
            }
        base = {p: pol[p] for p in baselines if p in pol}
        best_mean = min(base, key=lambda p: base[p]["ttft_mean_s"]) if base else None
        best_p99 = min(base, key=lambda p: base[p]["ttft_p99_s"]) if base else None

        def stat(p: str | None, key: str, pol: dict[str, dict[str, Any]] = pol) -> float | None:
            return pol[p][key] if p is not None and p in pol else None

        learned, ref = ev.learned, REFERENCE_POLICY
        ratios = {
            "learned_vs_best_mean": ratio(stat(learned, "ttft_mean_s"), stat(best_mean, "ttft_mean_s")),
            "learned_vs_best_p99": ratio(stat(learned, "ttft_p99_s"), stat(best_p99, "ttft_p99_s")),
            "learned_vs_prefix_cache_mean": ratio(stat(learned, "ttft_mean_s"), stat(ref, "ttft_mean_s")),
            "learned_vs_prefix_cache_p99": ratio(stat(learned, "ttft_p99_s"), stat(ref, "ttft_p99_s")),
            "oracle_vs_best_mean": ratio(stat(ORACLE_POLICY, "ttft_mean_s"), stat(best_mean, "ttft_mean_s")),
            "oracle_vs_best_p99": ratio(stat(ORACLE_POLICY, "ttft_p99_s"), stat(best_p99, "ttft_p99_s")),
        }
        # learning time: the learned/oracle ratio curve settles (metrics module docstring)
        pairs = [
            (lr["eval"]["curve"], orc["eval"]["curve"])
            for lr in runs
            if lr["policy"] == learned
            for orc in runs
            if orc["policy"] == ORACLE_POLICY and orc["seed"] == lr["seed"]
        ]
        learning_s = None
        if pairs:
            rt, ry = ratio_curve(
                [(a["t"], a["ttft_mean_s"]) for a, _ in pairs], [(b["t"], b["ttft_mean_s"]) for _, b in pairs]
            )
            learning_s = convergence_time(rt, ry) if rt.size else None
        table[s.name] = {
            "description": s.scenario.description,
            "ideal_ttft_mean_s": _mean([r["ideal_ttft_s"]["mean"] for r in runs]),
            "best_baseline_mean": best_mean,
            "best_baseline_p99": best_p99,
            "ratios": ratios,
            "learned_convergence_s": stat(learned, "convergence_s"),
            "learned_learning_s": learning_s,
            "policies": pol,
        }
    return table


def geomeans(table: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Geometric mean over scenarios of every ratio (scenarios where the ratio is defined)."""
    return {k: geomean(t["ratios"][k] for t in table.values()) for k, _ in RATIO_KEYS}


def compression_notes(ev: EvalRun) -> list[str]:
    """Scenarios whose `load` rescaling squeezed the arrivals well inside the requested window (synthetic kinds)."""
    notes = []
    seen: set[str] = set()
    for r in ev.runs:
        e = r["eval"]
        dur, span = e.get("workload_duration_s"), e.get("workload_span_s") or 0.0
        if r["scenario"] in seen or e.get("workload_kind") != "synthetic" or not dur:
            continue
        seen.add(r["scenario"])
        if span < 0.75 * float(dur):
            notes.append(
                f"scenario {r['scenario']!r}: arrivals span {span:.0f} s of the {float(dur):.0f} s window: `load` "
                f"compressed time {float(dur) / max(span, 1e-9):.1f}x; set synthetic.rate_rps near load x capacity"
            )
    return notes


def _f(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _x(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def _policy_matrix(table: dict[str, dict[str, Any]], policies: list[str], key: str, digits: int) -> list[str]:
    lines = ["| scenario | " + " | ".join(policies) + " |", "|---" * (len(policies) + 1) + "|"]
    for name, t in table.items():
        cells = [_f(t["policies"][p][key], digits) if p in t["policies"] else "-" for p in policies]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def markdown(ev: EvalRun, table: dict[str, dict[str, Any]], gm: dict[str, float | None]) -> str:
    """The text of summary.md."""
    L = ev.learned
    out = [
        f"# lodestar eval: suite `{ev.suite.name}`",
        "",
        ev.suite.description,
        "",
        f"Policies: {', '.join(ev.policies)}. Seeds: {ev.seeds}. Learned policy: `{L}`"
        f"{'' if L in ev.policies else ' (not run)'}. Runs: {len(ev.runs)}; wall {ev.wall_s:.0f} s on {ev.jobs} "
        "worker(s). TTFT in seconds; every figure is a mean over seeds; learning policies start untrained.",
        "",
    ]
    notes = ev.notes + [f"skipped scenario `{s['scenario']}`: {s['reason']}" for s in ev.skipped]
    notes += compression_notes(ev)
    notes += [f"run failed: {e['scenario']} / {e['policy']} / seed {e['seed']}: {e['error']}" for e in ev.errors]
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    out += [
        "## Headline",
        "",
        "Best baseline = lowest among non-learning policies (oracle and learned excluded), chosen separately for "
        "the mean and the P99. Ratios < 1 are better than that baseline.",
        "",
        f"| scenario | ideal | best baseline (mean / P99) | best mean | best P99 | {L} mean | {L} P99 | "
        + " | ".join(label.replace("learned", L) for _, label in RATIO_KEYS)
        + f" | {L} converge (s) | best baseline converge (s) | {L} learning time vs oracle (s) |",
        "|---" * (7 + len(RATIO_KEYS) + 3) + "|",
    ]
    for name, t in table.items():
        pol, bm, bp = t["policies"], t["best_baseline_mean"], t["best_baseline_p99"]
        lp = pol.get(L, {})
        out.append(
            f"| {name} | {_f(t['ideal_ttft_mean_s'])} | {bm} / {bp} | "
            f"{_f(pol[bm]['ttft_mean_s'] if bm else None)} | {_f(pol[bp]['ttft_p99_s'] if bp else None)} | "
            f"{_f(lp.get('ttft_mean_s'))} | {_f(lp.get('ttft_p99_s'))} | "
            + " | ".join(_x(t["ratios"][k]) for k, _ in RATIO_KEYS)
            + f" | {_f(t['learned_convergence_s'], 0)} | {_f(pol[bm]['convergence_s'] if bm else None, 0)}"
            + f" | {_f(t.get('learned_learning_s'), 0)} |"
        )
    out.append(
        "| **geometric mean** | | | | | | | " + " | ".join(f"**{_x(gm[k])}**" for k, _ in RATIO_KEYS) + " | | | |"
    )
    out += ["", "## Mean TTFT (s) per policy", "", *_policy_matrix(table, ev.policies, "ttft_mean_s", 3)]
    out += ["", "## P99 TTFT (s) per policy", "", *_policy_matrix(table, ev.policies, "ttft_p99_s", 3)]
    out += [
        "",
        "## Time to converge (s) per policy",
        "",
        "First time after which the 30 s rolling mean TTFT stays within 10% of its steady state (the mean of the "
        "rolling curve over the last third of the run); the run's end if it never settles. See docs/eval.md.",
        "",
    ]
    out += _policy_matrix(table, ev.policies, "convergence_s", 0)
    if any(p["failed"] for t in table.values() for p in t["policies"].values()):
        out += ["", "## Failed requests (sum over seeds)", "", *_policy_matrix(table, ev.policies, "failed", 0)]
    out += ["", "Plots: `plots/<scenario>.png` (learning curves), `plots/<scenario>-pred-error.png` (when a policy "
            "reports diagnostics), `plots/ratios.png`."]  # fmt: skip
    return "\n".join(out) + "\n"


def load_eval_run(results_json: Path) -> EvalRun:
    """Rebuild an `EvalRun` from a results.json (to re-render a report with newer report code)."""
    from lodestar.eval.suite import load_suite

    doc = json.loads(Path(results_json).read_text())
    return EvalRun(
        suite=load_suite(doc["suite"]), policies=doc["policies"], seeds=doc["seeds"], learned=doc["learned_policy"],
        runs=doc["runs"], skipped=doc["skipped"], errors=doc["errors"], notes=[], wall_s=doc["wall_s"],
        jobs=doc["jobs"],
    )  # fmt: skip


def write_report(out_dir: Path, ev: EvalRun, plots: bool = True) -> dict[str, Any]:
    """Write results.json, summary.md and (unless `plots` is False) the plots; returns the results.json dict."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = aggregate(ev)
    gm = geomeans(table)
    doc = {
        "suite": ev.suite.name,
        "description": ev.suite.description,
        "policies": ev.policies,
        "seeds": ev.seeds,
        "learned_policy": ev.learned,
        "wall_s": ev.wall_s,
        "jobs": ev.jobs,
        "notes": ev.notes + compression_notes(ev),
        "skipped": ev.skipped,
        "errors": ev.errors,
        "scenarios": table,
        "geomean": gm,
        "runs": ev.runs,
    }
    (out_dir / "results.json").write_text(json.dumps(doc, indent=1))
    (out_dir / "summary.md").write_text(markdown(ev, table, gm))
    if plots:
        from lodestar.eval.plots import write_plots

        write_plots(out_dir / "plots", ev, table)
    return doc
