"""Client request parsing: OpenAI request bodies -> what the router needs, or a client error.

Consumes: the raw body bytes of `POST /v1/completions` or `POST /v1/chat/completions`.
Produces: a `ParsedRequest` (model, stream flag, the parsed JSON, the prompt's estimated token count and its chained
prefix segment keys for `RequestInfo`), or raises `ClientError` (status 400 with an OpenAI error message). Nothing
here can raise anything else for any input: the fuzz tests hold it to that.

Prompt hashing is `lodestar.text_blocks`, the one tokenisation approximation shared with the emulated engine
(`lodestar emulate`) and the replay client: a completion prompt, or chat messages flattened by
`text_blocks.flatten_chat` (`"{role}: {content}\\n"` per message, then `"assistant: "`), is cut by
`text_blocks.prompt_segments` into 64-character blocks (16 tokens, the engine's KV block) with chained keys. So for
the same body the router's prefix index and the emulated engine's KV cache hold the same keys, and the next chat
turn (history + answer resent) shares every whole block of the previous turn's prompt. What this module adds:
- validation (`ClientError`); a batch of string prompts is joined with `"\\n"` (the emulator takes one prompt);
- a non-text content part (image, audio) contributes `"\\x00"` + a 16-hex-digit digest of its JSON, so different
  images give different keys (as in vLLM, whose block hashes include the image); the emulator ignores such parts,
  so its keys and the gateway's differ from the block holding the first non-text part on;
- `max_segments`: the rest of a longer prompt is one last segment (keys differ from the emulator's past
  `max_segments` blocks, 128K characters by default); `block_chars` other than 64 gives keys no engine shares;
- a prompt of token ids is exact: 16 ids per segment, keyed by the ids' bytes (the emulator renders each id as 4
  characters, so its blocks are the same 16 ids, under other key values: the same sharing);
- token counts corrected per model. Decision: the keys are always text_blocks' (they decide what is shared, and
  must not drift); the counts are text_blocks' (`ceil(chars / 4)` per block) scaled by `4 / r` and rounded, where
  `r` is the model's characters per text_blocks-token learned by `TokenEstimator` from the engines' reported
  `prompt_tokens` (`prompt_tokens` is the sum of the counts). An engine that counts as text_blocks does (the
  emulator) keeps `r` at exactly 4, and the rounding absorbs up to 3% off, so behind emulated engines the counts
  are text_blocks' exactly; behind a real engine (say 3.2 characters per token) a block counts 20 tokens, closer
  to what prefill and KV actually cost, and the keys are unchanged.
"""

from __future__ import annotations

import json
from array import array
from dataclasses import dataclass
from typing import Any

import xxhash

from lodestar.gateway import json_codec
from lodestar.prefix import ROOT_KEY, chain_key
from lodestar.text_blocks import BLOCK_CHARS, CHARS_PER_TOKEN, flatten_chat, prompt_segments, tokens_for_chars

TOKEN_BLOCK = 16  # token ids per segment when the prompt is given as ids


