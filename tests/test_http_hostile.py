"""HTTP as a hostile or broken client sends it: every refusal is an OpenAI-shaped 4xx with no
traceback in the log; compressed bodies are decoded within max_body_bytes without a memory
spike; idle and half-sent connections are closed (issue 12)."""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import brotli
import httpx
import orjson
import pytest
import yaml
from aiohttp import web

from router.app import create_app
from router.config import parse
from router.protocol import Runner
from tests.fakes import FakeProvider, RouterProcess, config_tree

SECRET = "sk-HTTP-HOSTILE-abcdef0123456789"
AUTH = b"Authorization: Bearer alice-secret\r\n"
CHAT = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"


class Served:
    """The router under our Runner (as `serve` runs it) on a real port, in this loop."""

    def __init__(self, runner: web.AppRunner, port: int, fake: FakeProvider) -> None:
        self.runner, self.port, self.fake = runner, port, fake

    async def exchange(self, data: bytes, timeout: float = 10) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(data)
        await writer.drain()
        try:
            async with asyncio.timeout(timeout):
                return await _one_response(reader)
        finally:
            writer.close()


async def _one_response(reader: asyncio.StreamReader) -> bytes:
    """One response, by its Content-Length (the server may keep the connection open after
    it, reading what is left of a refused body), or all there is before the server closes."""
    data = b""
    while chunk := await reader.read(65536):
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        for line in head.split(b"\r\n")[1:] if sep else ():
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length" and len(body) >= int(value):
                return data
    return data


