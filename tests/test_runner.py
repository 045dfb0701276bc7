"""The cluster runner: determinism, honesty of the ClusterView, scrape staleness, scenario events."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest

from lodestar.cluster_view import ClusterView
from lodestar.engine.engine import Engine, Seq
from lodestar.engine.kv_cache import KVCache
from lodestar.policies.base import Policy, build_policy
from lodestar.prefix import chain_keys
from lodestar.request import Request, RequestInfo
from lodestar.sim.results import summarize
from lodestar.sim.runner import DONE, Simulation
from lodestar.sim.scenario import parse_scenario


def scenario(instances=None, router=None, events=None, name="t"):
    data = {"name": name, "cluster": {"instances": instances or [{"gpu": "a100-80g", "count": 3}]}}
    if router:
        data["router"] = router
    if events:
        data["events"] = events
    return parse_scenario(data, "test", Path("."))


def workload(n=300, rate=20.0, seed=0) -> list[Request]:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1 / rate, n))
    out = []
    for i in range(n):
        sys_id = int(rng.integers(0, 3))
        toks = [512, int(rng.integers(50, 1500))]
        out.append(Request(i, float(t[i]), sum(toks), int(rng.integers(5, 200)), chain_keys([sys_id, 1000 + i]),
                           tuple(toks)))  # fmt: skip
    return out


def test_same_seed_same_result():
    sc = scenario()
    a, _ = _run(sc, "random", seed=3)
    b, _ = _run(sc, "random", seed=3)
    c, _ = _run(sc, "random", seed=4)
    for k in ("ttft_s", "e2e_s", "per_instance"):
        assert a[k] == b[k]
    assert a["per_instance"] != c["per_instance"]


def _run(sc, policy, seed=0, reqs=None):
    p = policy if isinstance(policy, Policy) else build_policy(policy, seed=seed)
    rec = Simulation(sc, reqs or workload(), p).run()
    return summarize(rec, sc, p.name, seed), rec


FORBIDDEN = (Engine, Seq, KVCache, Simulation, Request)


class Inspector(Policy):
    """Walks everything reachable from what a policy is given and fails on simulator internals."""

    name = "inspector"

    def __init__(self) -> None:
        super().__init__()
        self.checked = 0

    def choose(self, req: RequestInfo, view: ClusterView) -> str:
        seen: set[int] = set()
        stack: list[object] = [req, view]
        while stack:
            o = stack.pop()
            if id(o) in seen or isinstance(o, type):
                continue
            seen.add(id(o))
            assert not isinstance(o, FORBIDDEN), f"policy can reach {type(o).__name__}"
            stack.extend(gc.get_referents(o))
        self.checked += 1
        return view.endpoints[self.checked % len(view.endpoints)].id


def test_policy_cannot_reach_engine_internals():
    pol = Inspector()
    _run(scenario(), pol, reqs=workload(n=60))
    assert pol.checked == 60


class StalenessProbe(Policy):
    name = "staleness-probe"

    def __init__(self) -> None:
        super().__init__()
        self.ages: list[float] = []

    def choose(self, req: RequestInfo, view: ClusterView) -> str:
        for ep in view.endpoints:
            if ep.metrics is not None:
                self.ages.append(ep.metrics.age(view.now))
        return view.endpoints[0].id


@pytest.mark.parametrize("interval,delay", [(0.05, 0.0), (0.5, 0.0), (0.2, 1.0)])
def test_scrapes_respect_interval_and_delay(interval, delay):
    pol = StalenessProbe()
    sc = scenario(router={"scrape_interval_s": interval, "scrape_delay_s": delay})
    _run(sc, pol)
    ages = np.array(pol.ages)
    assert ages.size > 0
    assert ages.min() >= delay - 1e-9
    assert ages.max() <= delay + interval + 1e-9


def test_metrics_reflect_load():
    """Running counts the router sees grow when all traffic goes to one instance."""

    class Probe(StalenessProbe):
        def __init__(self):
            super().__init__()
            self.running: list[float] = []

        def choose(self, req, view):
            m = view.endpoints[0].metrics
            if m is not None:
                self.running.append(m.num_requests_running or 0)
            return view.endpoints[0].id

    pol = Probe()
    _run(scenario(), pol)
    assert max(pol.running) >= 10


def test_failure_fails_over_and_slowdown_and_scale_out():
    sc = scenario(
        events=[
            {"at_s": 3.0, "instance": 0, "slowdown": 4.0},
            {"at_s": 6.0, "instance": 1, "fail": True},
            {"at_s": 8.0, "add": {"gpu": "h100", "count": 1}},
        ]
    )
    s, rec = _run(sc, "round-robin", reqs=workload(n=400, rate=40))
    assert s["requests"]["failovers"] > 0
    assert s["requests"]["completed"] + s["requests"]["failed"] == s["requests"]["total"]
    ids = [p["id"] for p in s["per_instance"]]
    assert ids == ["i0", "i1", "i2", "i3"]
    arr = np.array([r.arrival_s for r in rec.requests])
    assert not np.any((rec.instance == 1) & (arr > 6.0) & (rec.status == DONE))  # nothing routed to the dead one
    assert np.any(rec.instance == 3)  # the new instance took traffic
    assert s["per_instance"][1]["failed_at_s"] == 6.0


def test_oracle_beats_random_and_is_bounded_by_ideal():
    sc = scenario()
    reqs = workload(n=400, rate=30)
    rnd, _ = _run(sc, "random", reqs=reqs)
    ora, _ = _run(sc, "oracle", reqs=reqs)
    assert ora["ttft_s"]["mean"] < rnd["ttft_s"]["mean"]
    assert ora["ideal_ttft_s"]["mean"] <= ora["ttft_s"]["mean"]


def test_decode_runs_match_step_by_step(monkeypatch):
    """Fast-forwarded decode stretches give the same timings as simulating every step."""
    from lodestar.engine import decode_run

    sc = scenario(router={"scrape_interval_s": 0.05})
    reqs = workload(n=300, rate=8)
    _fast, rec_fast = _run(sc, "least-request", reqs=reqs)
    monkeypatch.setattr(decode_run, "MIN_RUN", 10**9)
    _slow, rec_slow = _run(sc, "least-request", reqs=reqs)
    assert rec_fast.events < rec_slow.events / 2  # the fast path really skipped steps
    np.testing.assert_allclose(rec_fast.ttft, rec_slow.ttft, rtol=1e-9)
    np.testing.assert_allclose(rec_fast.e2e, rec_slow.e2e, rtol=1e-9)
    np.testing.assert_array_equal(rec_fast.instance, rec_slow.instance)
