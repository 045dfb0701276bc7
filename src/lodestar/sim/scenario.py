"""Scenario files (DESIGN.md 4.3): parsing, validation, built-ins.

Consumes: a path to a YAML file or the name of a built-in scenario (`lodestar/scenarios/*.yaml`). Produces: a
validated `Scenario` with the folder that relative paths resolve against. Every user mistake (missing file, YAML
syntax, unknown key, wrong type, unknown GPU/model) is a one-line `UserError` naming the file and the key or line.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lodestar.engine.engine import EngineConfig
from lodestar.engine.hardware import get_gpu, get_model
from lodestar.errors import UserError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EngineSettings(_Strict):
    max_num_batched_tokens: int | None = Field(None, gt=0)
    max_num_seqs: int | None = Field(None, gt=0)
    block_size: int | None = Field(None, gt=0)
    enable_prefix_caching: bool | None = None
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    max_model_len: int | None = Field(None, gt=0)

    def merged_over(self, base: EngineSettings) -> EngineConfig:
        vals = {k: v for k, v in base.model_dump().items() if v is not None}
        vals.update({k: v for k, v in self.model_dump().items() if v is not None})
        return EngineConfig(**vals)


class InstanceGroup(_Strict):
    gpu: str
    model: str = "llama-3-8b"
    count: int = Field(1, ge=1)
    tp: int = 1
    engine: EngineSettings = Field(default_factory=EngineSettings)

    @model_validator(mode="after")
    def _known_names(self) -> InstanceGroup:
        try:
            get_gpu(self.gpu)
            get_model(self.model)
        except UserError as e:
            raise ValueError(str(e)) from None
        if self.tp not in (1, 2, 4, 8):
            raise ValueError(f"tp must be 1, 2, 4 or 8, got {self.tp}")
        return self


class ClusterSpec(_Strict):
    engine: EngineSettings = Field(default_factory=EngineSettings)
    instances: list[InstanceGroup] = Field(min_length=1)


class RouterSpec(_Strict):
    scrape_interval_s: float = Field(0.05, gt=0)
    scrape_delay_s: float = Field(0.0, ge=0)
    expose_labels: bool = True  # does discovery tell the router each endpoint's GPU/model?


class ScenarioEvent(_Strict):
    at_s: float = Field(ge=0)
    instance: int | None = Field(None, ge=0)
    slowdown: float | None = Field(None, gt=0)
    fail: bool | None = None
    add: InstanceGroup | None = None

    @model_validator(mode="after")
    def _one_action(self) -> ScenarioEvent:
        actions = [self.slowdown is not None, bool(self.fail), self.add is not None]
        if sum(actions) != 1:
            raise ValueError("an event needs exactly one of: slowdown, fail, add")
        if (self.slowdown is not None or self.fail) and self.instance is None:
            raise ValueError("slowdown and fail events need 'instance'")
        return self


class Scenario(_Strict):
    name: str
    description: str = ""
    seed: int = 0
    cluster: ClusterSpec
    workload: dict[str, Any] = Field(default_factory=lambda: {"kind": "synthetic"})
    router: RouterSpec = Field(default_factory=RouterSpec)
    events: list[ScenarioEvent] = Field(default_factory=list)
    base_dir: Path = Path(".")  # where relative paths resolve (the YAML's folder); not read from YAML

    @property
    def num_initial_instances(self) -> int:
        return sum(g.count for g in self.cluster.instances)


def builtin_scenarios() -> dict[str, Path]:
    """Built-in scenario name -> file."""
    root = resources.files("lodestar") / "scenarios"
    out: dict[str, Path] = {}
    for entry in root.iterdir():
        if entry.name.endswith(".yaml"):
            out[entry.name[:-5]] = Path(str(entry))
    return dict(sorted(out.items()))


def _format_validation(e: ValidationError, src: str) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{src}: key '{loc}': {msg}"


def parse_scenario(data: Any, src: str, base_dir: Path) -> Scenario:
    if not isinstance(data, dict):
        raise UserError(f"{src}: expected a mapping at the top level, got {type(data).__name__}")
    if "base_dir" in data:
        raise UserError(f"{src}: key 'base_dir' is reserved")
    try:
        sc = Scenario(**data)
    except ValidationError as e:
        raise UserError(_format_validation(e, src)) from None
    except UserError as e:
        raise UserError(f"{src}: {e}") from None
    sc.base_dir = base_dir
    _check_events(sc, src)
    return sc


def _check_events(sc: Scenario, src: str) -> None:
    n = sc.num_initial_instances
    for i, ev in enumerate(sorted(sc.events, key=lambda e: e.at_s)):
        if ev.instance is not None and ev.instance >= n:
            raise UserError(f"{src}: key 'events.{i}.instance': no instance {ev.instance} (cluster starts with {n})")
        if ev.add is not None:
            n += ev.add.count


def load_scenario(spec: str | Path) -> Scenario:
    """A scenario from a YAML path or a built-in name."""
    path = Path(spec)
    if not path.exists():
        builtins = builtin_scenarios()
        if str(spec) in builtins:
            path = builtins[str(spec)]
        elif str(spec).endswith((".yaml", ".yml")):
            raise UserError(f"scenario file not found: {spec}")
        else:
            raise UserError(f"unknown scenario {spec!r}: not a file, and not a built-in ({', '.join(builtins)})")
    try:
        text = path.read_text()
    except OSError as e:
        raise UserError(f"cannot read scenario {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise UserError(f"{path}:{where}: {problem}") from None
    return parse_scenario(data, str(path), path.resolve().parent)
