"""Mooncake (FAST'25) trace loader.

Consumes: a JSONL file, one request per line, `{"timestamp": ms, "input_length": int, "output_length": int,
"hash_ids": [int, ...]}` where each hash id names one 512-token prompt block (the last may be partial) and
equal leading ids mean shared KV. Produces: `Request`s sorted by arrival, ids 0..n-1, whose segments are the
blocks: `segment_keys = chain_keys(hash_ids)` (so two prompts share KV exactly for their common leading ids)
and `segment_tokens = (512, ..., 512, input_length - 512 * (len(hash_ids) - 1))`.

Choices (see docs/workloads.md):
- `max_tokens = output_tokens = output_length` (clients usually send a cap; the trace does not record it, so
  the true length stands in); an `output_length` of 0 becomes 1 token.
- Timestamp jitter: the conversation trace quantises arrivals to ~3 s buckets, so requests sharing a timestamp
  `t` are spread uniformly over `[t, t + bucket_s)`, reproducibly for a seed, keeping their file order. With
  `jitter=None` (auto) this happens only when the trace looks bucketed (all gaps between distinct timestamps
  are at least 0.9 x `bucket_s`), so the millisecond-resolution synthetic trace is left alone.
- Parsed traces are cached per (path, mtime, size): a second load of the same file costs only the `Request`
  build.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from lodestar.errors import UserError
from lodestar.prefix import chain_keys
from lodestar.request import Request

BLOCK_TOKENS = 512
_FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")


class MooncakeOptions(BaseModel):
    """Options under `workload.mooncake` in a scenario."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bucket_s: float = Field(3.0, gt=0, description="width of the trace's timestamp buckets, seconds")
    jitter: bool | None = Field(None, description="spread requests within buckets; None = only if bucketed")
    block_tokens: int = Field(BLOCK_TOKENS, gt=0, description="tokens per hash id")


@dataclass(frozen=True, slots=True)
class ParsedTrace:
    """Column view of a parsed Mooncake file (shared by every load of that file; treat as read-only)."""

    timestamps_s: np.ndarray
    input_tokens: list[int]
    output_tokens: list[int]
    keys: list[tuple[int, ...]]
    tokens: list[tuple[int, ...]]


_CACHE: OrderedDict[tuple[str, int, int, int], ParsedTrace] = OrderedDict()
_CACHE_SIZE = 4


def _bad(path: Path, lineno: int, what: str) -> UserError:
    return UserError(f"{path}:{lineno}: {what}")


def _parse_line(path: Path, lineno: int, line: str, block: int) -> tuple[float, int, int, list[int]]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise _bad(path, lineno, f"not valid JSON ({e.msg}); expected one JSON object per line") from None
    if not isinstance(row, dict):
        raise _bad(path, lineno, f"expected a JSON object with keys {', '.join(_FIELDS)}")
    for name in _FIELDS:
        if name not in row:
            raise _bad(path, lineno, f"missing field {name!r}")
    ts, n_in, n_out, ids = (row[f] for f in _FIELDS)
    if type(ts) not in (int, float) or not 0 <= ts < math.inf:
        raise _bad(path, lineno, f"'timestamp' must be a non-negative number of milliseconds, got {ts!r}")
    if type(n_in) is not int or n_in < 1:
        raise _bad(path, lineno, f"'input_length' must be an integer >= 1, got {n_in!r}")
    if type(n_out) is not int or n_out < 0:
        raise _bad(path, lineno, f"'output_length' must be an integer >= 0, got {n_out!r}")
    if not isinstance(ids, list) or not all(type(h) is int for h in ids):
        raise _bad(path, lineno, "'hash_ids' must be a list of integers")
    need = -(-n_in // block)
    if len(ids) != need:
        raise _bad(
            path,
            lineno,
            f"'hash_ids' has {len(ids)} entries but input_length {n_in} needs ceil({n_in}/{block}) = {need}",
        )
    return float(ts), n_in, n_out, ids


def parse_mooncake(path: Path, block_tokens: int = BLOCK_TOKENS) -> ParsedTrace:
    """Parse and validate a Mooncake JSONL file (cached per path, mtime and size); bad input raises
    `UserError`."""
    path = Path(path)
    try:
        st = path.stat()
        cache_key = (str(path.resolve()), st.st_mtime_ns, st.st_size, block_tokens)
        if cache_key in _CACHE:
            _CACHE.move_to_end(cache_key)
            return _CACHE[cache_key]
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: workload trace not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read workload trace ({e})") from None
    ts: list[float] = []
    n_in: list[int] = []
    n_out: list[int] = []
    keys: list[tuple[int, ...]] = []
    toks: list[tuple[int, ...]] = []
    full: dict[int, tuple[int, ...]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        t, a, b, ids = _parse_line(path, lineno, line, block_tokens)
        ts.append(t / 1000.0)
        n_in.append(a)
        n_out.append(b)
        keys.append(chain_keys(ids))
        m = len(ids) - 1
        head = full.get(m)
        if head is None:
            head = full[m] = (block_tokens,) * m
        toks.append((*head, a - block_tokens * m))
    if not ts:
        raise UserError(f"{path}: workload trace has no requests")
    parsed = ParsedTrace(np.asarray(ts, dtype=np.float64), n_in, n_out, keys, toks)
    _CACHE[cache_key] = parsed
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return parsed


def is_bucketed(timestamps_s: np.ndarray, bucket_s: float) -> bool:
    """True when the distinct timestamps are at least 0.9 x `bucket_s` apart (a quantised trace)."""
    distinct = np.unique(timestamps_s)
    return len(distinct) > 1 and float(np.diff(distinct).min()) >= 0.9 * bucket_s


def jitter_buckets(timestamps_s: np.ndarray, bucket_s: float, seed: int) -> np.ndarray:
    """Spread requests sharing a timestamp `t` uniformly over `[t, t + bucket_s)`, keeping their input order.

    Deterministic for a seed: the k-th request (in input order) of a bucket gets the k-th smallest of the
    bucket's uniform draws.
    """
    ts = np.asarray(timestamps_s, dtype=np.float64)
    u = np.random.default_rng(seed).uniform(0.0, bucket_s, len(ts))
    by_input = np.argsort(ts, kind="stable")  # bucket by bucket, input order within a bucket
    by_draw = np.lexsort((u, ts))  # bucket by bucket, smallest draw first
    offsets = np.empty_like(u)
    offsets[by_input] = u[by_draw]
    return ts + offsets


def load_mooncake(
    path: Path,
    seed: int = 0,
    bucket_s: float = 3.0,
    jitter: bool | None = None,
    block_tokens: int = BLOCK_TOKENS,
) -> list[Request]:
    """Load a Mooncake trace as `Request`s sorted by arrival (ids 0..n-1); see the module docstring."""
    p = parse_mooncake(Path(path), block_tokens)
    ts = p.timestamps_s
    if jitter is None:
        jitter = is_bucketed(ts, bucket_s)
    if jitter:
        ts = jitter_buckets(ts, bucket_s, seed)
    order = np.argsort(ts, kind="stable").tolist()
    arrivals = ts.tolist()
    out: list[Request] = []
    for i, j in enumerate(order):
        n_out = max(1, p.output_tokens[j])
        out.append(Request(i, arrivals[j], p.input_tokens[j], n_out, p.keys[j], p.tokens[j], max_tokens=n_out))
    return out
