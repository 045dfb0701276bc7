"""The policy interface and its registry.

A policy consumes a `RequestInfo` and a `ClusterView` (nothing else: no engine internals) and produces the id of one
endpoint of that view. It may keep its own state, updated in `choose` and through the outcome callbacks
(dispatched, first token, completed, failed), which arrive the same way in the simulator and in the gateway.

Policies are registered by a kebab-case name with `@register_policy` and built from config by `build_policy(name,
seed=..., params={...})`; each declares its parameters as a pydantic model `Params` (defaults = the peer's code
defaults; unknown or ill-typed parameters are a `UserError`). The same object runs in the simulator and live, so it
must be picklable and must not read the wall clock (time comes in as `view.now` / `now`).

Only policies that declare `sim_only = True` (the oracle) may be handed simulator internals, through
`bind_simulator`; the runner refuses to run them live.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from lodestar.cluster_view import ClusterView
from lodestar.errors import UserError
from lodestar.request import RequestInfo


class PolicyParams(BaseModel):
    """Base for policy parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Policy(ABC):
    """Picks one endpoint per request. Subclasses set `name`, `description`, and may override `Params`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    sim_only: ClassVar[bool] = False
    Params: ClassVar[type[PolicyParams]] = PolicyParams

    def __init__(self, params: PolicyParams | None = None, seed: int = 0) -> None:
        self.params = params if params is not None else self.Params()
        self.seed = seed
        self.rng = random.Random(seed)

    @abstractmethod
    def choose(self, req: RequestInfo, view: ClusterView) -> str:
        """Return the id of one endpoint in `view.endpoints` (never empty when called)."""

    # Outcome callbacks; default: ignore.
    def on_dispatch(self, req: RequestInfo, endpoint_id: str, now: float) -> None:  # noqa: B027
        pass

    def on_first_token(self, req: RequestInfo, endpoint_id: str, now: float, ttft_s: float) -> None:  # noqa: B027
        pass

    def on_complete(  # noqa: B027
        self, req: RequestInfo, endpoint_id: str, now: float, e2e_s: float, output_tokens: int
    ) -> None:
        pass

    def on_failure(self, req: RequestInfo, endpoint_id: str, now: float) -> None:  # noqa: B027
        pass

    def on_endpoint_removed(self, endpoint_id: str) -> None:  # noqa: B027
        pass

    def bind_simulator(self, simulator: Any) -> None:
        """Sim-only policies receive the simulator here; others must never see it."""
        raise TypeError(f"policy {self.name!r} is not a simulator-only policy")


_REGISTRY: dict[str, type[Policy]] = {}


def register_policy(cls: type[Policy]) -> type[Policy]:
    """Class decorator: register a policy under `cls.name` (kebab-case, unique)."""
    name = cls.name
    if not name or name != name.lower() or " " in name or "_" in name:
        raise ValueError(f"policy name must be kebab-case, got {name!r}")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"policy {name!r} registered twice")
    _REGISTRY[name] = cls
    return cls


def policy_registry() -> dict[str, type[Policy]]:
    """All registered policies by name (imports the built-in policy modules first)."""
    # importing these modules registers the built-ins and the learned policy `lodestar`
    import lodestar.learner.policy
    import lodestar.policies  # noqa: F401

    return dict(sorted(_REGISTRY.items()))


def build_policy(name: str, seed: int = 0, params: dict[str, Any] | None = None) -> Policy:
    """Build a registered policy from config; bad names or parameters raise `UserError`."""
    reg = policy_registry()
    cls = reg.get(name)
    if cls is None:
        raise UserError(f"unknown policy {name!r}; expected one of: {', '.join(reg)}")
    try:
        p = cls.Params(**(params or {}))
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise UserError(f"policy {name!r}: parameter {loc!r}: {first['msg']}") from None
    return cls(p, seed=seed)
