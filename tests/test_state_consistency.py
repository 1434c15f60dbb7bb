"""State that stays true under faults: Redis stalls, tpm windows, late breaker results,
write-behind reads, and the Redis versions the README promises (a real redis-server)."""

from __future__ import annotations

import asyncio
import shlex
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis

from router.app import create_app
from router.balancer import Balancer
from router.config import State, parse
from router.keys import LIVE, STATE
from router.state import StateBackend
from router.state.memory import MemoryState
from router.state.redis import RedisState
from tests.conftest import ALICE
from tests.fakes import config_tree, slow
from tests.redis_server import RedisServer

CHAT = "/v1/chat/completions"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"c-{request.node.name[:40]}-{time.time_ns()}"


def redis_state(
    server: RedisServer, prefix: str, clock: Callable[[], float] = time.time, hold: float = 60.0
) -> RedisState:
    return RedisState(State(backend="redis", redis_url=server.url, prefix=prefix), 0, clock, hold)


async def written(state: StateBackend) -> None:
    """Wait for writes sent in the background (Redis); memory state has none."""
    if isinstance(state, RedisState):
        await state.flush()


@pytest.fixture(params=["memory", "redis"])
async def make_state(
    request: pytest.FixtureRequest, redis_server: RedisServer, prefix: str
) -> AsyncIterator[Callable[[Callable[[], float]], Any]]:
    """Backends of both kinds; Redis ones share one prefix, as routers sharing a Redis do."""
    made: list[StateBackend] = []

    async def make(clock: Callable[[], float]) -> StateBackend:
        s: StateBackend
        if request.param == "memory":
            if made:  # memory state is one process's: "another router" is this one
                return made[0]
            s = MemoryState(0, clock)
        else:
            s = redis_state(redis_server, prefix, clock)
        await s.start()
        made.append(s)
        return s

    yield make
    for s in made:
        await s.close()


