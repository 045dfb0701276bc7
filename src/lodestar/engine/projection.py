"""What-if TTFT of a request on an engine, from the engine's true state (simulator internals).

Consumes: a live `Engine` (internals!) and a `Request`. Produces: the projected time until that request's first
token if it were added now. Used only by the sim-only `oracle` policy and by the ideal bound; a routing policy must
never call it.

Projection: the request joins the end of the FCFS prefill queue (partial prefills, then waiting sequences, then
this request). Each future step gives the prefill queue the token budget minus one token per decoding sequence;
the decode batch is held at its current size with its context growing one token per step. No further arrivals,
no KV pressure, no completions are assumed (a greedy clairvoyant estimate, not an exact replay).
"""

from __future__ import annotations

from lodestar.engine.engine import Engine
from lodestar.engine.phases import PREFILL
from lodestar.request import Request

_MAX_STEPS = 4096


def project_ttft(engine: Engine, req: Request, now: float) -> float:
    """Projected TTFT (seconds from `now`) of `req` on `engine`; infinity if the engine is down."""
    if not engine.alive:
        return float("inf")
    kv = engine.kv
    cfg = engine.cfg
    busy = engine.busy_until is not None
    t = now
    if engine.run is not None:
        t = engine.run.end_of(min(engine.run.done_by(now) + 1, engine.run.steps))
    elif engine.busy_until is not None:
        t = engine.busy_until
    in_step = {id(s): c for s, c in engine._chunks}
    queue: list[tuple[int, int]] = []  # (remaining tokens, context before them)
    for s in engine.prefilling:
        if s.phase == PREFILL:
            done = s.computed + in_step.get(id(s), 0)
            if s.prompt > done:
                queue.append((s.prompt - done, done))
    for s in engine.waiting:
        hit, _ = kv.match(s.req.segment_keys, s.req.segment_tokens, s.prompt - 1)
        queue.append((s.prompt - hit, hit))
    hit, _ = kv.match(req.segment_keys, req.segment_tokens, req.prompt_tokens - 1)
    queue.append((req.prompt_tokens - hit, hit))
    n_dec = engine.n_dec
    k = engine.steps_started_by(now) + (1 if busy else 0)
    ctx = engine.dec_ctx_base + n_dec * k
    per_step = max(1, cfg.max_num_batched_tokens - n_dec)
    qi = 0
    rem, done = queue[0]
    steps = 0
    perf = engine.perf
    while True:
        budget = per_step
        attn = 0.0
        used = 0
        while budget > 0 and qi < len(queue):
            c = min(rem, budget)
            attn += c * (done + c / 2)
            used += c
            budget -= c
            rem -= c
            done += c
            if rem == 0:
                qi += 1
                if qi < len(queue):
                    rem, done = queue[qi]
        t += perf.step_time(used + n_dec, attn, n_dec, ctx) * engine.slowdown
        ctx += n_dec
        steps += 1
        if qi >= len(queue) or steps >= _MAX_STEPS:
            return t - now
