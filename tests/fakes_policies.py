"""Fakes for the routing-policy tests: providers with a fixed reply delay, and small user
policies (good and broken) loaded by import path."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

from router.policy import Candidate, RouteEvent, RouteRequest
from tests.fakes import FakeProvider


@dataclass
class DelayedProvider(FakeProvider):
    """A FakeProvider that waits `delay` seconds before every reply's headers."""

    delay: float = 0.0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(self.delay)
        return await super().handle(request)


class Raising:
    def order(self, request: RouteRequest, candidates: Sequence[Candidate]) -> list[Candidate]:
        raise RuntimeError("policy bug")


class Foreign:
    """Answers with objects that are not its candidates."""

    def order(self, request: RouteRequest, candidates: Sequence[Candidate]) -> list[object]:
        return ["p1"]


class LastOnly:
    """Async: only the last candidate in config order, and records what it was told."""

    def __init__(self) -> None:
        self.requests: list[RouteRequest] = []
        self.events: list[RouteEvent] = []
        self.seen: list[list[Candidate]] = []

    async def order(
        self, request: RouteRequest, candidates: Sequence[Candidate]
    ) -> list[Candidate]:
        self.requests.append(request)
        self.seen.append(list(candidates))
        await asyncio.sleep(0)
        return [max(candidates, key=lambda c: (c.provider, c.key))]

    async def observe(self, event: RouteEvent) -> None:
        self.events.append(event)


class Broken:
    def __init__(self) -> None:
        raise ValueError("cannot start")
