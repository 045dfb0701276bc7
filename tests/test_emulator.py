"""Emulated engines: endpoints and vLLM response shapes, metrics under load, latency behaviour (prompt length,
queueing, prefix cache, modelled decode pace), faults, client disconnects, the shared text-block hashing.

Everything runs on 127.0.0.1 with ports picked by the OS; every server is stopped by the test that starts it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from lodestar.emulator import EmulatorConfig, EmulatorServer, FaultUpdate, engine_ops
from lodestar.emulator.metrics import TTFT_BUCKETS
from lodestar.emulator.tokens import filler_text
from lodestar.engine.engine import Engine, EngineConfig
from lodestar.engine.perf_model import PerfModel
from lodestar.engine.phases import DECODE, PREFILL, WAITING
from lodestar.request import Request
from lodestar.text_blocks import estimate_tokens, flatten_chat, full_block_keys, prompt_segments


def run(cfg: EmulatorConfig, body: Callable[[EmulatorServer, aiohttp.ClientSession], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        srv = EmulatorServer(cfg)
        await srv.start()
        try:
            async with aiohttp.ClientSession(base_url=srv.url) as s:
                return await asyncio.wait_for(body(srv, s), 30)
        finally:
            await srv.stop()

    return asyncio.run(main())


def cfg(**kw: Any) -> EmulatorConfig:
    base: dict[str, Any] = {"gpu": "a100-80g", "model": "llama-3-8b", "port": 0, "time_scale": 1.0}
    return EmulatorConfig(**{**base, **kw})


def text_of(tokens: int, tag: str = "") -> str:
    return (tag + "abcd" * tokens)[: 4 * tokens]


async def stream(s: aiohttp.ClientSession, body: dict[str, Any], chat: bool = False) -> dict[str, Any]:
    """POST a streaming request; returns the parsed chunks and client-side timings."""
    t0 = time.perf_counter()
    chunks: list[Any] = []
    times: list[float] = []
    async with s.post("/v1/chat/completions" if chat else "/v1/completions", json={**body, "stream": True}) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("text/event-stream")
        async for line in r.content:
            if line.startswith(b"data: "):
                data = line[6:].strip()
                chunks.append("[DONE]" if data == b"[DONE]" else json.loads(data))
                times.append(time.perf_counter() - t0)
    return {"chunks": chunks, "times": times}


async def metrics(s: aiohttp.ClientSession) -> dict[str, float]:
    async with s.get("/metrics") as r:
        text = await r.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, val = line.rpartition(" ")
            out[name] = float(val)
    return out


def metric(m: dict[str, float], name: str, **labels: str) -> float:
    want = {"model_name": "llama-3-8b", "engine": "0", **labels}
    for key, v in m.items():
        base, _, rest = key.partition("{")
        got = dict(kv.split("=", 1) for kv in rest.rstrip("}").split(",")) if rest else {}
        if base == name and {k: x.strip('"') for k, x in got.items()} == want:
            return v
    raise KeyError(name)


async def server_ttft(s: aiohttp.ClientSession, body: dict[str, Any]) -> float:
    """Server-side TTFT of one request (from the TTFT histogram's sum)."""
    before = metric(await metrics(s), "vllm:time_to_first_token_seconds_sum")
    async with s.post("/v1/completions", json=body) as r:
        assert r.status == 200, await r.text()
        await r.read()
    return metric(await metrics(s), "vllm:time_to_first_token_seconds_sum") - before


# ---- shared text blocks ----------------------------------------------------------------------------------------------
def test_text_blocks_approximation_and_shared_prefix():
    a = "x" * 200
    keys, toks = prompt_segments(a)
    assert sum(toks) == estimate_tokens(a) == 50 and toks == (16, 16, 16, 2)
    keys2, _ = prompt_segments(a[:128] + "y" * 72)
    assert keys2[:2] == keys[:2] and keys2[2] != keys[2]
    assert full_block_keys(a) == list(keys[:3])
    assert estimate_tokens("") == 1 and sum(prompt_segments("")[1]) == 1
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
    ]
    assert flatten_chat(msgs) == "system: be brief\nuser: hi\nassistant: "
    turn2 = [*msgs, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "more"}]
    assert flatten_chat(turn2).startswith(flatten_chat(msgs) + "ok")


