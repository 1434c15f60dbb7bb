"""The in-process cache backend: an LRU of entries, each expiring `ttl` seconds after storing."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from router.cache import Entry


class MemoryCache:
    remote = False

    def __init__(
        self, max_entries: int, ttl: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self.clock = clock
        self._items: OrderedDict[str, tuple[Entry, float]] = OrderedDict()

    async def get(self, key: str, budget: float) -> Entry | None:
        return self.get_now(key)

    async def put(self, key: str, entry: Entry, shared: bytes | None = None) -> None:
        self.put_now(key, entry)

    def get_now(self, key: str) -> Entry | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[1] <= self.clock():  # hits do not extend the TTL: it counts from storing
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return item[0]

    def put_now(self, key: str, entry: Entry) -> None:
        self._items[key] = (entry, self.clock() + self.ttl)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    async def size(self) -> int:
        now = self.clock()
        return sum(1 for _, expires in self._items.values() if expires > now)

    async def start(self, on_vector: Callable[[bytes, float], None] | None) -> None:
        pass

    async def close(self) -> None:
        pass
