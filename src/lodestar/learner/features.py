"""Per-candidate features for the learned router.

Consumes: the `RequestInfo`, the `ClusterView` candidates (discovery labels, scraped metrics with their age, router
bookkeeping) and the learner's own router-side state kept here: a prefix index (what each endpoint was sent) and,
per endpoint, the estimated *uncached* prompt tokens of requests still waiting for their first token and the prompt
tokens of requests decoding. Nothing else: no engine internals.
Produces: a float matrix, one row per candidate, in the order of `FEATURES`.

The features are shaped after how a vLLM engine spends time before a request's first token: the uncached tokens of
the request itself (U) and the prefill work queued ahead of it (W) are processed at a per-token rate that depends on
the GPU and on how many sequences decode alongside (D, and their context DC); attention makes long cached prefixes
(C) cost a little too. A linear model over these terms, fitted per endpoint, is a physically structured TTFT
estimate whose coefficients the learner fits online.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lodestar.cluster_view import ClusterView, Endpoint
from lodestar.engine.hardware import GPUS, MODELS
from lodestar.engine.perf_model import PerfModel
from lodestar.policies.prefix_index import PrefixIndex
from lodestar.request import RequestInfo

FEATURES = (
    "bias",
    "own_prefill_s",  # P: the calibrated latency model's prefill time of U after C cached tokens, alone
    "queue_s",  # Q: virtual FCFS queue delay ahead of this request (see `VirtualQueue`)
    "queue_x_decoding",  # (Q + P) * D / 1e2: decoding sequences share every step with the prefill
    "decoding_100",  # D / 1e2
    "decode_ctx_100ktok",  # DC / 1e5: decode attention reads this much KV per step
    "wait_x_decode_ctx",  # (Q + P) * DC / 1e5
    "kv_usage",  # scraped, 0..1 (0 when missing or stale)
    "wait_x_kv",  # (Q + P) * kv_usage: preemption and eviction pressure
    "uncached_ktok",  # U / 1e3
    "queued_ktok",  # W / 1e3: uncached tokens dispatched here and not yet past their first token
    "oldest_wait_s",  # how long the oldest request still waiting for its first token has waited
)
N_FEATURES = len(FEATURES)
# Where an endpoint's TTFT model starts before it has data: the latency model's own answer (queue + own prefill).
PHYSICS_PRIOR = np.array([1.0 if f in ("own_prefill_s", "queue_s") else 0.0 for f in FEATURES])
DEFAULT_INDEX_TOKENS = 400_000  # per endpoint, when discovery does not say what hardware it is
REFERENCE_HARDWARE = {"gpu": "a100-80g", "model": "llama-3-8b", "tp": "1"}  # latency shape when labels are absent
METRICS_MAX_AGE_S = 5.0


def hardware_known(labels: dict[str, str]) -> bool:
    """Discovery labels name a GPU and a model of the latency model's catalogue (so its answers are calibrated)."""
    return labels.get("gpu") in GPUS and labels.get("model") in MODELS


def kv_tokens_from_labels(labels: dict[str, str]) -> int | None:
    """KV capacity (tokens) of an endpoint from its discovery labels (gpu, model, tp), if they are known."""
    if not hardware_known(labels):
        return None
    try:
        return PerfModel.create(labels["gpu"], labels["model"], int(labels.get("tp", "1"))).kv_capacity_tokens()
    except Exception:  # an impossible combination: fall back to the default
        return None


def perf_from_labels(labels: dict[str, str]) -> tuple[PerfModel, int]:
    """Latency model and token budget for an endpoint: from its labels, else the reference hardware (the linear
    model's per-endpoint coefficients then absorb the difference in speed)."""
    for lab in (labels, REFERENCE_HARDWARE):
        if hardware_known(lab):
            try:
                return PerfModel.create(lab["gpu"], lab["model"], int(lab.get("tp", "1"))), int(
                    lab.get("max_num_batched_tokens", "8192")
                )
            except Exception:
                continue
    raise AssertionError("reference hardware must be in the catalogue")


class VirtualQueue:
    """A per-endpoint FCFS fluid model of the prefill queue, in the router.

    Each dispatched request adds its modelled prefill time (`own_prefill_s`) behind the previous one; the queue
    delay a new request would see is `finish - now`. Every observed first token corrects the model: the request
    finished `delta` later (or earlier) than modelled, so every request behind it shifts by `delta` (kept as one
    offset per endpoint). Decode interference, preemption and misestimated cache hits show up as corrections.
    """

    __slots__ = ("finish", "offset", "own")

    def __init__(self) -> None:
        self.finish = float("-inf")  # modelled finish of the last dispatched prefill, before `offset`
        self.offset = 0.0
        self.own: dict[int, float] = {}  # request id -> its modelled finish (before `offset`)

    def delay(self, now: float) -> float:
        return max(0.0, self.finish + self.offset - now)

    def push(self, req_id: int, own_s: float, now: float) -> None:
        self.finish = max(now - self.offset, self.finish) + own_s
        self.own[req_id] = self.finish

    def first_token(self, req_id: int, now: float) -> None:
        v = self.own.pop(req_id, None)
        if v is not None:
            self.offset += now - (v + self.offset)

    def drop(self, req_id: int) -> None:
        self.own.pop(req_id, None)


