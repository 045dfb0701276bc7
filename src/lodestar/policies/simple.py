"""Load-only baselines: `random`, `round-robin`, `least-request`.

Consume: the candidate list and the router's own in-flight counts (`Endpoint.book.in_flight`); no metrics.
Produce: one endpoint id. Ties are broken at random with the policy's seeded RNG.

Peers: every router ships these. `random` and `round-robin` follow SGLang's router
(`sgl-router/src/policies/random.rs`, `round_robin.rs`); `least-request` follows AIBrix's `least-request`
(`pkg/plugins/gateway/algorithms/least_request.go`: fewest requests the gateway itself has in flight, uniformly
random among ties, via `SelectByScore` in `algorithms/util.go`).
"""

from __future__ import annotations

from lodestar.cluster_view import ClusterView
from lodestar.policies.base import Policy, PolicyParams, register_policy
from lodestar.policies.common import least_in_flight
from lodestar.request import RequestInfo


@register_policy
class RandomPolicy(Policy):
    """Uniformly random candidate. No parameters, no state besides the RNG."""

    name = "random"
    description = "Uniformly random endpoint."

    def choose(self, req: RequestInfo, view: ClusterView) -> str:
        return self.rng.choice(view.endpoints).id


@register_policy
class RoundRobinPolicy(Policy):
    """Candidates in turn, in id order, with one counter (SGLang: `counter % len(healthy workers)`).

    When the candidate set changes the rotation simply continues over the new sorted list.
    """

    name = "round-robin"
    description = "Endpoints in turn (by id order), skipping ones that are gone."

    def __init__(self, params: PolicyParams | None = None, seed: int = 0) -> None:
        super().__init__(params, seed)
        self._next = 0

    def choose(self, req: RequestInfo, view: ClusterView) -> str:
        eps = sorted(e.id for e in view.endpoints)
        pick = eps[self._next % len(eps)]
        self._next += 1
        return pick


@register_policy
class LeastRequestPolicy(Policy):
    """Fewest requests in flight per the router's own count; random among ties (AIBrix `least-request`)."""

    name = "least-request"
    description = "Fewest requests in flight per the router's own count (random tie-break)."

    def choose(self, req: RequestInfo, view: ClusterView) -> str:
        return least_in_flight(self.rng, view.endpoints).id
