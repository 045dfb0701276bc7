"""Loaders on the real shared traces (skipped only when ../shared/data/traces is absent)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lodestar.prefix import chain_keys
from lodestar.workload import load_azure, load_mooncake, load_workload, prefix_hit_ratio, workload_stats
from lodestar.workload.mooncake import is_bucketed, jitter_buckets, parse_mooncake

TRACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "traces"
CONV = TRACES / "mooncake_fast25" / "conversation_trace.jsonl"
SYN = TRACES / "mooncake_fast25" / "synthetic_trace.jsonl"
AZ_CONV = TRACES / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"
AZ_CODE = TRACES / "azure_llm_2023" / "AzureLLMInferenceTrace_code.csv"

pytestmark = pytest.mark.skipif(not CONV.exists(), reason="shared traces not available")


def _sorted_ids(reqs):
    assert [r.id for r in reqs] == list(range(len(reqs)))
    arr = [r.arrival_s for r in reqs]
    assert arr == sorted(arr)


def test_mooncake_conversation_counts_blocks_and_hit_ratio():
    reqs = load_mooncake(CONV, seed=0)
    assert len(reqs) == 12_031
    _sorted_ids(reqs)
    assert sum(len(r.segment_keys) for r in reqs) == 288_500
    for r in reqs:
        assert sum(r.segment_tokens) == r.prompt_tokens
        assert len(r.segment_keys) == math.ceil(r.prompt_tokens / 512)
        assert all(t == 512 for t in r.segment_tokens[:-1]) and 1 <= r.segment_tokens[-1] <= 512
        assert r.max_tokens == r.output_tokens >= 1
    assert prefix_hit_ratio(reqs) == pytest.approx(0.374, abs=0.002)  # SOURCES.md: 37.4% of tokens
    # every conversation request starts with the shared system-prompt block 0
    assert len({r.segment_keys[0] for r in reqs}) == 1


def test_mooncake_keys_follow_hash_ids():
    first = json.loads(CONV.read_text().splitlines()[0])
    parsed = parse_mooncake(CONV)
    assert parsed.keys[0] == chain_keys(first["hash_ids"])
    assert parsed.tokens[0][-1] == first["input_length"] - 512 * (len(first["hash_ids"]) - 1)


def test_mooncake_jitter_stays_in_bucket_and_is_deterministic():
    raw = parse_mooncake(CONV).timestamps_s
    assert is_bucketed(raw, 3.0)
    a = jitter_buckets(raw, 3.0, seed=1)
    assert np.array_equal(a, jitter_buckets(raw, 3.0, seed=1))
    assert not np.array_equal(a, jitter_buckets(raw, 3.0, seed=2))
    assert np.all(a >= raw) and np.all(a < raw + 3.0)
    # within a bucket, file order is kept
    same = raw == raw[0]
    assert np.all(np.diff(a[same]) >= 0)
    r1 = load_mooncake(CONV, seed=5)
    r2 = load_mooncake(CONV, seed=5)
    assert [r.arrival_s for r in r1] == [r.arrival_s for r in r2]
    assert len({r.arrival_s for r in r1}) == len(r1)  # ties spread out
    off = load_mooncake(CONV, seed=5, jitter=False)
    assert len({r.arrival_s for r in off}) == 1_180


def test_mooncake_synthetic_trace_not_jittered_by_default():
    reqs = load_mooncake(SYN)
    assert len(reqs) == 3_993
    raw = sorted(parse_mooncake(SYN).timestamps_s.tolist())
    assert [r.arrival_s for r in reqs] == raw
    assert prefix_hit_ratio(reqs) == pytest.approx(0.651, abs=0.002)


@pytest.mark.parametrize(
    ("path", "rows", "in_mean", "out_mean"), [(AZ_CONV, 19_366, 1155, 211), (AZ_CODE, 8_819, 2048, 27.9)]
)
def test_azure(path, rows, in_mean, out_mean):
    reqs = load_azure(path)
    assert len(reqs) == rows
    _sorted_ids(reqs)
    assert reqs[0].arrival_s == 0.0
    st = workload_stats(reqs)
    assert st["input_mean"] == pytest.approx(in_mean, rel=0.01)
    assert st["output_mean"] == pytest.approx(out_mean, rel=0.01)
    assert st["prefix_hit_ratio"] == 0.0
    assert len({r.segment_keys[0] for r in reqs}) == rows
    assert all(len(r.segment_keys) == 1 and r.segment_tokens == (r.prompt_tokens,) for r in reqs)


def test_azure_conv_span():
    reqs = load_azure(AZ_CONV)
    assert reqs[-1].arrival_s == pytest.approx(3501.72, abs=0.01)  # 18:15:46.68 -> 19:14:08.40


def test_load_workload_mooncake_slice_relative_path():
    spec = {
        "kind": "mooncake",
        "path": "mooncake_fast25/conversation_trace.jsonl",
        "start_s": 600,
        "duration_s": 300,
    }
    reqs = load_workload(spec, TRACES, seed=0)
    _sorted_ids(reqs)
    assert all(0 <= r.arrival_s < 300 for r in reqs)
    full = load_mooncake(CONV, seed=0)
    assert len(reqs) == sum(600 <= r.arrival_s < 900 for r in full)
