"""Built-in routing policies; importing this package registers them all."""

from lodestar.policies import oracle, simple  # noqa: F401
from lodestar.policies.base import Policy, build_policy, policy_registry, register_policy

__all__ = ["Policy", "build_policy", "policy_registry", "register_policy"]
