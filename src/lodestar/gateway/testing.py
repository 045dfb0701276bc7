"""A small fake OpenAI-compatible engine on loopback, for the gateway's tests and benchmark.

Consumes: settings (`FakeSettings`: model names, tokens per response, delays, metric text flavour, failure modes),
changeable while it runs.
Produces: an aiohttp server with `/v1/completions` and `/v1/chat/completions` (SSE stream shaped like vLLM's, with
the usage chunk when `stream_options.include_usage` is set, or one JSON response), `/v1/models`, `/health`, and
`/metrics` (vLLM or SGLang names, reflecting the fake's own running count). It records the requests it received
(headers and parsed bodies) and counts aborted streams, so tests can check what the gateway sent upstream.

Not an engine model (see `lodestar.emulator` for that): latencies here are fixed delays chosen by the test.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class FakeSettings:
    models: list[str] = field(default_factory=lambda: ["fake-model"])
    tokens: int = 8
    ttft_s: float = 0.0  # delay before the first token
    token_interval_s: float = 0.0  # delay between tokens
    header_delay_s: float = 0.0  # delay before the response headers (first byte)
    flavour: str = "vllm"  # metrics names: vllm | sglang
    fail_status: int | None = None  # answer every completion with this status
    health_status: int = 200
    cut_after_tokens: int | None = None  # drop the connection after this many tokens
    metrics_extra: str = ""


_TOKEN = " tok"


class FakeBackend:
    def __init__(self, settings: FakeSettings | None = None, name: str = "fake") -> None:
        self.s = settings or FakeSettings()
        self.name = name
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.running = 0
        self.completed = 0
        self.aborted = 0
        self.record = True
        self.runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self, port: int = 0) -> None:
        self.runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port or self.port or 0, reuse_address=True)
        await site.start()
        self.port = int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    # ---- handlers ---------------------------------------------------------------------------------------------
    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=self.s.health_status, text="")

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": self.name} for m in self.s.models]
        return web.json_response({"object": "list", "data": data})

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.s.flavour == "sglang":
            text = (
                f'sglang:num_running_reqs{{model_name="m"}} {self.running}\n'
                f'sglang:num_queue_reqs{{model_name="m"}} 0\n'
                f'sglang:token_usage{{model_name="m"}} 0.25\n'
                f'sglang:prompt_tokens_total{{model_name="m"}} 100\n'
                f'sglang:cached_tokens_total{{model_name="m",cache_source="device"}} 30\n'
                f'sglang:cached_tokens_total{{model_name="m",cache_source="host"}} 10\n'
            )
        else:
            text = (
                "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
                "# TYPE vllm:num_requests_running gauge\n"
                f'vllm:num_requests_running{{model_name="m",engine="0"}} {self.running}\n'
                f'vllm:num_requests_waiting{{model_name="m",engine="0"}} 0.0\n'
                f'vllm:kv_cache_usage_perc{{model_name="m",engine="0"}} 0.125\n'
                f'vllm:prefix_cache_queries_total{{model_name="m",engine="0"}} 200.0\n'
                f'vllm:prefix_cache_hits_total{{model_name="m",engine="0"}} 50.0\n'
                f'vllm:time_to_first_token_seconds_sum{{model_name="m",engine="0"}} 1.5\n'
                f'vllm:time_to_first_token_seconds_count{{model_name="m",engine="0"}} {self.completed}\n'
                'vllm:cache_config_info{block_size="16",num_gpu_blocks="4096"} 1.0\n'
            )
        return web.Response(text=text + self.s.metrics_extra, content_type="text/plain")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=True)

    def _chunk(
        self, chat: bool, model: str, text: str | None, finish: str | None = None, role: bool = False
    ) -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {"content": text}
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": model,
                "choices": [choice],
            }
        return {
            "id": "cmpl-fake",
            "object": "text_completion",
            "created": 1,
            "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        }

    async def _serve(self, request: web.Request, chat: bool) -> web.StreamResponse:
        body = await request.json()
        if self.record:
            self.requests.append(body)
            self.headers.append(dict(request.headers))
        s = self.s
        if s.header_delay_s:
            await asyncio.sleep(s.header_delay_s)
        if s.fail_status is not None:
            return web.json_response(
                {"object": "error", "message": "fake failure", "code": s.fail_status}, status=s.fail_status
            )
        model = body.get("model") or s.models[0]
        n = min(int(body.get("max_tokens") or s.tokens), s.tokens)
        usage = {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n}
        self.running += 1
        try:
            if not body.get("stream"):
                await asyncio.sleep(s.ttft_s + s.token_interval_s * max(0, n - 1))
                out = self._chunk(chat, model, _TOKEN * n, "length")
                if chat:
                    out["object"] = "chat.completion"
                    out["choices"][0] = {
                        "index": 0,
                        "message": {"role": "assistant", "content": _TOKEN * n},
                        "finish_reason": "length",
                    }
                out["usage"] = usage
                self.completed += 1
                return web.json_response(out)
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
            await resp.prepare(request)
            try:
                if chat:  # the role-only delta goes out at once (it must not count as the first token)
                    role = self._chunk(True, model, None, role=True)
                    await resp.write(b"data: " + json.dumps(role).encode() + b"\n\n")
                if s.ttft_s:
                    await asyncio.sleep(s.ttft_s)
                for i in range(n):
                    if s.cut_after_tokens is not None and i >= s.cut_after_tokens:
                        assert request.transport is not None
                        request.transport.close()
                        return resp
                    if i and s.token_interval_s:
                        await asyncio.sleep(s.token_interval_s)
                    fin = "length" if i == n - 1 else None
                    await resp.write(b"data: " + json.dumps(self._chunk(chat, model, _TOKEN, fin)).encode() + b"\n\n")
                so = body.get("stream_options") or {}
                if so.get("include_usage"):
                    last = self._chunk(chat, model, None)
                    last["choices"] = []
                    last["usage"] = usage
                    await resp.write(b"data: " + json.dumps(last).encode() + b"\n\n")
                await resp.write(b"data: [DONE]\n\n")
                await resp.write_eof()
                self.completed += 1
            except (asyncio.CancelledError, ConnectionError):
                self.aborted += 1
                raise
            return resp
        finally:
            self.running -= 1


async def start_fakes(n: int, **kw: Any) -> list[FakeBackend]:
    out = []
    for i in range(n):
        f = FakeBackend(FakeSettings(**kw), name=f"fake{i}")
        await f.start()
        out.append(f)
    return out


@asynccontextmanager
async def running_gateway(
    fakes: list[FakeSettings] | int = 2, policy: Any = None, **overrides: Any
) -> AsyncIterator[tuple[Any, list[FakeBackend]]]:
    """Fake engines (ids e0, e1, ...) and a gateway in front of them on loopback; both stopped on exit."""
    from lodestar.gateway.app import Gateway
    from lodestar.gateway.config import build_config

    settings = [FakeSettings() for _ in range(fakes)] if isinstance(fakes, int) else fakes
    started: list[FakeBackend] = []
    gw = None
    try:
        for i, st in enumerate(settings):
            f = FakeBackend(st, name=f"fake{i}")
            await f.start()
            started.append(f)
        base = {
            "port": 0,
            "health_interval_s": 0.1,
            "backends": [{"id": f"e{i}", "url": f.url} for i, f in enumerate(started)],
        }
        gw = Gateway(build_config({}, {**base, **overrides}), policy=policy)
        await gw.start()
        yield gw, started
    finally:
        if gw is not None:
            await gw.stop()
        for f in started:
            await f.stop()
