"""Azure LLM inference trace 2023 (Splitwise) loader.

Consumes: a CSV file with header `TIMESTAMP,ContextTokens,GeneratedTokens` (columns in any order, extra
columns ignored), wall-clock timestamps `YYYY-mm-dd HH:MM:SS[.fffffff]`. Produces: `Request`s sorted by
arrival, ids 0..n-1, with arrival = seconds since the first row's timestamp.

The trace carries no prefix or session information, so every prompt is one segment with a key unique to the
request (no KV sharing between requests). Lengths: a `ContextTokens` of 0 becomes 1 token (an engine always
prefills at least one token) and a `GeneratedTokens` of 0 becomes 1; negative or non-integer values are
errors. `max_tokens = output_tokens` (see docs/workloads.md).
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

from lodestar.errors import UserError
from lodestar.request import Request
from lodestar.workload._util import unique_key

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def _parse_time(text: str, days: dict[str, int]) -> float:
    """Seconds since 0001-01-01 for `YYYY-mm-dd HH:MM:SS[.f...]` (any number of fraction digits)."""
    date, _, clock = text.strip().partition(" ")
    day = days.get(date)
    if day is None:
        day = days[date] = dt.date.fromisoformat(date).toordinal()
    h, m, s = clock.split(":")
    hh, mm, ss = int(h), int(m), float(s)
    if not (0 <= hh < 24 and 0 <= mm < 60 and 0 <= ss < 61):
        raise ValueError(clock)
    return day * 86400.0 + hh * 3600 + mm * 60 + ss


def _int_field(path: Path, lineno: int, name: str, text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise UserError(f"{path}:{lineno}: {name} must be an integer, got {text!r}") from None
    if v < 0:
        raise UserError(f"{path}:{lineno}: {name} must be >= 0, got {v}")
    return max(1, v)


def load_azure(path: Path) -> list[Request]:
    """Load an Azure 2023 LLM trace CSV as `Request`s sorted by arrival (ids 0..n-1); bad input ->
    `UserError`."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise UserError(f"{path}: workload trace not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: cannot read workload trace ({e})") from None
    if not rows:
        raise UserError(f"{path}: empty file; expected a CSV header {','.join(COLUMNS)}")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise UserError(f"{path}:1: CSV header lacks column(s) {', '.join(missing)}; expected {','.join(COLUMNS)}")
    it, ic, ig = (header.index(c) for c in COLUMNS)
    width = max(it, ic, ig) + 1
    days: dict[str, int] = {}
    parsed: list[tuple[float, int, int]] = []
    for lineno, row in enumerate(rows[1:], 2):
        if not row or not "".join(row).strip():
            continue
        if len(row) < width:
            raise UserError(f"{path}:{lineno}: expected {len(header)} columns, got {len(row)}")
        try:
            t = _parse_time(row[it], days)
        except ValueError:
            raise UserError(
                f"{path}:{lineno}: TIMESTAMP must look like 'YYYY-mm-dd HH:MM:SS.fffffff', got {row[it]!r}"
            ) from None
        n_in = _int_field(path, lineno, "ContextTokens", row[ic])
        n_out = _int_field(path, lineno, "GeneratedTokens", row[ig])
        parsed.append((t, n_in, n_out))
    if not parsed:
        raise UserError(f"{path}: workload trace has no requests")
    parsed.sort(key=lambda row: row[0])  # stable: file order among equal timestamps
    t0 = parsed[0][0]
    namespace = f"azure:{path.name}"
    return [
        Request(i, t - t0, n_in, n_out, (unique_key(namespace, i),), (n_in,), max_tokens=n_out)
        for i, (t, n_in, n_out) in enumerate(parsed)
    ]
