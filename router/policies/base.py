"""The public policy interface (re-exported as `router.policy`): what a user policy gets and
returns. It does not change without a note in the README.

A policy is any object with `order(request, candidates)`, and optionally `observe(event)`;
either may be a coroutine function. `order` gets the available candidates in lowest-usage
order and returns them in the order to try; failover follows that order and candidates
left out are not called.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Lane = Literal["high", "normal", "low"]
BreakerState = Literal["closed", "open", "half-open"]


@dataclass(frozen=True, slots=True)
class RouteRequest:
    group: str  # the model the client asked for
    path: str  # "/chat/completions", "/embeddings", ...
    body: Mapping[str, Any]  # the parsed request body, read-only
    client: str  # the client key's name ("anonymous" when no key is required)
    priority: Lane  # the lane, after the client key's ceiling
    mode: str | None  # x-llm-router-mode, when sent
    session: str | None  # x-llm-router-session, when sent
    prompt_tokens: int  # estimate (body bytes / 4)


@dataclass(frozen=True, slots=True, eq=False)
class Candidate:
    """One available target: (provider, key, upstream model). Compared by identity: return
    the objects you were given."""

    provider: str
    model: str  # the upstream model name
    key: str  # the key's label, never the secret
    weight: float
    priority: int
    tier: str
    input_cost: float  # USD per 1M prompt tokens
    output_cost: float  # USD per 1M completion tokens
    usage: float  # tokens used within usage_window
    reserved: float  # tokens held by in-flight requests
    in_flight: int  # this router's calls in progress
    latency_ms: float | None  # EMA of time to response headers; None before a sample
    error_rate: float  # EMA of failures, 0..1
    rpm_used: int
    rpm_limit: int | None
    tpm_used: float
    tpm_limit: int | None
    breaker: BreakerState


@dataclass(frozen=True, slots=True)
class RouteEvent:
    """One request that reached routing, once it is answered (failed ones included)."""

    group: str
    client: str
    session: str | None
    provider: str | None  # the target that served the reply; None when none did
    model: str | None
    key: str | None
    status: int
    attempts: int  # upstream calls made
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_ms: float
    ttft_ms: float | None  # streams
    error: str | None


class Policy(Protocol):
    def order(
        self, request: RouteRequest, candidates: Sequence[Candidate]
    ) -> Sequence[Candidate] | Awaitable[Sequence[Candidate]]: ...

    # optional:
    # def observe(self, event: RouteEvent) -> None | Awaitable[None]: ...
