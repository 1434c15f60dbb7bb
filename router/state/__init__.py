"""Routing state behind one small async interface, so memory and Redis are interchangeable.

Keys: target ids (`provider/key-label/model`) for usage and health; free-form names for
sliding 60 s windows (rpm/tpm per provider key and per client) and period totals (budgets).
Writes that need no answer return before a shared backend has them; its reads still count
every change this router made, exactly once. view(), which every pick calls, may answer
from a view of the other routers kept in the background (Redis: at most `state.refresh`
seconds and a few round trips old); every other read sees what the backend has now.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from router.breaker import Health
from router.config import State as StateConfig

# Wall-clock seconds: several routers sharing state must agree on what "now" is.
Clock = Callable[[], float]
WINDOW = 60.0  # seconds of the rpm/tpm windows


@dataclass(frozen=True)
class Usage:
    window: float  # tokens within usage_window (everything since start when it is 0)
    total: float  # tokens since start
    reserved: float  # tokens held by in-flight requests


@dataclass(frozen=True)
class Window:
    total: float  # sum of amounts within the last WINDOW seconds (a count, for rpm)
    oldest: float  # when the oldest of them was added (it leaves the window at +WINDOW)


class Taken(NamedTuple):
    entry: str | None  # the window entry added, for adjust(); None: refused
    until: float = 0.0  # refused: when the window's oldest entry leaves it


class StateBackend(Protocol):
    # balancing
    async def loads(self, keys: Sequence[str]) -> list[float]:
        """Windowed usage plus in-flight reservations, one number per key, in order."""

    async def view(self, keys: Sequence[str]) -> tuple[list[float], list[Health]]:
        """loads() and health() together, all a pick needs to read: this router's own
        changes exact and at once, the other routers' as of the last background refresh."""

    async def reserve(self, key: str, tokens: float) -> None: ...

    async def settle(self, key: str, reserved: float, used: float) -> None:
        """Release a reservation and count what was really used (penalties: reserved=0)."""

    async def usage(self, key: str) -> Usage: ...

    # health: breaker and cooldowns (router.breaker's state machine, applied atomically)
    async def health(self, keys: Sequence[str]) -> list[Health]: ...

    async def take_probe(self, key: str, now: float, cooldown: float) -> bool: ...

    async def uncool(self, key: str) -> None:
        """End a target's cooldown (its key's secret was replaced: the old one's 401 or
        429 says nothing about the new one)."""

    async def free_probe(self, key: str, until: float, now: float) -> None:
        """Give back a half-open probe slot taken for a request that was never sent or
        ended with no verdict; `until` is what the take set, so only our own slot is freed."""

    async def record(
        self,
        key: str,
        ok: bool,
        now: float,
        threshold: int,
        cooldown: float,
        started: float | None = None,
    ) -> Health:
        """Apply a call's result; ignored if the call (picked at `started`, None: now)
        started before the breaker last opened (router.breaker.on_result)."""

    async def cool(self, key: str, until: float, rate_limited: bool) -> None: ...

    # limits: sliding windows and period totals
    async def windows(self, keys: Sequence[str], now: float) -> list[Window]: ...

    async def take(self, key: str, amount: float, limit: float, now: float) -> Taken:
        """Add an entry of `amount` at `now` to a window unless that would pass `limit` (an
        empty window always takes it)."""

    async def adjust(self, key: str, entry: str, amount: float) -> None:
        """Set a taken entry's amount in place (0 gives it back); it keeps its time, so it
        leaves the window when the original would have."""

    async def hit(self, key: str, amount: float, now: float) -> None:
        """Add an entry to a window unconditionally."""

    async def totals(self, keys: Sequence[str]) -> list[float]:
        """Period totals (budget spend), not counting holds."""

    async def add_total(self, key: str, amount: float, ttl: float) -> None: ...

    async def hold_total(self, key: str, amount: float, limit: float) -> str | None:
        """Hold `amount` on a period total until release_total(), unless the total with every
        hold on it is at `limit` already. The hold's id; None when refused."""

    async def release_total(self, key: str, hold: str) -> None: ...

    async def recent(
        self, keys: Sequence[str], now: float, span: float
    ) -> list[tuple[float, float, float]]:
        """Per window: its total, the part added in the last `span` seconds, and when the
        oldest of that part was added (`now` when none) -- the rate of use, for prediction."""

    # routing signals [policies]
    async def turn(self, key: str) -> int:
        """Advance a counter (round-robin turns) and return its new value, from 1."""

    async def latencies(self, keys: Sequence[str]) -> list[float | None]:
        """The EMAs kept by sample(), None where there is no sample yet."""

    async def sample(self, key: str, value: float, alpha: float) -> None: ...

    async def sticky(self, key: str) -> str | None:
        """A session's target id, while its affinity lasts."""

    async def stick(self, key: str, value: str, ttl: float) -> None: ...

    async def start(self) -> None:
        """Begin background work (a Redis backend watches its connection)."""

    @property
    def degraded(self) -> bool:
        """True while a shared backend is unreachable and local state stands in."""

    async def close(self) -> None: ...


def open_state(
    cfg: StateConfig, usage_window: float, clock: Clock = time.time, hold: float = 660.0
) -> StateBackend:
    """The backend named by the config; `hold` bounds how long a reservation may live."""
    if cfg.backend == "redis":
        from router.state.redis import RedisState  # redis is imported only when used

        return RedisState(cfg, usage_window, clock, hold)
    from router.state.memory import MemoryState

    return MemoryState(usage_window, clock)
