"""AIBrix gateway baselines: `prefix-cache` and `prefix-cache-and-load` (`prefix-cache:2,least-request:1`).

Consume: the request's chained segment keys and token counts, the router's in-flight counts
(`Endpoint.book.in_flight`, AIBrix's gateway-side running-request count), and the router's own prefix index
(`PrefixIndex`, filled by these policies at routing time). No scraped metrics.
Produce: one endpoint id; the whole prompt is then indexed under it.

Peer: AIBrix (github.com/vllm-project/aibrix), files read:

* `pkg/plugins/gateway/algorithms/prefix_cache.go` (router `prefix-cache`): the load gate, the ranking of matched
  pods, the mean + 1 x std bound, the least-request fallback, `AddPrefix` on the chosen pod;
* `pkg/utils/prefixcacheindexer/hash.go` (`PrefixHashTable`): match percent = (i + 1) * 100 / #blocks for the last
  block i that some remaining pod holds, pods dropping out at their first missing block; constants
  `defaultPrefixCacheBlockNumber = 200000`, `defaultPrefixCacheBlockSize = 4`,
  `defaultPrefixCacheEvictionInternalInSec = 1`, `defaultPrefixCacheEvictionDurationInMins = 20`;
* `pkg/utils/tokenizer/characters.go` (default tokenizer `character`: the prompt's bytes), so one 4-byte block is
  about one token (exactly one token with the `tiktoken` tokenizer, which packs each token id into 4 bytes);
* `pkg/plugins/gateway/algorithms/util.go` (`mean`, sample `standardDeviation` with n - 1, `SelectByScore`);
* `pkg/plugins/gateway/algorithms/least_request.go` (random among the least-loaded);
* `pkg/plugins/gateway/algorithms/router.go` (`multiStrategyRouter.scoreAndRank`, `normalizeScoresArray`) and
  `multi_router_readme.md`: per-strategy min-max normalisation, weights divided by their sum, highest total wins,
  ties within 1e-9 broken by the shuffled pod order.

Mapping to Lodestar: the index is keyed by the request's segment keys instead of 4-byte block hashes, and its
capacity is in tokens: 200,000 blocks of ~1 token = 200,000 tokens, one LRU over distinct keys shared by all
endpoints (as AIBrix's single hash table), entries idle for 20 minutes dropped (swept every 1 s). The match percent
is computed over tokens (integer percent, as AIBrix), which equals the block share for equal-size blocks.
"""

from __future__ import annotations

from pydantic import Field

from lodestar.cluster_view import ClusterView
from lodestar.policies.base import Policy, PolicyParams, register_policy
from lodestar.policies.common import argmax_random, least_in_flight, mean_and_sample_std, min_max_normalise
from lodestar.policies.prefix_index import PrefixIndex
from lodestar.request import RequestInfo


class AibrixIndexParams(PolicyParams):
    """The prefix index settings both AIBrix policies share (AIBrix `prefixcacheindexer/hash.go` defaults)."""

    index_capacity_tokens: int = Field(
        default=200_000,
        gt=0,
        description="Total index capacity, one LRU over all endpoints (AIBRIX_PREFIX_CACHE_BLOCK_NUMBER=200000 "
        "blocks of 4 bytes ~ 1 token each).",
    )
    index_idle_s: float = Field(
        default=1200.0, gt=0, description="Entries idle this long are evicted (AIBRIX_..._EVICTION_DURATION_MINS=20)."
    )
    index_sweep_interval_s: float = Field(
        default=1.0, ge=0, description="Idle sweep period (AIBRIX_PREFIX_CACHE_EVICTION_INTERVAL_SECONDS=1)."
    )


def _aibrix_index(p: AibrixIndexParams) -> PrefixIndex:
    return PrefixIndex(
        capacity_tokens_total=p.index_capacity_tokens,
        idle_ttl_s=p.index_idle_s,
        sweep_interval_s=p.index_sweep_interval_s,
    )


