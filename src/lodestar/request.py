"""Requests, as the simulator knows them and as a router sees them.

`Request` is the simulator's full record, including the *true* output length that the engine will generate (taken
from the trace). A router never knows that number, so policies receive a `RequestInfo`: the prompt (its length and
prefix segments), `max_tokens`, the model, and the arrival time. Keeping the two types apart is how the simulator
stays honest.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Request:
    """One request of a workload (simulator side).

    `segment_keys[i]` is the chained key of segment i (see `lodestar.prefix`) and `segment_tokens[i]` its length;
    the segment lengths sum to `prompt_tokens`. `output_key`, when set, is the key under which the engine caches the
    generated answer (multi-turn chat: the next turn's prompt contains this answer as a segment with that key).
    """

    id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    segment_keys: tuple[int, ...]
    segment_tokens: tuple[int, ...]
    max_tokens: int | None = None
    model: str | None = None
    session_id: int | None = None
    output_key: int | None = None

    def info(self) -> RequestInfo:
        return RequestInfo(
            id=self.id,
            arrival_s=self.arrival_s,
            prompt_tokens=self.prompt_tokens,
            segment_keys=self.segment_keys,
            segment_tokens=self.segment_tokens,
            max_tokens=self.max_tokens,
            model=self.model,
        )


@dataclass(slots=True)
class RequestInfo:
    """What a router knows about a request when it routes it (no true output length)."""

    id: int
    arrival_s: float
    prompt_tokens: int
    segment_keys: tuple[int, ...]
    segment_tokens: tuple[int, ...]
    max_tokens: int | None = None
    model: str | None = None
    extra: dict[str, object] = field(default_factory=dict)
