"""The admin API: list, add and remove backends at runtime; read the policy's diagnostics.

Consumes: HTTP requests carrying `Authorization: Bearer <admin_key>` (a key separate from the client keys; without
`admin_key` configured the admin API answers 403 to everyone).
Produces: changes to the gateway's `BackendPool` (a removed backend leaves the candidate set at once; its requests in
flight finish; the policy gets `on_endpoint_removed`) and JSON descriptions of the pool.

Routes:
    GET    /admin/backends            every backend: url, source, models, health, breaker, in flight, scrape age
    POST   /admin/backends            {"url": ..., "id": optional, "labels": {...}, "models": [...]} -> 201
    DELETE /admin/backends/{id}       -> 200, or 404 when unknown
    GET    /admin/policy              the policy name and, for a learning policy, its diagnostics
"""

from __future__ import annotations

import hmac
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import ValidationError

from lodestar.gateway.config import BackendSpec
from lodestar.gateway.parse import ClientError
from lodestar.gateway.proxy import error_response

if TYPE_CHECKING:
    from lodestar.gateway.app import Gateway


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(data, default=str).encode(), status=status, content_type="application/json")


def add_admin_routes(app: web.Application, gw: Gateway) -> None:
    key = gw.cfg.admin_key.encode() if gw.cfg.admin_key else None

    def denied(request: web.Request) -> web.Response | None:
        if key is None:
            return error_response(
                ClientError(403, "the admin API is disabled (no admin_key configured)", etype="permission_error")
            )
        h = request.headers.get("Authorization", "")
        tok = h[7:].strip().encode() if h.startswith("Bearer ") else b""
        if not hmac.compare_digest(tok, key):
            return error_response(
                ClientError(401, "invalid or missing admin key", code="invalid_admin_key", etype="authentication_error")
            )
        return None

    def describe(b: Any) -> dict[str, Any]:
        now = gw.clock.now()
        m = b.endpoint.metrics
        return {
            "id": b.id,
            "url": b.url,
            "source": b.source,
            "labels": b.endpoint.labels,
            "models": sorted(b.models),
            "healthy": b.healthy,
            "available": gw.pool.available(b),
            "ejected": b.open_until is not None,
            "ejections": b.ejections,
            "in_flight": b.endpoint.book.in_flight,
            "scrape_age_s": None if m is None else round(m.age(now), 4),
            "scrape_errors": b.scrape_errors,
        }

    async def list_backends(request: web.Request) -> web.Response:
        return denied(request) or _json({"backends": [describe(b) for b in gw.pool.backends.values()]})

    async def add_backend(request: web.Request) -> web.Response:
        if (d := denied(request)) is not None:
            return d
        try:
            spec = BackendSpec(**json.loads(await request.read()))
        except (ValueError, TypeError) as e:
            msg = e.errors()[0]["msg"] if isinstance(e, ValidationError) else "body must be a JSON object"
            return error_response(ClientError(400, f"bad backend: {msg}"))
        eid = spec.endpoint_id()
        if eid in gw.pool.backends:
            return error_response(ClientError(409, f"endpoint id {eid!r} already exists", code="conflict"))
        b = gw.pool.add(eid, spec.url, spec.labels, spec.models, source="admin")
        return _json(describe(b), status=201)

    async def remove_backend(request: web.Request) -> web.Response:
        if (d := denied(request)) is not None:
            return d
        eid = request.match_info["id"]
        if gw.pool.remove(eid) is None:
            return error_response(ClientError(404, f"no endpoint {eid!r}", code="not_found"))
        return _json({"removed": eid})

    async def policy(request: web.Request) -> web.Response:
        if (d := denied(request)) is not None:
            return d
        out: dict[str, Any] = {"policy": gw.policy.name}
        diag = getattr(gw.policy, "diagnostics", None)
        if callable(diag):
            out["diagnostics"] = diag()
        return _json(out)

    app.router.add_get("/admin/backends", list_backends)
    app.router.add_post("/admin/backends", add_backend)
    app.router.add_delete("/admin/backends/{id}", remove_backend)
    app.router.add_get("/admin/policy", policy)
