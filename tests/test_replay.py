"""`lodestar replay`: workloads to text with the same shared prefixes, and a replay against an emulated engine that
writes the result JSON contract (DESIGN.md 4.2). Engines run on 127.0.0.1 in a background thread, stopped by the
test that starts them."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from lodestar.emulator import EmulatorConfig, FaultUpdate
from lodestar.emulator.background import EmulatorThread
from lodestar.errors import UserError
from lodestar.replay import ReplayOptions, load_replay_workload, run_replay
from lodestar.replay.text import PromptBuilder, segment_text
from lodestar.sim.api import run_one
from lodestar.text_blocks import prompt_segments

SMALL = (
    "name: tiny\nseed: 3\n"
    "cluster:\n  instances:\n    - {gpu: h100, model: llama-3-8b, count: 1}\n"
    "workload:\n  kind: synthetic\n  duration_s: 12\n"
    "  synthetic: {rate_rps: 2.0, think_time_s: {mean: 1.5, median: 1.0, min: 0.5, max: 4.0},\n"
    "              output_tokens: {mean: 40, median: 30, min: 4, max: 120}}\n"
)


def test_segment_text_shares_exactly_the_common_segments():
    assert segment_text(123, 5) == segment_text(123, 5) and len(segment_text(123, 5)) == 20
    assert segment_text(123, 5) != segment_text(124, 5)
    reqs, _, _ = load_replay_workload("prefix-heavy", seed=0, duration_s=20)
    b = PromptBuilder()
    for r1, r2 in itertools.pairwise(reqs):
        t1, t2 = b.text(r1), b.text(r2)
        assert len(t1) == 4 * r1.prompt_tokens
        common_tokens = 0
        for k1, k2, n in zip(r1.segment_keys, r2.segment_keys, r1.segment_tokens, strict=False):
            if k1 != k2:
                break
            common_tokens += n
        # the hashing blocks the emulator and the gateway compute share exactly the whole common blocks
        k1s, _ = prompt_segments(t1)
        k2s, _ = prompt_segments(t2)
        shared_blocks = next(
            (i for i, (a, c) in enumerate(zip(k1s, k2s, strict=False)) if a != c), min(len(k1s), len(k2s))
        )
        whole = min(common_tokens // 16, len(t1) // 64, len(t2) // 64)
        assert shared_blocks == whole or (shared_blocks == whole + 1 and common_tokens % 16 == 0)


def test_workload_sources(tmp_path: Path):
    reqs, sc, seed = load_replay_workload(None)
    assert sc.name == "synthetic" and reqs and seed == 0
    wl = tmp_path / "wl.yaml"
    wl.write_text("kind: synthetic\nduration_s: 10\nsynthetic: {rate_rps: 1.0}\n")
    reqs, sc, _ = load_replay_workload(str(wl), seed=1)
    assert sc.name == "wl" and 0 < len(reqs) < 40 and reqs[-1].arrival_s < 10
    nested = tmp_path / "nested.yaml"
    nested.write_text("workload: {kind: synthetic, duration_s: 5}\n")
    assert load_replay_workload(str(nested))[1].name == "nested"
    sc_file = tmp_path / "tiny.yaml"
    sc_file.write_text(SMALL)
    reqs, sc, seed = load_replay_workload(str(sc_file))
    assert sc.name == "tiny" and seed == 3
    with pytest.raises(UserError, match="not a file"):
        load_replay_workload("no-such-thing")
    loaded = tmp_path / "loaded.yaml"  # a bare workload's load is relative to one assumed instance
    loaded.write_text("kind: synthetic\nduration_s: 30\nload: 0.5\n")
    slow = load_replay_workload(str(loaded), assume_gpu="l4")[0]
    fast = load_replay_workload(str(loaded), assume_gpu="h100")[0]
    assert len(fast) > 1.5 * len(slow)
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: nope\n")
    with pytest.raises(UserError, match="kind"):
        load_replay_workload(str(bad))


def test_replay_against_emulator_writes_contract_json(tmp_path: Path):
    sc_file = tmp_path / "tiny.yaml"
    sc_file.write_text(SMALL)
    out, csv = tmp_path / "r.json", tmp_path / "r.csv"
    with EmulatorThread([EmulatorConfig(gpu="h100", port=0, time_scale=0.5)]) as emu:
        p = subprocess.run(
            [sys.executable, "-m", "lodestar.emulator", "replay", "--workload", str(sc_file), "--target", emu.urls[0],
             "--time-scale", "0.5", "--out", str(out), "--requests-out", str(csv), "--policy", "direct"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert p.returncode == 0, p.stderr
    r = json.loads(out.read_text())
    assert r["scenario"] == "tiny" and r["policy"] == "direct" and r["seed"] == 3
    assert r["requests"]["total"] == r["requests"]["completed"] > 10 and r["requests"]["failed"] == 0
    for sec in ("ttft_s", "tpot_s", "e2e_s"):
        assert set(r[sec]) >= {"mean", "p50", "p90", "p99"}
        assert 0 < r[sec]["p50"] <= r[sec]["p90"] <= r[sec]["p99"]
    assert r["prefix_hit_source"] == "usage" and 0.0 < r["prefix_hit_ratio"] < 1.0
    assert 0 < r["ideal_ttft_s"]["mean"] <= r["ttft_s"]["mean"]
    assert r["sim_duration_s"] > 0 and r["wall_s"] > 0 and r["per_instance"] == []
    rows = csv.read_text().strip().splitlines()
    assert rows[0].startswith("id,arrival_s,instance") and len(rows) == r["requests"]["total"] + 1
    # the same scenario in the simulator: same prefix reuse, TTFT of the same order (the strict check is a benchmark)
    sim, _ = run_one(str(sc_file), "round-robin")
    assert r["prefix_hit_ratio"] == pytest.approx(sim["prefix_hit_ratio"], abs=0.05)
    assert 0.5 < r["ttft_s"]["mean"] / sim["ttft_s"]["mean"] < 2.0


def test_replay_counts_failures():
    reqs, sc, seed = load_replay_workload(None, duration_s=10)
    reqs = [replace(r, arrival_s=0.05 * i, output_tokens=min(r.output_tokens, 50)) for i, r in enumerate(reqs[:4])]
    with EmulatorThread([EmulatorConfig(gpu="h100", port=0, error_rate=1.0)]) as emu:
        summary, _ = run_replay(reqs, sc, seed, ReplayOptions(target=emu.urls[0] + "/v1/"))
        assert summary["requests"]["failed"] == len(reqs) and summary["requests"]["completed"] == 0
        assert any("injected fault" in e for e in summary["errors"])
        emu.call(lambda s: s.apply(FaultUpdate(recover=True)))
        summary, _ = run_replay(reqs, sc, seed, ReplayOptions(target=emu.urls[0], api="chat"))
        assert summary["requests"]["completed"] == len(reqs)
    with pytest.raises(UserError, match="--api"):
        ReplayOptions(target="http://x", api="grpc").check()
