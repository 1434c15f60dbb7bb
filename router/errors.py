"""Our exceptions and the one place that renders them as OpenAI error envelopes.

RouterError                   any error we answer ourselves (status, type, code)
├── BadRequest                400 invalid_request_error
├── Unauthorized              401 invalid_api_key
├── NotFound                  404 (unknown path, unknown model: model_not_found)
├── MethodNotAllowed          405
├── RequestTimeout            408 (a client that stops sending its body)
├── PayloadTooLarge           413
├── UnsupportedMediaType      415 (a Content-Encoding we do not decode)
├── RateLimited               429 rate_limit_exceeded / insufficient_quota (Retry-After)
├── ServiceUnavailable        503 (every target open or cooling down, Retry-After)
└── UpstreamError             a failed upstream attempt; 502 unless it says otherwise
    └── UpstreamTimeout       504
"""

from __future__ import annotations

import orjson
from aiohttp import web


class RouterError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.param, self.code)


class BadRequest(RouterError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(RouterError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class NotFound(RouterError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(RouterError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTimeout(RouterError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class PayloadTooLarge(RouterError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UnsupportedMediaType(RouterError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_content_encoding"


class RateLimited(RouterError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ServiceUnavailable(RouterError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


class UpstreamError(RouterError):
    """One failed upstream attempt: `reason` is short and safe to show a client."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"

    def __init__(self, reason: str, *, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.upstream_status = status


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


def error_response(exc: RouterError) -> web.Response:
    return web.Response(
        status=exc.status,
        body=exc.body(),
        content_type="application/json",
        headers=exc.headers,
    )


def from_http_exception(exc: web.HTTPException) -> RouterError:
    """aiohttp raises HTTPException for routing and body-size problems: make them ours."""
    kinds: dict[int, type[RouterError]] = {
        400: BadRequest,
        401: Unauthorized,
        404: NotFound,
        405: MethodNotAllowed,
        413: PayloadTooLarge,
    }
    cls = kinds.get(exc.status, RouterError)
    message = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
    err = cls(message or "error")
    if cls is RouterError:
        err.status = exc.status
        err.type = "invalid_request_error" if exc.status < 500 else "server_error"
    return err
