"""Gateway pieces without sockets: request parsing (with fuzzing), engine metric names, SSE observation and
aggregation, the circuit breaker, configuration and the `serve` command's checks."""

from __future__ import annotations

import json

import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lodestar.cluster_view import RouterBookkeeping
from lodestar.errors import UserError
from lodestar.gateway.cli import register, serve_config
from lodestar.gateway.config import build_config
from lodestar.gateway.engine_metrics import parse_engine_metrics
from lodestar.gateway.parse import ClientError, TokenEstimator, parse_request, upstream_body
from lodestar.gateway.pool import BackendPool
from lodestar.gateway.sse import Aggregator, StreamObserver

# ---- parsing ------------------------------------------------------------------------------------------------------


def test_parse_completion_text_prefix_keys_shared():
    a = parse_request(json.dumps({"model": "m", "prompt": "x" * 200 + "tail A"}).encode(), "completions")
    b = parse_request(json.dumps({"model": "m", "prompt": "x" * 200 + "other B"}).encode(), "completions")
    assert a.model == "m" and not a.stream
    assert a.segment_keys[:3] == b.segment_keys[:3] and a.segment_keys[3] != b.segment_keys[3]
    assert a.prompt_tokens == sum(a.segment_tokens) == round(206 / 4)
    assert a.segment_tokens[0] == 16  # 64 characters ~ 16 tokens


def test_parse_chat_flattening_and_parts():
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x"}}],
            },
            {"role": "assistant", "content": None, "tool_calls": []},
        ],
        "max_completion_tokens": 7,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    p = parse_request(json.dumps(body).encode(), "chat")
    assert p.max_tokens == 7 and p.stream and p.include_usage
    # text_blocks.flatten_chat's lines; the image part is "\x00" + a 16-hex-digit digest of its JSON
    assert p.prompt_chars == len("system: be brief\nuser: hi") + 17 + len("\nassistant: \nassistant: ")


def test_parse_token_ids_exact():
    p = parse_request(json.dumps({"prompt": list(range(40))}).encode(), "completions")
    assert p.exact_tokens and p.prompt_tokens == 40 and p.segment_tokens == (16, 16, 8) and p.model is None


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b'"text"',
        b"\xff\xfe",
        b'{"model": 3, "prompt": "x"}',
        b'{"model": "m"}',
        b'{"model": "m", "prompt": 5}',
        b'{"model": "m", "prompt": [1, "a"]}',
        b'{"model": "m", "prompt": "x", "stream": "yes"}',
        b'{"model": "m", "prompt": "x", "max_tokens": -1}',
        b'{"model": "m", "prompt": "x", "max_tokens": true}',
        b'{"model": "m", "prompt": "x", "stream_options": []}',
    ],
)
def test_parse_rejects_with_400(body):
    with pytest.raises(ClientError) as e:
        parse_request(body, "completions")
    assert e.value.status == 400 and e.value.body()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "messages",
    [None, [], "hi", [1], [{"content": "x"}], [{"role": "u", "content": 3}], [{"role": "u", "content": [1]}]],
)
def test_parse_rejects_bad_messages(messages):
    with pytest.raises(ClientError):
        parse_request(json.dumps({"model": "m", "messages": messages}).encode(), "chat")


def test_upstream_body_asks_for_a_stream_with_usage():
    raw = json.dumps({"model": "m", "prompt": "x"}).encode()
    p = parse_request(raw, "completions")
    up = json.loads(upstream_body(p, raw, True))
    assert up["stream"] is True and up["stream_options"] == {"include_usage": True}
    assert upstream_body(p, raw, False) == raw
    raw2 = json.dumps({"prompt": "x", "stream": True, "stream_options": {"include_usage": True}}).encode()
    assert upstream_body(parse_request(raw2, "completions"), raw2, True) == raw2  # untouched


def test_token_estimator_follows_usage():
    est = TokenEstimator()
    for _ in range(50):
        est.observe("m", 3000, 1000)
    assert est.get("m") == pytest.approx(3.0, rel=0.05) and est.get("other") == 4.0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
    max_leaves=20,
)
keys = st.sampled_from(
    [
        "model",
        "prompt",
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "role",
        "content",
        "max_completion_tokens",
        "type",
        "text",
        "include_usage",
    ]
)
bodies = st.dictionaries(keys, json_values, max_size=6)


@settings(max_examples=300, deadline=None)
@given(body=bodies, kind=st.sampled_from(["completions", "chat"]))
def test_fuzz_parser_only_client_errors(body, kind):
    raw = json.dumps(body).encode()
    try:
        p = parse_request(raw, kind)
    except ClientError as e:
        assert e.status == 400
        return
    assert p.prompt_tokens >= 1 and len(p.segment_keys) == len(p.segment_tokens)
    json.loads(upstream_body(p, raw, True))


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200))
def test_fuzz_parser_raw_bytes(raw):
    try:
        parse_request(raw, "chat")
    except ClientError as e:
        assert e.status == 400


def test_parse_lone_surrogates_and_deep_nesting():
    p = parse_request(b'{"prompt": "\\ud800 x"}', "completions")
    json.loads(upstream_body(p, b"", True))
    with pytest.raises(ClientError):
        parse_request(b"[" * 100000 + b"]" * 100000, "completions")


