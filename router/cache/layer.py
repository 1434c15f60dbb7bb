"""The cache as the proxy sees it: asked once before routing (`lookup`) and handed the
finished reply (`reply`).

lookup: bypass? -> exact entry -> semantic neighbour -> an identical request in flight
(wait for it; if it ends without a storable reply, start over) -> a miss, which leads the
next identical ones. Waiters watch the first request's own task, so however it ends
(error, broken stream, its client gone) they go on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import orjson
from aiohttp import web
from prometheus_client.core import CounterMetricFamily, Metric

from router.cache import PATHS, Backend, Entry, cache_key, family_key, open_backend
from router.cache.memory import MemoryCache
from router.cache.replay import Assembler, replay
from router.config import Config
from router.errors import BadRequest
from router.keys import METRICS
from router.payload import wants_usage

if TYPE_CHECKING:
    from router.cache.semantic import Semantic, Vector
    from router.proxy import Call

log = logging.getLogger("router.cache")

BUDGET = 0.25  # seconds a request may wait on the cache's Redis, in total
Mode = Literal["read", "refresh", "bypass"]


@dataclass(slots=True)
class Flight:
    """A miss in progress that identical requests wait for instead of calling upstream."""

    leader: asyncio.Task[Any]  # the first request's own task: done once its reply is sent
    entry: Entry | None = None  # what its reply came to, once it is complete
    reply: asyncio.Future[None] | None = None  # made by the first one to wait, set with entry


@dataclass(slots=True)
class Ticket:
    """One request's dealings with the cache, from lookup to the end of its reply."""

    key: str
    family: str | None  # semantic: the key without `messages`
    group: str
    messages: Any = None  # semantic: what is embedded
    result: str = "miss"  # hit, semantic, coalesced, miss or bypass: what answered it
    vector: Vector | None = None
    # Whether it leads identical ones. (Not the Flight itself: that holds the request's
    # task, whose result leads back to this ticket; a cycle per miss for the collector.)
    leads: bool = False
    assembler: Assembler | None = None


@dataclass
class Stats:
    requests: dict[tuple[str, str], int] = field(default_factory=dict)  # (group, result)
    saved: dict[str, float] = field(default_factory=dict)  # group -> USD

    def total(self, result: str) -> int:
        return sum(n for (_, r), n in self.requests.items() if r == result)

    def collect(self) -> Iterator[Metric]:
        for name, doc, labels, values in (
            ("llm_router_cache_requests", "Requests on cached paths, by the result that "
             "answered them.", ["group", "result"], self.requests),
            ("llm_router_cache_saved_usd", "What the replies answered from the cache had "
             "cost upstream, in USD.", ["group"], self.saved),
        ):  # fmt: skip
            family = CounterMetricFamily(name, doc, labels=labels)
            for key, value in values.items():
                family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
            yield family


