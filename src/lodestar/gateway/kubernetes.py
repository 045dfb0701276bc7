"""Kubernetes discovery (optional): engine pods selected by namespace and label selector, watched.

Consumes: the Kubernetes API server's pod list and watch stream (`GET /api/v1/namespaces/NS/pods?labelSelector=...`,
then `...&watch=true&resourceVersion=RV`), through plain aiohttp: no Kubernetes client library is needed. In a pod it
authenticates with the service-account token and CA (paths in `KubernetesConfig`); `api_server` may point elsewhere
(e.g. `kubectl proxy` on loopback).
Produces: backends in the `BackendPool` (source `kubernetes`, id = pod name, URL `scheme://podIP:port`, labels copied
from the pod's labels listed in `label_keys`): a pod joins when it is Running and Ready with an IP, and leaves when
it stops being ready, is being deleted, or is deleted. A broken watch resumes from the last resource version; an
expired one (410 Gone) relists. The gateway imports this module only when `kubernetes:` is configured.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
from typing import Any
from urllib.parse import quote

import aiohttp

from lodestar.gateway.config import KubernetesConfig
from lodestar.gateway.pool import BackendPool

log = logging.getLogger("lodestar.gateway")
SOURCE = "kubernetes"


class Gone(Exception):
    """The watch's resource version expired: relist."""


def pod_backend(pod: Any, cfg: KubernetesConfig) -> tuple[str, str, dict[str, str]] | None:
    """(endpoint id, URL, labels) of a pod that should receive traffic, else None."""
    if not isinstance(pod, dict):
        return None
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    name, ip = meta.get("name"), status.get("podIP")
    if not name or not ip or meta.get("deletionTimestamp") or status.get("phase") != "Running":
        return None
    conds = status.get("conditions") or []
    if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds if isinstance(c, dict)):
        return None
    host = f"[{ip}]" if ":" in ip else ip
    pod_labels = meta.get("labels") or {}
    labels = {k: str(pod_labels[k]) for k in cfg.label_keys if k in pod_labels}
    return str(name), f"{cfg.scheme}://{host}:{cfg.port}", labels


class KubernetesDiscovery:
    def __init__(self, cfg: KubernetesConfig, pool: BackendPool) -> None:
        self.cfg = cfg
        self.pool = pool
        self.session: aiohttp.ClientSession | None = None
        self.resource_version: str | None = None
        self.synced = asyncio.Event()

    # ---- state changes (pure logic, tested without a server) --------------------------------------------------
    def apply(self, kind: str, pod: Any) -> None:
        """One watch event: ADDED / MODIFIED / DELETED."""
        name = ((pod or {}).get("metadata") or {}).get("name") if isinstance(pod, dict) else None
        if not name:
            return
        want = None if kind == "DELETED" else pod_backend(pod, self.cfg)
        have = self.pool.backends.get(name)
        if have is not None and have.source != SOURCE:
            return  # a static or admin backend with the same id wins
        if want is None:
            if have is not None:
                self.pool.remove(name)
            return
        eid, url, labels = want
        if have is not None and have.url == url:
            return
        if have is not None:
            self.pool.remove(name)
        self.pool.add(eid, url, labels, source=SOURCE)

    def sync(self, pods: list[Any]) -> None:
        """A full list: add what is ready, remove Kubernetes backends that are not in it."""
        names = set()
        for pod in pods:
            self.apply("ADDED", pod)
            if pod_backend(pod, self.cfg) is not None:
                names.add(pod["metadata"]["name"])
        for eid, b in list(self.pool.backends.items()):
            if b.source == SOURCE and eid not in names:
                self.pool.remove(eid)

    # ---- API server -------------------------------------------------------------------------------------------
    def _base(self) -> str:
        if self.cfg.api_server:
            return self.cfg.api_server.rstrip("/")
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise RuntimeError("kubernetes: no api_server configured and not running in a cluster")
        return f"https://{host}:{port}"

    def _headers(self) -> dict[str, str]:
        try:
            with open(self.cfg.token_path) as f:  # re-read: projected tokens rotate
                return {"Authorization": f"Bearer {f.read().strip()}"}
        except OSError:
            return {}

    def _ssl(self) -> ssl.SSLContext | bool:
        if self.cfg.ca_path and os.path.exists(self.cfg.ca_path):
            return ssl.create_default_context(cafile=self.cfg.ca_path)
        return True

    def _url(self, watch: bool) -> str:
        q = f"labelSelector={quote(self.cfg.label_selector)}"
        if watch:
            q += f"&watch=true&allowWatchBookmarks=true&timeoutSeconds=300&resourceVersion={self.resource_version}"
        return f"{self._base()}/api/v1/namespaces/{quote(self.cfg.namespace)}/pods?{q}"

    async def list_pods(self) -> None:
        assert self.session is not None
        async with self.session.get(self._url(False), headers=self._headers(), ssl=self._ssl()) as r:
            r.raise_for_status()
            data = await r.json(content_type=None)
        self.resource_version = (data.get("metadata") or {}).get("resourceVersion")
        self.sync(data.get("items") or [])
        self.synced.set()

    async def watch(self) -> None:
        """Follow the watch stream until it ends (server timeout) or breaks; Gone when the version expired."""
        assert self.session is not None
        timeout = aiohttp.ClientTimeout(total=None, sock_read=330)
        async with self.session.get(self._url(True), headers=self._headers(), ssl=self._ssl(), timeout=timeout) as r:
            if r.status == 410:
                raise Gone()
            r.raise_for_status()
            async for line in r.content:
                if not line.strip():
                    continue
                ev = json.loads(line)
                kind, obj = ev.get("type"), ev.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone()
                    raise RuntimeError(f"watch error: {obj.get('message')}")
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if rv:
                    self.resource_version = rv
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self.apply(kind, obj)

    async def run(self, max_backoff_s: float = 30.0) -> None:
        self.session = aiohttp.ClientSession(read_bufsize=2**20)  # pod objects can be large lines
        backoff = 0.5
        relist = True
        while True:
            try:
                if relist:
                    await self.list_pods()
                    relist = False
                await self.watch()
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Gone:
                relist = True
            except Exception as e:  # API server down, network, bad data: keep the current pool, retry later
                log.warning("kubernetes discovery error", extra={"error": str(e)[:200], "retry_in_s": backoff})
                relist = relist or self.resource_version is None
                await asyncio.sleep(backoff)
                backoff = min(max_backoff_s, backoff * 2)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
