"""The command line: the result JSON contract, compare outputs, one-line errors, README/CI agreement."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def lodestar(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from lodestar.cli import main; main()", *args],
        capture_output=True, text=True, cwd=cwd, timeout=300,
    )  # fmt: skip


def small_scenario(tmp_path: Path, extra: str = "") -> Path:
    p = tmp_path / "small.yaml"
    p.write_text(
        "name: small\n"
        "cluster:\n  instances:\n    - {gpu: a100-80g, count: 2}\n"
        "workload:\n  kind: synthetic\n  duration_s: 30\n  synthetic: {rate_rps: 4}\n" + extra
    )
    return p


def test_sim_writes_contract_json_and_csv(tmp_path):
    sc = small_scenario(tmp_path)
    out, csv = tmp_path / "r.json", tmp_path / "r.csv"
    p = lodestar("sim", "--scenario", str(sc), "--policy", "least-request", "--seed", "1",
                 "--out", str(out), "--requests-out", str(csv))  # fmt: skip
    assert p.returncode == 0, p.stderr
    r = json.loads(out.read_text())
    assert r["scenario"] == "small" and r["policy"] == "least-request" and r["seed"] == 1
    assert set(r["requests"]) >= {"total", "completed", "failed"}
    for sec in ("ttft_s", "tpot_s", "e2e_s"):
        assert set(r[sec]) >= {"mean", "p50", "p90", "p99"}
        assert r[sec]["p50"] <= r[sec]["p90"] <= r[sec]["p99"]
    assert 0.0 <= r["prefix_hit_ratio"] <= 1.0
    assert 0 < r["ideal_ttft_s"]["mean"] <= r["ttft_s"]["mean"]
    assert r["sim_duration_s"] > 0 and r["wall_s"] > 0
    assert [p["id"] for p in r["per_instance"]] == ["i0", "i1"]
    assert {"id", "gpu", "requests", "ttft_s_mean"} <= set(r["per_instance"][0])
    assert sum(p["requests"] for p in r["per_instance"]) == r["requests"]["total"]
    rows = csv.read_text().strip().splitlines()
    assert rows[0].startswith("id,arrival_s,instance")
    assert len(rows) == r["requests"]["total"] + 1


def test_compare_writes_summary_and_plots(tmp_path):
    sc = small_scenario(tmp_path)
    p = lodestar("compare", "--scenario", str(sc), "--policies", "random,least-request", "--seeds", "0,1",
                 "--out", str(tmp_path / "cmp"))  # fmt: skip
    assert p.returncode == 0, p.stderr
    s = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    assert len(s["runs"]) == 4 and set(s["policies"]) == {"random", "least-request"}
    md = (tmp_path / "cmp" / "summary.md").read_text()
    assert "| least-request |" in md and "| random |" in md
    for png in ("ttft_cdf.png", "ttft_over_time.png"):
        assert (tmp_path / "cmp" / png).stat().st_size > 1000


@pytest.mark.parametrize(
    "args,needle",
    [
        (["sim", "--scenario", "no-such-scenario"], "unknown scenario"),
        (["sim", "--policy", "no-such-policy"], "unknown policy"),
        (["sim", "--scenario", "missing.yaml"], "not found"),
        (["compare", "--seeds", "a,b"], "--seeds"),
    ],
)
def test_user_errors_are_one_line(args, needle):
    p = lodestar(*args)
    assert p.returncode == 2
    assert needle in p.stderr
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "body,needle",
    [
        ("name: x\ncluster:\n  instances:\n    - {gpu: v100}\n", "cluster.instances.0"),
        ("name: x\ncluster:\n  instances:\n    - {gpu: h100, colour: red}\n", "colour"),
        ("name: x\ncluster: [\n", "line"),
        ("name: x\ncluster:\n  instances: []\n", "cluster.instances"),
        (
            "name: x\ncluster:\n  instances:\n    - {gpu: h100}\nevents:\n  - {at_s: 1, instance: 5, fail: true}\n",
            "no instance 5",
        ),
        (
            "name: x\ncluster:\n  instances:\n    - {gpu: h100}\nworkload: {kind: mooncake, path: nope.jsonl}\n",
            "nope.jsonl",
        ),
    ],
)
def test_bad_scenarios_name_file_and_key(tmp_path, body, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(body)
    p = lodestar("sim", "--scenario", str(f))
    assert p.returncode == 2, p.stdout
    assert needle in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_policies_lists_registered_names():
    p = lodestar("policies")
    assert p.returncode == 0
    for name in ("random", "round-robin", "least-request", "oracle"):
        assert name in p.stdout


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    blocks = [ln for ln in readme[:8] if ln.startswith("pip install")]
    assert len(blocks) == 2, "README must start with the install+run and the test commands"
    test_cmd = blocks[1].split("#")[0].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci.splitlines()


def test_builtin_scenarios_parse():
    from lodestar.sim.scenario import builtin_scenarios, load_scenario

    names = builtin_scenarios()
    assert "synthetic-chat" in names
    for n in names:
        assert load_scenario(n).name == n
