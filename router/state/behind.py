"""Writes to Redis that need no answer, sent in the background in batched pipelines.

Each write is keyed by what it sets and reads the router's local state when it is sent, so
it writes absolute values: a newer write for the same thing replaces a queued one, and a
batch that failed (Redis slow, down, restarted) is simply sent again once Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError, RedisError, ResponseError

log = logging.getLogger("router.state")

# Queues a write's commands; may return what to do once Redis has applied them.
Fill = Callable[[Pipeline], Callable[[], None] | None]
BATCH = 500  # writes per pipeline


class WriteBehind:
    def __init__(
        self,
        client: aioredis.Redis,
        reload: Callable[[], Awaitable[None]],
        on_error: Callable[[BaseException], None],
        timeout: float,
    ) -> None:
        self._client = client
        self._reload = reload  # loads the scripts again after NOSCRIPT
        self._on_error = on_error
        self._timeout = timeout
        self._pending: dict[Hashable, Fill] = {}  # in the order first queued
        self._paused = False
        self._kick = asyncio.Event()
        self._busy = False
        self._task: asyncio.Task[None] | None = None
        self._refused = ""  # the last error Redis answered a write with

    def add(self, key: Hashable, fill: Fill) -> None:
        """Queue a write; the writer sends what has queued up in one pipeline."""
        self._pending[key] = fill
        if not self._paused:
            self._start()

    def _start(self) -> None:
        self._kick.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="redis-state-writer")

    def discard(self, stale: Callable[[Hashable], bool]) -> None:
        """Drop queued writes that no longer need sending."""
        self._pending = {k: fill for k, fill in self._pending.items() if not stale(k)}

    def pause(self) -> None:
        """Redis is unreachable: keep the writes until resume()."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        if self._pending:
            self._start()

    async def _run(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            if self._paused or not self._pending:
                continue
            batch = dict(list(self._pending.items())[:BATCH])
            for key in batch:
                del self._pending[key]
            self._busy = True
            try:
                await self._send(batch)
            finally:
                self._busy = False
            if self._pending and not self._paused:
                self._kick.set()

    async def _send(self, batch: dict[Hashable, Fill]) -> None:
        spans: list[tuple[Hashable, int, Callable[[], None] | None]] = []
        try:
            async with (
                asyncio.timeout(self._timeout),
                self._client.pipeline(transaction=False) as pipe,
            ):
                for key, fill in batch.items():
                    done = fill(pipe)
                    spans.append((key, len(pipe.command_stack), done))
                replies = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError, TimeoutError) as exc:
            self._again(batch)
            self.pause()
            self._on_error(exc)
            return
        start, again, lost = 0, {}, None
        for key, end, done in spans:
            errors = [r for r in replies[start:end] if isinstance(r, ResponseError)]
            start = end
            if any(isinstance(e, NoScriptError) for e in errors):
                again[key] = batch[key]  # Redis lost its scripts (a restart, SCRIPT FLUSH)
            elif errors:
                lost = errors[0]  # a write Redis refuses would be refused again
            elif done is not None:
                done()
        if lost is not None and str(lost) != self._refused:
            self._refused = str(lost)  # logged once, not once per batch
            log.error("redis refused a state write: %s", lost)
        if again:
            self._again(again)
            try:
                await self._reload()
            except (RedisError, OSError, TimeoutError) as exc:
                self.pause()
                self._on_error(exc)

    def _again(self, batch: dict[Hashable, Fill]) -> None:
        """Queue a batch that did not get through, ahead of what came since; a newer write
        for the same thing wins."""
        self._pending = {**batch, **self._pending}

    async def flush(self) -> None:
        """Wait until every queued write has been sent (tests, and a clean shutdown)."""
        async with asyncio.timeout(self._timeout * 4):
            while self._pending or self._busy:
                await asyncio.sleep(0.002)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
