"""Routing policies: each strategy's order, request controls, lanes, prediction, access and
user policies, with fake providers on loopback."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient

from examples.policies.cheapest_first import CheapestFirst
from router.app import create_app
from router.config import parse
from router.policies.complexity import score, tier_for
from router.policies.latency import capacity
from router.policies.predict import projection
from router.schema import ConfigError
from router.statuscli import render
from tests.conftest import ALICE
from tests.fakes import config_tree, slow, status
from tests.fakes_policies import DelayedProvider, LastOnly

CHAT = "/v1/chat/completions"
GREETING = [{"role": "user", "content": "Hi there! How are you?"}]
CODE_QUESTION = [
    {
        "role": "user",
        "content": """I have a Python service that deadlocks under load. Here is the code:

```python
import asyncio
import threading

class Pool:
    def __init__(self, size):
        self.lock = threading.Lock()
        self.items = [object() for _ in range(size)]

    async def get(self):
        with self.lock:
            while not self.items:
                await asyncio.sleep(0.01)
            return self.items.pop()

    def put(self, item):
        with self.lock:
            self.items.append(item)
```

1. Why does it deadlock when the pool is empty and another coroutine calls put()?
2. How would you rewrite get() and put() with asyncio primitives instead?
3. What changes if put() is called from a worker thread, and how do I test that?

