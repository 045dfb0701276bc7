"""Moving an engine's response body to the client: streamed event by event, or collected whole.

Consumes: an `EngineConnection` whose headers are in (its body arrives by callback, see `lodestar.gateway.upstream`),
a `StreamObserver`, the client's aiohttp request and response, a callback for the first token, and the idle
timeout.
Produces: for a streaming client, the engine's SSE events (whole events, bytes untouched) written to the client's
socket as HTTP chunks from the engine socket's read callback, with no coroutine hop per token; flow control pauses
reading from the engine while the client's send buffer is over `HIGH_WATER`. For everyone else, the collected body.
A failure mid-body raises `UpstreamError` (`stream_cut`, `idle_timeout`, `bad_response`, `response_too_large`); a
client that went away raises `ClientGone`.

The client's response is an aiohttp `StreamResponse`: `prepare` sends its headers (chunked encoding), events are
framed as chunks here, and aiohttp's `write_eof` sends the last bytes and the final empty chunk in one write, so the
wire format is the one aiohttp itself produces. The idle timeout is one timer per response and second comparing
the body's byte count, not a timer per read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from lodestar.gateway.sse import StreamObserver
from lodestar.gateway.upstream import EngineConnection, UpstreamError

HIGH_WATER = 1 << 20  # client send buffer (bytes) above which reading from the engine pauses
LOW_WATER = 1 << 18
_TICK_S = 1.0


class ClientGone(Exception):
    """The client closed its connection while its response was being written."""

    def __init__(self, resp: web.StreamResponse) -> None:
        super().__init__("client disconnected")
        self.resp = resp


async def wait_end(conn: EngineConnection, idle_timeout_s: float) -> None:
    """Until the body ends; UpstreamError when it breaks, `idle_timeout` after `idle_timeout_s` without a byte."""
    end = conn.end
    assert end is not None
    if not end.done():
        loop = asyncio.get_running_loop()
        every = min(idle_timeout_s, _TICK_S)
        seen, last = conn.body_bytes, loop.time()
        handle: asyncio.TimerHandle | None = None

        def tick() -> None:
            nonlocal seen, last, handle
            now = loop.time()
            if conn.body_bytes != seen:
                seen, last = conn.body_bytes, now
            elif now - last >= idle_timeout_s:
                conn.fail("idle_timeout")
                return
            handle = loop.call_later(every, tick)

        handle = loop.call_later(every, tick)
        try:
            await end
        finally:
            if handle is not None:
                handle.cancel()
    end.result()  # raises the connection's UpstreamError


async def stream_to_client(
    request: web.Request,
    resp: web.StreamResponse,
    conn: EngineConnection,
    obs: StreamObserver,
    on_first: Callable[[], None],
    idle_timeout_s: float,
) -> bytes:
    """Pass the events through until the engine's body ends; return the last bytes to send (with `write_eof`).
    Raises UpstreamError when the engine's stream breaks (the client got everything up to there) and ClientGone when
    the client went away (the engine connection is then closed, which aborts the engine's work)."""
    try:
        await resp.prepare(request)
    except ConnectionError:
        raise ClientGone(resp) from None
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ClientGone(resp)
    loop = asyncio.get_running_loop()
    gone = False
    paused = False

    def resume() -> None:
        nonlocal paused
        if transport.is_closing() or conn.closed:
            paused = False
        elif transport.get_write_buffer_size() <= LOW_WATER:
            paused = False
            if conn.transport is not None:
                conn.transport.resume_reading()
        else:
            loop.call_later(0.005, resume)

    def on_data(data: bytes) -> None:
        nonlocal gone, paused
        out = obs.feed(data)
        if obs.first and not obs.reported:
            on_first()
        if not out:
            return
        if transport.is_closing():
            gone = True
            conn.fail("client_gone")
            return
        transport.write(b"%x\r\n%b\r\n" % (len(out), out))
        if not paused and transport.get_write_buffer_size() > HIGH_WATER and conn.transport is not None:
            paused = True
            conn.transport.pause_reading()
            loop.call_later(0.005, resume)

    conn.attach(on_data)
    try:
        await wait_end(conn, idle_timeout_s)
    except UpstreamError:
        if gone:
            raise ClientGone(resp) from None
        raise
    tail = obs.finish()
    if transport.is_closing():
        raise ClientGone(resp)
    return tail


async def collect(
    conn: EngineConnection,
    limit: int,
    idle_timeout_s: float,
    obs: StreamObserver | None = None,
    on_first: Callable[[], None] | None = None,
) -> bytes:
    """The whole body (or, with `obs`, the observed events; returns b""). Over `limit` bytes: UpstreamError."""
    parts: list[bytes] = []
    size = 0

    def on_data(data: bytes) -> None:
        nonlocal size
        if obs is not None:
            obs.feed(data)
            if on_first is not None and obs.first and not obs.reported:
                on_first()
            return
        size += len(data)
        if size > limit:
            conn.fail("response_too_large")
            return
        parts.append(data)

    conn.attach(on_data)
    await wait_end(conn, idle_timeout_s)
    if obs is not None:
        obs.finish()
    return b"".join(parts)
