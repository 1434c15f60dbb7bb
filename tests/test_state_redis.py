"""Shared state on a real redis-server: atomic limits, expiring reservations, TTLs on every key,
two routers as one, and a Redis outage that never hangs a request."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from router.app import create_app
from router.breaker import Health
from router.config import State, parse
from router.keys import STATE
from router.state.redis import RedisState
from tests.conftest import ALICE
from tests.fakes import RouterProcess, config_tree, status
from tests.redis_server import RedisClusterServer, RedisServer

CHAT = "/v1/chat/completions"


Server = RedisServer | RedisClusterServer


def state(server: Server, prefix: str, hold: float = 60.0) -> RedisState:
    cfg = State(backend="redis", redis_url=server.url, prefix=prefix, cluster=server.cluster)
    return RedisState(cfg, 0, time.time, hold)


def sync_client(server: Server) -> redis.Redis | redis.RedisCluster:
    """A plain client to look at what the routers stored."""
    if server.cluster:
        return redis.RedisCluster.from_url(server.url)
    return redis.Redis.from_url(server.url)


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    name = request.node.name.translate(str.maketrans("[]", "--"))  # no glob characters
    return f"t-{name[:40]}-{time.time_ns()}"


async def test_reservations_count_and_expire_on_their_own(
    shared_redis: Server, prefix: str
) -> None:
    a = state(shared_redis, prefix, hold=1.5)
    b = state(shared_redis, prefix, hold=1.5)
    await a.start()
    await b.start()
    await a.reserve("t1", 100)
    await a.flush()  # writes that need no answer go out in the background
    assert await b.loads(["t1", "t2"]) == [100.0, 0.0]  # the other router sees it
    await a.settle("t1", 100, 42)
    await a.flush()
    assert await b.loads(["t1"]) == [42.0]
    # A router that dies holding a reservation: it is gone after `hold` seconds.
    await a.reserve("t1", 1000)
    await a.flush()
    assert await b.loads(["t1"]) == [1042.0]
    await asyncio.sleep(2.0)
    assert await b.loads(["t1"]) == [42.0]
    await a.close()
    await b.close()


async def test_two_instances_never_both_take_the_last_unit(
    shared_redis: Server, prefix: str
) -> None:
    a, b = state(shared_redis, prefix), state(shared_redis, prefix)
    await a.start()
    await b.start()
    # On a loaded machine 40 calls at once can pass the call timeout; a take that fell back
    # to local state proves nothing about Redis, so such a round is run again, on a new key.
    for attempt in range(5):
        now = time.time()
        await asyncio.gather(*(s.take("rpm:warm", 1, 1e6, now) for _ in range(20) for s in (a, b)))
        results = await asyncio.gather(
            *(s.take(f"rpm:k{attempt}", 1, 10, now) for _ in range(20) for s in (a, b))
        )
        if not a.degraded and not b.degraded:
            break
        deadline = time.monotonic() + 10
        while a.degraded or b.degraded:
            assert time.monotonic() < deadline, "Redis never came back"
            await asyncio.sleep(0.1)
    else:
        raise AssertionError("no round without a Redis timeout in 5 tries")
    assert sum(r.entry is not None for r in results) == 10
    assert all(r.entry or r.until == pytest.approx(now + 60, abs=1) for r in results)
    await a.close()
    await b.close()


async def test_one_half_open_probe_across_instances(shared_redis: Server, prefix: str) -> None:
    a, b = state(shared_redis, prefix), state(shared_redis, prefix)
    await a.start()
    await b.start()
    now = time.time()
    h = await a.record("t", False, now, 1, 10)
    assert h.breaker == "open"
    assert (await b.health(["t"]))[0].breaker == "open"
    later = now + 11
    grants = await asyncio.gather(
        *(s.take_probe("t", later, 10) for _ in range(10) for s in (a, b))
    )
    assert grants.count(True) == 1
    h = await b.record("t", True, later, 1, 10)
    assert h.breaker == "closed"
    await a.close()
    await b.close()


async def test_every_key_has_a_ttl_after_a_run(
    shared_redis: Server, prefix: str, fakes: Any, aiohttp_client: Any
) -> None:
    [(fake, url)] = await fakes(1)
    tree = config_tree([url], usage_window=60, state=shared_redis.state(prefix))
    tree["providers"][0]["api_keys"] = [{"key": "sk-a", "rpm": 100, "tpm": 100000}, "sk-b"]
    tree["api_keys"][0].update(rpm=100, tpm=100000, budget_usd=10)
    tree["groups"][0]["models"][0].update(input_cost=1, output_cost=1)
    client = await aiohttp_client(create_app(parse(tree, env={})))
    fake.script.extend([status(500), status(429, {"Retry-After": "5"})])
    for _ in range(6):
        r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
        assert r.status == 200
    r = await client.post(CHAT, json={"model": "g", "stream": True}, headers=ALICE)
    await r.read()
    await client.app[STATE].flush()
    db = sync_client(shared_redis)
    keys = list(db.scan_iter(f"{prefix}:*"))
    kinds = {k.decode().rsplit(":", 1)[1] for k in keys}
    assert {"usage", "win", "health", "w", "spent"} <= kinds
    ttls = {k.decode(): db.ttl(k) for k in keys}
    assert all(t > 0 for t in ttls.values()), ttls
    # A target's keys share one hash tag: one slot in a Redis Cluster.
    assert any(k.startswith(f"{prefix}:{{p0/p0#0/up-0}}:") for k in ttls)
    db.close()


def write_config(tmp: Path, tree: dict[str, Any]) -> str:
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


async def _load(urls: list[str], n: int, body: dict[str, Any] | None = None) -> list[int]:
    """n requests spread over the routers, 8 at a time; the statuses."""
    sem = asyncio.Semaphore(8)
    async with httpx.AsyncClient(timeout=10) as client:

        async def one(i: int) -> int:
            async with sem:
                r = await client.post(urls[i % len(urls)] + CHAT, json=body or {"model": "g"},
                                      headers=ALICE)  # fmt: skip
                return r.status_code

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def test_two_routers_split_tokens_by_weight_within_5_percent(
    shared_redis: Server, prefix: str, fakes_thread: Any, tmp_path: Path
) -> None:
    fake, url, _ = fakes_thread
    tree = config_tree([url], state=shared_redis.state(prefix))
    tree["providers"][0]["api_keys"] = ["sk-a", "sk-b"]
    tree["groups"][0]["models"] = [
        {"provider": "p0", "name": "m-light", "weight": 1},
        {"provider": "p0", "name": "m-heavy", "weight": 3},
    ]
    path = write_config(tmp_path, tree)
    fake.total_tokens = 40
    # Replies about as large as the reservation (max_tokens): the split then follows usage.
    # (With tiny replies under a 512-token default reservation it follows in-flight counts.)
    body = {"model": "g", "max_tokens": 20}
    routers = [RouterProcess(["--config", path], cwd=tmp_path) for _ in range(2)]
    try:
        statuses = asyncio.run(_load([r.url for r in routers], 400, body))
    finally:
        for r in routers:
            r.stop()
    assert statuses.count(200) == 400
    models: dict[str, int] = {}
    for seen in fake.seen:
        models[seen.json["model"]] = models.get(seen.json["model"], 0) + 1
    # Every reply has the same token count, so calls are tokens: weights 1 and 3 -> 3:1.
    share = models["m-light"] / 400
    assert abs(share - 0.75) <= 0.05, models
    error = abs(share - 0.75)
    print(f"\nbalance: m-light {share:.3f} of tokens (configured 0.750), error {error:.3f}")


def test_client_rpm_limit_is_global_across_routers(
    shared_redis: Server, prefix: str, fakes_thread: Any, tmp_path: Path
) -> None:
    _, url, _ = fakes_thread
    tree = config_tree([url], state=shared_redis.state(prefix))
    tree["api_keys"][0]["rpm"] = 10
    path = write_config(tmp_path, tree)
    routers = [RouterProcess(["--config", path], cwd=tmp_path) for _ in range(2)]
    try:
        statuses = asyncio.run(_load([r.url for r in routers], 30))
    finally:
        for r in routers:
            r.stop()
    assert statuses.count(200) == 10 and statuses.count(429) == 20


def test_redis_outage_never_hangs_a_request(fakes_thread: Any, tmp_path: Path) -> None:
    _, url, _ = fakes_thread
    server = RedisServer()  # its own, since this one is killed
    tree = config_tree(
        [url], state={"backend": "redis", "redis_url": server.url, "prefix": "outage"}
    )
    router = RouterProcess(["--config", write_config(tmp_path, tree)], cwd=tmp_path)
    db = redis.Redis.from_url(server.url)
    try:
        assert httpx.get(router.url + "/health").json() == {"status": "ok", "state": "ok"}
        assert asyncio.run(_load([router.url], 10)).count(200) == 10
        server.stop()
        started = time.monotonic()
        statuses = asyncio.run(_load([router.url], 20))
        assert statuses.count(200) == 20
        assert time.monotonic() - started < 10  # 20 requests, none waiting on Redis for long
        assert httpx.get(router.url + "/health").json()["state"] == "degraded"
        assert "llm_router_state_degraded 1.0" in httpx.get(router.url + "/metrics").text
        status = httpx.get(router.url + "/status", headers=ALICE).json()
        assert status["state"] == "degraded"
        server.start()
        deadline = time.monotonic() + 10
        while httpx.get(router.url + "/health").json()["state"] != "ok":
            assert time.monotonic() < deadline, "the router did not reconnect"
            time.sleep(0.1)
        assert asyncio.run(_load([router.url], 5)).count(200) == 5
        assert "llm_router_state_degraded 0.0" in httpx.get(router.url + "/metrics").text
        # Shared state resumed: the new requests' usage is in Redis again.
        assert any(db.scan_iter("outage:*:usage"))
    finally:
        db.close()
        code, out = router.stop()
        server.stop()
    assert out.count("redis unreachable") == 1  # logged once per transition
    assert "shared state resumed" in out


def test_in_flight_reservations_are_seen_by_the_other_router(
    shared_redis: Server, prefix: str, fakes_thread: Any, tmp_path: Path
) -> None:
    """With per-process state both routers would send their first request to the first key."""
    from tests.fakes import slow

    fake, url, _ = fakes_thread
    tree = config_tree([url], state=shared_redis.state(prefix))
    path = write_config(tmp_path, tree)
    routers = [RouterProcess(["--config", path], cwd=tmp_path) for _ in range(2)]
    fake.script.extend([slow(2.0), slow(2.0)])

    async def both() -> list[str]:
        async with httpx.AsyncClient(timeout=10) as client:
            first = asyncio.create_task(
                client.post(routers[0].url + CHAT, json={"model": "g"}, headers=ALICE)
            )
            await asyncio.sleep(0.6)  # the first is in flight, holding its reservation
            second = await client.post(routers[1].url + CHAT, json={"model": "g"}, headers=ALICE)
            return [(await first).headers["x-llm-router-key"], second.headers["x-llm-router-key"]]

    try:
        keys = asyncio.run(both())
    finally:
        for r in routers:
            r.stop()
    assert keys == ["p0#0", "p0#1"]


async def test_no_cold_start_herd_on_redis_state(
    redis_server: RedisServer, prefix: str, fakes: Any, aiohttp_client: Any
) -> None:
    """Reservations are written in the background; this router's own picks see them at once."""
    from collections import Counter

    from tests.fakes import slow

    [(fake, url)] = await fakes(1)
    state_cfg = redis_server.state(prefix)
    client = await aiohttp_client(create_app(parse(config_tree([url], state=state_cfg), env={})))
    fake.script.extend([slow(1.0)] * 20)  # all 20 picked while the first are in flight
    replies = await asyncio.gather(
        *(client.post(CHAT, json={"model": "g"}, headers=ALICE) for _ in range(20))
    )
    keys = Counter(r.headers["x-llm-router-key"] for r in replies)
    # Exact even when a pick's read overlaps a background write batch: it counts each
    # of this router's changes once, whether or not Redis had it yet (RedisState._read).
    assert keys == {"p0#0": 10, "p0#1": 10}
    await client.app[STATE].flush()
    usage = await client.app[STATE].usage("p0/p0#0/up-0")
    assert usage.reserved == 0 and usage.total == 10 * keys["p0#0"]


