"""The Anthropic provider: `/v1/chat/completions` translated (anthropic_chat.py) and
`/v1/messages` passed through byte for byte, over a transport (the pooled session or the
mock); headers, rate-limit readings, and errors in Anthropic's shape for native clients.

    OpenAI client -> chat_request -> POST /v1/messages -> TranslatedReply -> OpenAI client
    Anthropic client -> body with model spliced -> POST /v1/messages -> bytes as they come
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Protocol

import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from router.balancer import Target
from router.errors import RouterError, UpstreamError, error_body
from router.providers.anthropic_chat import (
    ChatStream,
    MessageUsage,
    Refused,
    chat_error,
    chat_reply,
    chat_request,
    error_type,
)
from router.providers.http import Reply

__all__ = ["AnthropicUpstream", "MessageUsage", "error_event", "error_response"]

VERSION = "2023-06-01"
FORWARDED = ("anthropic-version", "anthropic-beta")  # client headers a native call keeps


class Transport(Protocol):
    async def post(
        self, target: Target, path: str, body: bytes, headers: Mapping[str, str], stream: bool
    ) -> Reply: ...


def messages_path(base_url: str) -> str:
    """`https://api.anthropic.com` and `https://api.anthropic.com/v1` both mean /v1/messages."""
    return "/messages" if base_url.endswith("/v1") else "/v1/messages"


def request_headers(target: Target, client: Mapping[str, str]) -> CIMultiDict[str]:
    """Defaults, then the client's anthropic-version/-beta, then configured headers (they win)."""
    headers: CIMultiDict[str] = CIMultiDict(
        {"Content-Type": "application/json", "anthropic-version": VERSION}
    )
    for name in FORWARDED:
        value = client.get(name)
        if value:
            headers[name] = value
    if target.key.secret:
        headers["x-api-key"] = target.key.secret
    for name, value in target.provider.headers.items():
        headers[name] = value
    return headers


def _seconds_until(stamp: str, now: float) -> float | None:
    try:
        return max(0.0, datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() - now)
    except ValueError:
        return None


def rate_headers(headers: Mapping[str, str], now: float | None = None) -> CIMultiDict[str]:
    """The reply's headers plus OpenAI's x-ratelimit-* read from anthropic-ratelimit-*.

    Anthropic's resets are timestamps; OpenAI's (and the router's cooldowns) are durations.
    The token budget is the one that ran out, of tokens, input-tokens and output-tokens.
    """
    out: CIMultiDict[str] = CIMultiDict(headers)
    if not any(k.lower().startswith("anthropic-ratelimit-") for k in headers):
        return out
    now = time.time() if now is None else now
    families = {"requests": ("requests",), "tokens": ("tokens", "input-tokens", "output-tokens")}
    for name, kinds in families.items():
        best: tuple[bool, float, str, str] | None = None  # (exhausted, wait, limit, remaining)
        for kind in kinds:
            remaining = headers.get(f"anthropic-ratelimit-{kind}-remaining")
            reset = headers.get(f"anthropic-ratelimit-{kind}-reset")
            wait = _seconds_until(reset, now) if reset else None
            if remaining is None or wait is None:
                continue
            limit = headers.get(f"anthropic-ratelimit-{kind}-limit", "")
            seen = (remaining.strip() == "0", wait, limit, remaining)
            if best is None or seen[:2] > best[:2]:
                best = seen
        if best is not None and f"x-ratelimit-reset-{name}" not in out:
            out[f"x-ratelimit-limit-{name}"] = best[2]
            out[f"x-ratelimit-remaining-{name}"] = best[3]
            out[f"x-ratelimit-reset-{name}"] = f"{best[1]:.3f}s"
    return out


class TranslatedReply:
    """An Anthropic reply seen as an OpenAI chat completion: body, stream and errors."""

    def __init__(self, reply: Reply) -> None:
        self._reply = reply
        self.status = reply.status
        headers = rate_headers(reply.headers)
        if reply.status >= 400:
            headers["Content-Type"] = "application/json"
        self.headers: Mapping[str, str] = CIMultiDictProxy(headers)
        self._data: bytes | None = None

    async def read(self) -> bytes:
        if self._data is None:
            data = await self._reply.read()
            if self.status >= 400:
                self._data = chat_error(self.status, data)
            else:
                try:
                    obj = orjson.loads(data)
                except orjson.JSONDecodeError:
                    raise UpstreamError("invalid JSON body") from None
                self._data = orjson.dumps(chat_reply(obj))
        return self._data

    async def chunks(self) -> AsyncIterator[bytes]:
        stream = ChatStream()
        buf = b""
        async for chunk in self._reply.chunks():
            buf += chunk
            if b"\r" in buf:
                buf = buf.replace(b"\r\n", b"\n")
            end = buf.rfind(b"\n\n")
            if end < 0:
                continue
            events, buf = buf[:end].split(b"\n\n"), buf[end + 2 :]
            out = b"".join(stream.event(e) for e in events if e)
            if out:
                yield out
        if buf.strip():
            out = stream.event(buf.strip(b"\n"))
            if out:
                yield out

    def close(self) -> None:
        self._reply.close()


class StaticReply:
    """A reply made here, without a call: a refused request's 400 (providers.serving()
    already keeps such requests from Anthropic targets; this is the last line)."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.headers: Mapping[str, str] = {"Content-Type": "application/json"}
        self._body = body

    async def read(self) -> bytes:
        return self._body

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self._body

    def close(self) -> None:
        pass


class AnthropicUpstream:
    """`/chat/completions` translated, `/messages` passed through, over a transport."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    async def send(
        self, target: Target, path: str, body: bytes, stream: bool, client: Mapping[str, str]
    ) -> Reply:
        headers = request_headers(target, client)
        url_path = messages_path(target.provider.base_url)
        if path == "/messages":
            reply = await self.transport.post(target, url_path, body, headers, stream)
            return _Native(reply)
        try:
            out = orjson.dumps(chat_request(orjson.loads(body)))
        except Refused as exc:
            err = error_body(
                exc.message, "invalid_request_error", exc.param, "unsupported_parameter"
            )
            return StaticReply(400, err)
        return TranslatedReply(await self.transport.post(target, url_path, out, headers, stream))


class _Native:
    """A native reply, bytes untouched; only the headers gain the x-ratelimit-* reading."""

    def __init__(self, reply: Reply) -> None:
        self._reply = reply
        self.status = reply.status
        self.headers: Mapping[str, str] = CIMultiDictProxy(rate_headers(reply.headers))
        self.read = reply.read
        self.chunks = reply.chunks
        self.close = reply.close


# --- the native endpoint's own errors --------------------------------------------------------


def native_error(status: int, message: str) -> bytes:
    err = {"type": error_type(status), "message": message}
    return orjson.dumps({"type": "error", "error": err})


def error_event(message: str) -> bytes:
    """The SSE event that ends a native stream which failed after its first event."""
    return b"event: error\ndata: " + native_error(502, message) + b"\n\n"


def error_response(exc: RouterError) -> web.Response:
    """The router's own errors on `/v1/messages`, in Anthropic's shape."""
    return web.Response(
        status=exc.status,
        body=native_error(exc.status, exc.message),
        content_type="application/json",
        headers=exc.headers,
    )
