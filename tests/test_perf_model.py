"""The per-step latency model: calibration against public measurements, and the qualitative properties the
simulator relies on. Calibration points and tolerances live in bench/calibration_report.py (shared with the table
in docs/calibration.md)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from _bench import load_bench
from lodestar.engine.hardware import GPUS, MODELS, get_gpu
from lodestar.engine.perf_model import PerfModel
from lodestar.errors import UserError

PROFILES = Path(__file__).resolve().parents[2] / "shared" / "data" / "profiles"


def _load_report():
    return load_bench("calibration_report")


@pytest.fixture(scope="module")
def points():
    if not PROFILES.is_dir():
        pytest.skip(f"calibration data not found at {PROFILES}")
    return _load_report().all_points(PROFILES)


@pytest.mark.parametrize("source", ["vidur", "argonne", "iog", "splitwise"])
def test_calibration_points_within_tolerance(points, source):
    mine = [p for p in points if p.source == source]
    assert len([p for p in mine if p.role != "info"]) >= 4, f"too few asserted {source} points"
    bad = [f"{p.name}: measured {p.measured_ms:.2f} ms, model {p.model_ms:.2f} ms ({p.err:+.1%})" for p in mine
           if not p.ok]  # fmt: skip
    assert not bad, "outside tolerance:\n" + "\n".join(bad)


def test_required_calibration_points_present(points):
    names = {p.name for p in points}
    for n in (1, 64, 512, 2048, 4096, 8192):
        assert f"a100-80g llama-3-8b tp1 linear {n} tok" in names
    assert "a100-40g llama-3-8b TTFT 16x1024" in names and "h100 llama-3-8b TTFT 16x1024" in names
    assert "h100-pcie TPOT 1 req/s (batch~3)" in names and "h100-pcie TTFT 1 req/s" in names
    assert "a100-80g llama-2-70b tp8 prefill 2048" in names and "h100 llama-2-70b tp8 prefill 2048" in names


# ---- qualitative properties -----------------------------------------------------------------------------------


STEPS = [(1, 0.0, 1, 500), (64, 0.0, 64, 64 * 1000), (512, 512 * 256.0, 0, 0), (2048, 2048 * 1024.0, 16, 16 * 3000)]


@pytest.mark.parametrize("step", STEPS)
def test_faster_gpus_are_faster(step):
    t = {g: PerfModel.create(g, "llama-3-8b").step_time(*step) for g in ("h100", "a100-80g", "l4")}
    assert t["h100"] < t["a100-80g"] < t["l4"]


@pytest.mark.parametrize("gpu", sorted(GPUS))
@pytest.mark.parametrize("model", ["llama-3-8b", "llama-2-7b", "qwen-2.5-14b"])
def test_more_tokens_never_faster(gpu, model):
    perf = PerfModel.create(gpu, model)
    for dec in (0, 8, 64):
        prev = 0.0
        for extra in (0, 1, 2, 7, 16, 63, 128, 511, 1024, 4000, 8192):
            tokens = dec + extra
            t = perf.step_time(tokens, extra * (100 + extra / 2), dec, dec * 700)
            assert t >= prev > -1 and math.isfinite(t)
            prev = t


@pytest.mark.parametrize("gpu", ["h100", "a100-40g", "l40s", "a10g"])
def test_decode_step_grows_with_context_and_batch(gpu):
    perf = PerfModel.create(gpu, "llama-3-8b")
    by_ctx = [perf.decode_step_time(16, ctx) for ctx in (0, 128, 1024, 4096, 16384)]
    assert by_ctx == sorted(by_ctx) and by_ctx[-1] > by_ctx[0] * 1.2
    by_batch = [perf.decode_step_time(b, 1000) for b in (1, 2, 8, 32, 128, 256)]
    assert by_batch == sorted(by_batch)


def test_small_batch_decode_is_memory_bound():
    """Decode at batch 1..16 costs about one read of the weights: flat in batch, near the bandwidth roofline."""
    perf = PerfModel.create("a100-80g", "llama-3-8b")
    t1, t16 = perf.decode_step_time(1, 512), perf.decode_step_time(16, 512)
    roofline = perf.model.streamed_weight_bytes / (perf.gpu.mem_bw_gbs * 1e9)
    assert roofline < t1 < 1.6 * roofline
    assert t16 < 1.15 * t1


def test_linear_layers_smooth_roofline():
    """Compute-bound for many tokens (time ~ tokens), weight-read-bound for few; continuous in between."""
    perf = PerfModel.create("h100", "llama-3-8b")
    assert perf.linear_time(16384) / perf.linear_time(8192) == pytest.approx(2.0, rel=0.05)
    assert perf.linear_time(16) / perf.linear_time(1) < 1.1
    ts = [perf.linear_time(n) for n in range(1, 2049, 7)]
    assert all(b >= a for a, b in itertools.pairwise(ts))
    assert max(b / a for a, b in itertools.pairwise(ts)) < 1.05


def test_tensor_parallel_70b():
    one = PerfModel.create("h100", "llama-3-70b", 1)
    two = PerfModel.create("h100", "llama-3-70b", 2)
    four = PerfModel.create("h100", "llama-3-70b", 4)
    for step in STEPS:
        assert two.step_time(*step) < one.step_time(*step)
        assert four.step_time(*step) < two.step_time(*step)
    with pytest.raises(UserError, match="does not fit"):
        one.kv_capacity_tokens(0.9)
    assert two.kv_capacity_tokens(0.9) > 10_000
    assert four.kv_capacity_tokens(0.9) > 2 * two.kv_capacity_tokens(0.9)
    # tensor parallel over PCIe pays for its all-reduces: less gain than over NVLink
    pcie = PerfModel.create("l40s", "llama-3-8b", 2).step_time(4096, 0.0, 0, 0)
    pcie1 = PerfModel.create("l40s", "llama-3-8b", 1).step_time(4096, 0.0, 0, 0)
    nv = PerfModel.create("a100-80g", "llama-3-8b", 2).step_time(4096, 0.0, 0, 0)
    nv1 = PerfModel.create("a100-80g", "llama-3-8b", 1).step_time(4096, 0.0, 0, 0)
    assert pcie1 / pcie < nv1 / nv


def test_kv_capacity():
    h100 = PerfModel.create("h100", "llama-3-8b")
    cap = h100.kv_capacity_tokens(0.9)
    assert 350_000 < cap < 500_000  # ~53 GiB of 128 KiB tokens
    assert h100.kv_capacity_tokens(0.5) < cap
    assert PerfModel.create("h100", "llama-2-7b").kv_capacity_tokens() < cap / 3  # no GQA: 4x the bytes per token
    assert 10_000 < PerfModel.create("l4", "llama-3-8b").kv_capacity_tokens() < 60_000
    with pytest.raises(UserError):
        PerfModel.create("l4", "qwen-2.5-14b").kv_capacity_tokens()
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(UserError):
            h100.kv_capacity_tokens(bad)


def test_unknown_names_and_bad_tp_raise_user_error():
    for args in (("h200", "llama-3-8b", 1), ("h100", "gpt-5", 1), ("h100", "llama-3-8b", 3),
                 ("h100", "llama-3-8b", 0), ("h100", "llama-3-8b", 16), ("h100", "llama-3-8b", 2.0)):  # fmt: skip
        with pytest.raises(UserError):
            PerfModel.create(*args)


def test_create_is_cached_and_aliases_resolve():
    assert PerfModel.create("h100", "llama-3-8b") is PerfModel.create("h100", "llama-3-8b")
    assert PerfModel.create("a100", "llama-3-8b").gpu is get_gpu("a100-80g")
    assert PerfModel.create("a100", "llama-3-8b").step_time(100, 5000.0, 3, 900) == PerfModel.create(
        "a100-80g", "llama-3-8b"
    ).step_time(100, 5000.0, 3, 900)


def test_prefill_and_decode_helpers_agree_with_step_time():
    perf = PerfModel.create("a100-80g", "llama-3-8b")
    budget = 2048
    manual = sum(perf.step_time(budget, budget * (i * budget + budget / 2), 0, 0) for i in range(3))
    manual += perf.step_time(100, 100 * (3 * budget + 50), 0, 0)
    assert perf.prefill_time(3 * budget + 100, budget) == pytest.approx(manual)
    assert perf.prefill_time(1000, 8192, cached=3000) > perf.prefill_time(1000, 8192)
    assert perf.decode_step_time(8, 1000) == perf.step_time(8, 0.0, 8, 8000)
    assert 0.001 < perf.api_overhead_s < 0.01


def test_catalogue_shapes_match_parameter_counts():
    for m in MODELS.values():
        shape = m.n_layers * m.layer_params + 2 * m.head_params
        assert shape == pytest.approx(m.params_b * 1e9, rel=0.02), m.name
        assert m.n_heads * m.head_dim == m.d_model
    for g in GPUS.values():
        assert g.visible_mib * 2**20 <= g.memory_gb * 2**30 * 1.01
        assert g.bf16_tflops * 1e12 / (g.mem_bw_gbs * 1e9) > 50  # every catalogue GPU is compute-rich


def test_step_time_is_cheap():
    import time

    perf = PerfModel.create("h100", "llama-3-8b")
    t0 = time.perf_counter()
    for i in range(20_000):
        perf.step_time(300 + i % 7, 1e5, 40, 20_000)
    assert (time.perf_counter() - t0) / 20_000 < 20e-6
