"""Writes to Redis that need no answer, sent in the background in batched pipelines.

Reservations, usage, successes and window hits leave the request path this way. The
catch is that a pick must still count this router's own changes, once: the ones Redis has
not had yet are added to what it answers (`sent_before` and `missing`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager

from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

Fill = Callable[[Pipeline], Awaitable[None]]
Delta = tuple[str, float]  # a change to one key's load, in tokens


class WriteBehind:
    def __init__(
        self,
        pipeline: Callable[[], AbstractAsyncContextManager[Pipeline]],
        on_error: Callable[[BaseException], None],
        timeout: float,
    ) -> None:
        self._pipeline = pipeline  # must hold its connection before commands are queued
        self._on_error = on_error
        self._timeout = timeout
        self._pending: list[tuple[Fill, Delta | None]] = []
        self._unsent: dict[str, float] = {}  # load changes queued, not yet sent
        self._sent: dict[str, float] = {}  # load changes sent so far, summed per key
        self._kick = asyncio.Event()
        self._busy = False
        self._task: asyncio.Task[None] | None = None

    def add(self, fill: Fill, delta: Delta | None = None) -> None:
        """Queue a write; the writer sends what has queued up in one pipeline."""
        if delta:
            self._unsent[delta[0]] = self._unsent.get(delta[0], 0.0) + delta[1]
        self._pending.append((fill, delta))
        self._kick.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="redis-state-writer")

    def sent_before(self, keys: Sequence[str]) -> list[float]:
        """Taken just before a read is sent; `missing` needs it."""
        return [self._sent.get(key, 0.0) for key in keys]

    def missing(self, keys: Sequence[str], before: Sequence[float]) -> list[float]:
        """This router's load changes that Redis had not had when it answered a read.

        Redis handles commands in the order they reach it (on loopback, and in practice on
        a network), so the read saw every batch sent before it and none sent after it.
        """
        return [
            self._sent.get(key, 0.0) - b + self._unsent.get(key, 0.0)
            for key, b in zip(keys, before, strict=True)
        ]

    async def _run(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            ops, self._pending = self._pending, []
            if not ops:
                continue
            self._busy = True
            try:
                async with asyncio.timeout(self._timeout), self._pipeline() as pipe:
                    for fill, _ in ops:
                        await fill(pipe)
                    self._mark_sent(ops)  # execute() writes before it first yields
                    await pipe.execute()
            except (RedisError, OSError, TimeoutError) as exc:
                self._on_error(exc)
            finally:
                self._busy = False
                self._mark_sent(ops)

    def _mark_sent(self, ops: list[tuple[Fill, Delta | None]]) -> None:
        """Move a batch's load changes from unsent to sent (once: the deltas are cleared)."""
        for i, (fill, delta) in enumerate(ops):
            if delta:
                key, amount = delta
                self._sent[key] = self._sent.get(key, 0.0) + amount
                left = self._unsent.get(key, 0.0) - amount
                if abs(left) > 1e-9:
                    self._unsent[key] = left
                else:
                    self._unsent.pop(key, None)
                ops[i] = (fill, None)

    async def flush(self) -> None:
        """Wait until every queued write has been sent (tests, and a clean shutdown)."""
        async with asyncio.timeout(self._timeout * 2):
            while self._pending or self._busy:
                await asyncio.sleep(0.002)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
