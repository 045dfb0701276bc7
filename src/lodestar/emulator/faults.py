"""Fault injection settings of an emulated engine, from command-line flags or the `/admin/faults` endpoint.

Consumes: a JSON object (POST /admin/faults) or the flags of `lodestar emulate`. Produces: a validated `FaultUpdate`
that the server applies, and the current state as JSON (GET /admin/faults). Faults:

- `slowdown` (factor > 0): every modelled step lasts `factor` times longer (on top of the time scale); 1 = none.
- `error_rate` (0..1): that fraction of completion requests is answered `500` with an OpenAI error body before
  any byte of a response is sent (drawn from a seeded generator: reproducible).
- `stall_s` (> 0): the engine starts no step for that many seconds (the step in progress finishes; requests
  queue; the HTTP server, /metrics and /health keep answering, like a hung GPU behind a live API server).
- `crash`: `"close"` closes the listener and drops every open connection, and the engine loses every request
  (a dead server: connection refused); `restart_after_s` reopens it that much later, as a freshly restarted
  engine (empty KV cache, counters from zero). `"exit"` ends the process (exit status 1) -- only for a
  stand-alone `lodestar emulate`.
- `recover`: clears slowdown, error rate and stall, and restarts a crashed engine at once (through the Python
  API; a closed listener cannot receive the request).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from lodestar.errors import UserError

CRASH_MODES = ("close", "exit")
_KEYS = ("slowdown", "error_rate", "stall_s", "crash", "restart_after_s", "recover")


@dataclass(frozen=True, slots=True)
class FaultUpdate:
    slowdown: float | None = None
    error_rate: float | None = None
    stall_s: float | None = None
    crash: str | None = None
    restart_after_s: float | None = None
    recover: bool = False


def _number(data: dict[str, Any], key: str, lo: float, hi: float | None, lo_open: bool) -> float | None:
    v = data.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise UserError(f"{key}: expected a number, got {v!r}")
    ok = (v > lo if lo_open else v >= lo) and (hi is None or v <= hi)
    if not ok:
        rng = f"{'(' if lo_open else '['}{lo:g}, {'inf)' if hi is None else f'{hi:g}]'}"
        raise UserError(f"{key}: expected a value in {rng}, got {v!r}")
    return float(v)


def parse_update(data: Any) -> FaultUpdate:
    """Validate an admin request body; `UserError` (-> HTTP 400) names the bad key."""
    if not isinstance(data, dict):
        raise UserError('expected a JSON object like {"slowdown": 3.0}')
    unknown = [k for k in data if k not in _KEYS]
    if unknown:
        raise UserError(f"unknown key {unknown[0]!r}; expected some of: {', '.join(_KEYS)}")
    crash = data.get("crash")
    if crash is True:
        crash = "close"
    if crash is False:
        crash = None
    if crash is not None and crash not in CRASH_MODES:
        raise UserError(f"crash: expected one of {', '.join(CRASH_MODES)} (or true), got {crash!r}")
    recover = data.get("recover", False)
    if not isinstance(recover, bool):
        raise UserError(f"recover: expected true or false, got {recover!r}")
    return FaultUpdate(
        slowdown=_number(data, "slowdown", 0.0, None, True),
        error_rate=_number(data, "error_rate", 0.0, 1.0, False),
        stall_s=_number(data, "stall_s", 0.0, None, True),
        crash=crash,
        restart_after_s=_number(data, "restart_after_s", 0.0, None, False),
        recover=recover,
    )


class ErrorDraw:
    """Seeded Bernoulli draws for the error rate."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self.rate = 0.0

    def __call__(self) -> bool:
        return self.rate > 0 and self._rng.random() < self.rate
