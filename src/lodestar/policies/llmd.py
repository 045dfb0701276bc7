"""llm-d inference scheduler baseline: `llm-d` (the default scorers of llm-d's inference-scheduling guide).

Consume: the request's chained segment keys and token counts, the policy's own per-endpoint prefix index, and the
scraped engine metrics `num_requests_waiting` (vllm:num_requests_waiting) and `kv_cache_usage`
(vllm:kv_cache_usage_perc) with their scrape times; optionally the endpoint labels `num_gpu_blocks` and
`block_size` (vllm:cache_config_info) to size the index like the peer's auto-tune.
Produce: one endpoint id; the (truncated) prompt is then indexed under it.

Peer: llm-d (github.com/llm-d), whose endpoint picker (EPP) runs the Gateway API Inference Extension (GIE,
github.com/kubernetes-sigs/gateway-api-inference-extension) scheduling framework. Files read:

* `llm-d/llm-d: guides/inference-scheduling/scheduler/inference-scheduling.values.yaml`: profile `default` =
  `queue-scorer` weight 2, `kv-cache-utilization-scorer` weight 2, `prefix-cache-scorer` weight 3, picker not named
  (the framework default `max-score-picker`);
* GIE `pkg/epp/scheduling/framework/plugins/scorer/queue.go`: (max - q) / (max - min) of the waiting queue over
  the candidates, 1.0 for all when max == min;
* GIE `.../scorer/kvcache_utilization.go`: 1 - KV-cache usage;
* GIE `.../plugins/multi/prefix/plugin.go` and `.../prefixcachescorer/plugin.go`: score = matched blocks / total
  blocks; `DefaultBlockSize = 64` characters (~16 tokens at 4 characters per token, their comment),
  `DefaultMaxPrefixBlocks = 256` (input beyond 256 x 64 characters ~ 4096 tokens is ignored),
  `DefaultLRUCapacityPerServer = 31250` blocks (~500,000 tokens) per server, or with `autoTune` (default on)
  the server's `num_gpu_blocks`; index updated in `PreRequest` for the picked server;
* GIE `.../picker/max_score_picker.go`: shuffle, then stable sort by score: highest score, random among ties;
* GIE runner flags: `--metrics-staleness-threshold` default 2 s, `--refresh-metrics-interval` 50 ms.

Staleness and missing metrics (a Lodestar decision, documented): a scrape older than `metrics_staleness_s` (2 s,
the GIE threshold) counts as missing. A scorer gives an endpoint with a missing value the neutral
`missing_metrics_score` (0.5, the middle of its [0, 1] range), so it neither attracts nor repels traffic; the
queue scorer's min-max runs over the endpoints with fresh values only. In GIE itself the threshold feeds the
saturation detector (admission control), and scorers read the last scrape whatever its age, with zero values
(an empty queue, an empty cache: the best scores) before the first one.
"""

from __future__ import annotations

from pydantic import Field

from lodestar.cluster_view import ClusterView, Endpoint
from lodestar.policies.base import Policy, PolicyParams, register_policy
from lodestar.policies.common import argmax_random, fresh_metrics, prompt_segments
from lodestar.policies.prefix_index import PrefixIndex
from lodestar.request import RequestInfo


class LlmdParams(PolicyParams):
    """Parameters of `llm-d` (defaults: llm-d inference-scheduling guide + GIE plugin constants)."""

    prefix_weight: float = Field(default=3.0, ge=0, description="prefix-cache-scorer weight.")
    queue_weight: float = Field(default=2.0, ge=0, description="queue-scorer weight.")
    kv_cache_weight: float = Field(default=2.0, ge=0, description="kv-cache-utilization-scorer weight.")
    metrics_staleness_s: float = Field(
        default=2.0, gt=0, description="Scrapes older than this count as missing (GIE metrics-staleness-threshold)."
    )
    missing_metrics_score: float = Field(
        default=0.5, ge=0, le=1, description="Score a metric scorer gives an endpoint without a fresh value."
    )
    max_prefix_tokens: int = Field(
        default=4096, gt=0, description="Only this many leading tokens are hashed (256 blocks x 64 chars / 4)."
    )
    lru_capacity_tokens_per_endpoint: int = Field(
        default=500_000, gt=0, description="Per-endpoint index capacity (31,250 blocks x ~16 tokens)."
    )
    auto_tune: bool = Field(
        default=True,
        description="Size an endpoint's index as num_gpu_blocks x block_size tokens when its labels give them.",
    )


