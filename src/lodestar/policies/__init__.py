"""Built-in routing policies; importing this package registers them all."""

from lodestar.policies import (  # noqa: F401  (registers the built-ins)
    aibrix,
    cache_aware,
    llmd,
    load,
    oracle,
    prefixaware,
    simple,
)
from lodestar.policies.base import Policy, build_policy, policy_registry, register_policy

__all__ = ["Policy", "build_policy", "policy_registry", "register_policy"]
