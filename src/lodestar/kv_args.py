"""`KEY=VALUE` command-line arguments (policy parameters and the like).

Consumes: the repeated option's strings. Produces: a dict whose values are parsed as JSON when they are JSON
(`3`, `0.5`, `true`, `{"name": "e2e"}`) and kept as strings otherwise; a malformed item is a `UserError` naming the
flag.
"""

from __future__ import annotations

import json
from typing import Any

from lodestar.errors import UserError


def parse_kv(items: list[str] | None, flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"{flag}: expected KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out
