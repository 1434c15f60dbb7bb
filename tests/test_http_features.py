"""Compression and CORS on every kind of response: success, error, stream, preflight."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import brotli
import pytest

from router.compression import negotiate
from tests.conftest import ALICE

CHAT = "/v1/chat/completions"
ORIGIN = "http://app.example.test"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip, deflate, br", "br"),
        ("gzip", "gzip"),
        ("br;q=0.5, gzip;q=0.9", "gzip"),
        ("br;q=0, gzip", "gzip"),
        ("gzip;q=0, br;q=0", None),
        ("identity", None),
        ("", None),
        ("*", "br"),
        ("*;q=0.1, gzip;q=0.5", "gzip"),
        ("deflate, zstd", None),
        ("GZIP;Q=1.0", "gzip"),
    ],
)
def test_negotiation_follows_q_values(header: str, expected: str | None) -> None:
    assert negotiate(header) == expected


async def test_compression_of_body_over_min_bytes(fakes: Any, router: Any) -> None:
    from tests.fakes import raw_reply

    [(fake, url)] = await fakes(1)
    client = await router([url], compression={"min_bytes": 100})
    body = b'{"choices": [], "filler": "' + b"y" * 5000 + b'"}'
    for enc, decode in (("br", brotli.decompress), ("gzip", gzip.decompress)):
        fake.script.append(raw_reply(body))
        r = await client.post(
            CHAT,
            json={"model": "g"},
            headers={**ALICE, "Accept-Encoding": enc},
            auto_decompress=False,
        )
        assert r.headers["Content-Encoding"] == enc
        assert decode(await r.read()) == body
        assert "Accept-Encoding" in r.headers["Vary"]


async def test_small_and_error_bodies_are_not_compressed(one: Any) -> None:
    _, client = one
    for path, headers in ((CHAT, ALICE), ("/nope", {})):
        r = await client.post(
            path,
            json={"model": "missing"},
            headers={**headers, "Accept-Encoding": "br, gzip"},
            auto_decompress=False,
        )
        assert r.status >= 400
        assert "Content-Encoding" not in r.headers
        assert (await r.json())["error"]["message"]
        assert "Accept-Encoding" in r.headers["Vary"]


async def test_identity_when_client_refuses_all(fakes: Any, router: Any) -> None:
    from tests.fakes import raw_reply

    [(fake, url)] = await fakes(1)
    client = await router([url], compression={"min_bytes": 10})
    fake.script.append(raw_reply(b'{"x": "' + b"z" * 3000 + b'"}'))
    r = await client.post(
        CHAT,
        json={"model": "g"},
        headers={**ALICE, "Accept-Encoding": "br;q=0, gzip;q=0"},
        auto_decompress=False,
    )
    assert "Content-Encoding" not in r.headers


@pytest.mark.parametrize("encoding", ["gzip", "br"])
async def test_stream_compressed_per_event(one: Any, encoding: str) -> None:
    fake, client = one
    import asyncio

    fake.gate = asyncio.Event()
    r = await client.post(
        CHAT,
        json={"model": "g", "stream": True},
        headers={**ALICE, "Accept-Encoding": encoding},
        auto_decompress=False,
    )
    assert r.headers["Content-Encoding"] == encoding
    if encoding == "gzip":
        d: Any = zlib.decompressobj(31)
        feed = d.decompress
    else:
        d = brotli.Decompressor()
        feed = d.process
    # The first event decodes on its own, before the upstream sends the rest: flushed per event.
    first = b""
    while b"\n\n" not in first:
        first += feed(await asyncio.wait_for(r.content.readany(), 5))
    assert b'"Hel"' in first
    fake.gate.set()
    rest = feed(await r.read())
    assert (first + rest).endswith(b"data: [DONE]\n\n")


async def test_stream_not_compressed_when_not_asked(one: Any) -> None:
    _, client = one
    r = await client.post(
        CHAT, json={"model": "g", "stream": True}, headers={**ALICE, "Accept-Encoding": "identity"}
    )
    assert "Content-Encoding" not in r.headers
    assert (await r.read()).endswith(b"data: [DONE]\n\n")


async def test_cors_preflight_allows_authorization(one: Any) -> None:
    _, client = one
    r = await client.options(
        CHAT,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert r.status == 200
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "authorization" in r.headers["Access-Control-Allow-Headers"].lower()
    assert "POST" in r.headers["Access-Control-Allow-Methods"]


async def test_cors_preflight_names_authorization_even_unasked(one: Any) -> None:
    _, client = one
    r = await client.options(
        CHAT, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert r.status == 200
    assert "authorization" in r.headers["Access-Control-Allow-Headers"].split(", ")
    assert "Accept-Encoding" in r.headers["Vary"] and "Origin" in r.headers["Vary"]


async def test_cors_on_actual_responses_errors_and_streams(one: Any) -> None:
    """Seed bug: only the preflight carried CORS headers, so browsers could not read replies."""
    _, client = one
    cases = [
        (CHAT, {"model": "g"}, ALICE, 200),
        (CHAT, {"model": "g", "stream": True}, ALICE, 200),
        (CHAT, {"model": "g"}, {}, 401),
        (CHAT, {"model": "nope"}, ALICE, 404),
        ("/v1/unknown", {}, ALICE, 404),
    ]
    for path, body, headers, code in cases:
        r = await client.post(path, json=body, headers={**headers, "Origin": ORIGIN})
        assert r.status == code
        assert r.headers["Access-Control-Allow-Origin"] == ORIGIN, (path, code)
        exposed = r.headers.get("Access-Control-Expose-Headers", "").lower()
        assert "x-llm-router-key" in exposed and "x-request-id" in exposed
        await r.read()
    r = await client.get("/v1/models", headers={**ALICE, "Origin": ORIGIN})
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN


async def test_cors_origin_list_echoes_only_listed(fakes: Any, router: Any) -> None:
    [(_, url)] = await fakes(1)
    client = await router([url], cors={"allow_origins": [ORIGIN]})
    r = await client.post(CHAT, json={"model": "g"}, headers={**ALICE, "Origin": ORIGIN})
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    r = await client.post(
        CHAT, json={"model": "g"}, headers={**ALICE, "Origin": "http://evil.test"}
    )
    assert "Access-Control-Allow-Origin" not in r.headers
    r = await client.options(
        CHAT, headers={"Origin": "http://evil.test", "Access-Control-Request-Method": "POST"}
    )
    assert r.status == 403
    assert (await r.json())["error"]["message"]
