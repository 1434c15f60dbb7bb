"""Regressions from the review of the core (issue 14): hedged streams, reservations that
leaked, reload, cancelled requests in the accounting, a failing usage log, responses that
had already started, clients that stop reading, and the drain's length.

Each test states the invariant it checks afterwards: reservations and in-flight back to 0,
every request in the usage log, nothing sent with an old secret.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from aiohttp import web
from openai import AsyncOpenAI

from router import statuscli
from router.app import create_app
from router.config import parse
from router.keys import LIVE, METRICS, STATE, USAGE_LOG
from router.usagelog import UsageLog, read
from tests.conftest import ALICE
from tests.fakes import (
    RouterProcess,
    Seen,
    chunk,
    config_tree,
    slow,
    status,
)

CHAT = "/v1/chat/completions"
P0, P1 = "p0/p0#0/up-0", "p1/p1#0/up-1"
STREAM = {"model": "g", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def one_key(tree: dict[str, Any]) -> dict[str, Any]:
    for p in tree["providers"]:
        p["api_keys"] = p["api_keys"][:1]
    return tree


async def reserved(client: Any, *tids: str) -> list[float]:
    return [(await client.app[STATE].usage(t)).reserved for t in tids]


def in_flight(client: Any) -> int:
    return sum(s.in_flight for s in client.app[METRICS].targets.values())


async def settle_down(client: Any, *tids: str, seconds: float = 10.0) -> None:
    """Wait until nothing is reserved or in flight (fails the test after `seconds`)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(await reserved(client, *tids)) and in_flight(client) == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"still reserved {await reserved(client, *tids)}, {in_flight(client)}")


# -- 1. hedged streams -------------------------------------------------------------------


async def hedged_pair(fakes: Any, aiohttp_client: Any) -> tuple[Any, Any, Any]:
    [(f0, u0), (f1, u1)] = await fakes(2)
    tree = one_key(config_tree([u0, u1]))
    tree["groups"][0]["hedge_after"] = 0.1
    return f0, f1, await aiohttp_client(create_app(parse(tree, env={})))


async def test_a_hedged_stream_longer_than_hedge_after_arrives_whole_from_one_call(
    fakes: Any, aiohttp_client: Any
) -> None:
    f0, f1, client = await hedged_pair(fakes, aiohttp_client)
    f0.gate = asyncio.Event()  # p0's stream pauses after its first event...
    asyncio.get_running_loop().call_later(0.6, f0.gate.set)  # ...well past hedge_after
    sdk = AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="alice-secret")
    text = ""
    async with await sdk.chat.completions.create(
        model="g", messages=[{"role": "user", "content": "hi"}], stream=True
    ) as stream:
        async for part in stream:
            if part.choices and part.choices[0].delta.content:
                text += part.choices[0].delta.content
    await sdk.close()
    assert text == "Hello!"
    assert len(f0.seen) == 1 and f1.seen == []  # one upstream call; no hedge fired mid-stream
    await settle_down(client, P0, P1)
    assert (await client.app[STATE].usage(P1)).total == 0  # nothing charged to p1


async def test_a_hedge_still_fires_while_the_first_target_sends_no_headers(
    fakes: Any, aiohttp_client: Any
) -> None:
    f0, f1, client = await hedged_pair(fakes, aiohttp_client)
    f0.script.append(slow(3.0))
    r = await client.post(CHAT, json=STREAM, headers=ALICE)
    body = await r.read()
    assert r.status == 200 and r.headers["x-llm-router-provider"] == "p1"
    assert body.rstrip().endswith(b"data: [DONE]")
    await settle_down(client, P0, P1)


# -- 2. reservations owned from the pick on ----------------------------------------------


async def test_a_client_leaving_during_retry_backoff_releases_its_pick(
    fakes: Any, aiohttp_client: Any
) -> None:
    [(f0, u0)] = await fakes(1)
    tree = one_key(config_tree([u0], retry={"attempts": 3, "backoff": 5, "max_backoff": 5}))
    tree["providers"][0]["api_keys"] = [{"key": "sk-a", "rpm": 100}]
    client = await aiohttp_client(create_app(parse(tree, env={})))
    f0.script.append(status(500))
    request = asyncio.ensure_future(client.post(CHAT, json={"model": "g"}, headers=ALICE))
    deadline = time.monotonic() + 10
    while not f0.seen and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)  # the router now sleeps in its backoff, a target reserved
    request.cancel()  # the client hangs up
    with pytest.raises(asyncio.CancelledError):
        await request
    await settle_down(client, P0)
    [rpm] = await client.app[STATE].windows(["rpm:p0/p0#0"], time.time())
    assert rpm.total == 1  # the one call made; the pick for the retry was given back
    assert len(f0.seen) == 1


