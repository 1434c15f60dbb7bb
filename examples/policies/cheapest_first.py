"""An example routing policy for llm-router: the cheapest target for each request first,
keeping away from targets that have been failing.

Use it with `strategy: "examples.policies.cheapest_first:CheapestFirst"` on a group (the
module must be importable by the router: run it from the repository's root, or put the
file on PYTHONPATH). The router makes one CheapestFirst when it loads its config.
"""

from __future__ import annotations

from collections.abc import Sequence

from router.policy import Candidate, RouteEvent, RouteRequest


class CheapestFirst:
    """Orders by the estimated cost of this request; a target whose last calls failed
    more than half the time (or whose circuit is not closed) goes last."""

    def __init__(self) -> None:
        self.served: dict[str, int] = {}  # requests served per "provider/model"
        self.failed = 0  # requests that got no reply

    def order(self, request: RouteRequest, candidates: Sequence[Candidate]) -> list[Candidate]:
        completion = request.body.get("max_completion_tokens") or request.body.get(
            "max_tokens", 512
        )

        def cost(c: Candidate) -> float:
            return request.prompt_tokens * c.input_cost + completion * c.output_cost

        def healthy(c: Candidate) -> bool:
            return c.breaker == "closed" and c.error_rate <= 0.5

        ranked = sorted(candidates, key=cost)  # stable: lowest usage among equal prices
        return [c for c in ranked if healthy(c)] + [c for c in ranked if not healthy(c)]

    def observe(self, event: RouteEvent) -> None:
        if event.provider is None:
            self.failed += 1
            return
        name = f"{event.provider}/{event.model}"
        self.served[name] = self.served.get(name, 0) + 1
