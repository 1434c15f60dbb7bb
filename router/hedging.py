"""Hedged attempts: when the first target has sent no response headers after
`hedge_after`, the next one is called too; the first reply in hand claims the client.

The race owns every attempt's reservation: an attempt cancelled before its first step
(its finally never runs) is released here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web

from router.balancer import Balancer, Target

Attempting = Coroutine[Any, Any, web.StreamResponse | None]


class Race:
    """The attempts of one hedged request. The first to have its reply in hand claims the
    client, once; `progress` resolves when the first attempt has response headers."""

    def __init__(self) -> None:
        self.progress: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.tasks: list[asyncio.Task[web.StreamResponse | None]] = []
        self.entered: list[bool] = []  # an attempt cancelled before its first step owns nothing
        self.winner: int | None = None

    def headers(self) -> None:
        if not self.progress.done():
            self.progress.set_result(None)

    def claim(self, me: int) -> bool:
        if self.winner is not None:
            return self.winner == me
        self.winner = me
        for i, other in enumerate(self.tasks):
            if i != me:
                other.cancel()
        return True


async def race(
    balancer: Balancer,
    reserve: float,
    first: tuple[Target, float],  # the picked target, and when it was picked
    second: Callable[[], Awaitable[tuple[Target | None, float]]],
    attempt: Callable[[Target, float, Race, int], Attempting],
    hedge_after: float,
) -> web.StreamResponse | None:
    """Call `first`; if it has no response headers after `hedge_after`, pick and call a
    second target too. The loser is cancelled, which releases its reservation without a
    verdict on its health. None when every attempt failed."""
    run = Race()
    targets: list[Target] = []

    def start(target: Target, picked: float) -> None:
        me = len(run.tasks)
        run.entered.append(False)
        targets.append(target)
        run.tasks.append(asyncio.create_task(attempt(target, picked, run, me),
                                             name=f"attempt-{target.id}"))  # fmt: skip

    start(*first)
    try:
        first_moves: set[asyncio.Future[Any]] = {run.tasks[0], run.progress}
        moved, _ = await asyncio.wait(
            first_moves, timeout=hedge_after, return_when=asyncio.FIRST_COMPLETED
        )
        if not moved:
            target, picked = await second()
            if target is not None:
                start(target, picked)
        pending = set(run.tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and (response := task.result()) is not None:
                    return response
        return None
    finally:
        run.progress.cancel()
        for task in run.tasks:
            task.cancel()
        await asyncio.gather(*run.tasks, return_exceptions=True)
        for target, entered in zip(targets, run.entered, strict=True):
            if not entered:  # cancelled before it ran: its finally never will
                await balancer.release(target, reserve)
