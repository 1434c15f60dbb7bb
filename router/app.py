"""create_app: routes, the middleware, CORS, and the resources one app owns.

Order of work on a request: middleware (request id, auth, error envelope, compression,
access log) -> handler; then on_response_prepare: aiohttp-cors, then our common headers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import aiohttp_cors
import orjson
from aiohttp import web

from router import proxy
from router.auth import Authenticator
from router.balancer import Balancer
from router.compression import compress, negotiate
from router.config import Config
from router.errors import (
    MethodNotAllowed,
    NotFound,
    RouterError,
    error_response,
    from_http_exception,
)
from router.keys import CLIENT, LIVE, REQUEST_ID, SESSION, STATE, UPSTREAMS, Live, Runtime
from router.limits import ClientLimits
from router.logs import AccessLog, request_id
from router.mock import MockUpstream
from router.state import Clock, StateBackend, open_state
from router.upstream import HttpUpstream, Upstream

log = logging.getLogger("router")
ACCESS = web.AppKey("access", AccessLog)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
EXPOSED = (
    "x-llm-router-provider",
    "x-llm-router-model",
    "x-llm-router-key",
    "x-llm-router-attempts",
    "x-llm-router-cost",
    "x-llm-router-cache",
    "x-request-id",
    "retry-after",
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
)
PROXIED = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def build_runtime(config: Config, state: StateBackend, clock: Clock = time.time) -> Runtime:
    return Runtime(
        config,
        Authenticator(config.client_keys),
        Balancer(config, state, clock),
        ClientLimits(config.client_keys, state, clock),
    )


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = request.headers.get("x-request-id", "")
    if not rid or not _REQUEST_ID.fullmatch(rid):
        rid = os.urandom(12).hex()
    request[REQUEST_ID] = rid
    request_id.set(rid)  # the handler runs in its own task, so this stays with the request
    runtime = request.app[LIVE].runtime
    started = time.perf_counter()
    try:
        if request.path.startswith("/v1/") and request.method != "OPTIONS":
            request[CLIENT] = runtime.auth.check(request.headers.get("Authorization"))
        response = await handler(request)
    except RouterError as exc:
        response = error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(from_http_exception(exc))
    except Exception:  # a bug of ours: still an OpenAI-shaped answer, and a traceback in the log
        log.exception("unhandled error in %s %s [%s]", request.method, request.path, rid)
        response = error_response(RouterError("The router hit an internal error."))
    if not response.prepared and isinstance(response, web.Response):
        _maybe_compress(request, response, runtime.config)
    access = request.app[ACCESS]
    if access.enabled:
        access.add(
            rid,
            request.get(CLIENT, "-"),
            request.method,
            response.status,
            request.path,
            response.headers.get("x-llm-router-key", "-"),
            (time.perf_counter() - started) * 1000,
        )
    return response


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


async def models(request: web.Request) -> web.Response:
    runtime = request.app[LIVE].runtime
    created = request.app[STARTED]
    data = [
        {"id": g.name, "object": "model", "created": created, "owned_by": "llm-router"}
        for g in runtime.config.groups
    ]
    return web.Response(
        body=orjson.dumps({"object": "list", "data": data}), content_type="application/json"
    )


async def health(request: web.Request) -> web.Response:
    body: dict[str, str] = {"status": "ok"}
    if request.app[LIVE].runtime.config.state.backend != "memory":
        body["state"] = "degraded" if request.app[STATE].degraded else "ok"
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def not_allowed(request: web.Request) -> web.Response:
    raise MethodNotAllowed(f"Method {request.method} is not allowed on {request.path}.")


async def not_found(request: web.Request) -> web.Response:
    raise NotFound(f"Invalid URL ({request.method} {request.path})", code="unknown_url")


STARTED = web.AppKey("started", int)


def create_app(
    config: Config, *, state: StateBackend | None = None, clock: Clock = time.time
) -> web.Application:
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[middleware])
    hold = max((p.timeout for p in config.providers), default=600.0) + 60
    app[STATE] = state or open_state(config.state, config.usage_window, clock, hold)
    app[LIVE] = Live(build_runtime(config, app[STATE], clock))
    app[STARTED] = int(time.time())
    app[ACCESS] = AccessLog(config.logging.format)
    app.cleanup_ctx.append(_resources)

    def route(path: str, handler: Handler, *methods: str) -> None:
        resource = app.router.add_resource(path)
        for method in METHODS:
            resource.add_route(method, handler if method in methods else not_allowed)

    for path in PROXIED:
        route(path, proxy.handle, "POST")
    route("/v1/models", models, "GET")
    route("/health", health, "GET")
    catch_all = app.router.add_resource("/{tail:.*}")
    for method in METHODS:
        catch_all.add_route(method, not_found)

    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
        allow_credentials=config.cors.allow_credentials,
        expose_headers=EXPOSED,
        allow_headers="*",
        allow_methods="*",
        max_age=86400,
    )
    cors = aiohttp_cors.setup(app, defaults={o: options for o in config.cors.allow_origins})
    for r in list(app.router.routes()):
        cors.add(r)
    # aiohttp-cors inspects every response; only one with an Origin can need CORS headers.
    cors_prepare = app.on_response_prepare.pop()

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        if "Origin" in request.headers:
            await cors_prepare(request, response)
        response.headers["x-request-id"] = request.get(REQUEST_ID) or os.urandom(12).hex()
        response.headers["Vary"] = "Origin, Accept-Encoding"

    app.on_response_prepare.append(on_prepare)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=1024, ttl_dns_cache=300)
    session = aiohttp.ClientSession(connector=connector, trust_env=False)
    app[SESSION] = session
    upstreams: dict[str, Upstream] = {"openai": HttpUpstream(session), "mock": MockUpstream()}
    app[UPSTREAMS] = upstreams
    await app[STATE].start()
    flusher = asyncio.create_task(app[ACCESS].run(), name="access-log-flusher")
    try:
        yield
    finally:
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)
        app[ACCESS].flush()
        await session.close()
        await app[STATE].close()