async def test_lost_scripts_are_loaded_again_without_degrading(
    redis_server: RedisServer, prefix: str
) -> None:
    """After a Redis restart or SCRIPT FLUSH the scripts are gone; that is not an outage."""
    a = state(redis_server, prefix)
    await a.start()
    await a.reserve("t1", 100)
    await a.flush()
    db = redis.Redis.from_url(redis_server.url)
    try:
        db.script_flush()
        assert await a.loads(["t1"]) == [100.0]
        [window] = await a.windows(["w1"], time.time())
        assert window.total == 0.0
        assert not a.degraded
    finally:
        db.close()
        await a.close()


async def test_a_pick_sees_other_routers_through_its_view_and_its_own_changes_at_once(
    shared_redis: Server, prefix: str
) -> None:
    """view() reads no Redis once it knows a target: the background refresh brings the
    other routers' reservations and breaker states; this router's own changes show at once."""
    a, b = state(shared_redis, prefix), state(shared_redis, prefix)
    await a.start()
    await b.start()
    try:
        assert await b.view(["t", "u"]) == ([0.0, 0.0], [Health(), Health()])  # read: new
        await a.reserve("t", 100)
        now = time.time()
        await a.record("u", False, now, 1, 30)  # opens u's breaker
        await a.flush()
        deadline = time.monotonic() + 5  # refresh is 0.05 s; generous on a busy machine
        while (view := await b.view(["t", "u"]))[0][0] != 100.0 or view[1][1].breaker != "open":
            assert time.monotonic() < deadline, view
            await asyncio.sleep(0.02)
        await b.reserve("t", 5)
        await b.cool("t", now + 60, True)
        loads, health = await b.view(["t"])
        assert loads == [105.0] and health[0].cooldown_until == now + 60
    finally:
        await a.close()
        await b.close()


