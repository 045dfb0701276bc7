"""vLLM production-stack baseline: `prefixaware`.

Consume: the request's chained segment keys and token counts and the policy's own prefix index (never evicted).
No load signal, no metrics.
Produce: one endpoint id; the prompt is then indexed under it.

Peer: vLLM production-stack (github.com/vllm-project/production-stack), files read:

* `src/vllm_router/routers/routing_logic.py`, class `PrefixAwareRouter` (`--routing-logic prefixaware`):
  `longest_prefix_match(prompt, available endpoints)`, then `random.choice` among the endpoints returned, then
  `insert(prompt, chosen)`; its docstring: "we do not consider the eviction of prefix cache";
* `src/vllm_router/prefix/hashtrie.py`, class `HashTrie(chunk_size=128)`: the prompt is cut into 128-character
  chunks, each hashed with xxhash64 and walked as a trie path; each node keeps the set of endpoints that were sent
  that path; the match narrows the available set chunk by chunk and stops when the next chunk has none of them, so
  it returns the endpoints with the longest match, or all available endpoints when nothing matches.

Mapping to Lodestar: the trie path is the request's chained segment keys, so "longest match" is in segments
(counted in tokens) instead of 128-character chunks.
"""

from __future__ import annotations

from lodestar.cluster_view import ClusterView
from lodestar.policies.base import Policy, PolicyParams, register_policy
from lodestar.policies.common import pick
from lodestar.policies.prefix_index import PrefixIndex
from lodestar.request import RequestInfo


@register_policy
class PrefixAwarePolicy(Policy):
    """production-stack `prefixaware`: longest prefix match, uniformly random among ties, no load term.

    No parameters (the peer's only constant, the 128-character chunk, has no counterpart on segment keys). The
    index is never evicted (as the peer), except for endpoints removed by discovery.

    Known failure mode: no load awareness at all: a popular prefix (a shared system prompt) sends every request
    that carries it to the one endpoint that saw it first, which saturates while the others idle.
    """

    name = "prefixaware"
    description = "vLLM production-stack prefixaware: longest prefix match, random among ties, no load term."

    def __init__(self, params: PolicyParams | None = None, seed: int = 0) -> None:
        super().__init__(params, seed)
        self.index = PrefixIndex()

    def choose(self, req: RequestInfo, view: ClusterView) -> str:
        eps = view.endpoints
        matches = self.index.match_many([e.id for e in eps], req.segment_keys, req.segment_tokens, view.now)
        best = max(matches)
        target = pick(self.rng, [e for e, m in zip(eps, matches, strict=True) if m == best])
        self.index.insert(target.id, req.segment_keys, req.segment_tokens, view.now)
        return target.id

    def on_endpoint_removed(self, endpoint_id: str) -> None:
        self.index.remove_endpoint(endpoint_id)
