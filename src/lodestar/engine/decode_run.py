"""Fast-forward of decode-only stretches ("decode runs") for the engine model.

Consumes: an `Engine` whose batch holds only decoding sequences (nothing waiting, nothing prefilling). Produces: one
scheduled "run" of K identical decode steps instead of K separate steps, with the exact end time of each step.

Why: between two changes of batch composition (a completion, an arrival) every decode step of an engine has the
same shape, only the context grows by one token per sequence; simulating them one event at a time dominated the
cost of long-output workloads. A run ends at the first completion (or after `MAX_RUN` steps). KV blocks the run's
sequences will need at block boundaries inside it are taken up front from never-used free blocks (if there are not
enough, the run stops before the first boundary, so eviction and preemption still happen step by step); the only
visible difference is that `kv_cache_usage` reflects those blocks up to `MAX_RUN` steps early.

Exactness: the run is cut back by `interrupt(now)` whenever something reaches the engine mid-run (a new request, a
slowdown, a failure): the steps ended by `now` are kept, the step in progress finishes, and normal stepping resumes
at its end, exactly where a step-by-step simulation would have resumed. Scrapes read `generation_tokens_at(t)`.
"""

from __future__ import annotations

import heapq
import math
from typing import TYPE_CHECKING

from lodestar.engine.phases import DECODE

if TYPE_CHECKING:
    from lodestar.engine.engine import Engine

MAX_RUN = 2048
MIN_RUN = 3


def try_decode_run(eng: Engine, now: float, k: int) -> float | None:
    """If `eng` is decode-only at step k, schedule a run and return its end time; otherwise None."""
    n = eng.n_dec
    if n == 0 or eng.waiting or eng.prefilling:
        return None
    fk = eng.finish_keys
    fd = eng.finish_due
    while fk and fk[0] not in fd:
        heapq.heappop(fk)
    horizon = min(fk[0] - k + 1 if fk else MAX_RUN, MAX_RUN)  # the run may end with a completion step
    if horizon < MIN_RUN:
        return None
    bs = eng.cfg.block_size
    last = k + horizon - 1
    inside = [key for key in eng.block_due if key <= last]
    if inside:
        need = 0
        plan = []
        for key in inside:
            for seq, ep in eng.block_due[key]:
                if seq.epoch == ep and seq.phase == DECODE:
                    c = 1 + (last - key) // bs
                    need += c
                    plan.append((seq, c, key))
        if need <= eng.kv.free_plain:
            eng.kv.free_plain -= need
            for key in inside:
                del eng.block_due[key]
            for seq, c, key in plan:
                seq.blocks += c
                eng._due(eng.block_due, key + c * bs, seq)
        else:
            horizon = min(inside) - k  # stop before the first boundary; it is handled step by step
            if horizon < MIN_RUN:
                return None
    ctx = eng.dec_ctx_base + n * k
    step_time = eng.perf.step_time
    t0 = step_time(n, 0.0, n, ctx)
    t1 = step_time(n, 0.0, n, ctx + n)
    t2 = step_time(n, 0.0, n, ctx + 2 * n)
    slope = t1 - t0
    if abs(t2 - t1 - slope) > 1e-12 * max(t0, 1e-9):
        return None  # step time is not affine in context for this model: simulate step by step
    run = DecodeRun(now, horizon, t0 * eng.slowdown, slope * eng.slowdown)
    eng.run = run
    eng.busy_until = run.end_of(horizon)
    return eng.busy_until


class DecodeRun:
    """K decode steps from `start`; step i (0-based) lasts `a + b * i` (context grows by one token per sequence)."""

    __slots__ = ("a", "b", "start", "steps")

    def __init__(self, start: float, steps: int, a: float, b: float) -> None:
        self.start = start
        self.steps = steps
        self.a = a
        self.b = b

    def end_of(self, m: int) -> float:
        """Time at which the first m steps have ended."""
        return self.start + m * self.a + self.b * m * (m - 1) / 2

    def done_by(self, t: float) -> int:
        """How many steps have ended by time t (0..steps)."""
        x = t - self.start
        if x <= 0:
            return 0
        a, b = self.a, self.b
        if b > 0:  # solve b/2 m^2 + (a - b/2) m = x
            p = a - b / 2
            m = int((-p + math.sqrt(p * p + 2 * b * x)) / b)
        else:
            m = int(x / a)
        m = max(0, min(m, self.steps))
        while m < self.steps and self.end_of(m + 1) <= t:
            m += 1
        while m > 0 and self.end_of(m) > t:
            m -= 1
        return m


def finish_decode_run(eng: Engine) -> int:
    """Apply a finished run's steps; returns the index of its last step."""
    assert eng.run is not None
    steps = eng.run.steps
    eng.counters.generation_tokens += eng.n_dec * steps
    eng.run = None
    return eng.step_idx + steps - 1


def interrupt(eng: Engine, now: float) -> float | None:
    """Cut a run back to the step in progress at `now`; returns the new end time, or None if nothing changed."""
    run = eng.run
    if run is None:
        return None
    m = run.done_by(now)  # steps ended; step m (0-based) is in progress
    if m + 1 >= run.steps:
        return None
    run.steps = m + 1
    eng.busy_until = run.end_of(m + 1)
    return eng.busy_until


def steps_done_by(eng: Engine, t: float) -> int:
    """Steps of the current run that have ended by time t (0 when not in a run)."""
    return eng.run.done_by(t) if eng.run is not None else 0