@pytest.fixture
async def served(aiohttp_server: Any) -> AsyncIterator[Served]:
    fake = FakeProvider()
    upstream = await aiohttp_server(fake.app())
    tree = config_tree([f"http://127.0.0.1:{upstream.port}/v1"], read_timeout=1.0)
    tree["max_body_bytes"] = 64 * 1024
    runner = Runner(create_app(parse(tree, env={})), read_timeout=1.0, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield Served(runner, port, fake)
    await runner.cleanup()


def split(reply: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, orjson.loads(body)


def assert_openai_error(body: Any, code: str) -> None:
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code and body["error"]["type"] == "invalid_request_error"


def assert_quiet(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        assert record.exc_info is None, record.getMessage()
        assert SECRET not in record.getMessage()


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (CHAT + b"X-Big: " + SECRET.encode() * 300 + b"\r\n\r\n", 431, "request_header_too_large"),
        (CHAT + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n", 431,
         "request_header_too_large"),
        (CHAT + AUTH + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n" + SECRET.encode() + b"\r\n",
         400, "invalid_body"),
        (CHAT + AUTH + b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"mod\r\nxx\r\n", 400,
         "invalid_body"),
        (CHAT + b"Content-Length: abc\r\n\r\n", 400, "invalid_header"),
        (b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n", 400, "invalid_request_line"),
        (b"G@T /health HTTP/1.1\r\n\r\n", 400, "invalid_method"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40) + b"\r\n\r\n", 400,
         "invalid_method"),
        (b"GET /he\x00alth HTTP/1.1\r\n\r\n", 400, "invalid_url"),
        (CHAT + b"Bad Header: x\r\n\r\n", 400, "invalid_request"),
    ],
)  # fmt: skip
async def test_what_the_parser_refuses_is_an_openai_shaped_4xx_without_traceback(
    served: Served, caplog: pytest.LogCaptureFixture, data: bytes, status: int, code: str
) -> None:
    caplog.set_level(logging.DEBUG)
    got, headers, body = split(await served.exchange(data))
    assert (got, headers["content-type"]) == (status, "application/json")
    assert_openai_error(body, code)
    assert SECRET not in body["error"]["message"]
    assert_quiet(caplog)
    assert any("refused a malformed request" in r.getMessage() for r in caplog.records)


async def test_garbage_gzip_is_a_400_not_a_500_and_the_router_carries_on(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    junk = b"\x1f\x8b\x08\x00garbage-that-is-not-deflate" + SECRET.encode()
    head = CHAT + AUTH + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(junk)
    status, _, body = split(await served.exchange(head + junk))
    assert status == 400 and body["error"]["param"] == "Content-Encoding"
    truncated = gzip.compress(b'{"model": "g"}')[:-6]
    head = CHAT + AUTH + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(truncated)
    status, _, body = split(await served.exchange(head + truncated))
    assert status == 400 and "truncated" in body["error"]["message"]
    ok = gzip.compress(b'{"model": "g"}')
    head = CHAT + AUTH + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(ok)
    assert (await served.exchange(head + ok)).startswith(b"HTTP/1.1 200")
    assert_quiet(caplog)


@pytest.mark.parametrize("coding", ["zstd", "compress", "gzip, br", "gzip;q=1"])
async def test_an_encoding_we_cannot_decode_is_415(served: Served, coding: str) -> None:
    head = CHAT + AUTH + b"Content-Encoding: %s\r\nContent-Length: 2\r\n\r\n{}" % coding.encode()
    status, headers, body = split(await served.exchange(head))
    assert status == 415 and body["error"]["code"] == "unsupported_content_encoding"
    assert headers["accept-encoding"] == "gzip, deflate, br"


@pytest.mark.parametrize(
    ("coding", "pack"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda b: zlib.compress(b, wbits=-15)),  # raw deflate, as some clients send
        ("br", brotli.compress),
        ("identity", lambda b: b),
    ],
)
async def test_compressed_bodies_reach_the_upstream_decoded(
    served: Served, coding: str, pack: Any
) -> None:
    plain = orjson.dumps({"model": "g", "messages": [{"role": "user", "content": "hi " * 500}]})
    data = pack(plain)
    head = (
        CHAT
        + AUTH
        + b"Content-Encoding: %s\r\nContent-Length: %d\r\n\r\n"
        % (
            coding.encode(),
            len(data),
        )
    )
    assert (await served.exchange(head + data)).startswith(b"HTTP/1.1 200")
    assert served.fake.seen[-1].json["messages"] == orjson.loads(plain)["messages"]


async def test_decoded_size_counts_against_max_body_bytes(served: Served) -> None:
    plain = b'{"model": "g", "pad": "' + b"x" * (64 * 1024) + b'"}'  # just over 64 KiB
    data = gzip.compress(plain)
    head = CHAT + AUTH + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(data)
    status, _, body = split(await served.exchange(head + data))
    assert status == 413 and "once decoded" in body["error"]["message"]
    assert served.fake.seen == []


async def test_half_sent_headers_and_idle_connections_are_closed(served: Served) -> None:
    for data in (b"", CHAT[:20], CHAT + b"X-Slow: 1\r\n"):
        began = time.monotonic()
        assert await served.exchange(data, timeout=10) == b""  # closed without a word
        assert time.monotonic() - began < 8
    # After one reply, a kept-alive connection that goes quiet is closed too.
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" + CHAT[:10])
    async with asyncio.timeout(10):
        rest = await reader.read()
    writer.close()
    assert rest.startswith(b"HTTP/1.1 200") and rest.endswith(b'{"status":"ok"}')


async def test_a_half_sent_body_is_a_408(served: Served) -> None:
    head = CHAT + AUTH + b"Content-Length: 100\r\n\r\n" + b'{"model": "g", '
    began = time.monotonic()
    status, headers, body = split(await served.exchange(head))
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert headers["connection"] == "close" and time.monotonic() - began < 8
    assert served.fake.seen == []


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _bomb(coding: str, size: int = 200 * 2**20) -> bytes:
    block = bytes(2**20)
    if coding == "br":
        packer = brotli.Compressor(quality=5)
        return b"".join(packer.process(block) for _ in range(size // 2**20)) + packer.finish()
    z = zlib.compressobj(9, zlib.DEFLATED, 31 if coding == "gzip" else 15)
    return b"".join(z.compress(block) for _ in range(size // 2**20)) + z.flush()


def test_compression_bombs_are_refused_without_a_memory_spike(
    tmp_path: Path, fakes_thread: tuple
) -> None:
    """200 MiB of zeros in ~200 KiB: a 413 once 1 MiB is decoded, RSS up by a few MiB at most."""
    _, url, _ = fakes_thread
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config_tree([url], max_body_bytes=2**20)))
    server = RouterProcess(["--config", str(path)], cwd=tmp_path)
    headers = {"Authorization": "Bearer alice-secret", "Content-Type": "application/json"}
    try:
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
            for _ in range(5):  # warm up: first requests allocate the steady state
                assert client.post("/v1/chat/completions", json={"model": "g"}).status_code == 200
            before = _rss_kib(server.proc.pid)
            for coding in ("gzip", "deflate", "br"):
                bomb = _bomb(coding)
                assert len(bomb) < 400 * 1024
                r = client.post(
                    "/v1/chat/completions", content=bomb, headers={"Content-Encoding": coding}
                )
                assert r.status_code == 413, r.text
                assert (
                    "max_body_bytes (1048576 bytes, once decoded)" in r.json()["error"]["message"]
                )
            grown = _rss_kib(server.proc.pid) - before
    finally:
        code, out = server.stop()
    print(f"three 200 MiB bombs (gzip, deflate, br) refused; router RSS grew {grown} KiB")
    assert grown < 8 * 1024, f"RSS grew by {grown} KiB"
    assert code == 0 and "Traceback" not in out
