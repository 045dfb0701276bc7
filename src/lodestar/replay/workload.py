"""What `lodestar replay` replays.

Consumes: `--workload W`: a scenario YAML or built-in scenario name (its `workload:` is used, with the scenario's
cluster for `load:` and for the ideal-TTFT bound), a workload YAML (a file whose top level is the `workload:`
mapping, or has a `workload:` key and no `cluster:`), the word `synthetic`, or nothing (the default below).
Produces: the requests (lodestar.workload), a name for the result JSON, the seed, and a `Scenario` for
`sim.results.ideal_ttft`. A bare workload is given a scenario of one instance of `assume_gpu`/`assume_model`
(`--assume-gpu`, `--assume-model`): its `load:` is a fraction of that instance's capacity, and the ideal-TTFT bound
is computed for it.

Default workload: the synthetic multi-turn chat generator at 2 requests/s for 60 s (`DEFAULT_WORKLOAD`), sized
for one emulated engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lodestar.errors import UserError
from lodestar.request import Request
from lodestar.sim.api import scenario_requests
from lodestar.sim.scenario import Scenario, builtin_scenarios, load_scenario, parse_scenario

DEFAULT_WORKLOAD: dict[str, Any] = {"kind": "synthetic", "duration_s": 60, "synthetic": {"rate_rps": 2.0}}


def _bare_scenario(name: str, workload: dict[str, Any], base_dir: Path, gpu: str, model: str, seed: int) -> Scenario:
    data = {"name": name, "seed": seed, "cluster": {"instances": [{"gpu": gpu, "model": model}]}, "workload": workload}
    return parse_scenario(data, f"workload {name}", base_dir)


def load_replay_workload(
    spec: str | None,
    seed: int | None = None,
    duration_s: float | None = None,
    assume_gpu: str = "a100-80g",
    assume_model: str = "llama-3-8b",
) -> tuple[list[Request], Scenario, int]:
    """(requests, scenario, seed) for `--workload spec` (see the module docstring)."""
    if spec is None or spec == "synthetic":
        sc = _bare_scenario("synthetic", dict(DEFAULT_WORKLOAD), Path("."), assume_gpu, assume_model, seed or 0)
    else:
        path = Path(spec)
        if not path.exists() and spec in builtin_scenarios():
            sc = load_scenario(spec)
        elif not path.exists():
            raise UserError(f"workload not found: {spec!r} is not a file, a built-in scenario "
                            f"({', '.join(builtin_scenarios())}) or 'synthetic'")  # fmt: skip
        else:
            try:
                data = yaml.safe_load(path.read_text())
            except (OSError, yaml.YAMLError) as e:
                raise UserError(f"cannot read workload {path}: {e}") from None
            if not isinstance(data, dict):
                raise UserError(f"{path}: expected a mapping at the top level")
            if "cluster" in data:
                sc = load_scenario(path)
            else:
                wl = data.get("workload", data)
                if not isinstance(wl, dict):
                    raise UserError(f"{path}: key 'workload': expected a mapping")
                sc = _bare_scenario(path.stem, wl, path.resolve().parent, assume_gpu, assume_model, seed or 0)
    seed = sc.seed if seed is None else seed
    reqs = scenario_requests(sc, seed, duration_s)
    if not reqs:
        raise UserError(f"workload {sc.name!r}: no requests (check duration)")
    return reqs, sc, seed
