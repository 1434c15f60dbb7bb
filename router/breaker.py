"""The circuit breaker's state machine, as pure functions of a target's health and the time.

closed --(failures in a row >= threshold)--> open --(cooldown elapsed)--> half-open
half-open lets exactly one probe through: success closes, failure re-opens. A probe whose
result never comes (its client hung up, its router died) expires after the cooldown.
A result from a call that started before the breaker last opened is stale and changes
nothing, so only a probe closes it. State backends store `Health` and apply these
functions atomically.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

State = Literal["closed", "open", "half-open"]


@dataclass(frozen=True)
class Health:
    breaker: State = "closed"
    failures: int = 0  # consecutive
    until: float = 0.0  # open: when a probe may go; half-open: when the probe expires
    opened: float = 0.0  # when it last opened; results of calls started before are stale
    cooldown_until: float = 0.0  # Retry-After, x-ratelimit-reset-*, or a quarantined key
    rate_limited: bool = False  # the cooldown came from a 429


def blocked_until(h: Health, now: float) -> float | None:
    """When this target can take a request again, or None if it can now."""
    if h.cooldown_until > now:
        return h.cooldown_until
    if h.breaker != "closed" and h.until > now:
        return h.until
    return None


def take_probe(h: Health, now: float, cooldown: float) -> tuple[bool, Health]:
    """May a request go to this target now? Closed: yes. Otherwise only as the one probe."""
    if h.breaker == "closed":
        return True, h
    if h.until > now:
        return False, h
    return True, replace(h, breaker="half-open", until=now + cooldown)


def on_result(
    h: Health, ok: bool, now: float, threshold: int, cooldown: float, started: float | None = None
) -> Health:
    """The health after a call's result; `started` is when the call was picked (None: now).

    While open no call has been let through since it opened, so every result is stale.
    """
    if h.breaker == "open" or (started is not None and started < h.opened):
        return h
    if ok:
        if h.breaker == "closed" and not h.failures:
            return h  # the common case: nothing changes
        return replace(h, breaker="closed", failures=0, until=0.0)
    failures = h.failures + 1
    if h.breaker == "half-open" or failures >= threshold:
        return replace(h, breaker="open", failures=failures, until=now + cooldown, opened=now)
    return replace(h, failures=failures)


def cool(h: Health, until: float, rate_limited: bool) -> Health:
    if until <= h.cooldown_until:
        return h
    return replace(h, cooldown_until=until, rate_limited=rate_limited)
