"""Routing signals shared through a real redis-server: round-robin turns and session
affinity across two router processes, latency EMAs across two state instances, and local
state standing in (never an error) while Redis is away."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from router.config import State
from router.state.redis import RedisState
from tests.conftest import ALICE
from tests.fakes import RouterProcess, config_tree, free_port
from tests.redis_server import RedisServer

CHAT = "/v1/chat/completions"


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"p-{request.node.name[:40]}-{time.time_ns()}"


def state(url: str, prefix: str) -> RedisState:
    return RedisState(State(backend="redis", redis_url=url, prefix=prefix), 0, time.time)


def two_routers(tmp: Path, tree: dict[str, Any]) -> list[RouterProcess]:
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    return [RouterProcess(["--config", str(path)], cwd=tmp) for _ in range(2)]


def test_round_robin_and_affinity_are_shared_by_two_routers(
    redis_server: RedisServer, prefix: str, fakes_thread: Any, tmp_path: Path
) -> None:
    _, url, _ = fakes_thread
    shared = {"backend": "redis", "redis_url": redis_server.url, "prefix": prefix}
    tree = config_tree([url], state=shared)
    tree["providers"][0]["api_keys"] = ["sk-0", "sk-1", "sk-2"]
    tree["groups"][0]["strategy"] = "round-robin"
    tree["groups"].append(
        {"name": "chat", "models": [{"provider": "p0", "name": "m"}], "affinity_ttl": 60}
    )
    routers = two_routers(tmp_path, tree)
    try:
        with httpx.Client(timeout=10) as client:

            def send(i: int, model: str, headers: dict[str, str] | None = None) -> str:
                r = client.post(
                    routers[i % 2].url + CHAT,
                    json={"model": model},
                    headers={**ALICE, **(headers or {})},
                )
                assert r.status_code == 200, r.text
                return r.headers["x-llm-router-key"]

            # Requests alternate between the routers; the turn is one counter in Redis.
            turns = [send(i, "g") for i in range(6)]
            session = {"x-llm-router-session": "conversation-7"}
            first = send(0, "chat", session)
            for i in range(1, 7):  # usage alone would move the other router elsewhere
                send(i, "chat")
                assert send(i, "chat", session) == first
        db = redis.Redis.from_url(redis_server.url)
        keys = {k.decode(): db.ttl(k) for k in db.scan_iter(f"{prefix}:*")}
        db.close()
    finally:
        for r in routers:
            r.stop()
    assert turns == ["p0#0", "p0#1", "p0#2"] * 2  # per-process counters: p0#0 twice first
    kinds = {k.rsplit(":", 1)[1] for k in keys}
    assert {"turn", "stick"} <= kinds
    assert all(ttl > 0 for ttl in keys.values()), keys


async def test_latency_emas_turns_and_sessions_are_shared(
    redis_server: RedisServer, prefix: str
) -> None:
    a, b = state(redis_server.url, prefix), state(redis_server.url, prefix)
    await a.start()
    await b.start()
    try:
        await a.sample("lat:t1", 100.0, 0.2)
        await a.flush()
        assert await b.latencies(["lat:t1", "lat:t2"]) == [100.0, None]
        await b.sample("lat:t1", 200.0, 0.2)
        await b.flush()
        assert await a.latencies(["lat:t1"]) == [pytest.approx(120.0)]
        assert [await a.turn("rr:g"), await b.turn("rr:g"), await a.turn("rr:g")] == [1, 2, 3]
        await a.stick("session:x", "p/k/m", 0.5)
        await a.flush()
        assert await b.sticky("session:x") == "p/k/m"
        time.sleep(0.6)
        assert await b.sticky("session:x") is None  # affinity_ttl after its last use
        # Prediction reads the rate of a key's window that every router counts into.
        now = time.time()
        assert (await a.take("rpm:k", 1, 10, now - 20)).entry  # out of the last 10 s
        assert (await a.take("rpm:k", 1, 10, now - 2)).entry
        assert (await b.take("rpm:k", 1, 10, now - 1)).entry
        [(total, recent, oldest)] = await b.recent(["rpm:k"], now, 10)
        assert (total, recent, oldest) == (3.0, 2.0, pytest.approx(now - 2))
        assert not a.degraded and not b.degraded
    finally:
        await a.close()
        await b.close()


async def test_without_redis_the_signals_fall_back_to_local_state() -> None:
    s = state(f"redis://127.0.0.1:{free_port()}/0", "down")  # nothing listens there
    await s.start()
    try:
        assert s.degraded
        assert [await s.turn("rr:g"), await s.turn("rr:g")] == [1, 2]
        await s.sample("lat:t", 50.0, 0.2)
        assert await s.latencies(["lat:t"]) == [50.0]
        await s.stick("session:y", "t", 60)
        assert await s.sticky("session:y") == "t"
        await s.hit("rpm:k", 1, time.time())
        [(total, recent, _)] = await s.recent(["rpm:k"], time.time(), 10)
        assert (total, recent) == (1.0, 1.0)
    finally:
        await s.close()


async def test_a_router_without_its_redis_still_routes_by_every_signal(
    fakes: Any, aiohttp_client: Any
) -> None:
    from router.app import create_app
    from router.config import parse

    [(_, url)] = await fakes(1)
    dead = {"backend": "redis", "redis_url": f"redis://127.0.0.1:{free_port()}/0"}
    tree = config_tree([url], state=dead)
    tree["groups"][0]["strategy"] = "round-robin"
    tree["groups"].append(
        {"name": "fast", "strategy": "lowest-latency", "models": [{"provider": "p0", "name": "m"}]}
    )
    client = await aiohttp_client(create_app(parse(tree, env={})))
    session = {**ALICE, "x-llm-router-session": "s"}
    keys = []
    for _ in range(4):
        r = await client.post(CHAT, json={"model": "g"}, headers=session)
        assert r.status == 200
        keys.append(r.headers["x-llm-router-key"])
        assert (await client.post(CHAT, json={"model": "fast"}, headers=ALICE)).status == 200
    assert keys == ["p0#0"] * 4  # the session kept, on local state
    keys = []
    for _ in range(4):
        r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
        keys.append(r.headers["x-llm-router-key"])
    # Turns go on, locally (the session's requests took turns 1 to 4 as well).
    assert keys == ["p0#0", "p0#1", "p0#0", "p0#1"]
