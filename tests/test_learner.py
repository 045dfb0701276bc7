"""The learned router: its online model, rewards, persistence, decision log, and routing quality in simulation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lodestar.errors import UserError
from lodestar.learner.explain import explain
from lodestar.learner.features import N_FEATURES
from lodestar.learner.model import LOWER, UPPER, OnlineLinearModel
from lodestar.learner.persist import save_model
from lodestar.learner.rewards import RewardSpec, cost, outcome_cost
from lodestar.policies.base import build_policy
from lodestar.sim.api import run_one
from lodestar.sim.results import summarize
from lodestar.sim.runner import Simulation
from lodestar.sim.scenario import parse_scenario


def _theta(rng) -> np.ndarray:
    """A coefficient vector that respects the model's physical sign constraints."""
    return np.clip(rng.uniform(-0.5, 1, N_FEATURES), LOWER, UPPER)


def _feed(m: OnlineLinearModel, ep: str, theta: np.ndarray, n: int, rng, t0: float) -> float:
    t = t0
    for _ in range(n):
        x = np.concatenate([[1.0], rng.uniform(0, 2, N_FEATURES - 1)])
        r = m.rows[ep]
        pred = float(m.predict(np.array([r]), x[None])[0][0])
        m.observe(ep, x, float(x @ theta + rng.normal(0, 0.01)), pred)
        t += 0.05
        if int(t / 0.5) != int((t - 0.05) / 0.5):
            m.train(t)
    m.train(t)
    return t


def test_online_model_learns_and_tracks_drift():
    rng = np.random.default_rng(0)
    m = OnlineLinearModel(half_life_s=20.0)
    m.ensure("a", "g")
    theta = _theta(rng)
    t = _feed(m, "a", theta, 2000, rng, 0.0)
    acc = m.accuracy()
    assert acc["r2"] > 0.99 and acc["rel_err"] < 0.05
    x = np.concatenate([[1.0], np.ones(N_FEATURES - 1)])
    mean, se = m.predict(np.array([m.rows["a"]]), x[None])
    assert mean[0] == pytest.approx(x @ theta, rel=0.02)
    assert se[0] < 0.01
    # the endpoint becomes 3x slower: after a few half-lives the model follows
    _feed(m, "a", 3 * theta, 2000, rng, t)
    mean, _ = m.predict(np.array([m.rows["a"]]), x[None])
    assert mean[0] == pytest.approx(3 * x @ theta, rel=0.05)


def test_new_endpoint_starts_from_its_groups_prior():
    rng = np.random.default_rng(1)
    m = OnlineLinearModel()
    m.ensure("a", "h100/llama")
    theta = _theta(rng)
    _feed(m, "a", theta, 500, rng, 0.0)
    m.ensure("b", "h100/llama")  # scale-out: no samples yet
    x = np.concatenate([[1.0], np.ones(N_FEATURES - 1)])
    mean, _ = m.predict(np.array([m.rows["b"]]), x[None])
    assert mean[0] == pytest.approx(x @ theta, rel=0.05)


def test_rewards_rank_candidates():
    ttft = np.array([0.1, 0.2, 0.1])
    tpot = np.array([0.05, 0.01, 0.02])
    zero = np.zeros(3)
    c, _ = cost(RewardSpec(), ttft, zero, tpot, zero, 100)
    assert list(np.argsort(c, kind="stable")) == [0, 2, 1]
    c, _ = cost(RewardSpec(name="e2e"), ttft, zero, tpot, zero, 100)
    assert int(np.argmin(c)) == 1  # 0.2 + 1.0 beats 0.1 + 2.0 and 0.1 + 5.0
    c, _ = cost(RewardSpec(name="slo", ttft_slo_s=0.15, tpot_slo_s=0.03), ttft, zero, tpot, zero, 100,
                resid=(0.01, 0.005))  # fmt: skip
    assert int(np.argmin(c)) == 2  # the only one likely to meet both targets
    w = RewardSpec(name="weighted", weights={"ttft": 1.0, "tpot": 10.0})
    c, _ = cost(w, ttft, zero, tpot, zero, 100)
    assert np.allclose(c, ttft + 10 * tpot)
    assert outcome_cost(RewardSpec(name="e2e"), 0.1, 0.01, 10) == pytest.approx(0.2)
    with pytest.raises(UserError, match="reward"):
        build_policy("lodestar", params={"reward": {"name": "latency"}})
    with pytest.raises(UserError):
        build_policy("lodestar", params={"fallback": "no-such-policy"})


def _scenario(events=None, load=0.8, duration=120):
    data = {
        "name": "learn",
        "cluster": {"instances": [{"gpu": "h100", "count": 1}, {"gpu": "l4", "count": 2}]},
        "workload": {"kind": "synthetic", "duration_s": duration, "load": load, "synthetic": {"preset": "chat"}},
    }
    if events:
        data["events"] = events
    return parse_scenario(data, "test", Path("."))


@pytest.fixture(scope="module")
def hetero_runs():
    sc = _scenario()
    out = {}
    for name in ("least-request", "lodestar"):
        pol = build_policy(name, seed=0)
        from lodestar.sim.api import scenario_requests

        rec = Simulation(sc, scenario_requests(sc, 0), pol).run()
        out[name] = (summarize(rec, sc, name, 0), pol, rec)
    return out


