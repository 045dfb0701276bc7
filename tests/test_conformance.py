"""Conformance suite: every registered policy, run through the same contract checks.

Generic on purpose: it is parametrised over `policy_registry()`, so a new policy (the learner `lodestar`, ...) is
covered as soon as it is registered. Simulator-only policies (`sim_only = True`, which need `bind_simulator`) are
only checked for registration here; the runner tests exercise them.

A `Harness` plays the router around a policy: endpoints with `RouterBookkeeping`, scraped metrics that can be fresh,
stale or missing, requests that share prefixes, and random outcome callbacks (first token, completion, failure),
including callbacks for endpoints that were removed. Run this file as a script (`python tests/test_conformance.py`)
to print every policy's picks for a fixed script as JSON (used to check independence from string hash seeds).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import pytest

from lodestar.cluster_view import ClusterView, Endpoint, EngineMetrics, RouterBookkeeping
from lodestar.errors import UserError
from lodestar.policies import build_policy, policy_registry
from lodestar.policies.base import Policy, PolicyParams
from lodestar.prefix import chain_keys
from lodestar.request import RequestInfo

REGISTRY = policy_registry()
RUNNABLE = sorted(n for n, c in REGISTRY.items() if not c.sim_only)
SIM_ONLY = sorted(n for n, c in REGISTRY.items() if c.sim_only)
METRIC_MODES = ("fresh", "none", "stale", "mixed")


class Harness:
    """A tiny deterministic router around one policy (no engine: outcomes are random)."""

    def __init__(self, policy: Policy, n_endpoints: int = 4, seed: int = 0, metrics: str = "fresh") -> None:
        self.policy = policy
        self.rng = random.Random(seed)
        self.mode = metrics
        self.book = RouterBookkeeping()
        self.alive: list[str] = []
        self.next_ep = 0
        self.now = 100.0
        self.req_id = 0
        self.open: list[tuple[RequestInfo, str, bool]] = []  # (request, endpoint, past first token)
        self.picks: list[str] = []
        for _ in range(n_endpoints):
            self.add_endpoint()

    def add_endpoint(self) -> str:
        eid = f"e{self.next_ep}"
        self.next_ep += 1
        labels = {"gpu": "h100", "num_gpu_blocks": "4000", "block_size": "16"} if self.next_ep % 2 else {}
        self.book.add_endpoint(Endpoint(eid, labels))
        self.alive.append(eid)
        return eid

    def remove_endpoint(self, eid: str, notify: bool = True) -> None:
        """Discovery drops `eid`: the policy is told, then its open requests fail (as the runner does)."""
        self.alive.remove(eid)
        self.book.remove_endpoint(eid)
        if notify:
            self.policy.on_endpoint_removed(eid)
        for r, e, _ in [x for x in self.open if x[1] == eid]:
            self.policy.on_failure(r, e, self.now)
        self.open = [x for x in self.open if x[1] != eid]

    def _metrics(self, ep: Endpoint) -> EngineMetrics | None:
        mode = self.mode if self.mode != "mixed" else self.rng.choice(("fresh", "none", "stale"))
        if mode == "none":
            return None
        age = self.rng.uniform(0, 0.05) if mode == "fresh" else 1e6
        return EngineMetrics(
            scraped_at=self.now - age,
            num_requests_running=float(ep.book.in_flight),
            num_requests_waiting=float(self.rng.randrange(0, 5)),
            kv_cache_usage=self.rng.choice((None, round(self.rng.random(), 2))),
        )

    def request(self) -> RequestInfo:
        self.req_id += 1
        family = self.rng.randrange(4)
        shared = [family * 1000 + i for i in range(self.rng.randrange(0, 8))]
        unique = [10**9 + self.req_id * 100 + i for i in range(self.rng.randrange(0, 4))]
        ids = shared + unique or [10**9 + self.req_id * 100]
        toks = [self.rng.choice((16, 32, 512)) for _ in ids]
        toks[-1] = self.rng.randrange(1, toks[-1] + 1)
        return RequestInfo(
            id=self.req_id,
            arrival_s=self.now,
            prompt_tokens=sum(toks),
            segment_keys=chain_keys(ids),
            segment_tokens=tuple(toks),
            max_tokens=self.rng.choice((None, 128)),
        )

    def view(self, subset: bool = False) -> ClusterView:
        ids = list(self.alive)
        if subset and len(ids) > 1:
            ids = self.rng.sample(ids, self.rng.randrange(1, len(ids) + 1))
        eps = [self.book.endpoints[i] for i in ids]
        for ep in eps:
            ep.metrics = self._metrics(ep)
        return ClusterView(self.now, eps)

    def step(self, subset: bool = False, callbacks: bool = True) -> str:
        """One routing decision (asserts the pick is a candidate), then some random outcome callbacks."""
        self.now += self.rng.expovariate(20.0)
        req = self.request()
        view = self.view(subset)
        pick = self.policy.choose(req, view)
        assert pick in view.ids(), f"{self.policy.name} picked {pick!r}, not one of {view.ids()}"
        self.picks.append(pick)
        self.policy.on_dispatch(req, pick, self.now)
        self.book.on_dispatch(req, pick, self.now)
        self.open.append((req, pick, False))
        if callbacks:
            self.callbacks()
        return pick

    def callbacks(self) -> None:
        for _ in range(self.rng.randrange(0, 3)):
            if not self.open:
                return
            i = self.rng.randrange(len(self.open))
            req, eid, started = self.open[i]
            kind = self.rng.random()
            if not started and kind < 0.6:
                ttft = self.now - req.arrival_s + 0.01
                self.policy.on_first_token(req, eid, self.now, ttft)
                self.book.on_first_token(req, eid, self.now, ttft)
                self.open[i] = (req, eid, True)
            elif kind < 0.9:
                self.policy.on_complete(req, eid, self.now, self.now - req.arrival_s + 0.02, 7)
                self.book.on_complete(req, eid, self.now)
                self.open.pop(i)
            else:
                self.policy.on_failure(req, eid, self.now)
                self.book.on_failure(req, eid, self.now)
                self.open.pop(i)


def new(name: str, seed: int = 0) -> Policy:
    return build_policy(name, seed=seed)


def script(name: str, seed: int = 0, steps: int = 120) -> list[str]:
    """A fixed scenario: decisions, callbacks, a removal, an addition, candidate subsets, mixed metrics."""
    h = Harness(new(name, seed), n_endpoints=4, seed=seed + 1, metrics="mixed")
    for i in range(steps):
        if i == steps // 3:
            h.remove_endpoint("e1")
        if i == steps // 2:
            h.add_endpoint()
        h.step(subset=(i % 5 == 0))
    return h.picks


# ---- registration ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_registered_and_described(name: str) -> None:
    cls = REGISTRY[name]
    assert cls.name == name
    assert cls.description.strip(), f"{name} needs a one-line description"
    assert issubclass(cls.Params, PolicyParams)
    cls.Params()  # defaults are valid
    with pytest.raises(UserError):
        build_policy(name, params={"no_such_parameter_xyz": 1})


def test_required_names_present() -> None:
    for name in (
        "random",
        "round-robin",
        "least-request",
        "least-kv-cache",
        "power-of-two",
        "prefix-cache",
        "prefix-cache-and-load",
        "cache-aware",
        "llm-d",
        "prefixaware",
    ):
        assert name in REGISTRY


@pytest.mark.parametrize("name", SIM_ONLY)
def test_sim_only_policies_refuse_to_run_unbound(name: str) -> None:
    p = new(name)
    h = Harness(p, n_endpoints=2)
    with pytest.raises(Exception):  # noqa: B017  (any error: it must not silently route)
        p.choose(h.request(), h.view())


# ---- behavioural contract --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", METRIC_MODES)
@pytest.mark.parametrize("name", RUNNABLE)
def test_only_picks_candidates(name: str, mode: str) -> None:
    h = Harness(new(name), n_endpoints=5, seed=3, metrics=mode)
    for i in range(80):
        h.step(subset=(i % 3 == 0))


@pytest.mark.parametrize("name", RUNNABLE)
def test_deterministic_for_a_seed(name: str) -> None:
    assert script(name, seed=7) == script(name, seed=7)


@pytest.mark.parametrize("name", RUNNABLE)
def test_single_endpoint(name: str) -> None:
    for mode in METRIC_MODES:
        h = Harness(new(name), n_endpoints=1, seed=1, metrics=mode)
        for _ in range(20):
            assert h.step() == "e0"


@pytest.mark.parametrize("name", RUNNABLE)
def test_pickle_round_trip_then_same_decisions(name: str) -> None:
    h = Harness(new(name, seed=5), n_endpoints=4, seed=9, metrics="mixed")
    for _ in range(40):
        h.step()
    pickle.loads(pickle.dumps(h.policy))  # the policy alone pickles
    twin = pickle.loads(pickle.dumps(h))
    assert type(twin.policy) is type(h.policy)
    for _ in range(40):
        assert twin.step() == h.step()


@pytest.mark.parametrize("notify", [True, False])
@pytest.mark.parametrize("name", RUNNABLE)
def test_endpoint_disappears(name: str, notify: bool) -> None:
    h = Harness(new(name), n_endpoints=4, seed=2, metrics="fresh")
    for _ in range(30):
        h.step()
    h.remove_endpoint("e2", notify=notify)
    for _ in range(40):
        assert h.step() != "e2"
    h.remove_endpoint("e0", notify=notify)
    h.add_endpoint()
    for _ in range(20):
        assert h.step() not in ("e0", "e2")


@pytest.mark.parametrize("name", RUNNABLE)
def test_fuzz_random_decisions_and_callbacks(name: str) -> None:
    rng = random.Random(11)
    h = Harness(new(name, seed=11), n_endpoints=3, seed=12, metrics="mixed")
    for _ in range(300):
        r = rng.random()
        if r < 0.02 and len(h.alive) > 1:
            h.remove_endpoint(rng.choice(h.alive), notify=rng.random() < 0.7)
        elif r < 0.04 and len(h.alive) < 8:
            h.add_endpoint()
        elif r < 0.06:
            h.now += rng.choice((0.0, 3.0, 1500.0))  # idle gaps, including past every eviction horizon
        h.step(subset=rng.random() < 0.2)
    # late callbacks for endpoints that are long gone must be harmless
    for req, eid, _ in h.open:
        h.policy.on_complete(req, eid, h.now, 1.0, 1)
        h.policy.on_failure(req, eid, h.now)
    h.step()


@pytest.mark.parametrize("name", RUNNABLE)
def test_never_reads_the_wall_clock(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Time comes in as `view.now` / `now`; any wall-clock read during routing or callbacks is an error."""
    import time

    policy = new(name)  # construction may set up anything it likes; only routing is checked

    def boom(*_a: object) -> float:
        raise AssertionError(f"{name} read the wall clock")

    for fn in ("time", "monotonic", "perf_counter", "time_ns", "monotonic_ns", "perf_counter_ns"):
        monkeypatch.setattr(time, fn, boom)
    h = Harness(policy, n_endpoints=3, seed=4, metrics="mixed")
    for _ in range(60):
        h.step()


def test_picks_do_not_depend_on_string_hash_seed() -> None:
    """Run the fixed script in two interpreters with different PYTHONHASHSEED: same picks for every policy."""
    outs = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        src = str(Path(__file__).resolve().parents[1] / "src")
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
        res = subprocess.run(
            [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=60, check=True
        )
        outs.append(json.loads(res.stdout))
    assert outs[0] == outs[1]
    assert sorted(outs[0]) == RUNNABLE


if __name__ == "__main__":
    print(json.dumps({name: script(name, seed=3, steps=60) for name in RUNNABLE}))
