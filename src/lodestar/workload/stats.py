"""Workload statistics.

Consumes: a list of `Request`. Produces: per-request prefix hits under an infinite cache, and a summary dict
(`workload_stats`) used by tests, docs and capacity estimates.

Infinite-cache hit model: requests are taken in arrival order; a request's hit is the token count of its
longest run of leading segments whose keys were seen before (in an earlier prompt, or as an earlier request's
`output_key`, i.e. its generated answer is assumed cached by the time the next request arrives). Granularity
is the segment, not the engine's 16-token block, so it slightly overstates what an engine reuses when segments
are not block multiples.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lodestar.request import Request


def infinite_cache_hits(requests: list[Request]) -> list[int]:
    """Prompt tokens each request finds cached (in list order) with an infinite prefix cache."""
    return spread_cache_hits(requests, 1)


def spread_cache_hits(requests: list[Request], n_instances: int, seed: int = 0) -> list[int]:
    """Prompt tokens each request finds cached when requests are spread uniformly at random over `n_instances`
    instances, each with an infinite prefix cache: the reuse any router gets without prefix awareness."""
    import random

    rng = random.Random(seed)
    seen: list[set[int]] = [set() for _ in range(max(1, n_instances))]
    hits: list[int] = []
    for r in requests:
        cache = seen[rng.randrange(len(seen))]
        hit = 0
        matching = True
        for k, n in zip(r.segment_keys, r.segment_tokens, strict=True):
            if matching and k in cache:
                hit += n
            else:
                matching = False
                cache.add(k)
        if r.output_key is not None:
            cache.add(r.output_key)
        hits.append(hit)
    return hits


def prefix_hit_ratio(requests: list[Request]) -> float:
    """Fraction of all prompt tokens served from an infinite prefix cache (see the module docstring)."""
    total = sum(r.prompt_tokens for r in requests)
    return sum(infinite_cache_hits(requests)) / total if total else 0.0


def workload_stats(requests: list[Request]) -> dict[str, Any]:
    """Summary of a workload.

    Keys: `count`, `duration_s` (last minus first arrival), `rate_rps` (count / duration_s, 0 if undefined),
    `input_mean`, `input_median`, `input_p90`, `output_mean`, `output_median`, `output_p90` (tokens),
    `prefix_hit_ratio` (tokens, infinite cache), `sessions` (distinct non-null session ids).
    """
    if not requests:
        return {"count": 0, "duration_s": 0.0, "rate_rps": 0.0, "prefix_hit_ratio": 0.0, "sessions": 0}
    arr = [r.arrival_s for r in requests]
    duration = max(arr) - min(arr)
    pi = np.fromiter((r.prompt_tokens for r in requests), dtype=np.float64, count=len(requests))
    po = np.fromiter((r.output_tokens for r in requests), dtype=np.float64, count=len(requests))
    return {
        "count": len(requests),
        "duration_s": duration,
        "rate_rps": len(requests) / duration if duration > 0 else 0.0,
        "input_mean": float(pi.mean()),
        "input_median": float(np.median(pi)),
        "input_p90": float(np.percentile(pi, 90)),
        "output_mean": float(po.mean()),
        "output_median": float(np.median(po)),
        "output_p90": float(np.percentile(po, 90)),
        "prefix_hit_ratio": prefix_hit_ratio(requests),
        "sessions": len({r.session_id for r in requests if r.session_id is not None}),
    }
