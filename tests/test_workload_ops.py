"""Workload operations, capacity estimate, registry, and bad-input errors (small temp files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lodestar.engine.perf_model import PerfModel
from lodestar.errors import UserError
from lodestar.request import Request
from lodestar.workload import (
    WorkloadKind,
    estimate_capacity_rps,
    generate_synthetic,
    instance_cost,
    load_azure,
    load_mooncake,
    load_workload,
    offered_rate_rps,
    register_workload_kind,
    scale_rate,
    slice_requests,
    workload_kinds,
    workload_mix,
)
from lodestar.workload.spec import _KINDS

SETTINGS = {"max_num_batched_tokens": 8192, "max_num_seqs": 256}


def _reqs(times):
    return [Request(i, t, 100, 10, (i + 1,), (100,), max_tokens=10) for i, t in enumerate(times)]


def test_slice_rebases_and_renumbers():
    out = slice_requests(_reqs([0.0, 1.0, 2.0, 3.0, 4.0]), start_s=1.0, duration_s=2.0)
    assert [r.arrival_s for r in out] == [0.0, 1.0]
    assert [r.id for r in out] == [0, 1]
    assert [r.segment_keys for r in out] == [(2,), (3,)]
    assert len(slice_requests(_reqs([0.0, 1.0, 2.0]), start_s=1.0)) == 2


def test_rate_scale_divides_times():
    src = _reqs([0.0, 2.0, 4.0])
    out = scale_rate(src, 2.0)
    assert [r.arrival_s for r in out] == [0.0, 1.0, 2.0]
    assert [r.arrival_s for r in src] == [0.0, 2.0, 4.0]  # input untouched
    assert offered_rate_rps(out) == pytest.approx(2 * offered_rate_rps(src))
    with pytest.raises(UserError, match="rate_scale"):
        scale_rate(src, 0.0)


def test_load_workload_rate_scale_and_load():
    base = load_workload({"synthetic": {"rate_rps": 2.0}, "duration_s": 200}, Path("."), seed=0)
    fast = load_workload({"synthetic": {"rate_rps": 2.0}, "duration_s": 200, "rate_scale": 3}, Path("."), seed=0)
    assert len(fast) == len(base)
    assert fast[-1].arrival_s == pytest.approx(base[-1].arrival_s / 3)
    inst = [(PerfModel.create("h100", "llama-3-8b"), SETTINGS)] * 2
    loaded = load_workload(
        {"synthetic": {"rate_rps": 2.0}, "duration_s": 200, "load": 0.5}, Path("."), 0, instances=inst
    )
    # synthetic workloads are regenerated at the target rate over the same horizon
    assert loaded[-1].arrival_s < 200
    assert len(loaded) / 200 == pytest.approx(0.5 * estimate_capacity_rps(loaded, inst), rel=0.2)
    via_callback = load_workload(
        {"synthetic": {"rate_rps": 2.0}, "duration_s": 200, "load": 1.0},
        Path("."),
        0,
        capacity_rps=lambda r: 4.0,
    )
    assert len(via_callback) / 200 == pytest.approx(4.0, rel=0.2)
    azure_like = _reqs([0.0, 1.0, 2.0, 3.0, 4.0])
    del azure_like
    with pytest.raises(UserError, match=r"workload\.load"):
        load_workload({"load": 0.5}, Path("."), 0)


def test_capacity_scales_with_cluster_and_hits():
    reqs = generate_synthetic(seed=0, horizon_s=120)
    h100 = (PerfModel.create("h100", "llama-3-8b"), SETTINGS)
    l4 = (PerfModel.create("l4", "llama-3-8b"), SETTINGS)
    one = estimate_capacity_rps(reqs, [h100])
    assert estimate_capacity_rps(reqs, [h100, h100], hit_ratio=0.5) == pytest.approx(
        2 * estimate_capacity_rps(reqs, [h100], hit_ratio=0.5)
    )
    # spread over more instances, random routing finds less reuse: capacity grows less than linearly
    assert one < estimate_capacity_rps(reqs, [h100, h100]) <= 2 * one
    assert 0 < estimate_capacity_rps(reqs, [l4]) < one
    assert estimate_capacity_rps(reqs, [h100], hit_ratio=0.0) < one
    mix = workload_mix(reqs)
    cost = instance_cost(h100[0], SETTINGS, mix)
    assert cost.prefill_s > 0 and cost.decode_s > 0 and 1 <= cost.decode_batch <= 256
    with pytest.raises(UserError):
        estimate_capacity_rps([], [h100])


def test_registry_custom_kind():
    def build(spec, opts, path, seed):
        return _reqs([0.0, 0.5])

    kind = register_workload_kind(WorkloadKind("test-pair", "two requests", build))
    try:
        assert workload_kinds()["test-pair"] is kind
        assert len(load_workload({"kind": "test-pair"}, Path("."), 0)) == 2
    finally:
        _KINDS.pop("test-pair")
    with pytest.raises(ValueError):
        register_workload_kind(WorkloadKind("Bad_Name", "x", build))
    assert set(workload_kinds()) == {"azure", "mooncake", "synthetic"}


def test_max_tokens_options(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"timestamp": 0, "input_length": 600, "output_length": 300, "hash_ids": [1, 2]}\n')
    capped = load_workload({"kind": "mooncake", "path": "t.jsonl", "max_tokens": 100}, tmp_path, 0)
    assert (capped[0].max_tokens, capped[0].output_tokens) == (100, 100)
    none = load_workload({"kind": "mooncake", "path": "t.jsonl", "max_tokens": None}, tmp_path, 0)
    assert (none[0].max_tokens, none[0].output_tokens) == (None, 300)
    assert capped[0].segment_tokens == (512, 88)


def _line(**kw):
    row = {"timestamp": 0, "input_length": 600, "output_length": 10, "hash_ids": [1, 2]}
    row.update(kw)
    return json.dumps({k: v for k, v in row.items() if v != "DROP"})


@pytest.mark.parametrize(
    ("second_line", "needle"),
    [
        ('{"timestamp": 0, "input_length": 6', "not valid JSON"),
        (_line(hash_ids="DROP"), "missing field 'hash_ids'"),
        (_line(input_length="600"), "'input_length' must be an integer"),
        (_line(output_length=-3), "'output_length' must be an integer >= 0"),
        (_line(timestamp=-1), "'timestamp' must be a non-negative"),
        (_line(hash_ids=[1, 2, 3]), "needs ceil(600/512) = 2"),
        (_line(hash_ids=[1, "x"]), "'hash_ids' must be a list of integers"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_mooncake_bad_input_names_file_and_line(tmp_path, second_line, needle):
    p = tmp_path / "bad.jsonl"
    p.write_text(_line() + "\n" + second_line + "\n")
    with pytest.raises(UserError) as e:
        load_mooncake(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:2: ") and needle in msg and "\n" not in msg


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("TIMESTAMP,Context,GeneratedTokens\n", ":1: CSV header lacks column(s) ContextTokens"),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00.0,10,-1\n",
            ":2: GeneratedTokens must be >= 0",
        ),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00.0,ten,1\n",
            ":2: ContextTokens must be an integer",
        ),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,10,1\n", ":2: TIMESTAMP must look like"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00.0,10\n", ":2: expected 3 columns"),
        ("", "empty file"),
    ],
)
def test_azure_bad_input(tmp_path, text, needle):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(UserError) as e:
        load_azure(p)
    assert str(e.value).startswith(str(p)) and needle in str(e.value)


def test_azure_zero_lengths_become_one(tmp_path):
    p = tmp_path / "z.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 23:59:59.5,0,0\n2023-11-17 00:00:00.5,5,7\n")
    reqs = load_azure(p)
    assert [(r.prompt_tokens, r.output_tokens) for r in reqs] == [(1, 1), (5, 7)]
    assert reqs[1].arrival_s == pytest.approx(1.0)  # across midnight


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"kind": "mooncake", "path": "missing.jsonl"}, "missing.jsonl: workload trace not found"),
        ({"kind": "mooncake"}, "workload.path: required"),
        ({"kind": "sharegpt"}, "workload.kind: unknown kind 'sharegpt'"),
        ({"kind": "synthetic", "laod": 0.5}, "workload.laod: unknown key"),
        ({"rate_scale": "fast"}, "workload.rate_scale"),
        ({"duration_s": -5}, "workload.duration_s"),
        ({"max_tokens": 0}, "workload.max_tokens"),
        ({"kind": "mooncake", "path": "x.jsonl", "mooncake": {"bucket_s": 0}}, "workload.mooncake.bucket_s"),
        (
            {"kind": "mooncake", "path": "one.jsonl", "start_s": 10},
            "workload: no requests between start_s=10 s",
        ),
    ],
)
def test_spec_errors(tmp_path, spec, needle):
    (tmp_path / "one.jsonl").write_text(_line() + "\n")
    with pytest.raises(UserError) as e:
        load_workload(spec, tmp_path, 0)
    assert needle in str(e.value) and "\n" not in str(e.value)