class Cache:
    def __init__(
        self, app: web.Application, config: Config, clock: Callable[[], float] = time.time
    ) -> None:
        self.app = app  # a group embedder calls through the app's own router
        self.config = config.cache
        self.clock = clock
        self.backend: Backend = open_backend(config, clock)
        # The memory backend is called directly: no coroutine per lookup and store.
        self.local = self.backend if isinstance(self.backend, MemoryCache) else None
        groups = self.config.groups
        self.groups = None if "*" in groups else frozenset(groups)
        self.semantic: Semantic | None = None
        if (s := self.config.semantic) is not None:
            from router.cache.semantic import Semantic  # numpy is loaded only when used

            self.semantic = Semantic(s.embedder, s.threshold, self.config.max_entries,
                                     self.config.ttl, clock)  # fmt: skip
        self.flights: dict[str, Flight] = {}
        self.stats = Stats()
        self._writes: set[asyncio.Task[None]] = set()

    # -- the proxy's two calls ------------------------------------------------------

    async def lookup(self, request: web.Request, call: Call) -> web.StreamResponse | None:
        """An answer from the cache, or None to route the request (as a miss or bypass)."""
        if call.path not in PATHS or (self.groups is not None and call.group not in self.groups):
            return None
        headers = request.headers
        mode: Mode = "read"
        if "x-llm-router-cache" in headers or "Cache-Control" in headers:
            mode = _mode(headers)
        if mode == "bypass":
            call.cache = Ticket("", None, call.group)
            self._count(call.cache, "bypass")
            return None
        scope = call.client if self.config.scope == "client" else "*"
        key = cache_key(call.path, call.group, scope, call.body)
        semantic = self.semantic is not None and call.path == "/chat/completions"
        family = family_key(call.path, call.group, scope, call.body) if semantic else None
        # (A ticket never points back at its call: no cycle for the garbage collector.)
        ticket = call.cache = Ticket(key, family, call.group)
        if semantic:
            ticket.messages = call.body.get("messages")
        deadline = time.monotonic() + BUDGET if self.local is None else 0.0
        coalesce = self.config.coalesce
        while mode == "read":
            if self.local is not None:
                entry = self.local.get_now(key)
            else:
                entry = await self.backend.get(key, deadline - time.monotonic())
            if entry is not None:
                return self._answer(call, ticket, entry, "hit")
            if family is not None:
                found = await self._similar(ticket, deadline)
                if found is not None:
                    return self._answer(call, ticket, found[0], "semantic", found[1])
            if not coalesce or key not in self.flights:
                break
            entry = await self._wait(key)
            if entry is not None:
                return self._answer(call, ticket, entry, "coalesced")
            # The first one ended without a storable reply: go on as if just arrived.
        task = asyncio.current_task()
        if coalesce and task is not None and self._flight(key) is None:
            if len(self.flights) >= 64:  # forget the ones that ended badly and were not asked for
                for k in [k for k, f in self.flights.items() if f.leader.done()]:
                    del self.flights[k]
            self.flights[key] = Flight(task)
            ticket.leads = True
        if call.stream and call.path != "/embeddings":
            ticket.assembler = Assembler(chat=call.path == "/chat/completions")
            call.tee = ticket.assembler.feed
        self._count(ticket, "miss")
        return None

    async def _wait(self, key: str) -> Entry | None:
        """Wait for the identical request in flight; its entry, or None if it had none."""
        flight = self._flight(key)
        if flight is None or flight.entry is not None:
            return flight.entry if flight is not None else None
        if flight.reply is None:
            flight.reply = asyncio.get_running_loop().create_future()
        # Waiting does not cancel the first one if this client leaves.
        await asyncio.wait((flight.reply, flight.leader), return_when=FIRST_COMPLETED)
        return flight.entry

    def _flight(self, key: str) -> Flight | None:
        """The identical request in flight, if there is one still going."""
        flight = self.flights.get(key)
        if flight is not None and flight.leader.done() and flight.entry is None:
            del self.flights[key]  # it ended without a storable reply
            return None
        return flight

    async def reply(self, call: Call, response: web.StreamResponse) -> None:
        """The finished reply of a miss: what it came to, for the waiting ones and to store."""
        ticket = call.cache
        if ticket is None or ticket.result != "miss" or response.status != 200:
            return
        entry = self._entry(call, ticket, response)
        if entry is None:
            return
        flight = self.flights.get(ticket.key) if ticket.leads else None
        if flight is not None:
            flight.entry = entry
            if flight.reply is not None:
                flight.reply.set_result(None)  # the waiting ones are answered at once
        if len(entry.body) > self.config.max_entry_bytes:
            self._landed(ticket, entry)
            return
        if ticket.family is None and self.local is not None:
            self.local.put_now(ticket.key, entry)  # memory: in place, nothing to wait for
            self._landed(ticket, entry)
            return
        task = asyncio.current_task()
        if task is not None:  # Redis, or a vector to make: once the reply has been sent
            task.add_done_callback(lambda _: self._later(ticket, entry))

    # -- answers --------------------------------------------------------------------

    def _answer(
        self, call: Call, ticket: Ticket, entry: Entry, result: str, sim: float | None = None
    ) -> web.Response:
        self._count(ticket, result, entry.cost)
        headers = {
            "x-llm-router-provider": entry.provider,
            "x-llm-router-model": entry.model,
            "x-llm-router-attempts": "0",
            "x-llm-router-cache": result,
        }
        if sim is not None:
            headers["x-llm-router-cache-similarity"] = f"{sim:.4f}"
        if call.stream and call.path != "/embeddings":
            headers["Content-Type"] = "text/event-stream"
            headers["Cache-Control"] = "no-cache"
            body = replay(orjson.loads(entry.body), wants_usage(call.body))
            return web.Response(body=body, headers=headers)
        headers["Content-Type"] = "application/json"
        headers["x-llm-router-cost"] = "0.000000"
        return web.Response(body=entry.body, headers=headers)

    def _count(self, ticket: Ticket, result: str, saved: float = 0.0) -> None:
        ticket.result = result
        group, stats = ticket.group, self.stats
        key = (group, result)
        stats.requests[key] = stats.requests.get(key, 0) + 1
        if saved or group not in stats.saved:  # a series from the first request, at 0
            stats.saved[group] = stats.saved.get(group, 0.0) + saved

    # -- semantic -------------------------------------------------------------------

    async def _vector(self, ticket: Ticket) -> Vector | None:
        if ticket.vector is None and self.semantic is not None:
            ticket.vector = await self.semantic.vector(self.app, ticket.messages)
        return ticket.vector

    async def _similar(self, ticket: Ticket, deadline: float) -> tuple[Entry, float] | None:
        assert ticket.family is not None and self.semantic is not None
        vector = await self._vector(ticket)
        found = self.semantic.nearest(ticket.family, vector) if vector is not None else None
        if found is None:
            return None
        if self.local is not None:
            entry = self.local.get_now(found[0])
        else:
            entry = await self.backend.get(found[0], deadline - time.monotonic())
        if entry is None:  # expired or evicted since it was indexed
            self.semantic.forget(ticket.family, found[0])
            return None
        return entry, found[1]

    # -- storing --------------------------------------------------------------------

    def _entry(self, call: Call, ticket: Ticket, response: web.StreamResponse) -> Entry | None:
        if ticket.assembler is not None:
            a = ticket.assembler
            if not a.done or a.broken or call.stream_error:
                return None
            usage = None
            if call.tokens is not None:
                t = call.tokens
                usage = {"prompt_tokens": t.prompt, "completion_tokens": t.completion,
                         "total_tokens": t.total}  # fmt: skip
            body = orjson.dumps(a.completion(usage))
        else:
            raw = response.body if isinstance(response, web.Response) else None
            if not isinstance(raw, bytes) or not _completion(raw):
                return None
            body = raw
        target = call.target
        assert target is not None
        return Entry(body, target.provider.name, target.model.name, call.cost)

    def _landed(self, ticket: Ticket, entry: Entry) -> None:
        """Stored (or not storable): later identical requests no longer need to wait."""
        flight = self.flights.get(ticket.key)
        if flight is not None and flight.entry is entry:  # ours, not a newer one's
            del self.flights[ticket.key]

    def _later(self, ticket: Ticket, entry: Entry) -> None:
        task = asyncio.create_task(self._store(ticket, entry), name="cache-write")
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _store(self, ticket: Ticket, entry: Entry) -> None:
        shared = None
        if ticket.family is not None and self.semantic is not None:
            vector = await self._vector(ticket)
            if vector is not None:
                shared = self.semantic.add(ticket.family, ticket.key, vector)
        try:
            await self.backend.put(ticket.key, entry, shared)
        finally:
            self._landed(ticket, entry)

    # -- observability and lifetime -------------------------------------------------

    async def status(self) -> dict[str, Any]:
        s = self.stats
        return {
            "backend": self.config.backend,
            "entries": await self.backend.size(),
            "hits": s.total("hit"),
            "semantic_hits": s.total("semantic"),
            "misses": s.total("miss"),
            "coalesced": s.total("coalesced"),
            "bypass": s.total("bypass"),
            "saved_usd": round(sum(s.saved.values()), 6),
        }

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        await self.backend.start(self.semantic.shared if self.semantic else None)
        try:
            yield
        finally:
            if self._writes:
                await asyncio.wait(self._writes, timeout=5)
            await self.backend.close()


