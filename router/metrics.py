"""What the router has done: Prometheus metrics (a registry per app) and the live figures
that /status and the dashboard show.

The request path only bumps plain numbers in dicts; a collector turns them into metric
families when /metrics is scraped. (prometheus-client's own Counter and Histogram take a
lock and a dozen calls per update: a tenth of the router's work per request.)
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from router.balancer import Target
from router.breaker import Health

_BREAKER = {"closed": 0, "half-open": 1, "open": 2}
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_ALPHA = 0.2  # weight of the newest sample in the latency and error-rate averages
_TARGET = ["provider", "model", "key"]


class Hist:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BOUNDS, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*map(str, BOUNDS), "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


@dataclass
class TargetStats:
    target: Target
    requests: int = 0
    errors: int = 0
    in_flight: int = 0
    latency_ema: float | None = None  # seconds, successful calls
    error_ema: float = 0.0  # 0..1
    cost: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    breaker: str = "closed"
    attempts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "error": 0, "cancelled": 0})
    upstream: Hist = field(default_factory=Hist)


@dataclass
class ClientStats:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0


class Metrics:
    def __init__(self, degraded: Callable[[], bool] = lambda: False) -> None:
        self.targets: dict[str, TargetStats] = {}
        self.clients: dict[str, ClientStats] = {}
        self.requests: dict[tuple[str, str, int], int] = {}  # (group, target id, status)
        self.request_seconds: dict[str, Hist] = {}
        self.ttft: dict[str, Hist] = {}
        self.cost: dict[tuple[str, str], float] = {}  # (target id, client)
        self.failovers: dict[str, int] = {}
        self.degraded = degraded
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    def target(self, t: Target) -> TargetStats:
        stats = self.targets.get(t.id)
        if stats is None:
            stats = self.targets[t.id] = TargetStats(t)
        return stats

    def client(self, name: str) -> ClientStats:
        stats = self.clients.get(name)
        if stats is None:
            stats = self.clients[name] = ClientStats()
        return stats

    def attempt_started(self, t: Target) -> None:
        self.target(t).in_flight += 1

    def attempt_done(
        self, t: Target, failed: bool | None, seconds: float, health: Health | None
    ) -> None:
        stats = self.target(t)
        stats.in_flight -= 1
        stats.upstream.observe(seconds)
        stats.attempts["cancelled" if failed is None else ("error" if failed else "ok")] += 1
        if failed is not None:
            stats.requests += 1
            stats.errors += failed
            stats.error_ema += _ALPHA * (float(failed) - stats.error_ema)
            if not failed:
                ema = stats.latency_ema
                stats.latency_ema = seconds if ema is None else ema + _ALPHA * (seconds - ema)
        if health is not None:
            stats.breaker = health.breaker

    def tokens(self, t: Target, client: str, prompt: int, completion: int, cost: float) -> None:
        stats = self.target(t)
        stats.prompt_tokens += prompt
        stats.completion_tokens += completion
        stats.cost += cost
        c = self.client(client)
        c.prompt_tokens += prompt
        c.completion_tokens += completion
        c.cost += cost
        key = (t.id, client)  # also at 0 when the model has no prices: the series exists
        self.cost[key] = self.cost.get(key, 0.0) + cost

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
        self.requests[key] = self.requests.get(key, 0) + 1
        hist = self.request_seconds.get(group)
        if hist is None:
            hist = self.request_seconds[group] = Hist()
            self.ttft[group] = Hist()
            if group:
                self.failovers[group] = 0  # a series from the first request, at 0
        hist.observe(seconds)
        if ttft is not None:
            self.ttft[group].observe(ttft)
        if t is not None and attempts > 1 and status < 400:
            self.failovers[group] = self.failovers.get(group, 0) + 1
        c = self.client(client)
        c.requests += 1
        c.errors += status >= 400


class _Collector:
    """Builds the metric families from Metrics' numbers at scrape time."""

    def __init__(self, m: Metrics) -> None:
        self.m = m

    def collect(self) -> Iterator[Metric]:
        m = self.m
        labels = {
            tid: [s.target.provider.name, s.target.model.name, s.target.label]
            for tid, s in m.targets.items()
        }
        requests = CounterMetricFamily(
            "llm_router_requests",
            "Client requests answered, by outcome.",
            labels=["group", *_TARGET, "status"],
        )
        for (group, tid, status), n in m.requests.items():
            requests.add_metric([group, *labels.get(tid, ["", "", ""]), str(status)], n)
        yield requests
        for name, doc, hists in (
            (
                "llm_router_request_duration_seconds",
                "Whole request, as the client sees it.",
                m.request_seconds,
            ),
            (
                "llm_router_time_to_first_token_seconds",
                "Streams: request start to first event.",
                m.ttft,
            ),
        ):
            family = HistogramMetricFamily(name, doc, labels=["group"])
            for group, h in hists.items():
                family.add_metric([group], h.cumulative(), h.sum)
            yield family
        upstream = HistogramMetricFamily(
            "llm_router_upstream_duration_seconds",
            "One upstream call, to its last byte.",
            labels=["provider", "model"],
        )
        merged: dict[tuple[str, str], Hist] = {}
        for tid, s in m.targets.items():
            h = merged.setdefault((labels[tid][0], labels[tid][1]), Hist())
            h.counts = [a + b for a, b in zip(h.counts, s.upstream.counts, strict=True)]
            h.sum += s.upstream.sum
        for (provider, model), h in merged.items():
            upstream.add_metric([provider, model], h.cumulative(), h.sum)
        yield upstream
        prompt = CounterMetricFamily("llm_router_prompt_tokens", "Prompt tokens.", labels=_TARGET)
        completion = CounterMetricFamily(
            "llm_router_completion_tokens", "Completion tokens.", labels=_TARGET
        )
        breaker = GaugeMetricFamily(
            "llm_router_breaker_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open.",
            labels=_TARGET,
        )
        attempts = CounterMetricFamily(
            "llm_router_upstream_attempts",
            "Upstream calls, by outcome.",
            labels=[*_TARGET, "outcome"],
        )
        for tid, s in m.targets.items():
            prompt.add_metric(labels[tid], s.prompt_tokens)
            completion.add_metric(labels[tid], s.completion_tokens)
            breaker.add_metric(labels[tid], _BREAKER[s.breaker])
            for outcome, n in s.attempts.items():
                attempts.add_metric([*labels[tid], outcome], n)
        yield from (prompt, completion, breaker, attempts)
        cost = CounterMetricFamily(
            "llm_router_cost_usd",
            "Spend in USD, from the model prices.",
            labels=[*_TARGET, "client"],
        )
        for (tid, client), usd in m.cost.items():
            cost.add_metric([*labels[tid], client], usd)
        yield cost
        failovers = CounterMetricFamily(
            "llm_router_failovers",
            "Requests answered by another target after a failure.",
            labels=["group"],
        )
        for group, n in m.failovers.items():
            failovers.add_metric([group], n)
        yield failovers
        yield GaugeMetricFamily(
            "llm_router_in_flight_requests",
            "Upstream calls in progress.",
            value=sum(s.in_flight for s in m.targets.values()),
        )
        yield GaugeMetricFamily(
            "llm_router_state_degraded",
            "1 while shared state (Redis) is unreachable.",
            value=1 if m.degraded() else 0,
        )
