"""CPU cost of one routing decision, per policy and cluster size.

    PYTHONPATH=src python bench/decision_cost.py [--endpoints 4,16,64] [--decisions 3000] [--warmup 3000]
                                                 [--policies all] [--profile lodestar:64]

What one decision costs a router: `policy.choose(req, view)` plus the outcome callbacks the decision implies
(`on_dispatch`, `on_first_token`, `on_complete` for that request), each timed with `time.perf_counter_ns` and
summed per request. Every registered policy except the simulator-only `oracle`, at 4, 16 and 64 endpoints.

The harness plays a live router, without the simulator: it keeps a `RouterBookkeeping` (the router's own counts,
not timed: that is the gateway's cost, not the policy's), refreshes every endpoint's `EngineMetrics` every 50 ms of
router time (so `scraped_at` is at most 50 ms old), and answers each dispatch with a first token and a completion
later, from a simple load-dependent latency law (per-endpoint speed x (base + uncached and queued prompt tokens x
rate, growing with the decoding batch), lognormal noise), so that the learned policy has something to learn and its
state (prefix index, pending requests, models) has realistic size. Requests are turns of the built-in synthetic
chat workload with 5 to 20 prompt segments (system prompt, optional document, history, new user message), arriving
at 4 requests/s per endpoint.

Warm-up: `--warmup` decisions before measuring (not timed). For `lodestar` the warm-up continues until
`policy.ready` (it has left its cold-start fallback), so the measured decisions are learned ones. `lodestar`
retrains on a cadence inside `choose` (`train_interval_s` of router time): those decisions are included in the
figures, and the `train` calls are also reported on their own, as are `choose` percentiles without them.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import gc
import heapq
import io
import math
import os
import platform
import pstats
import time
from dataclasses import dataclass, field

import numpy as np

from lodestar.cluster_view import ClusterView, Endpoint, EngineMetrics, RouterBookkeeping
from lodestar.policies.base import build_policy, policy_registry
from lodestar.request import Request, RequestInfo
from lodestar.workload.synthetic import generate_synthetic

GPUS = ("h100", "a100-80g", "l40s", "l4")  # endpoints cycle through these (a heterogeneous fleet)
SPEED = {"h100": 1.0, "a100-80g": 1.6, "l40s": 2.2, "l4": 5.0}  # relative per-token time of the latency law
CLOCK = [time.perf_counter_ns]  # --clock thread: time.thread_time_ns (CPU time of this thread, robust to contention)
RATE_PER_ENDPOINT = 4.0  # requests/s
SCRAPE_INTERVAL_S = 0.05
KV_CAPACITY = {"h100": 448_000, "a100-80g": 450_000, "l40s": 192_000, "l4": 27_000}  # tokens (docs/calibration.md)


@functools.lru_cache(maxsize=4)
def _pool(seed: int) -> list[Request]:
    """Turns with 5-20 prompt segments of 10 minutes of the synthetic chat workload at 50 requests/s."""
    reqs = generate_synthetic({"rate_rps": 50.0}, seed=seed, horizon_s=600.0)
    return [r for r in reqs if 5 <= len(r.segment_keys) <= 20]


def sample_requests(n: int, seed: int = 0) -> list[RequestInfo]:
    """n requests with 5-20 prompt segments from the synthetic chat workload (cycled, with fresh ids, if short)."""
    pool = _pool(seed)
    reqs: list[Request] = []
    while len(reqs) < n:
        reqs.extend(pool[: n - len(reqs)])
    return [
        RequestInfo(i, 0.0, r.prompt_tokens, r.segment_keys, r.segment_tokens, r.max_tokens, r.model)
        for i, r in enumerate(reqs)
    ]


@dataclass
class Fleet:
    """The endpoints, the router's bookkeeping, and a toy latency law that answers dispatches."""

    n: int
    seed: int = 0
    endpoints: list[Endpoint] = field(default_factory=list)
    book: RouterBookkeeping = field(default_factory=RouterBookkeeping)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.gpu: dict[str, str] = {}
        for i in range(self.n):
            g = GPUS[i % len(GPUS)]
            ep = Endpoint(f"ep{i}", {"gpu": g, "model": "llama-3-8b", "tp": "1"})
            self.gpu[ep.id] = g
            self.endpoints.append(ep)
            self.book.add_endpoint(ep)
        self.sent: dict[str, set[int]] = {e.id: set() for e in self.endpoints}  # segment keys seen per endpoint
        self.queued: dict[str, int] = {e.id: 0 for e in self.endpoints}  # uncached tokens awaiting first token
        self.tokens: dict[str, int] = {e.id: 0 for e in self.endpoints}  # KV tokens of in-flight requests
        self.hits: dict[str, int] = {e.id: 0 for e in self.endpoints}
        self.queries: dict[str, int] = {e.id: 0 for e in self.endpoints}
        self.prompt_total: dict[str, int] = {e.id: 0 for e in self.endpoints}
        self.gen_total: dict[str, int] = {e.id: 0 for e in self.endpoints}
        self.last_scrape = -math.inf

    def view(self, now: float) -> ClusterView:
        if now - self.last_scrape >= SCRAPE_INTERVAL_S:
            self.last_scrape = now
            for ep in self.endpoints:
                b = ep.book
                ep.metrics = EngineMetrics(
                    scraped_at=now - 0.002,
                    num_requests_running=float(b.decoding + min(b.awaiting_first_token, 4)),
                    num_requests_waiting=float(max(0, b.awaiting_first_token - 4)),
                    kv_cache_usage=min(1.0, self.tokens[ep.id] / KV_CAPACITY[self.gpu[ep.id]]),
                    prefix_cache_queries=float(self.queries[ep.id]),
                    prefix_cache_hits=float(self.hits[ep.id]),
                    prompt_tokens_total=float(self.prompt_total[ep.id]),
                    generation_tokens_total=float(self.gen_total[ep.id]),
                    num_preemptions_total=0.0,
                    ttft_sum=None,
                    ttft_count=None,
                )
        return ClusterView(now, list(self.endpoints))

    def serve(self, req: RequestInfo, eid: str, now: float) -> tuple[float, float, int, int]:
        """(first-token time, completion time, output tokens, uncached tokens) of a request dispatched to `eid`."""
        sent = self.sent[eid]
        hit = 0
        for key, n in zip(req.segment_keys, req.segment_tokens, strict=True):
            if key not in sent:
                break
            hit += n
        hit = min(hit, req.prompt_tokens - 1)
        sent.update(req.segment_keys)
        unc = req.prompt_tokens - hit
        s = SPEED[self.gpu[eid]]
        d = self.book.endpoints[eid].book.decoding
        ttft = s * (0.015 + 1e-4 * (unc + self.queued[eid]) * (1 + d / 100)) * float(self.rng.lognormal(0, 0.1))
        out = int(req.max_tokens or 200)
        tpot = s * 0.012 * (1 + d / 64)
        self.queued[eid] += unc
        self.tokens[eid] += req.prompt_tokens + out
        self.hits[eid] += hit
        self.queries[eid] += req.prompt_tokens
        self.prompt_total[eid] += unc
        self.gen_total[eid] += out
        return now + ttft, now + ttft + tpot * max(0, out - 1), out, unc