async def test_hedge_losers_cancelled_before_they_ran_release_their_reservations(
    aiohttp_client: Any,
) -> None:
    tree = {
        "api_key": "alice-secret",
        "providers": [
            {"name": "m", "type": "mock", "api_keys": ["k1", "k2"], "latency_ms": 200},
        ],
        "groups": [{"name": "g", "hedge_after": 0.2, "models": [{"provider": "m", "name": "x"}]}],
    }
    client = await aiohttp_client(create_app(parse(tree, env={})))
    for _ in range(30):
        hi = [{"role": "user", "content": "hi"}]
        r = await client.post(CHAT, json={"model": "g", "messages": hi}, headers=ALICE)
        assert r.status == 200
    await settle_down(client, "m/m#0/x", "m/m#1/x")


# -- 3 and 4. reload ----------------------------------------------------------------------


def _write(path: Path, tree: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(tree))


def _reload(server: RouterProcess, check: Any, seconds: float = 10.0) -> None:
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the reload did not take effect"
        time.sleep(0.1)


def test_reload_applies_rotated_secrets_headers_and_timeouts(
    tmp_path: Path, fakes_thread: tuple
) -> None:
    fake, url, _ = fakes_thread
    path = tmp_path / "config.yaml"
    tree = one_key(config_tree([url], retry={"attempts": 1}))
    tree["providers"][0].update(api_keys=["sk-old", "sk-second"], headers={"X-Team": "a"})
    _write(path, tree)
    server = RouterProcess(["--config", str(path), "--loop", "asyncio"], cwd=tmp_path)
    try:

        def send() -> httpx.Response:
            return httpx.post(server.url + CHAT, json={"model": "g"}, headers=ALICE, timeout=30)

        assert send().status_code == 200
        assert fake.seen[-1].headers["Authorization"] == "Bearer sk-old"
        # The first key is revoked and removed; the team header changes.
        tree["providers"][0].update(api_keys=["sk-second"], headers={"X-Team": "b"})
        _write(path, tree)
        _reload(server, lambda: send() and fake.seen[-1].headers.get("X-Team") == "b")
        for _ in range(4):
            send()
            assert fake.seen[-1].headers["Authorization"] == "Bearer sk-second"
        # A rotated secret under the same name, and a tighter first-byte timeout.
        tree["providers"][0].update(
            api_keys=[{"name": "main", "key": "sk-new"}], first_byte_timeout=0.3
        )
        _write(path, tree)
        rotated = "Bearer sk-new"
        _reload(server, lambda: send() and fake.seen[-1].headers["Authorization"] == rotated)
        fake.script.append(slow(3.0))
        started = time.monotonic()
        r = send()
        assert r.status_code == 504 and time.monotonic() - started < 2.5
        assert b"sk-" not in r.content
    finally:
        code, out = server.stop()
    assert "sk-old" not in out and "sk-new" not in out


def test_reload_refuses_a_config_that_would_drop_auth_on_a_public_host(
    tmp_path: Path, fakes_thread: tuple
) -> None:
    _, url, _ = fakes_thread
    path = tmp_path / "config.yaml"
    tree = config_tree([url])
    _write(path, tree)
    server = RouterProcess(["--config", str(path), "--host", "0.0.0.0"], cwd=tmp_path)
    try:
        assert httpx.post(server.url + CHAT, json={"model": "g"}).status_code == 401
        del tree["api_keys"]
        tree["groups"].append({"name": "g2", "models": tree["groups"][0]["models"]})
        _write(path, tree)
        server.proc.send_signal(signal.SIGHUP)
        time.sleep(1.5)  # a reload that were applied would show g2 by now
        models = httpx.get(server.url + "/v1/models", headers=ALICE).json()["data"]
        assert [m["id"] for m in models] == ["g"]
        assert httpx.post(server.url + CHAT, json={"model": "g"}).status_code == 401
    finally:
        code, out = server.stop()
    assert "reload refused" in out and "api_key: required" in out


# -- 5 and 14. cancelled requests are accounted; the drain fits shutdown_timeout ---------


