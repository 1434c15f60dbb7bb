"""Per-client limits on named client keys: rpm and tpm (sliding 60 s) and a budget per period.

A request's estimate is held on the client's tpm and budget from admission to its end, so
concurrent requests cannot all pass a check that only counts finished ones.
"""

from __future__ import annotations

import calendar
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from router.config import ClientKey
from router.errors import RateLimited
from router.state import Clock, StateBackend

if TYPE_CHECKING:
    from router.balancer import Target


def period(kind: str, wall: float) -> tuple[str, float]:
    """The budget period's id and the seconds left in it (UTC days and months)."""
    t = time.gmtime(wall)
    if kind == "day":
        start = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0))
        return time.strftime("%Y-%m-%d", t), start + 86400 - wall
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    end = calendar.timegm((year, month, 1, 0, 0, 0))
    return time.strftime("%Y-%m", t), end - wall


@dataclass
class Hold:
    """What admit() holds for one request until it ends (then release() it): its estimated
    tokens in the client's tpm window and its estimated cost on the client's budget."""

    state: StateBackend
    client: str
    tpm: str | None = None  # the window entry
    budget: tuple[str, str] | None = None  # the budget's period total, and the hold on it

    async def release(self) -> None:
        if self.tpm is not None:
            await self.state.adjust(f"client-tpm:{self.client}", self.tpm, 0)
            self.tpm = None
        if self.budget is not None:
            await self.state.release_total(*self.budget)
            self.budget = None


class ClientLimits:
    def __init__(
        self,
        keys: tuple[ClientKey, ...],
        state: StateBackend,
        clock: Clock = time.time,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.keys = {k.name: k for k in keys if k.rpm or k.tpm or k.budget_usd is not None}
        self.state = state
        self.clock = clock
        self.wall = wall

    def budget_key(self, key: ClientKey) -> tuple[str, float]:
        pid, left = period(key.budget_period, self.wall())
        return f"budget:{key.name}:{pid}", left

    async def admit(self, name: str, reserve: float, targets: Iterable[Target] = ()) -> Hold | None:
        """Raise RateLimited when this client is over a limit; else count the request and
        hold its estimate (`reserve` tokens, at the dearest of `targets`' prices) on its tpm
        window and budget until it ends, so concurrent requests on any router see it."""
        key = self.keys.get(name)
        if key is None:
            return None
        now = self.clock()
        hold = Hold(self.state, name)
        try:
            if key.tpm:
                # Refused once the window is over the limit: the +reserve makes take() ask
                # only that, while it holds the estimate in the window atomically.
                taken = await self.state.take(f"client-tpm:{name}", reserve, key.tpm + reserve, now)
                if taken.entry is None:
                    raise _limited(
                        f"Rate limit reached for client {name!r}: {key.tpm} tokens per minute.",
                        taken.until - now,
                    )
                hold.tpm = taken.entry
            if key.budget_usd is not None:
                bkey, left = self.budget_key(key)
                price = max(
                    (max(t.model.input_cost, t.model.output_cost) for t in targets), default=0
                )
                held = await self.state.hold_total(bkey, reserve * price / 1e6, key.budget_usd)
                if held is None:
                    err = _limited(
                        f"Client {name!r} has used its budget of ${key.budget_usd:g} for this "
                        f"{key.budget_period}.",
                        left,
                    )
                    err.type = err.code = "insufficient_quota"
                    raise err
                hold.budget = (bkey, held)
            if key.rpm:  # last, and atomic: a refused request does not use up the minute
                taken = await self.state.take(f"client-rpm:{name}", 1, key.rpm, now)
                if taken.entry is None:
                    raise _limited(
                        f"Rate limit reached for client {name!r}: {key.rpm} requests per minute.",
                        taken.until - now,
                    )
        except RateLimited:
            await hold.release()
            raise
        return hold

    async def account(self, name: str, tokens: float, cost: float) -> None:
        key = self.keys.get(name)
        if key is None:
            return
        if key.tpm and tokens:
            await self.state.hit(f"client-tpm:{name}", tokens, self.clock())
        if key.budget_usd is not None and cost:
            bkey, left = self.budget_key(key)
            await self.state.add_total(bkey, cost, left + 3600)


def _limited(message: str, retry_after: float) -> RateLimited:
    seconds = max(1, math.ceil(retry_after))
    return RateLimited(message, headers={"Retry-After": str(seconds)})
