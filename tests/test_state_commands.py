"""Regression guards that time nothing: the Redis commands each request costs, counted with
MONITOR on a real redis-server, so a change that adds one fails here."""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from typing import Any

import pytest

from router.app import create_app
from router.config import parse
from router.keys import STATE
from router.state import lua
from tests.conftest import ALICE
from tests.fakes import FakeProvider, config_tree, slow
from tests.redis_server import Monitor, RedisServer

CHAT = "/v1/chat/completions"
SCRIPTS = {
    hashlib.sha1(src.encode()).hexdigest(): name
    for name, src in vars(lua).items()
    if name.isupper() and isinstance(src, str)
}
HANDSHAKE = {"CLIENT", "HELLO", "PING", "INFO", "SCRIPT", "ECHO"}  # new connections, start


def named(sent: list[list[str]]) -> Counter[str]:
    """Commands by name, scripts by their name in router.state.lua; handshakes left out."""
    out: Counter[str] = Counter()
    for args in sent:
        name = args[0].upper()
        if name == "EVALSHA":
            name = f"EVALSHA {SCRIPTS.get(args[1], args[1])}"
        if name not in HANDSHAKE:
            out[name] += 1
    return out


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"n-{request.node.name[:30]}-{time.time_ns()}"


async def per_request(
    server: RedisServer, fake: FakeProvider, tree: dict[str, Any], aiohttp_client: Any, n: int = 5
) -> tuple[Counter[str], list[Counter[str]]]:
    """The commands of a first request and of each of `n` more, one at a time, each with
    its written-behind commands flushed before the next."""
    # No background refresh within the test: what is counted is what requests cost.
    tree["state"]["refresh"] = 3600
    # Replies take far longer than a write batch's gap, so the reservation is written
    # on its own and then the outcome, in every run (fast replies collapse the two).
    fake.script.extend([slow(0.3)] * (n + 1))
    client = await aiohttp_client(create_app(parse(tree, env={})))
    state = client.app[STATE]
    monitor = Monitor(server)
    try:
        counts = []
        for _ in range(n + 1):
            r = await client.post(CHAT, json={"model": "g", "max_tokens": 5}, headers=ALICE)
            assert r.status == 200, await r.text()
            await state.flush()
            counts.append(named(monitor.commands(scripts=False)))
    finally:
        monitor.close()
    return counts[0], counts[1:]


async def test_a_request_costs_two_written_behind_scripts(
    redis_server: RedisServer, prefix: str, fakes: Any, aiohttp_client: Any
) -> None:
    """The default config (two keys, lowest-usage): a pick reads the view, no Redis; after
    the reply this router's share of the target's load and the success are written."""
    [(fake, url)] = await fakes(1)
    tree = config_tree([url], state=redis_server.state(prefix))
    first, rest = await per_request(redis_server, fake, tree, aiohttp_client)
    # The first pick finds both targets missing from the view and reads them, once.
    assert first == {"EVALSHA LOADS": 2, "EVALSHA SHARE": 2, "EVALSHA RECORD": 1}
    for counts in rest:  # the share with the reservation, then with the usage; the success
        assert counts == {"EVALSHA SHARE": 2, "EVALSHA RECORD": 1}


async def test_limits_cost_one_atomic_script_each(
    redis_server: RedisServer, prefix: str, fakes: Any, aiohttp_client: Any
) -> None:
    """rpm and tpm on the provider key, rpm, tpm and a budget on the client key: each limit
    is one script the request waits for; the rest goes behind."""
    [(fake, url)] = await fakes(1)
    tree = config_tree([url], state=redis_server.state(prefix))
    tree["providers"][0]["api_keys"] = [{"key": "sk-a", "rpm": 1000, "tpm": 10**6}]
    tree["api_keys"][0].update(rpm=1000, tpm=10**6, budget_usd=100)
    tree["groups"][0]["models"][0].update(input_cost=1, output_cost=1)
    _, rest = await per_request(redis_server, fake, tree, aiohttp_client)
    for counts in rest:
        assert counts == {
            # waited for: provider rpm and tpm, client tpm and rpm, the budget hold
            "EVALSHA TAKE": 4,
            "EVALSHA HOLD": 1,
            # behind: the share and the success; the tpm entries set to what was used
            # (provider) and given back and counted again (client); the hold released
            # and the spend added
            "EVALSHA SHARE": 2,
            "EVALSHA RECORD": 1,
            "EVALSHA PUT": 3,
            "ZREM": 1,
            "HSET": 1,
            "EXPIREAT": 1,
        }, counts
