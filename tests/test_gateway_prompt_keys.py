"""The gateway's prompt hashing agrees with the emulated engine's: for the same request body, `parse_request` gives
the segment keys and token counts that the emulator computes for its prefix cache (`text_blocks`), in process and
end to end through a gateway in front of an emulated engine; a second chat turn shares the first turn's blocks."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lodestar.emulator import EmulatorConfig, EmulatorServer
from lodestar.emulator.openai_api import Parsed
from lodestar.emulator.tokens import filler_text
from lodestar.gateway.app import Gateway
from lodestar.gateway.config import build_config
from lodestar.gateway.parse import ParsedRequest, TokenEstimator, parse_request
from lodestar.policies.base import build_policy
from lodestar.prefix import chain_key
from lodestar.text_blocks import BLOCK_CHARS, flatten_chat, full_block_keys, prompt_segments

MODEL = "llama-3-8b"


def emulator_segments(body: dict[str, Any], chat: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """What the emulator's handler computes for `body` (`openai_api.handle_completion`: Parsed -> prompt_segments)."""
    return prompt_segments(Parsed(json.loads(json.dumps(body)), chat, MODEL).text)


def gateway(body: dict[str, Any], chat: bool, **kw: Any) -> ParsedRequest:
    return parse_request(json.dumps(body).encode(), "chat" if chat else "completions", **kw)


def lorem(n: int, seed: str = "") -> str:
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards"]
    out = seed
    i = 0
    while len(out) < n:
        out += words[i % len(words)] + " "
        i += 1
    return out[:n]


SYSTEM = {"role": "system", "content": "You are a helpful assistant. Answer briefly."}
TURN1 = [SYSTEM, {"role": "user", "content": lorem(300)}]
ANSWER = filler_text(40)  # what an emulated engine answers (4 characters per token)
TURN2 = [*TURN1, {"role": "assistant", "content": ANSWER}, {"role": "user", "content": "and then?"}]
MULTIPART = [
    SYSTEM,
    {"role": "user", "content": [{"type": "text", "text": lorem(100)}, {"type": "text", "text": lorem(90, "x")}]},
    {"role": "assistant", "content": None, "tool_calls": []},
    {"role": "tool", "content": [{"type": "text", "text": "42"}]},
]
CASES = [
    ({"prompt": "Hello"}, False),
    ({"prompt": ""}, False),
    ({"prompt": "x" * BLOCK_CHARS}, False),
    ({"prompt": lorem(1000)}, False),
    ({"prompt": [lorem(130)]}, False),
    ({"prompt": "caf\u00e9 \u20ac \U0001f600 " * 20 + "\ud800 lone surrogate"}, False),
    ({"messages": [{"role": "user", "content": "hi"}]}, True),
    ({"messages": TURN1}, True),
    ({"messages": TURN2}, True),
    ({"messages": MULTIPART}, True),
    ({"messages": [{"role": "user", "content": lorem(5000)}]}, True),
]


@pytest.mark.parametrize(("body", "chat"), CASES)
def test_gateway_keys_equal_the_emulators(body, chat):
    keys, toks = emulator_segments({"model": MODEL, **body}, chat)
    for est in (None, TokenEstimator()):
        p = gateway({"model": MODEL, **body}, chat, estimator=est)
        assert p.segment_keys == keys and p.segment_tokens == toks and p.prompt_tokens == sum(toks)
    if chat:
        assert p.prompt_chars == len(flatten_chat(body["messages"]))


def test_estimator_behind_an_emulator_changes_no_count():
    """The emulator reports `ceil(chars / 4)` prompt tokens: the learned ratio stays exactly 4, counts unchanged."""
    est = TokenEstimator()
    for i, (body, chat) in enumerate(CASES * 5):
        p = gateway({"model": MODEL, **body}, chat, estimator=est)
        if i < len(CASES):
            assert (p.segment_keys, p.segment_tokens) == emulator_segments(body, chat)
        est.observe(MODEL, p.prompt_chars, sum(emulator_segments(body, chat)[1]))
    assert est.get(MODEL) == 4.0
    for body, chat in CASES:
        p = gateway({"model": MODEL, **body}, chat, estimator=est)
        assert (p.segment_keys, p.segment_tokens) == emulator_segments(body, chat)


def test_estimator_rescales_counts_but_never_keys():
    est = TokenEstimator()
    for _ in range(100):
        est.observe(MODEL, 6400, 2000)  # a tokenizer with 3.2 characters per token
    body = {"model": MODEL, "prompt": lorem(1000)}
    p = gateway(body, False, estimator=est)
    keys, _ = emulator_segments(body, False)
    assert p.segment_keys == keys
    assert p.segment_tokens[:-1] == (20,) * (len(keys) - 1) and p.prompt_tokens == sum(p.segment_tokens)
    assert p.prompt_tokens == pytest.approx(1000 / 3.2, abs=2)


