"""`lodestar eval`: suite files, convergence and ratio helpers, an end-to-end run of a tiny suite."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from lodestar.engine.hardware import get_gpu
from lodestar.eval.metrics import convergence_time, geomean, mean_curve, ratio, rolling_mean_curve, steady_state
from lodestar.eval.report import write_report
from lodestar.eval.runner import Job, run_job, run_suite
from lodestar.eval.suite import builtin_suites, load_suite, missing_data, resolve_policies, suites_root
from lodestar.sim.scenario import parse_scenario

# ---- metrics -------------------------------------------------------------------------------------------------------


def test_convergence_of_a_curve_that_settles_at_50():
    t = np.arange(0, 301, 5.0)
    y = np.where(t < 50, 5.0, 1.0)
    assert convergence_time(t, y) == pytest.approx(50, abs=5)
    # small noise inside the 10% band does not move it
    rng = np.random.default_rng(0)
    noisy = y * (1 + rng.uniform(-0.05, 0.05, t.size))
    assert convergence_time(t, noisy) == pytest.approx(50, abs=5)


def test_convergence_of_a_flat_curve_is_its_start():
    t = np.arange(0, 301, 5.0)
    assert convergence_time(t, np.full(t.size, 0.3)) == pytest.approx(0)


def test_convergence_edge_cases():
    t = np.arange(0, 301, 5.0)
    # a curve whose last point is outside the band never settled: the end of the curve
    y = np.ones(t.size)
    y[-1] = 3.0
    assert convergence_time(t, y) == t[-1]
    # NaN points (windows without requests) are ignored
    y = np.where(t < 100, 4.0, 1.0)
    y[t == 200] = np.nan
    assert convergence_time(t, y) == pytest.approx(100)
    assert convergence_time([], []) is None
    assert math.isclose(steady_state(t, np.where(t >= 200, 2.0, 0.0)), 2.0)


def test_rolling_mean_curve_windows_by_arrival():
    arrival = np.array([0.5, 1.0, 6.0, 12.0, 13.0])
    ttft = np.array([1.0, 3.0, 5.0, 7.0, np.nan])
    ok = np.array([True, True, True, True, False])
    t, y = rolling_mean_curve(arrival, ttft, ok, window_s=5.0, step_s=5.0)
    assert list(t) == [5.0, 10.0, 15.0]
    assert y[0] == pytest.approx(2.0)  # (0, 5]: 1 and 3
    assert y[1] == pytest.approx(5.0)  # (5, 10]: 5
    assert y[2] == pytest.approx(7.0)  # (10, 15]: 7 (the failed one is left out)


def test_geomean_and_ratio():
    assert geomean([1.0, 4.0]) == pytest.approx(2.0)
    assert geomean([2.0, None, float("nan"), 0.0, 8.0]) == pytest.approx(4.0)
    assert geomean([]) is None
    assert ratio(1.0, 2.0) == 0.5
    assert ratio(1.0, 0.0) is None and ratio(None, 1.0) is None
    t, y = mean_curve([([5, 10, 15], [1.0, 2.0, 3.0]), ([5, 10], [3.0, None])])
    assert list(t) == [5, 10, 15] and list(y) == [2.0, 2.0, 3.0]


# ---- suite files ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", ["default", "quick"])
def test_packaged_suite_files_parse(suite):
    assert suite in builtin_suites()
    folder = suites_root() / suite
    listed = yaml.safe_load((folder / "suite.yaml").read_text())["scenarios"]
    files = sorted(p for p in folder.glob("*.yaml") if p.name != "suite.yaml")
    assert sorted(p.stem for p in files) == sorted(listed), "every scenario file is listed, and only those"
    for f in files:
        sc = parse_scenario(yaml.safe_load(f.read_text()), str(f), f.parent)
        assert sc.name == f.stem
        groups = list(sc.cluster.instances) + [e.add for e in sc.events if e.add is not None]
        for g in groups:
            get_gpu(g.gpu)  # raises for an unknown GPU
        if suite == "quick":
            assert sc.workload.get("kind", "synthetic") == "synthetic", "quick runs without shared data"
    s = load_suite(suite)
    assert len(s.scenarios) == len(listed) and s.seeds


def test_default_suite_covers_the_brief():
    s = load_suite("default")
    assert len(s.scenarios) >= 12 and len(s.seeds) == 3
    kinds = {x.scenario.workload.get("kind") for x in s.scenarios}
    assert kinds == {"synthetic", "mooncake", "azure"}
    gpus = [{g.gpu for g in x.scenario.cluster.instances} for x in s.scenarios]
    assert sum(len(g) > 1 for g in gpus) >= 3  # heterogeneous mixes
    sizes = {x.scenario.num_initial_instances for x in s.scenarios if len(x.scenario.cluster.instances) == 1}
    assert min(sizes) == 4 and max(sizes) == 16
    events = [e for x in s.scenarios for e in x.scenario.events]
    assert any(e.slowdown for e in events) and any(e.fail for e in events) and any(e.add for e in events)


# ---- runs ----------------------------------------------------------------------------------------------------------


def _tiny_suite(root: Path, extra: dict | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    a = {
        "name": "tiny-a100x2",
        "cluster": {"instances": [{"gpu": "a100-80g", "count": 2}]},
        "workload": {"kind": "synthetic", "duration_s": 40, "synthetic": {"rate_rps": 6}},
    }
    b = {
        "name": "tiny-hetero",
        "cluster": {"instances": [{"gpu": "h100", "count": 1}, {"gpu": "l4", "count": 1}]},
        "workload": {"kind": "synthetic", "duration_s": 40, "synthetic": {"preset": "prefix-heavy", "rate_rps": 3}},
        "events": [{"at_s": 20, "instance": 1, "slowdown": 2.0}],
    }
    scenarios = [a, b] + ([extra] if extra else [])
    for sc in scenarios:
        (root / f"{sc['name']}.yaml").write_text(yaml.safe_dump(sc))
    suite = {"name": "tiny", "seeds": [0], "policies": ["round-robin", "least-request", "prefix-cache"]}
    suite["scenarios"] = [sc["name"] for sc in scenarios]
    (root / "suite.yaml").write_text(yaml.safe_dump(suite))
    return root


def test_tiny_suite_end_to_end(tmp_path):
    suite = load_suite(_tiny_suite(tmp_path / "suite"))
    names, notes = resolve_policies(suite.policies, learned="least-request")
    assert names[-1] == "least-request" and not notes
    seen: list[str] = []
    ev = run_suite(suite, names, suite.seeds, jobs=2, learned="least-request",
                   on_done=lambda k, n, job, s, e: seen.append(job.policy))  # fmt: skip
    assert not ev.errors and len(ev.runs) == 6 and len(seen) == 6
    assert [(r["scenario"], r["policy"]) for r in ev.runs][:3] == [
        ("tiny-a100x2", "round-robin"), ("tiny-a100x2", "prefix-cache"), ("tiny-a100x2", "least-request"),
    ]  # fmt: skip
    doc = write_report(tmp_path / "out", ev)
    out = tmp_path / "out"
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["runs"]) == 6 and saved["runs"][0]["ttft_s"]["mean"] > 0
    assert {"curve", "convergence_s", "steady_ttft_s", "diagnostics"} <= set(saved["runs"][0]["eval"])
    row = doc["scenarios"]["tiny-a100x2"]
    assert row["best_baseline_mean"] in ("round-robin", "prefix-cache")  # the "learned" one is not a baseline
    assert row["ratios"]["learned_vs_best_mean"] is not None
    assert row["ratios"]["learned_vs_prefix_cache_p99"] is not None
    assert row["ratios"]["oracle_vs_best_mean"] is None  # the oracle did not run
    assert doc["geomean"]["learned_vs_best_mean"] is not None
    md = (out / "summary.md").read_text()
    for col in ["least-request / best (mean)", "least-request / best (P99)", "least-request / prefix-cache (mean)",
                "oracle / best (mean)", "geometric mean", "ideal", "Time to converge"]:  # fmt: skip
        assert col in md
    assert (out / "plots" / "tiny-hetero.png").is_file() and (out / "plots" / "ratios.png").is_file()

    # deterministic: the same job in this process gives the same numbers as in the worker pool
    r0 = ev.runs[0]
    again = run_job(Job((0, 0, 0), r0["scenario"], r0["eval"]["scenario_file"], r0["policy"], 0))
    assert again["ttft_s"] == r0["ttft_s"] and again["eval"]["curve"] == r0["eval"]["curve"]


def test_missing_shared_data_is_skipped_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setenv("LODESTAR_SHARED_DATA", str(tmp_path / "no-such-folder"))
    trace = {
        "name": "needs-trace",
        "cluster": {"instances": [{"gpu": "a100-80g", "count": 2}]},
        "workload": {"kind": "mooncake", "path": "shared:traces/mooncake_fast25/conversation_trace.jsonl"},
    }
    suite = load_suite(_tiny_suite(tmp_path / "suite", extra=trace))
    assert missing_data(suite.scenarios[2].scenario) is not None
    ev = run_suite(suite, ["round-robin"], [0], jobs=1)
    assert [s["scenario"] for s in ev.skipped] == ["needs-trace"] and len(ev.runs) == 2
    write_report(tmp_path / "out", ev, plots=False)
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "skipped scenario `needs-trace`" in md and "lodestar" in md


def test_unregistered_policies_are_skipped_with_a_note():
    names, notes = resolve_policies(["least-request", "no-such-policy"])
    assert names == ["least-request"] and "no-such-policy" in notes[0]
    all_names, _ = resolve_policies(None)
    assert "oracle" in all_names and "least-request" in all_names


def test_diagnostics_hook_is_recorded(tmp_path, monkeypatch):
    from lodestar.policies.simple import LeastRequestPolicy

    def diagnostics(self):
        return {"pred_error": [(float(t), 0.5, 0.1) for t in range(2000)], "note": float("nan")}

    monkeypatch.setattr(LeastRequestPolicy, "diagnostics", diagnostics, raising=False)
    suite = load_suite(_tiny_suite(tmp_path / "suite"))
    ev = run_suite(suite, ["least-request"], [0], jobs=1)
    diag = ev.runs[0]["eval"]["diagnostics"]
    assert len(diag["pred_error"]) == 500 and diag["pred_error"][0] == [0.0, 0.5, 0.1] and diag["note"] is None
    write_report(tmp_path / "out", ev)
    assert (tmp_path / "out" / "plots" / "tiny-a100x2-pred-error.png").is_file()


def test_cli_eval(tmp_path):
    import subprocess
    import sys

    suite = _tiny_suite(tmp_path / "suite")
    out = tmp_path / "out"
    base = [sys.executable, "-c", "from lodestar.cli import main; main()", "eval"]
    cmd = [*base, "--suite", str(suite), "--policies", "round-robin,no-such-policy", "--seeds", "1", "--jobs", "1",
           "--no-plots", "--out", str(out)]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "[1/2] tiny-a100x2 round-robin seed 1" in p.stderr and "no-such-policy" in p.stderr
    assert json.loads((out / "results.json").read_text())["seeds"] == [1]
    bad = subprocess.run([*base, "--suite", "no-such-suite"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown suite")


def test_learning_time_on_ratio_to_oracle():
    from lodestar.eval.metrics import convergence_time, ratio_curve

    t = [float(x) for x in range(5, 305, 5)]
    oracle = [0.05 + 0.02 * ((i * 7) % 5) for i in range(len(t))]  # noisy, shared by both policies
    learner = [o * (2.0 if x < 50 else 1.05) for o, x in zip(oracle, t, strict=True)]
    rt, ry = ratio_curve([(t, learner)], [(t, oracle)])
    assert list(rt) == t
    assert abs(ry[0] - 2.0) < 1e-9 and abs(ry[-1] - 1.05) < 1e-9
    assert convergence_time(rt, ry) == 50.0  # the common noise cancels; only the learner's catch-up remains


def test_quick_suite_smoke(tmp_path):
    """The CI smoke run of `lodestar eval --suite quick`: every policy, every quick scenario, the stable claims."""
    suite = load_suite("quick")
    names, _ = resolve_policies(suite.policies, learned="lodestar")
    assert "lodestar" in names and "oracle" in names
    ev = run_suite(suite, names, suite.seeds, jobs=2, learned="lodestar")
    assert not ev.errors and len(ev.runs) == len(suite.scenarios) * len(names) * len(suite.seeds)
    doc = write_report(tmp_path / "out", ev, plots=False)
    for name, row in doc["scenarios"].items():
        pol = row["policies"]
        ls = pol["lodestar"]["ttft_mean_s"]
        assert ls < pol["random"]["ttft_mean_s"] and ls < pol["round-robin"]["ttft_mean_s"], name
        assert ls <= 1.5 * pol["oracle"]["ttft_mean_s"], name
    assert doc["geomean"]["learned_vs_best_mean"] < 1.0  # better than the best baseline of each scenario, overall
