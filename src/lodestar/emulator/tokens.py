"""Deterministic filler text that emulated engines generate.

Consumes: a token index (or a count). Produces: the text of generated token i, always exactly 4 ASCII characters
(`text_blocks.CHARS_PER_TOKEN`) with nothing to escape in JSON, so that an answer of n tokens is 4n characters and a
client that sends it back in its next prompt re-creates exactly the 64-character blocks the engine cached.
Every answer is the same sequence: token i is `FILLER[i % len(FILLER)]`.
"""

from __future__ import annotations

FILLER = (
    " the", " sea", " was", " red", " and", " far", " sky", " old", " one", " day", " new", " way",
    " sun", " map", " two", " key", " tin", " fox", " ran", " low",
)  # fmt: skip
_PERIOD = len(FILLER)
_CYCLE = "".join(FILLER)
assert all(len(t) == 4 for t in FILLER)


def filler_token(i: int) -> str:
    """Text of generated token i (0-based)."""
    return FILLER[i % _PERIOD]


def filler_text(n: int) -> str:
    """Text of the first n generated tokens."""
    q, r = divmod(n, _PERIOD)
    return _CYCLE * q + _CYCLE[: 4 * r]
