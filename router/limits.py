"""Per-client limits on named client keys: rpm and tpm (sliding 60 s) and a budget per period."""

from __future__ import annotations

import calendar
import math
import time
from collections.abc import Callable

from router.config import ClientKey
from router.errors import RateLimited
from router.state import WINDOW, Clock, StateBackend


def period(kind: str, wall: float) -> tuple[str, float]:
    """The budget period's id and the seconds left in it (UTC days and months)."""
    t = time.gmtime(wall)
    if kind == "day":
        start = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0))
        return time.strftime("%Y-%m-%d", t), start + 86400 - wall
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    end = calendar.timegm((year, month, 1, 0, 0, 0))
    return time.strftime("%Y-%m", t), end - wall


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

    async def admit(self, name: str, reserve: float) -> None:
        """Raise RateLimited when this client is over a limit; else count the request."""
        key = self.keys.get(name)
        if key is None:
            return
        now = self.clock()
        if key.tpm:
            [tpm] = await self.state.windows([f"client-tpm:{name}"], now)
            if tpm.total >= key.tpm:
                raise _limited(
                    f"Rate limit reached for client {name!r}: {key.tpm} tokens per minute.",
                    tpm.oldest + WINDOW - now,
                )
        if key.budget_usd is not None:
            bkey, left = self.budget_key(key)
            [spent] = await self.state.totals([bkey])
            if spent >= key.budget_usd:
                err = _limited(
                    f"Client {name!r} has used its budget of ${key.budget_usd:g} for this "
                    f"{key.budget_period}.",
                    left,
                )
                err.type = err.code = "insufficient_quota"
                raise err
        if key.rpm:  # last, and atomic: a refused request does not use up the minute
            taken = await self.state.take(f"client-rpm:{name}", 1, key.rpm, now)
            if taken.entry is None:
                raise _limited(
                    f"Rate limit reached for client {name!r}: {key.rpm} requests per minute.",
                    taken.until - now,
                )

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
