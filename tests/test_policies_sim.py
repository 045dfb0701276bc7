"""Baselines in the simulator: prefix-aware routers find more cache than random on a prefix-heavy scenario."""

from __future__ import annotations

import pytest

from lodestar.sim.api import run_one, scenario_requests
from lodestar.sim.scenario import load_scenario

PREFIX_AWARE = ["prefix-cache", "prefix-cache-and-load", "cache-aware", "llm-d", "prefixaware", "lodestar"]


@pytest.fixture(scope="module")
def prefix_heavy():
    sc = load_scenario("prefix-heavy")
    reqs = scenario_requests(sc, 0, duration_s=60)
    rnd, _ = run_one(sc, "random", seed=0, requests=reqs)
    return sc, reqs, rnd


@pytest.mark.parametrize("policy", PREFIX_AWARE)
def test_prefix_aware_policies_hit_more_cache_than_random(prefix_heavy, policy):
    sc, reqs, rnd = prefix_heavy
    s, _ = run_one(sc, policy, seed=0, requests=reqs)
    assert s["requests"]["completed"] == len(reqs)
    assert s["prefix_hit_ratio"] > rnd["prefix_hit_ratio"] + 0.02
