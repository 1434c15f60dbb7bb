"""The cache as the proxy sees it: asked once before routing (`lookup`), handed the finished
reply (`reply`), and told when the request is over, however it ended.

lookup: bypass? -> exact entry -> semantic neighbour -> an identical request in flight
(wait for it; if it fails, start over) -> a miss, which leads the next identical ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import orjson
from aiohttp import web
from prometheus_client.core import CounterMetricFamily, Metric

from router.cache import PATHS, Backend, Entry, cache_key, encode, family_key, open_backend
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
RESULTS = ("hit", "semantic", "coalesced", "miss", "bypass")
Mode = Literal["read", "refresh", "bypass"]


@dataclass
class Ticket:
    """One request's dealings with the cache, from lookup to the end of its reply."""

    key: str
    family: str | None  # semantic: the key without `messages`
    call: Call
    vector: Vector | None = None
    flight: asyncio.Future[Entry | None] | None = None  # set while it leads identical ones
    assembler: Assembler | None = None
    entry: Entry | None = None  # what the reply came to, when it is storable


@dataclass
class Stats:
    requests: dict[tuple[str, str], int] = field(default_factory=dict)  # (group, result)
    saved: dict[str, float] = field(default_factory=dict)  # group -> USD

    def count(self, group: str, result: str, saved: float = 0.0) -> None:
        key = (group, result)
        self.requests[key] = self.requests.get(key, 0) + 1
        if saved or group not in self.saved:
            self.saved[group] = self.saved.get(group, 0.0) + saved

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
    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        self.config = config.cache
        self.clock = clock
        self.backend: Backend = open_backend(config, clock)
        groups = self.config.groups
        self.groups = None if "*" in groups else frozenset(groups)
        self.semantic: Semantic | None = None
        if (s := self.config.semantic) is not None:
            from router.cache.semantic import Semantic  # numpy is loaded only when used

            self.semantic = Semantic(s.embedder, s.threshold, self.config.max_entries,
                                     self.config.ttl, clock)  # fmt: skip
        self.flights: dict[str, asyncio.Future[Entry | None]] = {}
        self.stats = Stats()
        self._writes: set[asyncio.Task[None]] = set()

    # -- the proxy's two calls ------------------------------------------------------

    async def lookup(self, request: web.Request, call: Call) -> web.StreamResponse | None:
        """An answer from the cache, or None to route the request (as a miss or bypass)."""
        if call.path not in PATHS or (self.groups is not None and call.group not in self.groups):
            return None
        mode = _mode(request.headers)
        if mode == "bypass":
            self._result(request, call, "bypass")
            return None
        scope = call.client if self.config.scope == "client" else "*"
        key = cache_key(call.path, call.group, scope, call.body)
        semantic = self.semantic is not None and call.path == "/chat/completions"
        family = family_key(call.path, call.group, scope, call.body) if semantic else None
        ticket = Ticket(key, family, call)
        deadline = time.monotonic() + BUDGET
        while mode == "read":
            entry = await self.backend.get(key, deadline - time.monotonic())
            if entry is not None:
                return self._answer(request, call, entry, "hit")
            if family is not None:
                found = await self._similar(request.app, ticket, deadline)
                if found is not None:
                    return self._answer(request, call, found[0], "semantic", found[1])
            flight = self.flights.get(key) if self.config.coalesce else None
            if flight is None:
                break
            entry = await asyncio.shield(flight)
            if entry is not None:
                return self._answer(request, call, entry, "coalesced")
            # The first one ended without a storable reply: go on as if just arrived.
        if self.config.coalesce and key not in self.flights:
            ticket.flight = self.flights[key] = asyncio.get_running_loop().create_future()
        if call.stream and call.path != "/embeddings":
            ticket.assembler = Assembler(chat=call.path == "/chat/completions")
            call.tee = ticket.assembler.feed
        self._result(request, call, "miss")
        request[TICKET] = ticket
        task = asyncio.current_task()
        if task is not None:  # the request's own task: it ends once the reply is sent
            task.add_done_callback(lambda _: self._release(request.app, ticket))
        return None

    async def reply(self, request: web.Request, response: web.StreamResponse) -> None:
        """The finished reply of a miss: what it came to, for the waiting ones and to store."""
        ticket = request.get(TICKET)
        if ticket is None or response.status != 200 or ticket.call.target is None:
            return
        entry = self._entry(ticket, response)
        if entry is None:
            return
        ticket.entry = entry
        if ticket.flight is not None and not ticket.flight.done():
            ticket.flight.set_result(entry)  # the waiting ones are answered at once
        if not self.backend.remote and (ticket.family is None or ticket.vector is not None):
            await self._store(request.app, ticket)  # memory: in place, nothing to wait for
            ticket.entry = None

    # -- answers --------------------------------------------------------------------

    def _answer(
        self,
        request: web.Request,
        call: Call,
        entry: Entry,
        result: str,
        similarity: float | None = None,
    ) -> web.Response:
        self._result(request, call, result, entry.cost)
        headers = {
            "x-llm-router-provider": entry.provider,
            "x-llm-router-model": entry.model,
            "x-llm-router-attempts": "0",
            "x-llm-router-cache": result,
        }
        if similarity is not None:
            headers["x-llm-router-cache-similarity"] = f"{similarity:.4f}"
        if call.stream and call.path != "/embeddings":
            headers["Content-Type"] = "text/event-stream"
            headers["Cache-Control"] = "no-cache"
            body = replay(orjson.loads(entry.body), wants_usage(call.body))
            return web.Response(body=body, headers=headers)
        headers["Content-Type"] = "application/json"
        headers["x-llm-router-cost"] = "0.000000"
        return web.Response(body=entry.body, headers=headers)

    def _result(self, request: web.Request, call: Call, result: str, saved: float = 0.0) -> None:
        request[RESULT] = result
        self.stats.count(call.group, result, saved)

    # -- semantic -------------------------------------------------------------------

    async def _vector(self, app: web.Application, ticket: Ticket) -> Vector | None:
        if ticket.vector is None and self.semantic is not None:
            ticket.vector = await self.semantic.vector(app, ticket.call.body.get("messages"))
        return ticket.vector

    async def _similar(
        self, app: web.Application, ticket: Ticket, deadline: float
    ) -> tuple[Entry, float] | None:
        assert ticket.family is not None and self.semantic is not None
        vector = await self._vector(app, ticket)
        found = self.semantic.nearest(ticket.family, vector) if vector is not None else None
        if found is None:
            return None
        entry = await self.backend.get(found[0], deadline - time.monotonic())
        if entry is None:  # expired or evicted since it was indexed
            self.semantic.forget(ticket.family, found[0])
            return None
        return entry, found[1]

    # -- storing --------------------------------------------------------------------

    def _entry(self, ticket: Ticket, response: web.StreamResponse) -> Entry | None:
        call = ticket.call
        assert call.target is not None
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
            if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
                return None
            body = response.body
            try:
                obj = orjson.loads(body)
            except orjson.JSONDecodeError:
                return None
            if not isinstance(obj, dict) or obj.get("error") is not None:
                return None
        return Entry(body, call.target.provider.name, call.target.model.name, call.cost)

    def _release(self, app: web.Application, ticket: Ticket) -> None:
        """The request is over (answered, failed or abandoned): free the waiting ones, store."""
        flight = ticket.flight
        if flight is not None:
            if not flight.done():
                flight.set_result(None)  # each waiter goes on as if it had just arrived
            if self.flights.get(ticket.key) is flight:
                del self.flights[ticket.key]
        if ticket.entry is not None:
            task = asyncio.create_task(self._store(app, ticket), name="cache-write")
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _store(self, app: web.Application, ticket: Ticket) -> None:
        entry = ticket.entry
        if entry is None or len(encode(entry)) > self.config.max_entry_bytes:
            return
        shared = None
        if ticket.family is not None and self.semantic is not None:
            vector = await self._vector(app, ticket)
            if vector is not None:
                shared = self.semantic.add(ticket.family, ticket.key, vector)
        await self.backend.put(ticket.key, entry, shared)

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


TICKET = web.RequestKey("cache_ticket", Ticket)
RESULT = web.RequestKey("cache_result", str)  # hit, semantic, coalesced, miss or bypass
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
    cache = app[CACHE] = Cache(config, clock)
    app[METRICS].registry.register(_Collector(cache.stats))
    app.cleanup_ctx.append(cache.context)

    async def mark(request: web.Request, response: web.StreamResponse) -> None:
        result = request.get(RESULT)
        if result is not None:  # every reply of a cached path of a cached group says which
            response.headers.setdefault("x-llm-router-cache", result)

    app.on_response_prepare.append(mark)