async def wait_until_shared(state: RedisState, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while state.degraded:
        assert time.monotonic() < deadline, "the router did not reconnect"
        await asyncio.sleep(0.05)
    await state.flush()


# -- a Redis stall loses nothing (issue 14, item 7) ---------------------------------------


@pytest.mark.parametrize("first", ["read", "write"])
async def test_a_redis_stall_loses_no_write(
    redis_server: RedisServer, prefix: str, first: str
) -> None:
    """A settle and a spend made while Redis is paused reach it once it answers again.

    "read": a pick's read times out first, so the router serves on local state while it
    settles; "write": the settle's own background batch is what times out.
    """
    a, b = redis_state(redis_server, prefix), redis_state(redis_server, prefix)
    await a.start()
    await b.start()
    budget = "budget:alice:2026-11"
    db = redis.Redis.from_url(redis_server.url)
    try:
        await a.reserve("t", 500)
        await a.add_total(budget, 1.0, 3600)
        await a.flush()
        assert await b.loads(["t"]) == [500.0]
        db.execute_command("CLIENT", "PAUSE", 800)
        if first == "read":
            assert await a.loads(["t"]) == [500.0]  # served locally, within its timeout
            assert a.degraded
        await a.settle("t", 500, 100)
        await a.add_total(budget, 2.0, 3600)
        if first == "write":
            await asyncio.sleep(0.6)  # the batch with the settle in it times out
            assert a.degraded
        await wait_until_shared(a)
        assert await b.loads(["t"]) == [100.0]  # no stranded reservation, no lost usage
        usage = await b.usage("t")
        assert usage.reserved == 0 and usage.total == 100
        assert await b.totals([budget]) == [3.0]  # the whole spend, not just $1 of it
    finally:
        db.close()
        await a.close()
        await b.close()


async def test_a_restarted_redis_gets_this_routers_state_back(prefix: str) -> None:
    """Redis without persistence comes back empty: each router writes its share again."""
    server = RedisServer()  # its own, since this one is restarted
    a, b = redis_state(server, prefix), redis_state(server, prefix)
    try:
        await a.start()
        await b.start()
        await a.reserve("t", 300)
        await a.settle("u", 0, 40)
        await a.add_total("budget:x:2026-11", 1.5, 3600)
        await a.flush()
        server.stop()
        server.start()
        assert await a.loads(["t"]) == [300.0]  # notices the outage; serves locally
        await b.loads(["t"])  # b's connections broke too
        await wait_until_shared(a)
        await wait_until_shared(b)
        assert await b.loads(["t", "u"]) == [300.0, 40.0]
        assert await b.totals(["budget:x:2026-11"]) == [1.5]
    finally:
        await a.close()
        await b.close()
        server.stop()


# -- provider-key tpm never goes negative (item 8) -----------------------------------------


def limited_balancer(state: StateBackend, clock: Clock) -> Balancer:
    tree = config_tree(["http://127.0.0.1:1/v1"])
    tree["providers"][0]["api_keys"] = [{"key": "sk-a", "tpm": 10_000}]
    return Balancer(parse(tree, env={}), state, clock)


async def test_tpm_window_holds_what_was_used_when_it_was_reserved(make_state: Any) -> None:
    clock = Clock()
    start = clock.now
    state = await make_state(clock)
    b = limited_balancer(state, clock)
    tpm = f"tpm:{b.targets('g')[0].key_id}"

    async def admit_all() -> int:
        n = 0
        while (await b.pick(b.targets("g"), 1000))[0] is not None:
            n += 1
            assert n < 100
        return n

    assert await admit_all() == 10  # 10 x 1,000 reserved fill the 10,000 tpm
    clock.now = start + 1
    for _ in range(10):  # each used only 100 of its 1,000
        await b.finish(b.targets("g")[0], 1000, 100, False)
    await written(state)
    for at, expected in ((start + 30, 1000.0), (start + 59.5, 1000.0), (start + 60.5, 0.0)):
        [w] = await state.windows([tpm], at)
        assert w.total == expected, at - start
    clock.now = start + 60.5
    assert await admit_all() == 10  # never more than the limit at once


async def test_a_refused_probe_gives_its_tokens_back(make_state: Any) -> None:
    clock = Clock()
    state = await make_state(clock)
    b = limited_balancer(state, clock)
    t = b.targets("g")[0]
    await b.pick([t], 1000)
    await b.finish(t, 1000, 0, True)  # threshold 5: still closed
    for _ in range(4):
        await b.pick([t], 1000)
        await b.finish(t, 1000, 0, True)
    assert (await state.health([t.id]))[0].breaker == "open"
    clock.now += 31
    assert (await b.pick([t], 1000))[0] is t  # the probe
    assert (await b.pick([t], 1000))[0] is None  # a second one is refused ...
    await written(state)
    [w] = await state.windows([f"tpm:{t.key_id}"], clock.now)
    assert w.total == 1000  # ... and takes nothing from the window


# -- breakers close only through a probe (item 9) ------------------------------------------


async def test_a_success_sent_before_a_failure_cannot_close_the_breaker(
    redis_server: RedisServer, prefix: str
) -> None:
    a, b = redis_state(redis_server, prefix), redis_state(redis_server, prefix)
    await a.start()
    try:
        closed = 0
        for i in range(20):
            now = time.time()
            await a.record(f"t{i}", True, now, 1, 10)  # written behind
            await a.record(f"t{i}", False, now, 1, 10)  # written at once: opens it
            await a.flush()
            closed += (await b.health([f"t{i}"]))[0].breaker != "open"
        assert closed == 0
    finally:
        await a.close()
        await b.close()


async def test_results_of_calls_started_before_the_opening_are_ignored(make_state: Any) -> None:
    clock = Clock()
    start = clock.now
    a = await make_state(clock)
    b = await make_state(clock)  # another router on the same Redis (or the same process)
    h = await a.record("t", False, start, 1, 10, started=start - 1)
    assert h.breaker == "open" and h.until == start + 10
    # Late results of calls sent before it opened change nothing: not the failure count,
    # not the cooldown, and a success does not close it.
    await a.record("t", False, start + 5, 1, 10, started=start - 0.5)
    await a.record("t", True, start + 5, 1, 10, started=start - 0.5)
    await written(a)
    [h] = await b.health(["t"])
    assert (h.breaker, h.failures, h.until) == ("open", 1, start + 10)
    assert await b.take_probe("t", start + 11, 10)  # half-open, the probe is in flight
    await a.record("t", True, start + 11.5, 1, 10, started=start - 0.2)
    await written(a)
    assert (await b.health(["t"]))[0].breaker == "half-open"
    await b.record("t", True, start + 12, 1, 10, started=start + 11)  # the probe's success
    await written(b)
    assert (await a.health(["t"]))[0].breaker == "closed"


async def test_finish_passes_the_calls_start_to_the_breaker(make_state: Any) -> None:
    clock = Clock()
    start = clock.now
    state = await make_state(clock)
    tree = config_tree(["http://127.0.0.1:1/v1"], breaker={"failures": 1, "cooldown": 10})
    tree["providers"][0]["api_keys"] = ["sk-a"]
    b = Balancer(parse(tree, env={}), state, clock)
    [t] = b.targets("g")
    early, _ = await b.pick([t], 10)
    failing, _ = await b.pick([t], 10)
    assert early is t and failing is t
    clock.now = start + 1
    await b.finish(t, 10, 0, True, started=start)  # opens it
    clock.now = start + 12
    probe, _ = await b.pick([t], 10)
    assert probe is t
    await b.finish(t, 10, 5, False, started=start)  # the early call, late
    await written(state)
    assert (await state.health([t.id]))[0].breaker == "half-open"
    await b.finish(t, 10, 5, False, started=start + 12)  # the probe
    await written(state)
    assert (await state.health([t.id]))[0].breaker == "closed"


# -- write-behind without an ordering assumption (item 10) ---------------------------------


async def test_thousands_of_queued_reservations_are_read_exactly(
    redis_server: RedisServer, prefix: str
) -> None:
    a, b = redis_state(redis_server, prefix), redis_state(redis_server, prefix)
    await a.start()
    try:
        for round_ in range(1, 6):
            for _ in range(2000):
                await a.reserve("t", 1)
            assert await a.loads(["t"]) == [2000.0 * round_]  # read at once, all queued
        for _ in range(3000):
            await a.settle("t", 1, 2)
        reads = await asyncio.gather(*(a.loads(["t"]) for _ in range(5)))
        assert reads == [[7000.0 + 6000.0]] * 5
        await a.flush()
        assert await b.loads(["t"]) == [13000.0]  # and the other router sees the same
    finally:
        await a.close()
        await b.close()


# -- Redis versions (item 13) ---------------------------------------------------------------


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


def test_every_command_sent_exists_in_redis_6_2(redis_server: RedisServer, prefix: str) -> None:
    """The README supports Redis 6.2: every command and option the state sends must exist
    there, by the server's own COMMAND DOCS (`since` of each command and argument)."""
    monitor = subprocess.Popen(
        ["redis-cli", "-p", str(redis_server.port), "monitor"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert monitor.stdout is not None and monitor.stdout.readline().strip() == "OK"

        async def exercise() -> None:
            clock = Clock()
            s = redis_state(redis_server, prefix, clock)
            await s.start()
            b = limited_balancer(s, clock)
            [t] = b.targets("g")
            for failed in (False, True):
                picked, _ = await b.pick([t], 100)
                assert picked is t
                await b.finish(t, 100, 50, failed)
            await s.cool(t.id, clock.now + 5, True)
            await s.take("rpm:k", 1, 10, clock.now)
            await s.windows(["rpm:k"], clock.now)
            await s.add_total("budget:x:2026-11", 0.5, 3600)
            await s.totals(["budget:x:2026-11"])
            held = await s.hold_total("budget:x:2026-11", 0.25, 1.0)
            assert held is not None
            await s.release_total("budget:x:2026-11", held)
            await s.hit("client-tpm:x", 100, clock.now)
            await s.usage(t.id)
            await s.take_probe(t.id, clock.now, 10)
            await s.close()

        asyncio.run(exercise())
        db = redis.Redis.from_url(redis_server.url, decode_responses=True)
        db.set_response_callback("COMMAND", lambda r, **_: r)  # the raw COMMAND DOCS reply
        db.execute_command("ECHO", "end-of-test")
        sent: list[list[str]] = []
        for line in monitor.stdout:
            if "end-of-test" in line:
                break
            sent.append(shlex.split(line.split("] ", 1)[1]))
        too_new = []
        for args in sent:
            name = args[0].lower()
            if name == "client" and args[1].lower() == "setinfo":
                continue  # redis-py's own handshake; it ignores servers without it (< 7.2)
            doc = db.execute_command("COMMAND", "DOCS", name)[name]
            tokens = _tokens_after_6_2(doc.get("arguments", []))
            if _version(doc["since"]) > (6, 2, 0) or tokens & {a.lower() for a in args[1:]}:
                too_new.append(args)
        db.close()
        assert len(sent) > 20 and not too_new, too_new
    finally:
        monitor.kill()
        monitor.communicate(timeout=5)


def _tokens_after_6_2(arguments: list[dict[str, Any]], newer: bool = False) -> set[str]:
    """The option tokens (NX, GT, ...) that a Redis 6.2 server would not know."""
    out = set()
    for arg in arguments:
        new = newer or _version(arg.get("since", "0")) > (6, 2, 0)
        if new and "token" in arg:
            out.add(arg["token"].lower())
        out |= _tokens_after_6_2(arg.get("arguments", []), new)
    return out


# -- client tpm and budget are reservations (issue 12) --------------------------------------


@pytest.fixture(params=["memory", "redis"])
async def routers(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    prefix: str,
    fakes: Any,
    aiohttp_client: Any,
) -> Any:
    """Make one router (memory state) or two sharing a Redis, over one slow fake provider."""

    async def make(**client_limits: Any) -> list[Any]:
        [(fake, url)] = await fakes(1)
        fake.total_tokens = 1000
        fake.script.extend([slow(0.5)] * 12)  # every request is in flight at once
        extra = {}
        if request.param == "redis":
            extra["state"] = {"backend": "redis", "redis_url": redis_server.url, "prefix": prefix}
        tree = config_tree([url], **extra)
        tree["groups"][0]["models"][0].update(input_cost=100, output_cost=100)  # $0.10 each
        tree["api_keys"][0].update(client_limits)
        n = 2 if request.param == "redis" else 1
        return [await aiohttp_client(create_app(parse(tree, env={}))) for _ in range(n)]

    return make


async def burst(clients: list[Any]) -> tuple[list[int], StateBackend]:
    """12 requests at once, spread over the routers, each reserving about 1,000 tokens; the
    statuses, and the last router's state once its writes are out."""
    body = {"model": "g", "max_tokens": 985}
    replies = await asyncio.gather(
        *(clients[i % len(clients)].post(CHAT, json=body, headers=ALICE) for i in range(12))
    )
    for c in clients:
        await written(c.app[STATE])
    return [r.status for r in replies], clients[-1].app[STATE]


async def test_concurrent_requests_cannot_overshoot_a_budget(routers: Any) -> None:
    clients = await routers(budget_usd=0.35)
    statuses, state = await burst(clients)
    # Admitted while spend plus what admitted requests hold is under $0.35: four of them.
    assert statuses.count(200) == 4 and statuses.count(429) == 8, statuses
    limits = clients[-1].app[LIVE].runtime.limits
    budget = limits.budget_key(limits.keys["alice"])[0]
    assert await state.totals([budget]) == [pytest.approx(0.4)]
    assert await state.hold_total(budget, 0, 0.41) is not None  # nothing is held any more


async def test_concurrent_requests_cannot_overshoot_a_client_tpm(routers: Any) -> None:
    clients = await routers(tpm=2000)
    statuses, state = await burst(clients)
    # Admitted while the window (usage and held estimates) is not over 2,000: three.
    assert statuses.count(200) == 3 and statuses.count(429) == 9, statuses
    [w] = await state.windows(["client-tpm:alice"], time.time())
    assert w.total == 3000  # what was used; the estimates held were given back
