"""Small helpers shared by the baseline policies (no policy is registered here).

Everything is plain Python over short lists: the simulator routes thousands of requests per second, and numpy's
per-call overhead is larger than the work for a handful of endpoints. Helpers that break ties take the policy's
seeded `random.Random`, so picks are reproducible for a seed; none iterates over a set, so results do not depend
on string hash randomisation.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from lodestar.cluster_view import Endpoint, EngineMetrics
from lodestar.request import RequestInfo


def pick(rng: random.Random, items: Sequence[Endpoint]) -> Endpoint:
    """A uniformly random element (no RNG draw when there is only one)."""
    return items[0] if len(items) == 1 else items[rng.randrange(len(items))]


def least_in_flight(rng: random.Random, endpoints: Sequence[Endpoint]) -> Endpoint:
    """The endpoint with the fewest requests in flight (router count), random among ties."""
    best = min(e.book.in_flight for e in endpoints)
    return pick(rng, [e for e in endpoints if e.book.in_flight == best])


def fresh_metrics(ep: Endpoint, now: float, max_age_s: float | None) -> EngineMetrics | None:
    """The endpoint's last scrape, or None when never scraped or older than `max_age_s` (None: any age)."""
    m = ep.metrics
    if m is None:
        return None
    if max_age_s is not None and now - m.scraped_at > max_age_s:
        return None
    return m


def mean_and_sample_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 denominator; 0 for fewer than two values)."""
    n = len(values)
    if n == 0:
        return 0.0, 0.0
    mu = sum(values) / n
    if n == 1:
        return mu, 0.0
    return mu, math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1))


def min_max_normalise(values: Sequence[float], higher_is_better: bool) -> list[float]:
    """Map values to [0, 1] with 1 = best; all equal -> all 1.0 (AIBrix and GIE both do this)."""
    lo, hi = min(values), max(values)
    if hi == lo:
        return [1.0] * len(values)
    span = hi - lo
    if higher_is_better:
        return [(v - lo) / span for v in values]
    return [(hi - v) / span for v in values]


def argmax_random(rng: random.Random, endpoints: Sequence[Endpoint], scores: Sequence[float]) -> Endpoint:
    """The endpoint with the highest score, uniformly random among ties (within 1e-9)."""
    best = max(scores)
    tied = [e for e, s in zip(endpoints, scores, strict=True) if s >= best - 1e-9]
    return pick(rng, tied)


def prompt_segments(req: RequestInfo, max_tokens: int | None = None) -> tuple[Sequence[int], Sequence[int], int]:
    """The request's (keys, token counts, total tokens), truncated to the first `max_tokens` tokens if given.

    A segment that crosses the limit is kept with its count clipped, so the total never exceeds `max_tokens`.
    """
    keys, toks = req.segment_keys, req.segment_tokens
    n = min(len(keys), len(toks))
    if max_tokens is None:
        if n != len(keys) or n != len(toks):
            keys, toks = keys[:n], toks[:n]
        return keys, toks, sum(toks)
    out_t: list[int] = []
    total = 0
    for i in range(n):
        if total >= max_tokens:
            break
        t = min(toks[i], max_tokens - total)
        out_t.append(t)
        total += t
    return keys[: len(out_t)], out_t, total
