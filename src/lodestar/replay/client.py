"""One streamed request to an OpenAI-compatible endpoint, timed on the client side.

Consumes: an aiohttp session, the target base URL, the API (`completions` or `chat`), the model name, the prompt
text and the output length. Produces: an `Outcome`: TTFT (until the first chunk with non-empty text), E2E (until
`data: [DONE]` or the end of the stream), tokens received (the final usage block's `completion_tokens`, else the
number of non-empty chunks), the prefix-cache hit the server reports (`usage.prompt_tokens_details.cached_tokens`,
when it does), the `x-lodestar-endpoint` response header (set by the Lodestar gateway), the answer text, and the
error if any (HTTP status >= 400, an error chunk, a broken connection, a timeout).

Requests ask for `max_tokens` = the workload's output length and (by default) `ignore_eos: true` (a vLLM
sampling extension, as `vllm bench serve` sends) so that a real engine generates that many tokens too.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp


@dataclass(slots=True)
class Outcome:
    ok: bool
    ttft_s: float = float("nan")
    e2e_s: float = float("nan")
    tokens: int = 0
    cached_tokens: int | None = None
    prompt_tokens: int | None = None
    endpoint: str | None = None
    error: str | None = None
    text: str = ""


def request_body(api: str, model: str | None, text: str, max_tokens: int, ignore_eos: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}, "temperature": 0.0,
    }  # fmt: skip
    if model is not None:
        body["model"] = model
    if ignore_eos:
        body["ignore_eos"] = True
    if api == "chat":
        body["messages"] = [{"role": "user", "content": text}]
    else:
        body["prompt"] = text
    return body


def _error_text(status: int, raw: bytes) -> str:
    try:
        obj = json.loads(raw)
        msg = obj.get("error", {}).get("message") if isinstance(obj.get("error"), dict) else obj.get("message")
    except (ValueError, AttributeError):
        msg = None
    return f"HTTP {status}: {msg or raw[:200].decode(errors='replace')}"


async def send(
    session: aiohttp.ClientSession,
    base_url: str,
    api: str,
    model: str | None,
    text: str,
    max_tokens: int,
    ignore_eos: bool = True,
    timeout_s: float = 600.0,
) -> Outcome:
    path = "/v1/chat/completions" if api == "chat" else "/v1/completions"
    body = request_body(api, model, text, max_tokens, ignore_eos)
    t0 = time.perf_counter()
    out = Outcome(ok=False)
    pieces: list[str] = []
    chunks = 0
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(base_url + path, json=body) as resp:
                out.endpoint = resp.headers.get("x-lodestar-endpoint")
                if resp.status >= 400:
                    out.error = _error_text(resp.status, await resp.read())
                    return out
                done = False
                async for line in resp.content:
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        done = True
                        break
                    obj = json.loads(data)
                    if "error" in obj:
                        err = obj["error"]
                        out.error = str(err.get("message", err) if isinstance(err, dict) else err)
                        return out
                    for c in obj.get("choices") or ():
                        piece = c.get("text")
                        if piece is None:
                            piece = (c.get("delta") or {}).get("content")
                        if piece:
                            if chunks == 0:
                                out.ttft_s = time.perf_counter() - t0
                            chunks += 1
                            pieces.append(piece)
                    usage = obj.get("usage")
                    if usage:
                        out.tokens = int(usage.get("completion_tokens") or 0)
                        out.prompt_tokens = usage.get("prompt_tokens")
                        details = usage.get("prompt_tokens_details") or {}
                        if details.get("cached_tokens") is not None:
                            out.cached_tokens = int(details["cached_tokens"])
                out.e2e_s = time.perf_counter() - t0
                if not done:
                    out.error = "the stream ended before data: [DONE]"
                    return out
    except TimeoutError:
        out.error = f"timed out after {timeout_s:g} s"
        return out
    except (aiohttp.ClientError, ConnectionError, ValueError) as e:
        out.error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        return out
    if chunks == 0:
        out.error = "no token received"
        return out
    out.tokens = out.tokens or chunks
    out.text = "".join(pieces)
    out.ok = True
    return out
