"""Programmatic entry points: run one scenario with one policy, or several, as the CLI does.

Consumes: a scenario (name, path or `Scenario`), policy names (and parameters), seeds. Produces: result dicts in the
contract shape (`lodestar.sim.results.summarize`) and the raw `RunRecord`s.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lodestar.data_paths import resolve_data_path
from lodestar.engine.engine import EngineConfig
from lodestar.engine.perf_model import PerfModel
from lodestar.errors import UserError
from lodestar.policies.base import build_policy
from lodestar.request import Request
from lodestar.sim.results import summarize
from lodestar.sim.runner import RunRecord, Simulation
from lodestar.sim.scenario import Scenario, load_scenario


def cluster_instances(sc: Scenario) -> list[tuple[PerfModel, EngineConfig]]:
    """(perf model, engine settings) per initial instance, for capacity estimates."""
    out: list[tuple[PerfModel, EngineConfig]] = []
    for g in sc.cluster.instances:
        cfg = g.engine.merged_over(sc.cluster.engine)
        perf = PerfModel.create(g.gpu, g.model, g.tp)
        out.extend([(perf, cfg)] * g.count)
    return out


def scenario_requests(sc: Scenario, seed: int, duration_s: float | None = None) -> list[Request]:
    """The scenario's workload for a seed (the seed drives synthetic generation and trace jitter)."""
    from lodestar.workload import load_workload

    spec = dict(sc.workload)
    if isinstance(spec.get("path"), str):
        spec["path"] = str(resolve_data_path(spec["path"], sc.base_dir))
    if duration_s is not None:
        spec["duration_s"] = min(float(spec.get("duration_s", duration_s)), duration_s)
    return load_workload(spec, sc.base_dir, seed, instances=cluster_instances(sc))


def run_one(
    scenario: Scenario | str | Path,
    policy: str,
    seed: int | None = None,
    duration_s: float | None = None,
    policy_params: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    requests: list[Request] | None = None,
) -> tuple[dict[str, Any], RunRecord]:
    """Simulate `scenario` with `policy`; returns (result JSON dict, raw record)."""
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    seed = sc.seed if seed is None else seed
    pol = build_policy(policy, seed=seed, params=policy_params)
    reqs = requests if requests is not None else scenario_requests(sc, seed, duration_s)
    if not reqs:
        raise UserError(f"scenario {sc.name!r}: the workload has no requests (check start_s/duration_s)")
    rec = Simulation(sc, reqs, pol, progress=progress).run()
    return summarize(rec, sc, policy, seed), rec