async def test_a_stream_the_client_cuts_gets_its_usage_line_and_metric(
    fakes: Any, aiohttp_client: Any, tmp_path: Path
) -> None:
    [(f0, u0)] = await fakes(1)
    tree = one_key(config_tree([u0], usage_log=str(tmp_path / "usage.jsonl")))
    client = await aiohttp_client(create_app(parse(tree, env={})))
    f0.gate = asyncio.Event()  # never set: the stream stays open until the client leaves
    f0.disconnected = asyncio.Event()
    r = await client.post(CHAT, json=STREAM, headers=ALICE)
    assert b"Hel" in await r.content.readuntil(b"\n\n")
    r.close()  # "stop generating"
    await asyncio.wait_for(f0.disconnected.wait(), 10)
    await settle_down(client, P0)
    await client.app[USAGE_LOG].flush()
    [line] = list(read(str(tmp_path / "usage.jsonl")))
    assert line["status"] == 499 and line["key"] == "p0#0"
    metrics = await (await client.get("/metrics")).text()
    [counted] = [m for m in metrics.splitlines() if m.startswith("llm_router_requests_total{")]
    assert 'group="g"' in counted and 'status="499"' in counted and counted.endswith(" 1.0")


def test_sigterm_drain_fits_shutdown_timeout_and_accounts_the_cut_stream(
    tmp_path: Path, fakes_thread: tuple
) -> None:
    fake, url, bg = fakes_thread

    async def gate() -> asyncio.Event:
        return asyncio.Event()

    fake.gate = bg.run(gate())  # never set: this stream outlives the drain
    log = tmp_path / "usage.jsonl"
    path = tmp_path / "config.yaml"
    _write(path, config_tree([url], shutdown_timeout=2, usage_log=str(log)))
    server = RouterProcess(["--config", str(path), "--loop", "asyncio"], cwd=tmp_path)
    with httpx.stream("POST", server.url + CHAT, json=STREAM, headers=ALICE, timeout=30) as r:
        lines = r.iter_lines()
        assert '"Hel"' in next(line for line in lines if line)
        started = time.monotonic()
        server.terminate()
        server.proc.wait(20)
        took = time.monotonic() - started
        rest = [line for line in lines if line]
    bg.loop.call_soon_threadsafe(fake.gate.set)
    code, out = server.stop()
    assert code == 0, out
    assert took < 2.0 + 0.6, f"the drain took {took:.2f}s for shutdown_timeout 2"
    [line] = list(read(str(log)))
    assert line["status"] == 499
    # The client still there is told, in-band, that its stream was cut: never a silent end.
    assert orjson.loads(rest[-1][6:])["error"]["code"] == "stream_error"


def test_sigterm_drain_cuts_a_slow_plain_request_in_time(tmp_path: Path) -> None:
    log = tmp_path / "usage.jsonl"
    path = tmp_path / "config.yaml"
    tree = {
        "api_key": "alice-secret",
        "shutdown_timeout": 2,
        "usage_log": str(log),
        "providers": [{"name": "m", "type": "mock", "api_keys": ["k"], "latency_ms": 8000}],
        "groups": [{"name": "g", "models": [{"provider": "m", "name": "x"}]}],
    }
    _write(path, tree)
    server = RouterProcess(["--config", str(path)], cwd=tmp_path)
    hi = {"model": "g", "messages": [{"role": "user", "content": "hi"}]}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        reply = pool.submit(httpx.post, server.url + CHAT, json=hi, headers=ALICE, timeout=30)
        time.sleep(0.5)
        started = time.monotonic()
        server.terminate()
        server.proc.wait(20)
        took = time.monotonic() - started
        with pytest.raises(httpx.TransportError):
            reply.result()
    code, out = server.stop()
    assert code == 0, out
    assert took < 2.0 + 0.6, f"the drain took {took:.2f}s for shutdown_timeout 2"
    assert [r["status"] for r in read(str(log))] == [499]


# -- 6. the usage log survives errors ----------------------------------------------------


