"""The latency family: `lowest-latency` and `headroom` (seed route-llm's capacity score).

Both read the EMA (alpha 0.2) of each target's time to response headers, sampled on every
attempt that got headers and shared through Redis with Redis state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from router.balancer import Target
from router.config import Group
from router.policies.strategy import Ready, Strategy

if TYPE_CHECKING:
    from router.policies.route import Policies, Route

SLOW_MS = 3000.0  # headroom: a target this slow (or slower) scores 0 for latency


class LowestLatency(Strategy):
    """Lowest EMA first. A target with no sample goes first, and one not picked for
    `latency_probe_after` seconds gets the next request, so a recovered target is noticed."""

    timed = True

    def __init__(self, group: Group, targets: tuple[Target, ...], policies: Policies) -> None:
        super().__init__(group, targets, policies)
        born = policies.clock()
        self.last = {t.id: born for t in targets}  # when this router last picked each

    async def order(self, route: Route, ready: list[Ready]) -> list[Ready]:
        emas = await self.policies.latencies(ready)
        stale = self.policies.clock() - self.group.latency_probe_after
        last = self.last

        def key(pair: tuple[Ready, float | None]) -> tuple[int, float]:
            r, ema = pair
            if ema is None:
                return (0, 0.0)
            if last[r[2].id] <= stale:
                return (1, 0.0)
            return (2, ema)

        return [r for r, _ in sorted(zip(ready, emas, strict=True), key=key)]

    def picked(self, target: Target, now: float) -> None:
        self.last[target.id] = now


class Headroom(Strategy):
    """Highest `cap*wc + lat*wl + sta*ws` first, with the weights of the request's lane."""

    timed = True

    async def order(self, route: Route, ready: list[Ready]) -> list[Ready]:
        emas = await self.policies.latencies(ready)
        used = await self.policies.key_windows([r[2] for r in ready])
        wc, wl, ws = self.group.headroom_weights[route.lane]
        reserve = route.reserve
        scores = []
        for r, ema in zip(ready, emas, strict=True):
            t = r[2]
            rpm_used, tpm_used = used.get(t.key_id, (0.0, 0.0))
            cap = capacity(t, rpm_used, tpm_used, reserve)
            lat = 1.0 if ema is None else max(0.0, 1.0 - ema / SLOW_MS)
            sta = 1.0 / (1.0 + t.model.weight)
            scores.append(cap * wc + lat * wl + sta * ws)
        order = sorted(range(len(ready)), key=lambda i: -scores[i])
        return [ready[i] for i in order]


def capacity(t: Target, rpm_used: float, tpm_used: float, reserve: float) -> float:
    """min over the key's limits of the share left after this request; 1 when unlimited."""
    caps = []
    if t.key.rpm:
        caps.append(max(0.0, (t.key.rpm - rpm_used - 1) / t.key.rpm))
    if t.key.tpm:
        caps.append(max(0.0, (t.key.tpm - tpm_used - reserve) / t.key.tpm))
    return min(caps) if caps else 1.0
