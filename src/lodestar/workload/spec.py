"""The scenario's `workload:` mapping, the registry of workload kinds, and the single entry point
`load_workload`.

Consumes: the `workload:` mapping of a scenario YAML (or a `WorkloadSpec`), the YAML file's folder, a seed,
and, when `load` is set, the cluster (as `(PerfModel, settings)` pairs) or a capacity callback. Produces: the
workload, a list of `Request` sorted by arrival with ids 0..n-1.

Pipeline: build the kind's requests (a trace file, or the generator) -> slice `[start_s, start_s +
duration_s)` re-based to 0 -> apply `max_tokens` -> rescale arrivals, either to `load` x estimated capacity
(requests/s) or by `rate_scale` (ignored when `load` is set).

Kinds are registered by kebab-case name with `register_workload_kind(WorkloadKind(...))`. A kind may declare
an options model; its options live under the mapping key named after the kind (`mooncake: {...}`,
`synthetic: {...}`); option mappings of other kinds are accepted and ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lodestar.engine.perf_model import PerfModel
from lodestar.errors import UserError
from lodestar.request import Request
from lodestar.workload._util import user_error_from
from lodestar.workload.azure import load_azure
from lodestar.workload.capacity import estimate_capacity_rps
from lodestar.workload.mooncake import MooncakeOptions, load_mooncake
from lodestar.workload.ops import scale_rate, scale_to_rate, set_max_tokens, slice_requests
from lodestar.workload.synthetic import (
    DEFAULT_HORIZON_S,
    SyntheticParams,
    generate_synthetic,
    synthetic_params,
)


class WorkloadSpec(BaseModel):
    """The `workload:` mapping. Keys other than these and the registered kinds' names are errors."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: str = "synthetic"
    path: str | None = None
    start_s: float = Field(0.0, ge=0)
    duration_s: float | None = Field(None, gt=0)
    load: float | None = Field(None, gt=0, description="fraction of estimated cluster capacity")
    rate_scale: float = Field(1.0, gt=0)
    max_tokens: Any = Field("output", description="'output' (= true length), null (no cap) or an integer cap")

    @field_validator("max_tokens")
    @classmethod
    def _check_max_tokens(cls, v: Any) -> Any:
        if v == "output" or v is None or (type(v) is int and v >= 1):
            return v
        raise ValueError(f"expected 'output', null or an integer >= 1, got {v!r}")


BuildFn = Callable[[WorkloadSpec, Any, "Path | None", int], list[Request]]


@dataclass(frozen=True, slots=True)
class WorkloadKind:
    """A workload kind: `build(spec, options, path, seed)` returns requests sorted by arrival.

    `options` is `parse_options(spec mapping under the kind's name)`; `path` is the resolved `workload.path`
    (None when absent; required if `needs_path`).
    """

    name: str
    description: str
    build: BuildFn
    parse_options: Callable[[Any], Any] = lambda raw: raw
    needs_path: bool = False


_KINDS: dict[str, WorkloadKind] = {}


def register_workload_kind(kind: WorkloadKind) -> WorkloadKind:
    """Register a workload kind under its kebab-case name (names are unique)."""
    n = kind.name
    if not n or n != n.lower() or " " in n or "_" in n:
        raise ValueError(f"workload kind name must be kebab-case, got {n!r}")
    if n in _KINDS and _KINDS[n] is not kind:
        raise ValueError(f"workload kind {n!r} registered twice")
    _KINDS[n] = kind
    return kind


def workload_kinds() -> dict[str, WorkloadKind]:
    """All registered workload kinds by name."""
    return dict(sorted(_KINDS.items()))


def _options_parser(model: type[BaseModel], where: str) -> Callable[[Any], Any]:
    def parse(raw: Any) -> Any:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise UserError(f"{where}: expected a mapping of options, got {raw!r}")
        try:
            return model.model_validate(raw)
        except ValidationError as e:
            raise user_error_from(where, e) from None

    return parse


def _build_mooncake(spec: WorkloadSpec, opts: MooncakeOptions, path: Path | None, seed: int) -> list[Request]:
    assert path is not None
    return load_mooncake(path, seed, opts.bucket_s, opts.jitter, opts.block_tokens)


def _build_azure(spec: WorkloadSpec, opts: Any, path: Path | None, seed: int) -> list[Request]:
    assert path is not None
    return load_azure(path)


def _build_synthetic(spec: WorkloadSpec, opts: SyntheticParams, path: Path | None, seed: int) -> list[Request]:
    length = spec.duration_s or opts.duration_s or DEFAULT_HORIZON_S
    return generate_synthetic(opts, seed, spec.start_s + length)


