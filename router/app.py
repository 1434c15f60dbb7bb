"""create_app: routes, the middleware, CORS, and the resources one app owns.

Order of work on a request: middleware (request id, auth, error envelope, compression,
access log) -> handler; then on_response_prepare: aiohttp-cors, then our common headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import aiohttp_cors
import orjson
from aiohttp import web

from router import providers, proxy, status
from router.auth import ANONYMOUS, Authenticator
from router.balancer import Balancer
from router.cache import layer as cache
from router.compression import compress, negotiate
from router.config import Config
from router.errors import (
    MethodNotAllowed,
    NotFound,
    RouterError,
    error_body,
    error_response,
    from_http_exception,
)
from router.keys import (
    CLIENT,
    HANDLERS,
    LIVE,
    METRICS,
    REQUEST_ID,
    SESSION,
    STATE,
    UPSTREAMS,
    USAGE_LOG,
    Live,
    Runtime,
)
from router.limits import ClientLimits
from router.logs import AccessLog, request_id
from router.metrics import Metrics
from router.policies.route import ROUTE, Policies
from router.providers import anthropic
from router.proxy import CALL, Call
from router.state import Clock, StateBackend, open_state
from router.usagelog import UsageLog

log = logging.getLogger("router")
ACCESS = web.AppKey("access", AccessLog)
PREPARED = web.RequestKey("prepared", web.StreamResponse)  # the response, once it has started

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
EXPOSED = (
    "x-llm-router-provider",
    "x-llm-router-model",
    "x-llm-router-key",
    "x-llm-router-attempts",
    "x-llm-router-cost",
    "x-llm-router-cache",
    "x-llm-router-cache-similarity",
    "x-llm-router-tier",
    "x-llm-router-complexity",
    "x-request-id",
    "retry-after",
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
)
PROXIED = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
)


# Errors answer in the shape of the API the client called: OpenAI's, unless listed here.
def _error_shape(path: str) -> Callable[[RouterError], web.Response]:
    """Errors render in the shape of the API the client called."""
    if path.startswith("/v1/messages"):  # count_tokens and any other path of that API too
        return anthropic.error_response
    return error_response


METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def build_runtime(config: Config, state: StateBackend, clock: Clock = time.time) -> Runtime:
    balancer = Balancer(config, state, clock)
    return Runtime(
        config,
        Authenticator(config.client_keys),
        balancer,
        ClientLimits(config.client_keys, state, clock),
        Policies(config, balancer),
    )


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


async def models(request: web.Request) -> web.Response:
    """GET /v1/models lists the groups; GET /v1/models/{id} is one of them."""
    runtime = request.app[LIVE].runtime
    created = request.app[STARTED]
    client = request.get(CLIENT, ANONYMOUS)
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": "llm-router"}
        for name in runtime.policies.access.visible(client)
    ]
    wanted = request.match_info.get("model")
    if wanted is None:
        body: object = {"object": "list", "data": data}
    else:
        runtime.policies.access.check(client, wanted)  # 404, listing only its groups
        runtime.balancer.targets(wanted)  # raises the OpenAI-shaped 404 for an unknown one
        body = next(m for m in data if m["id"] == wanted)
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def health(request: web.Request) -> web.Response:
    body: dict[str, str] = {"status": "ok"}
    if request.app[LIVE].runtime.config.state.backend != "memory":
        body["state"] = "degraded" if request.app[STATE].degraded else "ok"
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def not_allowed(allowed: str) -> Handler:
    async def refuse(request: web.Request) -> web.Response:
        raise MethodNotAllowed(
            f"Method {request.method} is not allowed on {request.path}.",
            headers={"Allow": allowed},
        )

    return refuse


async def not_found(request: web.Request) -> web.Response:
    raise NotFound(f"Invalid URL ({request.method} {request.path})", code="unknown_url")


STARTED = web.AppKey("started", int)


def create_app(
    config: Config, *, state: StateBackend | None = None, clock: Clock = time.time
) -> web.Application:
    app = web.Application(
        client_max_size=config.max_body_bytes,
        middlewares=[middleware],
        handler_args={"auto_decompress": False},  # bodies.py inflates within max_body_bytes
    )
    hold = max((p.timeout for p in config.providers), default=600.0) + 5
    app[STATE] = state or open_state(config.state, config.usage_window, clock, hold)
    app[LIVE] = Live(build_runtime(config, app[STATE], clock))
    app[STARTED] = int(time.time())
    app[ACCESS] = AccessLog(config.logging.format)
    app[HANDLERS] = set()
    state_ = app[STATE]
    app[METRICS] = Metrics(degraded=lambda: state_.degraded)
    if config.usage_log:
        app[USAGE_LOG] = UsageLog(config.usage_log)
    app.cleanup_ctx.append(_resources)
    cache.setup(app, config, clock)

    def route(path: str, handler: Handler, *methods: str) -> None:
        resource = app.router.add_resource(path)
        allowed = (*methods, "HEAD") if "GET" in methods else methods
        refuse = not_allowed(", ".join((*allowed, "OPTIONS")))
        for method in METHODS:
            resource.add_route(method, handler if method in methods else refuse)
        # load balancers probe with HEAD
        resource.add_route("HEAD", handler if "GET" in methods else refuse)

    for path in PROXIED:
        route(path, proxy.handle, "POST")
    route("/v1/models", models, "GET")
    route("/v1/models/{model:.+}", models, "GET")
    route("/health", health, "GET")
    route("/metrics", status.metrics, "GET")
    route("/status", status.status, "GET")
    route("/dashboard", status.dashboard, "GET")
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
            if request.method == "OPTIONS" and "Access-Control-Allow-Origin" in response.headers:
                # Name authorization even when the preflight did not list it: `*` never
                # covers it, and a cached preflight may be reused by a later request.
                asked = response.headers.get("Access-Control-Allow-Headers", "")
                names = {h.strip().lower() for h in asked.split(",") if h.strip()}
                names |= {"authorization", "content-type"}
                response.headers["Access-Control-Allow-Headers"] = ", ".join(sorted(names))
        response.headers["x-request-id"] = request.get(REQUEST_ID) or new_request_id()
        request[PREPARED] = response
        route = request.get(ROUTE)
        if route is not None:  # what the strategy decided
            call = request.get(CALL)
            response.headers.update(route.headers(call.target if call is not None else None))
        response.headers["Vary"] = "Origin, Accept-Encoding"

    app.on_response_prepare.append(on_prepare)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=1024, ttl_dns_cache=300)
    config = app[LIVE].runtime.config
    session = aiohttp.ClientSession(connector=connector, trust_env=config.trust_env)
    app[SESSION] = session
    app[UPSTREAMS] = providers.build(session, config.max_reply_bytes)
    await app[STATE].start()
    tasks = [asyncio.create_task(app[ACCESS].run(), name="access-log-flusher")]
    usage_log = app.get(USAGE_LOG)
    if usage_log is not None:
        tasks.append(asyncio.create_task(usage_log.run(), name="usage-log-writer"))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        app[ACCESS].flush()
        if usage_log is not None:
            await usage_log.flush()
        await session.close()
        await app[STATE].close()
