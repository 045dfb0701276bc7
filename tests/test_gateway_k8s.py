"""Kubernetes discovery against a fake API server on loopback (list + watch stream), and its pure pod logic."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from lodestar.cluster_view import RouterBookkeeping
from lodestar.gateway.config import KubernetesConfig
from lodestar.gateway.kubernetes import KubernetesDiscovery, pod_backend
from lodestar.gateway.pool import BackendPool


def pod(
    name: str,
    ip: str | None = "10.0.0.1",
    ready: bool = True,
    phase: str = "Running",
    rv: str = "1",
    deleting: bool = False,
    gpu: str = "h100",
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "resourceVersion": rv, "labels": {"app": "vllm", "gpu": gpu, "x": "y"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "status": {
            "phase": phase,
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


CFG = KubernetesConfig(
    namespace="ns",
    label_selector="app=vllm",
    port=8000,
    api_server="http://127.0.0.1:1",
    token_path="/nonexistent",
    ca_path=None,
)


def test_pod_backend_rules():
    assert pod_backend(pod("a"), CFG) == ("a", "http://10.0.0.1:8000", {"gpu": "h100"})
    assert pod_backend(pod("a", ip="fd00::1"), CFG)[1] == "http://[fd00::1]:8000"
    for bad in [pod("a", ready=False), pod("a", ip=None), pod("a", phase="Pending"), pod("a", deleting=True), {}, 3]:
        assert pod_backend(bad, CFG) is None


def test_apply_and_sync_events():
    pool = BackendPool(RouterBookkeeping())
    pool.add("static", "http://127.0.0.1:9", source="static")
    d = KubernetesDiscovery(CFG, pool)
    d.sync([pod("a"), pod("b", ready=False)])
    assert sorted(pool.backends) == ["a", "static"] and pool.backends["a"].endpoint.labels == {"gpu": "h100"}
    d.apply("MODIFIED", pod("b", ip="10.0.0.2"))
    d.apply("MODIFIED", pod("a", ip="10.0.0.3"))  # new IP: replaced
    assert pool.backends["a"].url == "http://10.0.0.3:8000" and "b" in pool.backends
    d.apply("MODIFIED", pod("b", ready=False))
    d.apply("DELETED", pod("static"))  # never touches a backend it does not own
    assert sorted(pool.backends) == ["a", "static"]
    d.sync([pod("c")])
    assert sorted(pool.backends) == ["c", "static"]


def test_list_watch_against_fake_api_server():
    async def go() -> None:
        lists: list[str] = []
        watches: list[str] = []
        gone_once = {"sent": False}

        async def pods(request: web.Request) -> web.StreamResponse:
            assert request.query["labelSelector"] == "app=vllm" and request.match_info["ns"] == "ns"
            if request.query.get("watch") != "true":
                lists.append(request.query_string)
                items = [pod("p1", ip="10.1.0.1"), pod("p2", ip="10.1.0.2", ready=False)]
                return web.json_response({"metadata": {"resourceVersion": "10"}, "items": items})
            watches.append(request.query["resourceVersion"])
            resp = web.StreamResponse()
            await resp.prepare(request)
            if not gone_once["sent"]:
                gone_once["sent"] = True
                evs = [
                    {"type": "MODIFIED", "object": pod("p2", ip="10.1.0.2", rv="11")},
                    {"type": "DELETED", "object": pod("p1", rv="12")},
                    {"type": "ERROR", "object": {"code": 410, "message": "too old"}},
                ]
            else:
                evs = [
                    {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "20"}}},
                    {"type": "ADDED", "object": pod("p3", ip="10.1.0.3", rv="21", gpu="l4")},
                ]
            for ev in evs:
                await resp.write(json.dumps(ev).encode() + b"\n")
            await asyncio.sleep(0.05)
            return resp  # the server ends the watch (as on its timeout); the client resumes

        app = web.Application()
        app.router.add_get("/api/v1/namespaces/{ns}/pods", pods)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        pool = BackendPool(RouterBookkeeping())
        d = KubernetesDiscovery(CFG.model_copy(update={"api_server": f"http://127.0.0.1:{port}"}), pool)
        task = asyncio.create_task(d.run(max_backoff_s=0.1))
        try:
            await asyncio.wait_for(d.synced.wait(), 5)
            for _ in range(200):
                if "p3" in pool.backends:
                    break
                await asyncio.sleep(0.01)
            # listed p1; watch: p2 ready, p1 deleted, 410 -> relist (p1 again, p2 not ready) -> watch adds p3
            assert len(lists) >= 2 and watches[0] == "10"
            assert "p3" in pool.backends and pool.backends["p3"].endpoint.labels == {"gpu": "l4"}
            assert pool.backends["p3"].url == "http://10.1.0.3:8000" and pool.backends["p3"].source == "kubernetes"
            assert "20" in watches or d.resource_version in ("20", "21")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await d.close()
            await runner.cleanup()

    asyncio.run(asyncio.wait_for(go(), 20))


def test_discovery_survives_api_server_down():
    async def go() -> None:
        pool = BackendPool(RouterBookkeeping())
        d = KubernetesDiscovery(CFG, pool)  # port 1 on loopback: connection refused
        task = asyncio.create_task(d.run(max_backoff_s=0.05))
        await asyncio.sleep(0.3)
        assert not task.done() and not pool.backends
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await d.close()

    asyncio.run(asyncio.wait_for(go(), 10))