register_workload_kind(
    WorkloadKind(
        "mooncake",
        "Mooncake FAST'25 JSONL trace (512-token prefix blocks)",
        _build_mooncake,
        _options_parser(MooncakeOptions, "workload.mooncake"),
        needs_path=True,
    )
)
register_workload_kind(WorkloadKind("azure", "Azure LLM inference trace 2023 CSV", _build_azure, needs_path=True))
register_workload_kind(
    WorkloadKind("synthetic", "multi-turn chat generator (embedded default)", _build_synthetic, synthetic_params)
)


def parse_workload_spec(spec: dict[str, Any] | WorkloadSpec | None) -> WorkloadSpec:
    """Validate a `workload:` mapping (None or {} = the synthetic default); errors name `workload.<key>`."""
    if isinstance(spec, WorkloadSpec):
        return spec
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise UserError(f"workload: expected a mapping, got {spec!r}")
    try:
        ws = WorkloadSpec.model_validate(spec)
    except ValidationError as e:
        raise user_error_from("workload", e) from None
    kinds = workload_kinds()
    for key in ws.model_extra or {}:
        if key not in kinds:
            known = [*WorkloadSpec.model_fields, *kinds]
            raise UserError(f"workload.{key}: unknown key; expected one of: {', '.join(known)}")
    if ws.kind not in kinds:
        raise UserError(f"workload.kind: unknown kind {ws.kind!r}; expected one of: {', '.join(kinds)}")
    return ws


def _materialize(ws: WorkloadSpec, kind: WorkloadKind, options: Any, path: Path | None, seed: int) -> list[Request]:
    """Build, slice and cap one workload (everything but the arrival-rate rescaling)."""
    reqs = kind.build(ws, options, path, seed)
    if ws.start_s > 0 or ws.duration_s is not None:
        n_all = len(reqs)
        span = reqs[-1].arrival_s if reqs else 0.0
        reqs = slice_requests(reqs, ws.start_s, ws.duration_s)
        if not reqs:
            end = "end" if ws.duration_s is None else f"{ws.start_s + ws.duration_s:g} s"
            raise UserError(
                f"workload: no requests between start_s={ws.start_s:g} s and {end} "
                f"(the {ws.kind} workload has {n_all} requests over 0-{span:.1f} s)"
            )
    if not reqs:
        raise UserError(f"workload: the {ws.kind} workload produced no requests")
    if ws.max_tokens != "output":
        reqs = set_max_tokens(reqs, ws.max_tokens)
    return reqs


def load_workload(
    spec: dict[str, Any] | WorkloadSpec | None,
    base_dir: Path = Path("."),
    seed: int = 0,
    *,
    instances: Sequence[tuple[PerfModel, Any]] | None = None,
    capacity_rps: Callable[[list[Request]], float] | None = None,
) -> list[Request]:
    """Build the workload a scenario's `workload:` mapping describes (see the module docstring for the
    pipeline).

    `base_dir`: folder that relative `path`s resolve against (the scenario file's folder). `seed`: drives the
    generator and trace jitter. `load` needs the cluster: pass `instances` (one `(PerfModel, settings)` pair
    per instance, for `capacity.estimate_capacity_rps`) or `capacity_rps(requests) -> requests/s`; without
    either, `load` is a `UserError`. All user mistakes raise `UserError` with a one-line message.
    """
    ws = parse_workload_spec(spec)
    kind = workload_kinds()[ws.kind]
    options = kind.parse_options((ws.model_extra or {}).get(ws.kind))
    path: Path | None = None
    if ws.path is not None:
        path = Path(ws.path).expanduser()
        if not path.is_absolute():
            path = Path(base_dir) / path
    elif kind.needs_path:
        raise UserError(f"workload.path: required for kind {ws.kind!r} (a trace file, relative to the scenario)")
    reqs = _materialize(ws, kind, options, path, seed)
    if ws.load is not None:
        if capacity_rps is not None:
            cap = capacity_rps(reqs)
        elif instances is not None:
            cap = estimate_capacity_rps(reqs, instances)
        else:
            raise UserError("workload.load: needs the cluster to estimate capacity; use rate_scale instead")
        if ws.kind == "synthetic":
            # generate at the target rate, so sessions, think times and the horizon keep their real timing
            options = options.model_copy(update={"rate_rps": ws.load * cap})
            reqs = _materialize(ws, kind, options, path, seed)
        else:
            reqs = scale_to_rate(reqs, ws.load * cap, ws.duration_s)
    elif ws.rate_scale != 1.0:
        reqs = scale_rate(reqs, ws.rate_scale)
    return reqs
