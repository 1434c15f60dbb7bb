"""SSE relay: event by event, usage captured, include_usage handled, failures in-band."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from router.keys import STATE
from tests.conftest import ALICE
from tests.fakes import iter_events, raw_reply, stream_failing

CHAT = "/v1/chat/completions"


def stream_body(**extra: Any) -> dict[str, Any]:
    return {"model": "g", "stream": True, "messages": [{"role": "user", "content": "hi"}], **extra}


async def usage_of(client: Any, target_id: str) -> float:
    return (await client.app[STATE].usage(target_id)).total


async def test_stream_relays_events_and_hides_injected_usage_chunk(one: Any) -> None:
    fake, client = one
    r = await client.post(CHAT, json=stream_body(), headers=ALICE)
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/event-stream")
    events = list(iter_events(await r.read()))
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Hello!"
    assert all(c["choices"] for c in chunks)  # the usage-only chunk was removed
    # ...but the router asked for it upstream and counted it.
    assert fake.seen[0].json["stream_options"] == {"include_usage": True}
    assert await usage_of(client, "p0/p0#0/up-0") == 10


async def test_stream_keeps_usage_chunk_when_client_asked(one: Any) -> None:
    fake, client = one
    body = stream_body(stream_options={"include_usage": True})
    r = await client.post(CHAT, data=orjson.dumps(body), headers=ALICE)
    events = [orjson.loads(e) for e in iter_events(await r.read()) if e != b"[DONE]"]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["total_tokens"] == 10
    assert fake.seen[0].raw == orjson.dumps({**body, "model": "up-0"})


async def test_stream_options_without_include_usage_is_merged(one: Any) -> None:
    fake, client = one
    body = stream_body(stream_options={"include_obfuscation": False})
    r = await client.post(CHAT, json=body, headers=ALICE)
    await r.read()
    assert fake.seen[0].json["stream_options"] == {
        "include_obfuscation": False,
        "include_usage": True,
    }


async def test_first_event_arrives_before_upstream_finishes(one: Any) -> None:
    fake, client = one
    fake.gate = asyncio.Event()
    r = await client.post(CHAT, json=stream_body(), headers=ALICE)
    assert r.status == 200
    first = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 5)
    assert b'"Hel"' in first
    fake.gate.set()
    assert (await r.read()).endswith(b"data: [DONE]\n\n")


async def test_mid_stream_reset_ends_with_error_event_not_done(one: Any) -> None:
    fake, client = one
    fake.script.append(stream_failing(after=2))
    fake.gate = asyncio.Event()
    r = await client.post(CHAT, json=stream_body(), headers=ALICE)
    assert r.status == 200
    first = await r.content.readuntil(b"\n\n")
    fake.gate.set()
    events = list(iter_events(first + await r.read()))
    assert b"[DONE]" not in events
    error = orjson.loads(events[-1])["error"]
    assert set(error) == {"message", "type", "param", "code"}


async def test_stream_without_done_is_reported_as_truncated(one: Any) -> None:
    fake, client = one
    fake.script.append(stream_failing(after=99, no_done=True))
    r = await client.post(CHAT, json=stream_body(), headers=ALICE)
    events = list(iter_events(await r.read()))
    assert "[DONE]" in orjson.loads(events[-1])["error"]["message"]


async def test_upstream_error_event_mid_stream_is_forwarded_once(one: Any) -> None:
    fake, client = one
    fake.script.append(stream_failing(after=1, error_event=True))
    fake.gate = asyncio.Event()  # the first event reaches the client before the error
    r = await client.post(CHAT, json=stream_body(), headers=ALICE)
    first = await r.content.readuntil(b"\n\n")
    fake.gate.set()
    events = list(iter_events(first + await r.read()))
    assert b"[DONE]" not in events
    assert [orjson.loads(e).get("error") is not None for e in events].count(True) == 1


async def test_stream_failing_before_first_event_fails_over(one: Any) -> None:
    fake, client = one
    fake.script.append(stream_failing(after=0))
    r = await client.post(CHAT, json=stream_body(), headers=ALICE)
    assert r.status == 200
    assert r.headers["x-llm-router-attempts"] == "2"
    assert r.headers["x-llm-router-key"] == "p0#1"
    assert (await r.read()).endswith(b"data: [DONE]\n\n")


async def test_client_disconnect_cancels_upstream(one: Any) -> None:
    fake, client = one
    fake.gate = asyncio.Event()  # the upstream stalls after its first event
    fake.disconnected = asyncio.Event()
    r = await client.post(CHAT, json=stream_body(), headers=ALICE)
    await r.content.readuntil(b"\n\n")
    r.close()  # the client hangs up mid-stream
    await asyncio.wait_for(fake.disconnected.wait(), 5)
    # The reservation is released and the partial stream is still counted.
    usage = await client.app[STATE].usage("p0/p0#0/up-0")
    for _ in range(50):
        if usage.reserved == 0:
            break
        await asyncio.sleep(0.02)
        usage = await client.app[STATE].usage("p0/p0#0/up-0")
    assert usage.reserved == 0 and usage.total > 0


async def test_keepalive_comments_pass_through(fakes: Any, router: Any) -> None:
    from aiohttp import web

    [(fake, url)] = await fakes(1)

    async def with_comment(request: web.Request, seen: Any) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b": OPENROUTER PROCESSING\n\n")
        await resp.write(b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n')
        await resp.write(b"data: [DONE]\n\n")
        return resp

    fake.script.append(with_comment)
    client = await router([url])
    r = await client.post(CHAT, json=stream_body(), headers=ALICE)
    assert (await r.read()).startswith(b": OPENROUTER PROCESSING\n\n")


async def test_upstream_refusing_stream_options_gets_the_request_as_sent(one: Any) -> None:
    from aiohttp import web

    fake, client = one

    async def picky(request: web.Request, seen: Any) -> web.StreamResponse:
        if "stream_options" in seen.json:
            err = {"error": {"message": "Unrecognized request argument: stream_options"}}
            return web.json_response(err, status=400)
        return await fake.stream(request, seen)

    fake.script.extend([picky, picky])
    body = stream_body()
    r = await client.post(CHAT, data=orjson.dumps(body), headers=ALICE)
    assert r.status == 200
    assert (await r.read()).endswith(b"data: [DONE]\n\n")
    assert fake.seen[1].raw == orjson.dumps({**body, "model": "up-0"})
    assert await usage_of(client, "p0/p0#0/up-0") > 0  # estimated, since none was reported


def responses_event(kind: str, **fields: Any) -> bytes:
    return (
        b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **fields}) + b"\n\n"
    )


RESPONSE_DELTAS = [
    responses_event("response.created", response={"id": "r1", "status": "in_progress"}),
    responses_event("response.output_text.delta", delta="Hel"),
    responses_event("response.output_text.delta", delta="lo"),
]
COMPLETED = responses_event(
    "response.completed",
    response={"id": "r1", "status": "completed",
              "usage": {"input_tokens": 4, "output_tokens": 3, "total_tokens": 7}},
)  # fmt: skip


def responses_body() -> dict[str, Any]:
    return {"model": "g", "stream": True, "input": "hi"}


async def test_responses_stream_is_relayed_and_its_usage_counted(one: Any) -> None:
    fake, client = one
    body = b"".join(RESPONSE_DELTAS) + COMPLETED
    fake.script.append(raw_reply(body, "text/event-stream"))
    r = await client.post("/v1/responses", json=responses_body(), headers=ALICE)
    assert r.status == 200
    assert await r.read() == body  # no [DONE] wanted, no error event added
    assert await usage_of(client, "p0/p0#0/up-0") == 7
    assert "stream_options" not in fake.seen[-1].json  # the Responses API has no such field


async def test_responses_stream_without_completed_is_reported_as_truncated(one: Any) -> None:
    fake, client = one
    fake.script.append(raw_reply(b"".join(RESPONSE_DELTAS), "text/event-stream"))
    r = await client.post("/v1/responses", json=responses_body(), headers=ALICE)
    events = list(iter_events(await r.read()))
    error = orjson.loads(events[-1])["error"]
    assert "response.completed" in error["message"]


async def test_responses_stream_failing_first_fails_over(one: Any) -> None:
    fake, client = one
    failed = responses_event(
        "response.failed", response={"id": "r0", "status": "failed",
                                     "error": {"code": "server_error", "message": "boom"}}
    )  # fmt: skip
    fake.script.append(raw_reply(failed, "text/event-stream"))
    fake.script.append(raw_reply(b"".join(RESPONSE_DELTAS) + COMPLETED, "text/event-stream"))
    r = await client.post("/v1/responses", json=responses_body(), headers=ALICE)
    assert r.headers["x-llm-router-attempts"] == "2"
    assert (await r.read()).endswith(COMPLETED)
