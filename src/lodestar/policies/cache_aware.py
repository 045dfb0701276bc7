"""SGLang / vLLM router `cache_aware` baseline: `cache-aware`.

Consume: the request's chained segment keys and token counts, the router's in-flight counts
(`Endpoint.book.in_flight`, the router's `worker.load()`), and the policy's own approximate per-endpoint prefix
index. No scraped metrics.
Produce: one endpoint id; the prompt is then indexed under it (in both modes, as the peer does).

Peer: SGLang's Rust router (github.com/sgl-project/sglang, `sgl-router/`), which the vLLM router
(github.com/vllm-project/router, `src/policies/cache_aware.rs`) forks with the same logic and defaults. Files read:

* `sgl-router/src/policies/cache_aware.rs` (`select_worker`): imbalanced when
  (max_load - min_load) > balance_abs_threshold AND max_load > min_load * balance_rel_threshold -> the least
  loaded worker; otherwise match rate = matched chars / request chars against the approximate tree; if
  match rate > cache_threshold -> the worker holding the longest match, else the worker with the *smallest tree*
  (`get_smallest_tenant`, "most available cache capacity"), not the least loaded one;
* `sgl-router/src/policies/tree.rs`: one radix tree shared by all workers ("tenants"), characters per tenant
  counted, `evict_tenant_by_size` removing least recently used leaves of tenants above `max_tree_size`, run by a
  background thread every `eviction_interval_secs`;
* `sgl-router/py_src/sglang_router/router_args.py` (the defaults a launched router uses): `cache_threshold = 0.3`,
  `balance_abs_threshold = 64`, `balance_rel_threshold = 1.5`, `eviction_interval_secs = 120`,
  `max_tree_size = 2**26`. (The Rust `CacheAwareConfig::default()` in `policies/mod.rs` differs: 0.5, 32, 1.1,
  30, 10000; it is only used when the policy is built without a config.)

Mapping to Lodestar: the tree is a `PrefixIndex` over segment keys; sizes are in tokens instead of characters
(so the same `max_tree_size` number holds about 4x more text; at 2**26 it never binds in practice). Ties (several
workers holding the longest match, equal tree sizes, equal loads) are broken at random; SGLang takes the first
tenant of a concurrent hash map (arbitrary order) and the first least-loaded worker in list order.
"""

from __future__ import annotations

from pydantic import Field

from lodestar.cluster_view import ClusterView
from lodestar.policies.base import Policy, PolicyParams, register_policy
from lodestar.policies.common import least_in_flight, pick
from lodestar.policies.prefix_index import PrefixIndex
from lodestar.request import RequestInfo


class CacheAwareParams(PolicyParams):
    """Parameters of `cache-aware` (defaults: `sglang_router/router_args.py`)."""

    cache_threshold: float = Field(
        default=0.3, ge=0, le=1, description="Follow the longest match only if its rate exceeds this."
    )
    balance_abs_threshold: int = Field(default=64, ge=0, description="Imbalanced if max - min load exceeds this ...")
    balance_rel_threshold: float = Field(default=1.5, ge=0, description="... and max load > this x min load.")
    eviction_interval_s: float = Field(
        default=120.0, ge=0, description="How often tree sizes are enforced (0 = on every insert)."
    )
    max_tree_size: int = Field(
        default=2**26, gt=0, description="Per-endpoint tree size cap, in tokens (SGLang: characters)."
    )


@register_policy
class CacheAwarePolicy(Policy):
    """SGLang's cache-aware load balancing (see module docstring for the peer files and constants).

    Per request, with loads = in-flight counts over the candidates:

    1. if (max - min) > 64 and max > 1.5 x min: the least-loaded candidate;
    2. else, match rate = longest leading match of any candidate / prompt tokens; if > 0.3, a candidate holding
       that longest match; otherwise the candidate with the fewest tokens indexed (smallest tree);
    3. the prompt is indexed under the pick; every 120 s, endpoints above `max_tree_size` tokens lose their least
       recently used entries.

    Known failure mode: below the threshold it ignores load entirely (smallest tree, not least loaded), and above
    it a hot prefix stays on one endpoint until that endpoint is 64 requests *and* 50 % busier than the idlest,
    so moderate overload of the prefix holder is never corrected.
    """

    name = "cache-aware"
    description = (
        "SGLang/vLLM router cache_aware: longest match above 0.3, else smallest tree; load-balance when skewed."
    )
    Params = CacheAwareParams

    def __init__(self, params: PolicyParams | None = None, seed: int = 0) -> None:
        super().__init__(params, seed)
        p: CacheAwareParams = self.params  # type: ignore[assignment]
        self.index = PrefixIndex(
            capacity_tokens_per_endpoint=p.max_tree_size, capacity_check_interval_s=p.eviction_interval_s
        )

    def choose(self, req: RequestInfo, view: ClusterView) -> str:
        p: CacheAwareParams = self.params  # type: ignore[assignment]
        eps = view.endpoints
        loads = [e.book.in_flight for e in eps]
        hi, lo = max(loads), min(loads)
        if hi - lo > p.balance_abs_threshold and hi > lo * p.balance_rel_threshold:
            target = least_in_flight(self.rng, eps)
        else:
            total = sum(req.segment_tokens)
            matches = self.index.match_many([e.id for e in eps], req.segment_keys, req.segment_tokens, view.now)
            best = max(matches)
            rate = best / total if total > 0 else 0.0
            if rate > p.cache_threshold:
                target = pick(self.rng, [e for e, m in zip(eps, matches, strict=True) if m == best])
            else:
                sizes = [self.index.endpoint_tokens(e.id) for e in eps]
                smallest = min(sizes)
                target = pick(self.rng, [e for e, s in zip(eps, sizes, strict=True) if s == smallest])
        self.index.insert(target.id, req.segment_keys, req.segment_tokens, view.now)
        return target.id

    def on_endpoint_removed(self, endpoint_id: str) -> None:
        self.index.remove_endpoint(endpoint_id)
