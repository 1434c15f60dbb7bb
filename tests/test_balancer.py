"""Selection: weight x (windowed usage + reservations), ties to config order, no cold-start herd."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from router.balancer import Balancer
from router.config import parse
from router.keys import STATE
from router.state.memory import MemoryState
from tests.conftest import ALICE
from tests.fakes import config_tree, slow

CHAT = "/v1/chat/completions"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def balancer(
    weights: list[float], keys: int = 1, clock: FakeClock | None = None, **extra: Any
) -> Balancer:
    tree = config_tree([f"http://127.0.0.1:1/v{i}" for i in range(len(weights))], **extra)
    for i, w in enumerate(weights):
        tree["groups"][0]["models"][i]["weight"] = w
        tree["providers"][i]["api_keys"] = tree["providers"][i]["api_keys"][:keys]
    cfg = parse(tree, env={})
    return Balancer(cfg, MemoryState(cfg.usage_window, clock or FakeClock()))


async def run(b: Balancer, n: int, tokens: float = 100) -> Counter[str]:
    picks: Counter[str] = Counter()
    for _ in range(n):
        t, _ = await b.pick(b.targets("g"), tokens)
        assert t is not None
        picks[t.id] += 1
        await b.finish(t, tokens, tokens, failed=False)
    return picks


async def test_ties_go_to_config_order() -> None:
    b = balancer([1, 1], keys=2)
    t, _ = await b.pick(b.targets("g"), 10)
    assert t is not None and t.id == "p0/p0#0/up-0"


async def test_tokens_split_inversely_to_weight() -> None:
    picks = await run(balancer([1, 3]), 400)
    assert picks["p0/p0#0/up-0"] == 300 and picks["p1/p1#0/up-1"] == 100


async def test_fractional_weights_are_not_truncated() -> None:
    """Seed bug: the Go gateway truncated 0.5 to 0, which meant "always use"."""
    picks = await run(balancer([0.5, 1]), 300)
    assert picks["p0/p0#0/up-0"] == 200 and picks["p1/p1#0/up-1"] == 100


async def test_weight_zero_is_always_preferred() -> None:
    picks = await run(balancer([1, 0]), 50)
    assert picks == Counter({"p1/p1#0/up-1": 49, "p0/p0#0/up-0": 1})  # tie at 0 first


async def test_reservations_spread_concurrent_picks() -> None:
    b = balancer([1], keys=2)
    first, _ = await b.pick(b.targets("g"), 100)
    second, _ = await b.pick(b.targets("g"), 100)
    assert first is not None and second is not None and first.id != second.id


async def test_usage_window_forgets_old_usage() -> None:
    clock = FakeClock()
    b = balancer([1], keys=2, usage_window=60, clock=clock)
    targets = b.targets("g")
    await b.finish(targets[0], 0, 1000, failed=False)
    t, _ = await b.pick(targets, 0)
    assert t is targets[1]
    await b.finish(t, 0, 0, failed=False)
    clock.now += 61
    t, _ = await b.pick(targets, 0)
    assert t is targets[0]  # its old burst no longer counts
    usage = await b.state.usage(targets[0].id)
    assert usage.window == 0 and usage.total == 1000


async def test_penalties_are_counted_as_usage() -> None:
    b = balancer([1], keys=2, request_penalty=500, error_penalty=10000)
    targets = b.targets("g")
    t, _ = await b.pick(targets, 0)
    assert t is targets[0]
    await b.finish(t, 0, 0, failed=True)
    assert (await b.state.usage(t.id)).total == 10500


async def test_usage_is_shared_across_groups_using_the_same_pair() -> None:
    tree = config_tree(["http://127.0.0.1:1/v1"])
    tree["groups"].append({"name": "h", "models": [{"provider": "p0", "name": "up-0"}]})
    cfg = parse(tree, env={})
    b = Balancer(cfg, MemoryState())
    t, _ = await b.pick(b.targets("h"), 0)
    assert t is not None
    await b.finish(t, 0, 50, failed=False)
    t2, _ = await b.pick(b.targets("g"), 0)
    assert t2 is not None and t2.id != t.id


async def test_no_cold_start_herd(fakes: Any, router: Any) -> None:
    """Seed bug: concurrent requests at cold start all went to the first key."""
    [(fake, url)] = await fakes(1)
    client = await router([url])
    fake.script.extend([slow(1.0)] * 20)  # all 20 picked while the first are in flight
    replies = await asyncio.gather(
        *(client.post(CHAT, json={"model": "g"}, headers=ALICE) for _ in range(20))
    )
    keys = Counter(r.headers["x-llm-router-key"] for r in replies)
    assert all(r.status == 200 for r in replies)
    assert keys == Counter({"p0#0": 10, "p0#1": 10})
    auth = Counter(s.headers["Authorization"] for s in fake.seen)
    assert auth == Counter({"Bearer sk-p0-a": 10, "Bearer sk-p0-b": 10})


async def test_real_usage_replaces_reservation(one: Any) -> None:
    fake, client = one
    fake.total_tokens = 1234
    r = await client.post(CHAT, json={"model": "g", "max_tokens": 5000}, headers=ALICE)
    assert r.status == 200
    usage = await client.app[STATE].usage("p0/p0#0/up-0")
    assert usage.total == 1234 and usage.reserved == 0
