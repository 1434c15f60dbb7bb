"""The semantic cache: conversations as vectors, and the in-process index that finds the
nearest stored one among entries whose other parameters are the same.

The built-in `hashing` embedder needs no model and no network: character 3-grams of the
lower-cased, whitespace-collapsed text, hashed into a fixed-size L2-normalised vector.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass
class _Family:
    keys: list[str]
    expires: list[float]
    vectors: Vector  # one row per key


class Index:
    """Vectors by family (the exact key without `messages`); the best match within one."""

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.time) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._families: dict[str, _Family] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, family: str, key: str, vector: Vector, expires: float) -> None:
        f = self._families.get(family)
        if f is None:
            self._families[family] = _Family([key], [expires], vector[None, :].copy())
            self._size += 1
        elif key in f.keys:
            i = f.keys.index(key)
            f.expires[i] = expires
            f.vectors[i] = vector
        elif f.vectors.shape[1] == vector.shape[0]:
            f.keys.append(key)
            f.expires.append(expires)
            f.vectors = np.vstack([f.vectors, vector])
            self._size += 1
        if self._size > self.max_entries:
            self._prune(self.clock(), oldest=True)

    def best(self, family: str, vector: Vector) -> tuple[str, float] | None:
        f = self._families.get(family)
        if f is None:
            return None
        if min(f.expires) <= self.clock():
            self._prune(self.clock())
            f = self._families.get(family)
            if f is None:
                return None
        if f.vectors.shape[1] != vector.shape[0]:
            return None
        sims = f.vectors @ vector
        i = int(np.argmax(sims))
        return f.keys[i], min(1.0, max(0.0, float(sims[i])))

    def drop(self, family: str, key: str) -> None:
        f = self._families.get(family)
        if f is not None and key in f.keys:
            self._remove(family, f, [f.keys.index(key)])

    def _prune(self, now: float, oldest: bool = False) -> None:
        for family, f in list(self._families.items()):
            gone = [i for i, t in enumerate(f.expires) if t <= now]
            if gone:
                self._remove(family, f, gone)
        while oldest and self._size > self.max_entries:
            family, f = min(self._families.items(), key=lambda kv: min(kv[1].expires))
            self._remove(family, f, [f.expires.index(min(f.expires))])

    def _remove(self, family: str, f: _Family, rows: list[int]) -> None:
        keep = [i for i in range(len(f.keys)) if i not in set(rows)]
        self._size -= len(f.keys) - len(keep)
        if not keep:
            del self._families[family]
            return
        f.keys = [f.keys[i] for i in keep]
        f.expires = [f.expires[i] for i in keep]
        f.vectors = f.vectors[keep]
