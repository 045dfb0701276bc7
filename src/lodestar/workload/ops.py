"""Operations on workloads: slicing, rate scaling, rescaling to a target rate, output caps.

Consumes: a list of `Request` sorted by arrival. Produces: a new list (new `Request` objects, the input is not
modified), sorted by arrival with ids renumbered 0..n-1.
"""

from __future__ import annotations

import math
from dataclasses import replace

from lodestar.errors import UserError
from lodestar.request import Request
from lodestar.workload._util import finalize


def slice_requests(requests: list[Request], start_s: float = 0.0, duration_s: float | None = None) -> list[Request]:
    """Keep requests with `start_s <= arrival_s < start_s + duration_s` (no end if `duration_s` is None),
    re-based so that `start_s` becomes time 0."""
    if start_s < 0:
        raise UserError(f"workload.start_s: must be >= 0, got {start_s}")
    if duration_s is not None and duration_s <= 0:
        raise UserError(f"workload.duration_s: must be > 0, got {duration_s}")
    end = math.inf if duration_s is None else start_s + duration_s
    kept = [replace(r, arrival_s=r.arrival_s - start_s) for r in requests if start_s <= r.arrival_s < end]
    return finalize(kept)


def scale_rate(requests: list[Request], factor: float) -> list[Request]:
    """Multiply the arrival rate by `factor` (divide every arrival time by it)."""
    if not factor > 0 or math.isinf(factor):
        raise UserError(f"workload.rate_scale: must be a positive number, got {factor}")
    return finalize([replace(r, arrival_s=r.arrival_s / factor) for r in requests])


def offered_rate_rps(requests: list[Request], duration_s: float | None = None) -> float:
    """Mean arrival rate: count / `duration_s` when given (e.g. a slice's window), else count / span where
    span = (last - first arrival) x n / (n - 1), i.e. the mean gap is counted once per request."""
    n = len(requests)
    if n == 0:
        return 0.0
    if duration_s is not None and duration_s > 0:
        return n / duration_s
    if n == 1:
        return 0.0
    span = (requests[-1].arrival_s - requests[0].arrival_s) * n / (n - 1)
    return n / span if span > 0 else math.inf


def scale_to_rate(requests: list[Request], target_rps: float, duration_s: float | None = None) -> list[Request]:
    """Rescale arrival times so the offered rate (see `offered_rate_rps`) becomes `target_rps`."""
    if not target_rps > 0 or math.isinf(target_rps):
        raise UserError(f"workload.load: the target rate must be a positive number, got {target_rps} requests/s")
    rate = offered_rate_rps(requests, duration_s)
    if rate == 0.0 or math.isinf(rate):
        return finalize(list(requests))  # a single burst or one request: nothing to stretch
    return scale_rate(requests, target_rps / rate)


def set_max_tokens(requests: list[Request], cap: int | str | None) -> list[Request]:
    """Apply a client output cap: `"output"` -> max_tokens = true output length (the loaders' default); `None`
    -> no cap sent (max_tokens = None); an integer -> max_tokens = cap and output_tokens clipped to it
    (refused for multi-turn answers that later prompts contain, whose length must not change)."""
    if cap == "output":
        return [replace(r, max_tokens=r.output_tokens) for r in requests]
    if cap is None:
        return [replace(r, max_tokens=None) for r in requests]
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise UserError(f"workload.max_tokens: expected 'output', null or an integer >= 1, got {cap!r}")
    for r in requests:
        if r.output_key is not None and r.output_tokens > cap:
            raise UserError(
                f"workload.max_tokens: cap {cap} would cut a multi-turn answer that later turns contain "
                f"({r.output_tokens} tokens); cap the generator instead (synthetic.output_tokens.max)"
            )
    return [replace(r, max_tokens=cap, output_tokens=min(r.output_tokens, cap)) for r in requests]
