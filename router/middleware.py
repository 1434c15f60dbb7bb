"""The request envelope, listed once: request id, auth, the error shape of the API called,
compression, and the observation of every request (metrics, usage log, access log).

A request cancelled on the way (its client left, a drain ran out of time) is observed as
499; an error after its response started ends that response in-band.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from router.auth import ANONYMOUS
from router.compression import compress, negotiate
from router.config import Config
from router.errors import RouterError, error_body, error_response, from_http_exception
from router.keys import CLIENT, HANDLERS, LIVE, METRICS, REQUEST_ID, USAGE_LOG
from router.logs import AccessLog, request_id
from router.providers import anthropic
from router.proxy import CALL, Call

log = logging.getLogger("router")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ACCESS = web.AppKey("access", AccessLog)
PREPARED = web.RequestKey("prepared", web.StreamResponse)  # the response, once it has started

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
PROXIED = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
)


def _error_shape(path: str) -> Callable[[RouterError], web.Response]:
    """Errors render in the shape of the API the client called."""
    if path.startswith("/v1/messages"):  # count_tokens and any other path of that API too
        return anthropic.error_response
    return error_response


def new_request_id() -> str:
    """24 hex digits. Not a secret, so no system call per request for it."""
    return f"{random.getrandbits(96):024x}"


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = request.headers.get("x-request-id", "")
    if not rid or not _REQUEST_ID.fullmatch(rid):
        rid = new_request_id()
    request[REQUEST_ID] = rid
    request_id.set(rid)  # the handler runs in its own task, so this stays with the request
    runtime = request.app[LIVE].runtime
    started = time.perf_counter()
    render = _error_shape(request.path)
    response: web.StreamResponse
    handlers, task = request.app[HANDLERS], asyncio.current_task()
    if task is not None:
        handlers.add(task)  # a drain waits for it, and cuts it when time is up
    try:
        if request.method != "OPTIONS" and (
            request.path.startswith("/v1/") or request.path == "/status"
        ):
            h = request.headers
            request[CLIENT] = runtime.auth.check(h.get("Authorization"), h.get("x-api-key"))
        response = await handler(request)
    except RouterError as exc:
        response = render(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = render(from_http_exception(exc))
    except Exception:  # a bug of ours: still an OpenAI-shaped answer, and a traceback in the log
        log.exception("unhandled error in %s %s [%s]", request.method, request.path, rid)
        response = await _internal_error(request, render)
    except asyncio.CancelledError:  # the client hung up, or a drain ran out of time
        _finished(request, 499, time.perf_counter() - started, rid)
        raise
    finally:
        handlers.discard(task)
    _finished(request, response.status, time.perf_counter() - started, rid, response)
    return response


async def _internal_error(
    request: web.Request, render: Callable[[RouterError], web.Response]
) -> web.StreamResponse:
    """After the response has started, the only honest ending is in-band: an error event
    for a stream, a cut connection otherwise; before it, a 500 in the route's shape."""
    started: web.StreamResponse | None = request.get(PREPARED)
    if started is None:
        return render(RouterError("The router hit an internal error."))
    call = request.get(CALL)
    if call is not None:
        call.stream_error = "internal error"
    sse = started.headers.get("Content-Type", "").startswith("text/event-stream")
    if sse and "Content-Encoding" not in started.headers:
        with contextlib.suppress(ConnectionError, RuntimeError):
            message = "The router hit an internal error."
            if request.path == "/v1/messages":
                event = anthropic.error_event(message)
            else:
                event = b"data: " + error_body(message, "server_error", None, None) + b"\n\n"
            await started.write(event)
            await started.write_eof()
            return started
    if request.transport is not None:
        request.transport.abort()  # no terminating chunk: the client sees a broken body
    return started


def _finished(
    request: web.Request,
    status: int,
    seconds: float,
    rid: str,
    response: web.StreamResponse | None = None,
) -> None:
    runtime = request.app[LIVE].runtime
    call = request.get(CALL)
    if response is not None and not response.prepared:
        if "x-llm-router-attempts" not in response.headers and request.path.startswith("/v1/"):
            # Answered without an upstream call: /v1/models, or refused (auth, bad JSON,
            # unknown model, client limits). Every API reply says how many calls it took.
            response.headers["x-llm-router-attempts"] = str(call.started) if call else "0"
        if call is not None and call.cache is not None:  # a cached path of a cached group
            response.headers.setdefault("x-llm-router-cache", call.cache.result)
        if isinstance(response, web.Response):
            _maybe_compress(request, response, runtime.config)
    if call is not None and call.client_gone:
        status = 499  # nginx's "client closed request": the client cut its stream short
    if call is not None or request.path in PROXIED:
        _observe(request, status, call, seconds, rid)
    if call is not None and call.route is not None:
        call.route.done(status, call, seconds)  # the policy's observe
    access = request.app[ACCESS]
    if access.enabled:
        key = response.headers.get("x-llm-router-key", "-") if response is not None else "-"
        access.add(
            rid, request.get(CLIENT, "-"), request.method, status, request.path, key,
            seconds * 1000,
        )  # fmt: skip


def _observe(
    request: web.Request, status: int, call: Call | None, seconds: float, rid: str
) -> None:
    """Metrics and the usage log line for one proxied request."""
    client = request.get(CLIENT, ANONYMOUS)
    target = call.target if call else None
    group = call.group if call else ""
    attempts = call.started if call else 0
    ttft = call.ttft if call else None
    request.app[METRICS].request_done(group, target, client, status, seconds, ttft, attempts)
    usage_log = request.app.get(USAGE_LOG)
    if usage_log is None:
        return
    tokens = call.tokens if call else None
    usage_log.add(
        {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
            "request_id": rid,
            "client": client,
            "group": group or None,
            "provider": target.provider.name if target else None,
            "model": target.model.name if target else None,
            "key": target.label if target else None,
            "prompt_tokens": tokens.prompt if tokens else 0,
            "completion_tokens": tokens.completion if tokens else 0,
            "total_tokens": tokens.total if tokens else 0,
            "cost_usd": round(call.cost, 8) if call else 0.0,
            "latency_ms": round(seconds * 1000, 1),
            "ttft_ms": round(ttft * 1000, 1) if ttft is not None else None,
            "status": status,
            "attempts": attempts,
            "stream_error": call.stream_error if call else None,
            "cache": call.cache.result if call and call.cache else None,
        }
    )


def _maybe_compress(request: web.Request, response: web.Response, config: Config) -> None:
    body = response.body
    if (
        not config.compression.enabled
        or not isinstance(body, bytes)
        or len(body) < config.compression.min_bytes
        or "Content-Encoding" in response.headers
    ):
        return
    encoding = negotiate(request.headers.get("Accept-Encoding", ""))
    if encoding:
        response.body = compress(body, encoding)
        response.headers["Content-Encoding"] = encoding
