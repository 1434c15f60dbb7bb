"""Request controls: the x-llm-router-* request headers, lanes, and which groups a client
may use. Each header is read once per request; a bad value is a 400 naming the header."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from router.balancer import Target
from router.config import LANES, TIERS, ClientKey, Lane
from router.errors import BadRequest, NotFound

PROVIDER = "x-llm-router-provider"
SESSION = "x-llm-router-session"
PRIORITY = "x-llm-router-priority"
MODE = "x-llm-router-mode"
_RANK = {"low": 0, "normal": 1, "high": 2}
_MAX_SESSION = 256


@dataclass(frozen=True, slots=True)
class Options:
    lane: Lane = "normal"
    mode: str | None = None
    session: str | None = None
    pin: tuple[str, str | None] | None = None  # (provider, upstream model or None)


DEFAULT = Options()


def _bad(header: str, message: str) -> BadRequest:
    return BadRequest(message, param=header, code="invalid_header")


def parse(
    headers: Mapping[str, str], client: ClientKey | None, targets: Sequence[Target]
) -> Options:
    """The request's options; a client key's `priority` is its default lane and ceiling."""
    ceiling: Lane | None = client.priority if client is not None else None
    asked = headers.get(PRIORITY)
    mode = headers.get(MODE)
    session = headers.get(SESSION)
    pinned = headers.get(PROVIDER)
    if asked is None and mode is None and session is None and pinned is None:
        return DEFAULT if ceiling is None else Options(lane=ceiling)
    lane: Lane = ceiling or "normal"
    if asked is not None:
        if asked not in LANES:
            raise _bad(PRIORITY, f"{PRIORITY} must be one of high, normal, low, got {asked!r}.")
        lane = asked if ceiling is None or _RANK[asked] <= _RANK[ceiling] else ceiling
    if mode is not None and mode not in TIERS:
        raise _bad(MODE, f"{MODE} must be one of fast, balanced, accurate, got {mode!r}.")
    if session is not None and not (0 < len(session) <= _MAX_SESSION and session.isprintable()):
        raise _bad(SESSION, f"{SESSION} must be 1 to {_MAX_SESSION} printable characters.")
    pin = None
    if pinned is not None:
        provider, _, model = pinned.partition("/")
        pin = (provider, model or None)
        if not any(matches(pin, t) for t in targets):
            raise _bad(PROVIDER, f"{PROVIDER}: no target of this model matches {pinned!r}.")
    return Options(lane, mode, session, pin)


def matches(pin: tuple[str, str | None], t: Target) -> bool:
    return t.provider.name == pin[0] and (pin[1] is None or t.model.name == pin[1])


class Access:
    """Which groups each client key may use (`api_keys[].groups`; default: all)."""

    def __init__(self, groups: Sequence[str], clients: Sequence[ClientKey]) -> None:
        self.groups = tuple(groups)
        self.only = {c.name: frozenset(c.groups) for c in clients if c.groups is not None}

    def visible(self, client: str) -> tuple[str, ...]:
        only = self.only.get(client)
        return self.groups if only is None else tuple(g for g in self.groups if g in only)

    def check(self, client: str, group: str) -> None:
        """A group the client may not use is as unknown to it as one that does not exist."""
        only = self.only.get(client)
        if only is None or group in only:
            return
        names = ", ".join(self.visible(client)) or "none"
        raise NotFound(
            f"The model {group!r} does not exist. Available models: {names}",
            param="model",
            code="model_not_found",
        )