async def test_usage_log_keeps_lines_through_a_write_error(
    fakes: Any, aiohttp_client: Any, tmp_path: Path, caplog: Any
) -> None:
    [(_, u0)] = await fakes(1)
    folder = tmp_path / "logs"
    tree = one_key(config_tree([u0], usage_log=str(folder / "usage.jsonl")))
    client = await aiohttp_client(create_app(parse(tree, env={})))
    for _ in range(3):
        assert (await client.post(CHAT, json={"model": "g"}, headers=ALICE)).status == 200
    await client.app[USAGE_LOG].flush()
    (folder / "usage.jsonl").rename(tmp_path / "kept.jsonl")
    shutil.rmtree(folder)
    folder.write_text("not a directory")  # the log's directory is replaced by a file
    for _ in range(4):
        assert (await client.post(CHAT, json={"model": "g"}, headers=ALICE)).status == 200
    await asyncio.sleep(1.2)  # the writer task tries (twice) and fails
    folder.unlink()
    deadline = time.monotonic() + 10
    while not (folder / "usage.jsonl").exists():
        assert time.monotonic() < deadline, "the writer never wrote again"
        await asyncio.sleep(0.1)
    for _ in range(2):
        await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    await client.app[USAGE_LOG].flush()
    assert len(list(read(str(folder / "usage.jsonl")))) == 6
    errors = [r for r in caplog.records if "cannot be written" in r.getMessage()]
    assert len(errors) == 1  # logged once, not once per try


def test_two_workers_never_both_rotate_at_the_turn_of_the_day(tmp_path: Path) -> None:
    path = tmp_path / "u.jsonl"
    path.write_bytes(b'{"i": 0}\n')
    day_ago = time.time() - 86400
    os.utime(path, (day_ago, day_ago))
    a, b = UsageLog(str(path)), UsageLog(str(path))

    async def both() -> None:
        a.add({"i": 1})
        await a.flush()  # rotates yesterday's file away
        b.add({"i": 2})
        await b.flush()  # must append to today's file, not rotate it again

    asyncio.run(both())
    rotated = [p for p in tmp_path.iterdir() if p.name.startswith("u.jsonl.")]
    assert len(rotated) == 1
    assert [r["i"] for r in read(str(path))] == [0, 1, 2]


def _writer(path: str, worker: int, n: int) -> None:
    log = UsageLog(path, max_bytes=4000)

    async def go() -> None:
        for i in range(n):
            log.add({"w": worker, "i": i})
            if i % 7 == 0:
                await log.flush()
        await log.flush()

    asyncio.run(go())


def test_workers_rotating_by_size_at_once_lose_no_line(tmp_path: Path) -> None:
    path = str(tmp_path / "u.jsonl")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 1500)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    records = list(read(path))
    assert len(records) == 4500
    assert len({(r["w"], r["i"]) for r in records}) == 4500


# -- 11. a started response stays a stream; 405 says what is allowed ---------------------


async def test_an_internal_error_after_the_stream_started_ends_it_in_band(
    fakes: Any, aiohttp_client: Any, monkeypatch: Any
) -> None:
    [(f0, u0)] = await fakes(1)
    client = await aiohttp_client(create_app(parse(one_key(config_tree([u0])), env={})))
    f0.gate = asyncio.Event()  # the first event goes out alone, the rest after a pause
    asyncio.get_running_loop().call_later(0.3, f0.gate.set)
    real_write = web.StreamResponse.write
    writes = 0

    async def failing_write(self: web.StreamResponse, data: bytes) -> None:
        nonlocal writes
        if "x-llm-router-provider" in self.headers:  # the router's reply, not the fake's
            writes += 1
        if writes == 2:  # the second event: the response has long started
            raise RuntimeError("a bug in the relay")
        await real_write(self, data)

    monkeypatch.setattr(web.StreamResponse, "write", failing_write)
    headers = {**ALICE, "Accept-Encoding": "identity"}
    r = await client.post(CHAT, json=STREAM, headers=headers)
    body = await r.read()
    assert r.status == 200
    assert b"HTTP/1.1" not in body
    events = [e for e in body.split(b"\n\n") if e]
    assert events[0].startswith(b"data: ") and b"Hel" in events[0]
    err = orjson.loads(events[-1][6:])["error"]
    assert err["type"] == "server_error" and b"[DONE]" not in body
    await settle_down(client, P0)


async def test_405_carries_allow(one: Any) -> None:
    _, client = one
    r = await client.get(CHAT, headers=ALICE)
    assert r.status == 405
    assert r.headers["Allow"] == "POST, OPTIONS"
    assert (await r.json())["error"]["code"] == "method_not_allowed"
    r = await client.post("/v1/models", headers=ALICE)
    assert r.status == 405 and r.headers["Allow"] == "GET, HEAD, OPTIONS"


