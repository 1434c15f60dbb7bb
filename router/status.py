"""The operator's endpoints: /metrics (Prometheus), /status (JSON, auth) and /dashboard."""

from __future__ import annotations

import importlib.resources
import time
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from router.balancer import Target
from router.cache.layer import CACHE
from router.keys import LIVE, METRICS, STATE


async def metrics(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    return web.Response(
        body=generate_latest(m.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def status(request: web.Request) -> web.Response:
    return web.Response(
        body=orjson.dumps(await snapshot(request.app)), content_type="application/json"
    )


async def snapshot(app: web.Application) -> dict[str, Any]:
    runtime, state, m = app[LIVE].runtime, app[STATE], app[METRICS]
    config, balancer = runtime.config, runtime.balancer
    groups: dict[str, list[str]] = {}
    targets: dict[str, Target] = {}
    for name, ts in balancer.groups.items():
        for t in ts:
            targets.setdefault(t.id, t)
            groups.setdefault(t.id, []).append(name)
    now = balancer.clock()
    ids = list(targets)
    _, health = await state.view(ids)
    usage = [await state.usage(i) for i in ids]
    window_keys = [f"{kind}:{t.key_id}" for t in targets.values() for kind in ("rpm", "tpm")]
    windows = await state.windows(window_keys, now)
    exhausts = await runtime.policies.predictor.exhausts_in(list(targets.values()))
    out_targets = []
    for n, (tid, t) in enumerate(targets.items()):
        h, u, stats = health[n], usage[n], m.target(t)
        rpm, tpm = windows[2 * n], windows[2 * n + 1]
        out_targets.append(
            {
                "id": tid,
                "provider": t.provider.name,
                "model": t.model.name,
                "key": t.label,
                "groups": groups[tid],
                "weight": t.model.weight,
                "usage_window": u.window,
                "usage_total": u.total,
                "reserved": u.reserved,
                "in_flight": stats.in_flight,
                "breaker": h.breaker,
                "consecutive_failures": h.failures,
                "cooldown_seconds": round(max(0.0, h.cooldown_until - now), 1),
                "latency_ms": round(stats.latency_ema * 1000, 1) if stats.latency_ema else None,
                "error_rate": round(stats.error_ema, 3),
                "requests": stats.requests,
                "errors": stats.errors,
                "rpm": {"used": rpm.total, "limit": t.key.rpm},
                "tpm": {"used": tpm.total, "limit": t.key.tpm},
                "exhausts_in": _seconds(exhausts.get(t.key_id)),
                "prompt_tokens": stats.prompt_tokens,
                "completion_tokens": stats.completion_tokens,
                "cost_usd": round(stats.cost, 6),
            }
        )
    clients = []
    limits = runtime.limits
    for key in config.client_keys:
        c = m.client(key.name)
        entry: dict[str, Any] = {
            "name": key.name,
            "requests": c.requests,
            "errors": c.errors,
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
            "tokens": c.prompt_tokens + c.completion_tokens,
            "cost_usd": round(c.cost, 6),
            "rpm_limit": key.rpm,
            "tpm_limit": key.tpm,
            "budget_usd": key.budget_usd,
            "budget_period": key.budget_period if key.budget_usd is not None else None,
            "budget_left_usd": None,
        }
        if key.budget_usd is not None:
            [spent] = await state.totals([limits.budget_key(key)[0]])
            entry["budget_left_usd"] = round(max(0.0, key.budget_usd - spent), 6)
        clients.append(entry)
    backend = config.state.backend
    cache = app.get(CACHE)
    return {
        "time": time.time(),
        "state": "degraded" if state.degraded else backend,
        "targets": out_targets,
        "clients": clients,
        "cache": await cache.status() if cache is not None else None,
    }


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


async def dashboard(request: web.Request) -> web.Response:
    # The page itself needs no key (a browser cannot send one on navigation); it asks for
    # the key and sends it on its /status calls.
    page = importlib.resources.files("router").joinpath("dashboard.html").read_bytes()
    return web.Response(body=page, content_type="text/html", charset="utf-8")
