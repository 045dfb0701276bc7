"""The gateway's own Prometheus metrics and its structured (JSON lines) logs.

Consumes: events from the proxy (decisions, TTFT/E2E, retries, rejections, disconnects), and at collection time
the pool (health, ejections, in flight, scrape age and errors) and the policy's `diagnostics()` when it learns.
Produces: the text of `GET /metrics` from a `CollectorRegistry` owned by one gateway instance (several gateways in
one process, as in the tests, do not share metrics), and `JsonFormatter` for logs.

Hot-path cost is kept to a few cached child objects per endpoint (no label look-up per request); everything
derived from state (in flight, scrape age, health, learner error) is computed only when `/metrics` is read.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from lodestar.clock import Clock
from lodestar.gateway.pool import BackendPool

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
DECISION_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 5e-2)


class EndpointMetrics:
    """Cached children for one endpoint (label look-ups are the expensive part of prometheus_client)."""

    __slots__ = ("decisions", "e2e", "failures", "ttft")

    def __init__(self, m: GatewayMetrics, eid: str, policy: str) -> None:
        self.decisions = m.decisions.labels(policy=policy, endpoint=eid)
        self.ttft = m.ttft.labels(endpoint=eid)
        self.e2e = m.e2e.labels(endpoint=eid)
        self.failures = m.upstream_failures.labels(endpoint=eid)


class GatewayMetrics:
    def __init__(self, pool: BackendPool, clock: Clock, policy_name: str, policy: Any) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.pool, self.clock, self.policy_name, self.policy = pool, clock, policy_name, policy
        self.requests = Counter(
            "lodestar_gateway_requests", "Client requests by route and status.", ["route", "status"], registry=r
        )
        self.decisions = Counter(
            "lodestar_gateway_decisions",
            "Routing decisions per endpoint and policy.",
            ["policy", "endpoint"],
            registry=r,
        )
        self.ttft = Histogram(
            "lodestar_gateway_ttft_seconds",
            "Time from dispatch to the first content chunk.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "lodestar_gateway_e2e_seconds",
            "Time from dispatch to the end of the response.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decision_latency = Histogram(
            "lodestar_gateway_decision_seconds", "Time spent in policy.choose.", buckets=DECISION_BUCKETS, registry=r
        )
        self.retries = Counter(
            "lodestar_gateway_retries", "Requests retried on another endpoint, by reason.", ["reason"], registry=r
        )
        self.upstream_failures = Counter(
            "lodestar_gateway_upstream_failures", "Failed upstream attempts per endpoint.", ["endpoint"], registry=r
        )
        self.disconnects = Counter(
            "lodestar_gateway_client_disconnects",
            "Clients that went away mid-request (the upstream request was aborted).",
            registry=r,
        )
        self.in_flight = 0
        self._children: dict[str, EndpointMetrics] = {}
        self._status_children: dict[tuple[str, int], Any] = {}
        r.register(_StateCollector(self))

    def endpoint(self, eid: str) -> EndpointMetrics:
        c = self._children.get(eid)
        if c is None:
            c = self._children[eid] = EndpointMetrics(self, eid, self.policy_name)
        return c

    def forget(self, eid: str) -> None:
        """Drop a removed endpoint's labelled series (discovery churn must not grow the registry)."""
        if self._children.pop(eid, None) is not None:
            for metric, labels in (
                (self.decisions, (self.policy_name, eid)),
                (self.ttft, (eid,)),
                (self.e2e, (eid,)),
                (self.upstream_failures, (eid,)),
            ):
                with contextlib.suppress(KeyError):
                    metric.remove(*labels)

    def request_done(self, route: str, status: int) -> None:
        key = (route, status)
        c = self._status_children.get(key)
        if c is None:
            c = self._status_children[key] = self.requests.labels(route=route, status=str(status))
        c.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """Gauges derived from state when `/metrics` is read."""

    def __init__(self, m: GatewayMetrics) -> None:
        self.m = m

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        m, now = self.m, self.m.clock.now()
        yield GaugeMetricFamily("lodestar_gateway_in_flight", "Client requests being served.", value=m.in_flight)
        healthy = GaugeMetricFamily(
            "lodestar_gateway_endpoint_up", "1 if the endpoint is a routing candidate.", labels=["endpoint"]
        )
        inflight = GaugeMetricFamily(
            "lodestar_gateway_endpoint_in_flight", "Router-counted requests in flight.", labels=["endpoint"]
        )
        age = GaugeMetricFamily(
            "lodestar_gateway_scrape_age_seconds", "Age of the endpoint's last metrics scrape.", labels=["endpoint"]
        )
        ejections = CounterMetricFamily(
            "lodestar_gateway_ejections", "Circuit-breaker ejections per endpoint.", labels=["endpoint"]
        )
        scrape_err = CounterMetricFamily(
            "lodestar_gateway_scrape_errors", "Failed metrics scrapes per endpoint.", labels=["endpoint"]
        )
        for b in list(m.pool.backends.values()):
            healthy.add_metric([b.id], 1.0 if m.pool.available(b) else 0.0)
            inflight.add_metric([b.id], b.endpoint.book.in_flight)
            if b.endpoint.metrics is not None:
                age.add_metric([b.id], b.endpoint.metrics.age(now))
            ejections.add_metric([b.id], b.ejections)
            scrape_err.add_metric([b.id], b.scrape_errors)
        yield from (healthy, inflight, age, ejections, scrape_err)
        yield from _learner_families(m.policy)


def _learner_families(policy: Any) -> Iterator[Any]:
    diag: Callable[[], dict[str, Any]] | None = getattr(policy, "diagnostics", None)
    if not getattr(policy, "learning", False) or diag is None:
        return
    try:
        d = diag()
    except Exception:  # diagnostics must never break /metrics
        return
    acc = d.get("accuracy") or {}
    fams = [
        (
            "lodestar_learner_prediction_rel_error",
            "Median relative TTFT prediction error (recent).",
            acc.get("rel_err"),
        ),
        ("lodestar_learner_prediction_r2", "TTFT prediction R^2 (recent).", acc.get("r2")),
        ("lodestar_learner_scored_predictions", "Predictions scored against observed TTFT.", acc.get("n")),
        (
            "lodestar_learner_ready",
            "1 once the learned predictor routes (0: cold-start fallback).",
            0.0 if d.get("ready_at_s") is None else 1.0,
        ),
        (
            "lodestar_learner_exploration_rate",
            "Share of decisions that explored.",
            d["explored"] / d["decisions"] if d.get("decisions") else 0.0,
        ),
        ("lodestar_learner_decisions", "Decisions made by the learned policy.", d.get("decisions")),
    ]
    for name, doc, value in fams:
        if isinstance(value, int | float) and value == value:
            yield GaugeMetricFamily(name, doc, value=float(value))


_STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any `extra={...}` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str) -> None:
    h = logging.StreamHandler()
    h.setFormatter(JsonFormatter())
    root = logging.getLogger("lodestar")
    root.handlers[:] = [h]
    root.setLevel(level.upper())
    root.propagate = False