# -- 12. a client that does not read cannot pin a request --------------------------------


async def _flood(request: web.Request, seen: Seen) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    piece = chunk(seen.json["model"], "x" * 4000)
    try:
        for _ in range(20000):  # about 80 MB, far more than the socket buffers hold
            await resp.write(piece)
        await resp.write(b"data: [DONE]\n\n")
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return resp


async def test_a_client_that_stops_reading_is_dropped_and_its_request_settles(
    fakes: Any, aiohttp_client: Any
) -> None:
    [(f0, u0)] = await fakes(1)
    tree = one_key(config_tree([u0]))
    tree["providers"][0].update(timeout=120, idle_timeout=1)
    client = await aiohttp_client(create_app(parse(tree, env={})))
    f0.script.append(_flood)
    body = orjson.dumps(STREAM)
    sock = socket.create_connection((client.host, client.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer alice-secret\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    try:
        deadline = time.monotonic() + 10
        while not f0.seen:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await settle_down(client, P0, seconds=20)  # well before the provider's 120 s timeout
        assert client.app[LIVE].runtime.balancer.targets("g")
    finally:
        sock.close()


# -- 9 (the proxy's part). a late success cannot close a breaker opened after it started -


async def test_a_success_from_a_call_picked_before_the_breaker_opened_cannot_close_it(
    fakes: Any, aiohttp_client: Any
) -> None:
    [(f0, u0)] = await fakes(1)
    tree = one_key(config_tree([u0], breaker={"failures": 1, "cooldown": 0.5}))
    tree["retry"] = {"attempts": 1}
    client = await aiohttp_client(create_app(parse(tree, env={})))
    f0.script += [slow(2.5), status(500), slow(4.0)]
    late = asyncio.ensure_future(client.post(CHAT, json={"model": "g"}, headers=ALICE))
    while not f0.seen:
        await asyncio.sleep(0.01)
    assert (await client.post(CHAT, json={"model": "g"}, headers=ALICE)).status == 502
    [h] = await client.app[STATE].health([P0])
    assert h.breaker == "open"
    await asyncio.sleep(0.7)  # past the cooldown: the next request is the one probe
    probe = asyncio.ensure_future(client.post(CHAT, json={"model": "g"}, headers=ALICE))
    while len(f0.seen) < 3:
        await asyncio.sleep(0.01)
    assert (await late).status == 200  # picked before the breaker opened...
    [h] = await client.app[STATE].health([P0])
    assert h.breaker == "half-open"  # ...so its success does not close it; only the probe can
    assert (await probe).status == 200
    [h] = await client.app[STATE].health([P0])
    assert h.breaker == "closed"
    await settle_down(client, P0)


# -- found by trying the product as a new user ------------------------------------------


async def test_the_mock_honours_the_providers_timeouts(aiohttp_client: Any) -> None:
    tree = {
        "api_key": "alice-secret",
        "retry": {"attempts": 1},
        "providers": [
            {"name": "m", "type": "mock", "api_keys": ["k"], "latency_ms": 2000,
             "first_byte_timeout": 0.3},
        ],
        "groups": [{"name": "g", "models": [{"provider": "m", "name": "x"}]}],
    }  # fmt: skip
    client = await aiohttp_client(create_app(parse(tree, env={})))
    hi = [{"role": "user", "content": "hi"}]
    r = await client.post(CHAT, json={"model": "g", "messages": hi}, headers=ALICE)
    assert r.status == 504
    assert (await r.json())["error"]["code"] == "upstream_timeout"


async def test_head_on_a_post_endpoint_is_405_with_allow(one: Any) -> None:
    _, client = one
    r = await client.head(CHAT, headers=ALICE)
    assert r.status == 405 and r.headers["Allow"] == "POST, OPTIONS"


async def test_the_messages_family_answers_unknown_paths_in_anthropics_shape(one: Any) -> None:
    _, client = one
    r = await client.post("/v1/messages/count_tokens", json={}, headers=ALICE)
    assert r.status == 404
    body = await r.json()
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"


async def test_status_table_shows_the_error_count_and_rate_apart(one: Any) -> None:
    fake, client = one
    fake.script.append(status(500))
    await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    data = await (await client.get("/status", headers=ALICE)).json()
    [failed] = [t for t in data["targets"] if t["errors"]]
    text = statuscli.render(data, "http://x")
    header = next(line for line in text.splitlines() if line.startswith("target"))
    assert header.split()[5:7] == ["errors", "err_rate"]
    row = next(line for line in text.splitlines() if failed["key"] in line)
    assert row.split()[6] == "1" and row.split()[7].endswith("%")  # the target takes 2 words


def test_usage_on_a_missing_log_is_an_error(tmp_path: Path) -> None:
    cli = Path(sys.executable).parent / "llm-router"
    out = subprocess.run(
        [str(cli), "usage", "--log", str(tmp_path / "nope.jsonl")], capture_output=True, text=True
    )
    assert out.returncode == 1 and "does not exist" in out.stderr


def test_the_installed_command_finds_a_user_policy_beside_where_it_runs(tmp_path: Path) -> None:
    (tmp_path / "mypol").mkdir()
    (tmp_path / "mypol" / "pol.py").write_text(
        "class First:\n    def order(self, request, candidates):\n        return candidates\n"
    )
    tree = {
        "api_key": "k",
        "providers": [{"name": "m", "type": "mock", "api_keys": ["k1"]}],
        "groups": [{"name": "g", "strategy": "mypol.pol:First",
                    "models": [{"provider": "m", "name": "x"}]}],
    }  # fmt: skip
    _write(tmp_path / "config.yaml", tree)
    cli = Path(sys.executable).parent / "llm-router"
    out = subprocess.run([str(cli), "check"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "mypol.pol:First" in out.stdout


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_probe_whose_client_left_during_backoff_frees_its_slot(
    fakes: Any, aiohttp_client: Any, backend: str, request: Any
) -> None:
    [(f0, u0)] = await fakes(1)
    tree = one_key(config_tree([u0], breaker={"failures": 1, "cooldown": 3}))
    tree["retry"] = {"attempts": 3, "backoff": 10, "max_backoff": 10, "wait": 5}
    if backend == "redis":
        server = request.getfixturevalue("redis_server")
        tree["state"] = {"backend": "redis", "redis_url": server.url, "prefix": f"t{time.time()}"}
    client = await aiohttp_client(create_app(parse(tree, env={})))
    f0.script.append(status(500))
    # The call fails and opens the breaker; the retry waits out the cooldown, takes the
    # half-open probe, and sleeps in its backoff before sending it.
    call = asyncio.ensure_future(client.post(CHAT, json={"model": "g"}, headers=ALICE))
    deadline = time.monotonic() + 10
    while (await client.app[STATE].health([P0]))[0].breaker != "half-open":
        assert time.monotonic() < deadline, "the retry never took the probe"
        await asyncio.sleep(0.02)
    call.cancel()  # the client hangs up during the backoff
    with pytest.raises(asyncio.CancelledError):
        await call
    freed_by = time.time() + 1.5  # well before the probe would expire by itself (3 s)
    while (h := (await client.app[STATE].health([P0]))[0]).until > time.time():
        assert time.time() < freed_by, f"the probe slot was not given back: {h}"
        await asyncio.sleep(0.02)
    assert h.breaker == "half-open"
    await settle_down(client, P0)
    assert len(f0.seen) == 1


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_key_quarantined_for_a_401_is_tried_at_once_with_its_rotated_secret(
    fakes: Any, aiohttp_client: Any, tmp_path: Path, backend: str, request: Any
) -> None:
    from router.server import reload

    [(f0, u0)] = await fakes(1)
    tree = one_key(config_tree([u0], retry={"attempts": 1}))
    tree["providers"][0]["api_keys"] = [{"name": "main", "key": "sk-revoked"}]
    if backend == "redis":
        server = request.getfixturevalue("redis_server")
        tree["state"] = {"backend": "redis", "redis_url": server.url, "prefix": f"t{time.time()}"}
    path = tmp_path / "config.yaml"
    _write(path, tree)
    client = await aiohttp_client(create_app(parse(tree, env={})))
    f0.script.append(status(401))
    assert (await client.post(CHAT, json={"model": "g"}, headers=ALICE)).status == 502
    r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert r.status == 503  # the key is set aside for the breaker's cooldown (30 s)
    tree["providers"][0]["api_keys"] = [{"name": "main", "key": "sk-rotated"}]
    _write(path, tree)
    reload(client.app, str(path), {})
    await asyncio.gather(*client.app[LIVE].chores)
    r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert r.status == 200
    assert f0.seen[-1].headers["Authorization"] == "Bearer sk-rotated"
