"""The user policy interface, as the README documents it: `from router.policy import ...`."""

from router.policies.base import Candidate, Policy, RouteEvent, RouteRequest

__all__ = ["Candidate", "Policy", "RouteEvent", "RouteRequest"]
