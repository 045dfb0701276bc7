"""The gateway's client to its engines: keep-alive HTTP/1.1 connections whose response bodies arrive by callback.

Consumes: an engine URL, the request body and headers, and the connect and first-byte timeouts (from
`GatewayConfig`); per response, a sink for its body.
Produces: an `EngineConnection` once the engine's status line and headers are in (`status`, `headers` with
lower-case names), then every decoded piece of the body (chunked, Content-Length or read-to-close; decoding by
`httptools`, the HTTP parser uvicorn uses) handed to the sink *inside the socket's read callback*, and `end`, a
future that completes when the body ends or fails. Failures are `UpstreamError` with a short `reason`:
`connect_error`, `connect_timeout`, `connection_reset`, `first_byte_timeout` and `bad_response` before the headers
(the proxy retries those on another engine); `stream_cut`, `idle_timeout` and `bad_response` mid-body.

Why not aiohttp's client (which the monitor and Kubernetes discovery use): a streamed answer of N tokens arrives
as N socket reads, and aiohttp's client hands each to a coroutine through its stream reader, so every token costs a
task wake-up on top of the parsing. Here a token goes from the engine's socket to the client's socket in one
callback; measured in `bench/gateway_overhead.py` (docs/gateway.md).

Connections: idle ones are kept per (host, port, TLS) for `keepalive_s` (below uvicorn's 5 s, so the gateway is
the side that drops them) and reused; with `max_per_host` > 0, requests beyond that many open connections to one
engine wait for one. A reused connection that ends before any response byte (the engine closed it while idle) is
tried once more on a fresh connection, not counted as a failure. A connection whose response did not end cleanly
is closed, which is how an engine learns that the client went away.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

import httptools

_MAX_HEAD = 65536  # bytes of status line and headers


class UpstreamError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


Sink = Callable[[bytes], None]


class EngineConnection(asyncio.Protocol):
    """One connection to one engine; one request at a time. Body bytes that arrive before a sink is attached (in
    the same read as the headers, typically) are held and handed over by `attach`."""

    def __init__(self, key: tuple[str, int, bool]) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.status = 0
        self.headers: dict[str, str] = {}
        self.head: asyncio.Future[None] | None = None
        self.end: asyncio.Future[None] | None = None
        self.body_bytes = 0  # decoded body bytes so far (the idle watch compares it between ticks)
        self._sink: Sink | None = None
        self._pending: list[bytes] = []
        self._parser: httptools.HttpResponseParser | None = None
        self._got = 0  # raw bytes received for the current request
        self._head_done = False
        self._to_close = False  # body length unknown: it ends when the engine closes the connection
        self._keep_alive = True
        self._done = True

    # ---- asyncio.Protocol ---------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._done:
            return
        if self._head_done and self._to_close:
            self._finish()
        else:
            self._fail("stream_cut" if self._head_done else "connection_reset")

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:  # bytes outside a response: the connection is unusable
            self.close()
            return
        if not self._head_done:
            self._got += len(data)
            if self._got > _MAX_HEAD + len(data):
                self.fail("bad_response")
                return
        try:
            parser.feed_data(data)
        except httptools.HttpParserError:
            self.fail("bad_response")

    # ---- httptools callbacks ------------------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        self.status = self._parser.get_status_code()
        if self.status < 200:  # an interim 1xx answer: the real one follows (`on_message_complete` resets)
            return
        self._head_done = True
        self._keep_alive = self._parser.should_keep_alive()
        h = self.headers
        self._to_close = (
            "content-length" not in h
            and "chunked" not in h.get("transfer-encoding", "").lower()
            and self.status not in (204, 304)
            and self.status >= 200
        )
        if self.head is not None and not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self._sink is not None:
            self._sink(body)
        else:
            self._pending.append(body)

    def on_message_complete(self) -> None:
        if self.status < 200:  # the end of an interim 1xx answer: forget its headers, wait for the real one
            self.status, self.headers = 0, {}
            return
        self._finish()

    # ---- state ----------------------------------------------------------------------------------------------------
    def start(self, data: bytes) -> None:
        """Send a whole request; the response is parsed from here on."""
        loop = asyncio.get_running_loop()
        self.head, self.end = loop.create_future(), loop.create_future()
        self.status, self.headers, self.body_bytes, self._got = 0, {}, 0, 0
        self._sink, self._pending = None, []
        self._head_done = self._to_close = self._done = False
        self._keep_alive = True
        self._parser = httptools.HttpResponseParser(self)
        assert self.transport is not None
        self.transport.write(data)

    def attach(self, sink: Sink) -> None:
        """From now on the body goes to `sink`; what came before goes first."""
        self._sink = sink
        pending, self._pending = self._pending, []
        for piece in pending:
            sink(piece)

    @property
    def got_bytes(self) -> bool:
        return self._got > 0

    @property
    def reusable(self) -> bool:
        end = self.end
        return (
            self._done
            and self._keep_alive
            and not self._to_close
            and not self.closed
            and end is not None
            and end.done()
            and not end.cancelled()
            and end.exception() is None
        )

    def _finish(self) -> None:
        self._done = True
        self._sink = None
        self._parser = None
        if self.head is not None and not self.head.done():
            self.head.set_result(None)
        if self.end is not None and not self.end.done():
            self.end.set_result(None)

    def fail(self, reason: str) -> None:
        """Ends the response with `UpstreamError(reason)` and closes the connection (the engine aborts)."""
        self._fail(reason)
        self.close()

    def _fail(self, reason: str) -> None:
        self._done = True
        self._keep_alive = False
        self._sink = None
        self._parser = None
        err = UpstreamError(reason)
        for f in (self.head, self.end):
            if f is not None and not f.done():
                f.set_exception(err)
                f.exception()  # retrieved: no "never retrieved" warning when nobody waits on it

    def close(self) -> None:
        self._keep_alive = False
        if self.transport is not None and not self.closed:
            self.transport.close()


class EngineClient:
    """Keep-alive connections per engine (see the module docstring)."""

    def __init__(self, connect_timeout_s: float, max_per_host: int = 0, keepalive_s: float = 4.0) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.max_per_host = max_per_host
        self.keepalive_s = keepalive_s
        self._idle: dict[tuple[str, int, bool], list[EngineConnection]] = {}
        self._slots: dict[tuple[str, int, bool], asyncio.Semaphore] = {}
        self._targets: dict[str, tuple[tuple[str, int, bool], bytes, str]] = {}
        self._ssl: ssl.SSLContext | None = None

    def _target(self, url: str) -> tuple[tuple[str, int, bool], bytes, str]:
        """(pool key, request line, Host value) of an absolute URL; cached, since engines are few."""
        t = self._targets.get(url)
        if t is None:
            u = urlsplit(url)
            tls = u.scheme == "https"
            host = u.hostname or "127.0.0.1"
            port = u.port or (443 if tls else 80)
            path = (u.path or "/") + (f"?{u.query}" if u.query else "")
            hostport = host if port == (443 if tls else 80) else f"{host}:{port}"
            if ":" in host:  # IPv6 literal
                hostport = f"[{host}]" + ("" if port == (443 if tls else 80) else f":{port}")
            t = ((host, port, tls), f"POST {path} HTTP/1.1\r\n".encode(), hostport)
            if len(self._targets) > 4096:  # endpoints come and go; never grow without bound
                self._targets.clear()
            self._targets[url] = t
        return t

    async def _connect(self, key: tuple[str, int, bool]) -> EngineConnection:
        loop = asyncio.get_running_loop()
        if key[2] and self._ssl is None:
            self._ssl = ssl.create_default_context()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: EngineConnection(key), key[0], key[1], ssl=self._ssl if key[2] else None
                )
        except TimeoutError:
            raise UpstreamError("connect_timeout") from None
        except OSError:
            raise UpstreamError("connect_error") from None
        return conn

    def _take_idle(self, key: tuple[str, int, bool]) -> EngineConnection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            c = idle.pop()
            tr = c.transport
            if not c.closed and tr is not None and not tr.is_closing() and now - c.idle_since < self.keepalive_s:
                c.reused = True
                return c
            c.close()
        return None

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], first_byte_timeout_s: float
    ) -> EngineConnection:
        """POST `body` to `url`; returns once the status line and headers are in. Give the connection back with
        `release` when done with it, whatever happened."""
        key, line, hostport = self._target(url)
        head = [line, b"Host: ", hostport.encode(), b"\r\nContent-Length: ", str(len(body)).encode(), b"\r\n"]
        for k, v in headers.items():
            head.append(f"{k}: {v}\r\n".encode("latin-1"))
        head.append(b"\r\n")
        head.append(body)
        data = b"".join(head)
        slot = self._slot(key)
        if slot is not None:
            await slot.acquire()
        try:
            for again in (True, False):
                conn = self._take_idle(key)
                if conn is None:
                    conn = await self._connect(key)
                conn.start(data)
                assert conn.head is not None
                timer = asyncio.get_running_loop().call_later(first_byte_timeout_s, conn.fail, "first_byte_timeout")
                try:
                    await conn.head
                except UpstreamError as e:
                    conn.close()
                    if again and conn.reused and not conn.got_bytes and e.reason == "connection_reset":
                        continue  # the engine closed an idle connection: once more on a fresh one
                    raise
                except BaseException:
                    conn.close()
                    raise
                finally:
                    timer.cancel()
                return conn
        except BaseException:
            if slot is not None:
                slot.release()
            raise
        raise AssertionError("unreachable")

    def _slot(self, key: tuple[str, int, bool]) -> asyncio.Semaphore | None:
        if self.max_per_host <= 0:
            return None
        s = self._slots.get(key)
        if s is None:
            s = self._slots[key] = asyncio.Semaphore(self.max_per_host)
        return s

    def release(self, conn: EngineConnection) -> None:
        """Back to the idle list when its response ended cleanly on a keep-alive connection; else closed (which
        aborts the engine's work on an unfinished response). Call exactly once per `post` that returned."""
        if conn.reusable:
            conn.idle_since = asyncio.get_running_loop().time()
            self._idle.setdefault(conn.key, []).append(conn)
        else:
            conn.close()
        slot = self._slots.get(conn.key) if self.max_per_host > 0 else None
        if slot is not None:
            slot.release()

    def close(self) -> None:
        for idle in self._idle.values():
            for c in idle:
                c.close()
        self._idle.clear()
