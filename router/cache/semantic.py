"""The semantic cache: conversations as vectors, and the in-process index that finds the
nearest stored one among entries whose other parameters are the same.

The built-in `hashing` embedder needs no model and no network: character 3-grams of the
lower-cased, whitespace-collapsed text, hashed into a fixed-size L2-normalised vector.
"""

from __future__ import annotations

import base64
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import orjson

from router import providers
from router.balancer import Target
from router.errors import RouterError, UpstreamError
from router.keys import LIVE, METRICS, UPSTREAMS
from router.payload import read_usage

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("router.cache")

DIM = 256
Vector = np.ndarray[Any, np.dtype[np.float32]]
# Odd multipliers for a rolling hash of three code points, in 64-bit arithmetic.
_MUL = np.array([0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D], dtype=np.uint64)


def hash_vector(text: str, dim: int = DIM) -> Vector:
    """Character 3-gram feature hashing: near-duplicate texts get nearly the same vector."""
    text = " ".join(text.lower().split())
    if len(text) < 3:
        text = text.ljust(3)
    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    h = points[:-2] * _MUL[0] + points[1:-1] * _MUL[1] + points[2:] * _MUL[2]
    h ^= h >> np.uint64(29)
    vec = np.bincount((h % np.uint64(dim)).astype(np.intp), minlength=dim).astype(np.float32)
    return vec / np.float32(np.linalg.norm(vec))


def conversation(messages: Any) -> str:
    """The roles and text of every message, one per line: what the semantic cache compares."""
    lines = []
    for m in messages if isinstance(messages, list) else [messages]:
        if isinstance(m, dict):
            lines.append(f"{m.get('role', '')}: {_text(m.get('content'))}")
        else:
            lines.append(_text(m))
    return "\n".join(lines)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # content parts
        return " ".join(t for t in map(_text, value) if t)
    if isinstance(value, dict):
        return _text(value.get("text", ""))
    return ""


class Embedder(Protocol):
    async def embed(self, app: web.Application, text: str) -> Vector | None: ...


class HashingEmbedder:
    async def embed(self, app: web.Application, text: str) -> Vector | None:
        return hash_vector(text)


