"""Engine semantics: batching, chunked prefill, prefix caching, eviction, preemption, relative GPU speed."""

from __future__ import annotations

from lodestar.engine.engine import Engine, EngineConfig
from lodestar.engine.kv_cache import KVCache
from lodestar.engine.perf_model import PerfModel
from lodestar.prefix import chain_keys
from lodestar.request import Request


class RecordingPerf:
    """Wraps a PerfModel and records the shape of every step."""

    def __init__(self, gpu: str = "a100-80g") -> None:
        self.inner = PerfModel.create(gpu, "llama-3-8b")
        self.steps: list[tuple[int, float, int, int]] = []

    def kv_capacity_tokens(self, util: float = 0.9) -> int:
        return self.inner.kv_capacity_tokens(util)

    def step_time(self, tokens: int, attn: float, dec: int, ctx: int) -> float:
        self.steps.append((tokens, attn, dec, ctx))
        return self.inner.step_time(tokens, attn, dec, ctx)


def req(i: int, ids: list[int], toks: list[int], out: int, t: float = 0.0) -> Request:
    return Request(i, t, sum(toks), out, chain_keys(ids), tuple(toks))


def run(engine: Engine, now: float = 0.0, until: float = float("inf")) -> tuple[dict[int, float], dict[int, float]]:
    """Step the engine until idle (or `until`); returns first-token and completion times by request id."""
    firsts: dict[int, float] = {}
    done: dict[int, float] = {}
    while engine.has_work() and now < until:
        end = engine.start_step(now)
        assert end is not None, "engine stuck with work"
        f, d = engine.finish_step(end)
        now = end
        firsts.update({s.req.id: now for s in f})
        done.update({s.req.id: now for s in d})
    return firsts, done


def small_engine(blocks: int, cfg: EngineConfig | None = None, gpu: str = "a100-80g") -> Engine:
    e = Engine("i0", PerfModel.create(gpu, "llama-3-8b"), cfg or EngineConfig())
    e.kv = KVCache(blocks, e.cfg.block_size)
    e.max_model_len = blocks * e.cfg.block_size
    return e


def test_single_request_generates_exact_output_and_frees_kv():
    e = Engine("i0", PerfModel.create("a100-80g", "llama-3-8b"))
    r = req(0, [1, 2], [512, 100], out=37)
    seq = e.add(r)
    firsts, done = run(e)
    assert 0 in firsts and 0 in done and done[0] > firsts[0]
    assert seq is not None and seq.generated == 37
    assert e.counters.generation_tokens == 37
    assert e.kv.usage() == 0.0  # everything freed (cached blocks are free)
    assert e.kv.free_blocks == e.kv.num_blocks


def test_chunked_prefill_respects_budget():
    perf = RecordingPerf()
    cfg = EngineConfig(max_num_batched_tokens=2048)
    e = Engine("i0", perf, cfg)  # type: ignore[arg-type]
    for i in range(5):
        e.add(req(i, [100 + i], [5000], out=20))
    run(e)
    assert perf.steps, "no steps recorded"
    assert max(s[0] for s in perf.steps) <= 2048
    # a 5000-token prompt needs at least three steps under a 2048 budget: prefill is chunked
    assert sum(1 for s in perf.steps if s[0] == 2048) >= 10


def test_prefix_hit_cuts_prefill_work_and_ttft():
    e = Engine("i0", PerfModel.create("a100-80g", "llama-3-8b"))
    e.add(req(0, [1, 2, 3, 4], [512, 512, 512, 40], out=2))
    f0, _ = run(e)
    t0 = max(f0.values())
    e.add(req(1, [1, 2, 3, 5], [512, 512, 512, 40], out=2, t=t0))
    f1, _ = run(e, now=t0)
    ttft_cold = f0[0]
    ttft_warm = f1[1] - t0
    assert e.counters.prefix_hits == 1536
    assert ttft_warm < 0.5 * ttft_cold


def test_answer_cached_for_next_turn():
    e = Engine("i0", PerfModel.create("a100-80g", "llama-3-8b"))
    keys = chain_keys([1, 2])
    out_key = 999
    r0 = Request(0, 0.0, 1024, 64, keys, (512, 512), output_key=out_key)
    e.add(r0)
    run(e)
    nxt_keys = (*keys, out_key, 12345)
    r1 = Request(1, 10.0, 1024 + 64 + 100, 5, nxt_keys, (512, 512, 64, 100))
    e.add(r1)
    hits0 = e.counters.prefix_hits
    run(e, now=10.0)
    assert e.counters.prefix_hits - hits0 == 1024 + 64


def test_ttft_grows_with_queueing():
    e = Engine("i0", PerfModel.create("a100-80g", "llama-3-8b"))
    for i in range(40):
        e.add(req(i, [1000 + i], [2000], out=50))
    firsts, _ = run(e)
    ttfts = [firsts[i] for i in range(40)]
    assert ttfts == sorted(ttfts)  # FCFS
    assert ttfts[-1] > 5 * ttfts[0]


def test_gpu_ordering_h100_a100_l4():
    times = {}
    for gpu in ["h100", "a100-80g", "l4"]:
        e = Engine("i0", PerfModel.create(gpu, "llama-3-8b"))
        for i in range(8):
            e.add(req(i, [i + 1], [1500], out=100))
        _, done = run(e)
        times[gpu] = max(done.values())
    assert times["h100"] < times["a100-80g"] < times["l4"]


def test_eviction_under_pressure_keeps_recent_prefixes():
    e = small_engine(blocks=200)
    # each prompt is 1024 tokens = 64 blocks; after 5 distinct prompts the first ones must be evicted
    for i in range(5):
        e.add(req(i, [10 * i + 1, 10 * i + 2], [512, 512], out=2, t=float(i)))
        run(e, now=float(i))
    assert 0 < len(e.kv.entries) < 10
    assert e.kv.entries.get(chain_keys([41])[0]) is not None  # the most recent prompt survives
    assert e.kv.entries.get(chain_keys([1])[0]) is None  # the oldest one was evicted
    hits = e.counters.prefix_hits
    e.add(req(9, [41, 42], [512, 512], out=2, t=10.0))
    run(e, now=10.0)
    assert e.counters.prefix_hits - hits == 1008  # all but the last block (vLLM recomputes the last token)


def test_preemption_when_kv_exhausted_and_everything_completes():
    e = small_engine(blocks=120)
    for i in range(6):
        e.add(req(i, [500 + i], [400], out=300))
    _, done = run(e)
    assert e.counters.preemptions > 0
    assert len(done) == 6
    assert e.counters.generation_tokens >= 6 * 300
    assert e.kv.free_blocks == e.kv.num_blocks


def test_max_num_seqs_caps_the_batch():
    perf = RecordingPerf()
    e = Engine("i0", perf, EngineConfig(max_num_seqs=4))  # type: ignore[arg-type]
    for i in range(10):
        e.add(req(i, [i + 7], [100], out=30))
    run(e)
    assert max(s[2] for s in perf.steps) <= 4


def test_too_long_request_is_rejected():
    e = small_engine(blocks=10)
    assert e.add(req(0, [1], [200], out=10)) is None
    assert e.add(req(1, [2], [100], out=10)) is not None
