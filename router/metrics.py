"""What the router has done: Prometheus metrics (a registry per app) and the live figures
that /status and the dashboard show. Updated on the request path, so kept cheap: label
children are looked up once per target, not per request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from router.balancer import Target
from router.breaker import Health

_BREAKER = {"closed": 0, "half-open": 1, "open": 2}
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_ALPHA = 0.2  # weight of the newest sample in the latency and error-rate averages


@dataclass
class TargetStats:
    requests: int = 0
    errors: int = 0
    in_flight: int = 0
    latency_ema: float | None = None  # seconds, successful calls
    error_ema: float = 0.0  # 0..1
    cost: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    breaker: str = "closed"  # as last reported to the gauge


@dataclass
class ClientStats:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = Counter(
            "llm_router_requests", "Client requests answered, by outcome.",
            ["group", "provider", "model", "key", "status"], registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "llm_router_request_duration_seconds", "Whole request, as the client sees it.",
            ["group"], buckets=_SECONDS, registry=r,
        )  # fmt: skip
        self.upstream_seconds = Histogram(
            "llm_router_upstream_duration_seconds", "One upstream call, to its last byte.",
            ["provider", "model"], buckets=_SECONDS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "llm_router_time_to_first_token_seconds", "Streams: request start to first event.",
            ["group"], buckets=_SECONDS, registry=r,
        )  # fmt: skip
        labels = ["provider", "model", "key"]
        self.prompt_tokens = Counter(
            "llm_router_prompt_tokens", "Prompt tokens.", labels, registry=r
        )
        self.completion_tokens = Counter(
            "llm_router_completion_tokens", "Completion tokens.", labels, registry=r
        )
        self.cost = Counter(
            "llm_router_cost_usd", "Spend in USD, from the model prices.",
            [*labels, "client"], registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "llm_router_in_flight_requests", "Upstream calls in progress.", registry=r
        )
        # Read when scraped: no lock taken twice per call on the request path.
        self.in_flight.set_function(lambda: sum(t.in_flight for t in self.targets.values()))
        self.breaker = Gauge(
            "llm_router_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open.",
            labels, registry=r,
        )  # fmt: skip
        self.attempts = Counter(
            "llm_router_upstream_attempts", "Upstream calls, by outcome.",
            [*labels, "outcome"], registry=r,
        )  # fmt: skip
        self.failovers = Counter(
            "llm_router_failovers", "Requests answered by another target after a failure.",
            ["group"], registry=r,
        )  # fmt: skip
        self.degraded = Gauge(
            "llm_router_state_degraded", "1 while shared state (Redis) is unreachable.",
            registry=r,
        )  # fmt: skip
        self.targets: dict[str, TargetStats] = {}
        self.clients: dict[str, ClientStats] = {}
        self._children: dict[str, Any] = {}
        self._requests: dict[tuple[str, str, int], Any] = {}
        self._groups: dict[str, tuple[Any, Any]] = {}

    def target(self, t: Target) -> TargetStats:
        stats = self.targets.get(t.id)
        if stats is None:
            stats = self.targets[t.id] = TargetStats()
        return stats

    def client(self, name: str) -> ClientStats:
        stats = self.clients.get(name)
        if stats is None:
            stats = self.clients[name] = ClientStats()
        return stats

    def _labelled(self, t: Target) -> Any:
        c = self._children.get(t.id)
        if c is None:
            labels = (t.provider.name, t.model.name, t.label)
            c = self._children[t.id] = (
                self.upstream_seconds.labels(t.provider.name, t.model.name),
                self.prompt_tokens.labels(*labels),
                self.completion_tokens.labels(*labels),
                self.breaker.labels(*labels),
                {o: self.attempts.labels(*labels, o) for o in ("ok", "error", "cancelled")},
            )
            c[3].set(0)  # closed until told otherwise
        return c

    def attempt_started(self, t: Target) -> None:
        self.target(t).in_flight += 1

    def attempt_done(
        self, t: Target, failed: bool | None, seconds: float, health: Health | None
    ) -> None:
        stats = self.target(t)
        stats.in_flight -= 1
        upstream, _, _, breaker, attempts = self._labelled(t)
        upstream.observe(seconds)
        outcome = "cancelled" if failed is None else ("error" if failed else "ok")
        attempts[outcome].inc()
        if failed is not None:
            stats.requests += 1
            stats.errors += failed
            stats.error_ema += _ALPHA * (float(failed) - stats.error_ema)
            if not failed:
                ema = stats.latency_ema
                stats.latency_ema = seconds if ema is None else ema + _ALPHA * (seconds - ema)
        if health is not None and health.breaker != stats.breaker:
            stats.breaker = health.breaker
            breaker.set(_BREAKER[health.breaker])

    def tokens(self, t: Target, client: str, prompt: int, completion: int, cost: float) -> None:
        _, prompt_c, completion_c, _, _ = self._labelled(t)
        prompt_c.inc(prompt)
        completion_c.inc(completion)
        if cost:
            self.cost.labels(t.provider.name, t.model.name, t.label, client).inc(cost)
        stats = self.target(t)
        stats.prompt_tokens += prompt
        stats.completion_tokens += completion
        stats.cost += cost
        c = self.client(client)
        c.prompt_tokens += prompt
        c.completion_tokens += completion
        c.cost += cost

    def request_done(
        self,
        group: str,
        t: Target | None,
        client: str,
        status: int,
        seconds: float,
        ttft: float | None,
        attempts: int,
    ) -> None:
        key = (group, t.id if t else "", status)
        counter = self._requests.get(key)
        if counter is None:
            labels = (t.provider.name, t.model.name, t.label) if t else ("", "", "")
            counter = self._requests[key] = self.requests.labels(group, *labels, str(status))
        counter.inc()
        per_group = self._groups.get(group)
        if per_group is None:
            per_group = self._groups[group] = (
                self.request_seconds.labels(group),
                self.ttft.labels(group),
            )
        per_group[0].observe(seconds)
        if ttft is not None:
            per_group[1].observe(ttft)
        if t is not None and attempts > 1 and status < 400:
            self.failovers.labels(group).inc()
        c = self.client(client)
        c.requests += 1
        c.errors += status >= 400
