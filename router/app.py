"""create_app: routes, CORS, and the resources one app owns.

Order of work on a request: the middleware (router/middleware.py: request id, auth,
error envelope, compression, observation) -> handler; then on_response_prepare:
aiohttp-cors, then our common headers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
import aiohttp_cors
import orjson
from aiohttp import web

from router import providers, proxy, status
from router.auth import ANONYMOUS, Authenticator
from router.balancer import Balancer
from router.cache import layer as cache
from router.config import Config
from router.errors import (
    MethodNotAllowed,
    NotFound,
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
from router.logs import AccessLog
from router.metrics import Metrics
from router.middleware import ACCESS, PREPARED, PROXIED, Handler, middleware, new_request_id
from router.policies.route import ROUTE, Policies
from router.proxy import CALL
from router.state import Clock, StateBackend, open_state
from router.usagelog import UsageLog

log = logging.getLogger("router")

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
