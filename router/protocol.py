"""The HTTP connection edge, below the middleware: what aiohttp's parser refuses, and clients
that never finish their headers.

aiohttp answers a request its parser cannot read (a header over 8 KiB, a bad chunk size,
`Content-Length: abc`, `HTTP/9.9`) itself, before any middleware runs: a text/plain 400
and a traceback in the log. `Runner` serves the app with a connection handler that
answers those in the OpenAI shape with a fitting 4xx and logs one line without the
request's bytes (they may hold a key), and closes a connection whose first request has
not arrived `read_timeout` seconds after it opened.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import http_exceptions as hx
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from router.errors import error_body

log = logging.getLogger("router")

# By parser error class, most specific first: (status, code, message).
_REFUSALS: tuple[tuple[type[Exception], int, str, str], ...] = (
    (
        hx.LineTooLong,
        431,
        "request_header_too_large",
        "The request line or a header is too long (the limit is 8190 bytes).",
    ),
    (hx.BadHttpMethod, 400, "invalid_method", "The request method is not valid HTTP."),
    (
        hx.BadStatusLine,
        400,
        "invalid_request_line",
        "The request line is not valid: send METHOD /path HTTP/1.1 (or HTTP/1.0).",
    ),
    (hx.InvalidURLError, 400, "invalid_url", "The request path is not a valid URL."),
    (hx.InvalidHeader, 400, "invalid_header", "A request header is malformed."),
    (hx.TransferEncodingError, 400, "invalid_body", "The chunked request body is malformed."),
    (hx.ContentLengthError, 400, "invalid_body", "The request body does not match its length."),
    (hx.BadHttpMessage, 400, "invalid_request", "The request is not valid HTTP."),
)
# llhttp says most through BadHttpMessage; its words (never the request's bytes) tell which.
_BY_WORDS = (
    ("too many headers", 431, "request_header_too_large", "The request has too many headers."),
    ("chunk", 400, "invalid_body", "The chunked request body is malformed."),
    ("content-length", 400, "invalid_header", "The Content-Length header is not a valid length."),
    ("transfer-encoding", 400, "invalid_header", "The Transfer-Encoding header is not valid."),
    ("version", 400, "invalid_request_line", "The HTTP version must be HTTP/1.0 or HTTP/1.1."),
)  # fmt: skip


def refusal(exc: BaseException | None) -> tuple[int, str, str]:
    """What to answer a request the parser refused: status, error code and message."""
    words = str(getattr(exc, "message", "")).split("\n\n", 1)[0].lower()
    for phrase, status, code, message in _BY_WORDS:
        if phrase in words:
            return status, code, message
    for kind, status, code, message in _REFUSALS:
        if isinstance(exc, kind):
            return status, code, message
    return 400, "invalid_request", "The request is not valid HTTP."


class Protocol(RequestHandler):
    """aiohttp's connection handler with OpenAI-shaped parser errors and a header deadline."""

    __slots__ = ("_read_timeout",)

    def __init__(self, manager: web.Server, *, read_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._read_timeout = read_timeout

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().call_later(self._read_timeout, self._first_request_due)

    def _first_request_due(self) -> None:
        # Later requests on a kept-alive connection are covered by keepalive_timeout.
        if self._request_count == 0 and self.transport is not None:
            log.debug("dropped a connection with no request after %gs", self._read_timeout)
            self.transport.close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        kind = "invalid_request_error"
        if status == 500:  # a handler failed outside our middleware: a bug, worth a traceback
            log.error("unhandled error outside the middleware", exc_info=exc)
            code: str | None = None
            text, kind = "The router hit an internal error.", "server_error"
        else:
            status, code, text = refusal(exc)
            # One line, no traceback and none of the request's bytes (they may hold a key).
            log.info("refused a malformed request from %s: %d %s", request.remote, status, code)
        if request.writer.output_size > 0:
            raise ConnectionError("the response had started; the connection is closed instead")
        resp = web.Response(
            status=status, body=error_body(text, kind, None, code), content_type="application/json"
        )
        resp.force_close()
        return resp


class _Server(web.Server):
    read_timeout = 60.0

    def __call__(self) -> RequestHandler:
        return Protocol(self, loop=self._loop, read_timeout=self.read_timeout, **self._kwargs)


class Runner(web.AppRunner):
    """web.AppRunner whose connections are `Protocol`s; `read_timeout` also bounds idle
    keep-alive connections."""

    def __init__(self, app: web.Application, *, read_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, keepalive_timeout=read_timeout, **kwargs)
        self._read_timeout = read_timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # AppRunner builds a plain web.Server; ours only differs in the handler it makes.
        server.__class__ = _Server
        server.read_timeout = self._read_timeout  # type: ignore[attr-defined]
        return server