def _match_percents(index: PrefixIndex, ids: list[str], req: RequestInfo, now: float) -> list[int]:
    """AIBrix's integer match percent of each endpoint (0 when it holds no leading block)."""
    total = sum(req.segment_tokens)
    if total <= 0:
        return [0] * len(ids)
    return [m * 100 // total for m in index.match_many(ids, req.segment_keys, req.segment_tokens, now)]


class PrefixCacheParams(AibrixIndexParams):
    """Parameters of `prefix-cache` (AIBrix `prefix_cache.go` defaults)."""

    imbalance_abs_count: int = Field(
        default=8,
        ge=0,
        description="Load gate: if max - min in-flight exceeds this, only the least-loaded endpoints compete "
        "(AIBRIX_PREFIX_CACHE_POD_RUNNING_REQUEST_IMBALANCE_ABS_COUNT=8).",
    )
    imbalance_factor: float | None = Field(
        default=None,
        gt=0,
        description="Newer AIBrix also requires max > factor * (mean + 1) (AIBRIX_PREFIX_CACHE_LOAD_IMBALANCE_"
        "FACTOR=2.0 there); None = the abs-count-only gate.",
    )
    standard_deviation_factor: float = Field(
        default=1.0,
        ge=0,
        description="A matched endpoint qualifies if in-flight <= mean + factor * std "
        "(AIBRIX_PREFIX_CACHE_STANDARD_DEVIATION_FACTOR=1).",
    )


@register_policy
class PrefixCachePolicy(Policy):
    """AIBrix's `prefix-cache` router, as in `prefix_cache.go` with the abs-count load gate (see module docstring).

    Per request, with in-flight counts c over the candidates:

    1. load gate: if max(c) - min(c) > `imbalance_abs_count` (8), only the endpoints with c == min(c) take part
       in prefix matching (with `imbalance_factor` set, the newer gate: max - min >= 8 and
       max(c) > factor * (mean(c) + 1));
    2. match percent of each taking part = leading tokens it holds * 100 // prompt tokens (integer); those with
       a percent > 0 are "matched";
    3. matched endpoints are shuffled, then sorted by percent descending and in-flight ascending; the first whose
       in-flight <= mean(c) + 1 x std(c) (sample std over all candidates) wins;
    4. otherwise the least-loaded candidate (random among ties);
    5. every segment of the prompt is indexed under the winner.

    Known failure mode: the index is small (200k tokens for the whole cluster), so with long prompts it forgets
    prefixes within seconds under load; and the mean + std bound lets a hot prefix pile onto one endpoint until
    the spread exceeds 8 requests, after which matching is confined to idle endpoints that do not hold it.
    """

    name = "prefix-cache"
    description = "AIBrix prefix-cache router: prefix match gated by load spread > 8 and mean + 1 std."
    Params = PrefixCacheParams

    def __init__(self, params: PolicyParams | None = None, seed: int = 0) -> None:
        super().__init__(params, seed)
        self.index = _aibrix_index(self.params)  # type: ignore[arg-type]

    def choose(self, req: RequestInfo, view: ClusterView) -> str:
        p: PrefixCacheParams = self.params  # type: ignore[assignment]
        eps = view.endpoints
        counts = [e.book.in_flight for e in eps]
        lo, hi = min(counts), max(counts)
        mean, std = mean_and_sample_std(counts)
        if p.imbalance_factor is None:  # abs-count gate (PR #933 / #1906)
            gated = hi - lo > p.imbalance_abs_count
        else:  # newer gate: both a minimum gap and a relative excess over the mean
            gated = hi - lo >= p.imbalance_abs_count and hi > p.imbalance_factor * (mean + 1)
        taking_part = [e for e in eps if e.book.in_flight == lo] if gated else eps
        pcts = _match_percents(self.index, [e.id for e in taking_part], req, view.now)
        matched = [(pc, e) for pc, e in zip(pcts, taking_part, strict=True) if pc > 0]
        target = None
        if matched:
            self.rng.shuffle(matched)
            matched.sort(key=lambda x: (-x[0], x[1].book.in_flight))  # stable: shuffled order breaks ties
            bound = mean + p.standard_deviation_factor * std
            for _, e in matched:
                if e.book.in_flight <= bound:
                    target = e
                    break
        if target is None:
            target = least_in_flight(self.rng, eps)
        self.index.insert(target.id, req.segment_keys, req.segment_tokens, view.now)
        return target.id

    def on_endpoint_removed(self, endpoint_id: str) -> None:
        self.index.remove_endpoint(endpoint_id)


class PrefixCacheAndLoadParams(AibrixIndexParams):
    """Parameters of `prefix-cache-and-load` (AIBrix multi-strategy `prefix-cache:2,least-request:1`)."""

    prefix_weight: float = Field(default=2.0, ge=0, description="Weight of the prefix-cache score.")
    least_request_weight: float = Field(default=1.0, ge=0, description="Weight of the least-request score.")


@register_policy
class PrefixCacheAndLoadPolicy(Policy):
    """AIBrix multi-strategy routing `AIBRIX_ROUTING_ALGORITHM=prefix-cache:2,least-request:1`.

    Two scores per candidate: the prefix-cache match percent (`prefixCacheRouter.ScoreAll`: no load gate, higher
    is better) and the in-flight count (`leastRequestRouter.ScoreAll`, lower is better). Each is min-max
    normalised to [0, 1] over the candidates with 1 = best (all equal -> 1.0), multiplied by weight / sum of
    weights (2/3 and 1/3), and summed; the highest total wins, ties (within 1e-9) at random. Afterwards the
    prompt is indexed under the winner (`PostRouteUpdate`). With one candidate, that one (and it is indexed).

    Newer AIBrix winsorises raw scores before the min-max step; with a handful of endpoints that is a no-op
    and it is not modelled. Known failure mode: the endpoint with the longest match gets the full 2/3 prefix term
    and the whole load range is worth only 1/3, so the holder of the longest match beats every endpoint with
    less than half its match however loaded it is: each hot prefix piles onto its holder.
    """

    name = "prefix-cache-and-load"
    description = "AIBrix multi-strategy prefix-cache:2,least-request:1 (min-max normalised weighted sum)."
    Params = PrefixCacheAndLoadParams

    def __init__(self, params: PolicyParams | None = None, seed: int = 0) -> None:
        super().__init__(params, seed)
        self.index = _aibrix_index(self.params)  # type: ignore[arg-type]

    def choose(self, req: RequestInfo, view: ClusterView) -> str:
        p: PrefixCacheAndLoadParams = self.params  # type: ignore[assignment]
        eps = view.endpoints
        if len(eps) == 1:
            target = eps[0]
        else:
            wsum = p.prefix_weight + p.least_request_weight
            if wsum <= 0:
                target = self.rng.choice(eps)
            else:
                pcts = _match_percents(self.index, [e.id for e in eps], req, view.now)
                n_prefix = min_max_normalise(pcts, higher_is_better=True)
                n_load = min_max_normalise([e.book.in_flight for e in eps], higher_is_better=False)
                wp, wl = p.prefix_weight / wsum, p.least_request_weight / wsum
                totals = [wp * a + wl * b for a, b in zip(n_prefix, n_load, strict=True)]
                target = argmax_random(self.rng, eps, totals)
        self.index.insert(target.id, req.segment_keys, req.segment_tokens, view.now)
        return target.id

    def on_endpoint_removed(self, endpoint_id: str) -> None:
        self.index.remove_endpoint(endpoint_id)
