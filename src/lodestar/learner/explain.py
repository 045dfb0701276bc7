"""Reading a decision log back (`lodestar explain`).

Consumes: the JSONL decision log the `lodestar` policy writes with `decision_log` set (see `persist`): decision
lines `{"t", "req", "pick", "mode", "candidates": [{"id", "pred_ttft_s", "cost"}]}` and outcome lines
`{"t", "req", "ttft_s"}`. Produces: a summary dict (decisions by mode, picks per endpoint, prediction accuracy of
the picked candidate on the observed TTFT, how often the pick was the lowest predicted TTFT, the worst
mispredictions) that the CLI prints.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from lodestar.errors import UserError


def read_log(path: str | Path) -> tuple[dict[int, dict[str, Any]], dict[int, float]]:
    """(decision by request id (the last one for retried requests), observed TTFT by request id)."""
    path = Path(path)
    decisions: dict[int, dict[str, Any]] = {}
    outcomes: dict[int, float] = {}
    try:
        f = path.open()
    except OSError as e:
        raise UserError(f"cannot read decision log {path}: {e.strerror}") from None
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if "candidates" in rec:
                    decisions[int(rec["req"])] = rec
                else:
                    outcomes[int(rec["req"])] = float(rec["ttft_s"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise UserError(f"{path}:{lineno}: not a decision-log line (expected JSON with 'req')") from None
    return decisions, outcomes


def explain(path: str | Path, top: int = 5) -> dict[str, Any]:
    decisions, outcomes = read_log(path)
    if not decisions:
        raise UserError(f"{path}: no decisions in the log")
    modes = Counter(d["mode"] for d in decisions.values())
    picks = Counter(d["pick"] for d in decisions.values())
    pred, obs, worst = [], [], []
    greedy = 0
    for rid, d in decisions.items():
        cands = {c["id"]: c for c in d["candidates"]}
        if min(cands.values(), key=lambda c: c["pred_ttft_s"])["id"] == d["pick"]:
            greedy += 1
        if rid in outcomes and d["pick"] in cands:
            p, y = cands[d["pick"]]["pred_ttft_s"], outcomes[rid]
            pred.append(p)
            obs.append(y)
            worst.append((abs(p - y), rid, d["pick"], p, y))
    out: dict[str, Any] = {
        "decisions": len(decisions),
        "with_outcome": len(obs),
        "modes": dict(modes),
        "picks": dict(sorted(picks.items())),
        "pick_was_lowest_prediction": greedy / len(decisions),
    }
    if len(obs) >= 2:
        p_a, y_a = np.array(pred), np.array(obs)
        ss_tot = float(((y_a - y_a.mean()) ** 2).sum())
        out["r2"] = 1 - float(((y_a - p_a) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")
        out["median_rel_err"] = float(np.median(np.abs(p_a - y_a) / np.maximum(y_a, 1e-3)))
        out["mean_observed_ttft_s"] = float(y_a.mean())
        out["mean_predicted_ttft_s"] = float(p_a.mean())
    worst.sort(reverse=True)
    out["worst"] = [{"req": r, "pick": e, "pred_ttft_s": p, "ttft_s": y} for _, r, e, p, y in worst[:top]]
    return out
