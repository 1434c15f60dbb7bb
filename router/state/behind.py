"""Writes to Redis that need no answer, sent in the background in batched pipelines, and
the reads that refresh RedisState's view of the other routers, riding along.

Each write is keyed by what it sets and reads the router's local state when it is sent, so
it writes absolute values: a newer write for the same thing replaces a queued one, and a
batch that failed (Redis slow, down, restarted) is simply sent again once Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import (
    BusyLoadingError,
    ClusterError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("router.state")

# What Redis trouble looks like. redis-py's Cluster client raises some errors (no node
# for a slot, a node that is not a Cluster's) outside RedisError, and (redis-py 8.1) an
# AttributeError when a concurrent command's reconnect closed the connection under it.
TROUBLE = (RedisError, RedisClusterException, OSError, TimeoutError, AttributeError)
# Errors a pipeline may hand back per command that say Redis is away, not that it refuses
# the write: the batch waits for Redis like any other outage.
TRANSIENT = (ClusterError, TryAgainError, BusyLoadingError, RedisConnectionError, RedisTimeoutError,
             OSError, TimeoutError)  # fmt: skip

Client = aioredis.Redis | RedisCluster
Pipe = Pipeline | ClusterPipeline

# Queues a write's commands; may return what to do once Redis has applied them.
Fill = Callable[[Pipe], Callable[[], None] | None]
# Queues reads on a batch when they are due; returns what to do with their replies.
Reads = Callable[[Pipe], Callable[[list[Any]], None] | None]
BATCH = 500  # writes per pipeline
# Seconds between batches: under load, writes of the same thing collapse into one per
# batch, so this caps the pipelines (about 200/s) whatever the request rate. It is
# also how much later than this router the others may see its changes.
GAP = 0.005


class WriteBehind:
    def __init__(
        self,
        client: Client,
        reload: Callable[[], Awaitable[None]],
        on_error: Callable[[BaseException], None],
        timeout: float,
        reads: Reads | None = None,
        every: float = 0.05,
    ) -> None:
        self._client = client
        self._reads = reads
        self._every = every  # a batch goes at least this often, for the reads
        self._reload = reload  # loads the scripts again after NOSCRIPT
        self._on_error = on_error
        self._timeout = timeout
        self._pending: dict[Hashable, Fill] = {}  # in the order first queued
        self._paused = False
        self._kick = asyncio.Event()
        self._hurry = asyncio.Event()  # an urgent write cuts the GAP short
        self._busy = False
        self._task: asyncio.Task[None] | None = None
        self._refused = ""  # the last error Redis answered a write with

    def add(self, key: Hashable, fill: Fill, urgent: bool = False) -> None:
        """Queue a write; the writer sends what has queued up in one pipeline. An urgent
        one (another router may ask for it at once) does not wait out the GAP."""
        self._pending[key] = fill
        if urgent:
            self._hurry.set()
        if not self._paused:
            self.start()

    def start(self) -> None:
        """Run the writer (it also sends the reads, on its own when no write comes)."""
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
        self.start()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._every):
                    await self._kick.wait()
            self._kick.clear()
            if self._paused:
                continue
            batch = dict(list(self._pending.items())[:BATCH])
            for key in batch:
                del self._pending[key]
            self._busy = True
            try:
                await self._send(batch)
            finally:
                self._busy = False
            if not self._hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(GAP):
                        await self._hurry.wait()
            self._hurry.clear()
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
                    spans.append((key, len(pipe), done))
                writes = len(pipe)
                read = self._reads(pipe) if self._reads is not None else None
                if not len(pipe):
                    return
                replies = await pipe.execute(raise_on_error=False)
        except TROUBLE as exc:
            self._again(batch)
            self.pause()
            self._on_error(exc)
            return
        down = next((r for r in replies if isinstance(r, TRANSIENT)), None)
        if down is not None:  # a node away, a Cluster not settled yet: not a refusal
            self._again(batch)
            self.pause()
            self._on_error(down)
            return
        lost_scripts = any(isinstance(r, NoScriptError) for r in replies[writes:])
        if read is not None and not lost_scripts:
            read(replies[writes:])
        start, again, lost = 0, {}, None
        for key, end, done in spans:
            errors = [r for r in replies[start:end] if isinstance(r, Exception)]
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
        if again or lost_scripts:
            self._again(again)
            try:
                await self._reload()
            except TROUBLE as exc:
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
