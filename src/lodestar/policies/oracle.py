"""`oracle` (simulator only, labelled): greedy clairvoyant routing.

Consumes: the request and, unlike every other policy, the simulator's true engine state (bound through
`bind_simulator`). Produces: the endpoint with the smallest projected TTFT for this request given the current true
state (`lodestar.engine.projection.project_ttft`: true prefix-cache hit, true queues, no future arrivals). It is a
reference point, not a bound: greedy choices can still be globally suboptimal.
"""

from __future__ import annotations

from typing import Any

from lodestar.cluster_view import ClusterView
from lodestar.engine.projection import project_ttft
from lodestar.policies.base import Policy, PolicyParams, register_policy
from lodestar.request import RequestInfo


@register_policy
class OraclePolicy(Policy):
    name = "oracle"
    description = "SIM ONLY: greedy clairvoyant; the endpoint with the least true projected TTFT."
    sim_only = True

    def __init__(self, params: PolicyParams | None = None, seed: int = 0) -> None:
        super().__init__(params, seed)
        self._sim: Any = None

    def bind_simulator(self, simulator: Any) -> None:
        self._sim = simulator

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_sim"] = None  # never pickle the simulator
        return state

    def choose(self, req: RequestInfo, view: ClusterView) -> str:
        if self._sim is None:
            raise RuntimeError("the oracle runs only inside the simulator (bind_simulator was not called)")
        full = self._sim.request_by_id(req.id)
        best_id, best_t = None, float("inf")
        for ep in view.endpoints:
            t = project_ttft(self._sim.engine(ep.id), full, view.now)
            if t < best_t or best_id is None:
                best_id, best_t = ep.id, t
        assert best_id is not None
        return best_id
