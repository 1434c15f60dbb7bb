"""What a built-in strategy is: an object per group that orders the ready targets of a pick."""

from __future__ import annotations

from typing import TYPE_CHECKING

from router.balancer import Target
from router.breaker import Health
from router.config import Group
from router.policies.base import RouteEvent

if TYPE_CHECKING:
    from router.policies.route import Policies, Route

# (score, position, target, health), as the balancer has them: lowest score first.
Ready = tuple[float, int, Target, Health]


class Strategy:
    """Built-in strategies subclass this; `order` may only reorder or drop entries."""

    timed = False  # reads the latency EMAs, so every attempt's time to headers is sampled
    observes = False  # wants a RouteEvent per request

    def __init__(self, group: Group, targets: tuple[Target, ...], policies: Policies) -> None:
        self.group = group
        self.targets = targets
        self.policies = policies
        self.index = {t.id: i for i, t in enumerate(targets)}  # config order

    async def order(self, route: Route, ready: list[Ready]) -> list[Ready]:
        return ready

    def picked(self, target: Target, now: float) -> None:
        """Told after each pick (lowest-latency remembers when it last used a target)."""

    def observe(self, event: RouteEvent) -> None:
        """Told once per request that reached routing, when it is answered."""
