"""Backoff, cooldown header parsing and the breaker's state machine, on an injected clock."""

from __future__ import annotations

import email.utils
import random

import pytest

from router import breaker
from router.config import Retry
from router.retry import backoff, cooldown_seconds, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("12", 12), ("1.5", 1.5), ("20ms", 0.02), ("6m0s", 360), ("1h2m3.5s", 3723.5),
     ("soon", None), ("5x", None)],
)  # fmt: skip
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_retry_after_http_date() -> None:
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 42, usegmt=True)
    assert cooldown_seconds({"Retry-After": date}, wall=now) == pytest.approx(42)


def test_reset_headers_count_only_for_exhausted_budgets() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "2s",
        "x-ratelimit-remaining-tokens": "5000",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert cooldown_seconds(headers) == 2
    assert cooldown_seconds({}) is None


def test_backoff_grows_is_jittered_and_capped() -> None:
    cfg = Retry(backoff=0.1, max_backoff=1.0)
    rng = random.Random(1)
    for tries, cap in ((1, 0.1), (2, 0.2), (3, 0.4), (10, 1.0)):
        delays = [backoff(tries, cfg, rng) for _ in range(50)]
        assert all(cap / 2 <= d <= cap for d in delays)
        assert len(set(delays)) > 1


def test_breaker_state_machine() -> None:
    h = breaker.Health()
    for _ in range(2):
        h = breaker.on_result(h, False, 100.0, threshold=3, cooldown=10)
    assert h.breaker == "closed" and h.failures == 2
    h = breaker.on_result(h, False, 100.0, 3, 10)
    assert h.breaker == "open" and breaker.blocked_until(h, 105.0) == 110.0
    ok, h2 = breaker.take_probe(h, 105.0, 10)
    assert not ok
    ok, h = breaker.take_probe(h, 110.0, 10)
    assert ok and h.breaker == "half-open"
    ok, _ = breaker.take_probe(h, 111.0, 10)
    assert not ok  # one probe at a time
    assert breaker.on_result(h, True, 112.0, 3, 10).breaker == "closed"
    reopened = breaker.on_result(h, False, 112.0, 3, 10)
    assert reopened.breaker == "open" and reopened.until == 122.0
    ok, _ = breaker.take_probe(h, 120.5, 10)
    assert ok  # a probe that never reported back expires


def test_success_resets_consecutive_failures() -> None:
    h = breaker.on_result(breaker.Health(), False, 0, 2, 5)
    h = breaker.on_result(h, True, 0, 2, 5)
    h = breaker.on_result(h, False, 0, 2, 5)
    assert h.breaker == "closed"
