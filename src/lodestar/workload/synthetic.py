"""Synthetic multi-turn chat workload: the embedded default (needs no files).

Consumes: `SyntheticParams` (or a mapping: `synthetic_params`), a seed and a horizon. Produces: `Request`s
sorted by arrival, ids 0..n-1, deterministic for (params, seed, horizon).

Model. Sessions start by an arrival process (`arrival`) at rate `rate_rps / E[turns]`; each picks a tenant
(Zipf popularity, exponent `tenant_zipf`), and with probability `doc_prob` one document of a shared pool
(Zipf, `doc_zipf`). A session has a geometric number of turns (mean `turns_mean`, at most `max_turns`). Turn
k's prompt is

    [system prompt of the tenant] [document?] [user 1] [answer 1] ... [user k-1] [answer k-1] [user k]

one segment each. Keys chain (`lodestar.prefix.chain_key`), so a system prompt is shared by all of its
tenant's requests, a document by all requests of that tenant carrying it, and a session's history by its later
turns. Each request's `output_key` is the key of its answer segment (`chain_key(last prompt key, "answer")`)
and the next turn holds that answer as a segment of exactly `output_tokens` tokens under that key, so an
engine that caches generated tokens serves the whole history from cache. The next turn arrives
`output_tokens x assumed_tpot_s` (time to stream the answer, an open-loop stand-in for the real latency) plus a
think time after the previous one. A session ends early when its next prompt would exceed `max_prompt_tokens`. Sessions
start from `-warmup_s` and only requests in `[0, horizon)` are kept, so the window starts in steady state
(histories begun before 0 are simply uncached). `max_tokens = output_tokens`. Presets: `chat` (the default)
and `prefix-heavy` (few long shared prefixes, high reuse); explicit parameters override the preset's. Defaults
and their grounding: docs/workloads.md.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lodestar.errors import UserError
from lodestar.prefix import ROOT_KEY, chain_key
from lodestar.request import Request
from lodestar.workload._util import finalize, user_error_from
from lodestar.workload.distributions import ArrivalProcess, LengthDist

DEFAULT_HORIZON_S = 600.0


class SyntheticParams(BaseModel):
    """Parameters of the synthetic generator (the `workload.synthetic` mapping). Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: Literal["chat", "prefix-heavy"] = "chat"
    duration_s: float | None = Field(None, gt=0, description="horizon when workload.duration_s is unset")
    rate_rps: float = Field(5.0, gt=0, description="mean request rate (all turns), requests/s")
    arrival: ArrivalProcess = ArrivalProcess()
    warmup_s: float | None = Field(None, ge=0, description="sessions start this early; None: automatic")
    model: str | None = None
    # sessions
    turns_mean: float = Field(3.0, ge=1, description="mean turns per session (geometric)")
    max_turns: int = Field(20, ge=1)
    think_time_s: LengthDist = LengthDist(mean=20.0, median=10.0, min=1.0, max=600.0)
    assumed_tpot_s: float = Field(0.03, ge=0, description="assumed seconds per answer token before thinking")
    max_prompt_tokens: int = Field(32_768, ge=1, description="context window: longer sessions end early")
    # tenants and their system prompts
    tenants: int = Field(4, ge=1)
    tenant_zipf: float = Field(1.0, ge=0, description="Zipf exponent of tenant popularity (0 = uniform)")
    system_prompt_tokens: LengthDist = LengthDist(mean=600, median=500, min=32, max=8192)
    # shared documents
    doc_prob: float = Field(0.15, ge=0, le=1, description="probability that a session carries a document")
    doc_pool: int = Field(200, ge=1)
    doc_zipf: float = Field(1.0, ge=0)
    doc_tokens: LengthDist = LengthDist(mean=2500, median=2000, min=128, max=16384)
    # messages
    user_tokens: LengthDist = LengthDist(mean=150, median=60, min=1, max=4096)
    output_tokens: LengthDist = LengthDist(mean=211, median=129, min=1, max=2048)