def test_second_turn_shares_every_whole_block_of_the_first():
    t1 = gateway({"messages": TURN1}, True)
    t2 = gateway({"messages": TURN2}, True)
    text1 = flatten_chat(TURN1)
    whole = len(text1) // BLOCK_CHARS
    assert whole >= 5 and t2.segment_keys[:whole] == t1.segment_keys[:whole]
    assert t2.segment_tokens[:whole] == t1.segment_tokens[:whole] == (16,) * whole
    # ... and the whole blocks of turn 1's prompt + answer, which the emulator caches after turn 1 (cache_answer)
    cached = full_block_keys(text1 + ANSWER)
    assert len(cached) > whole and list(t2.segment_keys[: len(cached)]) == cached
    assert t2.segment_keys[len(text1) // BLOCK_CHARS] != t1.segment_keys[-1]  # the block after turn 1 changed


def test_token_id_prompts_share_what_the_emulator_shares():
    a, b = list(range(100, 150)), [*range(100, 140), 7, 8, 9]
    pa, pb = gateway({"prompt": a}, False), gateway({"prompt": [b]}, False)
    ka, ta = emulator_segments({"prompt": a}, False)
    kb, _ = emulator_segments({"prompt": [b]}, False)

    def common(x: tuple[int, ...], y: tuple[int, ...]) -> int:
        return next((i for i, (u, v) in enumerate(zip(x, y, strict=False)) if u != v), min(len(x), len(y)))

    assert pa.exact_tokens and pa.segment_tokens == ta == (16, 16, 16, 2)
    assert common(pa.segment_keys, pb.segment_keys) == common(ka, kb) == 2


def test_non_text_parts_change_keys_from_their_block_on():
    def body(url: str) -> dict[str, Any]:
        parts = [{"type": "text", "text": lorem(150)}, {"type": "image_url", "image_url": {"url": url}}]
        return {"messages": [SYSTEM, {"role": "user", "content": parts}]}

    a, b = gateway(body("http://a/1.png"), True), gateway(body("http://a/2.png"), True)
    keys, _ = emulator_segments(body("http://a/1.png"), True)  # the emulator ignores the image
    at = len(flatten_chat([SYSTEM], add_generation_prompt=False) + "user: ") + 150  # where the digest starts
    same = at // BLOCK_CHARS
    assert a.segment_keys[:same] == b.segment_keys[:same] == keys[:same]
    assert a.segment_keys[same] != b.segment_keys[same] and a.segment_keys[same] != keys[same]
    assert a.prompt_chars == len(flatten_chat(body("")["messages"])) + 17  # "\x00" + 16 hex digits


def test_max_segments_and_block_chars():
    text = lorem(1000)
    keys, toks = emulator_segments({"prompt": text}, False)
    p = gateway({"prompt": text}, False, max_segments=4)
    assert p.segment_keys[:3] == keys[:3] and p.segment_keys[3] == chain_key(keys[2], text[192:].encode())
    assert p.segment_tokens == (16, 16, 16, sum(toks) - 48) and p.prompt_tokens == sum(toks)
    assert gateway({"prompt": text}, False, max_segments=len(keys)).segment_keys == keys
    q = gateway({"prompt": text}, False, block_chars=100)
    assert len(q.segment_keys) == 10 and q.segment_tokens == (25,) * 10 and q.segment_keys[0] != keys[0]


messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["system", "user", "assistant", "tool"]),
            "content": st.none()
            | st.text(max_size=200)
            | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=80)}), max_size=3),
        }
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=200, deadline=None)
@given(msgs=messages, prompt=st.text(max_size=400))
def test_fuzz_gateway_keys_equal_the_emulators(msgs, prompt):
    for body, chat in (({"messages": msgs}, True), ({"prompt": prompt}, False)):
        p = gateway(body, chat)
        assert (p.segment_keys, p.segment_tokens) == emulator_segments(body, chat)


def test_end_to_end_gateway_routes_with_the_keys_the_emulator_caches(monkeypatch):
    """A gateway in front of an emulated engine: the keys the policy sees are the keys the engine receives."""
    routed: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    submitted: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    cached: list[int] = []

    async def main() -> None:
        srv = EmulatorServer(EmulatorConfig(gpu="a100-80g", model=MODEL, port=0, time_scale=0.1))
        await srv.start()
        real_submit = srv.driver.submit

        def submit(keys: tuple[int, ...], tokens: tuple[int, ...], *a: Any, **kw: Any) -> Any:
            submitted.append((keys, tokens))
            return real_submit(keys, tokens, *a, **kw)

        monkeypatch.setattr(srv.driver, "submit", submit)
        policy = build_policy("least-request")
        real_choose = policy.choose

        def choose(req: Any, view: Any) -> str:
            routed.append((req.segment_keys, req.segment_tokens))
            return real_choose(req, view)

        monkeypatch.setattr(policy, "choose", choose)
        cfg = build_config({}, {"port": 0, "health_interval_s": 0.1, "backends": [{"id": "e0", "url": srv.url}]})
        gw = Gateway(cfg, policy=policy)
        await gw.start()
        try:
            async with aiohttp.ClientSession(f"http://127.0.0.1:{gw.port}") as s:
                turn1 = {"model": MODEL, "messages": TURN1, "max_tokens": 40}
                async with s.post("/v1/chat/completions", json=turn1) as r:
                    assert r.status == 200, await r.text()
                    answer = (await r.json())["choices"][0]["message"]["content"]
                turn2 = [*TURN1, {"role": "assistant", "content": answer}, {"role": "user", "content": "and then?"}]
                for path, body in [
                    ("/v1/chat/completions", {"messages": turn2}),
                    ("/v1/chat/completions", {"messages": MULTIPART}),
                    ("/v1/completions", {"prompt": lorem(700)}),
                ]:
                    async with s.post(path, json={"model": MODEL, "max_tokens": 2, **body}) as r:
                        assert r.status == 200, await r.text()
                        cached.append((await r.json())["usage"]["prompt_tokens_details"]["cached_tokens"])
        finally:
            await gw.stop()
            await srv.stop()

    asyncio.run(asyncio.wait_for(main(), 60))
    assert len(routed) == len(submitted) == 4 and routed == submitted
    # turn 2 hit the whole blocks of turn 1's prompt and answer, which both sides key alike
    assert cached[0] == 16 * len(full_block_keys(flatten_chat(TURN1) + ANSWER))
