"""Outcome reporting for one attempt: the callbacks to the bookkeeping and the policy, and the gateway's metrics.

Consumes: what the proxy observed (dispatch, first content event, end of the response or failure, token counts from
the usage block) and the router clock. Produces: `on_first_token` (once per attempt), `on_complete` / `on_failure`
to `RouterBookkeeping` and then to the policy (a policy exception is logged, never propagated), TTFT and E2E
histograms, circuit-breaker successes and failures, the per-model characters-per-token correction, and the optional
per-request log line (never the body).
"""

from __future__ import annotations

import logging
from typing import Any

from lodestar.clock import Clock
from lodestar.cluster_view import RouterBookkeeping
from lodestar.gateway.config import GatewayConfig
from lodestar.gateway.observability import GatewayMetrics
from lodestar.gateway.parse import ParsedRequest, TokenEstimator
from lodestar.gateway.pool import Backend, BackendPool
from lodestar.gateway.sse import StreamObserver
from lodestar.policies.base import Policy
from lodestar.request import RequestInfo

log = logging.getLogger("lodestar.gateway")


class Outcomes:
    def __init__(
        self,
        cfg: GatewayConfig,
        pool: BackendPool,
        book: RouterBookkeeping,
        policy: Policy,
        clock: Clock,
        metrics: GatewayMetrics,
        estimator: TokenEstimator,
    ) -> None:
        self.cfg, self.pool, self.book, self.policy, self.clock, self.m = cfg, pool, book, policy, clock, metrics
        self.estimator = estimator

    def callback(self, name: str, *args: Any) -> None:
        for target in (self.book, self.policy):
            try:
                getattr(target, name)(*args)
            except Exception:  # a policy bug must not take the gateway down
                log.exception("outcome callback failed", extra={"callback": name})

    def first(self, obs: StreamObserver | None, info: RequestInfo, b: Backend, t_disp: float) -> None:
        """Report the first token once per attempt."""
        if obs is not None:
            if obs.reported:
                return
            obs.reported = True
        now = self.clock.now()
        ttft = now - t_disp
        self.m.endpoint(b.id).ttft.observe(ttft)
        self.callback("on_first_token", info, b.id, now, ttft)

    def end(
        self,
        p: ParsedRequest,
        info: RequestInfo,
        b: Backend,
        t_disp: float,
        ok: bool,
        obs: StreamObserver | None = None,
        output_tokens: int = 0,
    ) -> None:
        now = self.clock.now()
        em = self.m.endpoint(b.id)
        if not ok:
            em.failures.inc()
            self.pool.record_failure(b, now)
            self.callback("on_failure", info, b.id, now)
            return
        self.pool.record_success(b)
        e2e = now - t_disp
        em.e2e.observe(e2e)
        n = obs.output_tokens() if obs is not None else output_tokens
        self.book.on_complete(info, b.id, now)
        try:
            self.policy.on_complete(info, b.id, now, e2e, n)
        except Exception:
            log.exception("outcome callback failed", extra={"callback": "on_complete"})
        usage = obs.usage if obs is not None else None
        if usage and not p.exact_tokens and isinstance(usage.get("prompt_tokens"), int):
            self.estimator.observe(p.model, p.prompt_chars, usage["prompt_tokens"])
        if self.cfg.log_requests:
            log.info(
                "request",
                extra={
                    "endpoint": b.id,
                    "model": p.model,
                    "stream": p.stream,
                    "prompt_tokens_est": p.prompt_tokens,
                    "output_tokens": n,
                    "e2e_s": round(e2e, 6),
                },
            )
