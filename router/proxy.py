"""The proxied endpoints: parse once, pick a target, forward, relay, account, fail over.

Before the first byte reaches the client a failed attempt moves on to the next target by
score (or, when every other target is used up, the same one after a backoff); after it,
a stream can only end with an in-band error event.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from router import bodies, hedging, payload, providers
from router.auth import ANONYMOUS
from router.balancer import Balancer, Blocked, Target
from router.cache.layer import CACHE, Ticket
from router.compression import negotiate
from router.config import MAX_OUTPUT_TOKENS
from router.errors import (
    RateLimited,
    RouterError,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from router.hedging import Attempting, Race
from router.keys import CLIENT, LIVE, METRICS, UPSTREAMS, Runtime
from router.limits import Hold
from router.payload import Tokens
from router.providers.http import Reply
from router.retry import backoff, cooldown_seconds
from router.streaming import Relay

if TYPE_CHECKING:
    from router.policies.route import Route

log = logging.getLogger("router.proxy")

# Upstream statuses worth another target: overload, outages, and a bad or revoked key.
RETRYABLE = frozenset({401, 403, 408, 409, 425, 429, 500, 502, 503, 504, 529})
_PASSED_PREFIXES = (
    "x-ratelimit-",
    "openai-processing-ms",
    "openai-version",
    "anthropic-ratelimit-",
)
_STREAMABLE = ("/chat/completions", "/completions", "/responses", "/messages")
_OWN_USAGE = ("/responses", "/messages")  # streams that always report usage


@dataclass
class Attempt:
    target: Target
    reason: str
    status: int | None = None


@dataclass
class Call:
    """One client request on its way through the router."""

    group: str
    path: str
    raw: bytes
    body: dict[str, object]
    stream: bool
    reserve: float
    client: str
    began: float  # perf_counter at arrival
    attempts: list[Attempt] = field(default_factory=list)
    started: int = 0  # upstream calls made, hedges included
    target: Target | None = None  # the one whose reply the client got
    tokens: Tokens | None = None
    cost: float = 0.0
    ttft: float | None = None  # streams: seconds to the first event
    stream_error: str | None = None
    client_gone: bool = False  # the client left before its reply was whole
    route: Route | None = None  # the request's options and its strategy's decisions
    tee: Callable[[bytes], None] | None = None  # sees each run of events sent to the client
    cache: Ticket | None = None  # the response cache's dealings with it


CALL = web.RequestKey("call", Call)
HOLD = web.RequestKey("hold", Hold)


def passed_headers(upstream: Mapping[str, str]) -> dict[str, str]:
    out = {"Content-Type": upstream.get("Content-Type", "application/json")}
    for name, value in upstream.items():
        lower = name.lower()
        if lower == "retry-after" or lower.startswith(_PASSED_PREFIXES):
            out[name] = value
    return out


async def handle(request: web.Request) -> web.StreamResponse:
    try:
        return await _handle(request)
    finally:  # the client's limits hold the request's estimate until it ends
        if (hold := request.get(HOLD)) is not None:
            await hold.release()


async def _handle(request: web.Request) -> web.StreamResponse:
    began = time.perf_counter()
    runtime = request.app[LIVE].runtime
    raw = await bodies.read(request, runtime.config.max_body_bytes, runtime.config.read_timeout)
    body = payload.parse(raw)
    path = request.path[3:]  # "/v1/chat/completions" -> "/chat/completions"
    group = str(body["model"])
    client = request.get(CLIENT, ANONYMOUS)
    cap = max((t.model.max_output_tokens for t in runtime.balancer.groups.get(group, ())),
              default=MAX_OUTPUT_TOKENS)  # fmt: skip
    reserve = payload.estimate(raw, body, path == "/embeddings", cap)
    route = runtime.policies.route(request, body, path, client, len(raw), reserve)  # 404/400
    targets = providers.serving(runtime.balancer.targets(group), path, body)
    stream = body.get("stream") is True
    call = Call(group, path, raw, body, stream, reserve, client, began, route=route)
    request[CALL] = call
    cache = request.app.get(CACHE)
    if cache is not None and (cached := await cache.lookup(request, call)) is not None:
        return cached  # before limits: a cached answer costs no one anything
    if (hold := await runtime.limits.admit(client, reserve, targets)) is not None:
        request[HOLD] = hold
    encoding = None
    if runtime.config.compression.enabled:
        encoding = negotiate(request.headers.get("Accept-Encoding", ""))

    balancer, retry = runtime.balancer, runtime.config.retry
    deadline = balancer.clock() + max(t.provider.timeout for t in targets)
    tried: list[Target] = []
    blocked: list[Blocked] = []
    waited = 0.0
    while len(call.attempts) < retry.attempts:
        picked = balancer.clock()  # a result from before the breaker last opened is stale
        target, blocked = await balancer.pick_owned(targets, reserve, tried, route)
        if target is None and tried:
            # Every other target is used up: try one again, after a backoff.
            picked = balancer.clock()
            target, blocked = await balancer.pick_owned(targets, reserve, (), route)
            if target is not None:
                delay = backoff(len(call.attempts), retry)
                if balancer.clock() + delay > deadline:
                    await balancer.release(target, reserve)
                    break
                try:
                    await asyncio.sleep(delay)
                except asyncio.CancelledError:  # the client left while we waited
                    await balancer.release(target, reserve)
                    raise
        if target is None:
            # Nothing can take it now; with retry.wait, wait for the earliest recovery.
            earliest = min((b.until for b in blocked), default=math.inf)
            pause = earliest - balancer.clock()
            if not blocked or pause + waited > retry.wait or balancer.clock() + pause > deadline:
                break
            waited += max(pause, 0.0)
            await asyncio.sleep(max(pause, 0.0))
            continue
        if target not in tried:
            tried.append(target)
        # From here the attempt owns the reservation: no await comes between.
        hedge = balancer.hedge_after.get(group)
        if hedge is not None and len(call.attempts) + 1 < retry.attempts:
            response = await _hedged(
                request, runtime, call, (target, picked), tried, encoding, hedge
            )
        else:
            response = await _attempt(request, runtime, call, target, picked, encoding)
        if response is not None:
            await route.served(response.status, call.target)  # a session sticks to it
            if cache is not None:
                await cache.reply(call, response)
            return response
    raise _exhausted(call, blocked, balancer.clock())


async def _hedged(
    request: web.Request,
    runtime: Runtime,
    call: Call,
    first: tuple[Target, float],  # and when it was picked
    tried: list[Target],
    encoding: str | None,
    hedge_after: float,
) -> web.StreamResponse | None:
    """This request's attempts, raced by router.hedging."""
    balancer = runtime.balancer

    async def second() -> tuple[Target | None, float]:
        group = providers.serving(balancer.targets(call.group), call.path, call.body)
        picked = balancer.clock()
        target, _ = await balancer.pick_owned(group, call.reserve, tried, call.route)
        if target is not None:
            tried.append(target)
        return target, picked

    def attempt(target: Target, picked: float, race: Race, me: int) -> Attempting:
        return _attempt(request, runtime, call, target, picked, encoding, race, me)

    return await hedging.race(balancer, call.reserve, first, second, attempt, hedge_after)