class ClientError(Exception):
    """A request the gateway refuses; `status` and an OpenAI-shaped error body."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        etype: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.etype = etype
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.etype, "param": self.param, "code": self.code}}


@dataclass(slots=True)
class ParsedRequest:
    kind: str  # "completions" | "chat"
    body: dict[str, Any]
    model: str | None
    stream: bool
    include_usage: bool  # the client itself asked for the usage chunk
    max_tokens: int | None
    prompt_chars: int
    prompt_tokens: int
    segment_keys: tuple[int, ...]
    segment_tokens: tuple[int, ...]
    exact_tokens: bool  # prompt given as token ids


class TokenEstimator:
    """Characters per token, per model: starts at `default`, follows the backends' reported prompt_tokens.

    Measured against text_blocks' own count (`4 * ceil(chars / 4) / reported`), so that an engine counting exactly
    as text_blocks does gives exactly 4 and no correction."""

    def __init__(self, default: float = float(CHARS_PER_TOKEN)) -> None:
        self.default = default
        self.ratio: dict[str | None, float] = {}

    def get(self, model: str | None) -> float:
        return self.ratio.get(model, self.default)

    def observe(self, model: str | None, chars: int, tokens: int) -> None:
        if chars < 64 or tokens <= 0 or (len(self.ratio) > 1000 and model not in self.ratio):
            return
        r = min(16.0, max(1.0, CHARS_PER_TOKEN * tokens_for_chars(chars) / tokens))
        old = self.ratio.get(model)
        self.ratio[model] = r if old is None else 0.9 * old + 0.1 * r


def _bad(message: str, param: str | None = None) -> ClientError:
    return ClientError(400, message, param=param)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _opt_int(body: dict[str, Any], key: str) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if not _is_int(v) or v < 0:
        raise _bad(f"'{key}' must be a non-negative integer", key)
    return int(v)


def _part_digest(part: Any) -> str:
    """What a content part other than `{"type": "text"}` contributes: a bare string itself, else a digest."""
    if isinstance(part, str):
        return part
    try:
        blob = json.dumps(part, sort_keys=True, default=str)
    except (TypeError, ValueError, RecursionError):
        blob = "?"
    return "\x00" + xxhash.xxh64_hexdigest(blob.encode("utf-8", "surrogatepass"))


def flatten_messages(messages: Any) -> str:
    """Chat messages -> `text_blocks.flatten_chat` text (see the module docstring), or `ClientError`."""
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _bad(f"messages[{i}] must be an object", "messages")
        if not isinstance(m.get("role"), str):
            raise _bad(f"messages[{i}].role must be a string", "messages")
        c = m.get("content")
        if c is None or isinstance(c, str):
            continue
        if not isinstance(c, list):
            raise _bad(f"messages[{i}].content must be a string, an array of parts or null", "messages")
        for j, part in enumerate(c):
            if isinstance(part, dict):
                if part.get("type") == "text" and not isinstance(part.get("text"), str):
                    raise _bad(f"messages[{i}].content[{j}].text must be a string", f"messages[{i}].content")
            elif not isinstance(part, str):
                raise _bad(f"messages[{i}].content[{j}] must be an object", f"messages[{i}].content")
    return flatten_chat(messages, other_part=_part_digest)


def _flatten_prompt(prompt: Any) -> tuple[str | None, list[int] | None]:
    """Completions `prompt` -> (text, None) or (None, token ids)."""
    if isinstance(prompt, str):
        return prompt, None
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return "\n".join(prompt), None
        if all(_is_int(p) for p in prompt):
            return None, prompt
        if all(isinstance(p, list) and p and all(_is_int(t) for t in p) for p in prompt):
            return None, [t for p in prompt for t in p]
    raise _bad("'prompt' must be a string, an array of strings, or an array (of arrays) of token ids", "prompt")


def text_segments(
    text: str, block_chars: int, max_segments: int, chars_per_token: float
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """`text_blocks.prompt_segments` of `text`, its counts scaled to `chars_per_token` (module docstring)."""
    keys, toks = prompt_segments(text, block_chars=block_chars, max_segments=max_segments)
    if chars_per_token != CHARS_PER_TOKEN:
        f = CHARS_PER_TOKEN / chars_per_token
        whole = int(toks[0] * f + 0.5) or 1  # every segment but the last is a whole block: one count for all
        toks = (whole,) * (len(toks) - 1) + (int(toks[-1] * f + 0.5) or 1,)
    return keys, toks


def token_segments(ids: list[int], max_segments: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Chained keys and counts of token ids cut in blocks of `TOKEN_BLOCK` ids."""
    keys: list[int] = []
    toks: list[int] = []
    parent = ROOT_KEY
    n = len(ids)
    pos = 0
    while pos < n:
        end = pos + TOKEN_BLOCK if len(keys) < max_segments - 1 else n
        block = ids[pos:end]
        try:
            raw = array("q", block).tobytes()
        except OverflowError:
            raw = repr(block).encode()
        parent = chain_key(parent, raw)
        keys.append(parent)
        toks.append(len(block))
        pos = end
    return tuple(keys), tuple(toks)


def parse_request(
    raw: bytes,
    kind: str,
    *,
    block_chars: int = BLOCK_CHARS,
    max_segments: int = 2048,
    estimator: TokenEstimator | None = None,
) -> ParsedRequest:
    """Validate and digest one client request body (see the module docstring)."""
    try:
        body = json_codec.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _bad("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise _bad("'model' must be a non-empty string", "model")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean", "stream")
    so = body.get("stream_options")
    if so is not None and not isinstance(so, dict):
        raise _bad("'stream_options' must be an object", "stream_options")
    include_usage = bool(stream and so and so.get("include_usage") is True)
    max_tokens = _opt_int(body, "max_tokens")
    if kind == "chat":
        mct = _opt_int(body, "max_completion_tokens")
        max_tokens = mct if mct is not None else max_tokens
        if "messages" not in body:
            raise _bad("missing required field 'messages'", "messages")
        text: str | None = flatten_messages(body["messages"])
        ids = None
    else:
        if "prompt" not in body:
            raise _bad("missing required field 'prompt'", "prompt")
        text, ids = _flatten_prompt(body["prompt"])
    cpt = estimator.get(model) if estimator is not None else CHARS_PER_TOKEN
    if ids is not None:
        keys, toks = token_segments(ids, max_segments)
        chars, exact = 0, True
    else:
        assert text is not None
        keys, toks = text_segments(text, block_chars, max_segments, cpt)
        chars, exact = len(text), False
    return ParsedRequest(
        kind=kind,
        body=body,
        model=model,
        stream=stream,
        include_usage=include_usage,
        max_tokens=max_tokens,
        prompt_chars=chars,
        prompt_tokens=sum(toks),
        segment_keys=keys,
        segment_tokens=toks,
        exact_tokens=exact,
    )


def upstream_body(p: ParsedRequest, raw: bytes, stream_upstream: bool) -> bytes:
    """The body sent to the engine: a stream with the usage chunk when `stream_upstream` (the client's bytes
    untouched when it already asked for exactly that), else the client's bytes."""
    if not stream_upstream or (p.stream and p.include_usage):
        return raw
    b = dict(p.body)
    b["stream"] = True
    so = dict(b.get("stream_options") or {})
    so["include_usage"] = True
    b["stream_options"] = so
    return json_codec.dumps(b, raw)