# ---- endpoints -------------------------------------------------------------------------------------------------------
def test_endpoints_and_vllm_shapes():
    async def body(srv: EmulatorServer, s: aiohttp.ClientSession) -> None:
        async with s.get("/health") as r:
            assert r.status == 200
        async with s.get("/v1/models") as r:
            models = await r.json()
        assert models["object"] == "list" and models["data"][0]["id"] == "llama-3-8b"
        # streaming completion with a usage block
        res = await stream(s, {"model": "llama-3-8b", "prompt": text_of(100), "max_tokens": 7,
                               "stream_options": {"include_usage": True}})  # fmt: skip
        ch = res["chunks"]
        assert ch[-1] == "[DONE]" and ch[-2]["choices"] == []
        assert ch[-2]["usage"] == {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107,
                                   "prompt_tokens_details": {"cached_tokens": 0}}  # fmt: skip
        toks = ch[:-2]
        assert len(toks) == 7 and all(c["object"] == "text_completion" for c in toks)
        assert "".join(c["choices"][0]["text"] for c in toks) == filler_text(7)
        assert [c["choices"][0]["finish_reason"] for c in toks] == [None] * 6 + ["length"]
        # streaming chat: a role delta first, no usage block unless asked
        res = await stream(s, {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}, chat=True)
        ch = res["chunks"]
        assert ch[0]["object"] == "chat.completion.chunk" and ch[0]["choices"][0]["delta"]["role"] == "assistant"
        assert [c["choices"][0]["delta"]["content"] for c in ch[1:-1]] == [filler_text(3)[i : i + 4] for i in (0, 4, 8)]
        assert ch[-2]["choices"][0]["finish_reason"] == "length" and ch[-1] == "[DONE]"
        # non-streaming chat; no max_tokens: the default length and an emulated end of sequence
        async with s.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}) as r:
            full = await r.json()
        assert full["object"] == "chat.completion" and full["choices"][0]["finish_reason"] == "stop"
        assert full["usage"]["completion_tokens"] == 5 == len(full["choices"][0]["message"]["content"]) // 4
        # errors in OpenAI's shape
        async with s.post("/v1/completions", json={"model": "other", "prompt": "x"}) as r:
            assert r.status == 404 and (await r.json())["error"]["type"] == "NotFoundError"
        async with s.post("/v1/completions", data=b"{not json") as r:
            assert r.status == 400 and "message" in (await r.json())["error"]
        async with s.post("/v1/completions", json={"prompt": "x" * 4000, "max_tokens": 10}) as r:
            assert r.status == 400 and "maximum context length is 512" in (await r.json())["error"]["message"]
        async with s.post("/v1/completions", json={"prompt": "x", "max_tokens": 0}) as r:
            assert r.status == 400
        async with s.post("/v1/completions", data=b'{"prompt": "lone \\ud800 surrogate", "max_tokens": 2}') as r:
            assert r.status == 200, await r.text()

    run(cfg(default_max_tokens=5, engine=EngineConfig(max_model_len=512)), body)


