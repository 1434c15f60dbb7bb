"""Routing state in Redis, shared by every router that points at it.

Each read-modify-write is one Lua script, so two routers never both take the last unit of
a limit. Every key carries a TTL. A logical key `name` lives at `prefix:{name}:kind` (the
braces are a hash tag: a target's keys would share a Cluster slot, but Cluster is not
supported yet). Loads and budgets are kept per router (fields named by the router's id):
a router writes its own share as absolute values, behind the request, and reads the others'
shares plus its own exact local view. So a read never depends on which writes Redis has
had, and a write that failed is just sent again.
Redis trouble never hangs a request: each call has a tight timeout, and while Redis is
unreachable the router serves on a local MemoryState and keeps its writes until Redis is
back (then it writes all of its state again, in case Redis lost it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from router.breaker import Health
from router.config import State as StateConfig
from router.state import WINDOW, Clock, Taken, Usage, Window
from router.state.behind import Fill, WriteBehind
from router.state.lua import COOL, EMA, HOLD, LOADS, PROBE, PUT, RECENT, RECORD, TAKE, WINDOWS
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
        opened=float(get.get("opened", "0")),
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
            for name, src in (("loads", LOADS), ("take", TAKE), ("put", PUT), ("windows", WINDOWS),
                              ("hold", HOLD), ("probe", PROBE), ("record", RECORD), ("cool", COOL))
        }  # fmt: skip
        self._ids = itertools.count()
        self._me = os.urandom(6).hex()  # this router's id: its fields and window entries
        self._acked: dict[str, float] = {}  # per target, the newest usage second Redis has
        self._down = False
        self._watcher: asyncio.Task[None] | None = None
        self.behind = WriteBehind(
            self.client, self._load_scripts, self._mark_down, CALL_TIMEOUT * 4
        )

    # -- plumbing -------------------------------------------------------------------

    def k(self, name: str, kind: str) -> str:
        return f"{self.prefix}:{{{name}}}:{kind}"

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
                    self._rewrite()  # and perhaps the rest of its data
                    return await remote()  # reads and checks only: safe to send again
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark_down(exc)
            return await local()

    async def _load_scripts(self) -> None:
        for script in self._scripts.values():
            await self.client.script_load(script.script)

    def _eval(self, pipe: Pipeline, name: str, keys: Sequence[str], args: Sequence[Any]) -> None:
        """Queue a script by its SHA. Unlike redis-py's Script on a pipeline, this sends no
        SCRIPT EXISTS round trip first; the scripts are loaded at start and on reconnect."""
        pipe.evalsha(self._scripts[name].sha, len(keys), *keys, *args)

    def _mark_down(self, exc: BaseException) -> None:
        self.behind.pause()
        if not self._down:
            self._down = True
            log.error("redis unreachable (%s): serving on local state until it is back",
                      type(exc).__name__)  # fmt: skip

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            if not self._down:
                continue
            self.behind.discard(self._stale)  # a long outage must not pile up writes
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
            self._rewrite()
            self.behind.resume()
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

    def _later(self, key: Hashable, fill: Fill) -> None:
        """Writes that need no answer go behind; reads and atomic checks stay synchronous.
        While Redis is unreachable they wait, and are sent when it is back."""
        self.behind.add(key, fill)

    def _rewrite(self) -> None:
        """Queue all of this router's state for writing: after an outage Redis may have
        lost it (a restart without persistence) or missed writes that timed out."""
        self._acked.clear()
        for key in self.local.counter_keys():
            self._later(("load", key), self._write_load(key))
        for key in self.local.total_keys():
            self._later(("total", key), self._write_total(key))
        for key, e in self.local.entries():
            if e.at > self.clock() - WINDOW:
                self._later(("entry", key, e.id), self._write_entry(key, e.id))

    # -- balancing ------------------------------------------------------------------

    def _write_load(self, key: str) -> Fill:
        """This router's share of a target's load, as absolute values."""

        def fill(pipe: Pipeline) -> Callable[[], None] | None:
            c, me = self.local.counter(key), self._me
            usage, held = self.k(key, "usage"), self.k(key, "reserved")
            pipe.hset(usage, me, repr(c.total))
            pipe.expire(usage, USAGE_TTL)
            if c.reserved > 0:
                pipe.hset(held, me, f"{c.reserved!r} {self.clock() + self.hold!r}")
                pipe.expire(held, int(self.hold) + 60)
            else:
                pipe.hdel(held, me)
            if not self.window:
                return None
            # Usage per second: only the current second's bucket still changes, so what
            # Redis has up to the one before stays right.
            since = self._acked.get(key, -math.inf)
            fields = [(f"{int(s)}:{me}", repr(v)) for s, v in c.buckets if s >= since]
            if not fields:
                return None
            win = self.k(key, "win")
            pipe.hset(win, items=[x for field in fields for x in field])
            pipe.expire(win, int(self.window) + 60)
            newest = c.buckets[-1][0]
            return lambda: self._acked.__setitem__(key, newest)

        return fill

    async def _read(self, keys: Sequence[str], health: bool) -> tuple[list[Usage], list[Any]]:
        """Loads (and health) of `keys` in one round trip: the other routers' shares from
        Redis plus this router's own from its local state, which is exact."""
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                keys3 = [self.k(key, "usage"), self.k(key, "reserved"), self.k(key, "win")]
                self._eval(pipe, "loads", keys3, [self.clock(), self.window, self._me])
                if health:
                    pipe.hgetall(self.k(key, "health"))
            out = await pipe.execute()
        step = 2 if health else 1
        usages = []
        for key, (u, r, t) in zip(keys, out[::step], strict=True):
            mine = await self.local.usage(key)
            usages.append(
                Usage(float(u) + mine.window, float(t) + mine.total, float(r) + mine.reserved)
            )
        return usages, out[1::step] if health else []

    async def view(self, keys: Sequence[str]) -> tuple[list[float], list[Health]]:
        """Loads and health in one round trip: what a pick needs."""

        async def remote() -> tuple[list[float], list[Health]]:
            usages, healths = await self._read(keys, True)
            return [u.window + u.reserved for u in usages], [_health(raw) for raw in healths]

        return await self._guard(remote, lambda: self.local.view(keys))

    async def loads(self, keys: Sequence[str]) -> list[float]:
        async def remote() -> list[float]:
            usages, _ = await self._read(keys, False)
            return [u.window + u.reserved for u in usages]

        return await self._guard(remote, lambda: self.local.loads(keys))

    async def reserve(self, key: str, tokens: float) -> None:
        await self.local.reserve(key, tokens)
        self._later(("load", key), self._write_load(key))

    async def settle(self, key: str, reserved: float, used: float) -> None:
        await self.local.settle(key, reserved, used)
        self._later(("load", key), self._write_load(key))

    async def usage(self, key: str) -> Usage:
        async def remote() -> Usage:
            [usage], _ = await self._read([key], False)
            return usage

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
        self,
        key: str,
        ok: bool,
        now: float,
        threshold: int,
        cooldown: float,
        started: float | None = None,
    ) -> Health:
        args = [int(ok), now, threshold, cooldown, HEALTH_TTL, now if started is None else started]
        keys = [self.k(key, "health")]

        async def remote() -> Health:
            return _health(await self._scripts["record"](keys=keys, args=args))

        def fill(pipe: Pipeline) -> None:
            self._eval(pipe, "record", keys, args)

        local = await self.local.record(key, ok, now, threshold, cooldown, started)
        if ok:  # successes are the common case: written behind (the latest one is enough)
            self._later(("success", key), fill)
            return local
        return await self._guard(remote, lambda: _value(local))

    async def cool(self, key: str, until: float, rate_limited: bool) -> None:
        ttl = max(HEALTH_TTL, int(until - self.clock()) + 60)
        args = [until, int(rate_limited), ttl]

        def fill(pipe: Pipeline) -> None:
            self._eval(pipe, "cool", [self.k(key, "health")], args)

        await self.local.cool(key, until, rate_limited)
        self._later(("cool", key, until), fill)

    # -- limits ---------------------------------------------------------------------

    async def windows(self, keys: Sequence[str], now: float) -> list[Window]:
        async def remote() -> list[Window]:
            async with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    self._eval(pipe, "windows", [self.k(key, "w")], [now, WINDOW])
                return [Window(float(t), float(o)) for t, o in await pipe.execute()]

        return await self._guard(remote, lambda: self.local.windows(keys, now))

    async def take(self, key: str, amount: float, limit: float, now: float) -> Taken:
        entry = f"{self._me}.{next(self._ids)}"  # a window member is "<entry>:<amount>"

        async def remote() -> Taken:
            args: list[str | float] = [now, amount, limit, WINDOW, entry]
            until = await self._scripts["take"](keys=[self.k(key, "w")], args=args)
            if until is not None:
                return Taken(None, float(until))
            await self.local.hit(key, amount, now, entry)  # a local copy, for adjust()
            return Taken(entry)

        async def local() -> Taken:
            taken = await self.local.take(key, amount, limit, now, entry)
            if taken.entry is not None:  # Redis gets it when it is back
                self._later(("entry", key, entry), self._write_entry(key, entry))
            return taken

        return await self._guard(remote, local)

    async def adjust(self, key: str, entry: str, amount: float) -> None:
        await self.local.adjust(key, entry, amount)
        self._later(("entry", key, entry), self._write_entry(key, entry))

    async def hit(self, key: str, amount: float, now: float) -> None:
        entry = f"{self._me}.{next(self._ids)}"
        await self.local.hit(key, amount, now, entry)
        self._later(("entry", key, entry), self._write_entry(key, entry))

    def _write_entry(self, key: str, entry: str) -> Fill:
        def fill(pipe: Pipeline) -> None:
            e = self.local.entry(key, entry)
            if e is not None and e.at > self.clock() - WINDOW:  # else it has left the window
                self._eval(pipe, "put", [self.k(key, "w")], [entry, e.at, e.amount, WINDOW])

        return fill

    def _stale(self, write: Hashable) -> bool:
        """A queued window write whose entry has left the window: nothing to send."""
        if not (isinstance(write, tuple) and write[0] == "entry"):
            return False
        e = self.local.entry(write[1], write[2])
        return e is None or e.at <= self.clock() - WINDOW

    async def totals(self, keys: Sequence[str]) -> list[float]:
        """Period totals (budgets): the other routers' shares plus this one's."""

        async def remote() -> list[float]:
            async with self.client.pipeline(transaction=False) as pipe:
                for key in keys:  # one read each: the keys may live in different cluster slots
                    pipe.hgetall(self.k(key, "spent"))
                shares = await pipe.execute()
            mine = await self.local.totals(keys)
            return [
                sum(float(v) for r, v in share.items() if r.decode() != self._me) + own
                for share, own in zip(shares, mine, strict=True)
            ]

        return await self._guard(remote, lambda: self.local.totals(keys))

    async def add_total(self, key: str, amount: float, ttl: float) -> None:
        await self.local.add_total(key, amount, ttl)
        self._later(("total", key), self._write_total(key))

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
        def fill(pipe: Pipeline) -> None:
            # EVAL with the source, not by SHA: a written-behind batch must not meet NOSCRIPT.
            # Queued under one name per EMA: samples a batch has not sent yet collapse to
            # the latest, which keeps an outage's queue bounded.
            pipe.eval(EMA, 1, self.k(key, "ema"), value, alpha, SIGNAL_TTL)

        await self.local.sample(key, value, alpha)
        self._later(("ema", key), fill)

    async def sticky(self, key: str) -> str | None:
        async def remote() -> str | None:
            v = await self.client.get(self.k(key, "stick"))
            return v.decode() if isinstance(v, bytes) else v

        return await self._guard(remote, lambda: self.local.sticky(key))

    async def stick(self, key: str, value: str, ttl: float) -> None:
        def fill(pipe: Pipeline) -> None:
            pipe.set(self.k(key, "stick"), value, px=max(1, int(ttl * 1000)))

        await self.local.stick(key, value, ttl)
        self._later(("stick", key), fill)

    async def hold_total(self, key: str, amount: float, limit: float) -> str | None:
        """Holds live in Redis, one entry each, so every router's count at once; they
        expire like reservations should their router die."""
        hold, amount = f"{self._me}.{next(self._ids)}", float(amount)

        async def remote() -> str | None:
            now = self.clock()
            [mine] = await self.local.totals([key])
            args: list[str | float] = [self._me, mine, amount, limit, now, hold, now + self.hold]
            keys = [self.k(key, "spent"), self.k(key, "holds")]
            if not await self._scripts["hold"](keys=keys, args=args):
                return None
            return await self.local.hold_total(key, amount, math.inf, hold)  # to release it

        return await self._guard(remote, lambda: self.local.hold_total(key, amount, limit, hold))

    async def release_total(self, key: str, hold: str) -> None:
        amount = self.local.held(hold)
        await self.local.release_total(key, hold)

        def fill(pipe: Pipeline) -> None:
            pipe.zrem(self.k(key, "holds"), f"{hold}:{amount!r}")

        if amount is not None:
            self._later(("release", hold), fill)

    def _write_total(self, key: str) -> Fill:
        def fill(pipe: Pipeline) -> None:
            amount, expires = self.local.total(key)
            if expires > time.time():  # the period has not ended
                spent = self.k(key, "spent")
                pipe.hset(spent, self._me, repr(amount))
                pipe.expireat(spent, math.ceil(expires))  # the same instant from every router

        return fill


async def _value(v: T) -> T:
    return v
