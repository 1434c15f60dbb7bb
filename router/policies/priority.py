"""`priority`: tiers by the models' `priority` number, lowest first, lowest usage within one.

The balancer calls the strategy on every pick of a request with the targets not yet
tried, so the next number is reached only when the whole tier is unavailable or has failed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from router.policies.strategy import Ready, Strategy

if TYPE_CHECKING:
    from router.policies.route import Route


class Priority(Strategy):
    async def order(self, route: Route, ready: list[Ready]) -> list[Ready]:
        return sorted(ready, key=lambda r: r[2].model.priority)  # stable: usage order within
