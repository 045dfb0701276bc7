"""Serving-level calibration: replay the IOG vLLM 0.8.5 benchmark_serving runs through the simulated engine.

    PYTHONPATH=src python bench/iog_replay.py [--seeds 5] [--profiles DIR] [--max-num-batched-tokens 8192]

The IOG files (`iog_llm_inference_benchmarks/results/*.json` under PROFILES, default ../shared/data/profiles next
to the repository) are vLLM 0.8.5 `benchmark_serving` results: Llama-3-8B-Instruct on one H100-PCIe, the same 200
ShareGPT prompts at 1, 4, 8, 16 and 32 requests/s (Poisson arrivals), with client-side TTFT and TPOT statistics.
They hold only token totals, no per-request lengths, so each replay draws a synthetic ShareGPT-like workload:

- Lengths: lognormal, input sigma 1.2 and output sigma 0.9 (ShareGPT is heavy-tailed: median well below the mean),
  filtered like benchmark_serving's ShareGPT sampler (input and output >= 4 tokens, input <= 1024, input + output
  <= 2048). `mu` is solved so that the filtered mean equals the JSON mean (41169 / 200 = 205.8 in; ~201.8 out),
  and each 200-request sample is then rescaled to the JSON totals exactly, since IOG used the same 200 prompts in
  every run (identical `total_input_tokens`).
- Arrivals: Poisson at the run's rate, the first request at t = 0 (benchmark_serving sends, then sleeps).
- Prompts share nothing: one segment per prompt with a unique chained key (ShareGPT has almost no common prefix).
- Engine: one `h100-pcie` `llama-3-8b` with vLLM 0.8.5 V1 defaults for the OpenAI server on an H100: chunked
  prefill, `max_num_batched_tokens` 8192 and `max_num_seqs` 1024 (0.8.5's `_set_default_args_v1` picks these when
  the device name contains "h100"; 2048 / 256 on other GPUs), block 16, prefix caching on, memory utilisation 0.9.

Simulated TTFT is engine-side (arrival to the end of the step that emits the first token); IOG's is client-side,
so `PerfModel.api_overhead_s` (2.7 ms: HTTP, tokenisation, streaming) is added to every simulated TTFT. TPOT is
benchmark_serving's per-request `(e2e - ttft) / (output_tokens - 1)`, averaged over requests with more than one
output token; it needs no correction. Each figure is the mean over seeds of the per-run statistic.

`tests/test_serving_calibration.py` imports this file and asserts the points listed in `TOLERANCE`.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lodestar.engine.engine import Engine, Seq
from lodestar.engine.perf_model import PerfModel
from lodestar.policies.base import build_policy
from lodestar.prefix import ROOT_KEY, chain_key, chain_keys
from lodestar.request import Request
from lodestar.sim.results import tpot
from lodestar.sim.runner import DONE, Simulation
from lodestar.sim.scenario import Scenario, parse_scenario

DEFAULT_PROFILES = Path(__file__).resolve().parents[2] / "shared" / "data" / "profiles"
IOG_GLOB = "iog_llm_inference_benchmarks/results/vllm_200prompts*qps_*.json"

GPU, MODEL = "h100-pcie", "llama-3-8b"
ENGINE = {  # vLLM 0.8.5 V1, OpenAI API server, device name containing "h100"
    "max_num_batched_tokens": 8192,
    "max_num_seqs": 1024,
    "block_size": 16,
    "enable_prefix_caching": True,
    "gpu_memory_utilization": 0.9,
}

SIGMA_IN, SIGMA_OUT = 1.2, 0.9  # lognormal shape of ShareGPT prompt and completion lengths (our choice)
MIN_LEN, MAX_PROMPT, MAX_TOTAL = 4, 1024, 2048  # benchmark_serving's ShareGPT filter

# Asserted points: (rate, metric) -> allowed |error|. Metrics not listed are reported, not asserted.
# 32 req/s TTFT is not asserted: the simulation is 27% fast there (docs/calibration.md section 5 says why).
TOLERANCE: dict[tuple[float, str], float] = {
    **{(r, "ttft_mean"): 0.15 for r in (1.0, 4.0, 8.0, 16.0)},
    **{(r, "tpot_mean"): 0.15 for r in (1.0, 4.0, 8.0, 16.0)},
    (32.0, "tpot_mean"): 0.20,
}


@dataclass(frozen=True)
class IogRun:
    rate: float
    num_prompts: int
    total_input_tokens: int
    total_output_tokens: int
    ttft_mean_ms: float
    ttft_p99_ms: float
    ttft_sd_ms: float
    tpot_mean_ms: float
    itl_ms: tuple[float, float, float, float]  # p50, p90, p99, max
    duration_s: float


def load_iog(profiles: Path = DEFAULT_PROFILES) -> dict[float, IogRun]:
    """The IOG runs by request rate (empty if the folder is missing)."""
    out: dict[float, IogRun] = {}
    for path in sorted(profiles.glob(IOG_GLOB)):
        d = json.loads(path.read_text())
        out[float(d["request_rate"])] = IogRun(
            rate=float(d["request_rate"]),
            num_prompts=int(d["num_prompts"]),
            total_input_tokens=int(d["total_input_tokens"]),
            total_output_tokens=int(d["total_output_tokens"]),
            ttft_mean_ms=float(d["mean_ttft_ms"]),
            ttft_p99_ms=float(d["p99_ttft_ms"]),
            ttft_sd_ms=float(d["std_ttft_ms"]),
            tpot_mean_ms=float(d["mean_tpot_ms"]),
            itl_ms=(float(d["median_itl_ms"]), float(d["p90_itl_ms"]), float(d["p99_itl_ms"]), float(d["p100_itl_ms"])),
            duration_s=float(d["duration"]),
        )
    return dict(sorted(out.items()))


# ---- workload ----------------------------------------------------------------------------------------------------


def _draw(
    rng: np.random.Generator, n: int, mu_in: float, mu_out: float, sigma_in: float, sigma_out: float
) -> tuple[np.ndarray, np.ndarray]:
    """n (prompt, output) length pairs from the two lognormals, keeping only pairs that pass the ShareGPT filter."""
    ins: list[np.ndarray] = []
    outs: list[np.ndarray] = []
    have = 0
    while have < n:
        p = np.rint(rng.lognormal(mu_in, sigma_in, 2 * n)).astype(np.int64)
        o = np.rint(rng.lognormal(mu_out, sigma_out, 2 * n)).astype(np.int64)
        ok = (p >= MIN_LEN) & (o >= MIN_LEN) & (p <= MAX_PROMPT) & (p + o <= MAX_TOTAL)
        ins.append(p[ok])
        outs.append(o[ok])
        have += int(ok.sum())
    return np.concatenate(ins)[:n], np.concatenate(outs)[:n]


@functools.lru_cache(maxsize=16)
def solve_mu(
    mean_in: float, mean_out: float, sigma_in: float = SIGMA_IN, sigma_out: float = SIGMA_OUT
) -> tuple[float, float]:
    """(mu_in, mu_out) such that the filtered lognormals have these means (fixed-seed Monte Carlo, 400k pairs)."""
    mu_in = math.log(mean_in) - sigma_in**2 / 2
    mu_out = math.log(mean_out) - sigma_out**2 / 2
    for _ in range(30):  # fixed-point on the log of the mean; the filter moves it by a few percent
        p, o = _draw(np.random.default_rng(12345), 400_000, mu_in, mu_out, sigma_in, sigma_out)
        err_in, err_out = math.log(mean_in / p.mean()), math.log(mean_out / o.mean())
        mu_in, mu_out = mu_in + err_in, mu_out + err_out
        if abs(err_in) < 1e-4 and abs(err_out) < 1e-4:
            break
    return mu_in, mu_out


def _rescale(x: np.ndarray, total: int, hi: np.ndarray) -> np.ndarray:
    """Scale integer lengths so they sum to `total` exactly, keeping each within [MIN_LEN, hi]."""
    y = np.clip(np.rint(x * total / x.sum()), MIN_LEN, hi).astype(np.int64)
    diff = total - int(y.sum())
    order = np.argsort(-y)  # adjust the longest first: the relative change there is smallest
    i = 0
    while diff != 0 and i < 100 * len(y):
        j = order[i % len(y)]
        step = 1 if diff > 0 else -1
        if MIN_LEN <= y[j] + step <= hi[j]:
            y[j] += step
            diff -= step
        i += 1
    return y


def sharegpt_like_lengths(
    n: int, total_in: int, total_out: int, seed: int, sigma_in: float = SIGMA_IN, sigma_out: float = SIGMA_OUT
) -> tuple[np.ndarray, np.ndarray]:
    """n (prompt, output) lengths: filtered lognormals with the given means, rescaled to the exact totals."""
    mu_in, mu_out = solve_mu(total_in / n, total_out / n, sigma_in, sigma_out)
    rng = np.random.default_rng(seed)
    p, o = _draw(rng, n, mu_in, mu_out, sigma_in, sigma_out)
    p = _rescale(p.astype(np.float64), total_in, np.full(n, MAX_PROMPT))
    o = _rescale(o.astype(np.float64), total_out, MAX_TOTAL - p)
    return p, o


def workload(run: IogRun, seed: int, sigma_in: float = SIGMA_IN, sigma_out: float = SIGMA_OUT) -> list[Request]:
    """The synthetic replay of one IOG run: its lengths, Poisson arrivals at its rate, no shared prefixes."""
    n = run.num_prompts
    p, o = sharegpt_like_lengths(n, run.total_input_tokens, run.total_output_tokens, seed, sigma_in, sigma_out)
    rng = np.random.default_rng([seed, int(run.rate * 1000)])
    gaps = rng.exponential(1.0 / run.rate, n)
    arrivals = np.concatenate([[0.0], np.cumsum(gaps[:-1])])
    root = chain_key(ROOT_KEY, f"iog-replay/{seed}")  # one unique segment per prompt: nothing is shared
    return [
        Request(i, float(arrivals[i]), int(p[i]), int(o[i]), chain_keys([i], parent=root), (int(p[i]),))
        for i in range(n)
    ]


def scenario(**engine: object) -> Scenario:
    eng = {**ENGINE, **engine}
    data = {"name": "iog-replay", "cluster": {"engine": eng, "instances": [{"gpu": GPU, "model": MODEL}]}}
    return parse_scenario(data, "iog_replay", Path("."))


# ---- replay ------------------------------------------------------------------------------------------------------

METRICS = ("ttft_mean", "ttft_p99", "ttft_sd", "tpot_mean")
NAMES = {"ttft_mean": "TTFT mean", "ttft_p99": "TTFT p99", "ttft_sd": "TTFT sd", "tpot_mean": "TPOT mean"}


def measured(run: IogRun) -> dict[str, float]:
    return {"ttft_mean": run.ttft_mean_ms, "ttft_p99": run.ttft_p99_ms, "ttft_sd": run.ttft_sd_ms,
            "tpot_mean": run.tpot_mean_ms}  # fmt: skip


def replay_once(
    run: IogRun, seed: int, sc: Scenario | None = None, sigma_in: float = SIGMA_IN, sigma_out: float = SIGMA_OUT
) -> dict[str, float]:
    """One simulated run: client-side TTFT mean / p99 / sd and TPOT mean in ms, and the simulated duration."""
    sc = sc or scenario()
    reqs = workload(run, seed, sigma_in, sigma_out)
    rec = Simulation(sc, reqs, build_policy("round-robin", seed=seed)).run()
    if not (rec.status == DONE).all():
        raise RuntimeError(f"{run.rate} req/s seed {seed}: {int((rec.status != DONE).sum())} requests not completed")
    api = PerfModel.create(GPU, MODEL).api_overhead_s
    ttft = (rec.ttft + api) * 1e3
    tp = tpot(rec)
    tp = tp[~np.isnan(tp)] * 1e3
    return {
        "ttft_mean": float(ttft.mean()),
        "ttft_p99": float(np.percentile(ttft, 99)),  # benchmark_serving: np.percentile, linear interpolation
        "ttft_sd": float(ttft.std()),
        "tpot_mean": float(tp.mean()),
        "duration_s": float(rec.sim_duration_s),
    }


@dataclass(frozen=True)
class Point:
    rate: float
    metric: str  # one of METRICS
    measured_ms: float
    simulated_ms: float  # mean over seeds of the per-run statistic
    seed_sd_ms: float  # standard deviation over seeds of the per-run statistic

    @property
    def err(self) -> float:
        return self.simulated_ms / self.measured_ms - 1.0

    @property
    def tol(self) -> float | None:
        return TOLERANCE.get((self.rate, self.metric))

    @property
    def ok(self) -> bool:
        return self.tol is None or abs(self.err) <= self.tol


def compare(
    profiles: Path = DEFAULT_PROFILES,
    seeds: int = 5,
    rates: tuple[float, ...] | None = None,
    sigma_in: float = SIGMA_IN,
    sigma_out: float = SIGMA_OUT,
    **engine: object,
) -> list[Point]:
    """Every (rate, metric) point of the IOG runs found under `profiles` against the replay over `seeds` seeds."""
    sc = scenario(**engine)
    points: list[Point] = []
    for rate, run in load_iog(profiles).items():
        if rates is not None and rate not in rates:
            continue
        res = [replay_once(run, s, sc, sigma_in, sigma_out) for s in range(seeds)]
        meas = measured(run)
        for m in METRICS:
            vals = np.array([r[m] for r in res])
            points.append(Point(rate, m, meas[m], float(vals.mean()), float(vals.std())))
    return points


def table(points: list[Point], metrics: tuple[str, ...] = ("ttft_mean", "ttft_p99", "tpot_mean")) -> str:
    """One row per rate: measured, simulated and error for each metric (asserted errors in bold when failing)."""
    head = "| req/s | " + " | ".join(f"{NAMES[m]}: IOG / sim (ms) | error" for m in metrics) + " |"
    lines = [head, "|---:|" + "---:|---:|" * len(metrics)]
    by = {(p.rate, p.metric): p for p in points}
    for rate in sorted({p.rate for p in points}):
        cells = []
        for m in metrics:
            p = by[(rate, m)]
            mark = "" if p.tol is None else (f" (tol {p.tol:.0%})" if p.ok else f" **FAIL, tol {p.tol:.0%}**")
            cells.append(f"{p.measured_ms:.1f} / {p.simulated_ms:.1f} | {p.err:+.1%}{mark}")
        lines.append(f"| {rate:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- diagnostic: inter-token latency ----------------------------------------------------------------------------


def replay_itl(
    run: IogRun, seed: int, sigma_in: float = SIGMA_IN, sigma_out: float = SIGMA_OUT
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simulated engine steps that emitted decode tokens: (duration ms, decoding sequences, 1 if a prefill rode
    along). A decoder's inter-token latency is the duration of the step that produced its token, so weighting each
    step by its decoders gives the ITL distribution benchmark_serving measures (minus client jitter).

    Diagnostic only: it wraps the engine's stepping methods, which a policy never sees."""
    sim = Simulation(scenario(), workload(run, seed, sigma_in, sigma_out), build_policy("round-robin", seed=seed))
    rec = _StepRecorder()
    for eng in sim.engines:
        rec.attach(eng)
    sim.run()
    return np.array(rec.durs) * 1e3, np.array(rec.weights), np.array(rec.mixed)


