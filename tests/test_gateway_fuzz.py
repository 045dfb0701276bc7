"""Property-based fuzzing of the gateway over HTTP: no request body, header or path may get a 5xx from the
gateway itself (a healthy fake engine sits behind it), and the gateway keeps serving afterwards."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lodestar.gateway.testing import FakeSettings, running_gateway


@pytest.fixture(scope="module")
def gateway_port() -> Iterator[int]:
    """A gateway and one fake engine running on a background event loop for the whole module."""
    ready = threading.Event()
    stop: dict[str, Any] = {}
    port: list[int] = []

    async def main() -> None:
        stop["event"] = asyncio.Event()
        stop["loop"] = asyncio.get_running_loop()
        async with running_gateway([FakeSettings(tokens=2)], max_body_bytes=65536, routing_hint_header="x-hint") as (
            gw,
            _,
        ):
            port.append(gw.port)
            ready.set()
            await stop["event"].wait()

    t = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    t.start()
    assert ready.wait(20)
    yield port[0]
    stop["loop"].call_soon_threadsafe(stop["event"].set)
    t.join(20)


def request(port: int, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request(method, path, body=body, headers=headers)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=40),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
    max_leaves=25,
)
fields = st.sampled_from(
    [
        "model",
        "prompt",
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "n",
        "max_completion_tokens",
        "temperature",
        "role",
        "content",
    ]
)
bodies = st.one_of(
    st.dictionaries(fields, json_values, max_size=6).map(lambda d: json.dumps(d).encode()),
    st.fixed_dictionaries(
        {"model": st.just("fake-model"), "prompt": st.text(max_size=300)},
        optional={"stream": st.booleans(), "max_tokens": st.integers(0, 5)},
    ).map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=300),
)
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=bodies,
    path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]),
    hint=header_values,
    ctype=st.sampled_from(["application/json", "text/plain", ""]),
)
def test_fuzz_no_5xx(gateway_port: int, body: bytes, path: str, hint: str, ctype: str) -> None:
    headers = {"x-hint": hint} if hint else {}
    if ctype:
        headers["Content-Type"] = ctype
    status, raw = request(gateway_port, "POST", path, body, headers)
    assert status < 500, raw[:300]
    if status >= 400:
        assert "error" in json.loads(raw)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=30),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
)
def test_fuzz_paths_and_methods(gateway_port: int, path: str, method: str) -> None:
    status, _ = request(gateway_port, method, "/" + path.lstrip("/"), b"{}", {"Content-Type": "application/json"})
    assert status < 500 or status == 503  # /ready says 503 only when no endpoint is healthy


def test_still_serving_after_fuzz(gateway_port: int) -> None:
    status, raw = request(gateway_port, "POST", "/v1/completions", b'{"prompt": "ok"}', {})
    assert status == 200 and json.loads(raw)["choices"][0]["text"] == " tok tok"
