"""Workloads: request-arrival traces and the synthetic generator, as lists of `lodestar.request.Request`.

Consumes: trace files (Mooncake JSONL, Azure 2023 CSV) or generator parameters, via a scenario's `workload:`
mapping. Produces: a workload = a list of `Request` sorted by `arrival_s` with ids 0..n-1 in arrival order.

Public entry points:
- `load_workload(spec, base_dir, seed, instances=..., capacity_rps=...)`: the scenario's `workload:` mapping
  -> list.
- `load_mooncake`, `load_azure`, `generate_synthetic` / `synthetic_params`: the three built-in kinds.
- `slice_requests`, `scale_rate`, `scale_to_rate`, `offered_rate_rps`, `set_max_tokens`: operations.
- `estimate_capacity_rps`: sustainable requests/s of a cluster for a workload (drives `load`).
- `workload_stats`, `prefix_hit_ratio`, `infinite_cache_hits`: statistics.
- `register_workload_kind`, `workload_kinds`, `WorkloadKind`: the kind registry.
See docs/workloads.md.
"""

from lodestar.workload.azure import load_azure
from lodestar.workload.capacity import estimate_capacity_rps, instance_cost, workload_mix
from lodestar.workload.distributions import ArrivalProcess, LengthDist
from lodestar.workload.mooncake import MooncakeOptions, load_mooncake
from lodestar.workload.ops import offered_rate_rps, scale_rate, scale_to_rate, set_max_tokens, slice_requests
from lodestar.workload.spec import (
    WorkloadKind,
    WorkloadSpec,
    load_workload,
    parse_workload_spec,
    register_workload_kind,
    workload_kinds,
)
from lodestar.workload.stats import infinite_cache_hits, prefix_hit_ratio, workload_stats
from lodestar.workload.synthetic import PRESETS, SyntheticParams, generate_synthetic, synthetic_params

__all__ = [
    "PRESETS",
    "ArrivalProcess",
    "LengthDist",
    "MooncakeOptions",
    "SyntheticParams",
    "WorkloadKind",
    "WorkloadSpec",
    "estimate_capacity_rps",
    "generate_synthetic",
    "infinite_cache_hits",
    "instance_cost",
    "load_azure",
    "load_mooncake",
    "load_workload",
    "offered_rate_rps",
    "parse_workload_spec",
    "prefix_hit_ratio",
    "register_workload_kind",
    "scale_rate",
    "scale_to_rate",
    "set_max_tokens",
    "slice_requests",
    "synthetic_params",
    "workload_kinds",
    "workload_mix",
    "workload_stats",
]