class _StepRecorder:
    """Wraps an engine's `start_step` / `finish_step` to record every step that produced decode tokens."""

    def __init__(self) -> None:
        self.durs: list[float] = []
        self.weights: list[int] = []
        self.mixed: list[int] = []

    def attach(self, eng: Engine) -> None:
        start_step, finish_step = eng.start_step, eng.finish_step
        started = [0.0]

        def start(now: float) -> float | None:
            end = start_step(now)
            if end is not None and eng.run is None:
                started[0] = now
            return end

        def finish(now: float) -> tuple[list[Seq], list[Seq]]:
            r = eng.run
            if r is not None:  # a decode run: r.steps decode steps of the same shape
                self.durs.extend((r.a + r.b * np.arange(r.steps)).tolist())
                self.weights.extend([eng.n_dec] * r.steps)
                self.mixed.extend([0] * r.steps)
            elif eng.n_dec > 0:  # one step with decoders (and prefill chunks, or a run too short to batch)
                self.durs.append(now - started[0])
                self.weights.append(eng.n_dec)
                self.mixed.append(1)
            return finish_step(now)

        eng.start_step = start  # type: ignore[method-assign]
        eng.finish_step = finish  # type: ignore[method-assign]


def itl_table(profiles: Path, seeds: int, sigma_in: float, sigma_out: float) -> str:
    lines = [
        "| req/s | ITL p50: IOG / sim (ms) | p90 | p99 | max | sim steps with a prefill (% of ITLs) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for rate, run in load_iog(profiles).items():
        per_seed = []
        for s in range(seeds):
            d, w, m = replay_itl(run, s, sigma_in, sigma_out)
            order = np.argsort(d)
            cum = np.cumsum(w[order]) / w.sum()
            q = [float(d[order][min(len(d) - 1, int(np.searchsorted(cum, x)))]) for x in (0.5, 0.9, 0.99)]
            per_seed.append([*q, float(d.max()), 100.0 * float((w * m).sum() / w.sum())])
        sim = np.mean(per_seed, axis=0)
        cells = [f"{a:.1f} / {b:.1f}" for a, b in zip(run.itl_ms, sim[:4], strict=True)]
        lines.append(f"| {rate:g} | " + " | ".join(cells) + f" | {sim[4]:.0f}% |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--profiles", type=Path, default=DEFAULT_PROFILES)
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1; figures are means over seeds")
    ap.add_argument("--sigma-in", type=float, default=SIGMA_IN, help="lognormal sigma of prompt lengths")
    ap.add_argument("--sigma-out", type=float, default=SIGMA_OUT, help="lognormal sigma of output lengths")
    ap.add_argument("--max-num-batched-tokens", type=int, default=ENGINE["max_num_batched_tokens"])
    ap.add_argument("--max-num-seqs", type=int, default=ENGINE["max_num_seqs"])
    ap.add_argument("--sd", action="store_true", help="also show the TTFT standard deviation")
    ap.add_argument("--itl", action="store_true", help="also compare inter-token latency percentiles")
    a = ap.parse_args()
    runs = load_iog(a.profiles)
    if not runs:
        print(f"no IOG results under {a.profiles}")
        return 2
    first = next(iter(runs.values()))
    n = first.num_prompts
    mu_in, mu_out = solve_mu(first.total_input_tokens / n, first.total_output_tokens / n, a.sigma_in, a.sigma_out)
    print(
        f"lengths: lognormal in (mu {mu_in:.3f}, sigma {a.sigma_in}), out (mu {mu_out:.3f}, sigma {a.sigma_out}), "
        f"medians {math.exp(mu_in):.0f} in / {math.exp(mu_out):.0f} out before the filter; "
        f"means {first.total_input_tokens / n:.1f} / {first.total_output_tokens / n:.1f} after it"
    )
    engine = {"max_num_batched_tokens": a.max_num_batched_tokens, "max_num_seqs": a.max_num_seqs}
    print(f"engine: {GPU} {MODEL} {ENGINE | engine}; seeds 0-{a.seeds - 1}; simulated TTFT + {API_MS} ms API overhead")
    points = compare(a.profiles, a.seeds, sigma_in=a.sigma_in, sigma_out=a.sigma_out, **engine)
    metrics = METRICS if a.sd else ("ttft_mean", "ttft_p99", "tpot_mean")
    print(table(points, metrics))
    if a.itl:
        print()
        print(itl_table(a.profiles, a.seeds, a.sigma_in, a.sigma_out))
    bad = [p for p in points if not p.ok]
    print(f"{sum(p.tol is not None for p in points)} asserted points, {len(bad)} outside tolerance")
    return 1 if bad else 0


API_MS = f"{PerfModel.create(GPU, MODEL).api_overhead_s * 1e3:.1f}"

if __name__ == "__main__":
    raise SystemExit(main())