def _completion(body: bytes) -> bool:
    """A 200 body that is a reply, not an error: a JSON object without an `error`."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and obj.get("error") is None


def _mode(headers: Mapping[str, str]) -> Mode:
    """`x-llm-router-cache: bypass|refresh`, or Cache-Control's no-store / no-cache."""
    mode: Mode = "read"
    value = headers.get("x-llm-router-cache")
    if value is not None:
        v = value.strip().lower()
        if v == "bypass":
            return "bypass"
        if v != "refresh":
            raise BadRequest(
                f"Invalid x-llm-router-cache header {value!r}: use bypass or refresh.",
                param="x-llm-router-cache",
                code="invalid_value",
            )
        mode = "refresh"
    control = headers.get("Cache-Control")
    if control:
        directives = {d.split("=", 1)[0].strip().lower() for d in control.split(",")}
        if "no-store" in directives:  # no-store wins over no-cache
            return "bypass"
        if "no-cache" in directives:
            mode = "refresh"
    return mode


CACHE = web.AppKey("cache", Cache)


class _Collector:
    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        return self.stats.collect()


def setup(app: web.Application, config: Config, clock: Callable[[], float] = time.time) -> None:
    """Give the app its cache (when configured): metrics, the reply header, its lifetime."""
    if config.cache.backend == "none":
        return
    cache = app[CACHE] = Cache(app, config, clock)
    app[METRICS].registry.register(_Collector(cache.stats))
    app.cleanup_ctx.append(cache.context)
