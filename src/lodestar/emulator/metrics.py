"""`/metrics` of an emulated engine: vLLM's metric names, labels and buckets, with values from the engine model.

Consumes: the `EngineDriver` (engine state through `sim.runner.snapshot`, the same mapping the simulator's scrapes
use) and per-request timings the driver reports (`RequestMetrics.on_first_token` / `on_finish`). Produces:
Prometheus text exposition (`render`), as a vLLM v1 server exports it:

- gauges `vllm:num_requests_running`, `vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc` (fraction 0..1), and
  the deprecated `vllm:gpu_cache_usage_perc` that older routers read;
- counters `vllm:prefix_cache_queries_total`, `vllm:prefix_cache_hits_total` (tokens; plus the deprecated
  `vllm:gpu_prefix_cache_*`), `vllm:prompt_tokens_total`, `vllm:generation_tokens_total`,
  `vllm:num_preemptions_total`, `vllm:request_success_total{finished_reason}`;
- histograms with vLLM's buckets: `vllm:time_to_first_token_seconds`, `vllm:e2e_request_latency_seconds`,
  `vllm:time_per_output_token_seconds` (one observation per request: its mean inter-token time),
  `vllm:request_queue_time_seconds`, `vllm:request_decode_time_seconds`, `vllm:request_prompt_tokens`,
  `vllm:request_generation_tokens`;
- the process collector (`process_cpu_seconds_total`, ...), as vLLM's server has.
Labels: `model_name` (the served model name) and `engine` ("0"). Times are wall seconds (the time scale included).
Counters restart from zero when the emulated engine restarts (as a restarted vLLM process's do).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from lodestar.emulator.driver import EngineDriver, Stream
from lodestar.sim.runner import snapshot

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
                80.0)  # fmt: skip
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                   480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
FINISH_REASONS = ("stop", "length", "abort")


def one_two_five_buckets(max_value: int) -> tuple[float, ...]:
    """vLLM's 1-2-5 buckets up to `max_value` (1, 2, 5, 10, 20, 50, ...) for token-count histograms."""
    out: list[float] = []
    exp = 0
    while True:
        for m in (1, 2, 5):
            v = m * 10**exp
            if v > max_value:
                return tuple(out)
            out.append(float(v))
        exp += 1


class Hist:
    """A fixed-bucket histogram (cumulative counts are produced at render time)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, v)] += 1
        self.sum += v
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        out = []
        acc = 0
        for b, c in zip(self.bounds, self.counts, strict=False):
            acc += c
            out.append((repr(float(b)), float(acc)))
        out.append(("+Inf", float(self.count)))
        return out


class RequestMetrics:
    """Per-request observations (the driver's `RequestStats`)."""

    def __init__(self, max_model_len: int) -> None:
        tok = one_two_five_buckets(max(1, max_model_len))
        self.hists: dict[str, tuple[str, Hist]] = {
            "vllm:time_to_first_token_seconds": ("Histogram of time to first token in seconds.", Hist(TTFT_BUCKETS)),
            "vllm:e2e_request_latency_seconds": ("Histogram of e2e request latency in seconds.", Hist(LATENCY_BUCKETS)),
            "vllm:time_per_output_token_seconds": ("Histogram of time per output token in seconds.",
                                                   Hist(TPOT_BUCKETS)),
            "vllm:request_queue_time_seconds": ("Histogram of time spent in WAITING phase for request.",
                                                Hist(LATENCY_BUCKETS)),
            "vllm:request_decode_time_seconds": ("Histogram of time spent in DECODE phase for request.",
                                                 Hist(LATENCY_BUCKETS)),
            "vllm:request_prompt_tokens": ("Number of prefill tokens processed.", Hist(tok)),
            "vllm:request_generation_tokens": ("Number of generation tokens processed.", Hist(tok)),
        }  # fmt: skip
        self.success = dict.fromkeys(FINISH_REASONS, 0)

    def _h(self, name: str) -> Hist:
        return self.hists[name][1]

    def on_first_token(self, st: Stream) -> None:
        assert st.first_t is not None
        self._h("vllm:time_to_first_token_seconds").observe(st.first_t - st.arrival)
        if st.admitted_t is not None:
            self._h("vllm:request_queue_time_seconds").observe(st.admitted_t - st.arrival)

    def on_finish(self, st: Stream) -> None:
        reason = st.finish_reason or "abort"
        self.success[reason] = self.success.get(reason, 0) + 1
        if reason == "abort" or st.end_t is None:
            return
        self._h("vllm:e2e_request_latency_seconds").observe(st.end_t - st.arrival)
        self._h("vllm:request_prompt_tokens").observe(st.prompt_tokens)
        self._h("vllm:request_generation_tokens").observe(st.gen)
        if st.first_t is not None:
            self._h("vllm:request_decode_time_seconds").observe(st.end_t - st.first_t)
            if st.gen > 1:
                self._h("vllm:time_per_output_token_seconds").observe((st.end_t - st.first_t) / (st.gen - 1))


class EngineCollector(Collector):
    """Reads the current driver (it changes when the emulated engine restarts) at every scrape."""

    def __init__(self, source: Callable[[], tuple[EngineDriver, RequestMetrics]], model_name: str) -> None:
        self.source = source
        self.labels = ["model_name", "engine"]
        self.values = [model_name, "0"]

    def collect(self) -> Iterator[Metric]:
        driver, req = self.source()
        eng = driver.engine
        now = driver.clock.now()
        s = snapshot(eng, now)
        lab, val = self.labels, self.values

        def gauge(name: str, doc: str, v: float | None) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=lab)
            g.add_metric(val, float(v or 0.0))
            return g

        def counter(name: str, doc: str, v: float | None) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=lab)
            c.add_metric(val, float(v or 0.0))
            return c

        yield gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
                    s.num_requests_running)  # fmt: skip
        yield gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", s.num_requests_waiting)
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", s.kv_cache_usage)
        yield gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. DEPRECATED: use vllm:kv_cache_usage_perc.",
                    s.kv_cache_usage)  # fmt: skip
        yield counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.",
                      s.prefix_cache_queries)  # fmt: skip
        yield counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
                      s.prefix_cache_hits)  # fmt: skip
        yield counter("vllm:gpu_prefix_cache_queries", "DEPRECATED: use vllm:prefix_cache_queries.",
                      s.prefix_cache_queries)  # fmt: skip
        yield counter("vllm:gpu_prefix_cache_hits", "DEPRECATED: use vllm:prefix_cache_hits.", s.prefix_cache_hits)
        yield counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.",
                      s.num_preemptions_total)  # fmt: skip
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.", s.prompt_tokens_total)
        yield counter("vllm:generation_tokens", "Number of generation tokens processed.", s.generation_tokens_total)
        ok = CounterMetricFamily("vllm:request_success", "Count of successfully processed requests.",
                                 labels=[*lab, "finished_reason"])  # fmt: skip
        for reason, n in req.success.items():
            ok.add_metric([*val, reason], float(n))
        yield ok
        for name, (doc, h) in req.hists.items():
            fam = HistogramMetricFamily(name, doc, labels=lab)
            fam.add_metric(val, h.cumulative(), h.sum)
            yield fam


def make_registry(collector: EngineCollector) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    ProcessCollector(registry=reg)
    return reg


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