class GroupEmbedder:
    """Embeds through a group of the router itself: the balancer picks, the usage counts.

    The spend is the router's own, so it is accounted to the targets (tokens, cost in
    metrics under the client name `cache`) and to no client's limits.
    """

    def __init__(self, group: str) -> None:
        self.group = group

    async def embed(self, app: web.Application, text: str) -> Vector | None:
        runtime = app[LIVE].runtime
        balancer, metrics = runtime.balancer, app[METRICS]
        body = {"model": self.group, "input": text, "encoding_format": "float"}
        try:  # (only targets whose API has embeddings: not Anthropic's)
            targets = providers.serving(balancer.targets(self.group), "/embeddings", body)
        except RouterError:  # gone in a reload (the cache keeps its config until a restart)
            return None
        reserve = len(text) / 4
        tried: list[Target] = []
        for _ in range(runtime.config.retry.attempts):
            picked = balancer.clock()
            target, _blocked = await balancer.pick(targets, reserve, tried)
            if target is None:
                return None
            tried.append(target)
            metrics.attempt_started(target)
            began, used, failed = time.perf_counter(), 0.0, True
            try:
                raw = orjson.dumps({**body, "model": target.model.name})
                reply = await app[UPSTREAMS][target.provider.type].send(
                    target, "/embeddings", raw, False, {}
                )
                data = await reply.read()
                reply.close()
                if reply.status != 200:
                    failed = reply.status >= 500 or reply.status == 429
                    continue
                tokens = read_usage(data)
                used = float(tokens.total) if tokens else reserve
                failed = False
                if tokens is not None:
                    metrics.tokens(target, "cache", tokens.prompt, 0, target.cost(tokens))
                return _vector(orjson.loads(data))
            except (UpstreamError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                log.debug("cache embedder %s failed: %s", target.describe(), exc)
            finally:
                health = await balancer.finish(target, reserve, used, failed, picked)
                metrics.attempt_done(target, failed, time.perf_counter() - began, health)
        return None


def _vector(reply: dict[str, Any]) -> Vector:
    emb = reply["data"][0]["embedding"]
    if isinstance(emb, str):
        vec = np.frombuffer(base64.b64decode(emb), dtype=np.float32).copy()
    else:
        vec = np.asarray(emb, dtype=np.float32)
    norm = float(np.linalg.norm(vec))
    return vec / np.float32(norm) if norm else vec


def open_embedder(name: str) -> Embedder:
    return HashingEmbedder() if name == "hashing" else GroupEmbedder(name)


class Semantic:
    """The cache's semantic side: embeds conversations, keeps the index, and packs vectors
    into records other routers read (key, family, then float32 components)."""

    def __init__(
        self, embedder: str, threshold: float, max_entries: int, ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.embedder = open_embedder(embedder)
        self.threshold = threshold
        self.ttl = ttl
        self.clock = clock
        self.index = Index(max_entries, clock)

    async def vector(self, app: web.Application, messages: Any) -> Vector | None:
        return await self.embedder.embed(app, conversation(messages))

    def nearest(self, family: str, vector: Vector) -> tuple[str, float] | None:
        """The most similar entry's key and similarity, when it reaches the threshold."""
        best = self.index.best(family, vector)
        return best if best is not None and best[1] >= self.threshold else None

    def forget(self, family: str, key: str) -> None:
        self.index.drop(family, key)

    def add(self, family: str, key: str, vector: Vector) -> bytes:
        """Index a stored entry; the record for other routers."""
        self.index.add(family, key, vector, self.clock() + self.ttl)
        return key.encode() + family.encode() + vector.astype(np.float32).tobytes()

    def shared(self, record: bytes, stored: float) -> None:
        """A record from the backend (another router's, or our own)."""
        key, family = record[:64].decode(), record[64:128].decode()
        vector = np.frombuffer(record[128:], dtype=np.float32).copy()
        self.index.add(family, key, vector, stored + self.ttl)


class _Family:
    """One family's vectors as rows of a matrix that grows by doubling."""

    __slots__ = ("keys", "rows", "expires", "vectors")

    def __init__(self, dim: int) -> None:
        self.keys: list[str] = []  # row -> key
        self.rows: dict[str, int] = {}  # key -> row
        self.expires = np.empty(8, dtype=np.float64)
        self.vectors: Vector = np.empty((8, dim), dtype=np.float32)

    def put(self, key: str, vector: Vector, expires: float) -> None:
        i = self.rows.get(key)
        if i is None:
            i = len(self.keys)
            if i == len(self.expires):
                self.expires = np.resize(self.expires, 2 * i)
                self.vectors = np.concatenate([self.vectors, np.empty_like(self.vectors)])
            self.keys.append(key)
            self.rows[key] = i
        self.expires[i] = expires
        self.vectors[i] = vector

    def remove(self, key: str) -> None:
        """The last row takes the removed one's place."""
        i = self.rows.pop(key)
        last = len(self.keys) - 1
        if i != last:
            moved = self.keys[i] = self.keys[last]
            self.rows[moved] = i
            self.expires[i] = self.expires[last]
            self.vectors[i] = self.vectors[last]
        self.keys.pop()


class Index:
    """Vectors by family (the exact key without `messages`); the best match within one.

    At most `max_entries` vectors: the oldest added go first; expired ones are dropped
    when their family is searched.
    """

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.time) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._families: dict[str, _Family] = {}
        self._order: OrderedDict[str, str] = OrderedDict()  # key -> family, oldest first

    def __len__(self) -> int:
        return len(self._order)

    def add(self, family: str, key: str, vector: Vector, expires: float) -> None:
        f = self._families.get(family)
        if f is None:
            f = self._families[family] = _Family(vector.shape[0])
        elif f.vectors.shape[1] != vector.shape[0]:
            return  # another embedder's vectors (a changed config): not comparable
        f.put(key, vector, expires)
        self._order[key] = family
        while len(self._order) > self.max_entries:
            old, old_family = self._order.popitem(last=False)
            self._remove(old_family, old)

    def best(self, family: str, vector: Vector) -> tuple[str, float] | None:
        f = self._families.get(family)
        if f is None or f.vectors.shape[1] != vector.shape[0]:
            return None
        n = len(f.keys)
        expired = np.flatnonzero(f.expires[:n] <= self.clock())
        for key in [f.keys[i] for i in expired]:
            self.drop(family, key)
        if family not in self._families:
            return None
        sims = f.vectors[: len(f.keys)] @ vector
        i = int(np.argmax(sims))
        return f.keys[i], min(1.0, max(0.0, float(sims[i])))

    def drop(self, family: str, key: str) -> None:
        if (stored := self._order.pop(key, None)) is not None:
            self._remove(stored, key)

    def _remove(self, family: str, key: str) -> None:
        f = self._families[family]
        f.remove(key)
        if not f.keys:
            del self._families[family]