@register_policy
class LlmdPolicy(Policy):
    """llm-d's default scheduling profile: weighted prefix (3), queue (2) and kv-cache (2) scorers, max score.

    Per candidate: prefix = leading tokens it holds / prompt tokens, both within the first `max_prefix_tokens`;
    queue = (max - waiting) / (max - min) over the candidates with fresh metrics (1.0 if all equal); kv =
    1 - kv usage; missing or stale (> 2 s) metrics score `missing_metrics_score`. Total = 3 prefix + 2 queue +
    2 kv; the highest total wins, random among ties. The prompt is then indexed under the winner.

    Known failure mode: queue and kv scores are bounded, so a full prefix match (3) plus kv 2 (1 - u) beats an idle
    endpoint's 2 + 2 whenever the holder's kv usage u < 0.5, however long its queue; and the prefix score
    saturates at 4096 tokens (longer prompts sharing their first 4096 tokens look identical).
    """

    name = "llm-d"
    description = "llm-d default scorers: prefix 3 + queue 2 + kv-cache 2, max score (stale > 2 s = missing)."
    Params = LlmdParams

    def __init__(self, params: PolicyParams | None = None, seed: int = 0) -> None:
        super().__init__(params, seed)
        p: LlmdParams = self.params  # type: ignore[assignment]
        self.index = PrefixIndex(capacity_tokens_per_endpoint=p.lru_capacity_tokens_per_endpoint)
        self._tuned: dict[str, int] = {}

    def choose(self, req: RequestInfo, view: ClusterView) -> str:
        p: LlmdParams = self.params  # type: ignore[assignment]
        eps = view.endpoints
        now = view.now
        keys, toks, total = prompt_segments(req, p.max_prefix_tokens)
        if len(eps) == 1:
            target = eps[0]
        else:
            miss = p.missing_metrics_score
            if total > 0:
                prefix = [m / total for m in self.index.match_many([e.id for e in eps], keys, toks, now)]
            else:
                prefix = [0.0] * len(eps)
            waiting: list[float | None] = []
            kv: list[float] = []
            for e in eps:
                m = fresh_metrics(e, now, p.metrics_staleness_s)
                w = m.num_requests_waiting if m is not None else None
                u = m.kv_cache_usage if m is not None else None
                waiting.append(w)
                kv.append(1.0 - u if u is not None else miss)
            known = [w for w in waiting if w is not None]
            if known:
                qmin, qmax = min(known), max(known)
                span = qmax - qmin
                queue = [miss if w is None else (1.0 if span == 0 else (qmax - w) / span) for w in waiting]
            else:
                queue = [miss] * len(eps)
            totals = [
                p.prefix_weight * a + p.queue_weight * b + p.kv_cache_weight * c
                for a, b, c in zip(prefix, queue, kv, strict=True)
            ]
            target = argmax_random(self.rng, eps, totals)
        if p.auto_tune:
            self._auto_tune(target)
        self.index.insert(target.id, keys, toks, now)
        return target.id

    def _auto_tune(self, ep: Endpoint) -> None:
        """GIE autoTune: the index capacity of a server is its number of KV blocks (as tokens here)."""
        try:
            cap = int(ep.labels["num_gpu_blocks"]) * int(ep.labels.get("block_size", "16"))
        except (KeyError, ValueError):
            return
        if cap > 0 and self._tuned.get(ep.id) != cap:
            self._tuned[ep.id] = cap
            self.index.set_endpoint_capacity(ep.id, cap)

    def on_endpoint_removed(self, endpoint_id: str) -> None:
        self.index.remove_endpoint(endpoint_id)
        self._tuned.pop(endpoint_id, None)
