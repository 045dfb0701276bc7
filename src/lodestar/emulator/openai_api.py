"""vLLM's OpenAI-compatible endpoints for an emulated engine: request parsing, SSE streaming, JSON responses.

Consumes: HTTP requests (`/v1/completions`, `/v1/chat/completions`, `/v1/models`) and the server's current
`EngineDriver`. Produces: responses shaped like vLLM's:
- streaming (`"stream": true`): `text/event-stream` of `data: {json}` chunks -- chat: `chat.completion.chunk`
  objects, a first `{"role": "assistant", "content": ""}` delta sent with the first token, then one chunk per
  token; completions: `text_completion` objects with `text`; the chunk of the last token carries
  `finish_reason`; with `stream_options.include_usage` a final chunk with empty `choices` and `usage`; then
  `data: [DONE]`;
- non-streaming: one `chat.completion` / `text_completion` object with `usage`;
- `usage` = `prompt_tokens`, `completion_tokens`, `total_tokens` and `prompt_tokens_details.cached_tokens` (the
  engine model's prefix-cache hit);
- errors in OpenAI's shape `{"error": {"message", "type", "param", "code"}}` (400 bad request or too long for the
  context, 404 unknown model, 500 injected fault).
Prompts: `prompt` (a string, or one list of token ids, each rendered as 4 characters) or chat `messages`
(flattened by `text_blocks.flatten_chat`); tokens and prefix keys from `text_blocks.prompt_segments`. Output
length: `max_tokens` (chat also `max_completion_tokens`), finish reason `length`; without it the engine emits
`default_max_tokens` tokens and reports `stop` (an emulated end of sequence). Other sampling parameters are
accepted and ignored; `n` must be 1. A disconnected client's request is aborted in the engine (its KV freed).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web

from lodestar.emulator.driver import Stream
from lodestar.emulator.tokens import filler_text, filler_token
from lodestar.prefix import ROOT_KEY
from lodestar.text_blocks import BLOCK_CHARS, flatten_chat, prompt_segments

if TYPE_CHECKING:
    from lodestar.emulator.server import EmulatorServer


SERVER_KEY: web.AppKey[Any] = web.AppKey("lodestar_emulator")


def server_of(request: web.Request) -> EmulatorServer:
    srv: EmulatorServer = request.app[SERVER_KEY]
    return srv


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "BadRequestError", param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param


def error_response(status: int, message: str, kind: str = "BadRequestError", param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return web.json_response(body, status=status)


def _int_param(body: dict[str, Any], key: str) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ApiError(400, f"{key} must be an integer >= 1, got {v!r}", param=key)
    return v


def prompt_text(body: dict[str, Any], chat: bool) -> str:
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
            raise ApiError(400, "messages must be a non-empty list of message objects", param="messages")
        return flatten_chat(msgs)
    p = body.get("prompt")
    if isinstance(p, str):
        return p
    if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        return "".join(f"{t % 10000:4d}" for t in p)
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str | list):
        return prompt_text({"prompt": p[0]}, False)
    raise ApiError(400, "prompt must be a string or a list of token ids (batched prompts are not supported)",
                   param="prompt")  # fmt: skip


class Parsed:
    __slots__ = ("include_usage", "max_tokens", "model", "stream", "text")

    def __init__(self, body: dict[str, Any], chat: bool, served: str) -> None:
        model = body.get("model")
        if model is not None and model != served:
            raise ApiError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
        self.model = served
        self.text = prompt_text(body, chat)
        mt = _int_param(body, "max_tokens")
        if chat and mt is None:
            mt = _int_param(body, "max_completion_tokens")
        self.max_tokens = mt
        n = body.get("n", 1)
        if n != 1:
            raise ApiError(400, "only n=1 is supported by the emulated engine", param="n")
        self.stream = bool(body.get("stream", False))
        opts = body.get("stream_options") or {}
        self.include_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))


def _usage(st: Stream) -> dict[str, Any]:
    return {
        "prompt_tokens": st.prompt_tokens,
        "total_tokens": st.prompt_tokens + st.gen,
        "completion_tokens": st.gen,
        "prompt_tokens_details": {"cached_tokens": st.hit},
    }


async def handle_completion(request: web.Request, chat: bool) -> web.StreamResponse:
    srv = server_of(request)
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return error_response(400, "the request body is not valid JSON")
    if not isinstance(body, dict):
        return error_response(400, "the request body must be a JSON object")
    try:
        req = Parsed(body, chat, srv.served_model_name)
    except ApiError as e:
        return error_response(e.status, e.message, e.kind, e.param)
    if srv.errors():
        return error_response(500, "injected fault: internal server error", "InternalServerError")
    driver = srv.driver
    if not driver.alive:
        return error_response(503, "the engine is down", "ServiceUnavailableError")
    text = req.text
    keys, toks = prompt_segments(text)
    nfull = len(text) // BLOCK_CHARS
    out = req.max_tokens or srv.default_max_tokens
    st = driver.submit(
        keys, toks, out, req.max_tokens is not None, tail_text=text[nfull * BLOCK_CHARS :],
        tail_parent=keys[nfull - 1] if nfull else ROOT_KEY, model=req.model,
    )  # fmt: skip
    if st is None:
        limit = driver.engine.max_model_len
        return error_response(400, f"This model's maximum context length is {limit} tokens. However, you "
                                   f"requested {sum(toks) + out} tokens ({sum(toks)} in the messages, {out} in the "
                                   "completion). Please reduce the length of the messages or completion.")  # fmt: skip
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    try:
        if req.stream:
            return await _stream(request, st, rid, req, chat)
        return await _full(st, rid, req, chat)
    finally:
        if not st.done:
            driver.abort(st)


async def handle_text_completion(request: web.Request) -> web.StreamResponse:
    return await handle_completion(request, chat=False)


async def handle_chat_completion(request: web.Request) -> web.StreamResponse:
    return await handle_completion(request, chat=True)


async def _full(st: Stream, rid: str, req: Parsed, chat: bool) -> web.Response:
    st.per_token = False
    while not st.done:
        await st.wait()
    if st.error is not None:
        return error_response(500, st.error, "InternalServerError")
    text = filler_text(st.gen)
    if chat:
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text, "tool_calls": []},
                                  "logprobs": None, "finish_reason": st.finish_reason, "stop_reason": None}  # fmt: skip
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": st.finish_reason, "stop_reason": None,
                  "prompt_logprobs": None}  # fmt: skip
        obj = "text_completion"
    body = {"id": rid, "object": obj, "created": int(time.time()), "model": req.model, "choices": [choice],
            "usage": _usage(st)}  # fmt: skip
    return web.json_response(body)


async def _stream(request: web.Request, st: Stream, rid: str, req: Parsed, chat: bool) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    obj = "chat.completion.chunk" if chat else "text_completion"
    head = f'data: {{"id":"{rid}","object":"{obj}","created":{int(time.time())},"model":{json.dumps(req.model)},'
    choice = head + '"choices":[{"index":0,'
    if chat:
        open_, close = '"delta":{"content":"', '"},"logprobs":null,"finish_reason":'
        end = "}]}\n\n"
    else:
        open_, close = '"text":"', '","logprobs":null,"finish_reason":'
        end = ',"stop_reason":null}]}\n\n'
    mid = close + "null" + end
    sent = 0
    while True:
        gen, done = st.gen, st.done
        if gen > sent or done:
            if st.error is not None:
                err = {"error": {"message": st.error, "type": "InternalServerError", "param": None, "code": 500}}
                await resp.write(f"data: {json.dumps(err)}\n\ndata: [DONE]\n\n".encode())
                return resp
            parts = []
            if chat and sent == 0:
                parts.append(
                    choice + '"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'
                )
            last = gen - 1 if done else gen
            parts.extend(choice + open_ + filler_token(i) + mid for i in range(sent, last))
            if done:
                tok = filler_token(gen - 1) if gen > sent else ""
                parts.append(choice + open_ + tok + close + json.dumps(st.finish_reason) + end)
                if req.include_usage:
                    parts.append(head + f'"choices":[],"usage":{json.dumps(_usage(st))}}}\n\n')
                parts.append("data: [DONE]\n\n")
            try:
                await resp.write("".join(parts).encode())
            except ConnectionError:
                return resp  # the client went away: the caller aborts the request
            sent = gen
            if done:
                return resp
        await st.wait()


async def handle_models(request: web.Request) -> web.Response:
    srv = server_of(request)
    name = srv.served_model_name
    card = {"id": name, "object": "model", "created": int(srv.started_at), "owned_by": "vllm", "root": srv.cfg.model,
            "parent": None, "max_model_len": srv.driver.engine.max_model_len}  # fmt: skip
    return web.json_response({"object": "list", "data": [card]})
