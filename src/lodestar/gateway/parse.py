"""Client request parsing: OpenAI request bodies -> what the router needs, or a client error.

Consumes: the raw body bytes of `POST /v1/completions` or `POST /v1/chat/completions`.
Produces: a `ParsedRequest` (model, stream flag, the parsed JSON, the prompt's estimated token count and its chained
prefix segment keys for `RequestInfo`), or raises `ClientError` (status 400 with an OpenAI error message). Nothing
here can raise anything else for any input: the fuzz tests hold it to that.

Tokenisation approximation (the gateway has no tokenizer): the prompt is flattened to text and split into blocks of
`block_chars` characters (default 64, about 16 tokens, vLLM's KV block size); each block gets a chained key
(`lodestar.prefix.chain_key`), so two prompts with the same leading text share leading keys. Token counts are
characters / `chars_per_token` (default 4, corrected per model from the backends' usage blocks by
`TokenEstimator`). A prompt given as token ids is exact: 16 ids per block. Chat messages are flattened as
`role + "\\n" + content + "\\n"` per message, in order; text parts of multi-part content are concatenated; a
non-text part (image, audio) contributes a short digest of its JSON, so different images give different keys
without inflating the token estimate. At most `max_segments` blocks are keyed; the rest of a long prompt is one
final segment.
"""

from __future__ import annotations

import json
from array import array
from dataclasses import dataclass
from typing import Any

import xxhash

from lodestar.prefix import ROOT_KEY, chain_key

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
    """Characters per token, per model: starts at `default`, follows the backends' reported prompt_tokens."""

    def __init__(self, default: float = 4.0) -> None:
        self.default = default
        self.ratio: dict[str | None, float] = {}

    def get(self, model: str | None) -> float:
        return self.ratio.get(model, self.default)

    def observe(self, model: str | None, chars: int, tokens: int) -> None:
        if chars < 64 or tokens <= 0 or (len(self.ratio) > 1000 and model not in self.ratio):
            return
        r = min(16.0, max(1.0, chars / tokens))
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


def _part_text(part: Any, i: int, j: int) -> str:
    if isinstance(part, str):
        return part
    if not isinstance(part, dict):
        raise _bad(f"messages[{i}].content[{j}] must be an object", f"messages[{i}].content")
    if part.get("type") == "text":
        t = part.get("text")
        if not isinstance(t, str):
            raise _bad(f"messages[{i}].content[{j}].text must be a string", f"messages[{i}].content")
        return t
    try:
        blob = json.dumps(part, sort_keys=True, default=str)
    except (TypeError, ValueError):
        blob = repr(part)
    return "\x00" + xxhash.xxh64_hexdigest(blob.encode("utf-8", "surrogatepass"))


def flatten_messages(messages: Any) -> str:
    """Chat messages -> one string (see the module docstring), or `ClientError`."""
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array", "messages")
    out: list[str] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _bad(f"messages[{i}] must be an object", "messages")
        role = m.get("role")
        if not isinstance(role, str):
            raise _bad(f"messages[{i}].role must be a string", "messages")
        c = m.get("content")
        if c is None:
            text = ""
        elif isinstance(c, str):
            text = c
        elif isinstance(c, list):
            text = "".join(_part_text(p, i, j) for j, p in enumerate(c))
        else:
            raise _bad(f"messages[{i}].content must be a string, an array of parts or null", "messages")
        out.append(role)
        out.append("\n")
        out.append(text)
        out.append("\n")
    return "".join(out)


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
    """Chained keys and token counts of `text` cut in blocks of `block_chars` characters."""
    n = len(text)
    if n == 0:
        return (chain_key(ROOT_KEY, ""),), (1,)
    keys: list[int] = []
    toks: list[int] = []
    parent = ROOT_KEY
    per_block = max(1, round(block_chars / chars_per_token))
    pos = 0
    while pos < n:
        end = pos + block_chars if len(keys) < max_segments - 1 else n
        chunk = text[pos:end]
        parent = chain_key(parent, chunk.encode("utf-8", "surrogatepass"))
        keys.append(parent)
        toks.append(per_block if len(chunk) == block_chars else max(1, round(len(chunk) / chars_per_token)))
        pos = end
    return tuple(keys), tuple(toks)


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
    raw: bytes, kind: str, *, block_chars: int = 64, max_segments: int = 2048, estimator: TokenEstimator | None = None
) -> ParsedRequest:
    """Validate and digest one client request body (see the module docstring)."""
    try:
        body = json.loads(raw)
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
    cpt = estimator.get(model) if estimator is not None else 4.0
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
    return json.dumps(b).encode()  # ASCII escapes: safe for any string the client sent
