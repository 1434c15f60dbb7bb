"""Reading a request body: within `max_body_bytes` of *decoded* size, with a timeout per chunk.

aiohttp's own decompression is switched off (see app.py), so a compressed body arrives as
sent and is inflated here one chunk at a time, never past the limit: a 200 KiB gzip bomb
costs at most `max_body_bytes` of memory before its 413, and garbage is a 400, not a 500.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Protocol

import brotli
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from router.errors import BadRequest, PayloadTooLarge, RequestTimeout, UnsupportedMediaType


class Decoder(Protocol):
    def feed(self, data: bytes, room: int) -> bytes:
        """Decoded bytes of `data`: at most a little over `room` (more means too large)."""

    def finish(self) -> None:
        """Raise ValueError if the stream ended before its end marker."""


class _Zlib:
    def __init__(self, wbits: int | None) -> None:
        self._wbits = wbits  # None: deflate, zlib-wrapped or raw, told by its first bytes
        self._d: zlib._Decompress | None = None

    def feed(self, data: bytes, room: int) -> bytes:
        if self._d is None:
            wbits = self._wbits
            if wbits is None:
                head = data[:2]
                wrapped = len(head) == 2 and head[0] & 0x0F == 8 and int.from_bytes(head) % 31 == 0
                wbits = zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS
            self._d = zlib.decompressobj(wbits)
        if self._d.eof:
            raise ValueError("data after the end of the compressed body")
        return self._d.decompress(data, room + 1)  # (0 would mean no limit)

    def finish(self) -> None:
        if self._d is None or not self._d.eof:
            raise ValueError("the compressed body is truncated")
        if self._d.unused_data:
            raise ValueError("data after the end of the compressed body")


class _Brotli:
    def __init__(self) -> None:
        self._d = brotli.Decompressor()

    def feed(self, data: bytes, room: int) -> bytes:
        return bytes(self._d.process(data, output_buffer_limit=room + 1))

    def finish(self) -> None:
        if not self._d.is_finished():
            raise ValueError("the compressed body is truncated")


def _bounded_brotli() -> bool:
    """brotli >= 1.2 can stop inflating at a limit; an older one could not refuse a bomb."""
    try:
        brotli.Decompressor().process(b"", output_buffer_limit=1)
    except TypeError:
        return False
    return True


BROTLI = _bounded_brotli()
ENCODINGS = ("gzip", "x-gzip", "deflate", "br") if BROTLI else ("gzip", "x-gzip", "deflate")


def decoder(content_encoding: str) -> Decoder | None:
    """The decoder for a Content-Encoding header; None for identity; 415 for anything else."""
    coding = content_encoding.strip().lower()
    if coding in ("", "identity"):
        return None
    if coding in ("gzip", "x-gzip"):
        return _Zlib(zlib.MAX_WBITS | 16)
    if coding == "deflate":
        return _Zlib(None)
    if coding == "br" and BROTLI:
        return _Brotli()
    raise UnsupportedMediaType(
        f"Content-Encoding {coding[:20]!r} is not supported; send identity, "
        f"{', '.join(e for e in ENCODINGS if e != 'x-gzip')} (one coding, not a list).",
        param="Content-Encoding",
        headers={"Accept-Encoding": ", ".join(e for e in ENCODINGS if e != "x-gzip")},
    )


async def read(request: web.Request, limit: int, timeout: float) -> bytes:
    """The whole body, decoded; 413 past `limit` (compressed or not), 408 after `timeout`
    seconds without a byte, 400 for a broken chunked or compressed body."""
    codec = decoder(request.headers.get("Content-Encoding", ""))
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large(limit)
    body = bytearray()
    received = 0
    content = request.content
    try:
        while True:
            async with asyncio.timeout(timeout):
                chunk = await content.readany()
            if not chunk:
                break
            received += len(chunk)
            if received > limit:
                raise _too_large(limit)
            body += codec.feed(chunk, limit - len(body)) if codec else chunk
            if len(body) > limit:
                raise _too_large(limit)
        if codec:
            codec.finish()
    except TimeoutError:
        raise RequestTimeout(
            f"The request body stalled: no data for {timeout:g}s.", headers=_close()
        ) from None
    except (zlib.error, brotli.error, ValueError) as exc:
        reason = str(exc) if isinstance(exc, ValueError) else "it is not valid"
        raise BadRequest(
            f"Could not decode the {request.headers['Content-Encoding'].strip()[:20]} "
            f"request body: {reason}.",
            param="Content-Encoding",
            headers=_close(),
        ) from None
    except HttpProcessingError:
        # A broken chunked encoding, or fewer bytes than Content-Length.
        raise BadRequest("The request body is malformed.", headers=_close()) from None
    return bytes(body)


def _close() -> dict[str, str]:
    return {"Connection": "close"}  # the rest of the body is not worth reading


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The request body is larger than max_body_bytes ({limit} bytes, once decoded).",
        headers=_close(),
    )
