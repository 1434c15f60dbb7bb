"""Routing state in Redis (one server or a Cluster), shared by every router that points at it.

Each read-modify-write is one Lua script, so two routers never both take the last unit of
a limit. Every key carries a TTL. A logical key `name` lives at `prefix:{name}:kind` (the
braces are a hash tag: every script touches the keys of one name, so one Cluster slot).
Loads and budgets are kept per router (fields named by the router's id): a router writes
its own share as absolute values, behind the request, and reads the others' shares plus
its own exact local view. So a read never depends on which writes Redis has had, and a
write that failed is just sent again.
A pick reads no Redis: view() answers from the others' shares and health as last read
(refreshed in the background every `state.refresh` seconds, riding on the write batches)
plus this router's own changes, exact and at once. Only limits, probes and holds wait on
Redis, in one atomic script each.
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
from dataclasses import replace
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from router import breaker
from router.breaker import Health
from router.config import State as StateConfig
from router.state import WINDOW, Clock, Taken, Usage, Window, lua
from router.state.behind import TROUBLE, Client, Fill, Pipe, WriteBehind
from router.state.memory import MemoryState

OWN_HEALTH = 1.0  # seconds this router's own health change outranks what Redis says
log = logging.getLogger("router.state")
T = TypeVar("T")

CALL_TIMEOUT = 0.25  # seconds: a request must never wait long on Redis
HEALTH_TTL = 86400  # health hashes are rewritten on every outcome
USAGE_TTL = 7 * 86400  # cumulative usage of a target nobody calls for a week is dropped
SIGNAL_TTL = 86400  # round-robin turns and latency EMAs of a group nobody uses
LATE = 0.2  # seconds: a view this much older than `refresh` is read again before a pick
UNWATCHED = 60.0  # seconds: a target no pick asked about for this long is not refreshed


_UNSEEN = (0.0, Health())


class ConfigError(RedisError):
    """The Redis at state.redis_url is not what state.cluster says it is."""


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
        self.cluster = cfg.cluster
        self.local = MemoryState(usage_window, clock)
        options: dict[str, Any] = {
            "socket_timeout": CALL_TIMEOUT,
            "socket_connect_timeout": CALL_TIMEOUT,
            "retry": Retry(NoBackoff(), 0),  # no hidden retries: we fall back instead
        }
        self.client: Client
        if cfg.cluster:
            self.client = RedisCluster.from_url(cfg.redis_url, **options)
        else:
            self.client = aioredis.Redis.from_url(cfg.redis_url, **options)
        self._scripts = {
            name: self.client.register_script(src)
            for name, src in (("loads", lua.LOADS), ("take", lua.TAKE), ("put", lua.PUT),
                              ("windows", lua.WINDOWS), ("hold", lua.HOLD), ("probe", lua.PROBE),
                              ("record", lua.RECORD), ("cool", lua.COOL), ("share", lua.SHARE),
                              ("free", lua.FREE))
        }  # fmt: skip
        self._ids = itertools.count()
        self._me = os.urandom(6).hex()  # this router's id: its fields and window entries
        self._acked: dict[str, float] = {}  # per target, the newest usage second Redis has
        self._down = False
        self._misconfigured = ""  # the last ConfigError logged
        self._watcher: asyncio.Task[None] | None = None
        # The view picks read: per target, the other routers' load and the shared health,
        # as Redis had them at `_seen_at` (monotonic) plus this router's health changes.
        self.refresh = cfg.refresh
        self._seen: dict[str, tuple[float, Health]] = {}
        self._seen_at = -math.inf
        self._watched: dict[str, float] = {}  # target -> when a pick last asked (monotonic)
        self._looking: asyncio.Future[None] | None = None  # a pick's read of the view
        self._looking_at: set[str] = set()  # the targets it reads
        self._changes = 0  # health changes made here, counted ...
        self._changed: dict[str, int] = {}  # ... and the count at each target's last one
        self._changed_at: dict[str, float] = {}  # ... and when (monotonic)
        self.behind = WriteBehind(
            self.client, self._load_scripts, self._mark_down, CALL_TIMEOUT * 4,
            self._reads, cfg.refresh,
        )  # fmt: skip

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
        except TROUBLE as exc:
            self._mark_down(exc)
            return await local()

    async def _load_scripts(self) -> None:
        for script in self._scripts.values():
            await self.client.script_load(script.script)  # every primary, in a Cluster

    async def _connect(self) -> None:
        """Check that Redis answers and is what the config says, and load the scripts."""
        if isinstance(self.client, RedisCluster):
            try:
                await self.client.initialize()
            except RedisClusterException as exc:
                if "not enabled" not in str(exc):
                    raise
                raise ConfigError(
                    "state.cluster is true but state.redis_url is not a Redis Cluster node"
                ) from exc
        else:
            await self.client.ping()
            info = await self.client.info("cluster")
            if info.get("cluster_enabled"):
                raise ConfigError(
                    "state.redis_url is a Redis Cluster node: set state.cluster: true"
                )
        await self._load_scripts()

    def _eval(self, pipe: Pipe, name: str, keys: Sequence[str], args: Sequence[Any]) -> None:
        """Queue a script by its SHA. Unlike redis-py's Script on a pipeline, this sends no
        SCRIPT EXISTS round trip first; the scripts are loaded (on every primary of a
        Cluster) at start and on reconnect. Through execute_command: redis-py's Cluster
        pipeline refuses its evalsha() method, though it routes EVALSHA by its keys."""
        pipe.execute_command("EVALSHA", self._scripts[name].sha, len(keys), *keys, *args)

    def _mark_down(self, exc: BaseException) -> None:
        self.behind.pause()
        if isinstance(exc, ConfigError) and str(exc) != self._misconfigured:
            self._misconfigured = str(exc)  # logged once, not at every reconnect
            log.error("redis state is misconfigured: %s", exc)
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
            # Pooled connections from before the outage may be dead in ways the pool's
            # check does not see; drop them all so the first calls after it start fresh.
            await self._disconnect()
            try:
                async with asyncio.timeout(CALL_TIMEOUT * 4):
                    await self._connect()  # a restarted Redis has no scripts
            except TROUBLE as exc:
                if isinstance(exc, ConfigError):
                    self._mark_down(exc)
                continue
            self._down = False
            self._seen_at = -math.inf  # the view is old: the next pick reads it again
            self._rewrite()
            self.behind.resume()
            log.warning("redis is reachable again: shared state resumed")

    async def _disconnect(self) -> None:
        if isinstance(self.client, RedisCluster):
            for node in self.client.get_nodes():
                await node.disconnect()
        else:
            await self.client.connection_pool.disconnect()

    async def start(self) -> None:
        try:
            async with asyncio.timeout(CALL_TIMEOUT * 4):
                await self._connect()
        except TROUBLE as exc:
            self._mark_down(exc)
        self._watcher = asyncio.create_task(self._watch(), name="redis-state-watcher")
        if not self._down:
            self.behind.start()

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

    def _later(self, key: Hashable, fill: Fill, urgent: bool = False) -> None:
        """Writes that need no answer go behind; reads and atomic checks stay synchronous.
        While Redis is unreachable they wait, and are sent when it is back."""
        self.behind.add(key, fill, urgent)

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
        """This router's share of a target's load, as absolute values, in one script."""

        def fill(pipe: Pipe) -> Callable[[], None] | None:
            c = self.local.counter(key)
            keys = [self.k(key, "usage"), self.k(key, "reserved"), self.k(key, "win")]
            held = repr(c.reserved) if c.reserved > 0 else ""
            args: list[Any] = [self._me, repr(c.total), held, repr(self.clock() + self.hold),
                               USAGE_TTL, int(self.hold) + 60, int(self.window) + 60]  # fmt: skip
            newest = None
            if self.window:
                # Usage per second: only the current second's bucket still changes, so
                # what Redis has up to the one before stays right.
                since = self._acked.get(key, -math.inf)
                for s, v in c.buckets:
                    if s >= since:
                        args += [int(s), repr(v)]
                        newest = s
            self._eval(pipe, "share", keys, args)
            if newest is None:
                return None
            return lambda: self._acked.__setitem__(key, newest)

        return fill

    def _queue_loads(self, pipe: Pipe, keys: Sequence[str]) -> None:
        for key in keys:
            keys4 = [self.k(key, kind) for kind in ("usage", "reserved", "win", "health")]
            self._eval(pipe, "loads", keys4, [self.clock(), self.window, self._me])

    async def _read(self, keys: Sequence[str]) -> list[Usage]:
        """Loads of `keys` in one round trip: the other routers' shares from Redis plus this
        router's own from its local state, which is exact."""
        async with self.client.pipeline(transaction=False) as pipe:
            self._queue_loads(pipe, keys)
            out = await pipe.execute()
        usages = []
        for key, (u, r, t, _) in zip(keys, out, strict=True):
            mine = await self.local.usage(key)
            usages.append(
                Usage(float(u) + mine.window, float(t) + mine.total, float(r) + mine.reserved)
            )
        return usages

    # The view: what picks read.

    def _reads(self, pipe: Pipe) -> Callable[[list[Any]], None] | None:
        """Queue a refresh of the view on a write batch when one is due (WriteBehind)."""
        now = time.monotonic()
        if now - self._seen_at < self.refresh or not self._watched:
            return None
        for key, asked in list(self._watched.items()):
            if asked < now - UNWATCHED:
                del self._watched[key]
                self._seen.pop(key, None)
        keys = list(self._watched)
        self._queue_loads(pipe, keys)
        return self._seeing(keys, now)

    def _seeing(self, keys: list[str], sent: float) -> Callable[[list[Any]], None]:
        """What takes a refresh's replies into the view. A health change this router made
        while the read was on its way is newer than what the read brings: it stays."""
        changes = self._changes

        def take(replies: list[Any]) -> None:
            for key, row in zip(keys, replies, strict=True):
                if isinstance(row, Exception):
                    return  # the view stays as it was; its age makes a pick read again
                u, r, _, health = row
                if key in self._seen and (
                    self._changed.get(key, 0) > changes
                    # Our own change may still wait in the write-behind queue: a read sent
                    # meanwhile (a pick's) would bring the health from before it.
                    or time.monotonic() - self._changed_at.get(key, -OWN_HEALTH) < OWN_HEALTH
                ):
                    self._seen[key] = (float(u) + float(r), self._seen[key][1])
                else:
                    self._seen[key] = (float(u) + float(r), _health(health))
            self._seen_at = max(self._seen_at, sent)

        return take

    async def _look(self, keys: Sequence[str]) -> None:
        """Refresh the view now, for a pick that found it too old or missing a target.
        Picks that arrive while a read is on its way wait for that one."""
        now = time.monotonic()
        for key in keys:
            self._watched.setdefault(key, now)
        look = self._looking
        if look is None or look.done() or not self._looking_at.issuperset(keys):
            watched = list(self._watched)
            look = self._looking = asyncio.ensure_future(self._fetch(watched, now))
            self._looking_at = set(watched)
        await asyncio.shield(look)

    async def _fetch(self, keys: list[str], now: float) -> None:
        take = self._seeing(keys, now)
        async with self.client.pipeline(transaction=False) as pipe:
            self._queue_loads(pipe, keys)
            take(await pipe.execute())

    async def view(self, keys: Sequence[str]) -> tuple[list[float], list[Health]]:
        """What a pick needs, from the view (no round trip) plus this router's own loads.

        Other routers' changes show after at most `refresh` seconds plus their write gap
        and two round trips; a view older than refresh + LATE is read first."""
        if self._down:
            return await self.local.view(keys)
        seen = self._seen
        now = time.monotonic()
        if now - self._seen_at > self.refresh + LATE or any(k not in seen for k in keys):
            await self._guard(lambda: self._look(keys), _none)
            if self._down:
                return await self.local.view(keys)
        watched = self._watched
        for key in keys:
            watched[key] = now
        rows = [seen.get(k, _UNSEEN) for k in keys]  # (all seen, unless Redis failed meanwhile)
        mine = await self.local.loads(keys)
        return [r[0] + m for r, m in zip(rows, mine, strict=True)], [r[1] for r in rows]

    def _change(self, key: str, change: Callable[[Health], Health]) -> None:
        """Apply this router's own health change to the view at once."""
        self._changes += 1
        self._changed[key] = self._changes
        self._changed_at[key] = time.monotonic()
        if key in self._seen:
            load, h = self._seen[key]
            self._seen[key] = (load, change(h))

    async def loads(self, keys: Sequence[str]) -> list[float]:
        async def remote() -> list[float]:
            return [u.window + u.reserved for u in await self._read(keys)]

        return await self._guard(remote, lambda: self.local.loads(keys))

    async def reserve(self, key: str, tokens: float) -> None:
        await self.local.reserve(key, tokens)
        self._later(("load", key), self._write_load(key))

    async def settle(self, key: str, reserved: float, used: float) -> None:
        await self.local.settle(key, reserved, used)
        self._later(("load", key), self._write_load(key))

    async def usage(self, key: str) -> Usage:
        async def remote() -> Usage:
            [usage] = await self._read([key])
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
            if not await self._scripts["probe"](keys=keys, args=[now, cooldown, HEALTH_TTL]):
                return False
            self._change(key, lambda h: breaker.take_probe(h, now, cooldown)[1])
            return True

        return await self._guard(remote, lambda: self.local.take_probe(key, now, cooldown))

    async def uncool(self, key: str) -> None:
        async def remote() -> None:
            health = self.k(key, "health")
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hset(health, mapping={"cooldown_until": "0", "rate_limited": "0"})
                pipe.expire(health, HEALTH_TTL)
                await pipe.execute()
            self._change(key, lambda h: replace(h, cooldown_until=0.0, rate_limited=False))

        await self.local.uncool(key)
        await self._guard(remote, lambda: self.local.uncool(key))

    async def free_probe(self, key: str, until: float, now: float) -> None:
        async def remote() -> None:
            await self._scripts["free"](keys=[self.k(key, "health")], args=[now, until])
            self._change(key, lambda h: _freed(h, until, now))

        await self.local.free_probe(key, until, now)
        await self._guard(remote, lambda: self.local.free_probe(key, until, now))

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
            h = _health(await self._scripts["record"](keys=keys, args=args))
            # A cooldown this router set may still wait in the write-behind queue.
            self._change(key, lambda mine: breaker.cool(h, mine.cooldown_until, mine.rate_limited))
            return self._seen[key][1] if key in self._seen else h

        def fill(pipe: Pipe) -> None:
            self._eval(pipe, "record", keys, args)

        local = await self.local.record(key, ok, now, threshold, cooldown, started)
        if ok:  # successes are the common case: written behind (the latest one is enough)
            self._change(key, lambda h: breaker.on_result(h, ok, now, threshold, cooldown, started))
            self._later(("success", key), fill)
            return local
        return await self._guard(remote, lambda: _value(local))

    async def cool(self, key: str, until: float, rate_limited: bool) -> None:
        ttl = max(HEALTH_TTL, int(until - self.clock()) + 60)
        args = [until, int(rate_limited), ttl]

        def fill(pipe: Pipe) -> None:
            self._eval(pipe, "cool", [self.k(key, "health")], args)

        await self.local.cool(key, until, rate_limited)
        self._change(key, lambda h: breaker.cool(h, until, rate_limited))
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
        def fill(pipe: Pipe) -> None:
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
                    pipe.eval(lua.RECENT, 1, self.k(key, "w"), now, WINDOW, span)
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
        def fill(pipe: Pipe) -> None:
            # EVAL with the source, not by SHA: a written-behind batch must not meet NOSCRIPT.
            # Queued under one name per EMA: samples a batch has not sent yet collapse to
            # the latest, which keeps an outage's queue bounded.
            pipe.eval(lua.EMA, 1, self.k(key, "ema"), value, alpha, SIGNAL_TTL)

        await self.local.sample(key, value, alpha)
        self._later(("ema", key), fill)

    async def sticky(self, key: str) -> str | None:
        async def remote() -> str | None:
            v = await self.client.get(self.k(key, "stick"))
            return v.decode() if isinstance(v, bytes) else v

        return await self._guard(remote, lambda: self.local.sticky(key))

    async def stick(self, key: str, value: str, ttl: float) -> None:
        def fill(pipe: Pipe) -> None:
            pipe.set(self.k(key, "stick"), value, px=max(1, int(ttl * 1000)))

        await self.local.stick(key, value, ttl)
        self._later(("stick", key), fill, urgent=True)  # the next turn may go to another router

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

        def fill(pipe: Pipe) -> None:
            pipe.zrem(self.k(key, "holds"), f"{hold}:{amount!r}")

        if amount is not None:
            self._later(("release", hold), fill)

    def _write_total(self, key: str) -> Fill:
        def fill(pipe: Pipe) -> None:
            amount, expires = self.local.total(key)
            if expires > time.time():  # the period has not ended
                spent = self.k(key, "spent")
                pipe.hset(spent, self._me, repr(amount))
                pipe.expireat(spent, math.ceil(expires))  # the same instant from every router

        return fill


def _freed(h: Health, until: float, now: float) -> Health:
    """The probe slot `until` marks given back (as the FREE script does)."""
    if h.breaker == "half-open" and abs(h.until - until) < 1e-3:
        return replace(h, until=now)
    return h


async def _value(v: T) -> T:
    return v


async def _none() -> None:
    return None
