"""Accounting and upstream replies that a client or a provider could poison (issue 12):
a capped reservation, a cut stream charged what it relayed, max_reply_bytes, total_tokens."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from aiohttp import web

from router.app import create_app
from router.config import parse
from router.keys import STATE, USAGE_LOG
from router.payload import prompt_tokens
from router.usagelog import read
from tests.conftest import ALICE
from tests.fakes import RouterProcess, Seen, config_tree, stream_failing
from tests.fakes_hostile import huge_reply
from tests.test_cli import run_cli
from tests.test_core_faults import settle_down
from tests.test_http_hostile import _rss_kib

CHAT = "/v1/chat/completions"
KEY_A, KEY_B = "p0/p0#0/up-0", "p0/p0#1/up-0"


async def test_a_huge_max_tokens_stream_cut_after_two_events_is_charged_what_it_relayed(
    fakes: Any, aiohttp_client: Any
) -> None:
    """max_tokens 10**15 reserved 5e14 tokens and was charged half of it: the key was never
    picked again. Now the reservation is capped and the charge is what was streamed."""
    [(fake, url)] = await fakes(1)
    client = await aiohttp_client(create_app(parse(config_tree([url]), env={})))
    fake.gate = asyncio.Event()  # the stream waits after its first content event
    body = {"model": "g", "stream": True, "max_tokens": 10**15,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    r = await client.post(CHAT, json=body, headers=ALICE)
    assert b"Hel" in await r.content.readuntil(b"\n\n")
    [reserved] = [(await client.app[STATE].usage(KEY_A)).reserved]
    assert 32768 <= reserved < 32768 + 100  # the default max_output_tokens cap, plus the prompt
    r.close()  # the client leaves
    await settle_down(client, KEY_A, KEY_B)
    charged = (await client.app[STATE].usage(KEY_A)).total
    assert charged == prompt_tokens(json.dumps(body).encode()) + 1  # "Hel": 1 token, estimated
    picked = []
    for _ in range(5):  # (each reply counts 10 tokens on the other key)
        reply = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
        picked.append(reply.headers["x-llm-router-key"])
    assert "p0#0" in picked  # the key is used again


async def test_max_output_tokens_of_the_group_caps_the_reservation(
    fakes: Any, aiohttp_client: Any
) -> None:
    [(fake, url)] = await fakes(1)
    tree = config_tree([url])
    tree["groups"][0]["models"][0]["max_output_tokens"] = 100
    client = await aiohttp_client(create_app(parse(tree, env={})))
    fake.gate = asyncio.Event()
    body = {"model": "g", "stream": True, "max_completion_tokens": 10**6, "messages": []}
    r = await client.post(CHAT, json=body, headers=ALICE)
    await r.content.readuntil(b"\n\n")
    reserved = (await client.app[STATE].usage(KEY_A)).reserved
    assert 100 < reserved < 150
    fake.gate.set()
    await r.read()
    await settle_down(client, KEY_A, KEY_B)


async def test_a_stream_broken_before_its_usage_is_charged_prompt_plus_streamed_text(
    fakes: Any, aiohttp_client: Any
) -> None:
    [(fake, url)] = await fakes(1)
    fake.words = ("x" * 400, "y" * 400, "z")
    fake.script.append(stream_failing(2))  # two long events, then a reset: no usage chunk
    client = await aiohttp_client(create_app(parse(config_tree([url]), env={})))
    body = {"model": "g", "stream": True, "max_tokens": 10**9, "messages": []}
    r = await client.post(CHAT, json=body, headers=ALICE)
    assert b'"stream_error"' in await r.read()
    await settle_down(client, KEY_A, KEY_B)
    charged = (await client.app[STATE].usage(KEY_A)).total
    prompt = prompt_tokens(json.dumps(body).encode())
    assert prompt + 200 <= charged <= prompt + 200 + 20  # 800 characters ~ 200 tokens


async def test_usage_log_lines_carry_total_tokens_and_usage_shows_a_total_column(
    fakes: Any, aiohttp_client: Any, tmp_path: Path
) -> None:
    [(_, url)] = await fakes(1)
    log = tmp_path / "usage.jsonl"
    client = await aiohttp_client(create_app(parse(config_tree([url], usage_log=str(log)), env={})))
    for stream in (False, True):
        body = {"model": "g", "stream": stream, "messages": []}
        assert (await client.post(CHAT, json=body, headers=ALICE)).status == 200
    await client.app[USAGE_LOG].flush()
    lines = list(read(str(log)))
    assert [(x["prompt_tokens"], x["completion_tokens"], x["total_tokens"]) for x in lines] == [
        (7, 3, 10),
        (8, 2, 10),
    ]
    with log.open("ab") as f:  # an old line without total_tokens, and junk
        f.write(b'{"time": "2026-01-01T00:00:00Z", "prompt_tokens": 5, "completion_tokens": 1}\n')
        f.write(b'[1, 2]\n"text"\n{"prompt_tokens": "many", "status": null}\n')
    out = run_cli("usage", "--log", str(log), "--by", "day")
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.splitlines()
    assert header.split()[5] == "total_tokens"
    assert [row.split()[5] for row in rows] == ["0", "6", "20"]  # no day, 2026-01-01, today
    assert "Traceback" not in out.stderr


def test_a_reply_over_max_reply_bytes_is_a_502_naming_it_and_memory_stays_flat(
    tmp_path: Path, fakes_thread: tuple
) -> None:
    """An 80 MiB reply was relayed whole (+240 MiB RSS). Over max_reply_bytes the router
    stops reading at the limit and answers 502 naming it."""
    fake, url, _ = fakes_thread
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config_tree([url], max_reply_bytes=4 * 2**20)))
    server = RouterProcess(["--config", str(path)], cwd=tmp_path)
    try:
        with httpx.Client(base_url=server.url, headers=ALICE, timeout=60) as client:
            for _ in range(5):
                assert client.post(CHAT, json={"model": "g"}).status_code == 200
            before = _rss_kib(server.proc.pid)
            for announce in (True, False):
                fake.script[:] = [huge_reply(80 * 2**20, announce=announce)] * 3
                began = time.monotonic()
                r = client.post(CHAT, json={"model": "g"})
                assert r.status_code == 502, r.text
                assert "reply larger than max_reply_bytes (4194304 bytes)" in r.text
                assert time.monotonic() - began < 30
            grown = _rss_kib(server.proc.pid) - before
            assert client.post(CHAT, json={"model": "g"}).status_code == 200
    finally:
        code, out = server.stop()
    print(f"two 80 MiB replies refused at 4 MiB; router RSS grew {grown} KiB")
    assert grown < 16 * 1024, f"RSS grew by {grown} KiB"
    assert code == 0 and "Traceback" not in out


async def test_a_stream_event_that_never_ends_fails_at_16_mib(
    fakes: Any, aiohttp_client: Any
) -> None:
    """Noticed with max_reply_bytes: a stream whose event never ends was buffered whole."""
    [(fake, url)] = await fakes(1)

    async def endless_event(request: web.Request, seen: Seen) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        with contextlib.suppress(ConnectionResetError):
            await resp.write(b'data: {"x": "')
            for _ in range(40):  # 20 MiB, no blank line
                await resp.write(b"x" * 2**19)
        return resp

    fake.script[:] = [endless_event] * 3
    client = await aiohttp_client(create_app(parse(config_tree([url]), env={})))
    r = await client.post(CHAT, json={"model": "g", "stream": True}, headers=ALICE)
    assert r.status == 502
    assert "an SSE event larger than 16777216 bytes" in (await r.json())["error"]["message"]
    await settle_down(client, KEY_A, KEY_B)
