"""The usage family: `lowest-usage` (the balancer's own score) and `round-robin`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from router.policies.strategy import Ready, Strategy

if TYPE_CHECKING:
    from router.policies.route import Route


class LowestUsage(Strategy):
    """Section 6: the balancer already sorted the ready targets by weighted usage."""


class RoundRobin(Strategy):
    """In turn, in config order; one turn per request (shared in Redis with Redis state).

    Targets that are unavailable are skipped: the next in config order takes the turn.
    """

    async def order(self, route: Route, ready: list[Ready]) -> list[Ready]:
        if route.turn is None:
            route.turn = await self.policies.state.turn(f"rr:{self.group.name}") - 1
        n, start, index = len(self.targets), route.turn, self.index
        return sorted(ready, key=lambda r: (index[r[2].id] - start) % n)
