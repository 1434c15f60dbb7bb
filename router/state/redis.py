"""Routing state in Redis, shared by every router that points at it.

Each read-modify-write is one Lua script, so two routers never both take the last unit of
a limit. Every key carries a TTL. A logical key `name` lives at `prefix:{name}:kind`: the
braces are a hash tag, so a target's keys share a slot and Redis Cluster works.
Redis trouble never hangs a request: each call has a tight timeout, and while Redis is
unreachable the router serves on a local MemoryState, watching for Redis to come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from router.breaker import Health
from router.config import State as StateConfig
from router.state import WINDOW, Clock, Usage, Window
from router.state.behind import Delta, Fill, WriteBehind
from router.state.lua import COOL, EMA, LOADS, PROBE, RECENT, RECORD, TAKE, WINDOWS
from router.state.memory import MemoryState

log = logging.getLogger("router.state")
T = TypeVar("T")

CALL_TIMEOUT = 0.25  # seconds: a request must never wait long on Redis
HEALTH_TTL = 86400  # health hashes are rewritten on every outcome
USAGE_TTL = 7 * 86400  # cumulative usage of a target nobody calls for a week is dropped
SIGNAL_TTL = 86400  # round-robin turns and latency EMAs of a group nobody uses


def _health(raw: dict[bytes, bytes] | list[Any]) -> Health:
    if isinstance(raw, list):  # HGETALL from a script comes back as a flat list
        raw = dict(zip(raw[::2], raw[1::2], strict=True))
    if not raw:
        return Health()
    get = {k.decode(): v.decode() for k, v in raw.items()}
    state = get.get("breaker", "closed")
    return Health(
        breaker=state if state in ("open", "half-open") else "closed",  # type: ignore[arg-type]
        failures=int(float(get.get("failures", "0"))),
        until=float(get.get("until", "0")),
        cooldown_until=float(get.get("cooldown_until", "0")),
        rate_limited=get.get("rate_limited") == "1",
    )


class RedisState:
    def __init__(
        self, cfg: StateConfig, usage_window: float, clock: Clock, hold: float = 660.0
    ) -> None:
        self.prefix = cfg.prefix
        self.window = usage_window
        self.clock = clock
        self.hold = hold  # a crashed router's reservations vanish after this long
        self.local = MemoryState(usage_window, clock)
        self.client = aioredis.Redis.from_url(
            cfg.redis_url,
            socket_timeout=CALL_TIMEOUT,
            socket_connect_timeout=CALL_TIMEOUT,
            retry=Retry(NoBackoff(), 0),  # no hidden retries: we fall back instead
        )
        self._scripts = {
            name: self.client.register_script(src)
            for name, src in (("loads", LOADS), ("take", TAKE), ("windows", WINDOWS),
                              ("probe", PROBE), ("record", RECORD), ("cool", COOL))
        }  # fmt: skip
        self._ids = itertools.count()
        self._me = os.urandom(6).hex()  # makes window and reservation members unique
        self._held: dict[str, list[tuple[str, float]]] = {}  # our reservations per key
        self._down = False
        self._watcher: asyncio.Task[None] | None = None
        self.behind = WriteBehind(self._pipeline, self._mark_down, CALL_TIMEOUT * 4)

    # -- plumbing -------------------------------------------------------------------

    def k(self, name: str, kind: str) -> str:
        return f"{self.prefix}:{{{name}}}:{kind}"

    def _member(self, amount: float) -> str:
        return f"{self._me}.{next(self._ids)}:{amount!r}"

    @property
    def degraded(self) -> bool:
        return self._down

    async def _guard(
        self, remote: Callable[[], Awaitable[T]], local: Callable[[], Awaitable[T]]
    ) -> T:
        if self._down:
            return await local()
        try:
            async with asyncio.timeout(CALL_TIMEOUT * 2):
                try:
                    return await remote()
                except NoScriptError:  # Redis lost its scripts (a restart, SCRIPT FLUSH)
                    await self._load_scripts()
                    return await remote()  # reads and checks only: safe to send again
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark_down(exc)
            return await local()

    @contextlib.asynccontextmanager
    async def _pipeline(self) -> AsyncIterator[Pipeline]:
        """A pipeline holding its connection before any command is queued.

        execute() then writes to the socket without yielding to the loop first, so the
        write-behind bookkeeping done just before it matches what Redis gets, in the order
        it gets it. Left to itself, execute() might first open a connection.
        """
        async with self.client.pipeline(transaction=False) as pipe:
            conn = await self.client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
            pipe.connection = cast(Connection, conn)
            yield pipe

    async def _load_scripts(self) -> None:
        for script in self._scripts.values():
            await self.client.script_load(script.script)

    def _eval(self, pipe: Pipeline, name: str, keys: Sequence[str], args: Sequence[Any]) -> None:
        """Queue a script by its SHA. Unlike redis-py's Script on a pipeline, this sends no
        SCRIPT EXISTS round trip first; the scripts are loaded at start and on reconnect."""
        pipe.evalsha(self._scripts[name].sha, len(keys), *keys, *args)

    def _mark_down(self, exc: BaseException) -> None:
        if not self._down:
            self._down = True
            log.error("redis unreachable (%s): serving on local state until it is back",
                      type(exc).__name__)  # fmt: skip

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            if not self._down:
                continue
            try:
                async with asyncio.timeout(CALL_TIMEOUT * 2):
                    await self.client.ping()
            except (RedisError, OSError, TimeoutError):
                continue
            # Pooled connections from before the outage may be dead in ways the pool's
            # check does not see; drop them all so the first calls after it start fresh.
            await self.client.connection_pool.disconnect()
            try:
                async with asyncio.timeout(CALL_TIMEOUT * 4):
                    await self._load_scripts()  # a restarted Redis has none
            except (RedisError, OSError, TimeoutError):
                continue
            self._down = False
            log.warning("redis is reachable again: shared state resumed")

    async def start(self) -> None:
        try:
            async with asyncio.timeout(CALL_TIMEOUT * 4):
                await self.client.ping()
                await self._load_scripts()
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark_down(exc)
        self._watcher = asyncio.create_task(self._watch(), name="redis-state-watcher")

    async def close(self) -> None:
        if not self._down:
            with contextlib.suppress(TimeoutError):
                await self.flush()
        await self.behind.close()
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        await self.client.aclose()

    async def flush(self) -> None:
        """Wait until every queued write has been sent (tests, and a clean shutdown)."""
        await self.behind.flush()

    def _later(self, fill: Fill, delta: Delta | None = None) -> None:
        """Writes that need no answer go behind; reads and atomic checks stay synchronous."""
        if not self._down:  # else the local copy has it; a Redis reservation would expire
            self.behind.add(fill, delta)

    # -- balancing ------------------------------------------------------------------

    async def _read(
        self, keys: Sequence[str], health: bool
    ) -> tuple[list[list[bytes]], list[Any], list[float]]:
        """Loads (and health) of `keys` in one round trip, plus this router's changes that
        had not reached Redis when it answered (see WriteBehind)."""
        async with self._pipeline() as pipe:
            for key in keys:
                keys3 = [self.k(key, "usage"), self.k(key, "held"), self.k(key, "win")]
                self._eval(pipe, "loads", keys3, [self.clock(), self.window])
                if health:
                    pipe.hgetall(self.k(key, "health"))
            before = self.behind.sent_before(keys)
            out = await pipe.execute()
        missing = self.behind.missing(keys, before)
        step = 2 if health else 1
        return out[::step], out[1::step] if health else [], missing

    @staticmethod
    def _loads_of(rows: Sequence[list[bytes]], missing: Sequence[float]) -> list[float]:
        return [float(u) + float(r) + d for (u, r, _), d in zip(rows, missing, strict=True)]

    async def view(self, keys: Sequence[str]) -> tuple[list[float], list[Health]]:
        """Loads and health in one round trip: what a pick needs."""

        async def remote() -> tuple[list[float], list[Health]]:
            rows, healths, missing = await self._read(keys, True)
            return self._loads_of(rows, missing), [_health(raw) for raw in healths]

        return await self._guard(remote, lambda: self.local.view(keys))

    async def loads(self, keys: Sequence[str]) -> list[float]:
        async def remote() -> list[float]:
            rows, _, missing = await self._read(keys, False)
            return self._loads_of(rows, missing)

        return await self._guard(remote, lambda: self.local.loads(keys))

    async def reserve(self, key: str, tokens: float) -> None:
        member = self._member(tokens)
        self._held.setdefault(key, []).append((member, tokens))

        async def fill(pipe: Pipeline) -> None:
            held = self.k(key, "held")
            pipe.zadd(held, {member: self.clock() + self.hold})
            pipe.expire(held, int(self.hold) + 60)

        await self.local.reserve(key, tokens)
        self._later(fill, (key, tokens))

    async def settle(self, key: str, reserved: float, used: float) -> None:
        mine = self._held.get(key, [])
        member = next((m for m, t in mine if t == reserved), mine[0][0] if mine else None)
        if member is not None:
            mine[:] = [(m, t) for m, t in mine if m != member]
            if not mine:
                self._held.pop(key, None)

        async def fill(pipe: Pipeline) -> None:
            if member is not None:
                pipe.zrem(self.k(key, "held"), member)
            if used:
                pipe.hincrbyfloat(self.k(key, "usage"), "total", used)
                pipe.expire(self.k(key, "usage"), USAGE_TTL)
                if self.window:
                    win = self.k(key, "win")
                    pipe.hincrbyfloat(win, str(int(self.clock())), used)
                    pipe.expire(win, int(self.window) + 60)

        await self.local.settle(key, reserved, used)
        self._later(fill, (key, (used if used else 0.0) - (reserved if member else 0.0)))

    async def usage(self, key: str) -> Usage:
        async def remote() -> Usage:
            [(u, r, t)], _, _ = await self._read([key], False)
            return Usage(window=float(u), total=float(t), reserved=float(r))

        return await self._guard(remote, lambda: self.local.usage(key))

    # -- health ---------------------------------------------------------------------

    async def health(self, keys: Sequence[str]) -> list[Health]:
        async def remote() -> list[Health]:
            async with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hgetall(self.k(key, "health"))
                return [_health(raw) for raw in await pipe.execute()]

        return await self._guard(remote, lambda: self.local.health(keys))

    async def take_probe(self, key: str, now: float, cooldown: float) -> bool:
        async def remote() -> bool:
            keys = [self.k(key, "health")]
            return bool(await self._scripts["probe"](keys=keys, args=[now, cooldown, HEALTH_TTL]))

        return await self._guard(remote, lambda: self.local.take_probe(key, now, cooldown))

    async def record(
        self, key: str, ok: bool, now: float, threshold: int, cooldown: float
    ) -> Health:
        args = [int(ok), now, threshold, cooldown, HEALTH_TTL]
        keys = [self.k(key, "health")]

        async def remote() -> Health:
            return _health(await self._scripts["record"](keys=keys, args=args))

        async def fill(pipe: Pipeline) -> None:
            # A success closes the breaker: no read needed, so no script (a batch with a
            # script in it could fail half-sent on NOSCRIPT after a Redis restart).
            pipe.hset(keys[0], mapping={"breaker": "closed", "failures": "0", "until": "0"})
            pipe.expire(keys[0], HEALTH_TTL)

        local = await self.local.record(key, ok, now, threshold, cooldown)
        if ok:  # successes are the common case: written behind; failures at once
            self._later(fill)
            return local
        return await self._guard(remote, lambda: _value(local))

    async def cool(self, key: str, until: float, rate_limited: bool) -> None:
        async def remote() -> None:
            ttl = max(HEALTH_TTL, int(until - self.clock()) + 60)
            args = [until, int(rate_limited), ttl]
            await self._scripts["cool"](keys=[self.k(key, "health")], args=args)

        await self.local.cool(key, until, rate_limited)
        await self._guard(remote, _nothing)

    # -- limits ---------------------------------------------------------------------

    async def windows(self, keys: Sequence[str], now: float) -> list[Window]:
        async def remote() -> list[Window]:
            async with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    self._eval(pipe, "windows", [self.k(key, "w")], [now, WINDOW])
                return [Window(float(t), float(o)) for t, o in await pipe.execute()]

        return await self._guard(remote, lambda: self.local.windows(keys, now))

    async def take(self, key: str, amount: float, limit: float, now: float) -> float | None:
        async def remote() -> float | None:
            args: list[str | float] = [now, amount, limit, WINDOW, f"{self._me}.{next(self._ids)}"]
            until = await self._scripts["take"](keys=[self.k(key, "w")], args=args)
            if until is not None:
                return float(until)
            await self.local.hit(key, amount, now)  # a local copy, should Redis go away
            return None

        return await self._guard(remote, lambda: self.local.take(key, amount, limit, now))

    async def hit(self, key: str, amount: float, now: float) -> None:
        async def fill(pipe: Pipeline) -> None:
            w = self.k(key, "w")
            pipe.zadd(w, {self._member(amount): now})
            pipe.expire(w, int(WINDOW) + 1)

        await self.local.hit(key, amount, now)
        self._later(fill)

    async def totals(self, keys: Sequence[str]) -> list[float]:
        async def remote() -> list[float]:
            async with self.client.pipeline(transaction=False) as pipe:
                for key in keys:  # one GET each: the keys may live in different cluster slots
                    pipe.get(self.k(key, "total"))
                return [float(v) if v is not None else 0.0 for v in await pipe.execute()]

        return await self._guard(remote, lambda: self.local.totals(keys))

    async def add_total(self, key: str, amount: float, ttl: float) -> None:
        async def fill(pipe: Pipeline) -> None:
            pipe.incrbyfloat(self.k(key, "total"), amount)
            pipe.expire(self.k(key, "total"), int(ttl), nx=True)

        await self.local.add_total(key, amount, ttl)
        self._later(fill)

    async def recent(
        self, keys: Sequence[str], now: float, span: float
    ) -> list[tuple[float, float, float]]:
        async def remote() -> list[tuple[float, float, float]]:
            async with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.eval(RECENT, 1, self.k(key, "w"), now, WINDOW, span)
                rows = await pipe.execute()
            return [(float(t), float(r), float(o)) for t, r, o in rows]

        return await self._guard(remote, lambda: self.local.recent(keys, now, span))

    # -- routing signals: round-robin turns, latency EMAs, session affinity -----------

    async def turn(self, key: str) -> int:
        async def remote() -> int:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.incr(self.k(key, "turn"))
                pipe.expire(self.k(key, "turn"), SIGNAL_TTL)
                n, _ = await pipe.execute()
            return int(n)

        return await self._guard(remote, lambda: self.local.turn(key))

    async def latencies(self, keys: Sequence[str]) -> list[float | None]:
        async def remote() -> list[float | None]:
            async with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.get(self.k(key, "ema"))
                return [float(v) if v is not None else None for v in await pipe.execute()]

        return await self._guard(remote, lambda: self.local.latencies(keys))

    async def sample(self, key: str, value: float, alpha: float) -> None:
        async def fill(pipe: Pipeline) -> None:
            # EVAL with the source, not by SHA: a written-behind batch must not meet NOSCRIPT.
            pipe.eval(EMA, 1, self.k(key, "ema"), value, alpha, SIGNAL_TTL)

        await self.local.sample(key, value, alpha)
        self._later(fill)

    async def sticky(self, key: str) -> str | None:
        async def remote() -> str | None:
            v = await self.client.get(self.k(key, "stick"))
            return v.decode() if isinstance(v, bytes) else v

        return await self._guard(remote, lambda: self.local.sticky(key))

    async def stick(self, key: str, value: str, ttl: float) -> None:
        async def fill(pipe: Pipeline) -> None:
            pipe.set(self.k(key, "stick"), value, px=max(1, int(ttl * 1000)))

        await self.local.stick(key, value, ttl)
        self._later(fill)


async def _nothing() -> None:
    return None


async def _value(v: T) -> T:
    return v
