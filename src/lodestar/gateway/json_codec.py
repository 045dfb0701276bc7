"""JSON on the request path: orjson's speed with exactly Python's `json` acceptance.

Consumes: JSON bytes (client bodies, engine events) or Python objects parsed from JSON.
Produces: the parsed object, or a `ValueError` (`RecursionError` for absurd nesting) exactly when Python's `json`
would refuse the input; JSON bytes for an object parsed from `source`, meaning what `json.dumps` would mean.

orjson is 3-5x faster than `json` on these small documents, but it differs at the edges: it refuses `NaN`/`Infinity`
and lone UTF-16 surrogates, which Python's `json` (and so the Python servers the gateway fronts: vLLM, SGLang)
accepts, and depending on its version it refuses integers beyond 64 bits or turns them into floats. So a document
orjson refuses is parsed again with `json`, and one with a run of 19 or more digits (where a 64-bit integer could
be exceeded) goes straight to `json`: the gateway accepts exactly what the engines accept, with the same values.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_LONG_DIGITS = re.compile(rb"[0-9]{19}")
_LONG_DIGITS_STR = re.compile(r"[0-9]{19}")


def loads(data: bytes | str) -> Any:
    long_digits = _LONG_DIGITS.search(data) if isinstance(data, bytes) else _LONG_DIGITS_STR.search(data)
    if long_digits is None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


def dumps(obj: Any, source: bytes) -> bytes:
    """`obj`, parsed from the JSON `source` and perhaps changed, as JSON. orjson writes non-finite floats as `null`:
    when `source` may hold them (`NaN`, `Infinity`), `json` writes them as it read them."""
    if b"NaN" not in source and b"Infinity" not in source:
        try:
            return orjson.dumps(obj)
        except TypeError:  # lone surrogates, integers beyond 64 bits
            pass
    return json.dumps(obj).encode()  # ASCII escapes: safe for any string
