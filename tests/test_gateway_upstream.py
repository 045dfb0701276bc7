"""The gateway's side of the engine connection, on the wire: an engine on raw asyncio streams answers with scripted
bytes (split anywhere, malformed, cut, silent), and the tests check what the client gets and what is reported."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from lodestar.gateway.app import Gateway
from lodestar.gateway.config import build_config

MODELS = b'{"object":"list","data":[{"id":"fake-model","object":"model"}]}'
CLOSE = object()  # in a script: close the connection here
Script = list[Any]  # bytes to write, float seconds to pause, CLOSE


class RawEngine:
    """Answers GETs (health, models, metrics) normally; answers the n-th POST (from 1) with `script(n)`."""

    def __init__(self, script: Callable[[int], Script], step: int = 1 << 20) -> None:
        self.script = script
        self.step = step  # bytes per write (each followed by a short pause when smaller than the data)
        self.posts = 0
        self.post_connections = 0  # connections that carried at least one POST
        self.open_posts = 0
        self.max_open_posts = 0
        self.written = 0  # bytes of POST answers written so far (drained into the socket)
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        posted = False
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                n = 0
                for line in head.split(b"\r\n")[1:]:
                    if line.lower().startswith(b"content-length:"):
                        n = int(line.split(b":", 1)[1])
                await r.readexactly(n)
                method, path = head.split(b" ", 2)[:2]
                if method == b"GET":
                    body = MODELS if b"models" in path else b""
                    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
                    continue
                if not posted:
                    posted = True
                    self.post_connections += 1
                self.posts += 1
                self.open_posts += 1
                self.max_open_posts = max(self.max_open_posts, self.open_posts)
                try:
                    if not await self._play(self.script(self.posts), w):
                        return
                finally:
                    self.open_posts -= 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()

    async def _play(self, script: Script, w: asyncio.StreamWriter) -> bool:
        for item in script:
            if item is CLOSE:
                return False
            if isinstance(item, float):
                await asyncio.sleep(item)
                continue
            for i in range(0, len(item), self.step):
                w.write(item[i : i + self.step])
                await w.drain()
                self.written += len(item[i : i + self.step])
                if self.step < len(item):
                    await asyncio.sleep(0.0005)
        return True


def sse_head() -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def event(i: int, finish: str | None = None) -> bytes:
    c = {"index": 0, "text": f" t{i}", "logprobs": None, "finish_reason": finish}
    return b"data: " + json.dumps({"id": "cmpl-r", "object": "text_completion", "choices": [c]}).encode() + b"\n\n"


def chunked(*parts: bytes, ext: bool = False) -> bytes:
    return b"".join(b"%x%b\r\n%b\r\n" % (len(p), b";ext=1" if ext else b"", p) for p in parts)


def sse_answer(n: int = 3, pause: float = 0.0) -> Script:
    out: Script = [sse_head()]
    for i in range(n):
        if i and pause:
            out.append(pause)
        out.append(chunked(event(i, "length" if i == n - 1 else None)))
    out.append(chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    return out


@asynccontextmanager
async def gateway(engine: RawEngine, **overrides: Any) -> AsyncIterator[tuple[Gateway, aiohttp.ClientSession, str]]:
    await engine.start()
    cfg = {"port": 0, "health_interval_s": 0.1, "backends": [{"id": "r", "url": f"http://127.0.0.1:{engine.port}"}]}
    gw = Gateway(build_config({}, {**cfg, **overrides}))
    try:
        await gw.start()
        async with aiohttp.ClientSession() as s:
            yield gw, s, f"http://127.0.0.1:{gw.port}/v1/completions"
    finally:
        await gw.stop()
        await engine.stop()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


STREAM = {"model": "fake-model", "prompt": "x", "stream": True, "stream_options": {"include_usage": True}}


@pytest.mark.parametrize("step", [1, 7, 4096])
def test_chunked_stream_split_anywhere_passes_through_untouched(step):
    events = [event(0), event(1, "length"), b"data: [DONE]\n\n"]
    script = [sse_head() + chunked(*events, ext=True) + b"0\r\n\r\n"]

    async def go():
        async with gateway(RawEngine(lambda n: script, step=step)) as (gw, s, url):
            async with s.post(url, json=STREAM) as r:
                assert r.status == 200 and await r.read() == b"".join(events)
            b = gw.book.endpoints["r"].book
            assert (b.completed_total, b.in_flight) == (1, 0)

    run(go())


@pytest.mark.parametrize("step", [1, 4096])
def test_content_length_answer_relayed(step):
    raw = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 11\r\n"
    raw += b"Connection: close\r\n\r\n"

    async def go():
        async with gateway(RawEngine(lambda n: [raw + b'{"error":1}', CLOSE], step=step)) as (gw, s, url):
            async with s.post(url, json=STREAM) as r:
                assert (r.status, await r.read()) == (400, b'{"error":1}')
            assert gw.pool.backends["r"].failures == 0  # the engine refused the request: not its fault

    run(go())


def test_malformed_answers_fail_cleanly():
    garbage = [b"garbage\r\n\r\n", CLOSE]
    bad_chunk = [sse_head() + chunked(event(0)), 0.05, b"zz\r\n", 0.5]

    async def go():
        async with gateway(RawEngine(lambda n: garbage if n == 1 else bad_chunk), max_retries=0) as (gw, s, url):
            async with s.post(url, json=STREAM) as r:
                assert r.status == 502 and (await r.json())["error"]["code"] == "upstream_unavailable"
            async with s.post(url, json=STREAM) as r:  # an answer broken after its first event
                text = await r.text()
            assert text.startswith(event(0).decode()) and '"upstream_stream_error"' in text
            assert gw.pool.backends["r"].failures == 2
            retries = gw.metrics.registry.get_sample_value("lodestar_gateway_retries_total", {"reason": "bad_response"})
            assert retries == 1

    run(go())


def test_idle_engine_mid_stream_times_out():
    script = [sse_head() + chunked(event(0)), 3.0]

    async def go():
        async with gateway(RawEngine(lambda n: script), idle_timeout_s=0.2) as (_, s, url):
            t0 = asyncio.get_running_loop().time()
            async with s.post(url, json=STREAM) as r:
                text = await r.text()
            assert asyncio.get_running_loop().time() - t0 < 2.0
            assert text.startswith(event(0).decode()) and '"upstream_stream_error"' in text

    run(go())


def test_keep_alive_reused_and_idle_close_retried_on_the_same_engine():
    async def go():
        engine = RawEngine(lambda n: [CLOSE] if n == 4 else sse_answer())  # the 4th: closed without an answer
        async with gateway(engine) as (gw, s, url):
            for _ in range(4):
                async with s.post(url, json=STREAM) as r:
                    assert r.status == 200 and (await r.text()).endswith("data: [DONE]\n\n")
            assert engine.posts == 5 and engine.post_connections == 2  # one connection, and one after the close
            b = gw.pool.backends["r"]
            assert b.failures == 0 and gw.book.endpoints["r"].book.completed_total == 4
            reg = gw.metrics.registry  # not an attempt retried elsewhere: the same engine, once more
            assert reg.get_sample_value("lodestar_gateway_retries_total", {"reason": "connection_reset"}) is None

    run(go())


def test_connections_per_engine_limited():
    async def go():
        engine = RawEngine(lambda n: sse_answer(pause=0.05))
        async with gateway(engine, max_connections_per_backend=2) as (_, s, url):

            async def one() -> int:
                async with s.post(url, json=STREAM) as r:
                    await r.read()
                    return r.status

            assert await asyncio.gather(*[one() for _ in range(6)]) == [200] * 6
            assert engine.max_open_posts == 2 and engine.post_connections == 2

    run(go())


def test_connect_failures_classified():
    from lodestar.gateway.upstream import EngineClient, UpstreamError

    async def go():
        full = socket.socket()  # a listener whose accept queue is full: SYNs go unanswered
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = []
        for _ in range(4):
            c = socket.socket()
            c.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                c.connect(("127.0.0.1", port))
            fillers.append(c)
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]  # bound, not listening: refused
        client = EngineClient(connect_timeout_s=0.3)
        reasons = []
        try:
            for p in (port, closed_port):
                t0 = asyncio.get_running_loop().time()
                with pytest.raises(UpstreamError) as e:
                    await client.post(f"http://127.0.0.1:{p}/v1/completions", b"{}", {}, 5.0)
                reasons.append((e.value.reason, asyncio.get_running_loop().time() - t0 < 2.0))
        finally:
            client.close()
            for c in [full, closed, *fillers]:
                c.close()
        assert reasons == [("connect_timeout", True), ("connect_error", True)]

    run(go())


def test_body_until_close_and_interim_answer():
    """No length and no chunking: the body ends when the engine closes; a 100 Continue before the answer is skipped;
    the next request opens a new connection."""
    events = [event(0), event(1, "length"), b"data: [DONE]\n\n"]
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"

    async def go():
        engine = RawEngine(lambda n: [interim, 0.1, head, *events, CLOSE], step=5)  # the real answer 0.1 s later
        async with gateway(engine) as (gw, s, url):
            for _ in range(2):
                async with s.post(url, json=STREAM) as r:
                    assert r.status == 200 and await r.read() == b"".join(events)
            assert engine.post_connections == 2 and gw.book.endpoints["r"].book.completed_total == 2
            ttfts = gw.metrics.registry.get_sample_value("lodestar_gateway_ttft_seconds_count", {"endpoint": "r"})
            assert ttfts == 2  # streamed and observed as the 200 answer it is, not relayed as the 100's body

    run(go())


def test_slow_client_backpressure_reaches_the_engine():
    """A client that stops reading: the gateway stops reading from the engine (its buffer stays bounded) and the
    engine's writes block, instead of the whole answer piling up in the gateway's memory."""
    big = b"data: " + b"x" * 65530 + b"\n\n"  # 64 KiB events
    n_events = 600  # 38 MiB: more than the kernel's socket buffers on both hops
    script = [sse_head() + chunked(event(0)), chunked(*[big] * n_events) + chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n"]

    async def go():
        engine = RawEngine(lambda n: script)
        async with gateway(engine) as (_, _s, url):
            port = int(url.split(":")[2].split("/")[0])
            r, w = await asyncio.open_connection("127.0.0.1", port)
            body = json.dumps(STREAM).encode()
            w.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%b" % (len(body), body))  # fmt: skip
            await r.readexactly(1 << 20)  # the answer flows...
            await asyncio.sleep(0.5)  # ...then the client stalls
            stalled = engine.written
            await asyncio.sleep(0.3)
            assert engine.written == stalled < len(script[1]) // 2  # the engine is blocked, far from done
            got = 1 << 20
            while chunk := await r.read(1 << 20):  # reading again drains everything to the end
                got += len(chunk)
                if chunk.endswith(b"0\r\n\r\n"):
                    break
            assert got > n_events * len(big) and engine.written == len(script[1]) + len(script[0])
            w.close()

    run(go())


def test_engine_client_reuses_connections_only_while_fresh():
    """Keep-alive: a connection idle for less than `keepalive_s` is reused, an older one is dropped for a new one
    (so the gateway, not the engine, ends idle connections); a body read to its end frees its connection."""
    from lodestar.gateway.upstream import EngineClient

    async def go():
        engine = RawEngine(lambda n: sse_answer())
        await engine.start()
        client = EngineClient(connect_timeout_s=1.0, keepalive_s=0.3)
        url = f"http://127.0.0.1:{engine.port}/v1/completions"

        async def one() -> bytes:
            conn = await client.post(url, b"{}", {"Content-Type": "application/json"}, 5.0)
            got: list[bytes] = []
            conn.attach(got.append)
            assert conn.end is not None
            await conn.end
            client.release(conn)
            return b"".join(got)

        try:
            assert (await one()).endswith(b"data: [DONE]\n\n")
            await one()
            assert engine.post_connections == 1  # reused
            await asyncio.sleep(0.5)
            await one()
            assert engine.post_connections == 2  # too old: a new one
        finally:
            client.close()
            await engine.stop()

    run(go())
