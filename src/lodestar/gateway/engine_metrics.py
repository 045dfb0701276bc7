"""Engine `/metrics` text -> `EngineMetrics`: the one table mapping vLLM and SGLang names to its fields.

Consumes: the Prometheus text exposition of a vLLM or SGLang server, and the scrape time (router clock).
Produces: an `EngineMetrics` stamped `scraped_at` (fields the engine does not export stay `None`), and the static
facts some engines export as info metrics (vLLM `cache_config_info`: `num_gpu_blocks`, `block_size`), which the
scraper copies into the endpoint's labels.

Only lines whose sample name is in the table are kept (found with `str.find`, at C speed), and those few lines are
parsed with `prometheus_client.parser`; a full vLLM exposition has hundreds of histogram buckets the router never
reads. Several samples of one name (one per model, per data-parallel rank, per cache source) are summed, except
fractions (KV usage), which are averaged. For each field the first name in its list that is present wins, so the
current vLLM name comes before the older spelling.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from lodestar.cluster_view import EngineMetrics


@dataclass(frozen=True, slots=True)
class MetricSource:
    names: tuple[str, ...]  # tried in order; the first present wins
    agg: str = "sum"  # "sum" | "mean"


# EngineMetrics field -> engine sample names. vLLM first (current name, then older spellings), then SGLang.
METRIC_TABLE: dict[str, MetricSource] = {
    "num_requests_running": MetricSource(("vllm:num_requests_running", "sglang:num_running_reqs")),
    "num_requests_waiting": MetricSource(("vllm:num_requests_waiting", "sglang:num_queue_reqs")),
    "kv_cache_usage": MetricSource(
        ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage"), agg="mean"
    ),
    # prefix cache, in tokens: vLLM counts queried and hit tokens; SGLang counts cached prompt tokens out of all
    # prompt tokens, which is the same ratio
    "prefix_cache_queries": MetricSource(
        ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total", "sglang:prompt_tokens_total")
    ),
    "prefix_cache_hits": MetricSource(
        ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total", "sglang:cached_tokens_total")
    ),
    "prompt_tokens_total": MetricSource(("vllm:prompt_tokens_total", "sglang:prompt_tokens_total")),
    "generation_tokens_total": MetricSource(("vllm:generation_tokens_total", "sglang:generation_tokens_total")),
    "num_preemptions_total": MetricSource(("vllm:num_preemptions_total", "sglang:num_retracted_requests_total")),
    "ttft_sum": MetricSource(("vllm:time_to_first_token_seconds_sum", "sglang:time_to_first_token_seconds_sum")),
    "ttft_count": MetricSource(("vllm:time_to_first_token_seconds_count", "sglang:time_to_first_token_seconds_count")),
}
INFO_METRICS = ("vllm:cache_config_info",)
INFO_LABELS = ("num_gpu_blocks", "block_size")

_ALL = sorted({n for src in METRIC_TABLE.values() for n in src.names} | set(INFO_METRICS))
_BY_ENGINE = {p: tuple(n for n in _ALL if n.startswith(p)) for p in ("vllm:", "sglang:")}


def _wanted_lines(text: str) -> list[str]:
    """The sample lines of table names (str.find runs at C speed; most of an exposition is never looked at)."""
    names = tuple(n for p, ns in _BY_ENGINE.items() if p in text for n in ns)
    out = []
    for n in names:
        start, size = 0, len(n)
        while True:
            i = text.find(n, start)
            if i < 0:
                break
            j = text.find("\n", i)
            j = len(text) if j < 0 else j
            if (i == 0 or text[i - 1] == "\n") and text[i + size : i + size + 1] in ("{", " ", "\t"):
                out.append(text[i:j])
            start = j
    return out


@dataclass(slots=True)
class Scrape:
    metrics: EngineMetrics
    info: dict[str, str]
    samples: int  # samples of table names found


def parse_engine_metrics(text: str, scraped_at: float) -> Scrape:
    """Parse an exposition; never raises on malformed text (unparsable lines are skipped)."""
    values: dict[str, list[float]] = {}
    info: dict[str, str] = {}
    lines = _wanted_lines(text)
    try:
        families = list(text_string_to_metric_families("\n".join(lines) + "\n")) if lines else []
    except Exception:  # a malformed line: parse one by one, skipping the bad ones
        families = []
        for line in lines:
            try:
                families.extend(text_string_to_metric_families(line + "\n"))
            except Exception:
                continue
    for fam in families:
        for s in fam.samples:
            if s.name in INFO_METRICS:
                for k in INFO_LABELS:
                    if k in s.labels:
                        info[k] = s.labels[k]
            elif s.value == s.value:  # skip NaN
                values.setdefault(s.name, []).append(float(s.value))
    m = EngineMetrics(scraped_at=scraped_at)
    n = 0
    for fld, src in METRIC_TABLE.items():
        for name in src.names:
            vs = values.get(name)
            if vs:
                setattr(m, fld, sum(vs) / len(vs) if src.agg == "mean" else sum(vs))
                n += len(vs)
                break
    # a SGLang exposition without cached_tokens_total has no hit counter: then no query counter either
    if m.prefix_cache_hits is None:
        m.prefix_cache_queries = None
    return Scrape(m, info, n)
