"""Runs a suite: every scenario x policy x seed, in parallel worker processes.

Consumes: a loaded `Suite`, the policy names and seeds to run, a number of worker processes. Produces: an
`EvalRun` holding one JSON-ready dict per finished run (the contract summary of `lodestar.sim.results.summarize`
plus an `eval` section: rolling TTFT curve, time to converge, the policy's diagnostics), and the skipped scenarios,
errors and notes.

Each job is independent and self-contained: the worker loads the scenario file, builds the workload for its seed,
builds a fresh policy (so learning policies start untrained: cold start is part of every result), runs the
simulation, and returns plain data. Results are deterministic for given seeds and independent of `jobs` (they are
sorted by scenario, policy and seed; only the wall-clock fields vary).

Diagnostics hook: after the run, if the policy object has a callable `diagnostics()`, its dict is stored under
`eval.diagnostics` (made JSON-safe, each list capped at `MAX_DIAG_POINTS` evenly spaced items). See docs/eval.md.
"""

from __future__ import annotations

import math
import os
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lodestar.eval.metrics import convergence_time, nan_to_none, rolling_mean_curve, steady_state
from lodestar.eval.suite import LEARNED_POLICY, ORACLE_POLICY, Suite, is_learning, missing_data

MAX_DIAG_POINTS = 500


@dataclass(frozen=True)
class Job:
    """One simulation: a scenario file, a policy name, a seed. `order` fixes the result order."""

    order: tuple[int, int, int]
    scenario: str
    path: str
    policy: str
    seed: int


@dataclass
class EvalRun:
    """Everything a suite run produced (input to `lodestar.eval.report`)."""

    suite: Suite
    policies: list[str]
    seeds: list[int]
    learned: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    jobs: int = 1


