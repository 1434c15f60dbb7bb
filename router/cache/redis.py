"""The Redis cache backend, shared by every router on that Redis.

Keys under `<prefix>:cache:`: one per entry (its value zlib-compressed, its TTL the cache's),
`entries` (a sorted set of keys by expiry, for counting them) and `vectors` (semantic
vectors by the time they were stored, which every router polls into its own index).
Redis trouble is a miss, never an error: reads get what is left of the request's 250 ms,
and after a failure the cache stays away from Redis for a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from router.cache import Entry, decode, encode

log = logging.getLogger("router.cache")

CALL_TIMEOUT = 0.25
WRITE_TIMEOUT = 2.0  # writes run after the reply is sent: no client waits on them
AWAY = 1.0  # seconds the cache leaves Redis alone after a failure
POLL = 0.4  # seconds between reads of other routers' new vectors
_OVERLAP = 2000  # ms: re-read that much before the last poll, for writes that landed late


class RedisCache:
    remote = True

    def __init__(
        self, url: str, prefix: str, ttl: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.client = aioredis.Redis.from_url(
            url,
            socket_timeout=CALL_TIMEOUT,
            socket_connect_timeout=CALL_TIMEOUT,
            retry=Retry(NoBackoff(), 0),  # no hidden retries: a miss instead
        )
        self.prefix = f"{prefix}:cache:"
        self.ttl = ttl
        self.clock = clock
        self._away_until = 0.0  # time.monotonic()
        self._poller: asyncio.Task[None] | None = None

    def _trouble(self, exc: BaseException) -> None:
        if time.monotonic() >= self._away_until:
            log.warning("cache: redis unreachable (%s); answering as misses",
                        type(exc).__name__ or "timeout")  # fmt: skip
        self._away_until = time.monotonic() + AWAY

    def _away(self) -> bool:
        return time.monotonic() < self._away_until

    async def get(self, key: str, budget: float) -> Entry | None:
        if budget <= 0 or self._away():
            return None
        name = self.prefix + key
        try:
            async with asyncio.timeout(budget):
                raw = await self.client.get(name)
                if raw is None:
                    return None
                entry = decode(raw) if isinstance(raw, bytes) else None
                if entry is None:  # unreadable: a miss, and gone for everyone
                    log.warning("cache: deleting an unreadable entry %s", key[:12])
                    await self.client.delete(name)
                return entry
        except (RedisError, OSError, TimeoutError) as exc:
            self._trouble(exc)
            return None

    async def put(self, key: str, entry: Entry, shared: bytes | None = None) -> None:
        if self._away():
            return
        now = self.clock()
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                async with self.client.pipeline(transaction=False) as pipe:
                    pipe.set(self.prefix + key, encode(entry, compress=True),
                             px=int(self.ttl * 1000))  # fmt: skip
                    pipe.zadd(self.prefix + "entries", {key: (now + self.ttl) * 1000})
                    if shared is not None:
                        pipe.zadd(self.prefix + "vectors", {shared: now * 1000})
                    await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._trouble(exc)

    async def size(self) -> int:
        if self._away():
            return 0
        now_ms = self.clock() * 1000
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                async with self.client.pipeline(transaction=False) as pipe:
                    pipe.zremrangebyscore(self.prefix + "entries", "-inf", now_ms)
                    pipe.zcard(self.prefix + "entries")
                    _, n = await pipe.execute()
                return int(n)
        except (RedisError, OSError, TimeoutError) as exc:
            self._trouble(exc)
            return 0

    async def start(self, on_vector: Callable[[bytes, float], None] | None) -> None:
        if on_vector is not None:  # a semantic cache: other routers' vectors come this way
            self._poller = asyncio.create_task(self._poll(on_vector), name="cache-vector-poller")

    async def _poll(self, on_vector: Callable[[bytes, float], None]) -> None:
        """Feeds vectors stored by any router (this one included) into the local index."""
        since = 0.0
        vectors = self.prefix + "vectors"
        while True:
            if not self._away():
                now_ms = self.clock() * 1000
                start = max(since - _OVERLAP, now_ms - self.ttl * 1000)
                try:
                    async with asyncio.timeout(CALL_TIMEOUT * 4):
                        async with self.client.pipeline(transaction=False) as pipe:
                            pipe.zremrangebyscore(vectors, "-inf", now_ms - self.ttl * 1000)
                            pipe.zrangebyscore(vectors, start, "+inf", withscores=True)
                            _, found = await pipe.execute()
                    for member, score in found:
                        on_vector(member, score / 1000)
                        since = max(since, score)
                except (RedisError, OSError, TimeoutError) as exc:
                    self._trouble(exc)
            await asyncio.sleep(POLL)

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        await self.client.aclose()