Please explain step by step, then finally show the corrected class with type hints.""",
    }
]

MID = [{"role": "user", "content": "Why does this fail? ```def f(x): return x+1``` How to fix?"}]


async def post(
    client: TestClient[Any, Any], headers: dict[str, str] | None = None, **body: Any
) -> Any:
    resp = await client.post(
        CHAT, json={"model": "g", **body}, headers={**ALICE, **(headers or {})}
    )
    await resp.read()
    return resp


async def settled(client: TestClient[Any, Any]) -> None:
    """Invariants after a run: no reservation and no call left behind."""
    data = await (await client.get("/status", headers=ALICE)).json()
    assert all(t["reserved"] == 0 and t["in_flight"] == 0 for t in data["targets"]), data


def where(resp: Any) -> str:
    return f"{resp.headers['x-llm-router-provider']}/{resp.headers['x-llm-router-key']}"


def group_tree(urls: list[str], **group: Any) -> dict[str, Any]:
    tree = config_tree(urls)
    tree["groups"][0].update(group)
    return tree


# -- config --------------------------------------------------------------------------


def test_config_reads_policy_fields_and_names_bad_ones() -> None:
    tree = group_tree(["http://127.0.0.1:1/v1"], strategy="complexity", reserve=0.2, mode="fast")
    tree["groups"][0]["models"][0].update(priority=2, tier="accurate")
    tree["api_keys"][0].update(priority="low", groups=["g"])
    tree["predict_horizon"] = 5
    cfg = parse(tree, env={})
    g = cfg.groups[0]
    assert (g.strategy, g.reserve, g.mode, g.affinity_ttl) == ("complexity", 0.2, "fast", 3600)
    assert (g.models[0].priority, g.models[0].tier) == (2, "accurate")
    assert cfg.client_keys[0].priority == "low" and cfg.client_keys[0].groups == ("g",)
    assert cfg.predict_horizon == 5 and g.headroom_weights["low"] == (0.3, 0.1, 0.6)

    bad = group_tree(
        ["http://127.0.0.1:1/v1"],
        strategy="fastest",
        reserve=1,
        mode="slow",
        headroom_weights={"high": [1, 2]},
    )
    bad["groups"][0]["models"][0]["tier"] = "huge"
    bad["api_keys"][0].update(priority="urgent", groups=["nope"])
    with pytest.raises(ConfigError) as exc:
        parse(bad, env={})
    text = str(exc.value)
    for path in (
        "groups[0].strategy: must be one of lowest-usage, round-robin",
        "groups[0].reserve:",
        "groups[0].mode:",
        "groups[0].headroom_weights.high:",
        "groups[0].models[0].tier:",
        "api_keys[0].priority:",
        'api_keys[0].groups[0]: no group named "nope"',
    ):
        assert path in text, text


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        ("no_such_package.policies:X", "cannot import module 'no_such_package.policies'"),
        ("tests.fakes_policies:Missing", "has no attribute 'Missing'"),
        ("tests.fakes_policies:Broken", "Broken() failed: ValueError: cannot start"),
        ("tests.fakes_policies:DelayedProvider", "has no order(request, candidates) method"),
    ],
)
def test_a_user_policy_that_cannot_load_is_a_config_error(strategy: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(group_tree(["http://127.0.0.1:1/v1"], strategy=strategy), env={})
    [error] = exc.value.errors
    assert error.startswith("groups[0].strategy: ") and message in error, error


# -- strategies ----------------------------------------------------------------------


async def test_priority_uses_tier_0_until_it_fails_then_tier_1(fakes: Any, router: Any) -> None:
    [(f0, u0), (f1, u1)] = await fakes(2)
    tree = group_tree([u1, u0], strategy="priority")  # listed first, but priority 1
    tree["groups"][0]["models"] = [
        {"provider": "p0", "name": "up-0", "priority": 1},
        {"provider": "p1", "name": "up-1", "priority": 0},
    ]
    client = await router(tree=tree)
    served = [where(await post(client)) for _ in range(6)]
    assert served == ["p1/p1#0", "p1/p1#1"] * 3  # tier 0, lowest usage within it
    f0.script.extend([status(500), status(500)])  # tier 0 (both keys of p1: the fake u0)
    resp = await post(client)
    assert where(resp) == "p0/p0#0" and resp.headers["x-llm-router-attempts"] == "3"
    assert where(await post(client)) == "p1/p1#0"  # tier 0 again once it answers
    await settled(client)


async def test_a_hedge_goes_to_the_next_target_in_the_strategys_order(
    fakes: Any, router: Any
) -> None:
    [(f0, u0), (_, u1)] = await fakes(2)
    tree = group_tree([u0, u1], strategy="priority", hedge_after=0.2)
    tree["groups"][0]["models"] = [
        {"provider": "p0", "name": "up-0", "priority": 0},
        {"provider": "p1", "name": "up-1", "priority": 1},
    ]
    tree["providers"][0]["api_keys"] = ["sk-only"]
    client = await router(tree=tree)
    f0.script.append(slow(2.0))
    resp = await post(client, stream=True)
    assert resp.status == 200 and resp.headers["x-llm-router-provider"] == "p1"
    await settled(client)


async def test_lowest_cost_picks_the_cheaper_model_for_this_request(
    fakes: Any, router: Any
) -> None:
    [(_, u0), (_, u1)] = await fakes(2)
    tree = group_tree([u0, u1], strategy="lowest-cost")
    tree["groups"][0]["models"] = [
        {"provider": "p0", "name": "up-0", "input_cost": 1, "output_cost": 10},
        {"provider": "p1", "name": "up-1", "input_cost": 20, "output_cost": 1},
    ]
    client = await router(tree=tree)
    # A short prompt with a long answer: output price decides; the cheap one keeps it.
    long_answer = [await post(client, max_tokens=2000, messages=GREETING) for _ in range(6)]
    assert {r.headers["x-llm-router-provider"] for r in long_answer} == {"p1"}
    # A long prompt with a one-token answer: input price decides.
    prompt = [{"role": "user", "content": "summarise: " + "word " * 2000}]
    resp = await post(client, max_completion_tokens=1, messages=prompt)
    assert resp.headers["x-llm-router-provider"] == "p0"


async def test_lowest_latency_moves_to_the_faster_fake(aiohttp_server: Any, router: Any) -> None:
    slow, fast = DelayedProvider(delay=0.05), DelayedProvider(delay=0.005)
    urls = []
    for fake in (slow, fast):
        server = await aiohttp_server(fake.app())
        urls.append(f"http://127.0.0.1:{server.port}/v1")
    tree = group_tree(urls, strategy="lowest-latency", latency_probe_after=0.5)
    for p in tree["providers"]:
        p["api_keys"] = [p["api_keys"][0]]
    client = await router(tree=tree)
    served = [(await post(client)).headers["x-llm-router-provider"] for _ in range(20)]
    assert served[:2] == ["p0", "p1"]  # each unsampled target goes first once
    assert served[10:] == ["p1"] * 10, served
    import asyncio

    await asyncio.sleep(0.7)  # the slow one has not been picked for latency_probe_after
    assert (await post(client)).headers["x-llm-router-provider"] == "p0"
    assert (await post(client)).headers["x-llm-router-provider"] == "p1"


async def test_headroom_prefers_the_key_with_room(fakes: Any, router: Any) -> None:
    [(_, url)] = await fakes(1)
    tree = group_tree([url], strategy="headroom")
    tree["predict_horizon"] = 0  # (else the burst below would put `big` last as running dry)
    tree["providers"][0]["api_keys"] = [
        {"key": "sk-small", "name": "small", "rpm": 5},
        {"key": "sk-big", "name": "big", "rpm": 50},
    ]
    client = await router(tree=tree)
    keys = [(await post(client)).headers["x-llm-router-key"] for _ in range(6)]
    assert keys == ["big"] * 6  # lowest usage would alternate


def test_headroom_capacity_is_the_scarcest_limit() -> None:
    cfg = parse(
        {
            "groups": [{"name": "g", "models": [{"provider": "p", "name": "m"}]}],
            "providers": [
                {"name": "p", "type": "mock", "api_keys": [{"key": "k", "rpm": 10, "tpm": 1000}]},
                {"name": "q", "type": "mock"},
            ],
        },
        env={},
    )
    from router.balancer import Balancer
    from router.state.memory import MemoryState

    [t] = Balancer(cfg, MemoryState()).targets("g")
    assert capacity(t, 4, 100, 100) == pytest.approx(0.5)  # rpm: (10 - 4 - 1) / 10
    assert capacity(t, 0, 700, 100) == pytest.approx(0.2)  # tpm: (1000 - 700 - 100) / 1000
    assert capacity(t, 20, 0, 1) == 0.0


async def test_complexity_sends_greetings_fast_and_hard_code_questions_accurate(
    fakes: Any, router: Any
) -> None:
    [(_, u0), (mid_fake, u1), (fast_fake, u2)] = await fakes(3)
    tree = group_tree([u0, u1, u2], strategy="complexity")
    tree["groups"][0]["models"] = [
        {"provider": "p0", "name": "big", "tier": "accurate"},
        {"provider": "p1", "name": "mid", "tier": "balanced"},
        {"provider": "p2", "name": "small", "tier": "fast"},
    ]
    client = await router(tree=tree)
    hello = await post(client, messages=GREETING)
    assert hello.headers["x-llm-router-model"] == "small"
    assert hello.headers["x-llm-router-tier"] == "fast"
    assert float(hello.headers["x-llm-router-complexity"]) < 0.35
    hard = await post(client, messages=CODE_QUESTION)
    assert hard.headers["x-llm-router-model"] == "big", hard.headers["x-llm-router-complexity"]
    assert float(hard.headers["x-llm-router-complexity"]) >= 0.7
    forced = await post(client, {"x-llm-router-mode": "accurate"}, messages=GREETING)
    assert forced.headers["x-llm-router-tier"] == "accurate"
    streamed = await post(client, messages=CODE_QUESTION, stream=True)
    assert streamed.headers["x-llm-router-tier"] == "accurate"
    assert streamed.headers["Content-Type"].startswith("text/event-stream")
    # The fast tier failing: the nearest tier (balanced) serves, and says so.
    fast_fake.script.extend([status(500), status(500)])
    moved = await post(client, messages=GREETING)
    assert moved.status == 200 and moved.headers["x-llm-router-tier"] == "balanced"
    # Every reply of the group says the score, failures too (no target served: no tier).
    fast_fake.script.extend([status(503)] * 2)
    mid_fake.script.append(status(503))
    bad = await post(client, messages=GREETING)
    assert bad.status == 502 and "x-llm-router-tier" not in bad.headers
    assert float(bad.headers["x-llm-router-complexity"]) < 0.35
    await settled(client)


async def test_a_refused_request_of_a_complexity_group_still_says_its_score(
    fakes: Any, router: Any
) -> None:
    [(_, url)] = await fakes(1)
    tree = group_tree([url], strategy="complexity")
    tree["api_keys"][0]["rpm"] = 1
    client = await router(tree=tree)
    assert (await post(client, messages=GREETING)).status == 200
    refused = await post(client, messages=GREETING)  # over alice's rpm: no upstream call
    assert refused.status == 429 and "x-llm-router-tier" not in refused.headers
    assert float(refused.headers["x-llm-router-complexity"]) < 0.35


def test_complexity_score_and_tiers() -> None:
    assert score({"messages": GREETING}) < 0.35
    assert score({"messages": CODE_QUESTION}) >= 0.7
    assert 0.35 <= score({"messages": MID}) < 0.7
    assert score({"messages": GREETING, "tools": [{"type": "function"}]}) > score(
        {"messages": GREETING}
    )
    assert score({"input": [{"role": "user", "content": [{"type": "input_text", "text": "x"}]}]})
    assert tier_for("fast", 0.9) == "fast" and tier_for("accurate", 0.0) == "accurate"
    assert [tier_for("balanced", s) for s in (0.1, 0.5, 0.8)] == ["fast", "balanced", "accurate"]


async def test_complexity_equally_near_tiers_go_in_config_order(fakes: Any, router: Any) -> None:
    [(_, u0), (_, u1)] = await fakes(2)
    tree = group_tree([u0, u1], strategy="complexity")
    tree["groups"][0]["models"] = [
        {"provider": "p0", "name": "acc", "tier": "accurate"},
        {"provider": "p1", "name": "fst", "tier": "fast"},
    ]
    client = await router(tree=tree)
    resp = await post(client, {"x-llm-router-mode": "balanced"}, messages=MID)
    assert 0.35 <= float(resp.headers["x-llm-router-complexity"]) < 0.7
    assert resp.headers["x-llm-router-tier"] == "accurate"  # balanced wanted: both 1 away


async def test_round_robin_takes_turns_and_skips_unavailable(fakes: Any, router: Any) -> None:
    [(f0, u0), (_, u1)] = await fakes(2)
    client = await router(tree=group_tree([u0, u1], strategy="round-robin"))
    served = [where(await post(client)) for _ in range(8)]
    assert served == ["p0/p0#0", "p0/p0#1", "p1/p1#0", "p1/p1#1"] * 2
    f0.script.append(status(429, {"Retry-After": "30"}))  # p0#0 cools down
    assert where(await post(client)) == "p0/p0#1"  # its turn; failed over to the next
    served = [where(await post(client)) for _ in range(4)]
    assert served == ["p0/p0#1", "p1/p1#0", "p1/p1#1", "p0/p0#1"]  # p0#0 skipped


# -- request controls ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-llm-router-priority", "urgent"),
        ("x-llm-router-mode", "turbo"),
        ("x-llm-router-session", "x" * 300),
        ("x-llm-router-provider", "nope"),
        ("x-llm-router-provider", "p0/other-model"),
    ],
)
async def test_invalid_request_controls_are_400_naming_the_header(
    one: Any, header: str, value: str
) -> None:
    fake, client = one
    resp = await post(client, {header: value})
    err = (await resp.json())["error"]
    assert resp.status == 400 and err["param"] == header and err["type"] == "invalid_request_error"
    assert set(err) == {"message", "type", "param", "code"} and not fake.seen


async def test_a_pin_goes_first_and_falls_back(fakes: Any, router: Any) -> None:
    [(_, u0), (f1, u1)] = await fakes(2)
    client = await router([u0, u1])
    pinned = [await post(client, {"x-llm-router-provider": "p1"}) for _ in range(4)]
    assert {r.headers["x-llm-router-provider"] for r in pinned} == {"p1"}
    exact = await post(client, {"x-llm-router-provider": "p1/up-1"})
    assert exact.headers["x-llm-router-model"] == "up-1"
    f1.script.extend([status(500), status(500)])
    fallback = await post(client, {"x-llm-router-provider": "p1"})
    assert fallback.status == 200 and fallback.headers["x-llm-router-provider"] == "p0"


async def test_a_session_sticks_to_its_target_and_moves_when_it_fails(
    fakes: Any, router: Any
) -> None:
    [(f0, u0), (_, u1)] = await fakes(2)
    client = await router([u0, u1])
    s1 = {"x-llm-router-session": "conversation-1"}
    first = where(await post(client, s1))
    others = [where(await post(client)) for _ in range(3)]  # usage moves on without it
    assert len(set(others)) == 3
    assert [where(await post(client, s1)) for _ in range(3)] == [first] * 3
    # Another client with the same session id is another session.
    bob = await client.post(
        CHAT, json={"model": "g"}, headers={"Authorization": "Bearer bob-key", **s1}
    )
    assert bob.status == 200
    f0.script.append(status(500))  # the session's target (p0#0) fails once
    moved = where(await post(client, s1))
    assert moved != first
    assert where(await post(client, s1)) == moved  # the session moved with it
    # A pin beats the session.
    assert where(await post(client, {**s1, "x-llm-router-provider": "p0"})).startswith("p0/")


async def test_lanes_keep_a_reserve_for_high_priority(fakes: Any, router: Any) -> None:
    [(_, url)] = await fakes(1)
    tree = group_tree([url], reserve=0.2)
    tree["providers"][0]["api_keys"] = [{"key": "sk-a", "rpm": 10}]
    tree["api_keys"].append({"name": "ci", "key": "ci-key", "priority": "low"})
    client = await router(tree=tree)
    normal = [(await post(client)).status for _ in range(9)]
    assert normal == [200] * 8 + [429]
    ci = {"Authorization": "Bearer ci-key", "x-llm-router-priority": "high"}
    asked_high = await client.post(CHAT, json={"model": "g"}, headers=ci)
    assert asked_high.status == 429  # a low key asking for high is served as low
    assert "Retry-After" in asked_high.headers
    high = [(await post(client, {"x-llm-router-priority": "high"})).status for _ in range(3)]
    assert high == [200, 200, 429]  # high may use the whole limit: 10 in the window
    await settled(client)


async def test_prediction_sends_normal_requests_away_from_a_key_about_to_run_dry(
    fakes: Any, router: Any
) -> None:
    [(_, u0), (_, u1)] = await fakes(2)
    tree = config_tree([u0, u1])
    tree["providers"][0]["api_keys"] = [{"key": "sk-a", "name": "A", "rpm": 10}]
    tree["providers"][1]["api_keys"] = [{"key": "sk-b", "name": "B", "rpm": 1000}]
    client = await router(tree=tree)
    for _ in range(8):  # B carries more usage ...
        assert (await post(client, {"x-llm-router-provider": "p1"})).status == 200
    for _ in range(5):  # ... and A gets a burst: 5 of its 10 in about a second
        assert (await post(client, {"x-llm-router-provider": "p0"})).status == 200
    normal = await post(client)
    assert normal.headers["x-llm-router-key"] == "B"  # lowest usage alone would pick A
    high = await post(client, {"x-llm-router-priority": "high"})
    assert high.headers["x-llm-router-key"] == "A"  # high requests are not reordered
    data = await (await client.get("/status", headers=ALICE)).json()
    by_key = {t["key"]: t for t in data["targets"]}
    assert 0 <= by_key["A"]["exhausts_in"] <= 10
    assert by_key["B"]["exhausts_in"] > 10
    assert "exhausts_in" in render(data, "http://x")


def test_projection() -> None:
    assert projection(10, 5, 5, 99.5, 100.0) == pytest.approx(1.0)  # 5/s over at least 1 s
    assert projection(10, 5, 5, 90.0, 100.0) == pytest.approx(10.0)  # 0.5/s
    assert projection(10, 12, 2, 99.0, 100.0) == 0.0
    assert projection(10, 0, 0, 100.0, 100.0) is None


async def test_access_lists_only_a_clients_groups(fakes: Any, router: Any) -> None:
    [(fake, url)] = await fakes(1)
    tree = config_tree([url])
    tree["groups"].append({"name": "secret", "models": [{"provider": "p0", "name": "s"}]})
    tree["api_keys"][1]["groups"] = ["g"]  # bob
    client = await router(tree=tree)
    bob = {"Authorization": "Bearer bob-key"}
    resp = await client.post(CHAT, json={"model": "secret"}, headers=bob)
    err = (await resp.json())["error"]
    assert resp.status == 404 and err["code"] == "model_not_found"
    assert "g" in err["message"] and "secret" not in err["message"].split("Available")[1]
    assert not fake.seen
    models = await (await client.get("/v1/models", headers=bob)).json()
    assert [m["id"] for m in models["data"]] == ["g"]
    assert (await client.get("/v1/models/secret", headers=bob)).status == 404
    assert (await client.get("/v1/models/g", headers=bob)).status == 200
    alice = await (await client.get("/v1/models", headers=ALICE)).json()
    assert [m["id"] for m in alice["data"]] == ["g", "secret"]
    assert (await client.post(CHAT, json={"model": "secret"}, headers=ALICE)).status == 200


# -- user policies ---------------------------------------------------------------------


async def test_the_example_policy_orders_by_cost_and_observes_every_request(
    fakes: Any, aiohttp_client: Any
) -> None:
    [(f0, u0), (f1, u1)] = await fakes(2)
    tree = group_tree([u0, u1], strategy="examples.policies.cheapest_first:CheapestFirst")
    tree["groups"][0]["models"] = [
        {"provider": "p0", "name": "dear", "input_cost": 5, "output_cost": 15},
        {"provider": "p1", "name": "cheap", "input_cost": 0.1, "output_cost": 0.4},
    ]
    tree["retry"] = {"attempts": 3}
    cfg = parse(tree, env={})
    policy = cfg.groups[0].policy
    assert isinstance(policy, CheapestFirst)
    client = await aiohttp_client(create_app(cfg))
    served = [(await post(client)).headers["x-llm-router-model"] for _ in range(4)]
    assert served == ["cheap"] * 4
    f1.script.extend([status(500), status(500)])
    fell_over = await post(client)  # both cheap keys fail: the dear model serves
    assert fell_over.headers["x-llm-router-model"] == "dear"
    assert fell_over.headers["x-llm-router-attempts"] == "3"
    f0.script.extend([status(500)] * 3)
    f1.script.extend([status(500)] * 3)
    failed = await post(client)
    assert failed.status == 502
    # observe: once per request, the failed one included
    assert policy.served == {"p1/cheap": 4, "p0/dear": 1} and policy.failed == 1
    await settled(client)


async def test_a_user_policy_gets_the_documented_fields_and_leaves_out_candidates(
    fakes: Any, aiohttp_client: Any
) -> None:
    [(f0, u0), (f1, u1)] = await fakes(2)
    tree = group_tree([u0, u1], strategy="tests.fakes_policies:LastOnly")
    tree["groups"][0]["models"][1].update(priority=3, tier="fast", input_cost=1.5)
    cfg = parse(tree, env={})
    policy = cfg.groups[0].policy
    assert isinstance(policy, LastOnly)
    client = await aiohttp_client(create_app(cfg))
    headers = {"x-llm-router-session": "s", "x-llm-router-mode": "fast"}
    resp = await post(client, headers, max_tokens=5)
    assert where(resp) == "p1/p1#1"
    [req] = policy.requests
    assert (req.group, req.path, req.client, req.priority) == (
        "g",
        "/chat/completions",
        "alice",
        "normal",
    )
    assert (req.mode, req.session, req.body["max_tokens"]) == ("fast", "s", 5)
    assert req.prompt_tokens > 0
    with pytest.raises(TypeError):
        req.body["model"] = "x"  # type: ignore[index]
    cands = {f"{c.provider}/{c.key}": c for c in policy.seen[0]}
    assert set(cands) == {"p0/p0#0", "p0/p0#1", "p1/p1#0", "p1/p1#1"}
    c = cands["p1/p1#1"]
    assert (c.model, c.priority, c.tier, c.input_cost, c.breaker) == (
        "up-1",
        3,
        "fast",
        1.5,
        "closed",
    )
    assert (c.rpm_limit, c.tpm_limit, c.in_flight, c.latency_ms) == (None, None, 0, None)
    # The one it chose fails: the candidates it left out are still not called.
    f1.script.append(status(500))
    resp = await post(client)
    assert where(resp) == "p1/p1#1" and resp.headers["x-llm-router-attempts"] == "2"
    assert not f0.seen  # p0 left out every time
    import asyncio

    stream = await post(client, {"x-llm-router-session": "s"}, stream=True)
    assert where(stream) == "p1/p1#1" and b"[DONE]" in await stream.read()
    await asyncio.sleep(0.05)  # async observe runs in a task
    assert [e.status for e in policy.events] == [200, 200, 200]
    assert policy.events[2].ttft_ms is not None and policy.events[2].ttft_ms > 0
    await settled(client)
    e = policy.events[0]
    assert (e.group, e.client, e.session, e.provider, e.model, e.key) == (
        "g",
        "alice",
        "s",
        "p1",
        "up-1",
        "p1#1",
    )
    assert e.attempts == 1 and e.prompt_tokens == 7 and e.completion_tokens == 3
    assert e.latency_ms > 0 and e.ttft_ms is None and e.error is None


@pytest.mark.parametrize("name", ["Raising", "Foreign"])
async def test_a_failing_user_policy_falls_back_to_lowest_usage_and_is_logged_once(
    fakes: Any, router: Any, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    [(_, u0), (_, u1)] = await fakes(2)
    client = await router(tree=group_tree([u0, u1], strategy=f"tests.fakes_policies:{name}"))
    with caplog.at_level(logging.WARNING, logger="router.policies"):
        served = [where(await post(client)) for _ in range(4)]
    assert served == ["p0/p0#0", "p0/p0#1", "p1/p1#0", "p1/p1#1"]  # lowest usage
    complaints = [r for r in caplog.records if "tests.fakes_policies" in r.getMessage()]
    assert len(complaints) == 1 and "lowest usage" in complaints[0].getMessage()


# -- check -------------------------------------------------------------------------------


def test_check_prints_strategy_fields_and_warns_about_unpriced_models(tmp_path: Path) -> None:
    tree = {
        "groups": [
            {
                "name": "cheap",
                "strategy": "lowest-cost",
                "models": [
                    {"provider": "m", "name": "priced", "input_cost": 0.5},
                    {"provider": "m", "name": "free"},
                ],
            },
            {
                "name": "tiers",
                "strategy": "priority",
                "models": [{"provider": "m", "name": "a", "priority": 2}],
            },
            {
                "name": "cx",
                "strategy": "complexity",
                "models": [{"provider": "m", "name": "b", "tier": "fast"}],
            },
        ],
        "providers": [{"name": "m", "type": "mock"}],
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    out = subprocess.run(
        [sys.executable, "-m", "router", "check", str(path)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "group cheap (strategy: lowest-cost):" in text
    assert "input_cost=0.5 output_cost=0" in text
    assert "group tiers (strategy: priority):" in text and "priority=2" in text
    assert "tier=fast" in text
    warnings = [line for line in text.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: groups[0].models[1]: m/free has no input_cost or output_cost, "
        "so lowest-cost counts it as free"
    ]
    assert Counter(text.split())["ok"] == 1
