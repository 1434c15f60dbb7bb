"""Typed keys for what an app and a request carry: the app's state lives here, not in globals."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from router.auth import Authenticator
from router.balancer import Balancer
from router.config import Config
from router.limits import ClientLimits
from router.metrics import Metrics
from router.providers.http import Upstream
from router.state import StateBackend
from router.usagelog import UsageLog

if TYPE_CHECKING:
    from router.policies.route import Policies


@dataclass(frozen=True)
class Runtime:
    """Everything built from one config; SIGHUP swaps it whole."""

    config: Config
    auth: Authenticator
    balancer: Balancer
    limits: ClientLimits
    policies: Policies


@dataclass
class Live:
    runtime: Runtime
    chores: set[asyncio.Task[None]] = field(default_factory=set)  # a reload's state work


LIVE = web.AppKey("live", Live)
SESSION = web.AppKey("session", aiohttp.ClientSession)
STATE = web.AppKey[StateBackend]("state")
UPSTREAMS = web.AppKey[dict[str, Upstream]]("upstreams")

METRICS = web.AppKey("metrics", Metrics)
HANDLERS = web.AppKey[set[asyncio.Task[Any]]]("handlers")  # requests being handled, for drain
USAGE_LOG = web.AppKey("usage_log", UsageLog)

REQUEST_ID = web.RequestKey("request_id", str)
CLIENT = web.RequestKey("client", str)
