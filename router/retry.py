"""How long to wait: backoff between tries of one target, and cooldowns a provider asks for."""

from __future__ import annotations

import email.utils
import random
import re
import time
from collections.abc import Mapping

from router.config import Retry

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def backoff(tries: int, cfg: Retry, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: half fixed, half random, capped at max_backoff."""
    delay = min(cfg.max_backoff, cfg.backoff * 2 ** max(0, tries - 1))
    return float(delay / 2 + (rng or random).uniform(0, delay / 2))


def parse_duration(value: str) -> float | None:
    """Seconds from `12`, `1.5`, `20ms`, `6m0s` or `1h2m3.5s`; None if it is none of these."""
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return sum(float(n) * _UNIT[u] for n, u in parts)


def cooldown_seconds(headers: Mapping[str, str], wall: float | None = None) -> float | None:
    """The longest wait the upstream asked for: Retry-After (seconds or HTTP date) and the
    x-ratelimit-reset-* headers (OpenAI's `6m0s` style) of the budgets that ran out."""
    waits = []
    retry_after = headers.get("Retry-After")
    if retry_after:
        seconds = parse_duration(retry_after)
        if seconds is None:
            try:
                when = email.utils.parsedate_to_datetime(retry_after).timestamp()
                seconds = max(0.0, when - (wall if wall is not None else time.time()))
            except (TypeError, ValueError):
                seconds = None
        if seconds is not None:
            waits.append(seconds)
    for kind in ("requests", "tokens"):
        if headers.get(f"x-ratelimit-remaining-{kind}", "0").strip() not in ("0", "0.0"):
            continue  # that budget is not what ran out
        value = headers.get(f"x-ratelimit-reset-{kind}")
        seconds = parse_duration(value) if value else None
        if seconds is not None:
            waits.append(seconds)
    return max(waits) if waits else None
