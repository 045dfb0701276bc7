"""Rewards by name: what the learned router optimises.

Consumes: per-candidate predictions (TTFT and TPOT, each with a standard error) and the expected number of output
tokens. Produces: a per-candidate *cost* (lower is better; the reward is its negative) and the cost's standard error,
which the policy turns into an optimistic bound for exploration. Also scores observed outcomes the same way.

Names: `ttft` (default: time to first token), `e2e` (TTFT + output tokens x TPOT), `tpot` (time per output token),
`slo` (goodput: minus the probability of meeting both `ttft_slo_s` and `tpot_slo_s`, from Gaussian predictions), and
`weighted` (a weighted sum of the other costs, weights by name, e.g. `{ttft: 1.0, e2e: 0.1}`).
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

REWARDS = ("ttft", "e2e", "tpot", "slo", "weighted")


class RewardSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "ttft"
    weights: dict[str, float] = Field(default_factory=dict)
    ttft_slo_s: float = Field(1.0, gt=0)
    tpot_slo_s: float = Field(0.1, gt=0)

    @model_validator(mode="after")
    def _check(self) -> RewardSpec:
        if self.name not in REWARDS:
            raise ValueError(f"unknown reward {self.name!r}; expected one of: {', '.join(REWARDS)}")
        if self.name == "weighted":
            bad = [k for k in self.weights if k not in REWARDS[:4]]
            if bad or not self.weights:
                raise ValueError(f"weighted reward needs weights over {', '.join(REWARDS[:4])}, got {self.weights}")
        return self

    @property
    def needs_tpot(self) -> bool:
        if self.name == "weighted":
            return any(k != "ttft" and w != 0 for k, w in self.weights.items())
        return self.name != "ttft"


def _phi(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))


def _one(
    name: str, spec: RewardSpec, ttft: np.ndarray, ttft_se: np.ndarray, tpot: np.ndarray, tpot_se: np.ndarray,
    out_tokens: float, resid: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    if name == "ttft":
        return ttft, ttft_se
    if name == "tpot":
        return tpot, tpot_se
    if name == "e2e":
        return ttft + out_tokens * tpot, np.hypot(ttft_se, out_tokens * tpot_se)
    # slo: probability both targets are met, predictive spread = model error + residual noise
    s1 = np.sqrt(ttft_se**2 + resid[0] ** 2) + 1e-6
    s2 = np.sqrt(tpot_se**2 + resid[1] ** 2) + 1e-6
    p = _phi((spec.ttft_slo_s - ttft) / s1) * _phi((spec.tpot_slo_s - tpot) / s2)
    return -p, np.zeros_like(p)  # the spread is already inside p


def cost(
    spec: RewardSpec,
    ttft: np.ndarray,
    ttft_se: np.ndarray,
    tpot: np.ndarray,
    tpot_se: np.ndarray,
    out_tokens: float,
    resid: tuple[float, float] = (0.0, 0.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Per-candidate (cost, standard error of the cost); lower cost is better."""
    if spec.name != "weighted":
        return _one(spec.name, spec, ttft, ttft_se, tpot, tpot_se, out_tokens, resid)
    total = np.zeros_like(ttft)
    var = np.zeros_like(ttft)
    for k, w in spec.weights.items():
        c, se = _one(k, spec, ttft, ttft_se, tpot, tpot_se, out_tokens, resid)
        total += w * c
        var += (w * se) ** 2
    return total, np.sqrt(var)


def outcome_cost(spec: RewardSpec, ttft: float, tpot: float | None, out_tokens: int) -> float:
    """The cost of an observed outcome, in the same units as `cost`."""
    tp = tpot if tpot is not None else 0.0
    vals = {
        "ttft": ttft,
        "tpot": tp,
        "e2e": ttft + out_tokens * tp,
        "slo": -float(ttft <= spec.ttft_slo_s and tp <= spec.tpot_slo_s),
    }
    if spec.name == "weighted":
        return sum(w * vals[k] for k, w in spec.weights.items())
    return vals[spec.name]
