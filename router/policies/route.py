"""One request's route (its options and what its strategy decided) and the per-config
`Policies` that makes routes: strategies per group, access, prediction, shared signals.

The order of a pick: the strategy's order; then, for normal and low requests, keys about
to run dry go last; then the session's target first; then pinned targets first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from aiohttp import web

from router.balancer import Balancer, Target
from router.config import Config, Group, Tier
from router.keys import METRICS
from router.metrics import Metrics
from router.policies import controls, resolve
from router.policies.base import Candidate, RouteEvent, RouteRequest
from router.policies.complexity import Complexity, score, tier_for
from router.policies.controls import Access, Options
from router.policies.predict import Predictor
from router.policies.strategy import Ready, Strategy
from router.policies.usage import LowestUsage
from router.policies.user import UserPolicy

if TYPE_CHECKING:
    from router.proxy import Call

ALPHA = 0.2  # weight of the newest sample in the latency EMA
_UNREAD = object()


@dataclass(frozen=True)
class GroupPolicy:
    group: Group
    targets: tuple[Target, ...]
    strategy: Strategy
    limited: bool  # some key has rpm/tpm and prediction is on
    plain: bool  # lowest-usage: the balancer's order stands as it is
    complexity: bool


class Policies:
    def __init__(self, config: Config, balancer: Balancer) -> None:
        self.balancer = balancer
        self.state = balancer.state
        self.clock = balancer.clock
        self.access = Access([g.name for g in config.groups], config.client_keys)
        self.clients = {c.name: c for c in config.client_keys}
        self.predictor = Predictor(self.state, config.predict_horizon, self.clock)
        self.groups: dict[str, GroupPolicy] = {}
        for group in config.groups:
            targets = balancer.groups[group.name]
            policy = group.policy if group.policy is not None else resolve(group.strategy)
            if isinstance(policy, type):
                strategy: Strategy = policy(group, targets, self)
            else:
                strategy = UserPolicy(group, targets, self, policy)
            limited = config.predict_horizon > 0 and any(t.key.rpm or t.key.tpm for t in targets)
            self.groups[group.name] = GroupPolicy(
                group,
                targets,
                strategy,
                limited,
                type(strategy) is LowestUsage,
                isinstance(strategy, Complexity),
            )
        self.timed = any(gp.strategy.timed for gp in self.groups.values())

    def route(
        self,
        request: web.Request,
        body: dict[str, Any],
        path: str,
        client: str,
        size: int,
        reserve: float,
    ) -> Route:
        """Check access and read the request's options: 404 and 400 are raised here."""
        group = str(body["model"])
        self.access.check(client, group)
        gp = self.groups.get(group)
        if gp is None:
            self.balancer.targets(group)  # raises the 404 listing the groups
            raise AssertionError(group)
        options = controls.parse(request.headers, self.clients.get(client), gp.targets)
        metrics = request.app.get(METRICS)
        route = Route(self, gp, path, body, client, options, size // 4, reserve, metrics)
        request[ROUTE] = route  # every reply of the request says what was decided
        return route

    async def sample(self, target: Target, seconds: float) -> None:
        """Time to response headers of one attempt (only when a strategy reads it)."""
        if self.timed:
            await self.state.sample(f"lat:{target.id}", seconds * 1000, ALPHA)

    async def latencies(self, ready: list[Ready]) -> list[float | None]:
        return await self.state.latencies([f"lat:{r[2].id}" for r in ready])

    async def key_windows(self, targets: list[Target]) -> dict[str, tuple[float, float]]:
        """(requests, tokens) in the current 60 s window of each limited key."""
        keys = {t.key_id for t in targets if t.key.rpm or t.key.tpm}
        if not keys:
            return {}
        names = [f"{kind}:{kid}" for kid in keys for kind in ("rpm", "tpm")]
        w = await self.state.windows(names, self.clock())
        return {kid: (w[2 * n].total, w[2 * n + 1].total) for n, kid in enumerate(keys)}


class Route:
    """What one request asked for and what its strategy decided, across all its picks."""

    __slots__ = (
        "policies", "gp", "group", "path", "body", "client", "lane", "mode", "session",
        "pin", "prompt_tokens", "reserve", "share", "active", "turn", "tier", "score",
        "user_order", "stuck", "metrics",
    )  # fmt: skip

    def __init__(
        self,
        policies: Policies,
        gp: GroupPolicy,
        path: str,
        body: dict[str, Any],
        client: str,
        options: Options,
        prompt_tokens: int,
        reserve: float,
        metrics: Metrics | None,
    ) -> None:
        self.policies = policies
        self.gp = gp
        self.group = gp.group.name
        self.path = path
        self.body = body
        self.client = client
        self.lane = options.lane
        self.mode = options.mode
        self.session = options.session
        self.pin = options.pin
        self.metrics = metrics
        self.prompt_tokens = prompt_tokens
        self.reserve = reserve
        # The lane's share of a limited key's rpm/tpm: high may use all of it.
        self.share = 1.0 if self.lane == "high" else 1.0 - gp.group.reserve
        predicting = gp.limited and self.lane != "high"
        self.active = not gp.plain or predicting or self.session is not None or self.pin is not None
        self.turn: int | None = None  # round-robin: this request's turn
        self.user_order: tuple[str, ...] | None = None  # a user policy's answer
        self.stuck: Any = _UNREAD  # the session's target id
        self.tier: Tier | None = None
        self.score: float | None = None
        if gp.complexity:
            self.score = score(body)
            self.tier = tier_for(self.mode or gp.group.mode, self.score)

    async def order(self, ready: list[Ready]) -> list[Ready]:
        """The order to try the ready targets in (called by the balancer on each pick)."""
        out = await self.gp.strategy.order(self, ready)
        if self.gp.limited and self.lane != "high" and len(out) > 1:
            soon = await self.policies.predictor.soon([r[2] for r in out])
            if soon:
                out = [r for r in out if r[2].key_id not in soon] + [
                    r for r in out if r[2].key_id in soon
                ]
        if self.session is not None:
            if self.stuck is _UNREAD:
                self.stuck = await self.policies.state.sticky(self._session_key())
            if self.stuck is not None:
                out = [r for r in out if r[2].id == self.stuck] + [
                    r for r in out if r[2].id != self.stuck
                ]
        if self.pin is not None:
            pin = self.pin
            out = [r for r in out if controls.matches(pin, r[2])] + [
                r for r in out if not controls.matches(pin, r[2])
            ]
        return out

    def picked(self, target: Target) -> None:
        self.gp.strategy.picked(target, self.policies.clock())

    def headers(self, target: Target | None) -> Mapping[str, str]:
        """What the reply says about the decision (complexity groups)."""
        if self.score is None:
            return {}
        out = {"x-llm-router-complexity": f"{self.score:.2f}"}
        if target is not None:
            out["x-llm-router-tier"] = target.model.tier
        return out

    def request(self) -> RouteRequest:
        return RouteRequest(
            group=self.group,
            path=self.path,
            body=MappingProxyType(self.body),
            client=self.client,
            priority=self.lane,
            mode=self.mode,
            session=self.session,
            prompt_tokens=self.prompt_tokens,
        )

    async def candidates(self, ready: list[Ready]) -> list[Candidate]:
        """The ready targets as a user policy sees them."""
        p, targets = self.policies, [r[2] for r in ready]
        usages = [await p.state.usage(t.id) for t in targets]
        emas = await p.latencies(ready)
        used = await p.key_windows(targets)
        stats = self.metrics.targets if self.metrics is not None else {}
        out = []
        for r, u, ema in zip(ready, usages, emas, strict=True):
            t, s = r[2], stats.get(r[2].id)
            rpm_used, tpm_used = used.get(t.key_id, (0.0, 0.0))
            out.append(
                Candidate(
                    provider=t.provider.name,
                    model=t.model.name,
                    key=t.label,
                    weight=t.model.weight,
                    priority=t.model.priority,
                    tier=t.model.tier,
                    input_cost=t.model.input_cost,
                    output_cost=t.model.output_cost,
                    usage=u.window,
                    reserved=u.reserved,
                    in_flight=s.in_flight if s else 0,
                    latency_ms=ema,
                    error_rate=s.error_ema if s else 0.0,
                    rpm_used=int(rpm_used),
                    rpm_limit=t.key.rpm,
                    tpm_used=tpm_used,
                    tpm_limit=t.key.tpm,
                    breaker=r[3].breaker,
                )
            )
        return out

    async def served(self, status: int, target: Target | None) -> None:
        """The request has its reply: a session sticks to the target that served it."""
        if self.session is not None and target is not None and status < 400:
            ttl = self.gp.group.affinity_ttl
            await self.policies.state.stick(self._session_key(), target.id, ttl)

    def done(self, status: int, call: Call, seconds: float) -> None:
        """Once per request that reached routing, when it is answered: tell the policy."""
        if not self.gp.strategy.observes:
            return
        target = call.target
        error = call.stream_error
        if error is None and status >= 400:
            error = "; ".join(f"{a.target.describe()}: {a.reason}" for a in call.attempts)
            error = error or f"HTTP {status}"
        tokens = call.tokens
        event = RouteEvent(
            group=self.group,
            client=self.client,
            session=self.session,
            provider=target.provider.name if target else None,
            model=target.model.name if target else None,
            key=target.label if target else None,
            status=status,
            attempts=call.started,
            prompt_tokens=tokens.prompt if tokens else 0,
            completion_tokens=tokens.completion if tokens else 0,
            cost_usd=call.cost,
            latency_ms=seconds * 1000,
            ttft_ms=call.ttft * 1000 if call.ttft is not None else None,
            error=error,
        )
        self.gp.strategy.observe(event)

    def _session_key(self) -> str:
        # Per (client, group, id); hashed so any id makes a tidy Redis key.
        raw = f"{self.client}\0{self.group}\0{self.session}".encode()
        return "session:" + hashlib.sha256(raw).hexdigest()[:32]


ROUTE = web.RequestKey("route", Route)
