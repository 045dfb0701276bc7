"""Simulator speed and memory benchmark (issue: evaluation core).

Runs each case in a fresh subprocess (so peak RSS is the case's own) and prints simulated requests per wall
second, events per wall second, wall time and peak RSS. Usage:

    python bench/sim_speed.py                  # all cases
    python bench/sim_speed.py azure-conv       # one case

Cases (traces from ../shared/data):
- azure-conv: 8 x A100-80G, Azure 2023 conversation trace at 80% of estimated capacity (target >= 5,000 req/s).
- mooncake-conv: 16 x A100-80G, one hour of the Mooncake conversation trace (targets >= 1,000 req/s, < 2 GB).
- synthetic-chat: the embedded default scenario.
"""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import time

CASES = {
    "azure-conv": ("azure-conv", "least-request"),
    "mooncake-conv": ("mooncake-conv", "least-request"),
    "synthetic-chat": ("synthetic-chat", "least-request"),
}


def run_case(scenario: str, policy: str) -> dict:
    from lodestar.sim.api import run_one, scenario_requests
    from lodestar.sim.scenario import load_scenario

    sc = load_scenario(scenario)
    t0 = time.perf_counter()
    reqs = scenario_requests(sc, sc.seed)
    load_s = time.perf_counter() - t0
    summary, _ = run_one(sc, policy, requests=reqs)
    return {
        "scenario": scenario,
        "policy": policy,
        "requests": summary["requests"]["total"],
        "sim_duration_s": round(summary["sim_duration_s"], 1),
        "load_s": round(load_s, 2),
        "wall_s": round(summary["wall_s"], 2),
        "req_per_wall_s": round(summary["requests_per_wall_s"]),
        "events_per_wall_s": round(summary["events_per_wall_s"]),
        "ttft_mean_s": round(summary["ttft_s"]["mean"], 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(run_case(*CASES[sys.argv[2]])))
        return
    names = sys.argv[1:] or list(CASES)
    print(f"machine: {platform.machine()}, {platform.processor() or '?'}, python {platform.python_version()}")
    print(f"{'case':<16}{'requests':>9}{'sim s':>9}{'wall s':>8}{'req/s':>9}{'events/s':>10}{'RSS MB':>8}")
    for name in names:
        p = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True)
        if p.returncode != 0:
            print(f"{name}: failed\n{p.stderr}")
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        print(f"{name:<16}{r['requests']:>9}{r['sim_duration_s']:>9}{r['wall_s']:>8}{r['req_per_wall_s']:>9}"
              f"{r['events_per_wall_s']:>10}{r['peak_rss_mb']:>8}")  # fmt: skip


if __name__ == "__main__":
    main()
