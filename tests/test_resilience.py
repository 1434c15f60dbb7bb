"""Fault injection: for each fault, what the client sees and what the breaker and usage record.

p0 (the faulty provider) is first in config order and p1 (healthy) second, one key each.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest

from router.app import create_app
from router.breaker import Health
from router.config import parse
from router.keys import STATE
from tests.conftest import ALICE
from tests.fakes import (
    config_tree,
    free_port,
    raw_reply,
    reset_before_headers,
    reset_mid_body,
    slow,
    status,
    stream_failing,
)

CHAT = "/v1/chat/completions"
P0, P1 = "p0/p0#0/up-0", "p1/p1#0/up-1"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tree_for(urls: list[str], **extra: Any) -> dict[str, Any]:
    tree = config_tree(urls, **extra)
    for p in tree["providers"]:
        p["api_keys"] = p["api_keys"][:1]
    return tree


@pytest.fixture
async def pair(fakes: Any, aiohttp_client: Any) -> Any:
    """(p0 fake, p1 fake, make(**config) -> client, clock)."""
    [(f0, u0), (f1, u1)] = await fakes(2)
    clock = Clock()

    async def make(**extra: Any) -> Any:
        tree = tree_for([u0, u1], **extra)
        return await aiohttp_client(create_app(parse(tree, env={}), clock=clock))

    return f0, f1, make, clock


async def health(client: Any, tid: str) -> Health:
    [h] = await client.app[STATE].health([tid])
    return h


async def used(client: Any, tid: str) -> float:
    return (await client.app[STATE].usage(tid)).total


FAULTS = {
    "connection refused": None,  # p0 points at a closed port
    "reset before headers": reset_before_headers,
    "reset mid-body": reset_mid_body,
    "500": status(500),
    "502": status(502),
    "503": status(503),
    "529": status(529),
    "408": status(408),
    "invalid JSON body": raw_reply(b'{"choices": [', "application/json"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_fault_before_first_byte_fails_over(
    fakes: Any, aiohttp_client: Any, fault: str
) -> None:
    [(f0, u0), (f1, u1)] = await fakes(2)
    if FAULTS[fault] is None:
        u0 = f"http://127.0.0.1:{free_port()}/v1"
    else:
        f0.script.append(FAULTS[fault])
    client = await aiohttp_client(create_app(parse(tree_for([u0, u1]), env={})))
    r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert r.status == 200, await r.text()
    assert r.headers["x-llm-router-attempts"] == "2"
    assert r.headers["x-llm-router-provider"] == "p1"
    assert (await health(client, P0)).failures == 1
    assert (await health(client, P1)).failures == 0
    assert await used(client, P0) == 0 and await used(client, P1) == 10


async def test_429_with_retry_after_cools_the_target_down(pair: Any) -> None:
    f0, f1, make, clock = pair
    client = await make()
    f0.script.append(status(429, {"Retry-After": "30"}))
    r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert r.status == 200 and r.headers["x-llm-router-provider"] == "p1"
    h = await health(client, P0)
    assert h.cooldown_until == clock.now + 30 and h.rate_limited
    # While it cools down p0 is not called, even though its score is the lowest.
    for _ in range(3):
        r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
        assert r.headers["x-llm-router-provider"] == "p1"
    assert len(f0.seen) == 1
    clock.now += 31
    r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert r.headers["x-llm-router-provider"] == "p0"


async def test_ratelimit_reset_header_sets_cooldown(pair: Any) -> None:
    f0, _, make, clock = pair
    client = await make()
    f0.script.append(
        status(429, {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0s",
                     "x-ratelimit-remaining-requests": "10", "x-ratelimit-reset-requests": "1s"})
    )  # fmt: skip
    await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert (await health(client, P0)).cooldown_until == clock.now + 360


async def test_all_targets_rate_limited_gives_429_with_retry_after(pair: Any) -> None:
    f0, f1, make, clock = pair
    client = await make()
    f0.script.append(status(429, {"Retry-After": "20"}))
    f1.script.append(status(429, {"Retry-After": "7"}))
    r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert r.status == 429
    assert r.headers["Retry-After"] == "7"
    assert (await r.json())["error"]["code"] == "rate_limit_exceeded"
    # Both cool down now: the next request is refused at once, without an upstream call.
    r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert r.status == 429 and r.headers["Retry-After"] == "7"
    assert r.headers["x-llm-router-attempts"] == "0"
    assert len(f0.seen) == 1 and len(f1.seen) == 1


async def test_retry_wait_waits_for_recovery(fakes: Any, router: Any) -> None:
    from router.keys import LIVE

    [(_, u0), (_, u1)] = await fakes(2)
    client = await router(tree=tree_for([u0, u1], retry={"wait": 5}))
    balancer = client.app[LIVE].runtime.balancer  # on the real clock: the router sleeps
    for tid in (P0, P1):
        await balancer.state.cool(tid, balancer.clock() + 0.3, True)
    started = asyncio.get_running_loop().time()
    r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert r.status == 200
    assert asyncio.get_running_loop().time() - started >= 0.25
    # Without retry.wait the same situation is an immediate 429.
    client = await router(tree=tree_for([u0, u1]))
    balancer = client.app[LIVE].runtime.balancer
    for tid in (P0, P1):
        await balancer.state.cool(tid, balancer.clock() + 0.3, True)
    r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert r.status == 429 and r.headers["Retry-After"] == "1"


async def test_401_quarantines_the_key_and_logs_its_label_only(
    pair: Any, caplog: pytest.LogCaptureFixture
) -> None:
    f0, _, make, clock = pair
    client = await make(breaker={"cooldown": 60})
    f0.script.append(status(401))
    with caplog.at_level(logging.WARNING):
        r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert r.status == 200 and r.headers["x-llm-router-provider"] == "p1"
    assert (await health(client, P0)).cooldown_until == clock.now + 60
    assert "p0#0" in caplog.text and "sk-p0-a" not in caplog.text
    r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert r.headers["x-llm-router-provider"] == "p1" and len(f0.seen) == 1


async def test_breaker_opens_half_opens_with_one_probe_and_closes(pair: Any) -> None:
    f0, f1, make, clock = pair
    client = await make(breaker={"failures": 2, "cooldown": 10}, retry={"attempts": 2})
    f0.script.extend([status(500), status(500)])
    for _ in range(2):
        assert (await client.post(CHAT, json={"model": "g"}, headers=ALICE)).status == 200
    h = await health(client, P0)
    assert h.breaker == "open" and h.until == clock.now + 10
    await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert len(f0.seen) == 2  # open: not called
    clock.now += 11
    # Half-open: exactly one probe goes through while it is in flight.
    f0.script.append(slow(1.0))
    replies = await asyncio.gather(
        *(client.post(CHAT, json={"model": "g"}, headers=ALICE) for _ in range(5))
    )
    assert all(r.status == 200 for r in replies)
    assert len(f0.seen) == 3
    assert (await health(client, P0)).breaker == "closed"


async def test_failed_probe_reopens(pair: Any) -> None:
    f0, _, make, clock = pair
    client = await make(breaker={"failures": 1, "cooldown": 10})
    f0.script.extend([status(500), status(500)])
    await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert (await health(client, P0)).breaker == "open"
    clock.now += 11
    await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    h = await health(client, P0)
    assert h.breaker == "open" and h.until == clock.now + 10
    assert len(f0.seen) == 2


async def test_every_breaker_open_gives_503(pair: Any) -> None:
    f0, f1, make, _ = pair
    client = await make(breaker={"failures": 1, "cooldown": 30}, retry={"attempts": 2})
    f0.script.append(status(500))
    f1.script.append(status(500))
    r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert r.status == 502
    r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert r.status == 503
    assert r.headers["Retry-After"] == "30"
    assert set((await r.json())["error"]) == {"message", "type", "param", "code"}


async def test_same_target_retried_with_backoff(fakes: Any, router: Any) -> None:
    [(fake, url)] = await fakes(1)
    tree = tree_for([url], retry={"attempts": 3, "backoff": 0.05, "max_backoff": 0.2})
    client = await router(tree=tree)
    fake.script.extend([status(503), status(503)])
    started = asyncio.get_running_loop().time()
    r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert r.status == 200 and r.headers["x-llm-router-attempts"] == "3"
    # Two backoffs: at least half of 0.05 and half of 0.1.
    assert asyncio.get_running_loop().time() - started >= 0.075


async def test_first_byte_timeout_fails_over_and_504_when_alone(fakes: Any, router: Any) -> None:
    [(f0, u0), (f1, u1)] = await fakes(2)
    tree = tree_for([u0, u1])
    tree["providers"][0]["first_byte_timeout"] = 0.2
    client = await router(tree=tree)
    f0.script.append(slow(2))
    r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert r.status == 200 and r.headers["x-llm-router-provider"] == "p1"
    tree = tree_for([u0])
    tree["providers"][0]["first_byte_timeout"] = 0.2
    tree["retry"] = {"attempts": 1}
    client = await router(tree=tree)
    f0.script.append(slow(2))
    r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert r.status == 504
    assert "timed out" in (await r.json())["error"]["message"]


async def test_stalled_stream_hits_idle_timeout(fakes: Any, router: Any) -> None:
    [(f0, u0)] = await fakes(1)
    tree = tree_for([u0])
    tree["providers"][0]["idle_timeout"] = 0.3
    client = await router(tree=tree)
    f0.gate = asyncio.Event()  # never set: the stream stalls after one event
    r = await client.post(CHAT, json={"model": "g", "stream": True}, headers=ALICE)
    events = (await asyncio.wait_for(r.read(), 5)).split(b"\n\n")
    last = orjson.loads(events[-2][6:])
    assert "timed out" in last["error"]["message"]
    assert b"[DONE]" not in b"".join(events)
    assert (await health(client, "p0/p0#0/up-0")).failures == 1


async def test_whole_call_timeout(fakes: Any, router: Any) -> None:
    [(f0, u0)] = await fakes(1)
    tree = tree_for([u0], retry={"attempts": 1})
    tree["providers"][0]["timeout"] = 0.3
    client = await router(tree=tree)
    f0.script.append(slow(2))
    r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert r.status == 504


@pytest.mark.parametrize(
    "fault",
    [
        stream_failing(after=1),  # reset mid-stream
        stream_failing(after=1, error_event=True),  # an SSE error event
        stream_failing(after=99, no_done=True),  # a truncated stream
    ],
    ids=["reset mid-stream", "error event", "truncated"],
)
async def test_stream_fault_after_first_event(pair: Any, fault: Any) -> None:
    f0, _, make, _ = pair
    client = await make()
    f0.script.append(fault)
    f0.gate = asyncio.Event()
    r = await client.post(CHAT, json={"model": "g", "stream": True}, headers=ALICE)
    first = await r.content.readuntil(b"\n\n")
    f0.gate.set()
    events = [e for e in (first + await r.read()).split(b"\n\n") if e]
    assert r.status == 200
    assert events[-1] != b"data: [DONE]"
    assert orjson.loads(events[-1][6:])["error"]["message"]
    h = await health(client, P0)
    assert h.failures == 1  # the failure counts against the target
    assert await used(client, P0) > 0  # what was streamed is still counted


async def test_client_rpm_limit(fakes: Any, router: Any) -> None:
    [(_, url)] = await fakes(1)
    tree = tree_for([url])
    tree["api_keys"][0]["rpm"] = 2
    client = await router(tree=tree)
    for _ in range(2):
        assert (await client.post(CHAT, json={"model": "g"}, headers=ALICE)).status == 200
    r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert r.status == 429
    body = await r.json()
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    other = {"Authorization": "Bearer bob-key"}  # another client is not affected
    assert (await client.post(CHAT, json={"model": "g"}, headers=other)).status == 200


async def test_client_tpm_limit(fakes: Any, router: Any) -> None:
    [(fake, url)] = await fakes(1)
    fake.total_tokens = 600
    tree = tree_for([url])
    tree["api_keys"][0]["tpm"] = 1000
    client = await router(tree=tree)
    for _ in range(2):
        assert (await client.post(CHAT, json={"model": "g"}, headers=ALICE)).status == 200
    r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert r.status == 429 and (await r.json())["error"]["code"] == "rate_limit_exceeded"


async def test_client_budget(fakes: Any, router: Any) -> None:
    [(fake, url)] = await fakes(1)
    fake.total_tokens = 1_000_000  # 999,997 prompt + 3 completion tokens
    tree = tree_for([url])
    tree["groups"][0]["models"][0].update(input_cost=1.0, output_cost=2.0)
    tree["api_keys"][0].update(budget_usd=1.5, budget_period="day")
    client = await router(tree=tree)
    r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert r.status == 200
    assert float(r.headers["x-llm-router-cost"]) == pytest.approx(1.000003)
    assert (await client.post(CHAT, json={"model": "g"}, headers=ALICE)).status == 200
    r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert r.status == 429
    err = (await r.json())["error"]
    assert err["type"] == err["code"] == "insufficient_quota"
    assert 0 < int(r.headers["Retry-After"]) <= 86400


async def test_provider_key_rpm_limit_skips_the_key(fakes: Any, router: Any) -> None:
    [(fake, url)] = await fakes(1)
    tree = config_tree([url])
    tree["providers"][0]["api_keys"] = [{"key": "sk-a", "name": "a", "rpm": 1}, "sk-b"]
    tree["groups"][0]["models"][0]["weight"] = 0  # always prefer... unless at its limit
    client = await router(tree=tree)
    labels = [
        (await client.post(CHAT, json={"model": "g"}, headers=ALICE)).headers["x-llm-router-key"]
        for _ in range(3)
    ]
    assert labels == ["a", "p0#1", "p0#1"]


async def test_every_key_at_its_limit_gives_429(fakes: Any, router: Any) -> None:
    [(fake, url)] = await fakes(1)
    tree = config_tree([url])
    tree["providers"][0]["api_keys"] = [{"key": "sk-a", "rpm": 1}]
    client = await router(tree=tree)
    assert (await client.post(CHAT, json={"model": "g"}, headers=ALICE)).status == 200
    r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert r.status == 429 and 1 <= int(r.headers["Retry-After"]) <= 60
    assert len(fake.seen) == 1


async def test_soak_thirty_percent_failures_beside_a_healthy_provider(
    fakes: Any, router: Any
) -> None:
    """One provider fails 30% of calls at random; every client request still succeeds."""
    import random

    [(bad, u0), (good, u1)] = await fakes(2)
    rng = random.Random(7)
    faults = [status(500), status(503), status(529), reset_before_headers]
    from tests.fakes import ok

    injected = 0

    async def flaky(request: Any, seen: Any) -> Any:
        nonlocal injected
        action = ok
        if rng.random() < 0.3:
            injected += 1
            action = rng.choice(faults)
        return await action(request, seen)

    bad.script.extend([flaky] * 10_000)
    tree = tree_for([u0, u1], breaker={"failures": 5, "cooldown": 0.2})
    client = await router(tree=tree)
    results = []
    for _ in range(20):
        replies = await asyncio.gather(
            *(client.post(CHAT, json={"model": "g"}, headers=ALICE) for _ in range(15))
        )
        results += [r.status for r in replies]
    assert len(results) == 300
    assert results.count(200) == 300
    assert len(bad.seen) > 100 and injected > 30  # the flaky provider really took part


async def test_hedge_after_starts_the_next_target_and_cancels_the_loser(pair: Any) -> None:
    f0, f1, make, _ = pair
    from router.keys import LIVE

    client = await make(groups=[{"name": "g", "hedge_after": 0.1, "models": [
        {"provider": "p0", "name": "up-0"}, {"provider": "p1", "name": "up-1"}]}])  # fmt: skip
    assert client.app[LIVE].runtime.balancer.hedge_after["g"] == 0.1
    f0.script.append(slow(3.0))
    started = asyncio.get_running_loop().time()
    r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert r.status == 200
    assert asyncio.get_running_loop().time() - started < 2.0  # did not wait for the slow one
    assert r.headers["x-llm-router-provider"] == "p1"
    assert r.headers["x-llm-router-attempts"] == "2"
    u0 = await client.app[STATE].usage(P0)
    assert u0.reserved == 0 and u0.total == 0  # the loser's reservation is released
    assert (await health(client, P0)).failures == 0  # and it is not counted as failed


async def test_hedging_is_off_by_default(pair: Any) -> None:
    f0, _, make, _ = pair
    client = await make()
    f0.script.append(slow(0.3))
    r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert r.headers["x-llm-router-provider"] == "p0"
    assert r.headers["x-llm-router-attempts"] == "1"
