"""Evaluation suites as data: which scenarios, which seeds, which policies.

Consumes: a suite name (a folder `lodestar/eval/suites/<name>/` shipped with the package) or a path to a suite
folder or to its `suite.yaml`. Produces: a validated `Suite` whose scenarios are parsed `Scenario`s (via
`lodestar.sim.scenario.parse_scenario`), plus helpers that resolve the policy list against the registry and find
scenarios whose shared data is missing.

`suite.yaml` schema (unknown keys are errors):

    name: default
    description: "..."
    seeds: [0, 1, 2]
    policies: all            # or a list of registered names
    scenarios:               # scenario files in the suite folder (".yaml" optional), or built-in scenario names
      - a100x4-chat-low
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lodestar.data_paths import PREFIX, resolve_data_path
from lodestar.errors import UserError
from lodestar.sim.scenario import Scenario, builtin_scenarios, load_scenario

SUITE_FILE = "suite.yaml"
LEARNED_POLICY = "lodestar"
ORACLE_POLICY = "oracle"
REFERENCE_POLICY = "prefix-cache"


class SuiteSpec(BaseModel):
    """The contents of a `suite.yaml`."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    policies: str | list[str] = "all"
    scenarios: list[str] = Field(min_length=1)


@dataclass
class SuiteScenario:
    """One scenario of a suite: its name, the file it came from, and the parsed scenario."""

    name: str
    path: Path
    scenario: Scenario


@dataclass
class Suite:
    """A loaded suite. `policies` is None for "all registered policies"."""

    name: str
    description: str
    seeds: list[int]
    policies: list[str] | None
    scenarios: list[SuiteScenario] = field(default_factory=list)
    folder: Path = Path(".")


def suites_root() -> Path:
    """The folder holding the packaged suites."""
    return Path(str(resources.files("lodestar") / "eval" / "suites"))


def builtin_suites() -> list[str]:
    """Names of the packaged suites."""
    root = suites_root()
    return sorted(p.name for p in root.iterdir() if (p / SUITE_FILE).is_file())


def _suite_file(spec: str | Path) -> Path:
    path = Path(spec)
    if path.is_dir():
        path = path / SUITE_FILE
    if path.is_file():
        return path
    packaged = suites_root() / str(spec) / SUITE_FILE
    if packaged.is_file():
        return packaged
    raise UserError(f"unknown suite {str(spec)!r}: not a suite folder or file, and not one of {builtin_suites()}")


def _scenario_file(entry: str, folder: Path) -> Path:
    for cand in (folder / entry, folder / f"{entry}.yaml"):
        if cand.is_file():
            return cand
    builtins = builtin_scenarios()
    if entry in builtins:
        return builtins[entry]
    raise UserError(f"suite {folder / SUITE_FILE}: scenario {entry!r} is not a file in the suite folder nor built in")


def load_suite(spec: str | Path) -> Suite:
    """Load and validate a suite (see the module docstring); every mistake is a one-line `UserError`."""
    path = _suite_file(spec)
    try:
        data: Any = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"cannot read suite {path}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    try:
        spec_ = SuiteSpec(**data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        raise UserError(f"{path}: key '{loc}': {err['msg']}") from None
    if isinstance(spec_.policies, str) and spec_.policies != "all":
        raise UserError(f"{path}: key 'policies': expected 'all' or a list of policy names")
    folder = path.parent
    scenarios: list[SuiteScenario] = []
    for entry in spec_.scenarios:
        file = _scenario_file(entry, folder)
        sc = load_scenario(file)
        if any(s.name == sc.name for s in scenarios):
            raise UserError(f"{path}: scenario name {sc.name!r} appears twice")
        scenarios.append(SuiteScenario(sc.name, file, sc))
    policies = None if isinstance(spec_.policies, str) else list(spec_.policies)
    return Suite(spec_.name, spec_.description, list(spec_.seeds), policies, scenarios, folder)


def is_learning(policy_cls: type) -> bool:
    """True for a policy class that learns online (declares `learning = True`)."""
    return bool(getattr(policy_cls, "learning", False))


def resolve_policies(requested: list[str] | None, learned: str = LEARNED_POLICY) -> tuple[list[str], list[str]]:
    """(policy names to run, notes). `requested` None = every registered policy; names that are not registered are
    skipped with a note (the learned policy may not exist yet). Order: registry order (or the requested order),
    the learned policy last."""
    from lodestar.policies.base import policy_registry

    reg = policy_registry()
    notes: list[str] = []
    if requested is None:
        names = list(reg)
        if learned not in reg:
            notes.append(f"policy {learned!r} is not registered: it was skipped (no learned-policy ratios)")
    else:
        names = []
        for n in requested:
            if n in reg:
                if n not in names:
                    names.append(n)
            else:
                notes.append(f"policy {n!r} is not registered: skipped")
    names.sort(key=lambda n: n == learned)  # stable: keeps the order otherwise
    return names, notes


def missing_data(sc: Scenario) -> str | None:
    """Why the scenario cannot run here (its `shared:` trace is absent), or None if its data is available."""
    path = sc.workload.get("path")
    if not isinstance(path, str):
        return None
    try:
        resolved = resolve_data_path(path, sc.base_dir)
    except UserError:
        return f"shared data {path!r} not found (set LODESTAR_SHARED_DATA or place ../shared beside the checkout)"
    if not path.startswith(PREFIX) and not resolved.exists():
        return f"workload file {resolved} not found"
    return None
