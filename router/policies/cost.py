"""`lowest-cost`: the cheapest estimated cost of this very request first."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from router.policies.strategy import Ready, Strategy

if TYPE_CHECKING:
    from router.policies.route import Route

DEFAULT_COMPLETION = 512


def completion_budget(body: Mapping[str, Any]) -> int:
    """`max_completion_tokens`, else `max_tokens`, else 512."""
    for key in ("max_completion_tokens", "max_tokens"):
        v = body.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return DEFAULT_COMPLETION


class LowestCost(Strategy):
    async def order(self, route: Route, ready: list[Ready]) -> list[Ready]:
        prompt, completion = route.prompt_tokens, completion_budget(route.body)
        return sorted(
            ready,
            key=lambda r: prompt * r[2].model.input_cost + completion * r[2].model.output_cost,
        )
