"""Each baseline's distinctive behaviour, on small hand-built ClusterViews."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from lodestar.cluster_view import ClusterView, Endpoint, EndpointBook, EngineMetrics
from lodestar.policies import build_policy
from lodestar.prefix import chain_keys
from lodestar.request import RequestInfo

NOW = 1000.0


def ep(
    eid: str,
    inflight: int = 0,
    waiting: float | None = None,
    kv: float | None = None,
    age: float = 0.01,
    labels: dict[str, str] | None = None,
) -> Endpoint:
    metrics = None
    if waiting is not None or kv is not None:
        metrics = EngineMetrics(scraped_at=NOW - age, num_requests_waiting=waiting, kv_cache_usage=kv)
    return Endpoint(eid, labels or {}, metrics, EndpointBook(in_flight=inflight))


def view(*eps: Endpoint, now: float = NOW) -> ClusterView:
    return ClusterView(now, list(eps))


def req(ids: list[int], tok: int = 100, rid: int = 1) -> RequestInfo:
    keys = chain_keys(ids)
    return RequestInfo(rid, NOW, tok * len(ids), keys, (tok,) * len(keys))


def held(policy: Any, eid: str, r: RequestInfo, now: float = NOW) -> None:
    """Pretend `eid` was sent prompt `r` (the policy's own index, as routing would have filled it)."""
    policy.index.insert(eid, r.segment_keys, r.segment_tokens, now)


def picks(
    name: str, v: ClusterView, r: RequestInfo, n: int = 60, setup: Callable[[Any], None] | None = None, **params: Any
) -> Counter[str]:
    """Decisions of `n` fresh policies (seeds 0..n-1) on the same state."""
    out: Counter[str] = Counter()
    for seed in range(n):
        p = build_policy(name, seed=seed, params=params)
        if setup:
            setup(p)
        out[p.choose(r, v)] += 1
    return out


# ---- simple ------------------------------------------------------------------------------------------------------


def test_round_robin_cycles_in_id_order() -> None:
    p = build_policy("round-robin")
    v = view(ep("b"), ep("a"), ep("c"))
    assert [p.choose(req([1]), v) for _ in range(4)] == ["a", "b", "c", "a"]


def test_least_request_and_random() -> None:
    v = view(ep("a", 3), ep("b", 1), ep("c", 1))
    assert set(picks("least-request", v, req([1]))) == {"b", "c"}
    assert set(picks("random", v, req([1]))) == {"a", "b", "c"}


def test_power_of_two_takes_the_less_loaded_of_its_two() -> None:
    assert set(picks("power-of-two", view(ep("a", 5), ep("b", 2)), req([1]))) == {"b"}
    c = picks("power-of-two", view(ep("a", 0), ep("b", 1), ep("c", 2)), req([1]), n=300)
    assert "c" not in c  # the most loaded loses every pair
    assert c["a"] > c["b"] > 0  # a wins 2 of 3 pairs, b 1 of 3


def test_least_kv_cache_uses_scraped_usage_and_falls_back() -> None:
    v = view(ep("a", 0, kv=0.8), ep("b", 9, kv=0.2), ep("c", 0))  # c never scraped
    assert set(picks("least-kv-cache", v, req([1]))) == {"b"}
    none = view(ep("a", 4), ep("b", 1))
    assert set(picks("least-kv-cache", none, req([1]))) == {"b"}  # least-request fallback
    assert set(picks("least-kv-cache", none, req([1]), fallback="random")) == {"a", "b"}
    stale = view(ep("a", 0, kv=0.1, age=10.0), ep("b", 0, kv=0.5))
    assert set(picks("least-kv-cache", stale, req([1]))) == {"a"}  # AIBrix: any age
    assert set(picks("least-kv-cache", stale, req([1]), max_metrics_age_s=2.0)) == {"b"}


# ---- AIBrix prefix-cache ----------------------------------------------------------------------------------------


def test_aibrix_follows_the_prefix_when_balanced() -> None:
    r = req([1, 2, 3, 4])
    v = view(ep("a", 3), ep("b", 3), ep("c", 2))  # b holds it and is within mean + 1 std (2.67 + 0.58)
    assert set(picks("prefix-cache", v, r, setup=lambda p: held(p, "b", r))) == {"b"}
    # one request more than two equal peers is already outside mean + 1 std (1.33 + 0.58 < 2)
    v2 = view(ep("a", 1), ep("b", 2), ep("c", 1))
    assert set(picks("prefix-cache", v2, r, setup=lambda p: held(p, "b", r))) == {"a", "c"}


def test_aibrix_switches_to_least_loaded_when_spread_exceeds_8() -> None:
    r = req([1, 2, 3, 4])
    setup = lambda p: held(p, "b", r)  # noqa: E731
    # spread 9 > 8: only the least-loaded endpoint takes part, although b holds the whole prompt
    assert set(picks("prefix-cache", view(ep("a", 0), ep("b", 9), ep("c", 5)), r, setup=setup)) == {"a"}
    # spread exactly 8: no gate; b (8) is within mean + 1 std (4.33 + 4.04) and wins
    assert set(picks("prefix-cache", view(ep("a", 0), ep("b", 8), ep("c", 5)), r, setup=setup)) == {"b"}


def test_aibrix_mean_plus_std_bound_sends_overloaded_holder_to_least_request() -> None:
    r = req([1, 2])
    v = view(ep("a", 0), ep("b", 0), ep("c", 1), ep("d", 6))  # mean 1.75, sample std 2.87: bound 4.62 < 6
    assert set(picks("prefix-cache", v, r, setup=lambda p: held(p, "d", r))) == {"a", "b"}


def test_aibrix_ranks_by_match_then_load() -> None:
    r = req([1, 2, 3, 4])
    half = req([1, 2, 7, 8])

    def setup(p: Any) -> None:
        held(p, "a", half)  # 50 %
        held(p, "b", r)  # 100 %
        held(p, "c", r)  # 100 %

    assert set(picks("prefix-cache", view(ep("a", 0), ep("b", 3), ep("c", 2)), r, setup=setup)) == {"c"}
    assert set(picks("prefix-cache", view(ep("a", 0), ep("b", 2), ep("c", 2)), r, setup=setup)) == {"b", "c"}


def test_aibrix_indexes_the_whole_prompt_and_forgets_after_20_min() -> None:
    p = build_policy("prefix-cache")
    r = req([1, 2, 3])
    v = view(ep("a"), ep("b"))
    first = p.choose(r, v)
    assert p.index.match(first, r.segment_keys, r.segment_tokens, NOW) == r.prompt_tokens
    later = view(ep("a"), ep("b"), now=NOW + 1199)
    assert p.index.match(first, r.segment_keys, r.segment_tokens, later.now) == r.prompt_tokens
    assert p.index.match(first, r.segment_keys, r.segment_tokens, NOW + 1201) == 0


def test_aibrix_index_is_one_small_lru_for_the_cluster() -> None:
    p = build_policy("prefix-cache", params={"index_capacity_tokens": 400})
    r1, r2 = req([1, 2, 3]), req([4, 5, 6])  # 300 tokens each
    held(p, "a", r1)
    held(p, "b", r2, NOW + 1)  # 600 > 400 on the shared index: a loses r1's deep end
    assert p.index.match("a", r1.segment_keys, r1.segment_tokens, NOW + 1) == 100
    assert p.index.match("b", r2.segment_keys, r2.segment_tokens, NOW + 1) == 300


def test_aibrix_newer_relative_gate() -> None:
    r = req([1, 2])
    v = view(ep("a", 10), ep("b", 18), ep("c", 14))  # gap 8, mean 14: max 18 < 2 x (14 + 1)
    setup = lambda p: held(p, "b", r)  # noqa: E731
    assert set(picks("prefix-cache", v, r, setup=setup, imbalance_factor=2.0)) == {"b"}
    v2 = view(ep("a", 0), ep("b", 12), ep("c", 0))  # gap 12, mean 4: 12 > 2 x 5 -> gated
    assert set(picks("prefix-cache", v2, r, setup=setup, imbalance_factor=2.0)) == {"a", "c"}


def test_prefix_cache_and_load_weighs_prefix_two_to_one() -> None:
    r = req([1, 2, 3, 4])
    setup = lambda p: held(p, "a", r)  # noqa: E731
    v = view(ep("a", 6), ep("b", 0), ep("c", 3))
    # a: prefix 1, load 0 -> 2/3; b: prefix 0, load 1 -> 1/3; c: prefix 0, load 0.5 -> 1/6
    assert set(picks("prefix-cache-and-load", v, r, setup=setup)) == {"a"}
    flipped = {"prefix_weight": 1.0, "least_request_weight": 2.0}
    assert set(picks("prefix-cache-and-load", v, r, setup=setup, **flipped)) == {"b"}
    # nothing matched, equal load: all scores equal, random tie-break
    even = view(ep("a", 1), ep("b", 1), ep("c", 1))
    assert set(picks("prefix-cache-and-load", even, req([9]))) == {"a", "b", "c"}


# ---- SGLang cache-aware -----------------------------------------------------------------------------------------


def test_cache_aware_follows_longest_match_above_threshold_only() -> None:
    holder = req([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])

    def setup(p: Any) -> None:
        held(p, "b", holder)  # b: big tree, holds the prefix
        held(p, "c", req([50, 51]))  # c: small tree
        held(p, "a", req([60, 61, 62]))  # a: middle tree

    v = view(ep("a", 0), ep("b", 20), ep("c", 30))  # not imbalanced: 30 - 0 <= 64
    above = req([1, 2, 3, 4, 99])  # 4 of 5 segments held: rate 0.8
    assert set(picks("cache-aware", v, above, setup=setup)) == {"b"}
    below = req([1, 98, 97, 96, 95])  # 1 of 5: rate 0.2 <= 0.3 -> smallest tree (c), not least loaded (a)
    assert set(picks("cache-aware", v, below, setup=setup)) == {"c"}
    exact = req([1, 2, 3, 96, 95, 94, 93, 92, 91, 90])  # rate exactly 0.3 is not above it
    assert set(picks("cache-aware", v, exact, setup=setup)) == {"c"}


def test_cache_aware_load_balances_only_when_both_thresholds_trip() -> None:
    r = req([1, 2, 3])
    setup = lambda p: held(p, "b", r)  # noqa: E731
    skewed = view(ep("a", 10), ep("b", 80))  # 70 > 64 and 80 > 15
    assert set(picks("cache-aware", skewed, r, setup=setup)) == {"a"}
    relative_ok = view(ep("a", 140), ep("b", 210))  # 70 > 64 but 210 is not > 1.5 x 140
    assert set(picks("cache-aware", relative_ok, r, setup=setup)) == {"b"}


def test_cache_aware_ties_and_tree_eviction() -> None:
    r = req([1, 2])
    v = view(ep("a"), ep("b"), ep("c"))

    def setup(p: Any) -> None:
        held(p, "a", r)
        held(p, "b", r)

    assert set(picks("cache-aware", v, r, setup=setup)) == {"a", "b"}
    p = build_policy("cache-aware", params={"max_tree_size": 150, "eviction_interval_s": 0})
    held(p, "a", req([1, 2, 3]))
    assert p.index.endpoint_tokens("a") == 100


# ---- llm-d ------------------------------------------------------------------------------------------------------


def test_llmd_weights_prefix_queue_and_kv() -> None:
    r = req([1, 2, 3, 4])
    v = view(ep("a", waiting=2, kv=0.5), ep("b", waiting=0, kv=0.5), ep("c", waiting=4, kv=0.5))
    assert set(picks("llm-d", v, r)) == {"b"}  # queue decides when nothing is cached
    # a holds the prompt: 3 x 1 + 2 x 0.5 + 2 x 0.5 = 5 beats b's 0 + 2 + 1 = 3
    assert set(picks("llm-d", v, r, setup=lambda p: held(p, "a", r))) == {"a"}
    kv = view(ep("a", waiting=1, kv=0.9), ep("b", waiting=1, kv=0.1))
    assert set(picks("llm-d", kv, r)) == {"b"}


def test_llmd_ignores_metrics_older_than_2s() -> None:
    r = req([7])

    def v(age: float) -> ClusterView:
        return view(ep("a", waiting=0, kv=0.0, age=age), ep("b", waiting=5, kv=0.9), ep("c", waiting=10, kv=0.95))

    assert set(picks("llm-d", v(1.9), r)) == {"a"}  # fresh: empty queue, empty cache
    # stale: a scores the neutral 0.5 on both, 2.0 in all; b tops the fresh queues: 2 x 1 + 2 x 0.1 = 2.2
    assert set(picks("llm-d", v(2.5), r)) == {"b"}
    never = view(ep("a"), ep("b", waiting=5, kv=0.9), ep("c", waiting=10, kv=0.95))
    assert set(picks("llm-d", never, r)) == {"b"}  # missing = stale


def test_llmd_prefix_saturates_at_4096_tokens() -> None:
    long_a = req(list(range(1, 51)))  # 50 x 100 = 5000 tokens
    long_b = req(list(range(1, 42)) + list(range(900, 949)))  # 9000 tokens, shares the first 4100
    p = build_policy("llm-d")
    p.choose(long_a, view(ep("a")))
    assert p.index.endpoint_tokens("a") == 4096  # only the first 4096 tokens are indexed
    # a: prefix 4096 / 4096 = 1 -> 3 + 0 + 1 = 4 beats b: 0 + 2 + 1 = 3 (untruncated, 4100 / 9000 would lose)
    v = view(ep("a", waiting=3), ep("b", waiting=0))
    assert set(picks("llm-d", v, long_b, setup=lambda q: q.choose(long_a, view(ep("a"))))) == {"a"}
    no_trunc = {"max_prefix_tokens": 100_000}
    assert set(picks("llm-d", v, long_b, setup=lambda q: q.choose(long_a, view(ep("a"))), **no_trunc)) == {"b"}


def test_llmd_auto_tunes_index_capacity_from_labels() -> None:
    p = build_policy("llm-d")
    small = ep("a", labels={"num_gpu_blocks": "10", "block_size": "16"})
    p.choose(req(list(range(1, 21)), tok=16), view(small))  # 320 tokens into a 10 x 16 = 160-token index
    assert p.index.endpoint_tokens("a") == 160


# ---- production-stack prefixaware ------------------------------------------------------------------------------


def test_prefixaware_longest_match_without_load() -> None:
    r = req([1, 2, 3])

    def setup(p: Any) -> None:
        held(p, "a", req([1, 2]))
        held(p, "b", req([1]))

    v = view(ep("a", 100), ep("b", 0), ep("c", 0))
    assert set(picks("prefixaware", v, r, setup=setup)) == {"a"}


def test_prefixaware_ties_are_random() -> None:
    r = req([1, 2])

    def setup(p: Any) -> None:
        held(p, "a", r)
        held(p, "b", r)

    c = picks("prefixaware", view(ep("a"), ep("b"), ep("c")), r, n=100, setup=setup)
    assert set(c) == {"a", "b"} and min(c.values()) > 25
    assert set(picks("prefixaware", view(ep("a"), ep("b"), ep("c")), req([9]))) == {"a", "b", "c"}
