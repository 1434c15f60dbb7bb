"""Groups to targets, and the pick: lowest weight x (windowed usage + reservations).

A target is skipped while it cools down (Retry-After, a bad key), while its breaker is
open, or while its key is at its rpm/tpm limit; `Blocked` says until when, and why.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from router import breaker
from router.config import Config, ModelRef, Provider, ProviderKey
from router.errors import NotFound
from router.payload import Tokens
from router.state import WINDOW, Clock, StateBackend

if TYPE_CHECKING:
    from router.policies.route import Route


@dataclass(frozen=True, eq=False)
class Target:
    provider: Provider
    key: ProviderKey
    model: ModelRef
    id: str  # the state key: usage is per provider key per upstream model

    @property
    def label(self) -> str:
        return self.key.label

    @property
    def key_id(self) -> str:  # rpm/tpm limits belong to the key, across its models
        return f"{self.provider.name}/{self.key.label}"

    def describe(self) -> str:
        return f"{self.provider.name}/{self.model.name} ({self.key.label})"

    def cost(self, tokens: Tokens) -> float:
        m = self.model
        return (tokens.prompt * m.input_cost + tokens.completion * m.output_cost) / 1e6


Entries = tuple[str | None, str | None]  # the rpm and tpm window entries of a pick


@dataclass(frozen=True)
class Blocked:
    until: float  # clock time when the target can be tried again
    rate_limited: bool  # at a limit or told to back off by a 429 (else: open, bad key)


class Balancer:
    def __init__(self, config: Config, state: StateBackend, clock: Clock = time.time) -> None:
        self.state = state
        self.clock = clock
        self.request_penalty = config.request_penalty
        self.error_penalty = config.error_penalty
        self.threshold = config.breaker.failures
        self.cooldown = config.breaker.cooldown
        self.groups: dict[str, tuple[Target, ...]] = {}
        self.hedge_after: dict[str, float | None] = {}
        for group in config.groups:
            targets: dict[str, Target] = {}  # the same pair listed twice counts once
            for ref in group.models:
                provider = config.provider(ref.provider)
                for key in provider.keys:
                    tid = f"{provider.name}/{key.label}/{ref.name}"
                    targets.setdefault(tid, Target(provider, key, ref, tid))
            self.groups[group.name] = tuple(targets.values())
            self.hedge_after[group.name] = group.hedge_after
        self._limited = any(k.rpm or k.tpm for p in config.providers for k in p.keys)
        self.remote = config.state.backend != "memory"  # picks may wait on the network
        # Per target, the rpm/tpm window entries of picks not finished yet: (taken at,
        # tokens, entries). finish() and release() settle the first of the same size.
        self._taken: dict[str, deque[tuple[float, float, Entries]]] = {}
        self._probes: dict[str, float] = {}  # target id -> `until` of the probe we hold

    def targets(self, group: str) -> tuple[Target, ...]:
        try:
            return self.groups[group]
        except KeyError:
            names = ", ".join(self.groups) or "none configured"
            raise NotFound(
                f"The model {group!r} does not exist. Available models: {names}",
                param="model",
                code="model_not_found",
            ) from None

    async def pick(
        self,
        targets: Sequence[Target],
        reserve: float,
        skip: Iterable[Target] = (),
        route: Route | None = None,
    ) -> tuple[Target | None, list[Blocked]]:
        """Choose the lowest score among available targets and reserve tokens on it.

        Ties go to config order; a route's strategy may order them otherwise (and its lane
        may leave part of a limited key's rpm/tpm to high priority requests). Returns the
        target, or None and why each was blocked.
        """
        skipped = set(skip)
        pool = [t for t in targets if t not in skipped] if skipped else list(targets)
        if not pool:
            return None, []
        now = self.clock()
        ids = [t.id for t in pool]
        loads, health = await self.state.view(ids)
        blocked: list[Blocked] = []
        ready: list[tuple[float, int, Target, breaker.Health]] = []
        for i, (t, load, h) in enumerate(zip(pool, loads, health, strict=True)):
            until = breaker.blocked_until(h, now)
            if until is not None:
                blocked.append(Blocked(until, h.rate_limited and h.cooldown_until > now))
                continue
            ready.append((t.model.weight * load, i, t, h))
        ready.sort(key=lambda r: (r[0], r[1]))
        share = 1.0
        if route is not None:
            share = route.share
            if route.active and ready:
                ready = await route.order(ready)
        for _, _, t, h in ready:
            taken: Entries = (None, None)
            if self._limited:
                got = await self._take_limits(t, reserve, now, blocked, share)
                if got is None:
                    continue
                taken = got
            if h.breaker != "closed":
                if not await self.state.take_probe(t.id, now, self.cooldown):
                    blocked.append(Blocked(now + self.cooldown, False))
                    await self._give_back(t, taken)
                    continue
                self._probes[t.id] = now + self.cooldown  # the probe slot this pick holds
            if taken != (None, None):
                pending = self._taken.setdefault(t.id, deque())
                while pending and pending[0][0] <= now - WINDOW:
                    pending.popleft()  # left the window: nothing to correct (a call lost)
                pending.append((now, reserve, taken))
            await self.state.reserve(t.id, reserve + self.request_penalty)
            if route is not None:
                route.picked(t)
            return t, blocked
        return None, blocked

    async def pick_owned(
        self,
        targets: Sequence[Target],
        reserve: float,
        skip: Sequence[Target] = (),
        route: Route | None = None,
    ) -> tuple[Target | None, list[Blocked]]:
        """A pick that a hung-up client cannot cut in half.

        With shared state a pick waits on Redis between taking a key's limits and reserving;
        cancelled there, what it took would never be given back. So it runs to its end, and a
        target it chose for a request that is gone is released at once. Memory picks never
        suspend, so they need none of this.
        """
        if not self.state.degraded and self.remote:
            task = asyncio.ensure_future(self.pick(targets, reserve, skip, route))
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                target, _ = await task
                if target is not None:
                    await self.release(target, reserve)
                raise
        return await self.pick(targets, reserve, skip, route)

    async def _take_limits(
        self, t: Target, reserve: float, now: float, blocked: list[Blocked], share: float = 1.0
    ) -> Entries | None:
        """Count this request against its key's rpm and tpm, atomically, if both have room.

        `share` < 1 is a lane below high: it may use only that part of each limit.
        The window entries taken (rpm, tpm), or None if either was full."""
        key = t.key
        rpm = tpm = None
        if key.rpm:
            limit = key.rpm if share >= 1 else math.floor(share * key.rpm)
            if limit < 1:  # the whole (small) limit is kept for high priority
                blocked.append(Blocked(now + WINDOW, True))
                return None
            taken = await self.state.take(f"rpm:{t.key_id}", 1, limit, now)
            if taken.entry is None:
                blocked.append(Blocked(taken.until, True))
                return None
            rpm = taken.entry
        if key.tpm:
            limit_tokens = key.tpm if share >= 1 else share * key.tpm
            taken = await self.state.take(f"tpm:{t.key_id}", reserve, limit_tokens, now)
            if taken.entry is None:
                await self._give_back(t, (rpm, None))  # the request it will not make
                blocked.append(Blocked(taken.until, True))
                return None
            tpm = taken.entry
        return rpm, tpm

    async def _give_back(self, t: Target, taken: Entries) -> None:
        rpm, tpm = taken
        if rpm is not None:
            await self.state.adjust(f"rpm:{t.key_id}", rpm, 0)
        if tpm is not None:
            await self.state.adjust(f"tpm:{t.key_id}", tpm, 0)

    def _taken_by(self, target: Target, reserved: float) -> Entries:
        """The window entries of a pick of `target` for `reserved` tokens (the oldest)."""
        pending = self._taken.get(target.id)
        if pending:
            for i, (_, tokens, taken) in enumerate(pending):
                if tokens == reserved:
                    del pending[i]
                    return taken
        return None, None

    async def release(self, target: Target, reserved: float) -> None:
        """A pick whose request was never sent: give back all it took, with no verdict."""
        await self.state.settle(target.id, reserved + self.request_penalty, 0.0)
        await self._give_back(target, self._taken_by(target, reserved))
        await self._free_probe(target)

    async def _free_probe(self, target: Target) -> None:
        """A probe that will give no verdict frees its slot: the next request may probe."""
        if self._probes and (until := self._probes.pop(target.id, None)) is not None:
            await self.state.free_probe(target.id, until, self.clock())

    async def finish(
        self,
        target: Target,
        reserved: float,
        used: float,
        failed: bool | None,
        started: float | None = None,
    ) -> breaker.Health | None:
        """Swap the reservation for real usage and record the outcome (None: no verdict).

        `started` is the clock time of the pick that chose this call: a result from a call
        started before the target's breaker last opened is ignored (None: counts as now).
        """
        penalty = self.request_penalty + (self.error_penalty if failed else 0.0)
        await self.state.settle(target.id, reserved + self.request_penalty, used + penalty)
        now = self.clock()
        _, tpm = self._taken_by(target, reserved)
        if tpm is not None:  # the reservation becomes what was used, at the time it was taken
            await self.state.adjust(f"tpm:{target.key_id}", tpm, used)
        if failed is None:
            await self._free_probe(target)
            return None
        if self._probes:
            self._probes.pop(target.id, None)  # the probe's result decides, as it should
        return await self.state.record(
            target.id, not failed, now, self.threshold, self.cooldown, started
        )

    async def cool(self, target: Target, seconds: float, rate_limited: bool) -> None:
        await self.state.cool(target.id, self.clock() + seconds, rate_limited)
