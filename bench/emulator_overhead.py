"""Emulator benchmarks: its own CPU overhead under 100 concurrent streams, and simulated-vs-emulated agreement.

Consumes: nothing but the package (engines are started here as subprocesses on 127.0.0.1). Produces: a report on
stdout (and `--json FILE`):

1. `overhead`: one emulated engine (`--gpu`, `--model`, time scale `--time-scale`, default 4) holding `--streams`
   (default 100) concurrent streaming requests: a closed loop of that many clients, each sending a request with a
   unique `--prompt-tokens` prompt and `--output-tokens` output, again and again, for `--seconds` after a warm-up.
   The engine's own CPU use = its process CPU time (its `process_cpu_seconds_total`) / wall time. The load
   generator runs in this process, not in the engine's. Target: < 20% of one core at time scale 4.
2. `agreement`: one small 1-instance scenario (synthetic chat, `--load` of the instance's capacity, `--duration`
   s) simulated with `lodestar sim`'s code, then replayed in real time against one emulated engine of the same
   GPU/model/settings with `lodestar replay`'s code, both at time scale `--agree-time-scale`; compares TTFT mean
   and percentiles (target: mean within 15%).

    python bench/emulator_overhead.py [overhead|agreement|all] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_engine(
    gpu: str, model: str, time_scale: float, port: int, extra: list[str] | None = None
) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "lodestar.emulator", "emulate", "--gpu", gpu, "--model", model, "--port", str(port),
           "--time-scale", str(time_scale), *(extra or [])]  # fmt: skip
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    line = p.stdout.readline()
    if "listening on" not in line:
        p.kill()
        raise RuntimeError(f"engine did not start: {line!r} {p.stderr.read() if p.stderr else ''}")
    return p


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(url + "/metrics") as r:
        text = await r.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "_bucket" not in line:
            name, _, val = line.rpartition(" ")
            out[name.split("{")[0]] = float(val)
    return out


GEN = "vllm:generation_tokens_total"


async def overhead(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    proc = start_engine(args.gpu, args.model, args.time_scale, port)
    url = f"http://127.0.0.1:{port}"
    prompt_chars = 4 * args.prompt_tokens
    stop = time.perf_counter() + args.warmup + args.seconds
    tokens = 0
    running: list[float] = []
    try:
        conn = aiohttp.TCPConnector(limit=args.streams + 8)
        async with aiohttp.ClientSession(connector=conn) as session:

            async def client(k: int) -> None:
                nonlocal tokens
                i = 0
                while time.perf_counter() < stop:
                    i += 1
                    head = f"client {k} request {i} "
                    body = {"prompt": head + "x" * (prompt_chars - len(head)), "max_tokens": args.output_tokens,
                            "stream": True}  # fmt: skip
                    async with session.post(url + "/v1/completions", json=body) as r:
                        async for line in r.content:
                            if line.startswith(b"data: {"):
                                tokens += 1

            async def sampler() -> None:
                while time.perf_counter() < stop:
                    await asyncio.sleep(0.5)
                    running.append((await scrape(session, url)).get("vllm:num_requests_running", 0.0))

            tasks = [asyncio.create_task(client(k)) for k in range(args.streams)]
            samp = asyncio.create_task(sampler())
            await asyncio.sleep(args.warmup)
            m0, t0, tok0 = await scrape(session, url), time.perf_counter(), tokens
            await asyncio.sleep(args.seconds)
            m1, t1, tok1 = await scrape(session, url), time.perf_counter(), tokens
            await asyncio.gather(*tasks, samp)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    wall = t1 - t0
    cpu = m1["process_cpu_seconds_total"] - m0["process_cpu_seconds_total"]
    steady = running[len(running) // 4 :] or [0.0]
    return {
        "gpu": args.gpu, "model": args.model, "time_scale": args.time_scale, "streams": args.streams,
        "prompt_tokens": args.prompt_tokens, "output_tokens": args.output_tokens, "wall_s": wall,
        "engine_cpu_s": cpu, "engine_cpu_fraction": cpu / wall,
        "tokens_streamed_per_s": (tok1 - tok0) / wall, "mean_running": sum(steady) / len(steady),
        "generation_tokens_per_s_engine": (m1[GEN] - m0[GEN]) / wall,
    }  # fmt: skip


async def scrape_once(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as session:
        return await scrape(session, url)


def agreement(args: argparse.Namespace) -> dict[str, Any]:
    from lodestar.replay.runner import ReplayOptions, run_replay
    from lodestar.sim.api import run_one, scenario_requests
    from lodestar.sim.scenario import parse_scenario

    data = {
        "name": "agreement-1x" + args.gpu, "seed": args.seed,
        "cluster": {"instances": [{"gpu": args.gpu, "model": args.model, "count": 1}]},
        "workload": {"kind": "synthetic", "duration_s": args.duration, "load": args.load,
                     "synthetic": {"preset": "chat"}},
    }  # fmt: skip
    sc = parse_scenario(data, "agreement", Path("."))
    reqs = scenario_requests(sc, args.seed)
    sim, _ = run_one(sc, "round-robin", args.seed, requests=reqs)
    port = free_port()
    proc = start_engine(args.gpu, args.model, args.agree_time_scale, port)
    try:
        opts = ReplayOptions(target=f"http://127.0.0.1:{port}", time_scale=args.agree_time_scale)
        live, _ = run_replay(reqs, sc, args.seed, opts)
        m = asyncio.run(scrape_once(opts.target))
        server_ttft = m["vllm:time_to_first_token_seconds_sum"] / m["vllm:time_to_first_token_seconds_count"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    rel = {k: (live["ttft_s"][k] - sim["ttft_s"][k]) / sim["ttft_s"][k] for k in ("mean", "p50", "p90", "p99")}
    return {
        "scenario": data, "requests": len(reqs), "time_scale": args.agree_time_scale,
        "sim": {k: sim[k] for k in ("ttft_s", "tpot_s", "e2e_s", "prefix_hit_ratio", "requests")},
        "emulated": {k: live[k] for k in ("ttft_s", "tpot_s", "e2e_s", "prefix_hit_ratio", "requests")},
        "ttft_rel_diff": rel, "within_15pct": abs(rel["mean"]) <= 0.15,
        "server_side_ttft_mean_s": server_ttft / args.agree_time_scale,
        "e2e_mean_rel_diff": (live["e2e_s"]["mean"] - sim["e2e_s"]["mean"]) / sim["e2e_s"]["mean"],
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="?", default="all", choices=["overhead", "agreement", "all"])
    ap.add_argument("--gpu", default="a100-80g")
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--time-scale", type=float, default=4.0)
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--output-tokens", type=int, default=512)
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--duration", type=float, default=60.0, help="agreement: workload seconds")
    ap.add_argument("--load", type=float, default=0.7, help="agreement: fraction of the instance's capacity")
    ap.add_argument("--agree-time-scale", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    report: dict[str, Any] = {"machine": machine}
    if args.what in ("overhead", "all"):
        r = asyncio.run(overhead(args))
        report["overhead"] = r
        print(f"overhead: {r['streams']} streams on {r['gpu']}/{r['model']} at time scale {r['time_scale']:g}: "
              f"engine CPU {r['engine_cpu_fraction']:.1%} of one core ({r['engine_cpu_s']:.2f} s in "
              f"{r['wall_s']:.1f} s), {r['tokens_streamed_per_s']:.0f} tokens/s streamed, "
              f"{r['mean_running']:.0f} running on average")  # fmt: skip
    if args.what in ("agreement", "all"):
        a = agreement(args)
        report["agreement"] = a
        s, e, d = a["sim"]["ttft_s"], a["emulated"]["ttft_s"], a["ttft_rel_diff"]
        print(f"agreement: {a['requests']} requests, time scale {a['time_scale']:g}")
        for k in ("mean", "p50", "p90", "p99"):
            print(f"  TTFT {k:>4}: sim {s[k] * 1e3:8.1f} ms   emulated {e[k] * 1e3:8.1f} ms   diff {d[k]:+.1%}")
        print(f"  engine-side TTFT mean (the emulator's own histogram): {a['server_side_ttft_mean_s'] * 1e3:.1f} ms")
        print(f"  E2E mean diff {a['e2e_mean_rel_diff']:+.1%}; prefix hit sim {a['sim']['prefix_hit_ratio']:.1%} "
              f"emulated {a['emulated']['prefix_hit_ratio']:.1%}; within 15%: {a['within_15pct']}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
