"""The Anthropic adapter through the router, against a fake Anthropic server on loopback:
what the fake receives, what the client sees, failover across vendors, /v1/messages."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from router.app import create_app
from router.breaker import Health
from router.config import parse
from router.demo import demo_config
from router.keys import METRICS, STATE, USAGE_LOG
from router.usagelog import read
from tests.conftest import ALICE
from tests.fakes import iter_events
from tests.fakes_anthropic import FakeAnthropic, error, stream_fault
from tests.test_observability import samples, value

CHAT = "/v1/chat/completions"
CLAUDE = "claude/claude#0/claude-up"
OA = "oa/oa#0/gpt-up"


def tree(anthropic_url: str, openai_url: str | None = None, **provider: Any) -> dict[str, Any]:
    """Groups: `claude` (Anthropic only), `mixed` (Anthropic first, then OpenAI), `gpt`."""
    claude = {"provider": "claude", "name": "claude-up", "input_cost": 3, "output_cost": 15}
    providers: list[dict[str, Any]] = [{"name": "claude", "type": "anthropic",
        "base_url": anthropic_url, "api_keys": ["sk-ant-secret"], **provider}]  # fmt: skip
    groups: list[dict[str, Any]] = [{"name": "claude", "models": [claude]}]
    if openai_url:
        providers.append({"name": "oa", "base_url": openai_url, "api_keys": ["sk-oa"]})
        gpt = {"provider": "oa", "name": "gpt-up"}
        groups += [{"name": "mixed", "models": [claude, gpt]}, {"name": "gpt", "models": [gpt]}]
    return {"api_keys": [{"name": "alice", "key": "alice-secret"}], "groups": groups,
            "providers": providers}  # fmt: skip


@pytest.fixture
async def stack(aiohttp_server: Any, aiohttp_client: Any, fakes: Any) -> Any:
    """(Anthropic fake, OpenAI fake, make(**provider settings) -> router client)."""
    fake = FakeAnthropic()
    server = await aiohttp_server(fake.app())
    [(oa, oa_url)] = await fakes(1)

    async def make(suffix: str = "", top: dict[str, Any] | None = None, **provider: Any) -> Any:
        url = f"http://127.0.0.1:{server.port}{suffix}"
        config = {**tree(url, oa_url, **provider), **(top or {})}
        return await aiohttp_client(create_app(parse(config, env={})))

    return fake, oa, make


async def health(client: Any, tid: str) -> Health:
    [h] = await client.app[STATE].health([tid])
    return h


async def settled(client: Any) -> None:
    """The invariants after any request: no reservation or in-flight call left behind."""
    for tid in (CLAUDE, OA):
        assert (await client.app[STATE].usage(tid)).reserved == 0
    assert all(s.in_flight == 0 for s in client.app[METRICS].targets.values())


def messages() -> list[dict[str, Any]]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]


async def test_plain_chat_is_translated_both_ways(stack: Any) -> None:
    fake, _, make = stack
    client = await make()
    r = await client.post(CHAT, json={"model": "claude", "messages": messages()}, headers=ALICE)
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "Hello!"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == 28  # 20 input + 3 cache written + 5 cache read
    assert body["usage"]["completion_tokens"] == 12
    assert r.headers["x-llm-router-provider"] == "claude"
    assert r.headers["x-llm-router-cost"] == f"{(28 * 3 + 12 * 15) / 1e6:.6f}"
    [seen] = fake.seen
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == "sk-ant-secret"
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in seen.headers
    assert seen.json == {"model": "claude-up", "system": "Be brief.", "max_tokens": 4096,
                         "messages": [{"role": "user", "content": [
                             {"type": "text", "text": "hi"}]}]}  # fmt: skip
    await settled(client)


async def test_the_fake_receives_the_golden_translation(stack: Any) -> None:
    """System, images, tools, tool_choice, tool results merged, stop_sequences, user: what
    the Anthropic server receives for the golden chat request, through the router."""
    from tests.test_anthropic_translate import GOLDEN_CHAT, GOLDEN_MESSAGES

    fake, _, make = stack
    client = await make()
    r = await client.post(CHAT, json=GOLDEN_CHAT, headers=ALICE)
    assert r.status == 200
    assert (await r.read()).endswith(b"data: [DONE]\n\n")
    assert fake.seen[0].json == GOLDEN_MESSAGES


async def test_base_url_with_v1_and_configured_headers(stack: Any) -> None:
    fake, _, make = stack
    client = await make("/v1/", headers={"Anthropic-Version": "2024-01-01", "x-extra": "1"})
    r = await client.post(CHAT, json={"model": "claude", "messages": messages()}, headers=ALICE)
    assert r.status == 200
    assert fake.seen[0].path == "/v1/messages"
    sent = fake.seen[0].headers.items()
    assert [v for k, v in sent if k.lower() == "anthropic-version"] == ["2024-01-01"]  # it wins
    assert fake.seen[0].headers["x-extra"] == "1"


async def test_streamed_chat_is_translated_event_by_event(stack: Any) -> None:
    fake, _, make = stack
    client = await make()
    body = {"model": "claude", "messages": messages(), "stream": True}
    r = await client.post(CHAT, json=body, headers=ALICE)
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    raw = await r.read()
    chunks = [orjson.loads(e) for e in iter_events(raw) if e != b"[DONE]"]
    assert raw.endswith(b"data: [DONE]\n\n")
    assert b": ping" in raw  # a ping becomes an SSE comment
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "Hello!"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"] for c in chunks)  # no usage chunk: the client did not ask
    assert fake.seen[0].json["stream"] is True and "stream_options" not in fake.seen[0].json
    usage = await client.app[STATE].usage(CLAUDE)
    assert usage.total == 28 + 12  # counted from message_start and message_delta
    await settled(client)


async def test_streamed_usage_when_asked(stack: Any) -> None:
    _, _, make = stack
    client = await make()
    body = {"model": "claude", "messages": messages(), "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    r = await client.post(CHAT, json=body, headers=ALICE)
    chunks = [orjson.loads(e) for e in iter_events(await r.read()) if e != b"[DONE]"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] == 40


async def test_refused_field_is_a_400_naming_it_and_calls_nobody(stack: Any) -> None:
    fake, oa, make = stack
    client = await make()
    ask = {"model": "claude", "messages": messages(), "n": 2}
    r = await client.post(CHAT, json=ask, headers=ALICE)
    assert r.status == 400 and r.headers["x-llm-router-attempts"] == "0"
    err = (await r.json())["error"]
    assert err["param"] == "n" and err["type"] == "invalid_request_error"
    assert err["code"] == "unsupported_parameter"
    assert fake.seen == []
    # In a mixed group the targets that can honour it serve it.
    r = await client.post(CHAT, json={**ask, "model": "mixed"}, headers=ALICE)
    assert r.status == 200 and r.headers["x-llm-router-provider"] == "oa"
    assert fake.seen == [] and oa.seen[0].json["n"] == 2
    await settled(client)


async def test_anthropic_400_passes_in_openai_shape_and_is_not_retried(stack: Any) -> None:
    fake, oa, make = stack
    client = await make()
    fake.script.append(error(400, "invalid_request_error"))
    r = await client.post(CHAT, json={"model": "mixed", "messages": messages()}, headers=ALICE)
    assert r.status == 400
    assert await r.json() == {"error": {"message": "fake invalid_request_error",
        "type": "invalid_request_error", "param": None, "code": None}}  # fmt: skip
    assert r.headers["x-llm-router-attempts"] == "1" and oa.seen == []


@pytest.mark.parametrize("streamed", [False, True])
async def test_cross_vendor_failover_529_then_openai_serves(
    stack: Any, streamed: bool, tmp_path: Any
) -> None:
    fake, oa, make = stack
    client = await make(top={"usage_log": str(tmp_path / "usage.jsonl")})
    fake.script.append(error(529, "overloaded_error"))
    body = {"model": "mixed", "messages": messages(), "stream": streamed}
    r = await client.post(CHAT, json=body, headers=ALICE)
    assert r.status == 200
    assert r.headers["x-llm-router-provider"] == "oa"
    assert r.headers["x-llm-router-attempts"] == "2"
    data = await r.read()
    assert (b'"hello"' in data) if not streamed else data.endswith(b"data: [DONE]\n\n")
    assert len(fake.seen) == 1 and len(oa.seen) == 1
    assert (await health(client, CLAUDE)).failures == 1
    await settled(client)
    await client.app[USAGE_LOG].flush()
    [line] = read(str(tmp_path / "usage.jsonl"))
    assert (line["provider"], line["attempts"], line["status"]) == ("oa", 2, 200)
    assert line["prompt_tokens"] + line["completion_tokens"] == 10


async def test_error_event_before_any_chunk_fails_over(stack: Any) -> None:
    fake, oa, make = stack
    client = await make()
    fake.script.append(stream_fault(error_after=0))
    body = {"model": "mixed", "messages": messages(), "stream": True}
    r = await client.post(CHAT, json=body, headers=ALICE)
    assert r.status == 200 and r.headers["x-llm-router-provider"] == "oa"
    assert (await r.read()).endswith(b"data: [DONE]\n\n")
    assert (await health(client, CLAUDE)).failures == 1
    await settled(client)


@pytest.mark.parametrize("fault", [{"error_after": 3}, {"cut_after": 4}], ids=["error", "cut"])
async def test_fault_after_first_chunk_ends_with_an_openai_error_event(
    stack: Any, fault: dict[str, int]
) -> None:
    fake, oa, make = stack
    client = await make()
    fake.script.append(stream_fault(**fault))
    fake.gate = asyncio.Event()  # the fault comes after the client has its first chunk
    body = {"model": "mixed", "messages": messages(), "stream": True}
    r = await client.post(CHAT, json=body, headers=ALICE)
    assert r.status == 200 and r.headers["x-llm-router-provider"] == "claude"
    first = await r.content.readuntil(b"\n\n")
    fake.gate.set()
    events = list(iter_events(first + await r.read()))
    assert events[-1] != b"[DONE]"
    assert orjson.loads(events[-1])["error"]["message"]
    assert oa.seen == []
    assert (await health(client, CLAUDE)).failures == 1
    assert (await client.app[STATE].usage(CLAUDE)).total > 0  # what was streamed still counts
    await settled(client)


@pytest.mark.parametrize("path", [CHAT, "/v1/messages"])
async def test_client_hanging_up_cancels_the_anthropic_call(stack: Any, path: str) -> None:
    fake, _, make = stack
    client = await make()
    fake.gate = asyncio.Event()  # the upstream stalls after message_start
    body = {"model": "claude", "max_tokens": 64, "messages": messages()[1:], "stream": True}
    r = await client.post(path, json=body, headers=NATIVE)
    await r.content.readuntil(b"\n\n")
    r.close()
    await asyncio.wait_for(fake.disconnected.wait(), 5)
    for _ in range(50):  # the router settles the call after the upstream is gone
        if (await client.app[STATE].usage(CLAUDE)).reserved == 0:
            break
        await asyncio.sleep(0.02)
    await settled(client)
    assert (await client.app[STATE].usage(CLAUDE)).total > 0  # message_start's usage counts
    assert (await health(client, CLAUDE)).failures == 0  # the client left: no verdict


async def test_anthropic_rate_limits_reach_an_openai_client_as_x_ratelimit(stack: Any) -> None:
    fake, _, make = stack
    client = await make()
    reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 30))
    fake.extra_headers = {"anthropic-ratelimit-requests-limit": "50",
                          "anthropic-ratelimit-requests-remaining": "49",
                          "anthropic-ratelimit-requests-reset": reset}  # fmt: skip
    r = await client.post(CHAT, json={"model": "claude", "messages": messages()}, headers=ALICE)
    assert r.headers["anthropic-ratelimit-requests-remaining"] == "49"
    assert r.headers["x-ratelimit-limit-requests"] == "50"
    assert r.headers["x-ratelimit-remaining-requests"] == "49"
    assert 25 < float(r.headers["x-ratelimit-reset-requests"].rstrip("s")) <= 30


async def test_429_with_anthropic_reset_headers_cools_the_target(stack: Any) -> None:
    fake, oa, make = stack
    client = await make()
    reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
    fake.script.append(error(429, "rate_limit_error", {
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": reset}))  # fmt: skip
    r = await client.post(CHAT, json={"model": "mixed", "messages": messages()}, headers=ALICE)
    assert r.status == 200 and r.headers["x-llm-router-provider"] == "oa"
    h = await health(client, CLAUDE)
    assert h.rate_limited and 50 < h.cooldown_until - time.time() <= 61
    r = await client.post(CHAT, json={"model": "mixed", "messages": messages()}, headers=ALICE)
    assert r.headers["x-llm-router-provider"] == "oa" and len(fake.seen) == 1


async def test_every_attempt_rate_limited_gives_429(stack: Any) -> None:
    fake, _, make = stack
    client = await make()
    fake.script += [error(429, "rate_limit_error", {"retry-after": "7"})] * 3
    r = await client.post(CHAT, json={"model": "claude", "messages": messages()}, headers=ALICE)
    assert r.status == 429 and "Retry-After" in r.headers
    assert (await r.json())["error"]["type"] == "rate_limit_error"


async def test_other_endpoints_skip_anthropic_targets(stack: Any) -> None:
    fake, oa, make = stack
    client = await make()
    r = await client.post("/v1/embeddings", json={"model": "claude", "input": "x"}, headers=ALICE)
    assert r.status == 400
    err = (await r.json())["error"]
    assert "/v1/embeddings" in err["message"] and err["param"] == "model"
    r = await client.post("/v1/embeddings", json={"model": "mixed", "input": "x"}, headers=ALICE)
    assert r.status == 200 and r.headers["x-llm-router-provider"] == "oa"
    assert fake.seen == []


async def test_x_api_key_is_a_client_key_on_every_endpoint(stack: Any) -> None:
    _, _, make = stack
    client = await make()
    body = {"model": "claude", "messages": messages()}
    r = await client.post(CHAT, json=body, headers={"x-api-key": "alice-secret"})
    assert r.status == 200
    r = await client.get("/v1/models", headers={"x-api-key": "alice-secret"})
    assert r.status == 200
    r = await client.post(CHAT, json=body, headers={"x-api-key": "wrong"})
    assert r.status == 401


# --- /v1/messages ---------------------------------------------------------------------------

NATIVE = {"x-api-key": "alice-secret", "anthropic-version": "2023-06-01"}


async def test_messages_body_is_byte_faithful_with_only_model_spliced(stack: Any) -> None:
    fake, _, make = stack
    client = await make()
    raw = (
        b'{ "model" : "claude",\n "max_tokens": 64, "messages": [{"role": "user", '
        b'"content": "h\\u00e9 \\"model\\""}], "top_k": 5, "thinking": {"type": "disabled"}}'
    )
    headers = {**NATIVE, "anthropic-beta": "tools-2099-01-01", "Content-Type": "application/json"}
    r = await client.post("/v1/messages", data=raw, headers=headers)
    assert r.status == 200, await r.text()
    assert fake.seen[0].raw == raw.replace(b'"claude"', b'"claude-up"', 1)
    assert fake.seen[0].headers["anthropic-beta"] == "tools-2099-01-01"
    assert fake.seen[0].headers["x-api-key"] == "sk-ant-secret"  # the provider key, not alice's
    reply = await r.json()
    assert reply["type"] == "message" and reply["content"][0]["text"] == "Hello!"
    assert r.headers["x-llm-router-cost"] == f"{(28 * 3 + 12 * 15) / 1e6:.6f}"
    assert (await client.app[STATE].usage(CLAUDE)).total == 40
    await settled(client)


async def test_messages_stream_relayed_and_counted(stack: Any) -> None:
    fake, _, make = stack
    client = await make()
    body = {"model": "claude", "max_tokens": 64, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    r = await client.post("/v1/messages", json=body, headers=NATIVE)
    raw = await r.read()
    assert raw.startswith(b"event: message_start\n")
    assert raw.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    assert "stream_options" not in fake.seen[0].json
    assert (await client.app[STATE].usage(CLAUDE)).total == 40
    await settled(client)


async def test_messages_stream_cut_ends_with_an_anthropic_error_event(stack: Any) -> None:
    fake, _, make = stack
    client = await make()
    fake.script.append(stream_fault(cut_after=4))
    fake.gate = asyncio.Event()
    body = {"model": "claude", "max_tokens": 64, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    r = await client.post("/v1/messages", json=body, headers=NATIVE)
    first = await r.content.readuntil(b"\n\n")
    fake.gate.set()
    last = (first + await r.read()).rstrip(b"\n").split(b"\n\n")[-1]
    assert last.startswith(b"event: error\ndata: ")
    assert orjson.loads(last.split(b"data: ", 1)[1])["error"]["type"] == "api_error"
    assert (await health(client, CLAUDE)).failures == 1
    assert (await client.app[STATE].usage(CLAUDE)).total == 28 + 1  # message_start: so far
    await settled(client)


async def test_messages_fail_over_between_anthropic_targets_only(stack: Any) -> None:
    fake, oa, make = stack
    client = await make()
    fake.script += [error(529, "overloaded_error")] * 3
    body = {"model": "mixed", "max_tokens": 64, "messages": [{"role": "user", "content": "x"}]}
    r = await client.post("/v1/messages", json=body, headers=NATIVE)
    assert r.status == 502
    assert (await r.json())["type"] == "error"
    assert (await r.json())["error"]["type"] == "api_error"
    assert oa.seen == [] and len(fake.seen) == 3  # the OpenAI target is skipped
    await settled(client)


@pytest.mark.parametrize(
    ("model", "headers", "status", "kind"),
    [
        ("gpt", NATIVE, 400, "invalid_request_error"),  # no Anthropic target
        ("nope", NATIVE, 404, "not_found_error"),
        ("claude", {"x-api-key": "wrong"}, 401, "authentication_error"),
    ],
)
async def test_messages_errors_are_in_anthropic_shape(
    stack: Any, model: str, headers: dict[str, str], status: int, kind: str
) -> None:
    _, _, make = stack
    client = await make()
    body = {"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
    r = await client.post("/v1/messages", json=body, headers=headers)
    assert r.status == status
    reply = await r.json()
    assert reply["type"] == "error" and reply["error"]["type"] == kind
    assert reply["error"]["message"]


async def test_messages_upstream_400_passes_unchanged(stack: Any) -> None:
    fake, _, make = stack
    client = await make()
    fake.script.append(error(400, "invalid_request_error"))
    body = {"model": "claude", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
    r = await client.post("/v1/messages", json=body, headers=NATIVE)
    assert r.status == 400
    err = {"type": "invalid_request_error", "message": "fake invalid_request_error"}
    assert await r.json() == {"type": "error", "error": err}


async def test_first_byte_of_a_translated_stream_is_not_held_back(stack: Any) -> None:
    """The fake holds the rest of its stream until the client has the first chunk: a relay
    that buffered would deadlock here. The delay is printed; the bound is generous."""
    fake, _, make = stack
    client = await make()
    fake.gate = asyncio.Event()
    body = {"model": "claude", "messages": messages(), "stream": True}
    r = await client.post(CHAT, json=body, headers=ALICE)
    first = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 5)
    arrived = asyncio.get_running_loop().time()
    assert fake.sent_first is not None
    print(f"first byte {1000 * (arrived - fake.sent_first):.2f} ms after the fake sent it")
    assert arrived - fake.sent_first < 0.5
    assert orjson.loads(first[6:])["choices"][0]["delta"]["role"] == "assistant"
    fake.gate.set()
    assert (await r.read()).endswith(b"data: [DONE]\n\n")


# --- the mock speaking Anthropic (the demo's demo-claude group) -----------------------------


async def test_demo_claude_on_the_mock(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(demo_config(env={})))
    ask = {"model": "demo-claude", "messages": [{"role": "user", "content": "hello"}]}
    r = await client.post(CHAT, json=ask)
    assert (await r.json())["choices"][0]["message"]["content"] == "[MOCK] hello"
    r = await client.post(CHAT, json={**ask, "stream": True})
    chunks = [orjson.loads(e) for e in iter_events(await r.read()) if e != b"[DONE]"]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "[MOCK] hello"
    native = {**ask, "max_tokens": 32}
    r = await client.post("/v1/messages", json=native)
    assert (await r.json())["content"] == [{"type": "text", "text": "[MOCK] hello"}]
    r = await client.post("/v1/messages", json={**native, "stream": True})
    assert (await r.read()).endswith(b'data: {"type":"message_stop"}\n\n')
    r = await client.post("/v1/messages", json=ask)  # no max_tokens: Anthropic's 400
    assert r.status == 400 and (await r.json())["error"]["type"] == "invalid_request_error"
    tools = [{"type": "function", "function": {"name": "lookup"}}]
    r = await client.post(CHAT, json={**ask, "tools": tools, "tool_choice": "required"})
    [call] = (await r.json())["choices"][0]["message"]["tool_calls"]
    assert call["function"] == {"name": "lookup", "arguments": "{}"}
    r = await client.post("/v1/messages", json={**native, "model": "demo"})
    assert r.status == 400  # an OpenAI-speaking mock has no Anthropic API


def test_mixed_group_parses_and_anthropic_defaults() -> None:
    groups = [{"name": "g", "models": [{"provider": "a", "name": "m"}]}]
    providers = [{"name": "a", "type": "anthropic", "api_keys": ["k"]}]
    cfg = parse({"groups": groups, "providers": providers}, env={})
    assert cfg.providers[0].base_url == "https://api.anthropic.com"
    assert cfg.providers[0].api == "anthropic"
    with pytest.raises(Exception, match=r"providers\[0\].api: only a type: mock"):
        parse({"groups": [], "providers": [{"name": "a", "base_url": "http://x",
                                            "api": "anthropic"}]}, env={})  # fmt: skip


def test_demo_with_anthropic_key_uses_the_native_adapter() -> None:
    cfg = demo_config(env={"ANTHROPIC_API_KEY": "sk-ant"})
    p = cfg.provider("anthropic")
    assert (p.type, p.api, p.base_url) == ("anthropic", "anthropic", "https://api.anthropic.com")


async def test_cost_and_metrics_for_streams_on_both_endpoints(stack: Any) -> None:
    _, _, make = stack
    client = await make()
    chat = {"model": "claude", "messages": messages(), "stream": True}
    native = {"model": "claude", "max_tokens": 64, "stream": True,
              "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    await (await client.post(CHAT, json=chat, headers=ALICE)).read()
    await (await client.post("/v1/messages", json=native, headers=NATIVE)).read()
    m = samples(await (await client.get("/metrics")).text())
    target = {"provider": "claude", "model": "claude-up", "key": "claude#0"}
    assert value(m, "llm_router_prompt_tokens_total", **target) == 2 * 28
    assert value(m, "llm_router_completion_tokens_total", **target) == 2 * 12
    cost = value(m, "llm_router_cost_usd_total", **target, client="alice")
    assert cost == pytest.approx(2 * (28 * 3 + 12 * 15) / 1e6)
    assert value(m, "llm_router_requests_total", group="claude", status="200", **target) == 2


async def test_messages_hedge_to_a_second_anthropic_target(
    aiohttp_server: Any, aiohttp_client: Any
) -> None:
    slow_fake, fast_fake = FakeAnthropic(), FakeAnthropic(words=("fast",))
    urls = [f"http://127.0.0.1:{(await aiohttp_server(f.app())).port}"
            for f in (slow_fake, fast_fake)]  # fmt: skip
    cfg = tree(urls[0])
    cfg["providers"].append({**cfg["providers"][0], "name": "claude2", "base_url": urls[1]})
    models = [{"provider": "claude", "name": "claude-up"}, {"provider": "claude2", "name": "c2"}]
    cfg["groups"] = [{"name": "claude", "hedge_after": 0.1, "models": models}]
    client = await aiohttp_client(create_app(parse(cfg, env={})))

    async def stall(request: Any, seen: Any) -> Any:
        await asyncio.sleep(3)
        return await slow_fake.ok(request, seen)

    slow_fake.script.append(stall)
    body = {"model": "claude", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
    r = await client.post("/v1/messages", json=body, headers=NATIVE)
    assert r.status == 200 and r.headers["x-llm-router-provider"] == "claude2"
    assert (await r.json())["content"][0]["text"] == "fast"
    assert (await client.app[STATE].usage(CLAUDE)).reserved == 0  # the loser let go


async def test_messages_client_limits_answer_in_anthropic_shape(aiohttp_client: Any) -> None:
    cfg = tree("http://127.0.0.1:1")  # a closed port: the first call fails, the second is refused
    cfg["api_keys"][0]["rpm"] = 1
    client = await aiohttp_client(create_app(parse(cfg, env={})))
    body = {"model": "claude", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
    r = await client.post("/v1/messages", json=body, headers=NATIVE)
    assert r.status == 502 and (await r.json())["error"]["type"] == "api_error"
    r = await client.post("/v1/messages", json=body, headers=NATIVE)
    assert r.status == 429 and "Retry-After" in r.headers
    assert (await r.json())["error"]["type"] == "rate_limit_error"
