"""In-process routing state: plain dicts, one event loop, no locks needed.

RedisState keeps one as this router's exact view of its own changes (the accessors at the
end are for it).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import replace

from router import breaker
from router.breaker import Health
from router.state import WINDOW, Clock, Taken, Usage, Window


class Entry:
    """One amount in a sliding window, at the time it was taken."""

    __slots__ = ("id", "at", "amount")

    def __init__(self, id: str, at: float, amount: float) -> None:
        self.id, self.at, self.amount = id, at, amount


class _Window:
    __slots__ = ("entries", "by_id")

    def __init__(self) -> None:
        self.entries: deque[Entry] = deque()  # oldest first
        self.by_id: dict[str, Entry] = {}


class Counter:
    __slots__ = ("total", "reserved", "window_sum", "buckets")

    def __init__(self) -> None:
        self.total = 0.0
        self.reserved = 0.0
        self.window_sum = 0.0
        self.buckets: deque[list[float]] = deque()  # [second, tokens], oldest first


class MemoryState:
    def __init__(self, usage_window: float = 0.0, clock: Clock = time.time) -> None:
        self.window = usage_window
        self.clock = clock
        self._counters: dict[str, Counter] = {}
        self._health: dict[str, Health] = {}
        self._windows: dict[str, _Window] = {}
        self._totals: dict[str, tuple[float, float]] = {}  # key -> (amount, expires at)
        self._holds: dict[str, float] = {}  # hold id -> amount
        self._held: dict[str, float] = {}  # key -> amount held on it
        self._ids = itertools.count()
        self._turns: dict[str, int] = {}
        self._emas: dict[str, float] = {}
        self._sticky: dict[str, tuple[str | None, float]] = {}  # key -> (target, expires at)
        self._sweep_at = _STICKY_SWEEP

    def _get(self, key: str) -> Counter:
        c = self._counters.get(key)
        if c is None:
            c = self._counters[key] = Counter()
        return c

    def _windowed(self, c: Counter) -> float:
        if not self.window:
            return c.total
        horizon = self.clock() - self.window
        while c.buckets and c.buckets[0][0] <= horizon:
            c.window_sum -= c.buckets.popleft()[1]
        if not c.buckets:
            c.window_sum = 0.0  # no float drift once the window is empty
        return c.window_sum

    def _load(self, key: str) -> float:
        c = self._counters.get(key)
        return 0.0 if c is None else self._windowed(c) + c.reserved

    async def loads(self, keys: Sequence[str]) -> list[float]:
        return [self._load(key) for key in keys]

    async def reserve(self, key: str, tokens: float) -> None:
        self._get(key).reserved += tokens

    async def settle(self, key: str, reserved: float, used: float) -> None:
        c = self._get(key)
        c.reserved = max(0.0, c.reserved - reserved)
        if used <= 0:
            return
        c.total += used
        if self.window:
            second = float(int(self.clock()))
            if c.buckets and c.buckets[-1][0] == second:
                c.buckets[-1][1] += used
            else:
                c.buckets.append([second, used])
            c.window_sum += used

    async def usage(self, key: str) -> Usage:
        c = self._get(key)
        return Usage(window=self._windowed(c), total=c.total, reserved=c.reserved)

    async def view(self, keys: Sequence[str]) -> tuple[list[float], list[Health]]:
        return [self._load(k) for k in keys], [self._health.get(k) or _HEALTHY for k in keys]

    async def health(self, keys: Sequence[str]) -> list[Health]:
        return [self._health.get(k) or _HEALTHY for k in keys]

    async def take_probe(self, key: str, now: float, cooldown: float) -> bool:
        ok, self._health[key] = breaker.take_probe(self._health.get(key) or _HEALTHY, now, cooldown)
        return ok

    async def uncool(self, key: str) -> None:
        h = self._health.get(key)
        if h is not None and h.cooldown_until:
            self._health[key] = replace(h, cooldown_until=0.0, rate_limited=False)

    async def free_probe(self, key: str, until: float, now: float) -> None:
        h = self._health.get(key)
        if h is not None and h.breaker == "half-open" and abs(h.until - until) < 1e-3:
            self._health[key] = replace(h, until=now)  # the next request may probe

    async def record(
        self,
        key: str,
        ok: bool,
        now: float,
        threshold: int,
        cooldown: float,
        started: float | None = None,
    ) -> Health:
        h = self._health.get(key) or _HEALTHY
        self._health[key] = h = breaker.on_result(h, ok, now, threshold, cooldown, started)
        return h

    async def cool(self, key: str, until: float, rate_limited: bool) -> None:
        self._health[key] = breaker.cool(self._health.get(key) or _HEALTHY, until, rate_limited)

    def _window(self, key: str, now: float) -> _Window:
        w = self._windows.get(key)
        if w is None:
            w = self._windows[key] = _Window()
        while w.entries and w.entries[0].at <= now - WINDOW:
            del w.by_id[w.entries.popleft().id]
        return w

    async def windows(self, keys: Sequence[str], now: float) -> list[Window]:
        out = []
        for key in keys:
            w = self._window(key, now).entries
            out.append(Window(sum(e.amount for e in w), w[0].at if w else now))
        return out

    async def take(
        self, key: str, amount: float, limit: float, now: float, entry: str | None = None
    ) -> Taken:
        w = self._window(key, now)
        if w.entries and sum(e.amount for e in w.entries) + amount > limit:
            return Taken(None, w.entries[0].at + WINDOW)
        return Taken(self._add(w, entry, amount, now))

    async def adjust(self, key: str, entry: str, amount: float) -> None:
        e = self._windows[key].by_id.get(entry) if key in self._windows else None
        if e is not None:  # else it has left the window already
            e.amount = amount

    async def hit(self, key: str, amount: float, now: float, entry: str | None = None) -> None:
        self._add(self._window(key, now), entry, amount, now)

    def _add(self, w: _Window, entry: str | None, amount: float, now: float) -> str:
        e = Entry(entry or f"m{next(self._ids)}", now, amount)
        w.entries.append(e)
        w.by_id[e.id] = e
        return e.id

    async def totals(self, keys: Sequence[str]) -> list[float]:
        now = time.time()
        return [
            a if exp > now else 0.0 for a, exp in (self._totals.get(k, (0.0, 0.0)) for k in keys)
        ]

    async def add_total(self, key: str, amount: float, ttl: float) -> None:
        now = time.time()
        current, expires = self._totals.get(key, (0.0, 0.0))
        if expires <= now:
            current, expires = 0.0, now + ttl
        self._totals[key] = (current + amount, expires)

    async def hold_total(
        self, key: str, amount: float, limit: float, hold: str | None = None
    ) -> str | None:
        [spent] = await self.totals([key])
        if spent + self._held.get(key, 0.0) >= limit:
            return None
        hold = hold or f"h{next(self._ids)}"
        self._holds[hold] = amount
        self._held[key] = self._held.get(key, 0.0) + amount
        return hold

    async def release_total(self, key: str, hold: str) -> None:
        amount = self._holds.pop(hold, 0.0)
        if key in self._held and (left := self._held[key] - amount) > 1e-12:
            self._held[key] = left
        else:
            self._held.pop(key, None)

    def held(self, hold: str) -> float | None:
        return self._holds.get(hold)

    async def recent(
        self, keys: Sequence[str], now: float, span: float
    ) -> list[tuple[float, float, float]]:
        out = []
        for key in keys:
            total = recent = 0.0
            oldest = now
            for e in self._window(key, now).entries:
                total += e.amount
                if e.at > now - span:
                    recent += e.amount
                    oldest = min(oldest, e.at)
            out.append((total, recent, oldest))
        return out

    # -- routing signals --------------------------------------------------------------

    async def turn(self, key: str) -> int:
        n = self._turns[key] = self._turns.get(key, 0) + 1
        return n

    async def latencies(self, keys: Sequence[str]) -> list[float | None]:
        return [self._emas.get(k) for k in keys]

    async def sample(self, key: str, value: float, alpha: float) -> None:
        ema = self._emas.get(key)
        self._emas[key] = value if ema is None else ema + alpha * (value - ema)

    async def sticky(self, key: str) -> str | None:
        value, expires = self._sticky.get(key, (None, 0.0))
        if expires <= self.clock():
            self._sticky.pop(key, None)
            return None
        return value

    async def stick(self, key: str, value: str, ttl: float) -> None:
        self._sticky[key] = (value, self.clock() + ttl)
        if len(self._sticky) > self._sweep_at:  # drop expired sessions now and then
            now = self.clock()
            self._sticky = {k: v for k, v in self._sticky.items() if v[1] > now}
            self._sweep_at = max(_STICKY_SWEEP, 2 * len(self._sticky))

    async def start(self) -> None:
        pass

    @property
    def degraded(self) -> bool:
        return False

    async def close(self) -> None:
        self._counters.clear()
        self._health.clear()
        self._windows.clear()
        self._totals.clear()
        self._holds.clear()
        self._held.clear()

    # -- this router's own changes, for RedisState to write to Redis -----------------------

    def counter(self, key: str) -> Counter:
        c = self._get(key)
        self._windowed(c)  # drop buckets that left the usage window
        return c

    def counter_keys(self) -> list[str]:
        return list(self._counters)

    def entry(self, key: str, entry: str) -> Entry | None:
        w = self._windows.get(key)
        return None if w is None else w.by_id.get(entry)

    def entries(self) -> Iterator[tuple[str, Entry]]:
        for key, w in list(self._windows.items()):
            for e in list(w.entries):
                yield key, e

    def total(self, key: str) -> tuple[float, float]:
        """A period total and when it expires."""
        return self._totals.get(key, (0.0, 0.0))

    def total_keys(self) -> list[str]:
        return list(self._totals)


_HEALTHY = Health()
_STICKY_SWEEP = 10_000
