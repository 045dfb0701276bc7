"""The router-side prefix index: leading matches, LRU capacities, idle eviction, endpoint removal."""

from __future__ import annotations

import pickle

import pytest

from lodestar.policies.prefix_index import PrefixIndex
from lodestar.prefix import chain_keys


def prompt(*ids: int, tok: int = 16) -> tuple[tuple[int, ...], tuple[int, ...]]:
    keys = chain_keys(list(ids))
    return keys, (tok,) * len(keys)


def test_match_counts_leading_tokens_only() -> None:
    idx = PrefixIndex()
    k, t = prompt(1, 2, 3, 4)
    idx.insert("a", k[:3], t[:3], now=0.0)
    assert idx.match("a", k, t, 0.0) == 48
    assert idx.match("b", k, t, 0.0) == 0
    # a prompt that diverges after the first segment shares exactly one segment (chained keys)
    k2, t2 = prompt(1, 9, 3)
    assert idx.match("a", k2, t2, 0.0) == 16
    assert idx.match_many(["b", "a"], k, t, 0.0) == [0, 48]
    assert idx.endpoint_tokens("a") == 48
    assert len(idx) == 3


def test_reinsert_does_not_double_count() -> None:
    idx = PrefixIndex()
    k, t = prompt(1, 2)
    idx.insert("a", k, t, 0.0)
    idx.insert("a", k, t, 1.0)
    assert idx.endpoint_tokens("a") == 32
    assert idx.total_tokens() == 32


def test_per_endpoint_lru_evicts_old_prompts_deep_end_first() -> None:
    idx = PrefixIndex(capacity_tokens_per_endpoint=64)
    old_k, old_t = prompt(1, 2, 3)  # 48 tokens
    new_k, new_t = prompt(7, 8)  # 32 tokens -> 80 > 64: one old segment must go
    idx.insert("a", old_k, old_t, 0.0)
    idx.insert("a", new_k, new_t, 1.0)
    assert idx.endpoint_tokens("a") == 64
    assert idx.match("a", new_k, new_t, 1.0) == 32
    # the old prompt keeps its beginning (inserted last, so most recent), loses its deep end
    assert idx.match("a", old_k, old_t, 1.0) == 32
    # other endpoints are unaffected by a's capacity
    idx.insert("b", old_k, old_t, 2.0)
    assert idx.match("b", old_k, old_t, 2.0) == 48


def test_touch_refreshes_recency() -> None:
    idx = PrefixIndex(capacity_tokens_per_endpoint=32)
    ka, ta = prompt(1)
    kb, tb = prompt(2)
    kc, tc = prompt(3)
    idx.insert("e", ka, ta, 0.0)
    idx.insert("e", kb, tb, 1.0)
    idx.insert("e", ka, ta, 2.0)  # a is now the most recent
    idx.insert("e", kc, tc, 3.0)  # evicts b, not a
    assert idx.match("e", ka, ta, 3.0) == 16
    assert idx.match("e", kb, tb, 3.0) == 0


def test_total_capacity_is_one_lru_over_distinct_keys() -> None:
    idx = PrefixIndex(capacity_tokens_total=48)
    k, t = prompt(1, 2)
    idx.insert("a", k, t, 0.0)
    idx.insert("b", k, t, 1.0)  # the same keys: still 32 tokens of distinct keys
    assert idx.match_many(["a", "b"], k, t, 1.0) == [32, 32]
    k2, t2 = prompt(5, 6)
    idx.insert("c", k2, t2, 2.0)  # 64 > 48: the least recent key (segment 2 of the first prompt) goes everywhere
    assert idx.match_many(["a", "b", "c"], k, t, 2.0) == [16, 16, 0]
    assert idx.match("c", k2, t2, 2.0) == 32
    assert idx.endpoint_tokens("a") == 16


def test_total_capacity_tracks_removals() -> None:
    idx = PrefixIndex(capacity_tokens_total=32)
    k, t = prompt(1, 2)
    idx.insert("a", k, t, 0.0)
    idx.remove_endpoint("a")
    k2, t2 = prompt(3, 4)
    idx.insert("b", k2, t2, 1.0)  # the removed keys no longer occupy capacity
    assert idx.match("b", k2, t2, 1.0) == 32


def test_idle_entries_stop_matching_and_are_swept() -> None:
    idx = PrefixIndex(idle_ttl_s=1200.0, sweep_interval_s=1.0)
    k, t = prompt(1, 2)
    idx.insert("a", k, t, 0.0)
    assert idx.match("a", k, t, 1200.0) == 32
    assert idx.match("a", k, t, 1200.5) == 0  # idle more than 20 minutes: no longer matches
    k2, t2 = prompt(9)
    idx.insert("b", k2, t2, 1201.0)  # any insert sweeps (at most once a second)
    assert len(idx) == 1
    assert idx.endpoint_tokens("a") == 0


def test_idle_eviction_keeps_recently_touched() -> None:
    idx = PrefixIndex(idle_ttl_s=10.0)
    ka, ta = prompt(1)
    kb, tb = prompt(2)
    idx.insert("a", ka, ta, 0.0)
    idx.insert("a", kb, tb, 8.0)
    assert idx.evict_idle(12.0) == 1
    assert idx.match("a", kb, tb, 12.0) == 16


def test_capacity_check_interval_defers_enforcement() -> None:
    idx = PrefixIndex(capacity_tokens_per_endpoint=16, capacity_check_interval_s=120.0)
    k, t = prompt(1, 2, 3)
    idx.insert("a", k, t, 0.0)  # first insert runs the first check (nothing indexed yet), then adds 48
    assert idx.endpoint_tokens("a") == 48
    idx.insert("a", k, t, 60.0)  # no check yet
    assert idx.endpoint_tokens("a") == 48
    k2, t2 = prompt(4)
    idx.insert("b", k2, t2, 121.0)  # the periodic pass trims a to 16 tokens: its first segment survives
    assert idx.endpoint_tokens("a") == 16
    assert idx.match("a", k, t, 121.0) == 16


def test_endpoint_capacity_override_and_removal() -> None:
    idx = PrefixIndex(capacity_tokens_per_endpoint=1000)
    idx.set_endpoint_capacity("a", 16)
    k, t = prompt(1, 2)
    idx.insert("a", k, t, 0.0)
    assert idx.endpoint_tokens("a") == 16
    idx.remove_endpoint("a")
    assert idx.match("a", k, t, 0.0) == 0
    assert idx.endpoints() == []
    with pytest.raises(ValueError):
        idx.set_endpoint_capacity("a", 0)
    with pytest.raises(ValueError):
        PrefixIndex(capacity_tokens_total=0)


def test_empty_prompt_and_pickle() -> None:
    idx = PrefixIndex(capacity_tokens_total=100, idle_ttl_s=5.0)
    idx.insert("a", (), (), 0.0)
    assert idx.match("a", (), (), 0.0) == 0
    k, t = prompt(1)
    idx.insert("a", k, t, 1.0)
    twin = pickle.loads(pickle.dumps(idx))
    assert twin.match("a", k, t, 1.0) == 16
    twin.insert("b", k, t, 2.0)
    assert twin.match("b", k, t, 2.0) == 16