async def _attempt(
    request: web.Request,
    runtime: Runtime,
    call: Call,
    target: Target,
    picked: float,  # clock time of the pick that chose it
    encoding: str | None,
    race: Race | None = None,
    me: int = 0,
) -> web.StreamResponse | None:
    """One upstream call. Returns the client's response, or None after recording a failure.

    It owns the reservation its pick took: every way out of it settles that reservation.
    """
    if race is not None:
        race.entered[me] = True
    balancer = runtime.balancer
    metrics = request.app[METRICS]
    metrics.attempt_started(target)
    began = time.perf_counter()
    call.started += 1
    stream = call.stream and call.path in _STREAMABLE
    add_usage = stream and call.path not in _OWN_USAGE and not payload.wants_usage(call.body)
    out = payload.rewrite(call.raw, call.body, target.model.name, add_usage)
    tokens: Tokens | None = None
    failed: bool | None = True
    reply: Reply | None = None
    relay: Relay | None = None
    try:
        upstream = request.app[UPSTREAMS][target.provider.type]
        reply = await upstream.send(target, call.path, out, call.stream, request.headers)
        await runtime.policies.sample(target, time.perf_counter() - began)  # headers in
        if reply.status == 400 and add_usage:
            data = await reply.read()
            if b"stream_options" in data:
                # An upstream that refuses the stream_options we added gets the client's
                # request as it was; usage is then estimated.
                reply.close()
                add_usage = False
                out = payload.rewrite(call.raw, call.body, target.model.name, False)
                call.started += 1
                reply = await upstream.send(target, call.path, out, call.stream, request.headers)
        if race is not None and reply.status not in RETRYABLE:
            race.headers()
        if reply.status >= 400:
            data = await reply.read()
            if reply.status in RETRYABLE:
                await _failed(balancer, call, target, f"HTTP {reply.status}", reply)
                return None
            if race is not None and not race.claim(me):
                failed = None
                return None
            call.target = target
            failed = None  # the request's fault, not the target's: no verdict on its health
            return web.Response(
                status=reply.status, body=data, headers=_headers(reply, target, call)
            )
        if stream and reply.headers.get("Content-Type", "").startswith("text/event-stream"):
            relay = Relay(
                reply,
                strip_usage=add_usage,
                responses=call.path == "/responses",
                messages=call.path == "/messages",
                write_timeout=target.provider.idle_timeout,
                tee=call.tee,
            )
            first = await relay.first()
            if race is not None and not race.claim(me):
                failed = None
                return None
            call.target, call.ttft = target, time.perf_counter() - call.began
            resp = await relay.relay(request, first, _headers(reply, target, call), encoding)
            failed = relay.outcome.error is not None
            call.stream_error = relay.outcome.error
            if relay.outcome.client_gone:
                failed = None
                call.client_gone = True
            return resp
        data = await reply.read()
        tokens = _usage(data, reply)
        failed = False
        if race is not None and not race.claim(me):
            return None
        call.target = target
        headers = _headers(reply, target, call)
        headers["x-llm-router-cost"] = f"{target.cost(tokens) if tokens else 0.0:.6f}"
        return web.Response(status=reply.status, body=data, headers=headers)
    except asyncio.CancelledError:  # the client hung up: not the upstream's failure
        failed = None
        raise
    except UpstreamError as exc:
        await _failed(balancer, call, target, exc.reason, None, exc)
        return None
    except Exception:  # a bug of ours, not the upstream's failure (the middleware logs it)
        failed = None
        raise
    finally:
        if reply is not None:
            reply.close()
        if relay is not None:
            tokens = relay.outcome.tokens
            if tokens is None:  # ended (or the client left) before the usage chunk: what it
                # relayed, estimated like a prompt, never a share of the reservation
                prompt = payload.prompt_tokens(call.raw)
                tokens = Tokens(prompt, relay.outcome.completion_estimate())
        used = float(tokens.total) if tokens else 0.0
        health = await balancer.finish(target, call.reserve, used, failed, picked)
        metrics.attempt_done(target, failed, time.perf_counter() - began, health)
        if tokens is not None:
            cost = target.cost(tokens)
            metrics.tokens(target, call.client, tokens.prompt, tokens.completion, cost)
            await runtime.limits.account(call.client, used, cost)
            if call.target is target:
                call.tokens, call.cost = tokens, cost


