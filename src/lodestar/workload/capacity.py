"""Capacity estimate of a cluster for a workload's length mix (used by `workload.load`).

Consumes: the workload (`Request`s) and the cluster as a list of `(PerfModel, settings)` pairs, one per
instance, where `settings` has `max_num_batched_tokens` and `max_num_seqs` (attributes or mapping keys;
optional `gpu_memory_utilization`, default 0.9). Produces: sustainable requests/s (`estimate_capacity_rps`)
and the per-instance cost breakdown (`instance_cost`).

Formula (also in docs/workloads.md). From the workload: mean prompt P, mean output O (capped by max_tokens),
and the achievable prefix hit ratio h, by default the ratio random routing would get over the cluster's instances
with an infinite cache each (`stats.spread_cache_hits`: the reuse any router gets without prefix awareness, so
prefix-aware routing can do better than the nominal load suggests),
giving a mean cached prefix C = h P and uncached part U = P - C. Per instance, with budget B =
max_num_batched_tokens:

    prefill_s = (U / B) * step(B, 0, 0, 0)                          linear layers at full chunks
              + sum_j [step(0, a_j, 0, 0) - step(0, 0, 0, 0)]       prefill attention of the chunks
                  (chunks c_j <= B of U after C cached tokens, a_j = c_j * (p_j + c_j / 2))
    b         = max(1, min(max_num_seqs, B, KV tokens / (P + O / 2)))   the decode batch that fits
    decode_s  = O * step(b, 0, b, b * (P + O / 2)) / b              one decode step amortised over b sequences
    capacity  = sum over instances of 1 / (prefill_s + decode_s)

`step` is `PerfModel.step_time(tokens, prefill_attn, decode_seqs, decode_ctx)`. The estimate ignores queueing
and preemption: a load of 1.0 is the saturation point, and realistic latency targets sit well below it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lodestar.engine.perf_model import PerfModel
from lodestar.errors import UserError
from lodestar.request import Request
from lodestar.workload.stats import spread_cache_hits


@dataclass(frozen=True, slots=True)
class WorkloadMix:
    """Mean lengths of a workload: prompt, cached prefix, uncached part, output (tokens)."""

    prompt: float
    cached: float
    uncached: float
    output: float


@dataclass(frozen=True, slots=True)
class InstanceCost:
    """GPU-seconds one instance spends per request of the mix, and the decode batch assumed."""

    prefill_s: float
    decode_s: float
    decode_batch: int

    @property
    def per_request_s(self) -> float:
        return self.prefill_s + self.decode_s


def _setting(settings: Any, name: str, default: Any = None) -> Any:
    value = settings.get(name, default) if isinstance(settings, Mapping) else getattr(settings, name, default)
    if value is None:
        raise UserError(f"engine settings lack {name!r}, needed to estimate capacity")
    return value


def workload_mix(requests: Sequence[Request], hit_ratio: float | None = None, n_instances: int = 1) -> WorkloadMix:
    """Mean lengths; `hit_ratio` None = the hit ratio of random routing over `n_instances` infinite caches."""
    if not requests:
        raise UserError("the workload has no requests; cannot estimate cluster capacity for it")
    n = len(requests)
    prompt = sum(r.prompt_tokens for r in requests) / n
    output = sum(min(r.output_tokens, r.max_tokens or r.output_tokens) for r in requests) / n
    if hit_ratio is None:
        cached = sum(spread_cache_hits(list(requests), n_instances)) / n
    elif 0.0 <= hit_ratio <= 1.0:
        cached = hit_ratio * prompt
    else:
        raise UserError(f"hit_ratio must be within [0, 1], got {hit_ratio}")
    return WorkloadMix(prompt, cached, prompt - cached, output)


def instance_cost(pm: PerfModel, settings: Any, mix: WorkloadMix) -> InstanceCost:
    """GPU-seconds per request of `mix` on one instance (see the module docstring for the formula)."""
    budget = int(_setting(settings, "max_num_batched_tokens"))
    max_seqs = int(_setting(settings, "max_num_seqs"))
    util = float(_setting(settings, "gpu_memory_utilization", 0.9))
    if budget < 1 or max_seqs < 1:
        raise UserError("max_num_batched_tokens and max_num_seqs must be >= 1 to estimate capacity")
    base = pm.step_time(0, 0.0, 0, 0)
    prefill = mix.uncached / budget * pm.step_time(budget, 0.0, 0, 0)
    done, left = mix.cached, mix.uncached
    while left > 0:
        c = min(float(budget), left)
        prefill += pm.step_time(0, c * (done + c / 2.0), 0, 0) - base
        done += c
        left -= c
    ctx = mix.prompt + mix.output / 2.0
    fit = pm.kv_capacity_tokens(util) / max(ctx, 1.0)
    batch = max(1, int(min(max_seqs, budget, fit)))
    decode = mix.output * pm.step_time(batch, 0.0, batch, int(batch * ctx)) / batch
    return InstanceCost(prefill, decode, batch)


def estimate_capacity_rps(
    requests: Sequence[Request],
    instances: Sequence[tuple[PerfModel, Any]],
    hit_ratio: float | None = None,
) -> float:
    """Sustainable requests/s of the cluster for this workload's length mix: sum of 1 / GPU-seconds per
    request.

    `instances`: one `(PerfModel, settings)` per instance (not per group). `hit_ratio`: achievable prefix hit
    ratio by tokens; None = random routing over the instances (`spread_cache_hits`). Raises `UserError` for an
    empty workload or cluster.
    """
    if not instances:
        raise UserError("the cluster has no instances; cannot estimate its capacity")
    mix = workload_mix(requests, hit_ratio, len(instances))
    return sum(1.0 / instance_cost(pm, s, mix).per_request_s for pm, s in instances)