PRESETS: dict[str, dict[str, Any]] = {
    "chat": {},
    "prefix-heavy": {
        "tenants": 3,
        "tenant_zipf": 1.0,
        "system_prompt_tokens": {"mean": 4000, "median": 3800, "min": 1024, "max": 8192},
        "doc_prob": 0.7,
        "doc_pool": 12,
        "doc_zipf": 1.2,
        "doc_tokens": {"mean": 3000, "median": 2500, "min": 512, "max": 8192},
        "turns_mean": 2.0,
        "user_tokens": {"mean": 100, "median": 60, "min": 1, "max": 1024},
        "output_tokens": {"mean": 150, "median": 100, "min": 1, "max": 1024},
    },
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def synthetic_params(mapping: dict[str, Any] | SyntheticParams | None = None) -> SyntheticParams:
    """Validate a `workload.synthetic` mapping: defaults, then the preset, then the given keys (nested merge).

    Bad keys or values raise `UserError` naming `workload.synthetic.<key>`.
    """
    if isinstance(mapping, SyntheticParams):
        return mapping
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, dict):
        raise UserError(f"workload.synthetic: expected a mapping of generator parameters, got {mapping!r}")
    preset = mapping.get("preset", "chat")
    if not isinstance(preset, str) or preset not in PRESETS:
        raise UserError(f"workload.synthetic.preset: unknown preset {preset!r}; expected one of: {', '.join(PRESETS)}")
    merged = _merge(_merge(SyntheticParams().model_dump(), PRESETS[preset]), mapping)
    try:
        return SyntheticParams.model_validate(merged)
    except ValidationError as e:
        raise user_error_from("workload.synthetic", e) from None


def expected_turns(p: SyntheticParams) -> float:
    """Mean turns of a session (geometric with mean `turns_mean`, truncated at `max_turns`)."""
    q = 1.0 - 1.0 / p.turns_mean
    return sum(q**k for k in range(p.max_turns))


def _zipf(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    return w / w.sum()


def generate_synthetic(
    params: SyntheticParams | dict[str, Any] | None = None, seed: int = 0, horizon_s: float | None = None
) -> list[Request]:
    """Generate the synthetic workload over `[0, horizon)`; horizon = `horizon_s`, else `params.duration_s`,
    else 600 s."""
    p = synthetic_params(params)
    horizon = horizon_s or p.duration_s or DEFAULT_HORIZON_S
    rng = np.random.default_rng(seed)
    e_turns = expected_turns(p)
    turn_gap = p.think_time_s.mean + p.output_tokens.mean * p.assumed_tpot_s
    warmup = p.warmup_s if p.warmup_s is not None else min(2.0 * (e_turns - 1.0) * turn_gap, 3600.0)

    # Per-tenant system prompts and per-document lengths: fixed for the run.
    sys_len = p.system_prompt_tokens.sample(rng, p.tenants).tolist()
    sys_key = [chain_key(ROOT_KEY, f"sys/{t}") for t in range(p.tenants)]
    doc_len = p.doc_tokens.sample(rng, p.doc_pool).tolist()

    starts = p.arrival.times(rng, p.rate_rps / e_turns, -warmup, horizon)
    n = len(starts)
    tenant = rng.choice(p.tenants, n, p=_zipf(p.tenants, p.tenant_zipf)).tolist()
    has_doc = (rng.random(n) < p.doc_prob).tolist()
    doc = rng.choice(p.doc_pool, n, p=_zipf(p.doc_pool, p.doc_zipf)).tolist()
    turns = np.minimum(rng.geometric(1.0 / p.turns_mean, n), p.max_turns)
    total = int(turns.sum())
    users = p.user_tokens.sample(rng, total).tolist()
    outs = p.output_tokens.sample(rng, total).tolist()
    thinks = p.think_time_s.sample_float(rng, total).tolist()
    offsets = np.concatenate([[0], np.cumsum(turns)]).tolist()

    out: list[Request] = []
    for s in range(n):
        keys = [sys_key[tenant[s]]]
        toks = [sys_len[tenant[s]]]
        if has_doc[s]:
            keys.append(chain_key(keys[-1], f"doc/{doc[s]}"))
            toks.append(doc_len[doc[s]])
        history = sum(toks)
        t = float(starts[s])
        for j in range(offsets[s], offsets[s + 1]):
            u, o = users[j], outs[j]
            if history + u > p.max_prompt_tokens:
                break
            keys.append(chain_key(keys[-1], f"user/{s}/{j - offsets[s]}"))
            toks.append(u)
            answer = chain_key(keys[-1], "answer")
            if t >= 0.0:
                out.append(Request(0, t, history + u, o, tuple(keys), tuple(toks), o, p.model, s, output_key=answer))
            keys.append(answer)
            toks.append(o)
            history += u + o
            t += o * p.assumed_tpot_s + thinks[j]
            if t >= horizon:
                break
    return finalize(out)
