"""A lean HTTP/1.1 client for the request path: keep-alive connections to engines, bodies delivered by callback.

Consumes: a backend base URL, a request (method, path, headers, body), a sink callable for the response body, and
the connect and first-byte timeouts.
Produces: the response status and headers (awaitable, i.e. the engine's first byte), then every piece of the
decoded body (chunked, Content-Length or read-to-close) handed to the sink synchronously, inside the socket's
`data_received`, and a future that completes when the body ends; `UpstreamError` (with a short `reason`) when the
connection is refused, reset, times out or speaks broken HTTP.

Why not aiohttp's client (which the monitor uses): a streamed response of N tokens arrives as N socket reads, and
aiohttp wakes a coroutine for each (stream reader, iterator, writer), costing tens of microseconds per token. Here a
token goes from the engine's socket to the client's socket in one callback. Idle connections are kept per backend
and reused; a reused connection that fails before any response byte is retried once on a fresh one (the engine
closed it while idle, not the engine's fault).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from urllib.parse import urlsplit

_MAX_HEAD = 65536


class UpstreamError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UpstreamConn(asyncio.Protocol):
    """One connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.sink: Callable[[bytes], None] | None = None
        self.head: asyncio.Future[None] | None = None
        self.end: asyncio.Future[None] | None = None
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = True
        self.got_bytes = False
        self._buf = b""
        self._mode = ""  # "head" | "chunked" | "length" | "close" | "done"
        self._left = 0  # bytes left in the current chunk / body; -1: expecting a chunk size line
        self._crlf = 0  # bytes of CRLF to skip after a chunk

    # ---- asyncio.Protocol ---------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._mode == "close":
            self._finish()
        elif self._mode != "done":
            self._fail(UpstreamError("connection_reset" if not self.got_bytes else "stream_cut"))

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        if self._mode == "head":
            data = self._buf + data if self._buf else data
            i = data.find(b"\r\n\r\n")
            if i < 0:
                if len(data) > _MAX_HEAD:
                    self._abort(UpstreamError("bad_response"))
                self._buf = data
                return
            self._buf = b""
            if not self._parse_head(data[:i]):
                self._abort(UpstreamError("bad_response"))
                return
            data = data[i + 4 :]
            if self.head is not None and not self.head.done():
                self.head.set_result(None)
        if self._mode == "chunked":
            self._chunked(data)
        elif self._mode == "length":
            take = data[: self._left]
            self._left -= len(take)
            if take and self.sink is not None:
                self.sink(take)
            if self._left <= 0:
                self._finish()
        elif self._mode == "close" and data and self.sink is not None:
            self.sink(data)

    # ---- parsing --------------------------------------------------------------------------------------------------
    def _parse_head(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            return False
        self.status = int(parts[1])
        h: dict[str, str] = {}
        for line in lines[1:]:
            k, sep, v = line.partition(b":")
            if sep:
                h[k.strip().lower().decode("latin-1")] = v.strip().decode("latin-1")
        self.headers = h
        self.keep_alive = h.get("connection", "").lower() != "close" and parts[0] != b"HTTP/1.0"
        if "chunked" in h.get("transfer-encoding", "").lower():
            self._mode, self._left, self._crlf = "chunked", -1, 0
        elif "content-length" in h:
            try:
                self._left = int(h["content-length"])
            except ValueError:
                return False
            self._mode = "length"
            if self._left == 0 or self.status in (204, 304):
                self._finish()
        elif self.status in (204, 304) or 100 <= self.status < 200:
            self._finish()
        else:
            self._mode, self.keep_alive = "close", False
        return True

    def _chunked(self, data: bytes) -> None:
        if self._buf:
            data, self._buf = self._buf + data, b""
        out: list[bytes] = []
        pos, n = 0, len(data)
        while pos < n:
            if self._crlf:
                skip = min(self._crlf, n - pos)
                pos += skip
                self._crlf -= skip
                continue
            if self._left < 0:  # a size line
                j = data.find(b"\r\n", pos)
                if j < 0:
                    self._buf = data[pos:]
                    if len(self._buf) > 1024:
                        self._abort(UpstreamError("bad_response"))
                    break
                try:
                    size = int(data[pos:j].split(b";", 1)[0], 16)
                except ValueError:
                    self._abort(UpstreamError("bad_response"))
                    return
                pos = j + 2
                if size == 0:  # last chunk (trailers, if any, are ignored)
                    if out and self.sink is not None:
                        self.sink(b"".join(out))
                    self._finish()
                    return
                self._left = size
                continue
            take = data[pos : pos + self._left]
            out.append(take)
            pos += len(take)
            self._left -= len(take)
            if self._left == 0:
                self._left, self._crlf = -1, 2
        if out and self.sink is not None:
            self.sink(out[0] if len(out) == 1 else b"".join(out))

    # ---- completion -----------------------------------------------------------------------------------------------
    def _finish(self) -> None:
        self._mode = "done"
        if self.head is not None and not self.head.done():
            self.head.set_result(None)
        if self.end is not None and not self.end.done():
            self.end.set_result(None)

    def _fail(self, e: UpstreamError) -> None:
        self._mode = "done"
        self.keep_alive = False
        for f in (self.head, self.end):
            if f is not None and not f.done():
                f.set_exception(e)
                f.exception()  # retrieved: no "never retrieved" warning when nobody waits on it

    def _abort(self, e: UpstreamError) -> None:
        self._fail(e)
        self.close()

    def close(self) -> None:
        self.keep_alive = False
        if self.transport is not None and not self.closed:
            self.transport.close()

    @property
    def done(self) -> bool:
        return self._mode == "done"

    def start(self, data: bytes, sink: Callable[[bytes], None] | None) -> None:
        loop = asyncio.get_running_loop()
        self.head, self.end = loop.create_future(), loop.create_future()
        self.sink, self.status, self.headers, self.got_bytes = sink, 0, {}, False
        self._buf, self._mode, self._left, self._crlf = b"", "head", 0, 0
        assert self.transport is not None
        self.transport.write(data)


class UpstreamPool:
    """Idle keep-alive connections per (host, port, tls)."""

    def __init__(self, connect_timeout_s: float, max_idle_per_host: int = 256) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.max_idle = max_idle_per_host
        self._idle: dict[tuple[str, int, bool], list[UpstreamConn]] = {}
        self._ssl: ssl.SSLContext | None = None

    @staticmethod
    def target(base_url: str) -> tuple[str, int, bool, str]:
        u = urlsplit(base_url)
        tls = u.scheme == "https"
        host = u.hostname or "127.0.0.1"
        port = u.port or (443 if tls else 80)
        return host, port, tls, u.path.rstrip("/")

    async def _connect(self, key: tuple[str, int, bool]) -> UpstreamConn:
        loop = asyncio.get_running_loop()
        if key[2] and self._ssl is None:
            self._ssl = ssl.create_default_context()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, proto = await loop.create_connection(UpstreamConn, key[0], key[1], ssl=self._ssl if key[2] else None)
        except TimeoutError:
            raise UpstreamError("connect_timeout") from None
        except OSError:
            raise UpstreamError("connect_error") from None
        return proto

    async def send(
        self, base_url: str, head: bytes, body: bytes, sink: Callable[[bytes], None] | None, first_byte_timeout_s: float
    ) -> UpstreamConn:
        """Send a request (`head` = request line + headers without Host/Content-Length); return once the status
        line and headers are in. The body then flows into `sink`; await `conn.end` for its end."""
        host, port, tls, prefix = self.target(base_url)
        key = (host, port, tls)
        hostport = host if port in (80, 443) else f"{host}:{port}"
        data = head.replace(b" /", b" " + prefix.encode() + b"/", 1) if prefix else head
        data += f"Host: {hostport}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        for _ in range(2):
            idle = self._idle.get(key)
            conn = None
            while idle:
                c = idle.pop()
                if not c.closed:
                    conn, conn.reused = c, True
                    break
            if conn is None:
                conn = await self._connect(key)
            conn.start(data, sink)
            assert conn.head is not None
            try:
                async with asyncio.timeout(first_byte_timeout_s):
                    await conn.head
                return conn
            except TimeoutError:
                conn.close()
                raise UpstreamError("first_byte_timeout") from None
            except UpstreamError:
                conn.close()
                if conn.reused and not conn.got_bytes:
                    continue  # the engine closed an idle connection: once more on a fresh one
                raise
            except BaseException:
                conn.close()
                raise
        raise UpstreamError("connection_reset")

    def release(self, base_url: str, conn: UpstreamConn) -> None:
        """Back to the idle list when the response ended cleanly on a keep-alive connection; else closed."""
        if not (
            conn.done
            and conn.keep_alive
            and not conn.closed
            and conn.end is not None
            and conn.end.done()
            and conn.end.exception() is None
        ):
            conn.close()
            return
        host, port, tls, _ = self.target(base_url)
        idle = self._idle.setdefault((host, port, tls), [])
        if len(idle) < self.max_idle:
            conn.sink = None
            idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        for idle in self._idle.values():
            for c in idle:
                c.close()
        self._idle.clear()
