"""Server-sent events from an OpenAI-compatible engine: observe them, pass them through, or aggregate them.

Consumes: the raw bytes of a streamed `/v1/completions` or `/v1/chat/completions` response, chunk by chunk as they
arrive (event boundaries anywhere).
Produces, per chunk: the bytes to forward to a streaming client (whole events, unmodified, in order), and the
observations the router needs: the moment of the first content event (TTFT; the first event with generated text,
reasoning or tool-call content, or a finish reason; a role-only chat delta does not count), the usage block (token
counts), whether `[DONE]` arrived, and an error event if the engine sent one. When the gateway itself added
`stream_options.include_usage` upstream, the usage-only event (empty `choices`) is removed from what the client
sees, so the client gets exactly the stream it asked for.

`Aggregator` folds the events of one stream into the non-streaming response body (text or message content,
reasoning, tool calls, logprobs and finish reason per choice, and the usage block), for clients that did not ask
for a stream while the gateway streamed from the engine to observe TTFT.
"""

from __future__ import annotations

from typing import Any

from lodestar.gateway import json_codec

_SEP = b"\n\n"


def _payload(event: bytes) -> bytes | None:
    """The data of one event (data lines joined), or None for a comment/keep-alive event."""
    if event.startswith(b"data:") and b"\n" not in event:
        d = event[5:]
        return d[1:] if d.startswith(b" ") else d
    parts = []
    for line in event.split(b"\n"):
        line = line.rstrip(b"\r")
        if line.startswith(b"data:"):
            d = line[5:]
            parts.append(d[1:] if d.startswith(b" ") else d)
    return b"\n".join(parts) if parts else None


def _has_content(obj: Any, chat: bool) -> bool:
    choices = obj.get("choices") if isinstance(obj, dict) else None
    if not isinstance(choices, list):
        return False
    for c in choices:
        if not isinstance(c, dict):
            continue
        if c.get("finish_reason") is not None:
            return True
        if chat:
            d = c.get("delta")
            if isinstance(d, dict) and (
                d.get("content") or d.get("reasoning_content") or d.get("tool_calls") or d.get("reasoning")
            ):
                return True
        elif c.get("text"):
            return True
    return False


class StreamObserver:
    """Splits a byte stream into events, observes them, decides what to forward (see the module docstring)."""

    __slots__ = (
        "_buf",
        "_pass",
        "_sep",
        "aggregator",
        "chat",
        "content_events",
        "done",
        "error",
        "first",
        "reported",
        "strip_usage",
        "usage",
    )

    def __init__(self, chat: bool, strip_usage: bool, aggregator: Aggregator | None = None) -> None:
        self.chat = chat
        self.strip_usage = strip_usage
        self.aggregator = aggregator
        self.first = False  # a content event was seen
        self.reported = False  # the first token was reported (by the proxy)
        self.done = False  # [DONE] seen
        self.usage: dict[str, Any] | None = None
        self.error: Any = None
        self.content_events = 0
        self._buf = b""
        self._sep: bytes | None = None
        self._pass = False  # first token seen, nothing to aggregate: whole events pass through after a glance

    def feed(self, chunk: bytes) -> bytes:
        """Take a chunk; return the complete events to forward (possibly b"")."""
        sep = self._sep
        if (
            self._pass
            and sep is not None
            and not self._buf
            and chunk.endswith(sep)
            and b'"usage"' not in chunk
            and b'"error"' not in chunk
        ):  # the common case, once per token: whole events, forwarded untouched, counted
            n = chunk.count(sep)
            if b"[DONE]" in chunk:
                self.done = True
                n -= 1
            self.content_events += n
            return chunk
        buf = self._buf + chunk if self._buf else chunk
        if sep is None:  # decided once, by the first event boundary: LF framing (as vLLM and SGLang) or CRLF
            if _SEP in buf:
                sep = self._sep = _SEP
            elif b"\r\n\r\n" in buf:
                sep = self._sep = b"\r\n\r\n"
            else:
                self._buf = buf
                return b""
        end = buf.rfind(sep)
        if end < 0:
            self._buf = buf
            return b""
        end += len(sep)
        self._buf = buf[end:]
        body = buf[:end]
        out = []
        for ev in body.split(sep)[:-1]:
            if self._event(ev):
                out.append(ev)
                out.append(sep)
        return b"".join(out)

    def finish(self) -> bytes:
        """End of stream: a last event without its blank line is still observed and forwarded."""
        rest, self._buf = self._buf, b""
        if rest.strip() and self._event(rest.rstrip(b"\r\n")):
            return rest.rstrip(b"\r\n") + (self._sep or _SEP)
        return b""

    def _event(self, ev: bytes) -> bool:
        """Observe one event; True to forward it."""
        data = _payload(ev)
        if data is None:
            return True
        if data.strip() == b"[DONE]":
            self.done = True
            return True
        agg = self.aggregator
        if self.first and agg is None and b'"usage"' not in data and b'"error"' not in data:
            self.content_events += 1
            return True
        try:
            obj = json_codec.loads(data)
        except (ValueError, RecursionError):
            return True
        if not isinstance(obj, dict):
            return True
        if "error" in obj or obj.get("object") == "error":
            self.error = obj.get("error", obj)
            return True
        if not self.first and _has_content(obj, self.chat):
            self.first = True
            self._pass = agg is None
        if self.first and obj.get("choices"):  # from the first content event on; not a role-only or usage-only one
            self.content_events += 1
        if agg is not None:
            agg.add(obj)
        u = obj.get("usage")
        if isinstance(u, dict):
            self.usage = u
            if self.strip_usage and not obj.get("choices"):
                return False
        return True

    def output_tokens(self) -> int:
        u = self.usage
        if u is not None and isinstance(u.get("completion_tokens"), int):
            return int(u["completion_tokens"])
        return self.content_events


