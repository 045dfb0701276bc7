"""The request path's JSON codec accepts exactly what Python's json accepts (and so what vLLM/SGLang accept)."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from lodestar.gateway import json_codec

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def _same(text: str | bytes) -> None:
    try:
        want = json.loads(text)
    except (ValueError, RecursionError) as e:
        try:
            json_codec.loads(text)
        except (ValueError, RecursionError):
            return
        raise AssertionError(f"accepted what json refuses: {text!r}") from e
    got = json_codec.loads(text)
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)


def test_what_orjson_refuses_but_json_accepts_is_accepted():
    for text in ['{"x": NaN}', '{"x": -Infinity}', '["\\ud800"]', '{"n": 123456789012345678901234567890}']:
        _same(text)
        _same(text.encode())
    assert math.isnan(json_codec.loads('{"x": NaN}')["x"])


def test_dumps_round_trips_what_loads_accepts():
    for text in ['{"p": "caf\\u00e9 \\ud83d\\ude00"}', '["\\udc00 lone"]', '{"n": 123456789012345678901234567890}']:
        obj = json_codec.loads(text)
        assert json.loads(json_codec.dumps(obj, text.encode("utf-8", "surrogatepass"))) == obj


@settings(max_examples=500, deadline=None)
@given(_json_values)
def test_valid_documents_parse_as_json_does(value):
    text = json.dumps(value)
    _same(text)
    _same(text.encode())
    assert json.dumps(json.loads(json_codec.dumps(value, text.encode()))) == text


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40) | st.binary(max_size=40))
def test_arbitrary_input_accepted_or_refused_as_json_does(text):
    _same(text)
