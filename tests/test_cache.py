"""The response cache on the memory backend: keys, hits, replays, bypass, TTL, LRU, coalescing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from router.app import create_app
from router.config import parse
from router.keys import USAGE_LOG
from tests.conftest import ALICE
from tests.fakes import FakeProvider, config_tree, iter_events, slow, status, stream_failing

BOB = {"Authorization": "Bearer bob-key"}
CHAT = {"model": "g", "messages": [{"role": "user", "content": "hi"}]}
MEMORY = {"backend": "memory"}


def chat(**extra: Any) -> dict[str, Any]:
    return {**CHAT, **extra}


@pytest.fixture
async def cached(fakes: Any, router: Any) -> tuple[FakeProvider, TestClient[Any, Any]]:
    [(fake, url)] = await fakes(1)
    return fake, await router([url], cache=MEMORY)


async def post(
    client: TestClient[Any, Any],
    body: dict[str, Any],
    path: str = "/v1/chat/completions",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    r = await client.post(path, json=body, headers={**ALICE, **(headers or {})})
    return r.status, dict(r.headers), await r.read()


async def status_of(client: TestClient[Any, Any]) -> dict[str, Any]:
    r = await client.get("/status", headers=ALICE)
    data: dict[str, Any] = await r.json()
    return data


async def test_a_repeated_chat_completion_is_answered_from_the_cache(
    cached: tuple[FakeProvider, TestClient[Any, Any]],
) -> None:
    fake, client = cached
    code, miss, first = await post(client, chat())
    assert code == 200 and miss["x-llm-router-cache"] == "miss"
    assert miss["x-llm-router-key"] == "p0#0"
    before = await status_of(client)
    # The same request with other stream/user fields and keys in another order is the same.
    code, hit, again = await post(client, {"user": "u1", "messages": CHAT["messages"],
                                           "model": "g", "stream": False})  # fmt: skip
    assert code == 200 and again == first
    assert len(fake.seen) == 1
    assert hit["x-llm-router-cache"] == "hit"
    assert hit["x-llm-router-attempts"] == "0"
    assert "x-llm-router-key" not in hit
    assert (hit["x-llm-router-provider"], hit["x-llm-router-model"]) == ("p0", "up-0")
    assert hit["x-llm-router-cost"] == "0.000000"
    after = await status_of(client)
    # No usage, reservation or spend on any provider or client key.
    for key in ("usage_total", "reserved", "in_flight", "prompt_tokens", "cost_usd"):
        assert [t[key] for t in after["targets"]] == [t[key] for t in before["targets"]]
    assert after["clients"][0]["prompt_tokens"] == before["clients"][0]["prompt_tokens"]
    assert after["cache"] == {
        **dict.fromkeys(("semantic_hits", "coalesced", "bypass"), 0),
        **{"backend": "memory", "entries": 1, "hits": 1, "misses": 1, "saved_usd": 0.0},
    }
    # A different body is another entry.
    code, other, _ = await post(client, chat(temperature=0))
    assert other["x-llm-router-cache"] == "miss" and len(fake.seen) == 2


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"model": "g", "prompt": "Say hi"}),
        ("/v1/embeddings", {"model": "g", "input": "hello"}),
    ],
)
async def test_completions_and_embeddings_are_cached(
    cached: tuple[FakeProvider, TestClient[Any, Any]], path: str, body: dict[str, Any]
) -> None:
    fake, client = cached
    _, miss, first = await post(client, body, path)
    _, hit, again = await post(client, body, path)
    assert (miss["x-llm-router-cache"], hit["x-llm-router-cache"]) == ("miss", "hit")
    assert again == first and len(fake.seen) == 1


async def test_responses_and_other_groups_carry_no_cache_header(fakes: Any, router: Any) -> None:
    [(fake, url)] = await fakes(1)
    tree = config_tree([url], cache={"backend": "memory", "groups": ["h"]})
    tree["groups"].append({"name": "h", "models": [{"provider": "p0", "name": "up-h"}]})
    client = await router(tree=tree)
    for body, path in ((CHAT, "/v1/chat/completions"), ({**CHAT, "model": "h"}, "/v1/responses")):
        for _ in range(2):
            code, headers, _ = await post(client, body, path)
            assert code == 200 and "x-llm-router-cache" not in headers
    _, _, _ = await post(client, {**CHAT, "model": "h"})
    _, headers, _ = await post(client, {**CHAT, "model": "h"})
    assert headers["x-llm-router-cache"] == "hit" and len(fake.seen) == 5


async def test_a_stream_is_stored_as_the_completion_it_adds_up_to(
    cached: tuple[FakeProvider, TestClient[Any, Any]],
) -> None:
    fake, client = cached
    _, miss, streamed = await post(client, chat(stream=True))
    assert miss["x-llm-router-cache"] == "miss"
    assert b"[DONE]" in streamed and b'"usage"' not in streamed  # the client did not ask
    code, hit, body = await post(client, chat())
    assert code == 200 and hit["x-llm-router-cache"] == "hit" and len(fake.seen) == 1
    reply = orjson.loads(body)
    assert reply["object"] == "chat.completion" and reply["model"] == "up-0"
    message = {"role": "assistant", "content": "Hello!"}
    assert reply["choices"] == [
        {"index": 0, "finish_reason": "stop", "logprobs": None, "message": message}
    ]
    assert reply["usage"]["total_tokens"] == 10  # the usage chunk the router asked for


async def test_a_plain_entry_answers_a_stream_as_a_proper_replay(
    cached: tuple[FakeProvider, TestClient[Any, Any]],
) -> None:
    fake, client = cached
    await post(client, chat())
    for include in (False, True):
        body = chat(stream=True, **({"stream_options": {"include_usage": True}} if include else {}))
        code, hit, data = await post(client, body)
        assert code == 200 and hit["x-llm-router-cache"] == "hit"
        assert hit["Content-Type"].startswith("text/event-stream")
        events = list(iter_events(data))
        assert events[-1] == b"[DONE]"
        chunks = [orjson.loads(e) for e in events[:-1]]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                       if c["choices"])  # fmt: skip
        assert text == "hello"
        finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
        assert [c["choices"][0]["finish_reason"] for c in finish] == ["stop"]
        usage = [c for c in chunks if c.get("usage")]
        assert (usage[0]["usage"]["total_tokens"] == 10) if include else not usage
    assert len(fake.seen) == 1


async def test_bypass_refresh_and_cache_control(
    cached: tuple[FakeProvider, TestClient[Any, Any]],
) -> None:
    fake, client = cached
    fake.total_tokens = 20
    _, headers, _ = await post(client, chat(), headers={"x-llm-router-cache": "bypass"})
    assert headers["x-llm-router-cache"] == "bypass"
    _, headers, _ = await post(client, chat(), headers={"Cache-Control": "no-store"})
    assert headers["x-llm-router-cache"] == "bypass" and len(fake.seen) == 2
    _, headers, _ = await post(client, chat())  # bypass stored nothing
    assert headers["x-llm-router-cache"] == "miss" and len(fake.seen) == 3
    fake.total_tokens = 30
    _, headers, body = await post(client, chat(), headers={"x-llm-router-cache": "Refresh"})
    assert headers["x-llm-router-cache"] == "miss" and len(fake.seen) == 4
    _, headers, body = await post(client, chat())
    assert headers["x-llm-router-cache"] == "hit"
    assert orjson.loads(body)["usage"]["total_tokens"] == 30  # the refreshed reply
    fake.total_tokens = 40
    await post(client, chat(), headers={"Cache-Control": "max-age=0, no-cache"})
    _, _, body = await post(client, chat())
    assert orjson.loads(body)["usage"]["total_tokens"] == 40 and len(fake.seen) == 5
    # no-store wins over no-cache (and over refresh): nothing read, nothing stored.
    _, headers, _ = await post(client, chat(temperature=1), headers={
        "Cache-Control": "no-cache, no-store", "x-llm-router-cache": "refresh"})  # fmt: skip
    assert headers["x-llm-router-cache"] == "bypass"
    _, headers, _ = await post(client, chat(temperature=1))
    assert headers["x-llm-router-cache"] == "miss" and len(fake.seen) == 7
    stats = (await status_of(client))["cache"]
    assert (stats["bypass"], stats["misses"], stats["hits"]) == (3, 4, 2)


async def test_an_unknown_cache_header_value_is_a_400(
    cached: tuple[FakeProvider, TestClient[Any, Any]],
) -> None:
    fake, client = cached
    code, headers, body = await post(client, chat(), headers={"x-llm-router-cache": "hit"})
    assert code == 400 and not fake.seen
    error = orjson.loads(body)["error"]
    assert error["param"] == "x-llm-router-cache" and error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"}


async def test_entries_expire_after_ttl_counted_from_storing(
    fakes: Any, aiohttp_client: Any
) -> None:
    [(fake, url)] = await fakes(1)
    now = [1_000_000.0]
    config = parse(config_tree([url], cache={"backend": "memory", "ttl": 60}), env={})
    client = await aiohttp_client(create_app(config, clock=lambda: now[0]))
    await post(client, chat())
    now[0] += 59
    _, headers, _ = await post(client, chat())
    assert headers["x-llm-router-cache"] == "hit"  # a hit does not extend the TTL:
    now[0] += 2
    _, headers, _ = await post(client, chat())
    assert headers["x-llm-router-cache"] == "miss" and len(fake.seen) == 2


async def test_least_recently_used_entries_go_first(fakes: Any, router: Any) -> None:
    [(fake, url)] = await fakes(1)
    client = await router([url], cache={"backend": "memory", "max_entries": 2})

    async def result(n: int) -> str:
        _, headers, _ = await post(client, chat(seed=n))
        return headers["x-llm-router-cache"]

    assert [await result(n) for n in (1, 2, 1, 3)] == ["miss", "miss", "hit", "miss"]
    assert await result(1) == "hit"  # 2 was the least recently used, not 1
    assert await result(2) == "miss"
    assert (await status_of(client))["cache"]["entries"] == 2


async def test_replies_over_max_entry_bytes_are_not_stored(fakes: Any, router: Any) -> None:
    [(fake, url)] = await fakes(1)
    client = await router([url], cache={"backend": "memory", "max_entry_bytes": 100})
    for _ in range(2):
        _, headers, _ = await post(client, chat())
        assert headers["x-llm-router-cache"] == "miss"


async def test_each_client_key_has_its_own_entries_unless_shared(fakes: Any, router: Any) -> None:
    [(fake, url)] = await fakes(1)
    client = await router([url], cache=MEMORY)
    await post(client, chat())
    _, headers, _ = await post(client, chat(), headers=BOB)
    assert headers["x-llm-router-cache"] == "miss" and len(fake.seen) == 2
    shared = await router([url], cache={"backend": "memory", "scope": "shared"})
    await post(shared, chat())
    _, headers, _ = await post(shared, chat(), headers=BOB)
    assert headers["x-llm-router-cache"] == "hit" and len(fake.seen) == 3


@pytest.mark.parametrize(
    ("action", "stream"),
    [
        (status(400), False),  # passed through, not stored
        (stream_failing(1), True),  # reset mid-stream
        (stream_failing(1, error_event=True), True),  # an error event
        (stream_failing(3, no_done=True), True),  # ended without [DONE]
    ],
)
async def test_errors_and_broken_streams_are_never_stored(
    fakes: Any, router: Any, action: Any, stream: bool
) -> None:
    [(fake, url)] = await fakes(1)
    client = await router([url], cache=MEMORY, retry={"attempts": 1})  # no second chance
    fake.script.append(action)
    await post(client, chat(stream=stream))
    _, headers, _ = await post(client, chat(stream=stream))
    assert headers["x-llm-router-cache"] == "miss" and len(fake.seen) == 2
    state = await status_of(client)
    assert all(t["reserved"] == 0 and t["in_flight"] == 0 for t in state["targets"])


async def test_hits_are_free_under_client_limits_and_logged(
    fakes: Any, router: Any, tmp_path: Path
) -> None:
    [(fake, url)] = await fakes(1)
    log = tmp_path / "usage.jsonl"
    tree = config_tree([url], cache=MEMORY, usage_log=str(log))
    tree["api_keys"][0].update(rpm=1)
    client = await router(tree=tree)
    await post(client, chat())
    for _ in range(3):  # over the one request a minute, but a hit costs nothing
        code, headers, _ = await post(client, chat())
        assert code == 200 and headers["x-llm-router-cache"] == "hit"
    code, _, _ = await post(client, chat(seed=1))
    assert code == 429
    await post(client, chat(), headers={"x-llm-router-cache": "bypass"})
    await client.app[USAGE_LOG].flush()
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    assert [line["cache"] for line in lines] == ["miss", "hit", "hit", "hit", "miss", "bypass"]
    hit = lines[1]
    assert (hit["cost_usd"], hit["attempts"], hit["key"], hit["status"]) == (0, 0, None, 200)
    assert hit["prompt_tokens"] == hit["completion_tokens"] == 0 and hit["provider"] is None
    metrics = await (await client.get("/metrics")).text()
    assert 'llm_router_cache_requests_total{group="g",result="hit"} 3.0' in metrics
    assert 'llm_router_cache_requests_total{group="g",result="bypass"} 1.0' in metrics
    assert 'llm_router_cache_saved_usd_total{group="g"} 0.0' in metrics


async def test_saved_usd_counts_what_each_hit_would_have_cost(fakes: Any, router: Any) -> None:
    [(fake, url)] = await fakes(1)
    tree = config_tree([url], cache=MEMORY)
    tree["groups"][0]["models"][0].update(input_cost=1000, output_cost=2000)
    client = await router(tree=tree)
    _, headers, _ = await post(client, chat())
    cost = float(headers["x-llm-router-cost"])  # 7 prompt and 3 completion tokens
    assert cost == pytest.approx(0.013)
    for _ in range(2):
        await post(client, chat())
    assert (await status_of(client))["cache"]["saved_usd"] == pytest.approx(2 * cost)
    metrics = await (await client.get("/metrics")).text()
    assert 'llm_router_cache_saved_usd_total{group="g"} 0.026' in metrics


@pytest.mark.parametrize("stream", [False, True])
async def test_identical_requests_in_flight_make_one_upstream_call(
    cached: tuple[FakeProvider, TestClient[Any, Any]], stream: bool
) -> None:
    fake, client = cached
    fake.script.append(slow(1.0))
    replies = await asyncio.gather(*(post(client, chat(stream=stream)) for _ in range(20)))
    assert len(fake.seen) == 1
    results = sorted(h["x-llm-router-cache"] for _, h, _ in replies)
    assert results.count("miss") == 1 and set(results) <= {"miss", "coalesced", "hit"}
    for code, headers, body in replies:
        assert code == 200
        if stream:
            events = list(iter_events(body))
            assert events[-1] == b"[DONE]"
            text = "".join(orjson.loads(e)["choices"][0]["delta"].get("content") or ""
                           for e in events[:-1])  # fmt: skip
            assert text == "Hello!"
        else:
            assert orjson.loads(body)["choices"][0]["message"]["content"] == "hello"
        if headers["x-llm-router-cache"] != "miss":
            assert headers["x-llm-router-attempts"] == "0" and "x-llm-router-key" not in headers
    assert (await status_of(client))["cache"]["coalesced"] == results.count("coalesced")


async def test_a_plain_and_a_streamed_twin_coalesce(
    cached: tuple[FakeProvider, TestClient[Any, Any]],
) -> None:
    fake, client = cached
    fake.script.append(slow(0.5))
    plain, streamed = await asyncio.gather(post(client, chat()), post(client, chat(stream=True)))
    assert len(fake.seen) == 1 and plain[0] == streamed[0] == 200
    assert list(iter_events(streamed[2]))[-1] == b"[DONE]"


async def test_when_the_first_fails_the_waiting_ones_go_on_their_own(
    fakes: Any, router: Any
) -> None:
    [(fake, url)] = await fakes(1)
    client = await router([url], cache=MEMORY, retry={"attempts": 1})
    fake.script.append(slow(1.0, status(503)))
    replies = await asyncio.gather(*(post(client, chat()) for _ in range(20)))
    codes = sorted(code for code, _, _ in replies)
    assert codes == [200] * 19 + [502]
    [failed] = [headers for code, headers, _ in replies if code == 502]
    assert failed["x-llm-router-cache"] == "miss"  # errors of a cached path say so too
    # The failed first one let the others go; one of them called upstream for all.
    assert len(fake.seen) == 2
    state = await status_of(client)
    assert all(t["reserved"] == 0 and t["in_flight"] == 0 for t in state["targets"])


async def test_when_the_first_ones_client_leaves_the_waiting_ones_go_on(
    cached: tuple[FakeProvider, TestClient[Any, Any]],
) -> None:
    fake, client = cached
    fake.gate = asyncio.Event()  # the first stream stalls after its first event
    first = await client.post("/v1/chat/completions", json=chat(stream=True), headers=ALICE)
    await first.content.readuntil(b"\n\n")
    waiter = asyncio.create_task(post(client, chat()))
    await asyncio.sleep(0.2)
    assert not waiter.done()  # it waits for the first one
    first.close()  # that client hangs up mid-stream: nothing to store, nothing to hand on
    code, headers, body = await asyncio.wait_for(waiter, 10)
    assert code == 200 and headers["x-llm-router-cache"] == "miss" and len(fake.seen) == 2
    fake.gate.set()
    _, headers, _ = await post(client, chat(stream=True))
    assert headers["x-llm-router-cache"] == "hit"  # the waiter's own reply was stored
