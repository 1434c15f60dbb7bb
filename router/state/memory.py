"""In-process routing state: plain dicts, one event loop, no locks needed."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

from router.state import Clock, Usage


class _Counter:
    __slots__ = ("total", "reserved", "window_sum", "buckets")

    def __init__(self) -> None:
        self.total = 0.0
        self.reserved = 0.0
        self.window_sum = 0.0
        self.buckets: deque[list[float]] = deque()  # [second, tokens], oldest first


class MemoryState:
    def __init__(self, usage_window: float = 0.0, clock: Clock = time.monotonic) -> None:
        self.window = usage_window
        self.clock = clock
        self._counters: dict[str, _Counter] = {}

    def _get(self, key: str) -> _Counter:
        c = self._counters.get(key)
        if c is None:
            c = self._counters[key] = _Counter()
        return c

    def _windowed(self, c: _Counter) -> float:
        if not self.window:
            return c.total
        horizon = self.clock() - self.window
        while c.buckets and c.buckets[0][0] <= horizon:
            c.window_sum -= c.buckets.popleft()[1]
        if not c.buckets:
            c.window_sum = 0.0  # no float drift once the window is empty
        return c.window_sum

    async def loads(self, keys: Sequence[str]) -> list[float]:
        out = []
        for key in keys:
            c = self._counters.get(key)
            out.append(0.0 if c is None else self._windowed(c) + c.reserved)
        return out

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

    async def close(self) -> None:
        self._counters.clear()
