"""Prompt text -> prefix segments: the ONE shared tokenisation approximation of the live path.

Consumes: prompt text (a completion prompt, or chat messages flattened by `flatten_chat`). Produces: the chained
segment keys and token counts (`lodestar.prefix.chain_key`) that the engine model's prefix cache and the gateway's
prefix index both use, so that an emulated engine and the router agree on what is shared.

The approximation (no tokenizer is loaded):
- a token is 4 characters (Python `str` characters, i.e. code points): `estimate_tokens(text) = ceil(chars / 4)`,
  at least 1;
- the text is cut into blocks of `BLOCK_CHARS = 64` characters; every block is one segment of 16 tokens (the last
  one `ceil(rest / 4)` tokens), keyed by `chain_key(previous key, UTF-8 bytes of the block)` from
  `prefix.ROOT_KEY` (lone surrogates pass through: `surrogatepass`).
So a 64-character block is exactly one 16-token KV block of the engine model (its default `block_size`), and two
prompts share KV for exactly the whole 64-character blocks they have in common from the start. Real tokenizers
give about 3.5-4.5 characters per token for English; the estimate is good for lengths, and prefix sharing is
exact at 64-character granularity.

Chat messages are flattened as one line per message, `"{role}: {content}\\n"` (content parts of type `text` are
concatenated; other parts are ignored), followed by the generation prompt `"assistant: "`, as a chat template
ends with the assistant header. So the next turn of a conversation (earlier messages resent verbatim, then the
answer as an assistant message) starts with the previous prompt followed by the previous answer: an engine that
caches generated tokens (vLLM, the emulator) can hit the whole history.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from lodestar.prefix import ROOT_KEY, chain_key

BLOCK_CHARS = 64
CHARS_PER_TOKEN = 4
BLOCK_TOKENS = BLOCK_CHARS // CHARS_PER_TOKEN  # 16


def _utf8(block: str) -> bytes:
    """The bytes a block is hashed as (UTF-8; lone surrogates, which JSON allows, pass through)."""
    return block.encode("utf-8", "surrogatepass")


def tokens_for_chars(chars: int) -> int:
    """Token count of a text of `chars` characters: `ceil(chars / 4)`, at least 1."""
    return max(1, -(-chars // CHARS_PER_TOKEN))


def estimate_tokens(text: str) -> int:
    """Token count of `text` under the 4-characters-per-token approximation (at least 1)."""
    return tokens_for_chars(len(text))


def prompt_segments(
    text: str, parent: int = ROOT_KEY, *, block_chars: int = BLOCK_CHARS, max_segments: int | None = None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(segment keys, segment token counts) of `text`: one segment per 64-character block, chained from `parent`.

    The token counts sum to `estimate_tokens(text)`. An empty text is one 1-token segment. With `max_segments`,
    the text after the first `max_segments - 1` blocks is one last segment (`ceil(chars / 4)` tokens). Blocks of
    `block_chars` other than 64 give other keys (no longer the engine model's KV blocks), and counts that sum to
    `estimate_tokens(text)` only if `block_chars` is a multiple of 4."""
    if not text:
        return (chain_key(parent, ""),), (1,)
    n = len(text)
    cut = n if max_segments is None else min(n, max(0, max_segments - 1) * block_chars)
    if text.isascii():  # characters are bytes: encode once (the common case; 2x faster than per block)
        data = text.encode("ascii")
        blocks = [data[start : start + block_chars] for start in range(0, cut, block_chars)]
    else:
        blocks = [_utf8(text[start : start + block_chars]) for start in range(0, cut, block_chars)]
    if cut < n:
        blocks.append(_utf8(text[cut:]))
    keys: list[int] = []
    key = parent
    for block in blocks:
        key = chain_key(key, block)
        keys.append(key)
    last = n - (len(blocks) - 1) * block_chars  # characters in the last segment; the others are whole blocks
    toks = [-(-block_chars // CHARS_PER_TOKEN)] * (len(blocks) - 1)
    toks.append(-(-last // CHARS_PER_TOKEN))
    return tuple(keys), tuple(toks)


def full_block_keys(text: str, parent: int = ROOT_KEY) -> list[int]:
    """Keys of the whole 64-character blocks of `text` only (what a KV cache can hold for it)."""
    key = parent
    out = []
    for start in range(0, len(text) - BLOCK_CHARS + 1, BLOCK_CHARS):
        key = chain_key(key, _utf8(text[start : start + BLOCK_CHARS]))
        out.append(key)
    return out


def message_text(content: Any, other_part: Callable[[Any], str] | None = None) -> str:
    """The text of one chat message's `content` (a string, or a list of OpenAI content parts).

    Parts other than `{"type": "text", "text": str}` are ignored, or replaced by `other_part(part)` when given."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) or (isinstance(content, Iterable) and not isinstance(content, bytes | Mapping)):
        parts = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif other_part is not None:
                parts.append(other_part(part))
        return "".join(parts)
    return str(content)


GENERATION_PROMPT = "assistant: "


def flatten_chat(
    messages: Iterable[Mapping[str, Any]],
    add_generation_prompt: bool = True,
    other_part: Callable[[Any], str] | None = None,
) -> str:
    """Chat messages as prompt text: one `"{role}: {content}\\n"` line per message, then `"assistant: "`
    (`other_part`: see `message_text`)."""
    text = "".join([f"{m.get('role', 'user')}: {message_text(m.get('content'), other_part)}\n" for m in messages])
    return text + GENERATION_PROMPT if add_generation_prompt else text
