"""The proxied endpoints: parse once, pick a target, forward, relay, account."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiohttp import web

from router import payload
from router.balancer import Target
from router.compression import negotiate
from router.errors import RateLimited, RouterError, UpstreamError, UpstreamTimeout
from router.keys import LIVE, UPSTREAMS
from router.streaming import Relay
from router.upstream import Reply

# Upstream statuses worth another target: overload, outages, and a bad or revoked key.
RETRYABLE = frozenset({401, 403, 408, 409, 425, 429, 500, 502, 503, 504, 529})
_PASSED_PREFIXES = ("x-ratelimit-", "openai-processing-ms", "openai-version")
_STREAMABLE = ("/chat/completions", "/completions")


@dataclass
class Attempt:
    target: Target
    reason: str
    status: int | None = None
    retry_after: str | None = None


@dataclass
class Call:
    """One client request on its way through the router."""

    path: str
    raw: bytes
    body: dict[str, object]
    stream: bool
    reserve: float
    attempts: list[Attempt] = field(default_factory=list)


def passed_headers(upstream: Mapping[str, str]) -> dict[str, str]:
    out = {"Content-Type": upstream.get("Content-Type", "application/json")}
    for name, value in upstream.items():
        lower = name.lower()
        if lower == "retry-after" or lower.startswith(_PASSED_PREFIXES):
            out[name] = value
    return out


async def handle(request: web.Request) -> web.StreamResponse:
    runtime = request.app[LIVE].runtime
    raw = await request.read()
    body = payload.parse(raw)
    targets = runtime.balancer.targets(str(body["model"]))
    path = request.path[3:]  # "/v1/chat/completions" -> "/chat/completions"
    stream = body.get("stream") is True
    call = Call(path, raw, body, stream, payload.estimate(raw, body, path == "/embeddings"))
    encoding = None
    if runtime.config.compression.enabled:
        encoding = negotiate(request.headers.get("Accept-Encoding", ""))
    tried: list[Target] = []
    for _ in range(runtime.config.retry.attempts):
        target = await runtime.balancer.pick(targets, call.reserve, tried)
        if target is None:
            break
        tried.append(target)
        response = await _attempt(request, call, target, encoding)
        if response is not None:
            return response
    raise _exhausted(call)


async def _attempt(
    request: web.Request, call: Call, target: Target, encoding: str | None
) -> web.StreamResponse | None:
    """One upstream call. Returns the client's response, or None after recording a failure."""
    balancer = request.app[LIVE].runtime.balancer
    stream = call.stream and call.path in _STREAMABLE
    add_usage = stream and call.path != "/responses" and not payload.wants_usage(call.body)
    out = payload.rewrite(call.raw, call.body, target.model.name, add_usage)
    used: float | None = None
    failed = True
    reply: Reply | None = None
    relay: Relay | None = None
    try:
        reply = await request.app[UPSTREAMS][target.provider.type].send(
            target, call.path, out, call.stream
        )
        if reply.status >= 400:
            data = await reply.read()
            if reply.status in RETRYABLE:
                call.attempts.append(
                    Attempt(
                        target,
                        f"HTTP {reply.status}",
                        reply.status,
                        reply.headers.get("Retry-After"),
                    )
                )
                return None
            failed = reply.status >= 500
            return web.Response(
                status=reply.status, body=data, headers=_headers(reply, target, call)
            )
        if call.stream and reply.headers.get("Content-Type", "").startswith("text/event-stream"):
            relay = Relay(reply, strip_usage=add_usage, needs_done=call.path != "/responses")
            first = await relay.first()
            resp = await relay.relay(request, first, _headers(reply, target, call), encoding)
            failed = relay.outcome.error is not None and not relay.outcome.client_gone
            return resp
        data = await reply.read()
        tokens = payload.read_usage(data)
        used = tokens.total if tokens else None
        failed = False
        return web.Response(status=reply.status, body=data, headers=_headers(reply, target, call))
    except asyncio.CancelledError:  # the client hung up: not the upstream's failure
        failed = False
        raise
    except UpstreamError as exc:
        call.attempts.append(Attempt(target, exc.reason, exc.upstream_status))
        if isinstance(exc, UpstreamTimeout):
            call.attempts[-1].status = 504
        return None
    finally:
        if reply is not None:
            reply.close()
        if relay is not None:
            used = relay.outcome.tokens.total if relay.outcome.tokens else None
            if used is None:  # ended (or the client left) before the usage chunk: estimate
                used = call.reserve / 2 + relay.outcome.events
        await balancer.finish(target, call.reserve, used or 0.0, failed)


def _headers(reply: Reply, target: Target, call: Call) -> dict[str, str]:
    headers = passed_headers(reply.headers)
    headers["x-llm-router-provider"] = target.provider.name
    headers["x-llm-router-model"] = target.model.name
    headers["x-llm-router-key"] = target.label
    headers["x-llm-router-attempts"] = str(len(call.attempts) + 1)
    return headers


def _exhausted(call: Call) -> RouterError:
    n = len(call.attempts)
    detail = "; ".join(f"{a.target.describe()}: {a.reason}" for a in call.attempts)
    headers = {"x-llm-router-attempts": str(n)}
    if n and all(a.status == 429 for a in call.attempts):
        waits = [a.retry_after for a in call.attempts if a.retry_after]
        headers["Retry-After"] = min(waits, key=lambda w: (len(w), w)) if waits else "1"
        return RateLimited(f"Every target is rate-limited ({detail}).", headers=headers)
    if n and all(a.status == 504 for a in call.attempts):
        err: RouterError = UpstreamTimeout(f"The upstream timed out after {n} attempt(s): {detail}")
    else:
        err = UpstreamError(f"The upstream failed after {n} attempt(s): {detail}")
    err.headers = headers
    return err
