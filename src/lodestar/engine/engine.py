"""A vLLM v1-like engine instance, stepped by an external clock (the simulator's event loop or the emulator).

Consumes: `Request`s (`add`), a `PerfModel` for step latency, and the caller's notion of time. Produces: step end
times (`start_step`), per-step outcomes (`finish_step` -> first tokens and completions), and vLLM-named counters
(`EngineCounters`) for scrapes.

Semantics (vLLM v1 scheduler, DESIGN.md section 3):
- Continuous batching with chunked prefill: each step has a token budget `max_num_batched_tokens`. Running
  sequences are served first (every decoding sequence gets its one token, then partial prefills in admission
  order), then waiting sequences are admitted FCFS while budget, `max_num_seqs` and KV blocks allow.
- Paged KV cache with automatic prefix caching (`KVCache`), blocks allocated as tokens are scheduled.
- Preemption by recompute: when a running sequence needs a block and none is free, the most recently admitted
  running sequence is preempted (its blocks freed; it returns to the front of the waiting queue and later
  recomputes prompt + generated tokens, hitting whatever prefix is still cached).
- The prefill step that finishes a prompt emits the first token; each later step emits one token per decoding
  sequence.

Cost: a step costs O(1) for all decoding sequences together plus O(1) per event (a block boundary, a completion,
a prefill chunk): decoding sequences are not touched per token. Their progress is derived from a global step
counter, and the steps at which each one needs its next KV block or finishes are kept in buckets.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass

from lodestar.engine import decode_run
from lodestar.engine.kv_cache import CacheEntry, KVCache
from lodestar.engine.perf_model import PerfModel
from lodestar.engine.phases import DECODE, DONE, PREFILL, WAITING
from lodestar.request import Request


@dataclass(frozen=True, slots=True)
class EngineConfig:
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    block_size: int = 16
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None  # default: what the KV cache holds


class EngineCounters:
    """Cumulative counters and gauges a vLLM instance exports (see `metric_names`)."""

    __slots__ = (
        "generation_tokens",
        "preemptions",
        "prefix_hits",
        "prefix_queries",
        "prompt_tokens",
        "requests_finished",
        "ttft_count",
        "ttft_sum",
    )

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.preemptions = 0
        self.requests_finished = 0
        self.ttft_sum = 0.0
        self.ttft_count = 0


class Seq:
    """Engine-side state of one request."""

    __slots__ = (
        "blocks",
        "computed",
        "d0",
        "epoch",
        "first_token_s",
        "generated",
        "hit",
        "matched",
        "phase",
        "prompt",
        "refs",
        "reg_idx",
        "reg_pos",
        "req",
    )

    def __init__(self, req: Request) -> None:
        self.req = req
        self.prompt = req.prompt_tokens  # tokens whose KV must exist before decoding (grows on preemption)
        self.computed = 0  # prompt tokens with KV (cached hit included)
        self.hit = 0  # prefix-cache hit at the last admission, tokens
        self.blocks = 0  # private blocks held (not in shared cache entries)
        self.refs: list[CacheEntry] = []  # cache entries referenced (matched or registered)
        self.reg_idx = 0  # next prompt segment to consider for registration in the cache
        self.reg_pos = 0  # token position where segment `reg_idx` starts
        self.phase = WAITING
        self.d0 = 0  # global step index of the first decode step (while decoding)
        self.generated = 0  # tokens generated before the current decode run
        self.epoch = 0  # bumped on preemption; stale bucket entries are skipped
        self.first_token_s: float | None = None
        self.matched = False


class Engine:
    """One simulated instance. The caller drives it: `add`, `start_step`, `finish_step` (see module doc)."""

    def __init__(self, engine_id: str, perf: PerfModel, config: EngineConfig | None = None) -> None:
        self.id = engine_id
        self.perf = perf
        self.cfg = config or EngineConfig()
        if self.cfg.max_num_batched_tokens < self.cfg.max_num_seqs:
            raise ValueError("max_num_batched_tokens must be >= max_num_seqs (every decoder runs each step)")
        cap_tokens = perf.kv_capacity_tokens(self.cfg.gpu_memory_utilization)
        self.kv = KVCache(cap_tokens // self.cfg.block_size, self.cfg.block_size, self.cfg.enable_prefix_caching)
        self.max_model_len = min(self.cfg.max_model_len or 1 << 62, self.kv.num_blocks * self.cfg.block_size)
        self.counters = EngineCounters()
        self.waiting: deque[Seq] = deque()
        self.running: dict[Seq, None] = {}  # admission order; the last one is preempted first
        self.prefilling: list[Seq] = []
        self.n_dec = 0
        self.dec_ctx_base = 0  # sum over decoders of (prompt + 1 - d0); context sum at step k = base + n_dec * k
        self.step_idx = 0  # steps completed
        self.block_due: dict[int, list[tuple[Seq, int]]] = {}
        self.finish_due: dict[int, list[tuple[Seq, int]]] = {}
        self.finish_keys: list[int] = []  # heap of finish_due keys (lazily cleaned)
        self.run: decode_run.DecodeRun | None = None  # the decode run in progress, if any (decode_run.py)
        self.busy_until: float | None = None  # end time of the step in progress
        self.slowdown = 1.0
        self.alive = True
        self._chunks: list[tuple[Seq, int]] = []
        self._step_has_decode = False

    # ---- public state ----------------------------------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def add(self, req: Request) -> Seq | None:
        """Queue a request; None if it can never run here (prompt + output longer than `max_model_len`)."""
        if req.prompt_tokens + req.output_tokens > self.max_model_len:
            return None
        seq = Seq(req)
        self.waiting.append(seq)
        return seq

    # ---- stepping --------------------------------------------------------------------------------------------
    def start_step(self, now: float) -> float | None:
        """Schedule one step at `now`; returns its end time, or None if there is nothing to run."""
        if not self.alive or not self.has_work():
            self.busy_until = None
            return None
        cfg = self.cfg
        kv = self.kv
        k = self.step_idx
        budget = cfg.max_num_batched_tokens
        # 1. decoding sequences that cross a block boundary in this step need one more block each
        due = self.block_due.pop(k, None)
        if due:
            for seq, ep in due:
                if seq.epoch != ep or seq.phase != DECODE:
                    continue
                if self._alloc_or_preempt(seq, 1):
                    seq.blocks += 1
                    self._due(self.block_due, k + cfg.block_size, seq)
        run_end = decode_run.try_decode_run(self, now, k)
        if run_end is not None:
            self._chunks = []
            return run_end
        budget -= self.n_dec
        # 2. partial prefills, in admission order
        chunks: list[tuple[Seq, int]] = []
        attn = 0.0
        bs = cfg.block_size
        for seq in list(self.prefilling):
            if budget <= 0:
                break
            if seq.phase != PREFILL:
                continue
            c = min(seq.prompt - seq.computed, budget)
            need = -(-(seq.computed + c) // bs) - seq.computed // bs - (1 if seq.computed % bs else 0)
            if need > 0 and not self._alloc_or_preempt(seq, need):
                continue  # seq itself was preempted
            seq.blocks += max(need, 0)
            chunks.append((seq, c))
            attn += c * (seq.computed + c / 2)
            budget -= c
        # 3. admit waiting sequences FCFS
        while self.waiting and budget > 0 and len(self.running) < cfg.max_num_seqs:
            seq = self.waiting[0]
            req = seq.req
            hit, used = kv.match(req.segment_keys, req.segment_tokens, seq.prompt - 1)
            c = min(seq.prompt - hit, budget)
            need = -(-(hit + c) // bs) - hit // bs
            kv.acquire(used)  # pin the hit before allocating, so allocation cannot evict it
            if not kv.allocate(need):
                kv.release(used)
                break
            self.waiting.popleft()
            if not seq.matched:  # count one cache query per request, as vLLM's counters do per admission
                seq.matched = True
                self.counters.prefix_queries += req.prompt_tokens
                self.counters.prefix_hits += hit
            seq.refs = list(used)
            seq.hit = hit
            seq.computed = hit
            seq.blocks = need
            seq.reg_idx, seq.reg_pos = 0, 0
            self._advance_registration(seq)
            seq.phase = PREFILL
            self.running[seq] = None
            self.prefilling.append(seq)
            chunks.append((seq, c))
            attn += c * (hit + c / 2)
            budget -= c
        tokens = cfg.max_num_batched_tokens - budget
        if tokens <= 0:
            self.busy_until = None
            return None  # KV full with nothing schedulable: wait for an external change
        self._chunks = chunks
        self._step_has_decode = self.n_dec > 0
        dec_ctx = self.dec_ctx_base + self.n_dec * k
        dt = self.perf.step_time(tokens, attn, self.n_dec, dec_ctx) * self.slowdown
        self.busy_until = now + dt
        return self.busy_until

    def finish_step(self, now: float) -> tuple[list[Seq], list[Seq]]:
        """Apply the step that ends at `now`. Returns (sequences that emitted their first token, completed ones)."""
        firsts: list[Seq] = []
        done: list[Seq] = []
        if self.run is not None:
            k = decode_run.finish_decode_run(self)
            self._finish_decoders(k, done)
            return firsts, done
        k = self.step_idx
        counters = self.counters
        if self._step_has_decode:
            counters.generation_tokens += self.n_dec
        for seq, c in self._chunks:
            if seq.phase != PREFILL:
                continue
            seq.computed += c
            counters.prompt_tokens += c
            self._advance_registration(seq)
            if seq.computed >= seq.prompt:
                self.prefilling.remove(seq)
                seq.generated += 1
                counters.generation_tokens += 1
                if seq.first_token_s is None:
                    seq.first_token_s = now
                    counters.ttft_sum += now - seq.req.arrival_s
                    counters.ttft_count += 1
                    firsts.append(seq)
                if seq.generated >= seq.req.output_tokens:
                    self._complete(seq)
                    done.append(seq)
                else:
                    self._start_decode(seq, k + 1)
        self._chunks = []
        self._finish_decoders(k, done)
        return firsts, done

    def _finish_decoders(self, k: int, done: list[Seq]) -> None:
        """Complete the decoders whose last token came in step k; step k is then over."""
        fin = self.finish_due.pop(k, None)
        if fin:
            for seq, ep in fin:
                if seq.epoch == ep and seq.phase == DECODE:
                    self._stop_decode(seq, k)
                    self._complete(seq)
                    done.append(seq)
        self.step_idx = k + 1
        self.busy_until = None

    def interrupt(self, now: float) -> float | None:
        """Something reached the engine at `now` mid decode run: end the run after the step in progress.

        Returns the new end of the current step, or None if the schedule did not change."""
        return decode_run.interrupt(self, now)

    def generation_tokens_at(self, t: float) -> int:
        """The generation-token counter as a scrape at time t (inside a decode run) sees it."""
        return self.counters.generation_tokens + self.n_dec * decode_run.steps_done_by(self, t)

    def steps_started_by(self, now: float) -> int:
        """Index of the step in progress (or next) at `now`, counting steps of a decode run."""
        return self.step_idx + decode_run.steps_done_by(self, now)

    # ---- internals -------------------------------------------------------------------------------------------
    @staticmethod
    def _due(buckets: dict[int, list[tuple[Seq, int]]], step: int, seq: Seq) -> None:
        b = buckets.get(step)
        if b is None:
            buckets[step] = [(seq, seq.epoch)]
        else:
            b.append((seq, seq.epoch))

    def _due_finish(self, step: int, seq: Seq) -> None:
        if step not in self.finish_due:
            heapq.heappush(self.finish_keys, step)
        self._due(self.finish_due, step, seq)

    def _start_decode(self, seq: Seq, d0: int) -> None:
        """`seq` decodes from global step d0 on; bucket its next block boundary and its completion."""
        seq.phase = DECODE
        seq.d0 = d0
        self.n_dec += 1
        self.dec_ctx_base += seq.prompt + 1 - d0
        bs = self.cfg.block_size
        total_blocks = -(-seq.prompt // bs)
        # KV slots needed at step j: prompt + (j - d0) + 1; a new block is due when that exceeds total_blocks*bs
        self._due(self.block_due, d0 + total_blocks * bs - seq.prompt, seq)
        remaining = seq.req.output_tokens - seq.generated
        self._due_finish(d0 + remaining - 1, seq)

    def _stop_decode(self, seq: Seq, last_step: int) -> None:
        """Leave the decode set after step `last_step` ran (inclusive)."""
        self.n_dec -= 1
        self.dec_ctx_base -= seq.prompt + 1 - seq.d0
        seq.generated += last_step - seq.d0 + 1

    def _advance_registration(self, seq: Seq) -> None:
        """Cache every prompt segment whose blocks are now computed (segments of the original prompt only)."""
        req = seq.req
        keys, toks = req.segment_keys, req.segment_tokens
        bs = self.cfg.block_size
        kv = self.kv
        i, pos = seq.reg_idx, seq.reg_pos
        while i < len(keys):
            end = pos + toks[i]
            end_aligned = (end // bs) * bs
            if end_aligned > seq.computed:
                break
            nblk = end // bs - pos // bs
            if nblk > 0 and kv.prefix_caching:
                key = keys[i]
                e = kv.entries.get(key)
                if e is None:
                    if end_aligned > seq.hit:
                        e = kv.register(key, nblk)
                        if e is not None:
                            seq.blocks -= nblk
                            seq.refs.append(e)
                elif e.blocks < e.full_blocks and e.ref > 0 and seq.refs and seq.refs[-1] is e:
                    extra = e.full_blocks - e.blocks
                    kv.upgrade(e, extra)
                    seq.blocks -= extra
            i, pos = i + 1, end
        seq.reg_idx, seq.reg_pos = i, pos

    def _release(self, seq: Seq) -> None:
        self.kv.release(seq.refs)
        self.kv.free(seq.blocks)
        seq.refs = []
        seq.blocks = 0

    def _complete(self, seq: Seq) -> None:
        self.running.pop(seq, None)
        seq.phase = DONE
        self.counters.requests_finished += 1
        req = seq.req
        out_key = req.output_key
        if out_key is not None and self.kv.prefix_caching and seq.prompt == req.prompt_tokens:
            # the generated answer is cached under the key the next turn of the conversation will use
            bs = self.cfg.block_size
            start, end = req.prompt_tokens, req.prompt_tokens + req.output_tokens
            nblk = min(end // bs - start // bs, seq.blocks)
            if nblk > 0 and out_key not in self.kv.entries:
                e = self.kv.register(out_key, nblk)
                if e is not None:
                    seq.blocks -= nblk
                    seq.refs.append(e)
        self._release(seq)

    def _alloc_or_preempt(self, seq: Seq, n: int) -> bool:
        """Allocate n blocks for running `seq`, preempting the newest running sequences as needed.

        Returns False if `seq` itself had to be preempted."""
        kv = self.kv
        while not kv.allocate(n):
            victim = next(reversed(self.running))
            self._preempt(victim)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Seq) -> None:
        self.counters.preemptions += 1
        if seq.phase == DECODE:
            self._stop_decode(seq, self.step_idx - 1)
        elif seq.phase == PREFILL:
            self.prefilling.remove(seq)
        self.running.pop(seq, None)
        self._release(seq)
        seq.epoch += 1
        seq.phase = WAITING
        # recompute: the generated tokens become part of the prompt to rebuild
        seq.prompt = seq.req.prompt_tokens + seq.generated
        seq.computed = 0
        seq.hit = 0
        self.waiting.appendleft(seq)

    # ---- faults ----------------------------------------------------------------------------------------------
    def fail(self) -> list[Seq]:
        """The instance dies: returns every unfinished sequence (the caller decides failover or loss)."""
        self.alive = False
        self.run = None
        lost = list(self.running) + list(self.waiting)
        for s in lost:
            if s.phase == DECODE:
                self._stop_decode(s, self.step_idx - 1)
            s.phase = DONE
        self.running.clear()
        self.waiting.clear()
        self.prefilling.clear()
        self.busy_until = None
        return lost
