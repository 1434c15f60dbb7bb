"""A user policy (`strategy: "package.module:attr"`) behind the built-in strategy interface.

`order` is asked once per request, with the ready targets as Candidates in lowest-usage
order; later picks of the request (failover) follow its answer. When it raises or answers
nothing usable the request is routed by lowest usage and the policy's trouble is logged,
at most once a minute.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from typing import TYPE_CHECKING, Any

from router.balancer import Target
from router.config import Group
from router.policies.base import RouteEvent
from router.policies.strategy import Ready, Strategy

if TYPE_CHECKING:
    from router.policies.route import Policies, Route

log = logging.getLogger("router.policies")
QUIET = 60.0  # seconds between two complaints about the same policy


class UserPolicy(Strategy):
    timed = True  # candidates carry latency_ms

    def __init__(
        self, group: Group, targets: tuple[Target, ...], policies: Policies, policy: Any
    ) -> None:
        super().__init__(group, targets, policies)
        self.policy = policy
        self.name = group.strategy
        observe = getattr(policy, "observe", None)
        self.observer = observe if callable(observe) else None
        self.observes = self.observer is not None
        self.tasks: set[asyncio.Task[Any]] = set()  # async observe calls in progress
        self._complained = -math.inf

    async def order(self, route: Route, ready: list[Ready]) -> list[Ready]:
        if route.user_order is None:
            route.user_order = await self._ask(route, ready)
        if not route.user_order:  # the policy failed this request: lowest usage
            return ready
        by_id = {r[2].id: r for r in ready}
        return [by_id[tid] for tid in route.user_order if tid in by_id]

    async def _ask(self, route: Route, ready: list[Ready]) -> tuple[str, ...]:
        candidates = await route.candidates(ready)
        ours = {id(c): r[2].id for c, r in zip(candidates, ready, strict=True)}
        try:
            answer = self.policy.order(route.request(), candidates)
            if inspect.isawaitable(answer):
                answer = await answer
            chosen: dict[str, None] = {}
            for c in answer:
                if id(c) not in ours:
                    raise TypeError(f"returned {type(c).__name__} {c!r}, not one of its candidates")
                chosen[ours[id(c)]] = None
            if not chosen:
                raise ValueError("returned no candidates")
        except Exception as exc:  # the user's code: any failure means lowest usage
            self._complain("order", exc)
            return ()
        return tuple(chosen)

    def observe(self, event: RouteEvent) -> None:
        assert self.observer is not None
        try:
            result = self.observer(event)
        except Exception as exc:
            self._complain("observe", exc)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self.tasks.add(task)
            task.add_done_callback(self._observed)

    def _observed(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._complain("observe", task.exception())

    def _complain(self, method: str, exc: BaseException | None) -> None:
        now = self.policies.clock()
        if now - self._complained < QUIET:
            return
        self._complained = now
        action = "routing by lowest usage" if method == "order" else "ignored"
        log.warning("policy %s: %s failed (%s: %s); %s (logged at most once a minute)",
                    self.name, method, type(exc).__name__, exc, action)  # fmt: skip
