"""The backend pool: which engines exist, which are healthy, which models each serves, and circuit breakers.

Consumes: discovery (static config, the admin API, Kubernetes) adding and removing backends; health-check results
and request outcomes (`record_success` / `record_failure`) from the monitor and the proxy; the router clock.
Produces: per model, the list of candidate `Endpoint`s (healthy, breaker closed, serving that model) that a
`ClusterView` is built from; the `Endpoint` objects are shared with `RouterBookkeeping`, so the view carries the
latest scrape (`Endpoint.metrics`, stamped) and the router's bookkeeping (`Endpoint.book`).

Candidate lists are cached per model and rebuilt only when membership changes (a version counter), so a routing
decision does not scan the pool.

Circuit breaker: `breaker_failures` consecutive request failures (connect refused/reset, first-byte timeout, a 5xx
before any byte, a stream cut mid-way) eject an endpoint for `breaker_open_s`; then the monitor probes its `/health`:
success closes the breaker, failure re-opens it for twice as long (at most `breaker_max_open_s`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lodestar.cluster_view import Endpoint, RouterBookkeeping

log = logging.getLogger("lodestar.gateway")


@dataclass(slots=True)
class Backend:
    id: str
    url: str
    endpoint: Endpoint
    source: str = "static"  # static | admin | kubernetes
    models: frozenset[str] = frozenset()
    model_cards: dict[str, dict[str, Any]] = field(default_factory=dict)
    static_models: bool = False  # models given in config: never overwritten from /v1/models
    healthy: bool = False
    checked: bool = False  # at least one health check done
    health_failures: int = 0
    models_at: float = float("-inf")
    # circuit breaker
    failures: int = 0
    open_until: float | None = None  # set while ejected
    open_s: float = 0.0
    ejections: int = 0
    scrape_errors: int = 0
    removed: bool = False


class BackendPool:
    def __init__(
        self,
        book: RouterBookkeeping,
        *,
        breaker_failures: int = 3,
        breaker_open_s: float = 5.0,
        breaker_max_open_s: float = 60.0,
    ) -> None:
        self.book = book
        self.backends: dict[str, Backend] = {}
        self.breaker_failures = breaker_failures
        self.breaker_open_s = breaker_open_s
        self.breaker_max_open_s = breaker_max_open_s
        self.version = 0
        self._cache: dict[str | None, list[Endpoint]] = {}
        self._cache_version = -1
        self.on_added: list[Callable[[Backend], None]] = []
        self.on_removed: list[Callable[[Backend], None]] = []
        self.on_ejected: list[Callable[[Backend], None]] = []

    # ---- membership -------------------------------------------------------------------------------------------
    def add(
        self,
        eid: str,
        url: str,
        labels: dict[str, str] | None = None,
        models: list[str] | None = None,
        source: str = "static",
    ) -> Backend:
        if eid in self.backends:
            raise KeyError(eid)
        ep = Endpoint(eid, dict(labels or {}))
        b = Backend(eid, url.rstrip("/"), ep, source=source)
        if models:
            b.models, b.static_models = frozenset(models), True
            b.model_cards = {m: {"id": m, "object": "model", "owned_by": "lodestar"} for m in models}
        self.backends[eid] = b
        self.book.add_endpoint(ep)
        self._changed()
        log.info("backend added", extra={"endpoint": eid, "url": url, "source": source})
        for cb in self.on_added:
            cb(b)
        return b

    def remove(self, eid: str) -> Backend | None:
        b = self.backends.pop(eid, None)
        if b is None:
            return None
        b.removed = True
        self.book.remove_endpoint(eid)
        self._changed()
        log.info("backend removed", extra={"endpoint": eid, "source": b.source})
        for cb in self.on_removed:
            cb(b)
        return b

    def _changed(self) -> None:
        self.version += 1

    # ---- candidates -------------------------------------------------------------------------------------------
    def available(self, b: Backend) -> bool:
        return b.healthy and b.open_until is None

    def candidates(self, model: str | None) -> list[Endpoint]:
        """Endpoints that may take a request for `model` now (None: any model). Do not mutate the list."""
        if self._cache_version != self.version:
            self._cache.clear()
            self._cache_version = self.version
        c = self._cache.get(model)
        if c is None:
            c = [
                b.endpoint for b in self.backends.values() if self.available(b) and (model is None or model in b.models)
            ]
            if len(self._cache) < 10000:
                self._cache[model] = c
        return c

    def known_model(self, model: str) -> bool:
        return any(model in b.models for b in self.backends.values())

    def models(self) -> list[dict[str, Any]]:
        """The union of the backends' model cards (first seen wins), sorted by id."""
        cards: dict[str, dict[str, Any]] = {}
        for b in self.backends.values():
            for m, card in b.model_cards.items():
                cards.setdefault(m, card)
        return [cards[m] for m in sorted(cards)]

    def ready(self) -> bool:
        return any(self.available(b) for b in self.backends.values())

    # ---- health -----------------------------------------------------------------------------------------------
    def set_models(self, b: Backend, cards: list[dict[str, Any]], now: float) -> None:
        b.models_at = now
        if b.static_models:
            return
        ids = frozenset(c["id"] for c in cards if isinstance(c, dict) and isinstance(c.get("id"), str))
        if ids != b.models:
            b.models = ids
            b.model_cards = {c["id"]: c for c in cards if isinstance(c, dict) and c.get("id") in ids}
            self._changed()

    def health_result(self, b: Backend, ok: bool, unhealthy_after: int) -> None:
        b.checked = True
        if ok:
            b.health_failures = 0
            if not b.healthy:
                b.healthy = True
                self._changed()
                log.info("backend healthy", extra={"endpoint": b.id})
        else:
            b.health_failures += 1
            if b.healthy and b.health_failures >= unhealthy_after:
                b.healthy = False
                self._changed()
                log.warning("backend unhealthy", extra={"endpoint": b.id, "failures": b.health_failures})

    # ---- circuit breaker --------------------------------------------------------------------------------------
    def record_success(self, b: Backend) -> None:
        b.failures = 0

    def record_failure(self, b: Backend, now: float) -> None:
        b.failures += 1
        if b.open_until is None and b.failures >= self.breaker_failures and not b.removed:
            b.open_s = self.breaker_open_s
            b.open_until = now + b.open_s
            b.ejections += 1
            self._changed()
            log.warning("backend ejected", extra={"endpoint": b.id, "failures": b.failures, "open_s": b.open_s})
            for cb in self.on_ejected:
                cb(b)

    def probe_due(self, b: Backend, now: float) -> bool:
        return b.open_until is not None and now >= b.open_until

    def probe_result(self, b: Backend, ok: bool, now: float) -> None:
        if b.open_until is None:
            return
        if ok:
            b.open_until, b.failures, b.open_s = None, 0, 0.0
            self._changed()
            log.info("backend restored after probe", extra={"endpoint": b.id})
        else:
            b.open_s = min(self.breaker_max_open_s, 2 * b.open_s)
            b.open_until = now + b.open_s
