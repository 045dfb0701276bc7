"""Load-aware baselines without prefix knowledge: `power-of-two`, `least-kv-cache`.

`power-of-two` consumes only the router's in-flight counts (`Endpoint.book.in_flight`). `least-kv-cache` consumes
the scraped `vllm:kv_cache_usage_perc` (`Endpoint.metrics.kv_cache_usage`) and falls back to in-flight counts or a
random pick when no endpoint has that metric. Both produce one endpoint id.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lodestar.cluster_view import ClusterView
from lodestar.policies.base import Policy, PolicyParams, register_policy
from lodestar.policies.common import fresh_metrics, least_in_flight, pick
from lodestar.request import RequestInfo


@register_policy
class PowerOfTwoPolicy(Policy):
    """Power of two choices, as SGLang's router (`sgl-router/src/policies/power_of_two.rs`).

    Draw two distinct candidates uniformly at random and send the request to the one with fewer requests in flight
    (the router's own count, SGLang's `worker.load()`); on a tie the first drawn wins. With one candidate, that one.
    No parameters. Known weakness: blind to prompt length and to prefix caches, and with few endpoints it is close
    to least-request with noise.
    """

    name = "power-of-two"
    description = "Two random endpoints, the one with fewer requests in flight (SGLang power_of_two)."

    def choose(self, req: RequestInfo, view: ClusterView) -> str:
        eps = view.endpoints
        if len(eps) == 1:
            return eps[0].id
        a, b = self.rng.sample(range(len(eps)), 2)
        ea, eb = eps[a], eps[b]
        return ea.id if ea.book.in_flight <= eb.book.in_flight else eb.id


class LeastKvCacheParams(PolicyParams):
    """Parameters of `least-kv-cache`."""

    max_metrics_age_s: float | None = Field(
        default=None, gt=0, description="Scrapes older than this count as missing; None = any age (AIBrix)."
    )
    fallback: Literal["least-request", "random"] = Field(
        default="least-request",
        description="What to do when no candidate has a usable kv usage (AIBrix: random).",
    )


@register_policy
class LeastKvCachePolicy(Policy):
    """Lowest scraped KV-cache usage, as AIBrix's `least-kv-cache` (`pkg/plugins/gateway/algorithms/least_kv_cache.go`).

    AIBrix scores each pod by GPU (+ CPU, absent on vLLM v1) KV-cache usage and takes the lowest among the pods that
    have the metric, uniformly random among ties (`SelectByScore`, `algorithms/util.go`); only when no pod has it
    does it pick at random. Here: the candidates with a usable `kv_cache_usage` (scraped, and not older than
    `max_metrics_age_s` when set) compete; if none has one, `fallback` decides: `least-request` (default, a
    documented deviation: a router that knows nothing else should at least spread load) or `random` (AIBrix).
    Known weakness: KV usage lags (scrape interval) and says nothing about queued prefill work, so bursts pile onto
    the endpoint that looked emptiest at the last scrape.
    """

    name = "least-kv-cache"
    description = "Lowest scraped KV-cache usage (AIBrix least-kv-cache); least-request when unknown."
    Params = LeastKvCacheParams

    def choose(self, req: RequestInfo, view: ClusterView) -> str:
        p: LeastKvCacheParams = self.params  # type: ignore[assignment]
        best = None
        tied = []
        for e in view.endpoints:
            m = fresh_metrics(e, view.now, p.max_metrics_age_s)
            u = m.kv_cache_usage if m is not None else None
            if u is None or u != u:  # missing or NaN
                continue
            if best is None or u < best:
                best, tied = u, [e]
            elif u == best:
                tied.append(e)
        if tied:
            return pick(self.rng, tied).id
        if p.fallback == "random":
            return pick(self.rng, view.endpoints).id
        return least_in_flight(self.rng, view.endpoints).id