# ---- engine metrics -----------------------------------------------------------------------------------------------
VLLM = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 1.0
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.25
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1000.0
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 250.0
vllm:prompt_tokens_total{engine="0",model_name="m"} 5000.0
vllm:generation_tokens_total{engine="0",model_name="m"} 7000.0
vllm:num_preemptions_total{engine="0",model_name="m"} 4.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="m"} 9.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 1.25
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 10.0
vllm:num_requests_running_extra 99
vllm:cache_config_info{block_size="16",num_gpu_blocks="2048",enable_prefix_caching="True"} 1.0
"""
SGLANG = """sglang:num_running_reqs{model_name="m"} 8
sglang:num_queue_reqs{model_name="m"} 4
sglang:token_usage{model_name="m"} 0.52
sglang:prompt_tokens_total{model_name="m"} 4096
sglang:cached_tokens_total{model_name="m",cache_source="device"} 3000
sglang:cached_tokens_total{model_name="m",cache_source="host"} 168
sglang:generation_tokens_total{model_name="m"} 100
sglang:num_retracted_requests_total{model_name="m"} 2
sglang:time_to_first_token_seconds_sum{model_name="m"} 4.0
sglang:time_to_first_token_seconds_count{model_name="m"} 8
"""


def test_vllm_metrics_mapped():
    s = parse_engine_metrics(VLLM, scraped_at=12.5)
    m = s.metrics
    assert m.scraped_at == 12.5 and m.age(13.0) == 0.5
    assert m.num_requests_running == 4.0 and m.num_requests_waiting == 2.0 and m.kv_cache_usage == 0.375
    assert (m.prefix_cache_queries, m.prefix_cache_hits, m.prefix_hit_rate()) == (1000.0, 250.0, 0.25)
    assert (m.prompt_tokens_total, m.generation_tokens_total, m.num_preemptions_total) == (5000.0, 7000.0, 4.0)
    assert (m.ttft_sum, m.ttft_count) == (1.25, 10.0)
    assert s.info == {"num_gpu_blocks": "2048", "block_size": "16"}


def test_older_vllm_name_and_sglang_mapped():
    m = parse_engine_metrics('vllm:gpu_cache_usage_perc{model_name="m"} 0.7\n', 1.0).metrics
    assert m.kv_cache_usage == 0.7 and m.num_requests_running is None and m.prefix_cache_queries is None
    g = parse_engine_metrics(SGLANG, 2.0).metrics
    assert (g.num_requests_running, g.num_requests_waiting, g.kv_cache_usage) == (8.0, 4.0, 0.52)
    assert g.prefix_cache_queries == 4096 and g.prefix_cache_hits == 3168
    assert (g.num_preemptions_total, g.ttft_sum, g.ttft_count) == (2.0, 4.0, 8.0)


def test_metrics_garbage_never_raises():
    for text in ["", "garbage", "vllm:num_requests_running{oops 3\nvllm:num_requests_waiting 2\n", "\x00" * 10]:
        s = parse_engine_metrics(text, 0.0)
    assert s.metrics.num_requests_running is None
    assert (
        parse_engine_metrics(
            "vllm:num_requests_running{oops 3\nvllm:num_requests_waiting 2\n", 0.0
        ).metrics.num_requests_waiting
        == 2
    )


# ---- SSE ----------------------------------------------------------------------------------------------------------
def _ev(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def test_observer_split_events_strip_usage_first_token():
    role = _ev({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    tok = _ev({"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]})
    usage = _ev({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}})
    stream = role + tok + usage + b"data: [DONE]\n\n"
    obs = StreamObserver(chat=True, strip_usage=True)
    out = b""
    firsts = []
    for i in range(0, len(stream), 7):  # boundaries anywhere
        out += obs.feed(stream[i : i + 7])
        firsts.append(obs.first)
    out += obs.finish()
    assert out == role + tok + b"data: [DONE]\n\n"
    assert obs.done and obs.usage == {"prompt_tokens": 3, "completion_tokens": 1} and obs.output_tokens() == 1
    assert firsts.index(True) * 7 >= len(role)  # the role-only delta did not count


def test_observer_counts_content_events_without_usage():
    """Without a usage block the output tokens are the content events: [DONE] and the role delta are not counted,
    whether events arrive whole (the pass-through path) or split anywhere."""
    role = _ev({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
    toks = [_ev({"choices": [{"index": 0, "delta": {"content": f"t{i}"}, "finish_reason": None}]}) for i in range(5)]
    stream = [role, *toks, toks[0] + toks[1], b"data: [DONE]\n\n"]  # two events in one chunk, then [DONE]
    for step in (None, 5):
        obs = StreamObserver(chat=True, strip_usage=False)
        raw = b"".join(stream)
        pieces = stream if step is None else [raw[i : i + step] for i in range(0, len(raw), step)]
        out = b"".join(obs.feed(p) for p in pieces) + obs.finish()
        assert out == raw and obs.done and obs.usage is None
        assert obs.output_tokens() == 7, step


def test_aggregator_chat_tools_and_completions():
    agg = Aggregator(chat=True)
    for obj in [
        {"id": "c1", "created": 5, "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant"}}]},
        {"choices": [{"index": 0, "delta": {"content": "a"}}]},
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "id": "t", "function": {"name": "f", "arguments": '{"x"'}}]},
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]},
                    "finish_reason": "tool_calls",
                }
            ]
        },
        {"choices": [], "usage": {"completion_tokens": 3}},
    ]:
        agg.add(obj)
    r = agg.result()
    msg = r["choices"][0]["message"]
    assert r["object"] == "chat.completion" and r["id"] == "c1" and r["usage"] == {"completion_tokens": 3}
    assert msg["content"] == "a" and msg["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"x": 1}'}
    assert r["choices"][0]["finish_reason"] == "tool_calls"
    c = Aggregator(chat=False)
    c.add({"choices": [{"index": 0, "text": "x", "logprobs": {"tokens": ["x"], "token_logprobs": [-1.0]}}]})
    c.add(
        {
            "choices": [
                {
                    "index": 0,
                    "text": "y",
                    "logprobs": {"tokens": ["y"], "token_logprobs": [-2.0]},
                    "finish_reason": "stop",
                }
            ]
        }
    )
    r = c.result()
    assert r["choices"][0]["text"] == "xy" and r["choices"][0]["logprobs"]["tokens"] == ["x", "y"]


# ---- pool and breaker ---------------------------------------------------------------------------------------------
def test_breaker_ejects_and_probes_back():
    pool = BackendPool(RouterBookkeeping(), breaker_failures=2, breaker_open_s=1.0, breaker_max_open_s=3.0)
    b = pool.add("a", "http://127.0.0.1:1", models=["m"])
    pool.add("b", "http://127.0.0.1:2", models=["m", "n"])
    for x in pool.backends.values():
        pool.health_result(x, True, 2)
    assert [e.id for e in pool.candidates("m")] == ["a", "b"] and [e.id for e in pool.candidates("n")] == ["b"]
    pool.record_failure(b, 0.0)
    assert len(pool.candidates("m")) == 2
    pool.record_failure(b, 0.0)
    assert [e.id for e in pool.candidates("m")] == ["b"] and b.ejections == 1
    assert not pool.probe_due(b, 0.5) and pool.probe_due(b, 1.0)
    pool.probe_result(b, False, 1.0)
    assert b.open_until == 3.0  # doubled
    pool.probe_result(b, True, 3.0)
    assert len(pool.candidates("m")) == 2
    pool.health_result(b, False, 2)
    assert len(pool.candidates("m")) == 2  # one failed check is not enough
    pool.health_result(b, False, 2)
    assert [e.id for e in pool.candidates(None)] == ["b"]
    pool.remove("b")
    assert pool.candidates("m") == [] and not pool.known_model("n")


# ---- config and CLI -----------------------------------------------------------------------------------------------
def test_config_file_and_flags(tmp_path):
    f = tmp_path / "gw.yaml"
    f.write_text(
        "port: 9000\npolicy: power-of-two\nbackends:\n  - {url: 'http://127.0.0.1:8001', id: a, labels: {gpu: h100}}\n"
    )
    cfg = serve_config(config=f, backend=["b=http://127.0.0.1:8002"], param=None, api_key=None, policy=None, port=9100)
    assert cfg.port == 9100 and cfg.policy == "power-of-two" and [b.endpoint_id() for b in cfg.backends] == ["a", "b"]
    assert cfg.backends[0].labels == {"gpu": "h100"}


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        ({"backend": None}, "no backends"),
        ({"backend": ["ftp://x"]}, "http://host:port"),
        ({"backend": ["http://127.0.0.1:1"], "policy": "oracle"}, "simulator-only"),
        ({"backend": ["http://127.0.0.1:1"], "policy": "nope"}, "unknown policy"),
        ({"backend": ["http://127.0.0.1:1", "http://127.0.0.1:1"]}, "duplicate"),
        ({"backend": ["http://127.0.0.1:1"], "max_concurrency": 0}, "max_concurrency"),
    ],
)
def test_serve_config_user_errors(flags, needle):
    base = {"config": None, "backend": None, "param": None, "api_key": None, "policy": None}
    with pytest.raises(UserError, match=needle):
        serve_config(**{**base, **flags})


def test_config_keys_from_environment(monkeypatch):
    monkeypatch.setenv("LODESTAR_API_KEYS", "k1, k2")
    monkeypatch.setenv("LODESTAR_ADMIN_KEY", "admin-secret")
    cfg = build_config({}, {"backends": [{"url": "http://127.0.0.1:1"}]})
    assert cfg.api_keys == ["k1", "k2"] and cfg.admin_key == "admin-secret"


def test_register_adds_serve_command():
    app = typer.Typer()
    register(app)

    @app.command("other")
    def other() -> None:
        pass

    r = CliRunner().invoke(app, ["serve", "--policy", "oracle", "--backend", "http://127.0.0.1:1"])
    assert isinstance(r.exception, UserError) and "simulator-only" in str(r.exception)