class FeatureBuilder:
    """Builds feature rows and keeps the router-side state they need (updated by the policy's callbacks)."""

    def __init__(self, index_tokens: int | None = None, index_ttl_s: float = 1200.0) -> None:
        self.index = PrefixIndex(
            capacity_tokens_per_endpoint=index_tokens or DEFAULT_INDEX_TOKENS, idle_ttl_s=index_ttl_s
        )
        self._index_tokens_fixed = index_tokens is not None
        self.queued_uncached: dict[str, float] = {}  # endpoint -> est. uncached tokens awaiting first token
        self.decode_ctx: dict[str, float] = {}  # endpoint -> prompt tokens of requests decoding
        # endpoint -> request id -> dispatch time, for requests awaiting their first token (dispatch order)
        self.awaiting: dict[str, dict[int, float]] = {}
        self.vq: dict[str, VirtualQueue] = {}
        self.perf: dict[str, tuple[PerfModel, int]] = {}
        self._known: set[str] = set()
        self._own_cache: dict[tuple[str, int, int], float] = {}

    def own_prefill_s(self, endpoint_id: str, uncached: int, cached: int) -> float:
        """Modelled prefill time of `uncached` tokens after `cached` ones (cached, rounded to 16/256 tokens)."""
        key = (endpoint_id, uncached >> 4, cached >> 8)
        v = self._own_cache.get(key)
        if v is None:
            perf, budget = self.perf[endpoint_id]
            v = perf.prefill_time(uncached, budget, cached)
            if len(self._own_cache) > 200_000:
                self._own_cache.clear()
            self._own_cache[key] = v
        return v

    def _ensure(self, ep: Endpoint) -> None:
        if ep.id in self._known:
            return
        self._known.add(ep.id)
        self.perf[ep.id] = perf_from_labels(ep.labels)
        self.vq[ep.id] = VirtualQueue()
        if not self._index_tokens_fixed:
            cap = kv_tokens_from_labels(ep.labels)
            if cap is not None:
                self.index.set_endpoint_capacity(ep.id, cap)

    def uncached(self, req: RequestInfo, endpoints: Sequence[Endpoint], now: float) -> list[int]:
        """Estimated uncached prompt tokens of `req` on each endpoint (router's prefix index)."""
        for ep in endpoints:
            self._ensure(ep)
        hits = self.index.match_many([e.id for e in endpoints], req.segment_keys, req.segment_tokens, now)
        return [max(1, req.prompt_tokens - h) for h in hits]

    def rows(self, req: RequestInfo, view: ClusterView, uncached: list[int]) -> np.ndarray:
        """Feature matrix (len(view.endpoints), N_FEATURES)."""
        out = np.empty((len(view.endpoints), N_FEATURES))
        p = req.prompt_tokens
        now = view.now
        for i, ep in enumerate(view.endpoints):
            u = uncached[i]
            c = p - u
            w = self.queued_uncached.get(ep.id, 0.0)
            d = ep.book.decoding
            dc = self.decode_ctx.get(ep.id, 0.0)
            m = ep.metrics
            kv = 0.0
            if m is not None and m.kv_cache_usage is not None and now - m.scraped_at <= METRICS_MAX_AGE_S:
                kv = m.kv_cache_usage
            own = self.own_prefill_s(ep.id, u, c)
            q = self.vq[ep.id].delay(now)
            waiting = self.awaiting.get(ep.id)
            age = min(now - next(iter(waiting.values())), 600.0) if waiting else 0.0
            t = q + own
            out[i] = (1.0, own, q, t * d / 1e2, d / 1e2, dc / 1e5, t * dc / 1e5, kv, t * kv, u / 1e3, w / 1e3, age)
        return out

    # ---- bookkeeping (called from the policy's callbacks) ---------------------------------------------------
    def dispatched(self, req: RequestInfo, endpoint_id: str, uncached: float, now: float) -> None:
        self.queued_uncached[endpoint_id] = self.queued_uncached.get(endpoint_id, 0.0) + uncached
        if endpoint_id in self.vq:
            u = int(uncached)
            self.vq[endpoint_id].push(req.id, self.own_prefill_s(endpoint_id, u, req.prompt_tokens - u), now)
        self.awaiting.setdefault(endpoint_id, {})[req.id] = now
        self.index.insert(endpoint_id, req.segment_keys, req.segment_tokens, now)

    def first_token(self, req_id: int, endpoint_id: str, uncached: float, prompt_tokens: int, now: float) -> None:
        self.awaiting.get(endpoint_id, {}).pop(req_id, None)
        if endpoint_id in self.vq:
            self.vq[endpoint_id].first_token(req_id, now)
        self.queued_uncached[endpoint_id] = max(0.0, self.queued_uncached.get(endpoint_id, 0.0) - uncached)
        self.decode_ctx[endpoint_id] = self.decode_ctx.get(endpoint_id, 0.0) + prompt_tokens

    def finished(
        self, req_id: int, endpoint_id: str, uncached: float, prompt_tokens: int, past_first_token: bool
    ) -> None:
        self.awaiting.get(endpoint_id, {}).pop(req_id, None)
        if endpoint_id in self.vq:
            self.vq[endpoint_id].drop(req_id)
        if past_first_token:
            self.decode_ctx[endpoint_id] = max(0.0, self.decode_ctx.get(endpoint_id, 0.0) - prompt_tokens)
        else:
            self.queued_uncached[endpoint_id] = max(0.0, self.queued_uncached.get(endpoint_id, 0.0) - uncached)

    def remove_endpoint(self, endpoint_id: str) -> None:
        self.index.remove_endpoint(endpoint_id)
        self.queued_uncached.pop(endpoint_id, None)
        self.decode_ctx.pop(endpoint_id, None)
        self.awaiting.pop(endpoint_id, None)
        self.vq.pop(endpoint_id, None)
        self.perf.pop(endpoint_id, None)
        self._known.discard(endpoint_id)
