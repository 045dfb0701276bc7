"""What a routing policy may read: the ClusterView.

Three data sources are kept apart, as a live router has them:

1. **Discovery** gives the endpoints that exist (`Endpoint.id`, static `labels` such as `gpu`, `model`, engine
   settings when known). An endpoint that is not in `ClusterView.endpoints` is not a candidate.
2. **Scraped engine metrics** (`Endpoint.metrics`): the last scrape of the engine's `/metrics`, typed, each field
   `None` when the engine does not export it, stamped with `scraped_at` so a policy can see how stale it is.
   `None` as a whole when the endpoint has never been scraped.
3. **Router bookkeeping** (`Endpoint.book`): what the router itself observed: requests in flight, prompt tokens
   not yet past their first token, recent TTFTs. Updated only through the outcome callbacks.

Policies must treat all of it as read-only. The same objects are filled by the simulator (from simulated scrapes
with the scenario's interval and delay) and by the gateway (from real scrapes).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from lodestar.request import RequestInfo


@dataclass(slots=True)
class EngineMetrics:
    """One scrape of an engine, with vLLM's meaning (names in `lodestar.engine.metric_names`)."""

    scraped_at: float
    num_requests_running: float | None = None
    num_requests_waiting: float | None = None
    kv_cache_usage: float | None = None  # fraction 0..1 (vllm:kv_cache_usage_perc)
    prefix_cache_queries: float | None = None  # tokens queried, counter
    prefix_cache_hits: float | None = None  # tokens hit, counter
    prompt_tokens_total: float | None = None
    generation_tokens_total: float | None = None
    num_preemptions_total: float | None = None
    ttft_sum: float | None = None
    ttft_count: float | None = None

    def age(self, now: float) -> float:
        return now - self.scraped_at

    def prefix_hit_rate(self) -> float | None:
        if not self.prefix_cache_queries or self.prefix_cache_hits is None:
            return None
        return self.prefix_cache_hits / self.prefix_cache_queries


@dataclass(slots=True)
class EndpointBook:
    """Router-observed state of one endpoint (its own bookkeeping, no engine access)."""

    in_flight: int = 0
    prefill_tokens_in_flight: int = 0  # prompt tokens of requests not yet past their first token
    awaiting_first_token: int = 0
    decoding: int = 0
    dispatched_total: int = 0
    completed_total: int = 0
    failed_total: int = 0
    last_ttft_s: float | None = None
    ttft_ewma_s: float | None = None
    ttft_per_prompt_token_ewma_s: float | None = None
    recent_ttft: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=64))


@dataclass(slots=True)
class Endpoint:
    """A routing candidate: discovery facts, latest scrape, router bookkeeping."""

    id: str
    labels: dict[str, str] = field(default_factory=dict)
    metrics: EngineMetrics | None = None
    book: EndpointBook = field(default_factory=EndpointBook)


@dataclass(slots=True)
class ClusterView:
    """The candidates for one decision, at time `now` (router clock)."""

    now: float
    endpoints: list[Endpoint]

    def ids(self) -> list[str]:
        return [e.id for e in self.endpoints]


_EWMA = 0.2


class RouterBookkeeping:
    """Maintains `Endpoint.book` from outcome callbacks; the router's own view of in-flight work."""

    def __init__(self) -> None:
        self.endpoints: dict[str, Endpoint] = {}
        self._inflight: dict[int, tuple[str, int, bool]] = {}  # request id -> (endpoint, prompt tokens, past TTFT)

    def add_endpoint(self, endpoint: Endpoint) -> None:
        self.endpoints[endpoint.id] = endpoint

    def remove_endpoint(self, endpoint_id: str) -> None:
        self.endpoints.pop(endpoint_id, None)

    def on_dispatch(self, req: RequestInfo, endpoint_id: str, now: float) -> None:
        ep = self.endpoints[endpoint_id]
        b = ep.book
        b.in_flight += 1
        b.dispatched_total += 1
        b.awaiting_first_token += 1
        b.prefill_tokens_in_flight += req.prompt_tokens
        self._inflight[req.id] = (endpoint_id, req.prompt_tokens, False)

    def on_first_token(self, req: RequestInfo, endpoint_id: str, now: float, ttft_s: float) -> None:
        rec = self._inflight.get(req.id)
        if rec is None or rec[2]:
            return
        self._inflight[req.id] = (rec[0], rec[1], True)
        ep = self.endpoints.get(endpoint_id)
        if ep is None:
            return
        b = ep.book
        b.awaiting_first_token -= 1
        b.prefill_tokens_in_flight -= rec[1]
        b.decoding += 1
        b.last_ttft_s = ttft_s
        b.ttft_ewma_s = ttft_s if b.ttft_ewma_s is None else (1 - _EWMA) * b.ttft_ewma_s + _EWMA * ttft_s
        per_tok = ttft_s / max(1, rec[1])
        p = b.ttft_per_prompt_token_ewma_s
        b.ttft_per_prompt_token_ewma_s = per_tok if p is None else (1 - _EWMA) * p + _EWMA * per_tok
        b.recent_ttft.append((now, ttft_s))

    def _finish(self, req_id: int, failed: bool) -> None:
        rec = self._inflight.pop(req_id, None)
        if rec is None:
            return
        ep = self.endpoints.get(rec[0])
        if ep is None:
            return
        b = ep.book
        b.in_flight -= 1
        if rec[2]:
            b.decoding -= 1
        else:
            b.awaiting_first_token -= 1
            b.prefill_tokens_in_flight -= rec[1]
        if failed:
            b.failed_total += 1
        else:
            b.completed_total += 1

    def on_complete(self, req: RequestInfo, endpoint_id: str, now: float) -> None:
        self._finish(req.id, failed=False)

    def on_failure(self, req: RequestInfo, endpoint_id: str, now: float) -> None:
        self._finish(req.id, failed=True)