def test_lodestar_learns_to_beat_least_request_on_mixed_gpus(hetero_runs):
    lr = hetero_runs["least-request"][0]
    ls, pol, _ = hetero_runs["lodestar"]
    assert ls["requests"]["failed"] == 0
    assert ls["ttft_s"]["mean"] < 0.7 * lr["ttft_s"]["mean"]
    d = pol.diagnostics()
    assert d["ready_at_s"] is not None and d["ready_at_s"] < 60  # left its fallback early
    assert d["pred_error"], "no prediction-error history"
    assert d["accuracy"]["rel_err"] < 0.5
    # the H100 serves more than either L4
    counts = {p["gpu"]: p["requests"] for p in ls["per_instance"]}
    assert counts["h100"] > counts["l4"]


def test_lodestar_moves_traffic_away_from_a_slowed_instance():
    sc = _scenario(events=[{"at_s": 60, "instance": 0, "slowdown": 8.0}], duration=120, load=0.3)
    _, rec = run_one(sc, "lodestar", seed=0)
    arr = np.array([r.arrival_s for r in rec.requests])
    share = lambda lo, hi: float(np.mean(rec.instance[(arr >= lo) & (arr < hi)] == 0))  # noqa: E731
    before, after = share(20, 60), share(70, 120)
    assert before > 0.8  # the H100 took most traffic while it was fast
    assert after < 0.7 * before


def test_save_load_round_trip_and_warm_start(tmp_path, hetero_runs):
    _, pol, _ = hetero_runs["lodestar"]
    path = tmp_path / "model.npz"
    save_model(pol, path)
    assert path.exists() and not list(tmp_path.glob("*.tmp"))
    warm = build_policy("lodestar", params={"model_path": str(path)})
    assert warm.ready  # type: ignore[attr-defined]
    m0, m1 = pol.ttft_model, warm.ttft_model  # type: ignore[attr-defined]
    assert m0.rows == m1.rows
    np.testing.assert_allclose(m0.theta, m1.theta)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a model")
    with pytest.raises(UserError, match=r"bad\.npz"):
        build_policy("lodestar", params={"model_path": str(bad)})


def test_decision_log_and_explain(tmp_path):
    log = tmp_path / "decisions.jsonl"
    sc = _scenario(duration=40)
    run_one(sc, "lodestar", seed=0, policy_params={"decision_log": str(log), "min_samples": 20})
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    decisions = [x for x in lines if "candidates" in x]
    assert decisions and all(len(d["candidates"]) == 3 for d in decisions)
    assert {d["mode"] for d in decisions} >= {"prior", "learned"}  # labelled hardware: the prior before ready
    out = explain(log)
    assert out["decisions"] == len({d["req"] for d in decisions})
    assert out["with_outcome"] > 0.9 * out["decisions"]
    assert 0 <= out["median_rel_err"] < 1.0
    assert sum(out["picks"].values()) == out["decisions"]
    with pytest.raises(UserError):
        explain(tmp_path / "missing.jsonl")


def test_bounded_solve_respects_signs_and_beats_clipping():
    from lodestar.learner.model import bounded_solve

    rng = np.random.default_rng(3)
    d = N_FEATURES
    X = rng.normal(size=(8, 200, d))
    A = np.einsum("kni,knj->kij", X, X) + 1e-3 * np.eye(d)
    b = np.einsum("kni,kn->ki", X, rng.normal(size=(8, 200)))
    t = bounded_solve(A, b)
    assert np.all(t >= LOWER - 1e-12) and np.all(t <= UPPER + 1e-12)

    def obj(k, v):
        return 0.5 * v @ A[k] @ v - b[k] @ v

    free = np.linalg.solve(A, b[:, :, None])[:, :, 0]
    for k in range(8):
        assert obj(k, t[k]) <= obj(k, np.clip(free[k], LOWER, UPPER)) + 1e-9
    # a feasible unconstrained optimum is returned unchanged
    theta = np.clip(np.abs(rng.normal(size=d)), LOWER, UPPER)
    np.testing.assert_allclose(bounded_solve(A[:1], (A[0] @ theta)[None])[0], theta, rtol=1e-6, atol=1e-9)


def test_lodestar_learns_mixed_gpus_without_discovery_labels(hetero_runs):
    """No GPU/model labels: the reference latency shape is rescaled per endpoint by the learned coefficients."""
    sc = _scenario()
    sc.router.expose_labels = False
    s, _ = run_one(sc, "lodestar", seed=0)
    assert s["ttft_s"]["mean"] < 0.7 * hetero_runs["least-request"][0]["ttft_s"]["mean"]


def test_cold_start_routes_on_the_calibrated_prior_when_hardware_is_known():
    """Before the predictor is ready, a mixed fleet's slow GPU does not get cold long prefills by load balancing: with
    catalogued labels the pick is the latency model's; with unknown hardware (or `cold_start: fallback`) it is the
    fallback's (least-request: ties broken at random, so across seeds it picks the slow GPU too)."""
    from lodestar.cluster_view import ClusterView, Endpoint
    from lodestar.request import RequestInfo

    def first_pick(seed: int, labelled: bool, cold_start: str) -> str:
        pol = build_policy("lodestar", seed=seed, params={"cold_start": cold_start})
        lab = (lambda gpu: {"gpu": gpu, "model": "llama-3-8b"}) if labelled else (lambda gpu: {})
        eps = [Endpoint(f"e{k}", labels=lab(g)) for k, g in enumerate(["a10g", "a100-80g", "a10g", "a10g"])]
        req = RequestInfo(id=1, arrival_s=0.0, prompt_tokens=8192, segment_keys=(1, 2), segment_tokens=(4096, 4096))
        assert not pol.ready  # type: ignore[attr-defined]
        return pol.choose(req, ClusterView(0.0, eps))

    assert {first_pick(s, True, "prior") for s in range(8)} == {"e1"}
    assert len({first_pick(s, True, "fallback") for s in range(8)}) > 1
    assert len({first_pick(s, False, "prior") for s in range(8)}) > 1
