"""The request path: client request -> policy decision -> upstream request -> response, with outcome callbacks.

Consumes: an aiohttp client request to `/v1/completions` or `/v1/chat/completions`; the pool's candidates for the
requested model; the policy and `RouterBookkeeping`; the router clock.
Produces: the client's response (SSE passed through event by event, or the aggregated JSON for a non-streaming
request), and the outcome callbacks, to the bookkeeping and to the policy, in this order per attempt:
`on_dispatch` when the upstream request is sent; `on_first_token` with TTFT = time from dispatch to the first
content event; `on_complete` with E2E (from dispatch) and the output tokens of the usage block; or `on_failure`
when the attempt fails (connect refused/reset, first-byte timeout, 5xx, stream cut, client disconnect).

Retries: an attempt that fails before the engine's first response byte is retried on another candidate, at most
`max_retries` times. Engine 4xx answers are relayed as they are. A client that disconnects cancels the handler
(aiohttp `handler_cancellation`), which closes the upstream connection, so the engine aborts the request. The
engines are reached with the gateway's own keep-alive client (`lodestar.gateway.upstream`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
from typing import Any

from aiohttp import web

from lodestar.clock import Clock
from lodestar.cluster_view import ClusterView, RouterBookkeeping
from lodestar.gateway import json_codec
from lodestar.gateway.config import GatewayConfig
from lodestar.gateway.observability import GatewayMetrics
from lodestar.gateway.outcomes import Outcomes
from lodestar.gateway.parse import ClientError, ParsedRequest, TokenEstimator, parse_request, upstream_body
from lodestar.gateway.pool import Backend, BackendPool
from lodestar.gateway.sse import Aggregator, StreamObserver
from lodestar.gateway.streaming import ClientGone, collect, stream_to_client
from lodestar.gateway.upstream import EngineClient, EngineConnection, UpstreamError
from lodestar.policies.base import Policy
from lodestar.policies.common import least_in_flight
from lodestar.request import RequestInfo

log = logging.getLogger("lodestar.gateway")
_RETRY_STATUS = (502, 503, 504)
_REQ_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def error_response(e: ClientError) -> web.Response:
    return web.Response(
        status=e.status, body=json.dumps(e.body()).encode(), content_type="application/json", headers=e.headers
    )


class Attempt(Exception):
    """An upstream attempt failed before its first byte (retryable)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Proxy:
    def __init__(
        self,
        cfg: GatewayConfig,
        pool: BackendPool,
        book: RouterBookkeeping,
        policy: Policy,
        clock: Clock,
        metrics: GatewayMetrics,
    ) -> None:
        self.cfg, self.pool, self.book, self.policy, self.clock, self.m = cfg, pool, book, policy, clock, metrics
        self.estimator = TokenEstimator()
        out = Outcomes(cfg, pool, book, policy, clock, metrics, self.estimator)
        self._callback, self._first, self._end = out.callback, out.first, out.end
        self.client: EngineClient | None = None
        self._next_id = 0
        self._keys = [k.encode() for k in cfg.api_keys]
        self._hint = cfg.routing_hint_header
        self._up_headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if cfg.backend_api_key:
            self._up_headers["Authorization"] = f"Bearer {cfg.backend_api_key}"

    async def start(self) -> None:
        self.client = EngineClient(self.cfg.connect_timeout_s, self.cfg.max_connections_per_backend)

    async def close(self) -> None:
        if self.client is not None:
            self.client.close()

    # ---- entry ------------------------------------------------------------------------------------------------
    def authorized(self, request: web.Request) -> bool:
        if not self._keys:
            return True
        h = request.headers.get("Authorization", "")
        if not h.startswith("Bearer "):
            return False
        tok = h[7:].strip().encode()
        ok = False
        for k in self._keys:
            ok |= hmac.compare_digest(tok, k)
        return ok

    async def handle(self, request: web.Request, kind: str) -> web.StreamResponse:
        route = "chat" if kind == "chat" else "completions"
        m = self.m
        if not self.authorized(request):
            resp: web.StreamResponse = error_response(
                ClientError(401, "invalid or missing API key", code="invalid_api_key", etype="authentication_error")
            )
        elif m.in_flight >= self.cfg.max_concurrency:
            resp = error_response(
                ClientError(
                    429,
                    "the gateway is at its concurrency limit; retry later",
                    code="rate_limit_exceeded",
                    etype="rate_limit_error",
                    headers={"Retry-After": str(self.cfg.retry_after_s)},
                )
            )
        else:
            m.in_flight += 1
            try:
                resp = await self._serve(request, kind)
            except ClientError as e:
                resp = error_response(e)
            except ClientGone as e:
                m.request_done(route, 499)
                return e.resp
            except asyncio.CancelledError:
                m.request_done(route, 499)  # client disconnected (nginx's convention)
                raise
            finally:
                m.in_flight -= 1
        m.request_done(route, resp.status)
        return resp

    async def _read(self, request: web.Request) -> bytes:
        limit = self.cfg.max_body_bytes
        too_large = ClientError(413, f"request body larger than {limit} bytes", code="request_too_large")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        try:
            raw = await request.read()  # aiohttp enforces client_max_size (= limit + 1) on chunked bodies too
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None
        if len(raw) > limit:
            raise too_large
        return raw

    def _request_id(self, request: web.Request) -> str:
        rid = request.headers.get("X-Request-Id")
        if rid and _REQ_ID.match(rid):
            return rid
        return f"lodestar-{id(self):x}-{self._next_id:x}"

    # ---- routing ----------------------------------------------------------------------------------------------
    def _choose(self, info: RequestInfo, cands: list[Any], hint: str | None) -> Backend:
        if hint is not None:
            return self.pool.backends[hint]
        view = ClusterView(self.clock.now(), list(cands))
        t0 = self.clock.now()
        try:
            eid = self.policy.choose(info, view)
        except Exception:
            log.exception("policy.choose failed; routing to the least loaded endpoint")
            eid = least_in_flight(self.policy.rng, cands).id
        self.m.decision_latency.observe(self.clock.now() - t0)
        b = self.pool.backends.get(eid)
        if b is None or b.endpoint not in cands:
            log.error("policy returned a non-candidate; routing to the least loaded", extra={"endpoint": eid})
            b = self.pool.backends[least_in_flight(self.policy.rng, cands).id]
        return b

    async def _serve(self, request: web.Request, kind: str) -> web.StreamResponse:
        raw = await self._read(request)
        p = parse_request(
            raw, kind, block_chars=self.cfg.block_chars, max_segments=self.cfg.max_segments, estimator=self.estimator
        )
        if self.cfg.log_bodies:
            log.debug("request body", extra={"body": raw[:65536].decode("utf-8", "replace")})
        hint = request.headers.get(self._hint) if self._hint else None
        if hint is not None and hint not in self.pool.backends:
            raise ClientError(400, f"routing hint names no known endpoint: {hint[:64]!r}", param=self._hint)
        if p.model is not None and not self.pool.known_model(p.model):
            raise ClientError(404, f"the model {p.model[:200]!r} does not exist", param="model", code="model_not_found")
        self._next_id += 1
        info = RequestInfo(
            id=self._next_id,
            arrival_s=self.clock.now(),
            prompt_tokens=p.prompt_tokens,
            segment_keys=p.segment_keys,
            segment_tokens=p.segment_tokens,
            max_tokens=p.max_tokens,
            model=p.model,
        )
        rid = self._request_id(request)
        body = upstream_body(p, raw, self.cfg.stream_upstream)
        path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
        tried: set[str] = set()
        for attempt in range(self.cfg.max_retries + 1):
            cands = self.pool.candidates(p.model)
            if tried:
                cands = [e for e in cands if e.id not in tried]
            if hint is not None and attempt == 0 and all(e.id != hint for e in cands):
                raise ClientError(
                    503,
                    f"endpoint {hint!r} named by the routing hint is not available",
                    etype="service_unavailable",
                    code="endpoint_unavailable",
                )
            if not cands:
                raise ClientError(
                    503,
                    "no healthy endpoint can serve this request" + (" (all attempts failed)" if tried else ""),
                    etype="service_unavailable",
                    code="no_healthy_endpoint",
                    headers={"Retry-After": str(self.cfg.retry_after_s)},
                )
            b = self._choose(info, cands, hint if attempt == 0 else None)
            try:
                return await self._attempt(request, p, info, b, body, path, rid, attempt)
            except Attempt as a:
                tried.add(b.id)
                self.m.retries.labels(reason=a.reason).inc()
                log.warning(
                    "upstream attempt failed",
                    extra={"endpoint": b.id, "reason": a.reason, "request_id": rid, "attempt": attempt},
                )
        raise ClientError(
            502, "every upstream attempt failed before responding", etype="upstream_error", code="upstream_unavailable"
        )

    # ---- one attempt ------------------------------------------------------------------------------------------
    async def _attempt(
        self,
        request: web.Request,
        p: ParsedRequest,
        info: RequestInfo,
        b: Backend,
        body: bytes,
        path: str,
        rid: str,
        attempt: int,
    ) -> web.StreamResponse:
        client = self.client
        assert client is not None
        cfg = self.cfg
        self.m.endpoint(b.id).decisions.inc()
        headers = {**self._up_headers, "X-Request-Id": rid}
        t_disp = self.clock.now()
        self._callback("on_dispatch", info, b.id, t_disp)
        up: EngineConnection | None = None
        ended = False  # an end callback (complete/failure) was sent for this attempt
        try:
            try:
                up = await client.post(b.url + path, body, headers, cfg.first_byte_timeout_s)
            except UpstreamError as e:
                raise Attempt(e.reason) from None
            if up.status in _RETRY_STATUS and attempt < cfg.max_retries:
                raise Attempt(f"status_{up.status}")
            resp: web.StreamResponse
            if up.status != 200 or not up.headers.get("content-type", "").startswith("text/event-stream"):
                resp = await self._relay(up, p, info, b, t_disp)
            else:
                chat = p.kind == "chat"
                obs = StreamObserver(
                    chat, strip_usage=not p.include_usage, aggregator=None if p.stream else Aggregator(chat)
                )
                if p.stream:
                    resp = await self._stream(request, up, obs, p, info, b, t_disp, rid)
                else:
                    resp = await self._aggregate(up, obs, p, info, b, t_disp)
            ended = True
            return resp
        except (ClientError, ClientGone) as e:  # raised after the attempt's end was reported, or the client left
            ended = not isinstance(e, ClientGone)
            raise
        except Attempt:
            self._end(p, info, b, t_disp, ok=False)
            ended = True
            raise
        finally:
            if not ended:  # cancelled (the client went away) or an unexpected error: abort upstream, close the books
                self.m.disconnects.inc()
                self._callback("on_failure", info, b.id, self.clock.now())
            if up is not None:  # kept alive when its body was read to the end; otherwise closed: the engine aborts
                client.release(up)

    async def _relay(
        self, up: EngineConnection, p: ParsedRequest, info: RequestInfo, b: Backend, t_disp: float
    ) -> web.Response:
        """A non-stream answer (an error, or an engine that ignored `stream`): passed on as it is."""
        try:
            data = await collect(up, self.cfg.max_body_bytes * 4, self.cfg.idle_timeout_s)
        except UpstreamError:
            self._end(p, info, b, t_disp, ok=False)
            raise ClientError(
                502, "the engine connection failed while answering", etype="upstream_error", code="upstream_error"
            ) from None
        if up.status >= 500:
            self._end(p, info, b, t_disp, ok=False)
        elif up.status >= 400:  # the engine refused the request: not the endpoint's fault
            self.pool.record_success(b)
            self._callback("on_failure", info, b.id, self.clock.now())
        else:
            tokens = 0
            try:
                u = json_codec.loads(data).get("usage") or {}
                tokens = int(u.get("completion_tokens") or 0)
            except (ValueError, AttributeError, TypeError, RecursionError):
                pass
            self._end(p, info, b, t_disp, ok=True, output_tokens=tokens)
        ctype = up.headers.get("content-type", "application/json").split(";")[0].strip() or "application/json"
        return web.Response(status=up.status, body=data, content_type=ctype, headers={"x-lodestar-endpoint": b.id})

    async def _stream(
        self,
        request: web.Request,
        up: EngineConnection,
        obs: StreamObserver,
        p: ParsedRequest,
        info: RequestInfo,
        b: Backend,
        t_disp: float,
        rid: str,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers=self._sse_headers(rid, b.id))
        resp.enable_chunked_encoding()
        try:
            tail = await stream_to_client(
                request, resp, up, obs, lambda: self._first(obs, info, b, t_disp), self.cfg.idle_timeout_s
            )
        except UpstreamError:
            self._end(p, info, b, t_disp, ok=False)
            err = {
                "error": {
                    "message": "the engine connection failed mid-stream",
                    "type": "upstream_error",
                    "param": None,
                    "code": "upstream_stream_error",
                }
            }
            try:
                await resp.write(b"data: " + json.dumps(err).encode() + b"\n\n")
                await resp.write_eof()
            except (ConnectionError, RuntimeError):
                pass
            return resp
        ok = obs.error is None and (obs.done or obs.first)
        if ok:
            self._first(obs, info, b, t_disp)
        self._end(p, info, b, t_disp, ok=ok, obs=obs)
        with contextlib.suppress(ConnectionError, RuntimeError):  # already reported complete: nothing more to do
            await resp.write_eof(tail)
        return resp

    def _sse_headers(self, rid: str, eid: str) -> dict[str, str]:
        return {
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Request-Id": rid,
            "x-lodestar-endpoint": eid,
        }

    async def _aggregate(
        self,
        up: EngineConnection,
        obs: StreamObserver,
        p: ParsedRequest,
        info: RequestInfo,
        b: Backend,
        t_disp: float,
    ) -> web.Response:
        try:
            await collect(up, 0, self.cfg.idle_timeout_s, obs, lambda: self._first(obs, info, b, t_disp))
        except UpstreamError:
            self._end(p, info, b, t_disp, ok=False)
            raise ClientError(
                502, "the engine connection failed mid-response", etype="upstream_error", code="upstream_stream_error"
            ) from None
        if obs.error is not None:
            self._end(p, info, b, t_disp, ok=False)
            err = obs.error if isinstance(obs.error, dict) else {"message": str(obs.error)}
            return web.json_response({"error": err}, status=502, headers={"x-lodestar-endpoint": b.id})
        self._first(obs, info, b, t_disp)
        self._end(p, info, b, t_disp, ok=True, obs=obs)
        assert obs.aggregator is not None
        body = json.dumps(obs.aggregator.result()).encode()
        return web.Response(body=body, content_type="application/json", headers={"x-lodestar-endpoint": b.id})
