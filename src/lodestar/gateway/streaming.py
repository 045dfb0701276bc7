"""Moving an engine's response body to the client: streamed event by event, or collected whole.

Consumes: an `UpstreamConn` whose body arrives through a `Pipe` (bytes that came with the response headers are held
until a consumer is attached), a `StreamObserver`, the aiohttp request of the client, and callbacks for the first
token. Produces: for a streaming client, the engine's SSE events written straight to the client's socket as HTTP
chunks from the upstream socket's callback (no coroutine hop per token), with flow control (upstream reading
pauses while the client's send buffer is over `HIGH_WATER`); for everyone else, the collected body.

The client's response is an aiohttp `StreamResponse`: `prepare` sends its headers at once (chunked encoding), the
events are framed as chunks here, and aiohttp's `write_eof` sends the final empty chunk, so the wire format is the
one aiohttp would produce itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

from lodestar.gateway.sse import StreamObserver
from lodestar.gateway.upstream import UpstreamConn, UpstreamError

HIGH_WATER = 1 << 20
LOW_WATER = 1 << 18


class Pipe:
    """The sink given to the upstream connection before the gateway knows what to do with the body."""

    __slots__ = ("last", "pending", "target")

    def __init__(self) -> None:
        self.pending: list[bytes] = []
        self.target: Callable[[bytes], None] | None = None
        self.last = 0.0

    def __call__(self, data: bytes) -> None:
        if self.target is None:
            self.pending.append(data)
        else:
            self.target(data)

    def attach(self, target: Callable[[bytes], None]) -> None:
        self.target = target
        pending, self.pending = self.pending, []
        for d in pending:
            target(d)


class ClientGone(Exception):
    """The client closed its connection while its response was being written."""

    def __init__(self, resp: web.StreamResponse) -> None:
        super().__init__("client disconnected")
        self.resp = resp


async def wait_end(conn: UpstreamConn, pipe: Pipe, idle_timeout_s: float) -> None:
    """Until the body ends; UpstreamError('idle_timeout') after `idle_timeout_s` without a byte."""
    assert conn.end is not None
    loop = asyncio.get_running_loop()
    pipe.last = loop.time()
    while True:
        done, _ = await asyncio.wait([conn.end], timeout=idle_timeout_s)
        if done:
            conn.end.result()  # raises UpstreamError when the stream broke
            return
        if loop.time() - pipe.last >= idle_timeout_s:
            conn.close()
            raise UpstreamError("idle_timeout")


async def stream_to_client(
    request: web.Request,
    resp: web.StreamResponse,
    conn: UpstreamConn,
    pipe: Pipe,
    obs: StreamObserver,
    on_first: Callable[[], None],
    idle_timeout_s: float,
) -> None:
    """Pass the events through; returns at the end of the engine's stream. Raises UpstreamError when the engine's
    stream breaks (the client got everything up to there) and ClientGone when the client went away."""
    await resp.prepare(request)
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ClientGone(resp)
    chunked = resp.chunked
    loop = asyncio.get_running_loop()
    paused = False
    state: dict[str, Any] = {"gone": False}

    def resume() -> None:
        nonlocal paused
        if transport.is_closing() or conn.closed:
            paused = False
            return
        if transport.get_write_buffer_size() <= LOW_WATER:
            paused = False
            if conn.transport is not None:
                conn.transport.resume_reading()
        else:
            loop.call_later(0.005, resume)

    def on_data(data: bytes) -> None:
        nonlocal paused
        pipe.last = loop.time()
        out = obs.feed(data)
        if obs.first and not obs.reported:
            on_first()
        if not out:
            return
        if transport.is_closing():
            state["gone"] = True
            conn.close()  # abort the engine's work: nobody will read it
            return
        transport.write(b"%x\r\n%b\r\n" % (len(out), out) if chunked else out)
        if not paused and transport.get_write_buffer_size() > HIGH_WATER and conn.transport is not None:
            paused = True
            conn.transport.pause_reading()
            loop.call_later(0.005, resume)

    pipe.attach(on_data)
    try:
        await wait_end(conn, pipe, idle_timeout_s)
    except UpstreamError:
        if state["gone"]:
            raise ClientGone(resp) from None
        raise
    tail = obs.finish()
    if tail and not transport.is_closing():
        transport.write(b"%x\r\n%b\r\n" % (len(tail), tail) if chunked else tail)
    if state["gone"] or transport.is_closing():
        raise ClientGone(resp)


async def collect(
    conn: UpstreamConn,
    pipe: Pipe,
    limit: int,
    idle_timeout_s: float,
    obs: StreamObserver | None = None,
    on_first: Callable[[], None] | None = None,
) -> bytes:
    """The whole body (or, with `obs`, the observed events; returns b""). Over `limit` bytes: UpstreamError."""
    parts: list[bytes] = []
    size = 0
    loop = asyncio.get_running_loop()

    def on_data(data: bytes) -> None:
        nonlocal size
        pipe.last = loop.time()
        if obs is not None:
            obs.feed(data)
            if on_first is not None and obs.first and not obs.reported:
                on_first()
            return
        size += len(data)
        if size > limit:
            conn.close()
            return
        parts.append(data)

    pipe.attach(on_data)
    try:
        await wait_end(conn, pipe, idle_timeout_s)
    except UpstreamError:
        if size > limit:
            raise UpstreamError("response_too_large") from None
        raise
    if obs is not None:
        obs.finish()
    return b"".join(parts)
