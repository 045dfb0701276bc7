"""Numbers the evaluation derives from runs: rolling TTFT curves, time to converge, ratios, geometric means.

Consumes: per-request arrays of one run (arrival time, TTFT, completed or not), or an already computed curve
(times and values). Produces: plain floats and lists, JSON-ready.

Definitions (also in docs/eval.md):
- Rolling mean TTFT at grid time t = mean TTFT of the completed requests that *arrived* in (t - window, t]; the
  grid is t = step, 2 step, ... up to the last arrival rounded up to a step; a point with no request is NaN.
- Steady state of a curve = mean of its non-NaN values at t >= t_last - (t_last - t_first) / 3 (the last third).
- Time to converge = the earliest grid time t_c such that every non-NaN point at t >= t_c lies within
  `tol` (default 10%) of the steady state. A curve that is in the band everywhere converges at its first grid time
  (0 for a curve that starts at 0); a curve whose last point is outside the band converges at its last grid time
  ("never settled"). Because the window trails, a change at time T shows fully in the curve at T + window.
- Learning time = the time to converge of the *ratio* curve learned / oracle (same seed, same workload, same grid;
  mean over seeds). Both policies see the same arrivals and the same cold engine caches, so the ratio cancels what
  is common to every policy (cache warm-up, bursts in the workload) and what is left is the learner catching up.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import numpy as np

WINDOW_S = 30.0
STEP_S = 5.0
TOLERANCE = 0.10
TAIL_FRACTION = 1.0 / 3.0


def rolling_mean_curve(
    arrival_s: np.ndarray,
    ttft_s: np.ndarray,
    ok: np.ndarray,
    window_s: float = WINDOW_S,
    step_s: float = STEP_S,
) -> tuple[np.ndarray, np.ndarray]:
    """(grid times, rolling mean TTFT) of one run; see the module docstring. `ok` masks completed requests."""
    if window_s <= 0 or step_s <= 0:
        raise ValueError("window_s and step_s must be > 0")
    if arrival_s.size == 0:
        return np.zeros(0), np.zeros(0)
    good = ok & ~np.isnan(ttft_s)
    a = arrival_s[good]
    order = np.argsort(a, kind="stable")
    a = a[order]
    v = ttft_s[good][order]
    csum = np.concatenate([[0.0], np.cumsum(v)])
    end = math.ceil(float(arrival_s.max()) / step_s) * step_s
    grid = np.arange(1, max(1, round(end / step_s)) + 1) * step_s
    hi = np.searchsorted(a, grid, side="right")
    lo = np.searchsorted(a, grid - window_s, side="right")
    n = hi - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        y = (csum[hi] - csum[lo]) / n
    y[n == 0] = np.nan
    return grid, y


def steady_state(t: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Mean of the curve's non-NaN values over its last third (NaN if there are none)."""
    ta = np.asarray(t, dtype=float)
    ya = np.asarray(y, dtype=float)
    if ta.size == 0:
        return math.nan
    cut = ta[-1] - (ta[-1] - ta[0]) * TAIL_FRACTION
    tail = ya[(ta >= cut) & ~np.isnan(ya)]
    return float(tail.mean()) if tail.size else math.nan


def convergence_time(
    t: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, tol: float = TOLERANCE
) -> float | None:
    """Earliest grid time after which the curve stays within `tol` of its steady state (module docstring).

    Returns None only for an empty curve or one without any value.
    """
    ta = np.asarray(t, dtype=float)
    ya = np.asarray(y, dtype=float)
    steady = steady_state(ta, ya)
    if math.isnan(steady):
        return None
    band = tol * abs(steady)
    outside = ~np.isnan(ya) & (np.abs(ya - steady) > band)
    idx = np.flatnonzero(outside)
    if idx.size == 0:
        return float(ta[0])
    last = int(idx[-1])
    return float(ta[min(last + 1, ta.size - 1)])


def ratio_curve(
    num: Sequence[tuple[Sequence[float], Sequence[float | None]]],
    den: Sequence[tuple[Sequence[float], Sequence[float | None]]],
) -> tuple[np.ndarray, np.ndarray]:
    """Mean over pairs of the pointwise ratio num/den of curves on the same grid (pairs truncated to the shorter)."""
    ratios = []
    for (t1, y1), (_, y2) in zip(num, den, strict=False):
        n = min(len(y1), len(y2))
        a = np.array([np.nan if v is None else v for v in y1[:n]], dtype=float)
        b = np.array([np.nan if v is None else v for v in y2[:n]], dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratios.append((np.asarray(t1[:n], dtype=float), np.where(b > 0, a / b, np.nan)))
    if not ratios:
        return np.zeros(0), np.zeros(0)
    n = min(len(r[1]) for r in ratios)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return ratios[0][0][:n], np.nanmean(np.stack([r[1][:n] for r in ratios]), axis=0)


def geomean(values: Iterable[float | None]) -> float | None:
    """Geometric mean of the positive finite values; None when there are none."""
    vals = [float(v) for v in values if v is not None and math.isfinite(v) and v > 0]
    if not vals:
        return None
    return float(math.exp(sum(math.log(v) for v in vals) / len(vals)))


def ratio(num: float | None, den: float | None) -> float | None:
    """num / den, or None when either is missing or den is not positive."""
    if num is None or den is None or not den > 0 or not math.isfinite(num):
        return None
    return float(num / den)


def nan_to_none(values: Iterable[float], digits: int = 6) -> list[float | None]:
    """JSON-safe list: NaN/inf become None, the rest rounded to `digits` significant-ish decimals."""
    return [round(float(v), digits) if math.isfinite(v) else None for v in values]


def mean_curve(curves: Sequence[tuple[Sequence[float], Sequence[float | None]]]) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise mean over several curves on the same step grid (shorter curves padded with NaN)."""
    longest = max(curves, key=lambda c: len(c[0]), default=((), ()))
    t = np.asarray(longest[0], dtype=float)
    if t.size == 0:
        return t, t
    stack = np.full((len(curves), t.size), np.nan)
    for i, (_, y) in enumerate(curves):
        arr = np.array([np.nan if v is None else v for v in y], dtype=float)
        stack[i, : arr.size] = arr[: t.size]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        return t, np.nanmean(stack, axis=0)