def test_metrics_under_load():
    n, out = 24, 40

    async def body(srv: EmulatorServer, s: aiohttp.ClientSession) -> None:
        reqs = [asyncio.create_task(stream(s, {"prompt": text_of(600, f"r{i} "), "max_tokens": out}))
                for i in range(n)]  # fmt: skip
        for _ in range(40):  # until every request has reached the engine (none can finish this early)
            await asyncio.sleep(0.01)
            mid = await metrics(s)
            if metric(mid, "vllm:num_requests_running") + metric(mid, "vllm:num_requests_waiting") == n:
                break
        assert metric(mid, "vllm:num_requests_running") + metric(mid, "vllm:num_requests_waiting") == n
        for _ in range(100):  # until tokens flow
            if metric(mid, "vllm:generation_tokens_total") > 0:
                break
            await asyncio.sleep(0.01)
            mid = await metrics(s)
        assert metric(mid, "vllm:num_requests_running") > 0 and 0 < metric(mid, "vllm:kv_cache_usage_perc") < 1
        assert metric(mid, "vllm:generation_tokens_total") > 0
        await asyncio.gather(*reqs)
        end = await metrics(s)
        assert metric(end, "vllm:num_requests_running") == 0 == metric(end, "vllm:num_requests_waiting")
        assert metric(end, "vllm:request_success_total", finished_reason="length") == n
        assert metric(end, "vllm:generation_tokens_total") == n * out
        assert metric(end, "vllm:prompt_tokens_total") == n * 600
        assert metric(end, "vllm:prefix_cache_queries_total") == n * 600
        assert metric(end, "vllm:time_to_first_token_seconds_count") == n
        assert metric(end, "vllm:e2e_request_latency_seconds_count") == n
        les = [k.split('le="')[1].split('"')[0] for k in end if k.startswith("vllm:time_to_first_token_seconds_bucket")]
        assert [float(x) for x in les[:-1]] == list(TTFT_BUCKETS) and les[-1] == "+Inf"
        assert metric(end, "vllm:time_to_first_token_seconds_bucket", le="+Inf") == n
        assert end["process_cpu_seconds_total"] > 0

    run(cfg(), body)


# ---- latency behaviour -----------------------------------------------------------------------------------------------
def test_ttft_grows_with_prompt_length_and_queueing():
    async def body(srv: EmulatorServer, s: aiohttp.ClientSession) -> None:
        alone = [await server_ttft(s, {"prompt": text_of(n, f"{n} "), "max_tokens": 2}) for n in (32, 1024, 6000)]
        assert alone[0] < alone[1] < alone[2] and alone[2] > 5 * alone[0]
        # a burst of 12 long prompts: later ones queue behind earlier prefills
        burst = [
            asyncio.create_task(stream(s, {"prompt": text_of(3000, f"b{i} "), "max_tokens": 2})) for i in range(12)
        ]
        ttfts = sorted(r["times"][0] for r in await asyncio.gather(*burst))
        assert ttfts[-1] > 4 * ttfts[0] and sum(ttfts) / len(ttfts) > 2 * alone[2] * 3000 / 6000

    run(cfg(), body)


