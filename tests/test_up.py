"""`lodestar up`: emulated engines + gateway in one process; a request is routed and streamed; replay works."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json

import aiohttp
from rich.console import Console

from lodestar.up import run_up


def test_up_routes_streams_and_stops(tmp_path):
    buf = io.StringIO()
    out = Console(file=buf, width=200)

    async def scenario() -> tuple[list[str], dict, dict]:
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(
            run_up("h100:1,l4:1", "least-request", 0, 0, 0.5, 30.0, out, on_ready=ready.set_result)
        )
        url = await asyncio.wait_for(ready, 20)
        chunks: list[str] = []
        async with aiohttp.ClientSession() as s:
            body = {"model": "llama-3-8b", "prompt": "Hello there, how are you?", "max_tokens": 6, "stream": True}
            async with s.post(f"{url}/v1/completions", json=body) as r:
                assert r.status == 200
                async for line in r.content:
                    if line.startswith(b"data: ") and line.strip() != b"data: [DONE]":
                        chunks.append(json.loads(line[6:])["choices"][0]["text"])
            async with s.get(f"{url}/v1/models") as r:
                models = await r.json()
            async with s.post(f"{url}/v1/completions", json={**body, "stream": False}) as r:
                whole = await r.json()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return chunks, models, whole

    chunks, models, whole = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert len([c for c in chunks if c]) == 6
    assert [m["id"] for m in models["data"]] == ["llama-3-8b"]
    assert whole["usage"]["completion_tokens"] == 6
    text = buf.getvalue()
    assert "2 emulated engine(s)" in text and "e0: h100" in text and "e1: l4" in text
    assert "lodestar up: stopped" in text