def _merge_logprobs(acc: Any, lp: Any) -> Any:
    if not isinstance(lp, dict):
        return acc
    if not isinstance(acc, dict):
        return {k: (list(v) if isinstance(v, list) else v) for k, v in lp.items()}
    for k, v in lp.items():
        if isinstance(v, list) and isinstance(acc.get(k), list):
            acc[k].extend(v)
        elif k not in acc or acc[k] is None:
            acc[k] = v
    return acc


class Aggregator:
    """Builds the non-streaming response from stream chunks (OpenAI shapes for completions and chat)."""

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.head: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None

    def add(self, obj: dict[str, Any]) -> None:
        if not self.head:
            self.head = {k: obj[k] for k in ("id", "created", "model", "system_fingerprint") if k in obj}
        if isinstance(obj.get("usage"), dict):
            self.usage = obj["usage"]
        for c in obj.get("choices") or []:
            if not isinstance(c, dict):
                continue
            i = c.get("index", 0)
            i = i if isinstance(i, int) else 0
            acc = self.choices.setdefault(
                i,
                {
                    "index": i,
                    "parts": [],
                    "reasoning": [],
                    "tools": {},
                    "logprobs": None,
                    "finish_reason": None,
                    "role": None,
                },
            )
            for k in ("finish_reason", "stop_reason"):
                if c.get(k) is not None:
                    acc[k] = c[k]
            if c.get("logprobs") is not None:
                acc["logprobs"] = _merge_logprobs(acc["logprobs"], c["logprobs"])
            if not self.chat:
                if isinstance(c.get("text"), str):
                    acc["parts"].append(c["text"])
                continue
            d = c.get("delta")
            if not isinstance(d, dict):
                continue
            if isinstance(d.get("role"), str) and acc["role"] is None:
                acc["role"] = d["role"]
            if isinstance(d.get("content"), str):
                acc["parts"].append(d["content"])
            r = d.get("reasoning_content") or d.get("reasoning")
            if isinstance(r, str):
                acc["reasoning"].append(r)
            for tc in d.get("tool_calls") or []:
                if isinstance(tc, dict):
                    self._tool(acc["tools"], tc)

    @staticmethod
    def _tool(tools: dict[int, dict[str, Any]], tc: dict[str, Any]) -> None:
        j = tc.get("index", len(tools))
        j = j if isinstance(j, int) else len(tools)
        t = tools.setdefault(j, {"id": None, "type": "function", "function": {"name": None, "arguments": ""}})
        if tc.get("id"):
            t["id"] = tc["id"]
        if tc.get("type"):
            t["type"] = tc["type"]
        f = tc.get("function")
        if isinstance(f, dict):
            if f.get("name"):
                t["function"]["name"] = f["name"]
            if isinstance(f.get("arguments"), str):
                t["function"]["arguments"] += f["arguments"]

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.head.get("id", "cmpl-lodestar"),
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.head.get("created", 0),
            "model": self.head.get("model"),
        }
        if "system_fingerprint" in self.head:
            out["system_fingerprint"] = self.head["system_fingerprint"]
        choices = []
        for i in sorted(self.choices):
            a = self.choices[i]
            c: dict[str, Any] = {"index": i}
            if self.chat:
                msg: dict[str, Any] = {
                    "role": a["role"] or "assistant",
                    "content": "".join(a["parts"]) if a["parts"] or not a["tools"] else None,
                }
                if a["reasoning"]:
                    msg["reasoning_content"] = "".join(a["reasoning"])
                if a["tools"]:
                    msg["tool_calls"] = [a["tools"][j] for j in sorted(a["tools"])]
                c["message"] = msg
            else:
                c["text"] = "".join(a["parts"])
            c["logprobs"] = a["logprobs"]
            c["finish_reason"] = a["finish_reason"]
            if "stop_reason" in a:
                c["stop_reason"] = a["stop_reason"]
            choices.append(c)
        out["choices"] = choices
        out["usage"] = self.usage
        return out