def test_repeated_prompt_hits_prefix_cache():
    async def body(srv: EmulatorServer, s: aiohttp.ClientSession) -> None:
        p = {"prompt": text_of(4000, "shared "), "max_tokens": 2, "stream": True,
             "stream_options": {"include_usage": True}}  # fmt: skip
        first = await stream(s, p)
        second = await stream(s, p)
        assert first["chunks"][-2]["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        assert second["chunks"][-2]["usage"]["prompt_tokens_details"]["cached_tokens"] == 3984  # whole blocks < 4000
        assert second["times"][0] < 0.5 * first["times"][0]
        m = await metrics(s)
        assert metric(m, "vllm:prefix_cache_hits_total") == 3984

    run(cfg(), body)


def test_answer_is_cached_for_the_next_turn():
    async def body(srv: EmulatorServer, s: aiohttp.ClientSession) -> None:
        turn1 = [{"role": "user", "content": "x" * 1000}]
        async with s.post("/v1/chat/completions", json={"messages": turn1, "max_tokens": 64}) as r:
            answer = (await r.json())["choices"][0]["message"]["content"]
        turn2 = [*turn1, {"role": "assistant", "content": answer}, {"role": "user", "content": "and then?"}]
        async with s.post("/v1/chat/completions", json={"messages": turn2, "max_tokens": 2}) as r:
            cached = (await r.json())["usage"]["prompt_tokens_details"]["cached_tokens"]
        # turn 2's text starts with turn 1's prompt and its answer: all their whole 64-character blocks are cached
        shared = len(flatten_chat(turn1)) + len(answer)
        assert len(answer) == 256 and cached == (shared // 64) * 16

    run(cfg(), body)


def test_tokens_stream_at_the_modelled_pace():
    """One request's server-side TTFT and E2E equal the engine model's, stepped directly (decode runs included)."""
    out = 60
    perf = PerfModel.create("a100-80g", "llama-3-8b")
    eng = Engine("ref", perf, EngineConfig())
    keys, toks = prompt_segments(text_of(800))
    eng.add(Request(0, 0.0, sum(toks), out, keys, toks))
    t, end, ttft = 0.0, eng.start_step(0.0), 0.0
    while end is not None:
        firsts, _ = eng.finish_step(end)
        ttft = end if firsts else ttft
        t, end = end, eng.start_step(end)
    e2e_model = t
    assert 0 < ttft < e2e_model

    async def body(srv: EmulatorServer, s: aiohttp.ClientSession) -> None:
        res = await stream(s, {"prompt": text_of(800), "max_tokens": out})
        m = await metrics(s)
        e2e = metric(m, "vllm:e2e_request_latency_seconds_sum")
        assert e2e == pytest.approx(2 * e2e_model, rel=1e-6)  # time scale 2: every duration doubled
        assert metric(m, "vllm:time_to_first_token_seconds_sum") == pytest.approx(2 * ttft, rel=1e-6)
        gaps = [b - a for a, b in zip(res["times"][1:-2], res["times"][2:-1], strict=True)]
        assert len(gaps) == out - 2 and sorted(gaps)[len(gaps) // 2] == pytest.approx(
            2 * (e2e_model - ttft) / (out - 1), rel=0.3
        )

    run(cfg(time_scale=2.0), body)


# ---- faults and disconnects ------------------------------------------------------------------------------------------
def test_fault_injection():
    async def body(srv: EmulatorServer, s: aiohttp.ClientSession) -> None:
        p = {"prompt": text_of(2000, "f "), "max_tokens": 2}
        base = await server_ttft(s, {**p, "prompt": text_of(2000, "a ")})
        async with s.post("/admin/faults", json={"error_rate": 1.0}) as r:
            assert (await r.json())["error_rate"] == 1.0
        async with s.post("/v1/completions", json=p) as r:
            assert r.status == 500 and (await r.json())["error"]["code"] == 500
        async with s.post("/admin/faults", json={"recover": True}) as r:
            assert r.status == 200
        async with s.post("/admin/faults", json={"slowdown": 3.0}) as r:
            assert (await r.json())["slowdown"] == 3.0
        slow = await server_ttft(s, {**p, "prompt": text_of(2000, "b ")})
        assert slow == pytest.approx(3 * base, rel=0.05)
        await srv.apply(FaultUpdate(recover=True))
        async with s.post("/admin/faults", json={"stall_s": 0.4}) as r:
            assert (await r.json())["stalled_for_s"] > 0.3
        stalled = await server_ttft(s, {**p, "prompt": text_of(2000, "c ")})
        assert stalled > 0.35
        async with s.post("/admin/faults", json={"bogus": 1}) as r:
            assert r.status == 400 and "bogus" in (await r.json())["error"]["message"]
        async with s.post("/admin/faults", json={"crash": "close", "restart_after_s": 0.3}) as r:
            assert (await r.json())["crashed"] is True
        await asyncio.sleep(0.1)
        with pytest.raises(aiohttp.ClientConnectionError):
            async with s.get("/health") as r:
                pass
        await asyncio.sleep(0.4)
        async with s.get("/health") as r:
            assert r.status == 200
        m = await metrics(s)  # a restarted engine: counters from zero
        assert metric(m, "vllm:request_success_total", finished_reason="length") == 0

    run(cfg(), body)


def test_client_disconnect_aborts_and_frees_kv():
    async def body(srv: EmulatorServer, s: aiohttp.ClientSession) -> None:
        async with s.post("/v1/completions", json={"prompt": text_of(3000), "max_tokens": 5000, "stream": True}) as r:
            n = 0
            async for line in r.content:
                n += line.startswith(b"data: {")
                if n == 3:
                    break
            r.close()
        with pytest.raises(asyncio.TimeoutError):  # a non-streaming client that gives up
            await asyncio.wait_for(s.post("/v1/completions", json={"prompt": text_of(900), "max_tokens": 5000}), 0.3)
        await asyncio.sleep(0.2)
        m = await metrics(s)
        assert metric(m, "vllm:num_requests_running") == 0
        assert metric(m, "vllm:kv_cache_usage_perc") == 0.0  # its prompt blocks stay cached but evictable
        assert metric(m, "vllm:request_success_total", finished_reason="abort") == 2
        assert srv.driver.engine.kv.free_blocks == srv.driver.engine.kv.num_blocks

    run(cfg(), body)


def test_abort_in_every_phase_keeps_kv_accounting():
    eng = Engine("e", PerfModel.create("l4", "llama-3-8b"), EngineConfig(max_num_batched_tokens=512, max_num_seqs=4))
    seqs = []
    for i in range(8):
        keys, toks = prompt_segments(text_of(700, f"{i} "))
        seq = eng.add(Request(i, 0.0, sum(toks), 50, keys, toks))
        assert seq is not None
        seqs.append(seq)
    t = 0.0
    for _ in range(20):  # until some decode, some prefill and some wait
        end = eng.start_step(t)
        assert end is not None
        eng.finish_step(end)
        t = end
        if len({s.phase for s in seqs}) == 3:
            break
    assert {s.phase for s in seqs} == {WAITING, PREFILL, DECODE}
    for s in seqs:
        engine_ops.abort(eng, s)
    assert not eng.running and not eng.waiting and eng.n_dec == 0
    assert eng.kv.free_blocks == eng.kv.num_blocks and eng.start_step(t) is None


def test_emulate_command_and_crash_exit():
    p = subprocess.Popen([sys.executable, "-m", "lodestar.emulator", "emulate", "--port", "0", "--gpu", "l4"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        url = line.split("listening on ")[1].split()[0]

        async def crash() -> None:
            async with aiohttp.ClientSession() as s:
                async with s.get(url + "/health") as r:
                    assert r.status == 200
                async with s.post(url + "/admin/faults", json={"crash": "exit"}) as r:
                    assert r.status == 200

        asyncio.run(crash())
        assert p.wait(timeout=10) == 1
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    bad = subprocess.run([sys.executable, "-m", "lodestar.emulator", "emulate", "--gpu", "nope"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown GPU") and bad.stderr.count("\n") == 1


def test_fleet_spec_and_start_stop():
    from lodestar.emulator.fleet import labels, parse_engines, start_fleet, stop_fleet
    from lodestar.errors import UserError

    cfgs = parse_engines("h100:2, l4/llama-2-7b", EmulatorConfig(time_scale=4.0))
    assert [(c.gpu, c.model, c.engine_id, c.port, c.time_scale) for c in cfgs] == [
        ("h100", "llama-3-8b", "e0", 0, 4.0), ("h100", "llama-3-8b", "e1", 0, 4.0), ("l4", "llama-2-7b", "e2", 0, 4.0)
    ]  # fmt: skip
    for bad in ("h100:x", "nope:1", "h100:0", " , "):
        with pytest.raises(UserError):
            parse_engines(bad)

    async def main() -> None:
        servers = await start_fleet(parse_engines("l4:2", cfg()))
        try:
            assert len({s.port for s in servers}) == 2 and labels(servers[0])["gpu"] == "l4"
            async with aiohttp.ClientSession() as s:
                for srv in servers:
                    async with s.get(srv.url + "/health") as r:
                        assert r.status == 200
        finally:
            await stop_fleet(servers)

    asyncio.run(main())