async def test_a_cluster_setting_that_does_not_fit_the_server_is_named_and_degrades(
    redis_server: RedisServer, redis_cluster: RedisClusterServer, caplog: pytest.LogCaptureFixture
) -> None:
    for server, cluster, message in (
        (redis_server, True, "state.cluster is true but state.redis_url is not a Redis Cluster"),
        (redis_cluster, False, "state.redis_url is a Redis Cluster node: set state.cluster: true"),
    ):
        cfg = State(backend="redis", redis_url=server.url, prefix="misfit", cluster=cluster)
        s = RedisState(cfg, 0, time.time, 60)
        await s.start()
        try:
            assert s.degraded and message in caplog.text
            await s.reserve("t", 5)  # served on local state, never an error
            assert await s.loads(["t"]) == [5.0]
            assert (await s.take("rpm:k", 1, 1, time.time())).entry is not None
        finally:
            await s.close()


async def test_a_cluster_node_going_away_degrades_to_local_state_and_back() -> None:
    """A master of the Cluster dies: calls on its slots fail fast, the router serves on local
    state (no error, no wait over the timeouts), and resumes once the node is back."""
    server = RedisClusterServer()  # its own, since a node is killed
    a = state(server, "node-away")
    try:
        await a.start()
        keys = [f"t{i}" for i in range(12)]  # spread over the three masters' slots
        assert await a.loads(keys) == [0.0] * 12
        server.stop_node(1)
        started = time.monotonic()
        for key in keys:
            await a.reserve(key, 10)
        loads, _ = await a.view(keys)
        assert loads == [10.0] * 12  # this router's own, from local state
        assert (await a.take("rpm:k", 1, 5, time.time())).entry is not None
        assert a.degraded and time.monotonic() - started < 5
        server.start_node(1)
        deadline = time.monotonic() + 20
        while a.degraded:
            assert time.monotonic() < deadline, "the router did not reconnect"
            await asyncio.sleep(0.1)
        await a.flush()  # everything written again, on every master
        b = state(server, "node-away")
        await b.start()
        assert await b.loads(keys) == [10.0] * 12
        await b.close()
    finally:
        await a.close()
        server.stop()