@dataclass
class Result:
    policy: str
    endpoints: int
    choose_ns: np.ndarray
    decision_ns: np.ndarray  # choose + on_dispatch + on_first_token + on_complete, per request
    train_ns: np.ndarray  # lodestar: the train() calls made inside the measured choose() calls
    choose_no_train_ns: np.ndarray
    warmup: int
    ready: bool | None


def run(policy_name: str, n_endpoints: int, decisions: int, warmup: int, seed: int = 0,
        profile: cProfile.Profile | None = None) -> Result:  # fmt: skip
    pol = build_policy(policy_name, seed=seed)
    fleet = Fleet(n_endpoints, seed)
    learning = hasattr(pol, "ready")
    max_warmup = warmup * 10 if learning else warmup
    reqs = sample_requests(max_warmup + decisions, seed)
    gap = 1.0 / (RATE_PER_ENDPOINT * n_endpoints)

    train_log: list[int] = []
    measuring = [False]
    if hasattr(pol, "train"):
        orig_train = pol.train

        def timed_train(now: float) -> None:
            t0 = CLOCK[0]()
            orig_train(now)
            if measuring[0]:
                train_log.append(CLOCK[0]() - t0)

        pol.train = timed_train

    events: list[tuple[float, int, int, str, int]] = []  # (time, kind 0=first token 1=complete, req idx, ep, out)
    cost: dict[int, int] = {}
    choose_ns: list[int] = []
    choose_no_train: list[int] = []
    done_ids: list[int] = []
    first_seen: dict[int, float] = {}  # request index -> dispatch time
    unc_of: dict[int, int] = {}  # request index -> uncached tokens (the latency law's queue)
    now = 0.0
    i = 0
    n_measured = 0
    warm_done = 0
    gc.collect()
    while n_measured < decisions and i < len(reqs):
        now += gap
        # outcomes due before this arrival
        while events and events[0][0] <= now:
            t, kind, k, eid, out = heapq.heappop(events)
            r = reqs[k]
            if kind == 0:
                ttft = t - first_seen[k]
                fleet.book.on_first_token(r, eid, t, ttft)
                t0 = CLOCK[0]()
                pol.on_first_token(r, eid, t, ttft)
                dt = CLOCK[0]() - t0
                fleet.queued[eid] -= unc_of.pop(k)
            else:
                fleet.book.on_complete(r, eid, t)
                t0 = CLOCK[0]()
                pol.on_complete(r, eid, t, t - first_seen[k], out)
                dt = CLOCK[0]() - t0
                fleet.tokens[eid] -= r.prompt_tokens + out
                if k in cost:
                    done_ids.append(k)
            if k in cost:
                cost[k] += dt
        r = reqs[i]
        r.arrival_s = now
        view = fleet.view(now)
        is_measured = warm_done >= warmup and (not learning or pol.ready)  # type: ignore[attr-defined]
        if is_measured and not measuring[0]:
            measuring[0] = True
            if profile is not None:
                profile.enable()
        n_train = len(train_log)
        t0 = CLOCK[0]()
        pick = pol.choose(r, view)
        t1 = CLOCK[0]()
        fleet.book.on_dispatch(r, pick, now)
        t2 = CLOCK[0]()
        pol.on_dispatch(r, pick, now)
        t3 = CLOCK[0]()
        first, end, out, unc = fleet.serve(r, pick, now)
        unc_of[i] = unc
        first_seen[i] = now
        heapq.heappush(events, (first, 0, i, pick, out))
        heapq.heappush(events, (end, 1, i, pick, out))
        if is_measured:
            choose_ns.append(t1 - t0)
            if len(train_log) == n_train:
                choose_no_train.append(t1 - t0)
            cost[i] = (t1 - t0) + (t3 - t2)
            n_measured += 1
        else:
            warm_done += 1
        i += 1
    # let the measured requests finish (their callbacks are part of their cost)
    while events:
        t, kind, k, eid, out = heapq.heappop(events)
        r = reqs[k]
        t0 = CLOCK[0]()
        if kind == 0:
            pol.on_first_token(r, eid, t, t - first_seen[k])
        else:
            pol.on_complete(r, eid, t, t - first_seen[k], out)
        dt = CLOCK[0]() - t0
        if k in cost:
            cost[k] += dt
            if kind == 1:
                done_ids.append(k)
    if profile is not None:
        profile.disable()
    return Result(
        policy_name,
        n_endpoints,
        np.array(choose_ns),
        np.array([cost[k] for k in done_ids]),
        np.array(train_log),
        np.array(choose_no_train),
        warm_done,
        bool(pol.ready) if learning else None,  # type: ignore[attr-defined]
    )


