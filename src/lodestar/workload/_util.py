"""Small helpers shared by the workload modules (not public API).

Consumes: pydantic validation errors, names and counters. Produces: one-line `UserError`s, unique segment
keys, and a request list renumbered in arrival order.
"""

from __future__ import annotations

from dataclasses import replace

from pydantic import ValidationError

from lodestar.errors import UserError
from lodestar.prefix import ROOT_KEY, chain_key
from lodestar.request import Request


def user_error_from(where: str, err: ValidationError) -> UserError:
    """Turn the first error of a pydantic validation into a one-line `UserError` naming the key path."""
    first = err.errors()[0]
    loc = ".".join(str(x) for x in first["loc"])
    key = f"{where}.{loc}" if loc else where
    if first["type"] == "extra_forbidden":
        return UserError(f"{key}: unknown key")
    if first["type"] == "value_error":
        return UserError(f"{key}: {first['msg'].removeprefix('Value error, ')}")
    return UserError(f"{key}: {first['msg']} (got {first.get('input')!r})")


def unique_key(namespace: str, n: int) -> int:
    """A segment key for content that belongs to one request only (`namespace` keeps workloads apart)."""
    return chain_key(ROOT_KEY, f"{namespace}/{n}")


def finalize(requests: list[Request]) -> list[Request]:
    """Sort by arrival time (stable) and renumber ids 0..n-1 in that order; returns new `Request` objects."""
    ordered = sorted(requests, key=lambda r: r.arrival_s)
    return [replace(r, id=i) for i, r in enumerate(ordered)]
