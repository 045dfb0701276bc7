"""The gateway end to end, over real sockets on 127.0.0.1, in front of small fake engines started by each test."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import numpy as np

from lodestar.cluster_view import ClusterView
from lodestar.gateway.testing import FakeBackend, FakeSettings, running_gateway
from lodestar.policies.base import Policy
from lodestar.request import RequestInfo


class Recorder(Policy):
    """Picks the first candidate by id (or the preferred one when it is a candidate); records every callback."""

    name = "recorder"

    def __init__(self, prefer: str | None = None) -> None:
        super().__init__()
        self.prefer = prefer
        self.events: list[tuple[Any, ...]] = []
        self.views: list[ClusterView] = []

    def choose(self, req: RequestInfo, view: ClusterView) -> str:
        self.views.append(view)
        ids = sorted(view.ids())
        return self.prefer if self.prefer in ids else ids[0]

    def on_dispatch(self, req, endpoint_id, now):
        self.events.append(("dispatch", req.id, endpoint_id))

    def on_first_token(self, req, endpoint_id, now, ttft_s):
        self.events.append(("first", req.id, endpoint_id, ttft_s))

    def on_complete(self, req, endpoint_id, now, e2e_s, output_tokens):
        self.events.append(("complete", req.id, endpoint_id, e2e_s, output_tokens))

    def on_failure(self, req, endpoint_id, now):
        self.events.append(("failure", req.id, endpoint_id))

    def kinds(self) -> list[str]:
        return [e[0] for e in self.events]


def run(coro: Any, timeout: float = 20.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def base(gw: Any) -> str:
    return f"http://127.0.0.1:{gw.port}"


async def post(s: aiohttp.ClientSession, url: str, body: Any, **kw: Any) -> tuple[int, Any, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with s.post(url, data=data, headers={"Content-Type": "application/json", **kw.pop("headers", {})}, **kw) as r:
        raw = await r.read()
        try:
            return r.status, json.loads(raw), r.headers
        except ValueError:
            return r.status, raw.decode(), r.headers


def events(text: str) -> list[Any]:
    out = []
    for ev in text.split("\n\n"):
        if ev.startswith("data: "):
            d = ev[6:]
            out.append(d if d == "[DONE]" else json.loads(d))
    return out


def test_stream_passthrough_usage_and_callbacks():
    async def go():
        pol = Recorder()
        async with running_gateway([FakeSettings(tokens=4, ttft_s=0.05)], policy=pol) as (gw, fakes):
            async with aiohttp.ClientSession() as s:
                req = {"model": "fake-model", "prompt": "hello", "stream": True}
                async with s.post(base(gw) + "/v1/completions", json=req) as r:
                    assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
                    evs = events(await r.text())
                assert [e["choices"][0]["text"] for e in evs[:-1]] == [" tok"] * 4 and evs[-1] == "[DONE]"
                sent = fakes[0].requests[-1]
                assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
                req["stream_options"] = {"include_usage": True}  # the client asks for usage: it gets it
                async with s.post(base(gw) + "/v1/completions", json=req) as r:
                    evs = events(await r.text())
                assert evs[-2]["usage"]["completion_tokens"] == 4 and evs[-2]["choices"] == []
            assert pol.kinds() == ["dispatch", "first", "complete"] * 2
            first, complete = pol.events[1], pol.events[2]
            assert 0.05 <= first[3] < 1.0 and complete[3] >= first[3] and complete[4] == 4
            b = gw.book.endpoints["e0"].book
            assert (b.in_flight, b.completed_total, b.awaiting_first_token) == (0, 2, 0)

    run(go())


def test_non_stream_is_streamed_upstream_and_aggregated():
    async def go():
        pol = Recorder()
        async with running_gateway([FakeSettings(tokens=3, ttft_s=0.05)], policy=pol) as (gw, fakes):
            async with aiohttp.ClientSession() as s:
                st, body, h = await post(
                    s,
                    base(gw) + "/v1/chat/completions",
                    {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]},
                )
                assert st == 200 and h["x-lodestar-endpoint"] == "e0"
                assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] == " tok" * 3
                assert body["usage"]["completion_tokens"] == 3 and body["choices"][0]["finish_reason"] == "length"
                st, body, _ = await post(s, base(gw) + "/v1/completions", {"model": "fake-model", "prompt": "x"})
                assert st == 200 and body["choices"][0]["text"] == " tok" * 3 and body["object"] == "text_completion"
            assert fakes[0].requests[0]["stream"] is True
            ttfts = [e[3] for e in pol.events if e[0] == "first"]
            assert len(ttfts) == 2 and all(t >= 0.05 for t in ttfts)  # the role chunk did not count

    run(go())


def test_model_routing_and_models_union():
    async def go():
        fakes = [FakeSettings(models=["a"]), FakeSettings(models=["b", "c"])]
        async with running_gateway(fakes) as (gw, _), aiohttp.ClientSession() as s:
            async with s.get(base(gw) + "/v1/models") as r:
                assert [m["id"] for m in (await r.json())["data"]] == ["a", "b", "c"]
            for model, eid in [("a", "e0"), ("b", "e1"), ("c", "e1")] * 3:
                st, _, h = await post(s, base(gw) + "/v1/completions", {"model": model, "prompt": "x"})
                assert st == 200 and h["x-lodestar-endpoint"] == eid
            st, body, _ = await post(s, base(gw) + "/v1/completions", {"model": "zzz", "prompt": "x"})
            assert st == 404 and body["error"]["code"] == "model_not_found"

    run(go())


def test_backend_killed_retried_ejected_and_back():
    async def go():
        pol = Recorder(prefer="e0")
        async with running_gateway(2, policy=pol, breaker_failures=1, breaker_open_s=0.2) as (gw, fakes):  # noqa: SIM117
            async with aiohttp.ClientSession() as s:
                url = base(gw) + "/v1/completions"
                assert (await post(s, url, {"prompt": "x"}))[2]["x-lodestar-endpoint"] == "e0"
                port = fakes[0].port
                await fakes[0].stop()
                for _ in range(5):  # connection refused on e0 -> retried on e1; then e0 is ejected
                    st, _, h = await post(s, url, {"prompt": "x", "stream": True})
                    assert st == 200 and h["x-lodestar-endpoint"] == "e1"
                assert gw.pool.backends["e0"].ejections >= 1 and not gw.pool.available(gw.pool.backends["e0"])
                assert ("failure", 2, "e0") in pol.events
                await fakes[0].start(port)  # comes back: health checks and the breaker probe restore it
                for _ in range(100):
                    if gw.pool.available(gw.pool.backends["e0"]):
                        break
                    await asyncio.sleep(0.05)
                assert (await post(s, url, {"prompt": "x"}))[2]["x-lodestar-endpoint"] == "e0"
                async with s.get(base(gw) + "/metrics") as r:
                    text = await r.text()
                assert 'lodestar_gateway_retries_total{reason="connect_error"}' in text
                assert 'lodestar_gateway_ejections_total{endpoint="e0"}' in text

    run(go())


def test_slow_first_byte_times_out_and_retries():
    async def go():
        pol = Recorder(prefer="e0")
        fakes = [FakeSettings(header_delay_s=3.0), FakeSettings()]
        async with running_gateway(fakes, policy=pol, first_byte_timeout_s=0.2) as (gw, _):
            async with aiohttp.ClientSession() as s:
                st, _body, h = await post(s, base(gw) + "/v1/completions", {"prompt": "x"})
                assert st == 200 and h["x-lodestar-endpoint"] == "e1"
            assert pol.kinds()[:3] == ["dispatch", "failure", "dispatch"]

    run(go())


def test_all_attempts_fail_and_engine_errors():
    async def go():
        async with running_gateway([FakeSettings(fail_status=503), FakeSettings(fail_status=400)]) as (gw, _):  # noqa: SIM117
            async with aiohttp.ClientSession() as s:
                pol = gw.policy
                st, body, h = await post(s, base(gw) + "/v1/completions", {"prompt": "x"})
                # least-request starts anywhere: a 503 is retried elsewhere; the engine's 400 is relayed as is
                assert st == 400 and body["message"] == "fake failure" and h["x-lodestar-endpoint"] == "e1"
                assert pol.name == "least-request"
        async with running_gateway([FakeSettings(fail_status=503)] * 2, max_retries=1) as (gw, _):  # noqa: SIM117
            async with aiohttp.ClientSession() as s:
                st, body, _ = await post(s, base(gw) + "/v1/completions", {"prompt": "x"})
                assert st == 503 and body["code"] == 503  # the last engine answer is relayed

    run(go())


def test_stream_cut_mid_way_reports_failure():
    async def go():
        pol = Recorder()
        async with running_gateway([FakeSettings(tokens=6, cut_after_tokens=2)], policy=pol) as (gw, _):
            async with aiohttp.ClientSession() as s:
                async with s.post(base(gw) + "/v1/completions", json={"prompt": "x", "stream": True}) as r:
                    evs = events(await r.text())
                assert [e["choices"][0]["text"] for e in evs[:2]] == [" tok", " tok"]
                assert evs[-1]["error"]["code"] == "upstream_stream_error"
                st, body, _ = await post(s, base(gw) + "/v1/completions", {"prompt": "x"})
                assert st == 502 and body["error"]["type"] == "upstream_error"
            assert pol.kinds() == ["dispatch", "first", "failure", "dispatch", "first", "failure"]
            assert gw.book.endpoints["e0"].book.in_flight == 0

    run(go())


def test_client_disconnect_aborts_upstream():
    async def go():
        pol = Recorder()
        async with running_gateway([FakeSettings(tokens=50, token_interval_s=0.05)], policy=pol) as (gw, fakes):
            async with aiohttp.ClientSession() as s:
                r = await s.post(base(gw) + "/v1/completions", json={"prompt": "x", "stream": True})
                await r.content.readline()
                r.close()  # the client goes away after the first token
            for _ in range(100):
                if fakes[0].aborted:
                    break
                await asyncio.sleep(0.02)
            assert fakes[0].aborted == 1 and fakes[0].completed == 0
            assert pol.kinds() == ["dispatch", "first", "failure"]
            assert gw.book.endpoints["e0"].book.in_flight == 0 and gw.metrics.in_flight == 0

    run(go())


def test_bad_input_errors_in_openai_shape():
    async def go():
        async with running_gateway(1, max_body_bytes=4096) as (gw, _), aiohttp.ClientSession() as s:
            url = base(gw) + "/v1/completions"
            for bad in [b"{", b"[]", b'{"prompt": 1}', b'{"model": 5, "prompt": "x"}', b'{"prompt":"x","stream":1}']:
                st, body, _ = await post(s, url, bad)
                assert st == 400 and body["error"]["type"] == "invalid_request_error"
            st, body, _ = await post(s, url, {"prompt": "x" * 5000})
            assert st == 413 and body["error"]["code"] == "request_too_large"

            async def chunks():
                for _ in range(10):
                    yield b" " * 1000

            async with s.post(url, data=chunks()) as r:  # no Content-Length: chunked upload
                assert r.status == 413 and (await r.json())["error"]["code"] == "request_too_large"
            async with s.get(url) as r:
                assert r.status == 405 and "error" in await r.json()
            async with s.get(base(gw) + "/v2/nothing") as r:
                assert r.status == 404 and "error" in await r.json()
            st, body, _ = await post(s, url, {"prompt": "still serving"})
            assert st == 200

    run(go())


def test_overload_429_with_retry_after():
    async def go():
        async with running_gateway([FakeSettings(ttft_s=0.5)], max_concurrency=2, retry_after_s=3) as (gw, _):  # noqa: SIM117
            async with aiohttp.ClientSession() as s:
                url = base(gw) + "/v1/completions"
                res = await asyncio.gather(*[post(s, url, {"prompt": "x"}) for _ in range(5)])
                codes = sorted(r[0] for r in res)
                assert codes == [200, 200, 429, 429, 429]
                rejected = next(r for r in res if r[0] == 429)
                assert rejected[2]["Retry-After"] == "3" and rejected[1]["error"]["type"] == "rate_limit_error"

    run(go())


def test_no_healthy_endpoint_503_and_ready():
    async def go():
        async with running_gateway([FakeSettings(health_status=500)]) as (gw, _), aiohttp.ClientSession() as s:
            async with s.get(base(gw) + "/ready") as r:
                assert r.status == 503
            async with s.get(base(gw) + "/health") as r:
                assert r.status == 200
            st, body, _ = await post(s, base(gw) + "/v1/completions", {"prompt": "x"})
            assert st == 503 and body["error"]["code"] == "no_healthy_endpoint"

    run(go())


def test_client_api_keys():
    async def go():
        async with running_gateway(1, api_keys=["secret-1"]) as (gw, _), aiohttp.ClientSession() as s:
            url = base(gw) + "/v1/completions"
            for h in [{}, {"Authorization": "Bearer nope"}, {"Authorization": "secret-1"}]:
                st, body, _ = await post(s, url, {"prompt": "x"}, headers=h)
                assert st == 401 and body["error"]["type"] == "authentication_error"
            st, _, _ = await post(s, url, {"prompt": "x"}, headers={"Authorization": "Bearer secret-1"})
            assert st == 200
            async with s.get(base(gw) + "/v1/models") as r:
                assert r.status == 401

    run(go())


def test_admin_api_auth_add_remove():
    async def go():
        async with running_gateway(1) as (gw, fakes), aiohttp.ClientSession() as s:  # noqa: SIM117
            async with s.get(base(gw) + "/admin/backends") as r:
                assert r.status == 403  # no admin key configured: disabled
        async with running_gateway(1, admin_key="admin-key-123", api_keys=["client"]) as (gw, fakes):  # noqa: SIM117
            async with aiohttp.ClientSession() as s:
                url = base(gw) + "/admin/backends"
                for h in [{}, {"Authorization": "Bearer client"}, {"Authorization": "Bearer admin-key-12"}]:
                    async with s.get(url, headers=h) as r:
                        assert r.status == 401
                adm = {"Authorization": "Bearer admin-key-123"}
                extra = fakes[0].url  # a second id for the same engine is enough to test the pool
                async with s.post(url, json={"url": extra, "id": "e9", "labels": {"gpu": "l4"}}, headers=adm) as r:
                    assert r.status == 201 and (await r.json())["id"] == "e9"
                async with s.post(url, json={"url": extra, "id": "e9"}, headers=adm) as r:
                    assert r.status == 409
                async with s.post(url, json={"url": "file:///etc"}, headers=adm) as r:
                    assert r.status == 400
                for _ in range(100):
                    if gw.pool.available(gw.pool.backends["e9"]):
                        break
                    await asyncio.sleep(0.02)
                assert sorted(e.id for e in gw.pool.candidates("fake-model")) == ["e0", "e9"]
                async with s.delete(url + "/e0", headers=adm) as r:
                    assert r.status == 200
                async with s.delete(url + "/e0", headers=adm) as r:
                    assert r.status == 404
                async with s.get(url, headers=adm) as r:
                    assert [b["id"] for b in (await r.json())["backends"]] == ["e9"]
                st, _, h = await post(
                    s, base(gw) + "/v1/completions", {"prompt": "x"}, headers={"Authorization": "Bearer client"}
                )
                assert st == 200 and h["x-lodestar-endpoint"] == "e9"

    run(go())


def test_routing_hint_rules():
    async def go():
        pol = Recorder(prefer="e0")
        async with running_gateway(2, policy=pol) as (gw, _), aiohttp.ClientSession() as s:
            st, _, h = await post(
                s, base(gw) + "/v1/completions", {"prompt": "x"}, headers={"x-lodestar-endpoint": "e1"}
            )
            assert st == 200 and h["x-lodestar-endpoint"] == "e0"  # hints disabled: ignored
        async with running_gateway(2, policy=pol, routing_hint_header="x-lodestar-endpoint") as (gw, fakes):  # noqa: SIM117
            async with aiohttp.ClientSession() as s:
                url = base(gw) + "/v1/completions"
                st, _, h = await post(s, url, {"prompt": "x"}, headers={"x-lodestar-endpoint": "e1"})
                assert st == 200 and h["x-lodestar-endpoint"] == "e1"
                for bad in ["http://169.254.169.254/", "127.0.0.1:1", "e7"]:
                    st, body, _ = await post(s, url, {"prompt": "x"}, headers={"x-lodestar-endpoint": bad})
                    assert st == 400 and body["error"]["param"] == "x-lodestar-endpoint"
                fakes[1].s.health_status = 500
                for _ in range(100):
                    if not gw.pool.available(gw.pool.backends["e1"]):
                        break
                    await asyncio.sleep(0.02)
                st, body, _ = await post(s, url, {"prompt": "x"}, headers={"x-lodestar-endpoint": "e1"})
                assert st == 503 and body["error"]["code"] == "endpoint_unavailable"

    run(go())


def test_scrape_staleness_visible_to_policies():
    async def go():
        pol = Recorder()
        fakes = [FakeSettings(), FakeSettings(flavour="sglang")]
        async with running_gateway(fakes, policy=pol, scrape_interval_s=0.02) as (gw, fakes):  # noqa: SIM117
            async with aiohttp.ClientSession() as s:
                await asyncio.sleep(0.1)
                await post(s, base(gw) + "/v1/completions", {"prompt": "x"})
                v = pol.views[-1]
                ages = {e.id: e.metrics.age(v.now) for e in v.endpoints}
                assert all(0 <= a < 0.5 for a in ages.values())
                by_id = {e.id: e for e in v.endpoints}
                assert by_id["e0"].metrics.kv_cache_usage == 0.125 and by_id["e1"].metrics.kv_cache_usage == 0.25
                assert by_id["e0"].labels["num_gpu_blocks"] == "4096"  # vllm:cache_config_info
                fakes[0].s.metrics_extra = "vllm:num_requests_running{oops\n"  # unparsable line: skipped
                await fakes[0].stop()  # metrics (and the engine) disappear: the scrape ages
                await asyncio.sleep(0.4)
                await post(s, base(gw) + "/v1/completions", {"prompt": "x"})
                v = pol.views[-1]
                stale = next(e for e in gw.book.endpoints.values() if e.id == "e0")
                assert stale.metrics.age(v.now) > 0.3
                assert gw.pool.backends["e0"].scrape_errors > 0

    run(go())


def test_learned_policy_live_with_metrics():
    async def go():
        from lodestar.policies.base import build_policy

        pol = build_policy("lodestar", params={"train_interval_s": 0.05, "min_samples": 5})
        async with running_gateway(2, policy=pol) as (gw, _), aiohttp.ClientSession() as s:
            assert pol.inline_training is False
            for i in range(30):
                st, _, _ = await post(
                    s, base(gw) + "/v1/completions", {"prompt": "p" * (50 * i + 10), "stream": i % 2 == 0}
                )
                assert st == 200
            await asyncio.sleep(0.2)
            async with s.get(base(gw) + "/metrics") as r:
                text = await r.text()
            for name in [
                "lodestar_learner_prediction_rel_error",
                "lodestar_learner_exploration_rate",
                'lodestar_gateway_decisions_total{endpoint="e0",policy="lodestar"}',
                "lodestar_gateway_ttft_seconds_bucket",
                "lodestar_gateway_scrape_age_seconds",
                "lodestar_gateway_decision_seconds_count",
                "lodestar_gateway_in_flight",
            ]:
                assert name in text, name
            assert pol.ttft_model.accuracy()["n"] > 0

    run(go())


def test_non_stream_forwarded_as_is_when_configured():
    async def go():
        pol = Recorder()
        async with running_gateway([FakeSettings(tokens=3)], policy=pol, stream_upstream=False) as (gw, fakes):
            async with aiohttp.ClientSession() as s:
                st, body, _ = await post(s, base(gw) + "/v1/completions", {"prompt": "x"})
            assert st == 200 and body["choices"][0]["text"] == " tok" * 3 and "stream" not in fakes[0].requests[0]
            assert pol.kinds() == ["dispatch", "complete"] and pol.events[1][4] == 3  # no TTFT: E2E only

    run(go())


def test_kubernetes_discovery_end_to_end():
    from aiohttp import web

    async def go():
        fake = FakeBackend(FakeSettings(models=["k8s-model"]))
        await fake.start()
        pod = {
            "metadata": {"name": "vllm-0", "labels": {"gpu": "a100"}},
            "status": {"phase": "Running", "podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
        }

        async def pods(request: web.Request) -> web.StreamResponse:
            if request.query.get("watch") != "true":
                return web.json_response({"metadata": {"resourceVersion": "1"}, "items": [pod]})
            resp = web.StreamResponse()
            await resp.prepare(request)
            await asyncio.sleep(0.3)  # an empty watch that ends; the gateway re-watches
            return resp

        app = web.Application()
        app.router.add_get("/api/v1/namespaces/{ns}/pods", pods)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        k8s = {
            "label_selector": "app=vllm",
            "port": fake.port,
            "api_server": f"http://127.0.0.1:{runner.addresses[0][1]}",
            "token_path": "/nonexistent",
            "ca_path": None,
        }
        try:
            async with running_gateway(0, kubernetes=k8s) as (gw, _), aiohttp.ClientSession() as s:
                for _ in range(200):
                    if gw.pool.candidates("k8s-model"):
                        break
                    await asyncio.sleep(0.02)
                st, _, h = await post(s, base(gw) + "/v1/completions", {"model": "k8s-model", "prompt": "x"})
                assert st == 200 and h["x-lodestar-endpoint"] == "vllm-0"
                assert gw.pool.backends["vllm-0"].endpoint.labels["gpu"] == "a100"
        finally:
            await runner.cleanup()
            await fake.stop()

    run(go())


def test_learned_model_saved_periodically_and_at_shutdown_then_warm_starts(tmp_path):
    """With `model_path`, the live learner's model is written while serving and at shutdown, and the next gateway
    starts from it (no cold start)."""
    from lodestar.policies.base import build_policy

    path = tmp_path / "state" / "model.npz"

    def learner() -> Any:
        return build_policy("lodestar", params={"model_path": str(path), "train_interval_s": 0.05, "min_samples": 5})

    async def go():
        pol = learner()
        assert not pol.ready  # nothing saved yet: cold start
        fakes = [FakeSettings(tokens=2, ttft_s=0.01)] * 2
        async with running_gateway(fakes, policy=pol, model_save_interval_s=0.2) as (gw, _):
            async with aiohttp.ClientSession() as s:
                req = {"model": "fake-model", "prompt": "x" * 200}
                for _ in range(20):
                    st, _b, _h = await post(s, base(gw) + "/v1/completions", req)
                    assert st == 200
            for _ in range(40):  # a periodic save while serving
                if path.exists():
                    break
                await asyncio.sleep(0.05)
            assert path.exists()
            saved_at = path.stat().st_mtime_ns
            n_before = int(pol.ttft_model.n_obs.sum() > 0)
        assert path.stat().st_mtime_ns >= saved_at and n_before == 1  # and once more at shutdown
        assert not list(path.parent.glob("*.tmp"))
        warm = learner()
        assert warm.ready and set(warm.ttft_model.rows) == {"e0", "e1"}
        np.testing.assert_allclose(warm.ttft_model.theta, pol.ttft_model.theta)

    run(go())
