"""The response cache: what an entry is, how requests are keyed, and the backend interface.

The proxy asks the cache once before routing and hands it the finished reply (see
`router.cache.layer`); backends (`memory`, `redis`) only keep entries.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import orjson

if TYPE_CHECKING:
    from router.config import Config

# Cached endpoints (paths after /v1), and the body fields that never change the reply.
PATHS = ("/chat/completions", "/completions", "/embeddings")
VOLATILE = frozenset({"stream", "stream_options", "user"})
_NOT_SEMANTIC = VOLATILE | {"messages"}


class Entry(NamedTuple):  # a tuple: one is made for every miss
    body: bytes  # the JSON reply a plain request gets (a stream's: the completion it added up to)
    provider: str  # where it came from, for the hit's headers
    model: str
    cost: float  # USD the original reply cost: what every hit saves


def encode(entry: Entry, compress: bool = False) -> bytes:
    """A metadata line, then the body (whose length is what `max_entry_bytes` bounds)."""
    meta = orjson.dumps({"provider": entry.provider, "model": entry.model, "cost": entry.cost})
    data = meta + b"\n" + entry.body
    return zlib.compress(data, 6) if compress else data


def decode(raw: bytes) -> Entry | None:
    """An entry from Redis, or None when it is not one (corrupt, truncated, foreign)."""
    try:
        data = zlib.decompress(raw)
        meta, _, body = data.partition(b"\n")
        m = orjson.loads(meta)
        orjson.loads(body)  # a body that does not parse must not reach a client
        return Entry(body, str(m["provider"]), str(m["model"]), float(m["cost"]))
    except (zlib.error, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def cache_key(
    path: str, group: str, scope: str, body: dict[str, Any], drop: frozenset[str] = VOLATILE
) -> str:
    """SHA-256 of the path, group, scope and the body as canonical JSON (sorted keys)
    without `stream`, `stream_options` and `user`: a streamed and a plain twin share it."""
    if not drop.isdisjoint(body):  # most bodies have none of them: no copy then
        body = {k: v for k, v in body.items() if k not in drop}
    h = hashlib.sha256(f"{path}\n{group}\n{scope}\n".encode())
    h.update(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
    return h.hexdigest()


def family_key(path: str, group: str, scope: str, body: dict[str, Any]) -> str:
    """The same without `messages`: semantic neighbours must agree on everything else."""
    return cache_key(path, group, scope, body, _NOT_SEMANTIC)


class Backend(Protocol):
    remote: bool  # writes are deferred until the reply is sent

    async def get(self, key: str, budget: float) -> Entry | None:
        """The entry, or None; never waits longer than `budget` seconds, never raises."""

    async def put(self, key: str, entry: Entry, shared: bytes | None = None) -> None:
        """Store for the TTL; `shared` is a semantic vector record for other routers."""

    async def size(self) -> int: ...

    async def start(self, on_vector: Callable[[bytes, float], None] | None) -> None:
        """Begin background work; `on_vector(record, stored_at)` for every shared vector."""

    async def close(self) -> None: ...


def open_backend(config: Config, clock: Callable[[], float] = time.time) -> Backend:
    c = config.cache
    if c.backend == "redis":
        from router.cache.redis import RedisCache  # redis is imported only when used

        return RedisCache(c.redis_url or config.state.redis_url, config.state.prefix, c.ttl, clock)
    from router.cache.memory import MemoryCache

    return MemoryCache(c.max_entries, c.ttl, clock)
