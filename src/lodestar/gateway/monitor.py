"""Background watchers of every backend: health checks, served models, breaker probes, `/metrics` scraping.

Consumes: the `BackendPool` (it starts two tasks per backend when one is added and stops them when it is removed),
an aiohttp client session of its own, and the router clock.
Produces: health results and breaker probe results for the pool; the backend's served models (from its
`/v1/models`); `Endpoint.metrics` replaced after each scrape by a fresh `EngineMetrics` stamped with the time the
scrape completed (so a policy sees its age); `vllm:cache_config_info` facts copied into the endpoint's labels
(without overriding labels given in config).

All of it is asynchronous and bounded by timeouts; a slow or dead backend delays only its own watcher, never request
handling. A backend that is unhealthy or ejected is scraped only at the health-check pace.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

from lodestar.clock import Clock
from lodestar.gateway.config import GatewayConfig
from lodestar.gateway.engine_metrics import parse_engine_metrics
from lodestar.gateway.pool import Backend, BackendPool

log = logging.getLogger("lodestar.gateway")
_MAX_TICK_S = 0.25  # the health loop re-plans at least this often (a breaker may have opened meanwhile)


class Monitor:
    def __init__(self, pool: BackendPool, cfg: GatewayConfig, clock: Clock) -> None:
        self.pool = pool
        self.cfg = cfg
        self.clock = clock
        self.session: aiohttp.ClientSession | None = None
        self._tasks: dict[str, list[asyncio.Task[None]]] = {}
        self._headers = {"Authorization": f"Bearer {cfg.backend_api_key}"} if cfg.backend_api_key else {}
        pool.on_added.append(self._start)
        pool.on_removed.append(self._stop)

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=60), auto_decompress=True, headers=self._headers
        )
        for b in list(self.pool.backends.values()):
            self._start(b)

    async def first_checks(self, timeout_s: float) -> None:
        """Wait (bounded) until every backend known now has had one health check, so serving starts warm."""
        deadline = self.clock.now() + timeout_s
        while self.clock.now() < deadline and not all(b.checked for b in self.pool.backends.values()):
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        tasks = [t for ts in self._tasks.values() for t in ts]
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    def _start(self, b: Backend) -> None:
        if self.session is None or b.id in self._tasks:
            return
        self._tasks[b.id] = [
            asyncio.create_task(self._health_loop(b), name=f"health:{b.id}"),
            asyncio.create_task(self._scrape_loop(b), name=f"scrape:{b.id}"),
        ]

    def _stop(self, b: Backend) -> None:
        for t in self._tasks.pop(b.id, []):
            t.cancel()

    # ---- health -----------------------------------------------------------------------------------------------
    async def _get(self, b: Backend, path: str, timeout_s: float) -> tuple[int, bytes]:
        assert self.session is not None
        to = aiohttp.ClientTimeout(total=timeout_s)
        async with self.session.get(b.url + path, timeout=to, allow_redirects=False) as r:
            return r.status, await r.read()

    async def check(self, b: Backend) -> bool:
        """One health check (`/health`, or `/v1/models` for engines without it); refreshes models when due."""
        t = self.cfg.health_timeout_s
        try:
            status, _ = await self._get(b, "/health", t)
            ok = status < 300
            need_models = not b.static_models and (
                status == 404 or not b.models or self.clock.now() - b.models_at >= self.cfg.models_refresh_s
            )
            if (ok or status == 404) and need_models:
                mstatus, body = await self._get(b, "/v1/models", t)
                if mstatus < 300:
                    self.pool.set_models(b, _model_cards(body), self.clock.now())
                    ok = True
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            ok = False
        return ok

    async def _health_loop(self, b: Backend) -> None:
        next_check = self.clock.now()
        while not b.removed:
            now = self.clock.now()
            try:
                if self.pool.probe_due(b, now):
                    ok = await self.check(b)
                    self.pool.probe_result(b, ok, self.clock.now())
                    self.pool.health_result(b, ok, self.cfg.unhealthy_after)
                    next_check = self.clock.now() + self.cfg.health_interval_s
                elif now >= next_check:
                    ok = await self.check(b)
                    self.pool.health_result(b, ok, self.cfg.unhealthy_after)
                    next_check = self.clock.now() + self.cfg.health_interval_s
            except asyncio.CancelledError:
                raise
            except Exception:  # never let a watcher die silently
                log.exception("health check error", extra={"endpoint": b.id})
                next_check = self.clock.now() + self.cfg.health_interval_s
            due = next_check if b.open_until is None else min(next_check, b.open_until)
            await asyncio.sleep(max(0.0, min(_MAX_TICK_S, due - self.clock.now())))

    # ---- scraping ---------------------------------------------------------------------------------------------
    async def scrape(self, b: Backend) -> bool:
        try:
            status, body = await self._get(b, "/metrics", self.cfg.scrape_timeout_s)
        except (aiohttp.ClientError, TimeoutError, OSError):
            b.scrape_errors += 1
            return False
        if status >= 300:
            b.scrape_errors += 1
            return False
        s = parse_engine_metrics(body.decode("utf-8", "replace"), self.clock.now())
        b.endpoint.metrics = s.metrics
        for k, v in s.info.items():
            b.endpoint.labels.setdefault(k, v)
        return True

    async def _scrape_loop(self, b: Backend) -> None:
        fails = 0
        while not b.removed:
            t0 = self.clock.now()
            slow = not self.pool.available(b)
            try:
                ok = await self.scrape(b)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scrape error", extra={"endpoint": b.id})
                ok = False
            fails = 0 if ok else fails + 1
            pace = self.cfg.health_interval_s if (slow or fails >= 3) else self.cfg.scrape_interval_s
            await asyncio.sleep(max(0.0, pace - (self.clock.now() - t0)))


def _model_cards(body: bytes) -> list[dict[str, Any]]:
    import json

    try:
        data = json.loads(body)
    except ValueError:
        return []
    items = data.get("data") if isinstance(data, dict) else None
    return [c for c in items if isinstance(c, dict)] if isinstance(items, list) else []
