"""The engine side of the request path: aiohttp's client to the engines, and moving a response body to the client.

Consumes: the gateway's settings (connect, first-byte and idle timeouts, connections per engine), a request for an
engine (URL, headers, body), the engine's `aiohttp.ClientResponse`, a `StreamObserver`, the client's aiohttp
request, and a callback for the first token.
Produces: one `aiohttp.ClientSession` per gateway (keep-alive pool, no cookies, no redirects); the engine's response
once its status line and headers are in, or `UpstreamError` with a short `reason` (`connect_error`,
`connect_timeout`, `connection_reset`, `first_byte_timeout`, `bad_response`) that the proxy retries elsewhere; then,
for a streaming client, the engine's SSE events written to the client as they arrive (whole events, bytes untouched,
aiohttp's chunked encoding and flow control); for everyone else, the collected body. A failure mid-body is an
`UpstreamError` too (`stream_cut`, `idle_timeout`, `response_too_large`); a client that went away is `ClientGone`.

Timeouts: aiohttp's `sock_connect` is the connect timeout; the first-byte timeout bounds the wait for the response
headers; then an engine silent for the idle timeout mid-body ends the read with `idle_timeout`, checked by one timer
per response and second rather than one per socket read (aiohttp's `sock_read`). A connection that the engine
closes without answering (typically a keep-alive connection it closed while idle) is tried once more on another
connection to the same engine, not counted as a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import aiohttp
from aiohttp import web

from lodestar.gateway.config import GatewayConfig
from lodestar.gateway.sse import StreamObserver

_TICK_S = 1.0


class UpstreamError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ClientGone(Exception):
    """The client closed its connection while its response was being written."""

    def __init__(self, resp: web.StreamResponse) -> None:
        super().__init__("client disconnected")
        self.resp = resp


def open_session(cfg: GatewayConfig) -> aiohttp.ClientSession:
    """The gateway's client to its engines (the monitor has its own, for health checks and scrapes)."""
    connector = aiohttp.TCPConnector(
        limit=0,  # the gateway's own max_concurrency bounds the total
        limit_per_host=cfg.max_connections_per_backend,
        keepalive_timeout=4.0,  # below uvicorn's 5 s (vLLM, SGLang): the gateway closes idle connections first
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=cfg.connect_timeout_s),
        cookie_jar=aiohttp.DummyCookieJar(),  # a proxy must not carry one client's cookies to the next
        skip_auto_headers=("Accept-Encoding",),  # identity bodies: events pass through as the engine wrote them
    )


async def send(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: Mapping[str, str], first_byte_timeout_s: float
) -> aiohttp.ClientResponse:
    """POST to an engine; returns once the response's status line and headers are in."""
    for again in (True, False):
        try:
            async with asyncio.timeout(first_byte_timeout_s):
                return await session.post(url, data=body, headers=headers, allow_redirects=False)
        except aiohttp.ServerTimeoutError:  # before the headers, only sock_connect (ConnectionTimeoutError from 3.10)
            raise UpstreamError("connect_timeout") from None
        except aiohttp.ClientConnectorError:
            raise UpstreamError("connect_error") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            if again:  # closed without answering: once more, on another connection
                continue
            raise UpstreamError("connection_reset") from None
        except TimeoutError:
            raise UpstreamError("first_byte_timeout") from None
        except aiohttp.ClientError:
            raise UpstreamError("bad_response") from None
    raise AssertionError("unreachable")


class _Watch:
    """Ends the read of a response body when the engine has sent nothing for `idle_s` (`idle_timeout`), or when
    aiohttp closed the connection without waking the reader (`stream_cut`: after a malformed chunk mid-body,
    aiohttp 3.14 fails the connection but not the body, and `readany` would wait for ever). Nothing per chunk: each
    tick compares the body's byte count with the last one."""

    __slots__ = ("handle", "idle_s", "last", "loop", "reason", "seen", "up")

    def __init__(self, up: aiohttp.ClientResponse, idle_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.up, self.idle_s, self.reason, self.seen = up, idle_s, "", -1
        self.last = self.loop.time()
        self.handle = self.loop.call_later(min(idle_s, _TICK_S), self._tick)

    def _tick(self) -> None:
        now = self.loop.time()
        conn = self.up.connection  # None once the body ended (the connection went back to the pool)
        if self.up.content.total_bytes != self.seen:
            self.seen, self.last = self.up.content.total_bytes, now
        if conn is not None and conn.closed:
            self.reason = "stream_cut"
        elif now - self.last >= self.idle_s:
            self.reason = "idle_timeout"
        else:
            self.handle = self.loop.call_later(min(self.idle_s, _TICK_S), self._tick)
            return
        self.up.close()  # the waiting read raises ClientConnectionError

    def error(self) -> UpstreamError:
        return UpstreamError(self.reason or "stream_cut")

    def stop(self) -> None:
        self.handle.cancel()


async def stream_to_client(
    request: web.Request,
    resp: web.StreamResponse,
    up: aiohttp.ClientResponse,
    obs: StreamObserver,
    on_first: Callable[[], None],
    idle_timeout_s: float,
) -> bytes:
    """Pass the events through until the engine's body ends; return the last bytes to send (with `write_eof`,
    which coalesces them with the end of the chunked body). Raises UpstreamError when the engine's stream breaks
    (the client got everything up to there) and ClientGone when the client went away."""
    try:
        await resp.prepare(request)
    except ConnectionError:
        raise ClientGone(resp) from None
    content = up.content
    async with _chunks(up, idle_timeout_s) as read:
        while True:
            data = await read()
            if not data:
                return _last(request, resp, obs.finish())
            out = obs.feed(data)
            if obs.first and not obs.reported:
                on_first()
            if content.at_eof():  # the engine's body ended with these bytes: one write for them and the end
                return _last(request, resp, out + obs.finish())
            if out:
                try:
                    await resp.write(out)
                except ConnectionError:
                    raise ClientGone(resp) from None


@contextlib.asynccontextmanager
async def _chunks(up: aiohttp.ClientResponse, idle_timeout_s: float) -> AsyncIterator[Callable[[], Awaitable[bytes]]]:
    """A reader of the engine's body, piece by piece (b"" at its end), watched for idleness and silent cuts;
    a broken stream raises the watch's UpstreamError."""
    watch = _Watch(up, idle_timeout_s)
    content = up.content

    async def read() -> bytes:
        try:
            return await content.readany()
        except aiohttp.ClientError:
            raise watch.error() from None

    try:
        yield read
    finally:
        watch.stop()


def _last(request: web.Request, resp: web.StreamResponse, tail: bytes) -> bytes:
    if request.transport is None or request.transport.is_closing():
        raise ClientGone(resp)
    return tail


async def collect(
    up: aiohttp.ClientResponse,
    limit: int,
    idle_timeout_s: float,
    obs: StreamObserver | None = None,
    on_first: Callable[[], None] | None = None,
) -> bytes:
    """The whole body (or, with `obs`, the observed events; returns b""). Over `limit` bytes: UpstreamError."""
    parts: list[bytes] = []
    size = 0
    async with _chunks(up, idle_timeout_s) as read:
        while data := await read():
            if obs is not None:
                obs.feed(data)
                if on_first is not None and obs.first and not obs.reported:
                    on_first()
                continue
            size += len(data)
            if size > limit:
                raise UpstreamError("response_too_large")
            parts.append(data)
    if obs is not None:
        obs.finish()
    return b"".join(parts)
