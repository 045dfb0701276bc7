"""Length distributions and arrival processes for the synthetic workload generator.

Consumes: parameters (pydantic models, validated, unknown keys rejected) and a `numpy.random.Generator`.
Produces: integer length samples and arrival times in seconds.

- `LengthDist`: lognormal with a given mean and median (sigma = sqrt(2 ln(mean/median)); mean == median gives
  a constant), rounded and clipped to `[min, max]` (clipping moves the realised mean a little).
- `ArrivalProcess`: `poisson` (exponential gaps), `gamma` (gamma gaps with coefficient of variation `cv`: cv >
  1 is bursty, cv < 1 smoother than Poisson), or `mmpp` (a two-state Markov-modulated Poisson process: a burst
  state at `burst_factor` x the calm rate, entered a fraction `burst_fraction` of the time, with mean dwell
  `burst_dwell_s` in the burst state). Every process has the requested long-run mean rate.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class LengthDist(BaseModel):
    """Clipped, rounded lognormal length distribution given by its mean and median (tokens or seconds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mean: float = Field(gt=0)
    median: float = Field(gt=0)
    min: float = Field(1, ge=0)
    max: float = Field(1_000_000, gt=0)

    @model_validator(mode="after")
    def _check(self) -> LengthDist:
        if self.mean < self.median:
            raise ValueError(f"mean ({self.mean}) must be >= median ({self.median}) for a lognormal")
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        return self

    @property
    def sigma(self) -> float:
        return math.sqrt(2.0 * math.log(self.mean / self.median))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` integer samples (int64), clipped to [min, max]."""
        x = rng.lognormal(math.log(self.median), self.sigma, n) if self.sigma > 0 else np.full(n, self.median)
        return np.clip(np.rint(x), math.ceil(self.min), math.floor(self.max)).astype(np.int64)

    def sample_float(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` real-valued samples clipped to [min, max] (for durations)."""
        x = rng.lognormal(math.log(self.median), self.sigma, n) if self.sigma > 0 else np.full(n, self.median)
        return np.clip(x, self.min, self.max)


class ArrivalProcess(BaseModel):
    """An arrival process with a given long-run mean rate (set by the caller)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    process: Literal["poisson", "gamma", "mmpp"] = "poisson"
    cv: float = Field(2.0, gt=0, description="gamma: coefficient of variation of inter-arrival gaps")
    burst_factor: float = Field(4.0, ge=1, description="mmpp: burst-state rate / calm-state rate")
    burst_fraction: float = Field(0.2, gt=0, lt=1, description="mmpp: long-run fraction of time in bursts")
    burst_dwell_s: float = Field(30.0, gt=0, description="mmpp: mean time spent in one burst")

    def times(self, rng: np.random.Generator, rate: float, start_s: float, end_s: float) -> np.ndarray:
        """Arrival times in `[start_s, end_s)` at long-run mean `rate` per second (sorted)."""
        if rate <= 0 or end_s <= start_s:
            return np.empty(0)
        if self.process == "mmpp":
            return self._mmpp(rng, rate, start_s, end_s)
        out: list[np.ndarray] = []
        t = start_s
        while t < end_s:
            n = max(16, int((end_s - t) * rate * 1.2) + 16)
            if self.process == "poisson":
                gaps = rng.exponential(1.0 / rate, n)
            else:
                shape = 1.0 / (self.cv * self.cv)
                gaps = rng.gamma(shape, 1.0 / (rate * shape), n)
            ts = t + np.cumsum(gaps)
            out.append(ts)
            t = float(ts[-1])
        all_ts = np.concatenate(out)
        return all_ts[all_ts < end_s]

    def _mmpp(self, rng: np.random.Generator, rate: float, start_s: float, end_s: float) -> np.ndarray:
        f, k = self.burst_fraction, self.burst_factor
        calm_rate = rate / (1.0 - f + f * k)
        dwell = {True: self.burst_dwell_s, False: self.burst_dwell_s * (1.0 - f) / f}
        out: list[np.ndarray] = []
        t, burst = start_s, bool(rng.random() < f)
        while t < end_s:
            stay = min(float(rng.exponential(dwell[burst])), end_s - t)
            r = calm_rate * (k if burst else 1.0)
            n = int(rng.poisson(r * stay))
            out.append(np.sort(rng.uniform(t, t + stay, n)))
            t += stay
            burst = not burst
        return np.concatenate(out) if out else np.empty(0)
