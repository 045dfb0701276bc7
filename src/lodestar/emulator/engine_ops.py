"""Two live-only operations on the engine model that `Engine` does not offer: abort, and caching a generated answer.

Consumes: an `Engine` between two steps (never while a step that includes the sequence is in flight; the driver
defers aborts to the next step boundary) and a `Seq`. Produces: the same engine state the engine's own code would
produce (`_preempt` minus the requeue; `_complete`'s answer caching), through its internal helpers.

- `abort(engine, seq)`: a client disconnected. A waiting sequence leaves the queue; a running one leaves the
  batch and its KV is released (cached prefix entries stay cached, private blocks are freed), as vLLM frees an
  aborted request's blocks. Not counted as finished.
- `cache_answer(engine, seq, text, parent)`: vLLM caches every whole KV block of a finished sequence, generated
  tokens included, so the next turn of a conversation (whose prompt contains this answer) hits them. The engine
  model caches an answer only under a workload-given `output_key`; live there is none, so right after completion
  the answer's blocks (those `Engine._complete` would register: `(prompt + generated) // bs - prompt // bs`) are
  registered under the keys that hashing the conversation's text gives them (`text_blocks.full_block_keys` of the
  prompt's tail + answer text, chained from the prompt's last whole block). The blocks were just freed by the
  completion, so they are re-taken from never-cached free blocks, never by evicting cache.
"""

from __future__ import annotations

import contextlib

from lodestar.engine.engine import Engine, Seq
from lodestar.engine.phases import DECODE, DONE, PREFILL, WAITING
from lodestar.text_blocks import BLOCK_CHARS, BLOCK_TOKENS, CHARS_PER_TOKEN, full_block_keys


def abort(engine: Engine, seq: Seq) -> None:
    """Remove `seq` from the engine and free its KV (between steps only)."""
    if seq.phase == DONE:
        return
    if seq.phase == WAITING:
        with contextlib.suppress(ValueError):
            engine.waiting.remove(seq)
        seq.phase = DONE
        return
    if seq.phase == DECODE:
        engine._stop_decode(seq, engine.step_idx - 1)
    elif seq.phase == PREFILL and seq in engine.prefilling:
        engine.prefilling.remove(seq)
    engine.running.pop(seq, None)
    engine._release(seq)
    seq.epoch += 1  # its pending block/finish bucket entries become stale
    seq.phase = DONE


def cache_answer(engine: Engine, seq: Seq, text: str, parent: int) -> int:
    """Register the finished `seq`'s answer blocks under text-hash keys; returns the number of blocks cached.

    `text` = prompt text after its last whole 64-character block + the generated text; `parent` = the key of that
    last whole block."""
    kv = engine.kv
    bs = engine.cfg.block_size
    req = seq.req
    if not kv.prefix_caching or bs % BLOCK_TOKENS or seq.prompt != req.prompt_tokens or seq.generated <= 0:
        return 0
    p = req.prompt_tokens
    first, last = p // bs, (p + seq.generated) // bs  # engine blocks [first, last) hold answer tokens
    keys = full_block_keys(text, parent)
    tail = len(text) - CHARS_PER_TOKEN * seq.generated  # prompt characters before the answer in `text`
    entries = []
    for b in range(first, last):
        t = (b + 1) * bs - 1  # the block's last token; its text block is where that token's characters are
        j = (tail + CHARS_PER_TOKEN * (t - p)) // BLOCK_CHARS
        if j < 0 or j >= len(keys) or kv.free_plain < 1:
            break
        key = keys[j]
        if key in kv.entries:
            continue
        kv.allocate(1)
        e = kv.register(key, 1)
        if e is None:
            kv.free(1)
            continue
        entries.append(e)
    kv.release(entries)  # unreferenced: evictable, the answer's tail first
    return len(entries)
