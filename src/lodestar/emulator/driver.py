"""The engine model stepped on the wall clock: the heart of an emulated engine.

Consumes: an `Engine` (lodestar.engine.engine) and live requests (`submit`: prompt text and an output length),
aborts, and fault changes (slowdown, stall, failure). Produces: per-request `Stream`s whose generated-token count
advances at the modelled times (the HTTP layer streams them), and per-request timings for the metrics (`on_*`
callbacks of `RequestStats`).

Time. The engine's time line IS the monotonic wall clock (`lodestar.clock.WallClock`): a request arrives at the
wall time its HTTP handler submits it. The time scale (`time_scale` = X: run X times slower than the modelled GPU)
and a fault slowdown are applied through `engine.slowdown = X * slowdown`, which multiplies every modelled step
duration; so every time the engine and the metrics report is wall time.

Stepping. A timer on the asyncio loop (one handle, rescheduled after each event) fires at the next modelled
event: the end of a step, or the end of each step inside a decode run (the engine fast-forwards decode-only
stretches as one run; `engine.run.end_of(m)` gives the end of its m-th step, so every token still goes out at its
own modelled time without stepping the engine per token). Processing is idempotent and catches up: `_advance(now)`
applies every step that ended by `now` at its modelled end time (`finish_step(end)`, then `start_step(end)`), so a
late timer delays notification, never the model. An arrival first catches up to `now`, then `add`s the request and
starts the engine or cuts a decode run short with `interrupt(now)`, exactly as the simulator's runner does.

Aborts (client disconnects) and answer caching use engine internals from `emulator/engine_ops.py` (no edits to the
engine).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Protocol

from lodestar.clock import Clock, WallClock
from lodestar.emulator import engine_ops
from lodestar.emulator.tokens import filler_text
from lodestar.engine.engine import Engine, Seq
from lodestar.engine.phases import DECODE, WAITING
from lodestar.request import Request


class Stream:
    """One live request: what the HTTP handler reads. `gen` only grows; `done` is final."""

    __slots__ = (
        "_event",
        "admitted_t",
        "arrival",
        "done",
        "end_t",
        "error",
        "finish_reason",
        "first_t",
        "gen",
        "hit",
        "id",
        "length_stop",
        "per_token",
        "prompt_tokens",
        "seq",
        "tail_parent",
        "tail_text",
    )

    def __init__(self, sid: int, seq: Seq, arrival: float, length_stop: bool, tail_text: str, tail_parent: int):
        self.id = sid
        self.seq = seq
        self.arrival = arrival
        self.prompt_tokens = seq.req.prompt_tokens
        self.length_stop = length_stop  # True: the client's max_tokens ends it ("length"); False: an emulated EOS
        self.tail_text = tail_text  # prompt text after its last whole 64-character block
        self.tail_parent = tail_parent  # key of the prompt's last whole block (chain origin of the answer blocks)
        self.gen = 0
        self.per_token = True  # wake the reader at every token (a streaming response); False: only when done
        self.hit = 0
        self.done = False
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.first_t: float | None = None
        self.end_t: float | None = None
        self.admitted_t: float | None = None
        self._event = asyncio.Event()

    def wake(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        """Until the stream changes (new tokens, done)."""
        await self._event.wait()
        self._event.clear()


class RequestStats(Protocol):
    def on_first_token(self, st: Stream) -> None: ...
    def on_finish(self, st: Stream) -> None: ...


class EngineDriver:
    """Steps one `Engine` on the wall clock (see the module docstring). Use from the asyncio loop's thread only."""

    def __init__(
        self,
        engine: Engine,
        time_scale: float = 1.0,
        stats: RequestStats | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        self.engine = engine
        self.time_scale = time_scale
        self.fault_slowdown = 1.0
        engine.slowdown = time_scale
        self.stats = stats
        self.clock = clock or WallClock()
        self.streams: dict[Seq, Stream] = {}
        self.alive = True
        self._next_id = 0
        self._t = -math.inf  # engine time of the last event (a step end or an external change)
        self._stall_until = -math.inf
        self._pending_aborts: list[Stream] = []
        self._queued: dict[Stream, None] = {}  # submitted, not yet admitted (for the queue-time metric)
        self._run_obj: object | None = None
        self._run_emitted = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- requests ----------------------------------------------------------------------------------------------
    def submit(
        self,
        keys: tuple[int, ...],
        tokens: tuple[int, ...],
        output_tokens: int,
        length_stop: bool,
        tail_text: str = "",
        tail_parent: int = 0,
        model: str | None = None,
    ) -> Stream | None:
        """Queue a request arriving now; None if it can never fit (prompt + output > max_model_len)."""
        if not self.alive:
            raise RuntimeError("engine is down")
        now = self.clock.now()
        self._advance(now)
        self._next_id += 1
        req = Request(
            id=self._next_id, arrival_s=now, prompt_tokens=sum(tokens), output_tokens=output_tokens,
            segment_keys=keys, segment_tokens=tokens, max_tokens=output_tokens, model=model,
        )  # fmt: skip
        seq = self.engine.add(req)
        if seq is None:
            return None
        st = Stream(self._next_id, seq, now, length_stop, tail_text, tail_parent)
        self.streams[seq] = st
        self._queued[st] = None
        self._changed(now)
        return st

    def abort(self, st: Stream, reason: str = "abort") -> None:
        """The client went away: free the request's KV at the next step boundary (at once if not scheduled)."""
        if st.done or not self.alive:
            return
        now = self.clock.now()
        self._advance(now)
        if st.done:
            return
        if st.seq.phase == WAITING or self.engine.busy_until is None:
            self._apply_abort(st, reason)
        else:
            st.finish_reason = reason
            self._pending_aborts.append(st)
        self._changed(now)

    # ---- faults -------------------------------------------------------------------------------------------------
    def set_slowdown(self, factor: float) -> None:
        now = self.clock.now()
        self._advance(now)
        self.fault_slowdown = factor
        self.engine.slowdown = self.time_scale * factor
        self._changed(now)  # a decode run in progress was timed at the old speed: cut it at the step in progress

    def stall(self, seconds: float) -> None:
        """Start no step for `seconds` of wall time (the step in progress still finishes)."""
        now = self.clock.now()
        self._advance(now)
        self._stall_until = now + seconds
        self._changed(now)

    def end_stall(self) -> None:
        now = self.clock.now()
        self._advance(now)
        self._stall_until = -math.inf
        self._changed(now)

    @property
    def stalled_until(self) -> float | None:
        return self._stall_until if self._stall_until > self.clock.now() else None

    def fail(self, reason: str = "engine failed") -> None:
        """The engine dies: every unfinished request ends with an error."""
        if not self.alive:
            return
        self.alive = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.engine.fail()
        for st in self.streams.values():
            st.done = True
            st.error = reason
            st.finish_reason = "abort"
            st.wake()
        self.streams.clear()
        self._queued.clear()
        self._pending_aborts.clear()

    # ---- stepping -----------------------------------------------------------------------------------------------
    def _changed(self, now: float) -> None:
        """Something external changed at `now`: cut a decode run short, start an idle engine, re-arm the timer."""
        self._t = max(self._t, now)
        if self.engine.run is not None:
            self.engine.interrupt(now)
        self._advance(now)
        self._schedule()

    def _advance(self, now: float) -> None:
        """Apply everything the model says has happened by `now` (see the module docstring)."""
        eng = self.engine
        while self.alive:
            run = eng.run
            if run is not None:
                if run is not self._run_obj:
                    self._run_obj, self._run_emitted = run, 0
                m = min(run.done_by(now), run.steps - 1)
                if m > self._run_emitted:
                    self._run_emitted = m
                    self._notify(eng.step_idx + m)
            end = eng.busy_until
            if end is not None:
                if end > now:
                    return
                firsts, done = eng.finish_step(end)
                self._run_obj = None
                self._t = max(self._t, end)
                self._after_step(end, firsts, done)
                continue
            if not eng.has_work():
                return
            t = max(self._t, self._stall_until)
            if t > now:
                return
            if eng.start_step(t) is None:
                return  # KV full with nothing schedulable: wait for an external change (an abort)
            self._t = t
            self._admissions(t)

    def _after_step(self, end: float, firsts: list[Seq], done: list[Seq]) -> None:
        streams = self.streams
        for seq in firsts:
            st = streams.get(seq)
            if st is not None:
                st.first_t = end
                st.hit = seq.hit
                if self.stats is not None:
                    self.stats.on_first_token(st)
        for seq in done:
            st = streams.pop(seq, None)
            if st is None:
                continue
            st.gen = seq.generated
            st.end_t = end
            st.done = True
            st.finish_reason = "length" if st.length_stop else "stop"
            engine_ops.cache_answer(self.engine, seq, st.tail_text + filler_text(st.gen), st.tail_parent)
            if self.stats is not None:
                self.stats.on_finish(st)
            st.wake()
        if self._pending_aborts:
            pending, self._pending_aborts = self._pending_aborts, []
            for st in pending:
                self._apply_abort(st, st.finish_reason or "abort")
        self._notify(self.engine.step_idx)

    def _apply_abort(self, st: Stream, reason: str) -> None:
        if st.done:
            return
        engine_ops.abort(self.engine, st.seq)
        self.streams.pop(st.seq, None)
        self._queued.pop(st, None)
        st.gen = max(st.gen, st.seq.generated)
        st.done = True
        st.finish_reason = reason
        st.end_t = self.clock.now()
        if self.stats is not None:
            self.stats.on_finish(st)
        st.wake()

    def _notify(self, steps_done: int) -> None:
        """Wake every stream whose generated-token count grew (`steps_done` = global steps ended)."""
        for seq, st in self.streams.items():
            g = seq.generated + steps_done - seq.d0 if seq.phase == DECODE else seq.generated
            if g > st.gen:
                st.gen = g
                if st.per_token:
                    st.wake()

    def _admissions(self, t: float) -> None:
        """Record the admission time of requests the step starting at `t` took from the queue."""
        if not self._queued:
            return
        for st in [s for s in self._queued if s.seq.phase != WAITING]:
            st.admitted_t = t
            del self._queued[st]

    def next_event(self) -> float | None:
        """Engine time of the next thing the model will do (a step end, a decode-run step end, a stall's end)."""
        eng = self.engine
        if not self.alive:
            return None
        run = eng.run
        if run is not None:
            m = self._run_emitted if run is self._run_obj else 0
            return run.end_of(min(m + 1, run.steps))
        if eng.busy_until is not None:
            return eng.busy_until
        if eng.has_work() and self._stall_until > self._t:
            return self._stall_until
        return None

    def _schedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        t = self.next_event()
        if t is None:
            return
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(max(0.0, t - self.clock.now()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._advance(self.clock.now())
        self._schedule()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


StatsFactory = Callable[[], RequestStats]
