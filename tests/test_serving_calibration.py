"""Serving-level calibration: the simulated engine replays the IOG vLLM 0.8.5 benchmark_serving runs (H100-PCIe,
Llama-3-8B, 200 ShareGPT prompts, Poisson at 1-32 req/s). The replay, its assumptions and the asserted points
(`TOLERANCE`) live in bench/iog_replay.py; the table is in docs/calibration.md section 5."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _bench import load_bench

PROFILES = Path(__file__).resolve().parents[2] / "shared" / "data" / "profiles"
SEEDS = 5


def _load_replay():
    return load_bench("iog_replay")


@pytest.fixture(scope="module")
def replay():
    return _load_replay()


@pytest.fixture(scope="module")
def runs(replay):
    found = replay.load_iog(PROFILES) if PROFILES.is_dir() else {}
    if not found:
        pytest.skip(f"IOG benchmark results not found under {PROFILES}")
    return found


@pytest.fixture(scope="module")
def points(replay, runs):
    return {(p.rate, p.metric): p for p in replay.compare(PROFILES, seeds=SEEDS)}


def test_all_five_runs_present(runs):
    assert sorted(runs) == [1.0, 4.0, 8.0, 16.0, 32.0]
    assert {r.num_prompts for r in runs.values()} == {200}


@pytest.mark.parametrize(
    "rate,metric",
    [(1.0, "ttft_mean"), (4.0, "ttft_mean"), (8.0, "ttft_mean"), (16.0, "ttft_mean"),
     (1.0, "tpot_mean"), (4.0, "tpot_mean"), (8.0, "tpot_mean"), (16.0, "tpot_mean"), (32.0, "tpot_mean")],
)  # fmt: skip
def test_replay_matches_iog(replay, points, rate, metric):
    tol = replay.TOLERANCE[(rate, metric)]
    p = points[(rate, metric)]
    assert abs(p.err) <= tol, (
        f"{rate:g} req/s {metric}: IOG {p.measured_ms:.2f} ms, simulated {p.simulated_ms:.2f} ms "
        f"({p.err:+.1%}, tolerance {tol:.0%})"
    )


def test_every_asserted_point_is_tested(replay):
    assert len(replay.TOLERANCE) == 9


def test_workload_matches_iog_totals_and_filter(replay, runs):
    run = runs[16.0]
    for seed in (0, 1):
        reqs = replay.workload(run, seed)
        p = np.array([r.prompt_tokens for r in reqs])
        o = np.array([r.output_tokens for r in reqs])
        assert len(reqs) == run.num_prompts
        assert p.sum() == run.total_input_tokens and o.sum() == run.total_output_tokens
        assert p.min() >= 4 and o.min() >= 4 and p.max() <= 1024 and (p + o).max() <= 2048
        assert np.median(p) < 0.85 * p.mean()  # heavy-tailed, as ShareGPT
        assert len({r.segment_keys[0] for r in reqs}) == len(reqs)  # no shared prefixes
        arr = np.array([r.arrival_s for r in reqs])
        assert arr[0] == 0.0 and np.all(np.diff(arr) >= 0)
        assert 0.6 < (len(arr) - 1) / arr[-1] / run.rate < 1.6  # Poisson at the run's rate


def test_replay_is_deterministic(replay, runs):
    a = replay.replay_once(runs[8.0], seed=3)
    b = replay.replay_once(runs[8.0], seed=3)
    assert a == b
