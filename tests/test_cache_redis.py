"""The Redis cache backend on a real redis-server: shared by routers, compressed, TTL'd, and
never a reason for a request to fail or wait."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from router.cache import decode
from tests.conftest import ALICE
from tests.fakes import RouterProcess, config_tree, status
from tests.redis_server import RedisServer

CHAT = "/v1/chat/completions"


def ask(text: str) -> dict[str, Any]:
    return {"model": "g", "messages": [{"role": "user", "content": text}]}


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"c-{request.node.name[:40]}-{time.time_ns()}"


def cache_tree(url: str, server: RedisServer, prefix: str, **cache: Any) -> dict[str, Any]:
    # The cache finds its Redis through state.redis_url (state itself stays in memory).
    state = {"backend": "memory", "redis_url": server.url, "prefix": prefix}
    return config_tree([url], state=state, cache={"backend": "redis", **cache})


def wait_for(check: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_two_router_processes_share_entries_and_semantic_neighbours(
    redis_server: RedisServer, prefix: str, fakes_thread: Any, tmp_path: Path
) -> None:
    fake, url, _ = fakes_thread
    tree = cache_tree(url, redis_server, prefix, ttl=120, semantic={"threshold": 0.9})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    a, b = (RouterProcess(["--config", str(path)], cwd=tmp_path) for _ in range(2))
    db = redis.Redis.from_url(redis_server.url)
    try:
        r = httpx.post(a.url + CHAT, json=ask("hello there"), headers=ALICE)
        assert r.headers["x-llm-router-cache"] == "miss"
        wait_for(lambda: db.zcard(f"{prefix}:cache:entries") == 1)
        r = httpx.post(b.url + CHAT, json=ask("hello there"), headers=ALICE)
        assert (
            r.headers["x-llm-router-cache"] == "hit" and r.headers["x-llm-router-model"] == "up-0"
        )
        assert len(fake.seen) == 1
        [key] = [k for k in db.scan_iter(f"{prefix}:cache:*") if len(k) > len(prefix) + 60]
        raw = db.get(key)
        assert raw is not None and raw[:1] == b"\x78"  # zlib: stored compressed
        assert decode(raw) is not None
        assert 0 < db.pttl(key) <= 120_000
        # A new entry on one router is found by the other's semantic index within 1 s.
        r = httpx.post(a.url + CHAT, json=ask("What is the capital of France?"), headers=ALICE)
        assert r.headers["x-llm-router-cache"] == "miss"
        time.sleep(1.0)
        r = httpx.post(b.url + CHAT, json=ask("what is the capital of france"), headers=ALICE)
        assert r.headers["x-llm-router-cache"] == "semantic", r.headers
        assert len(fake.seen) == 2
        stats = httpx.get(b.url + "/status", headers=ALICE).json()["cache"]
        assert stats["entries"] == 2 and stats["hits"] == 1 and stats["semantic_hits"] == 1
        keys = {k.decode() for k in db.scan_iter(f"{prefix}:*")}
        assert all(k.startswith(f"{prefix}:cache:") for k in keys)
        assert all(db.ttl(k) > 0 for k in keys if len(k) > len(prefix) + 60)
    finally:
        db.close()
        for r_ in (a, b):
            r_.stop()


async def test_a_corrupt_entry_is_a_miss_and_is_deleted(
    redis_server: RedisServer, prefix: str, fakes: Any, router: Any
) -> None:
    [(fake, url)] = await fakes(1)
    client = await router(tree=cache_tree(url, redis_server, prefix))
    db = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        r = await client.post(CHAT, json=ask("hi"), headers=ALICE)
        assert r.headers["x-llm-router-cache"] == "miss"
        for _ in range(500):
            keys = [k async for k in db.scan_iter(f"{prefix}:cache:*") if len(k) > 80]
            if keys:
                break
            await asyncio.sleep(0.02)
        [key] = keys
        await db.set(key, b"\x78\x9cnot really zlib")
        fake.script.append(status(400))  # the miss's own reply is not stored again
        r = await client.post(CHAT, json=ask("hi"), headers=ALICE)
        assert r.headers["x-llm-router-cache"] == "miss" and len(fake.seen) == 2
        assert await db.exists(key) == 0
    finally:
        await db.aclose()


async def test_a_dead_redis_makes_misses_not_errors(fakes: Any, router: Any) -> None:
    server = RedisServer()  # its own, since this one is killed
    [(fake, url)] = await fakes(1)
    client = await router(tree=cache_tree(url, server, "dead"))

    async def result() -> tuple[str, float]:
        began = time.monotonic()
        r = await client.post(CHAT, json=ask("hi"), headers=ALICE)
        assert r.status == 200
        await r.read()
        return r.headers["x-llm-router-cache"], time.monotonic() - began

    try:
        assert (await result())[0] == "miss"
        for _ in range(500):
            if (await result())[0] == "hit":
                break
            await asyncio.sleep(0.02)
        server.stop()
        outcomes = [await result() for _ in range(10)]
        assert [r for r, _ in outcomes] == ["miss"] * 10
        # Never a long wait on the dead Redis (250 ms at most; generous for a busy machine).
        assert max(s for _, s in outcomes) < 1.5
        server.start()
        found = False
        for _ in range(300):  # back after a second's pause: entries are written and read again
            if (await result())[0] == "hit":
                found = True
                break
            await asyncio.sleep(0.02)
        assert found
    finally:
        server.stop()


async def test_a_redis_that_never_answers_costs_a_request_at_most_its_budget() -> None:
    """A hung Redis (it accepts, then says nothing): the read gives up within the 250 ms."""
    from router.cache.redis import RedisCache

    done = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await done.wait()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cache = RedisCache(f"redis://127.0.0.1:{port}/0", "hung", 60)
    try:
        began = time.monotonic()
        assert await cache.get("k" * 64, 0.25) is None
        assert time.monotonic() - began < 1.0  # 0.25 s, with room for a busy machine
        began = time.monotonic()
        assert await cache.get("k" * 64, 0.25) is None  # then it stays away for a second
        assert time.monotonic() - began < 0.05
    finally:
        await cache.close()
        done.set()
        server.close()
        await server.wait_closed()
