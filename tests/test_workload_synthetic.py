"""The synthetic generator: determinism, multi-turn structure, presets, length statistics."""

from __future__ import annotations

from collections import defaultdict
from itertools import pairwise

import numpy as np
import pytest

from lodestar.errors import UserError
from lodestar.workload import (
    ArrivalProcess,
    LengthDist,
    generate_synthetic,
    load_workload,
    synthetic_params,
    workload_stats,
)


def _sig(reqs):
    return [(r.arrival_s, r.prompt_tokens, r.output_tokens, r.segment_keys, r.output_key) for r in reqs]


def test_deterministic_for_a_seed_and_different_across_seeds():
    a = generate_synthetic(seed=3, horizon_s=120)
    assert _sig(a) == _sig(generate_synthetic(seed=3, horizon_s=120))
    assert _sig(a) != _sig(generate_synthetic(seed=4, horizon_s=120))
    assert [r.id for r in a] == list(range(len(a)))
    assert [r.arrival_s for r in a] == sorted(r.arrival_s for r in a)
    assert all(0 <= r.arrival_s < 120 for r in a)


def test_multi_turn_prompts_extend_previous_turn_with_its_answer():
    reqs = generate_synthetic(seed=0, horizon_s=300)
    by_session = defaultdict(list)
    for r in reqs:
        assert sum(r.segment_tokens) == r.prompt_tokens
        assert r.max_tokens == r.output_tokens
        by_session[r.session_id].append(r)
    pairs = 0
    for turns in by_session.values():
        for prev, nxt in pairwise(turns):
            n = len(prev.segment_keys)
            assert nxt.segment_keys[:n] == prev.segment_keys
            assert nxt.segment_tokens[:n] == prev.segment_tokens
            assert nxt.segment_keys[n] == prev.output_key
            assert nxt.segment_tokens[n] == prev.output_tokens
            assert nxt.arrival_s > prev.arrival_s
            pairs += 1
    assert pairs > 100
    # output keys are unique to their request
    keys = [r.output_key for r in reqs]
    assert len(set(keys)) == len(keys)


def test_system_prompts_are_shared_by_few_tenants():
    reqs = generate_synthetic({"tenants": 3}, seed=1, horizon_s=200)
    assert len({r.segment_keys[0] for r in reqs}) == 3


def test_stats_near_configured_means():
    p = {
        "rate_rps": 20.0,
        "turns_mean": 1.0,  # single-turn: prompt = system + (doc) + user
        "doc_prob": 0.0,
        "tenants": 1,
        "system_prompt_tokens": {"mean": 100, "median": 100},
        "user_tokens": {"mean": 400, "median": 300, "max": 100_000},
        "output_tokens": {"mean": 211, "median": 129, "max": 100_000},
    }
    st = workload_stats(generate_synthetic(p, seed=0, horizon_s=300))
    assert st["rate_rps"] == pytest.approx(20.0, rel=0.1)
    assert st["input_mean"] == pytest.approx(500, rel=0.06)
    assert st["input_median"] == pytest.approx(400, rel=0.06)
    assert st["output_mean"] == pytest.approx(211, rel=0.06)
    assert st["output_median"] == pytest.approx(129, rel=0.06)


def test_default_rate_and_reuse():
    st = workload_stats(generate_synthetic(seed=0))
    assert st["rate_rps"] == pytest.approx(5.0, rel=0.15)  # warm start: steady state from t = 0
    assert 0.5 < st["prefix_hit_ratio"] < 0.95
    heavy = workload_stats(generate_synthetic({"preset": "prefix-heavy"}, seed=0))
    assert heavy["prefix_hit_ratio"] > st["prefix_hit_ratio"]
    assert heavy["input_mean"] > 3 * st["input_mean"]


def test_preset_overrides_merge_nested():
    p = synthetic_params({"preset": "prefix-heavy", "doc_tokens": {"max": 4000}})
    assert p.doc_tokens.max == 4000 and p.doc_tokens.mean == 3000
    assert p.tenants == 3


def test_context_window_limits_prompts():
    reqs = generate_synthetic({"turns_mean": 10, "max_prompt_tokens": 3000}, seed=0, horizon_s=200)
    assert max(r.prompt_tokens for r in reqs) <= 3000


@pytest.mark.parametrize("process", ["poisson", "gamma", "mmpp"])
def test_arrival_processes_hit_mean_rate(process):
    rng = np.random.default_rng(0)
    ts = ArrivalProcess(process=process, cv=3.0).times(rng, 10.0, 0.0, 2000.0)
    assert len(ts) / 2000.0 == pytest.approx(10.0, rel=0.12)
    assert np.all(np.diff(ts) >= 0) and ts[0] >= 0 and ts[-1] < 2000.0
    gaps = np.diff(ts)
    cv = gaps.std() / gaps.mean()
    if process == "poisson":
        assert cv == pytest.approx(1.0, abs=0.05)
    else:
        assert cv > 1.3  # bursty


def test_length_dist_mean_median_and_clip():
    d = LengthDist(mean=1155, median=1020, min=1, max=10**6)
    x = d.sample(np.random.default_rng(0), 50_000)
    assert x.mean() == pytest.approx(1155, rel=0.03)
    assert np.median(x) == pytest.approx(1020, rel=0.03)
    c = LengthDist(mean=500, median=100, min=50, max=300).sample(np.random.default_rng(0), 1000)
    assert c.min() >= 50 and c.max() <= 300


def test_embedded_default_needs_no_files(tmp_path):
    reqs = load_workload({}, tmp_path, seed=0)
    assert len(reqs) > 1000


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"synthetic": {"turn_mean": 2}}, "workload.synthetic.turn_mean: unknown key"),
        ({"synthetic": {"rate_rps": -1}}, "workload.synthetic.rate_rps"),
        ({"synthetic": {"user_tokens": {"mean": 10, "median": 20}}}, "workload.synthetic.user_tokens"),
        ({"synthetic": {"arrival": {"process": "hawkes"}}}, "workload.synthetic.arrival.process"),
        ({"synthetic": {"preset": "huge"}}, "workload.synthetic.preset"),
        ({"synthetic": [1]}, "workload.synthetic"),
    ],
)
def test_bad_parameters(spec, needle, tmp_path):
    with pytest.raises(UserError, match=needle.replace(".", r"\.")) as e:
        load_workload(spec, tmp_path, seed=0)
    assert "\n" not in str(e.value)
