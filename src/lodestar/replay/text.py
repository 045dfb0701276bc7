"""Block-structured prompts -> prompt text with the same shared prefixes.

Consumes: a workload `Request` (chained `segment_keys` and `segment_tokens`), and the answers received so far.
Produces: its prompt text. Segment i becomes `segment_text(key_i, tokens_i)`: exactly 4 characters per token
(`text_blocks.CHARS_PER_TOKEN`), words of three letters and a space drawn from a generator seeded by the key. Equal
keys give equal text and keys chain, so two prompts share exactly the text of their common leading segments, and
the 64-character hashing blocks of `text_blocks.prompt_segments` (16 tokens each, the engine's KV block) see the
same shared prefix, in whole blocks, as the engine model sees in the simulator.

Multi-turn: a segment whose key is the `output_key` of an earlier request that has completed is replaced by the
answer that request actually received (a chat client resends the real answer), so an engine that caches
generated tokens (vLLM, the emulator) can hit the conversation history. An emulated engine's answer of n tokens
is 4n characters, so block alignment is preserved; a real model's answer changes the prompt length.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from lodestar.request import Request


@lru_cache(maxsize=8192)
def segment_text(key: int, tokens: int) -> str:
    """Deterministic text of a segment: `tokens` words of 3 lowercase letters + a space (4 characters each)."""
    if tokens <= 0:
        return ""
    rng = np.random.default_rng(key & 0xFFFFFFFFFFFFFFFF)
    arr = rng.integers(97, 123, size=(tokens, 4), dtype=np.uint8)
    arr[:, 3] = 32
    return arr.tobytes().decode("ascii")


class PromptBuilder:
    """Turns requests into text; remembers answers by the workload's `output_key` (when `resend_answers`)."""

    def __init__(self, resend_answers: bool = True) -> None:
        self.resend = resend_answers
        self.answers: dict[int, str] = {}

    def text(self, req: Request) -> str:
        answers = self.answers
        parts = []
        for key, n in zip(req.segment_keys, req.segment_tokens, strict=True):
            a = answers.get(key) if answers else None
            parts.append(a if a is not None else segment_text(key, n))
        return "".join(parts)

    def answered(self, req: Request, answer: str) -> None:
        if self.resend and req.output_key is not None and answer:
            self.answers[req.output_key] = answer
