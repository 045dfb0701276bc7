"""The one clock interface.

Policies, bookkeeping and learners never call `time.time()` themselves: they read an injected `Clock`. The gateway
uses `WallClock` (monotonic seconds); the simulator uses `SimClock`, which only its event loop advances.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic time line (origin unspecified)."""
        ...


class WallClock:
    """Monotonic wall-clock time, for live serving."""

    def now(self) -> float:
        return time.monotonic()


class SimClock:
    """Simulated time; only the simulator's event loop may call `advance_to`."""

    __slots__ = ("_t",)

    def __init__(self, start: float = 0.0) -> None:
        self._t = start

    def now(self) -> float:
        return self._t

    def advance_to(self, t: float) -> None:
        if t < self._t:
            raise ValueError(f"simulated time cannot go back: {t} < {self._t}")
        self._t = t