def pct_us(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) / 1e3 if x.size else float("nan")


def table(results: list[Result], counts: list[int]) -> str:
    head = "| policy | " + " | ".join(f"{n} endpoints: p50 / p99 (us)" for n in counts) + " |"
    lines = [head, "|---|" + "---:|" * len(counts)]
    by = {(r.policy, r.endpoints): r for r in results}
    for name in sorted({r.policy for r in results}):
        cells = []
        for n in counts:
            r = by.get((name, n))
            cells.append("-" if r is None else f"{pct_us(r.decision_ns, 50):.0f} / {pct_us(r.decision_ns, 99):.0f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def learner_table(results: list[Result]) -> str:
    lines = [
        "| endpoints | choose p50 / p99 (us) | choose without train p50 / p99 (us) | train calls "
        "| train p50 / p99 / max (us) | decision p50 / p99 (us) | warm-up decisions | ready |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        t = r.train_ns
        lines.append(
            f"| {r.endpoints} | {pct_us(r.choose_ns, 50):.0f} / {pct_us(r.choose_ns, 99):.0f} "
            f"| {pct_us(r.choose_no_train_ns, 50):.0f} / {pct_us(r.choose_no_train_ns, 99):.0f} | {t.size} "
            f"| {pct_us(t, 50):.0f} / {pct_us(t, 99):.0f} / {(t.max() / 1e3 if t.size else float('nan')):.0f} "
            f"| {pct_us(r.decision_ns, 50):.0f} / {pct_us(r.decision_ns, 99):.0f} | {r.warmup} | {r.ready} |"
        )
    return "\n".join(lines)


def machine() -> str:
    model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs; Python {platform.python_version()}; numpy {np.__version__}"


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--endpoints", default="4,16,64")
    ap.add_argument("--decisions", type=int, default=3000, help="measured decisions per (policy, endpoints)")
    ap.add_argument("--warmup", type=int, default=3000, help="decisions before measuring (lodestar: and until ready)")
    ap.add_argument("--policies", default="all", help="comma-separated names, or 'all' (every policy but oracle)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--clock",
        choices=("perf", "thread"),
        default="perf",
        help="perf: time.perf_counter_ns (wall); thread: time.thread_time_ns (this thread's CPU time)",
    )
    ap.add_argument("--profile", default=None, help="POLICY:ENDPOINTS: cProfile the measured decisions of that run")
    a = ap.parse_args()
    counts = [int(x) for x in a.endpoints.split(",")]
    if a.clock == "thread":
        CLOCK[0] = time.thread_time_ns
    names = [n for n in policy_registry() if n != "oracle"] if a.policies == "all" else a.policies.split(",")
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}; clock {a.clock}")
    print(f"{a.decisions} measured decisions after >= {a.warmup} warm-up; {RATE_PER_ENDPOINT:g} req/s per endpoint")
    prof_target = None
    if a.profile:
        pname, pn = a.profile.split(":")
        prof_target = (pname, int(pn))
    results: list[Result] = []
    for name in names:
        for n in counts:
            prof = cProfile.Profile() if prof_target == (name, n) else None
            r = run(name, n, a.decisions, a.warmup, a.seed, prof)
            results.append(r)
            if prof is not None:
                s = io.StringIO()
                pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
                print(s.getvalue())
    print("\nPer-decision cost: choose + on_dispatch + on_first_token + on_complete, microseconds\n")
    print(table(results, counts))
    learned = [r for r in results if r.ready is not None]
    if learned:
        print("\nLearned policy, in detail\n")
        print(learner_table(learned))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
