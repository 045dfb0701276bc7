"""Load-only baselines: `random`, `round-robin`, `least-request`.

Consume: the candidate list and the router's own in-flight counts (`Endpoint.book.in_flight`).
Produce: one endpoint id. Ties are broken at random with the policy's seeded RNG.
"""

from __future__ import annotations

from lodestar.cluster_view import ClusterView
from lodestar.policies.base import Policy, register_policy
from lodestar.request import RequestInfo


@register_policy
class RandomPolicy(Policy):
    name = "random"
    description = "Uniformly random endpoint."

    def choose(self, req: RequestInfo, view: ClusterView) -> str:
        return self.rng.choice(view.endpoints).id


@register_policy
class RoundRobinPolicy(Policy):
    name = "round-robin"
    description = "Endpoints in turn (by id order), skipping ones that are gone."

    def __init__(self, params=None, seed: int = 0) -> None:  # type: ignore[no-untyped-def]
        super().__init__(params, seed)
        self._next = 0

    def choose(self, req: RequestInfo, view: ClusterView) -> str:
        eps = sorted(e.id for e in view.endpoints)
        pick = eps[self._next % len(eps)]
        self._next += 1
        return pick


@register_policy
class LeastRequestPolicy(Policy):
    name = "least-request"
    description = "Fewest requests in flight per the router's own count (random tie-break)."

    def choose(self, req: RequestInfo, view: ClusterView) -> str:
        best = min(e.book.in_flight for e in view.endpoints)
        return self.rng.choice([e.id for e in view.endpoints if e.book.in_flight == best])