def _json_safe(x: Any, depth: int = 0) -> Any:
    """Plain JSON data: tuples become lists, numpy scalars floats, NaN/inf None, long lists thinned."""
    if depth > 6:
        return str(x)
    if isinstance(x, dict):
        return {str(k): _json_safe(v, depth + 1) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        items = list(x)
        if len(items) > MAX_DIAG_POINTS:
            idx = np.linspace(0, len(items) - 1, MAX_DIAG_POINTS).round().astype(int)
            items = [items[i] for i in idx]
        return [_json_safe(v, depth + 1) for v in items]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    if x is None or isinstance(x, str):
        return x
    return str(x)


def policy_diagnostics(policy: Any) -> dict[str, Any] | None:
    """The policy's `diagnostics()` dict made JSON-safe, None if it has no such method; a failure is recorded."""
    fn = getattr(policy, "diagnostics", None)
    if not callable(fn):
        return None
    try:
        raw = fn()
    except Exception as e:  # a diagnostics bug must not lose the run
        return {"error": f"diagnostics() raised {type(e).__name__}: {e}"}
    if not isinstance(raw, dict):
        return {"error": f"diagnostics() returned {type(raw).__name__}, expected dict"}
    out = _json_safe(raw)
    assert isinstance(out, dict)
    return out


def run_job(job: Job) -> dict[str, Any]:
    """Run one job in this process; returns the summary dict with its `eval` section."""
    from lodestar.policies.base import build_policy
    from lodestar.sim.api import scenario_requests
    from lodestar.sim.results import summarize
    from lodestar.sim.runner import DONE, Simulation
    from lodestar.sim.scenario import load_scenario

    sc = load_scenario(job.path)
    reqs = scenario_requests(sc, job.seed)
    policy = build_policy(job.policy, seed=job.seed)
    sim = Simulation(sc, reqs, policy)
    rec = sim.run()
    summary = summarize(rec, sc, job.policy, job.seed)
    arrival = np.array([r.arrival_s for r in rec.requests], dtype=float)
    t, y = rolling_mean_curve(arrival, rec.ttft, rec.status == DONE)
    summary["eval"] = {
        "scenario_file": job.path,
        "learning": is_learning(type(policy)),
        "workload_span_s": float(arrival.max()) if arrival.size else 0.0,
        "workload_duration_s": sc.workload.get("duration_s"),
        "workload_kind": sc.workload.get("kind", "synthetic"),
        "convergence_s": convergence_time(t, y),
        "steady_ttft_s": nan_to_none([steady_state(t, y)])[0],
        "curve": {"t": nan_to_none(t, 3), "ttft_mean_s": nan_to_none(y, 5)},
        "diagnostics": policy_diagnostics(sim.policy),
    }
    return summary


def make_jobs(suite: Suite, policies: list[str], seeds: list[int], skip: set[str]) -> list[Job]:
    """Jobs in submission order: the expensive ones (oracle, learning policies) first, to shorten the tail."""
    from lodestar.policies.base import policy_registry

    reg = policy_registry()
    jobs = [
        Job((si, pi, seed), s.name, str(s.path), p, seed)
        for si, s in enumerate(suite.scenarios)
        if s.name not in skip
        for pi, p in enumerate(policies)
        for seed in seeds
    ]

    def heavy(j: Job) -> bool:
        cls = reg.get(j.policy)
        return j.policy in (ORACLE_POLICY, LEARNED_POLICY) or (cls is not None and is_learning(cls))

    return sorted(jobs, key=lambda j: (not heavy(j), j.order))


ProgressFn = Callable[[int, int, Job, dict[str, Any] | None, str | None], None]


def run_suite(
    suite: Suite,
    policies: list[str],
    seeds: list[int],
    jobs: int | None = None,
    learned: str = LEARNED_POLICY,
    on_done: ProgressFn | None = None,
    notes: list[str] | None = None,
) -> EvalRun:
    """Run every (scenario, policy, seed) of the suite; scenarios whose data is missing are skipped with a note.

    `jobs`: worker processes (None = CPU count; 1 = run in this process). `on_done(k, total, job, summary, error)`
    is called in the parent after each finished job. A job that raises is recorded in `errors`, not fatal.
    """
    wall0 = time.perf_counter()
    n_workers = max(1, jobs if jobs is not None else (os.cpu_count() or 1))
    result = EvalRun(suite, list(policies), list(seeds), learned, jobs=n_workers, notes=list(notes or []))
    skip: set[str] = set()
    for s in suite.scenarios:
        reason = missing_data(s.scenario)
        if reason is not None:
            skip.add(s.name)
            result.skipped.append({"scenario": s.name, "reason": reason})
    todo = make_jobs(suite, policies, seeds, skip)
    done: list[tuple[tuple[int, int, int], dict[str, Any]]] = []

    def finish(k: int, job: Job, summary: dict[str, Any] | None, error: str | None) -> None:
        if summary is not None:
            done.append((job.order, summary))
        else:
            result.errors.append({"scenario": job.scenario, "policy": job.policy, "seed": job.seed, "error": error})
        if on_done is not None:
            on_done(k, len(todo), job, summary, error)

    if n_workers == 1 or len(todo) <= 1:
        for k, job in enumerate(todo, 1):
            try:
                finish(k, job, run_job(job), None)
            except Exception as e:
                finish(k, job, None, _error_text(e))
    else:
        with ProcessPoolExecutor(max_workers=min(n_workers, len(todo))) as pool:
            futures: dict[Future[dict[str, Any]], Job] = {pool.submit(run_job, j): j for j in todo}
            for k, fut in enumerate(as_completed(futures), 1):
                job = futures[fut]
                try:
                    finish(k, job, fut.result(), None)
                except Exception as e:
                    finish(k, job, None, _error_text(e))
    result.runs = [s for _, s in sorted(done, key=lambda x: x[0])]
    result.errors.sort(key=lambda e: (e["scenario"], e["policy"], e["seed"]))
    result.wall_s = time.perf_counter() - wall0
    return result


def _error_text(e: BaseException) -> str:
    """One line: the message of a `UserError`, else the exception type, message and innermost source line."""
    from lodestar.errors import UserError

    if isinstance(e, UserError):
        return str(e)
    remote = getattr(e.__cause__, "tb", None)  # set by ProcessPoolExecutor: the worker's formatted traceback
    if isinstance(remote, str):
        frames = [ln.strip() for ln in remote.splitlines() if ln.strip().startswith("File ")]
        where = f" ({frames[-1]})" if frames else ""
    else:
        tb = traceback.extract_tb(e.__traceback__)
        where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"{type(e).__name__}: {e}{where}"
