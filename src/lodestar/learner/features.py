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
from lodestar.policies.prefix_index import PrefixIndex
from lodestar.request import RequestInfo

FEATURES = (
    "bias",
    "uncached_ktok",  # U / 1e3
    "queued_ktok",  # W / 1e3
    "work_x_decoding",  # (U + W) / 1e3 * D / 1e2
    "decoding_100",  # D / 1e2
    "attn_pairs_1e7",  # U * (C + U / 2) / 1e7
    "decode_ctx_100ktok",  # DC / 1e5
    "work_x_decode_ctx",  # (U + W) / 1e3 * DC / 1e5
    "kv_usage",  # scraped, 0..1 (0 when missing)
    "work_x_kv",  # (U + W) / 1e3 * kv_usage
    "oldest_wait_s",  # how long the oldest request still waiting for its first token has waited (A)
)
N_FEATURES = len(FEATURES)
DEFAULT_INDEX_TOKENS = 400_000  # per endpoint, when discovery does not say what hardware it is
METRICS_MAX_AGE_S = 5.0


def kv_tokens_from_labels(labels: dict[str, str]) -> int | None:
    """KV capacity (tokens) of an endpoint from its discovery labels (gpu, model, tp), if they are known."""
    from lodestar.engine.perf_model import PerfModel

    gpu, model = labels.get("gpu"), labels.get("model")
    if gpu is None or model is None or gpu not in GPUS or model not in MODELS:
        return None
    try:
        return PerfModel.create(gpu, model, int(labels.get("tp", "1"))).kv_capacity_tokens()
    except Exception:  # an impossible combination: fall back to the default
        return None


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
        self._known: set[str] = set()

    def _ensure(self, ep: Endpoint) -> None:
        if ep.id in self._known:
            return
        self._known.add(ep.id)
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
            work = (u + w) / 1e3
            waiting = self.awaiting.get(ep.id)
            age = min(now - next(iter(waiting.values())), 600.0) if waiting else 0.0
            out[i] = (1.0, u / 1e3, w / 1e3, work * d / 1e2, d / 1e2, u * (c + u / 2) / 1e7, dc / 1e5,
                      work * dc / 1e5, kv, work * kv, age)  # fmt: skip
        return out

    # ---- bookkeeping (called from the policy's callbacks) ---------------------------------------------------
    def dispatched(self, req: RequestInfo, endpoint_id: str, uncached: float, now: float) -> None:
        self.queued_uncached[endpoint_id] = self.queued_uncached.get(endpoint_id, 0.0) + uncached
        self.awaiting.setdefault(endpoint_id, {})[req.id] = now
        self.index.insert(endpoint_id, req.segment_keys, req.segment_tokens, now)

    def first_token(self, req_id: int, endpoint_id: str, uncached: float, prompt_tokens: int) -> None:
        self.awaiting.get(endpoint_id, {}).pop(req_id, None)
        self.queued_uncached[endpoint_id] = max(0.0, self.queued_uncached.get(endpoint_id, 0.0) - uncached)
        self.decode_ctx[endpoint_id] = self.decode_ctx.get(endpoint_id, 0.0) + prompt_tokens

    def finished(
        self, req_id: int, endpoint_id: str, uncached: float, prompt_tokens: int, past_first_token: bool
    ) -> None:
        self.awaiting.get(endpoint_id, {}).pop(req_id, None)
        if past_first_token:
            self.decode_ctx[endpoint_id] = max(0.0, self.decode_ctx.get(endpoint_id, 0.0) - prompt_tokens)
        else:
            self.queued_uncached[endpoint_id] = max(0.0, self.queued_uncached.get(endpoint_id, 0.0) - uncached)

    def remove_endpoint(self, endpoint_id: str) -> None:
        self.index.remove_endpoint(endpoint_id)
        self.queued_uncached.pop(endpoint_id, None)
        self.decode_ctx.pop(endpoint_id, None)
        self.awaiting.pop(endpoint_id, None)
        self._known.discard(endpoint_id)