def _usage(data: bytes, reply: Reply) -> Tokens | None:
    """The reply's usage; a 200 that claims JSON but is not is the upstream's failure."""
    if not reply.headers.get("Content-Type", "").startswith("application/json"):
        return payload.read_usage(data)
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamError("invalid JSON body") from None
    return payload.usage_tokens(obj.get("usage")) if isinstance(obj, dict) else None


async def _failed(
    balancer: Balancer,
    call: Call,
    target: Target,
    reason: str,
    reply: Reply | None,
    exc: UpstreamError | None = None,
) -> None:
    status = (
        reply.status if reply is not None else (504 if isinstance(exc, UpstreamTimeout) else None)
    )
    call.attempts.append(Attempt(target, reason, status))
    if status in (401, 403):
        # A bad or revoked key: set it aside for a while; say which one, by label only.
        log.warning("provider key %s was refused (HTTP %d); quarantined for %gs",
                    target.label, status, balancer.cooldown)  # fmt: skip
        await balancer.cool(target, balancer.cooldown, False)
        return
    wait = cooldown_seconds(reply.headers) if reply is not None else None
    if wait is None and status == 429:
        wait = 1.0  # told to slow down without being told for how long
    if wait:
        await balancer.cool(target, wait, status == 429)


def _headers(reply: Reply, target: Target, call: Call) -> dict[str, str]:
    headers = passed_headers(reply.headers)
    headers["x-llm-router-provider"] = target.provider.name
    headers["x-llm-router-model"] = target.model.name
    headers["x-llm-router-key"] = target.label
    headers["x-llm-router-attempts"] = str(call.started)
    if call.cache is not None:
        headers["x-llm-router-cache"] = call.cache.result
    return headers


def _exhausted(call: Call, blocked: list[Blocked], now: float) -> RouterError:
    n = len(call.attempts)
    headers = {"x-llm-router-attempts": str(call.started)}
    if blocked:
        headers["Retry-After"] = str(max(1, math.ceil(min(b.until for b in blocked) - now)))
    if not n:
        if any(b.rate_limited for b in blocked):
            return RateLimited("Every target of this model is at its rate limit.", headers=headers)
        return ServiceUnavailable(
            "Every target of this model is unavailable (circuit open or key refused).",
            headers=headers,
        )
    detail = "; ".join(f"{a.target.describe()}: {a.reason}" for a in call.attempts)
    if all(a.status == 429 for a in call.attempts):
        headers.setdefault("Retry-After", "1")
        return RateLimited(f"Every target is rate-limited ({detail}).", headers=headers)
    err: RouterError
    if all(a.status == 504 for a in call.attempts):
        err = UpstreamTimeout(f"The upstream timed out after {n} attempt(s): {detail}")
    else:
        err = UpstreamError(f"The upstream failed after {n} attempt(s): {detail}")
    err.headers = headers
    return err
