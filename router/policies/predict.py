"""Quota prediction: when each limited key's rpm or tpm window will be full at its recent
rate of use. Keys about to run dry go last for normal and low requests."""

from __future__ import annotations

import math
from collections.abc import Sequence

from router.balancer import Target
from router.state import Clock, StateBackend

SPAN = 10.0  # seconds of use the rate is measured over (at least 1 s of it)


def projection(limit: int, used: float, recent: float, oldest: float, now: float) -> float | None:
    """Seconds until `used` reaches `limit` at the rate of the last SPAN seconds."""
    if recent <= 0:
        return None
    rate = recent / min(SPAN, max(1.0, now - oldest))
    return max(0.0, (limit - used) / rate)


class Predictor:
    def __init__(self, state: StateBackend, horizon: float, clock: Clock) -> None:
        self.state = state
        self.horizon = horizon
        self.clock = clock

    async def exhausts_in(self, targets: Sequence[Target]) -> dict[str, float | None]:
        """Per key id; None for an unlimited or unused key."""
        keys = {t.key_id: t for t in targets if t.key.rpm or t.key.tpm}
        if not keys:
            return {}
        names = [f"{kind}:{kid}" for kid in keys for kind in ("rpm", "tpm")]
        now = self.clock()
        rows = await self.state.recent(names, now, SPAN)
        out: dict[str, float | None] = {}
        for n, (kid, t) in enumerate(keys.items()):
            found = []
            pairs = ((t.key.rpm, rows[2 * n]), (t.key.tpm, rows[2 * n + 1]))
            for limit, (used, recent, oldest) in pairs:
                if limit:
                    p = projection(limit, used, recent, oldest, now)
                    if p is not None:
                        found.append(p)
            out[kid] = min(found) if found else None
        return out

    async def soon(self, targets: Sequence[Target]) -> set[str]:
        """Key ids that will be exhausted within the horizon."""
        return {
            kid
            for kid, left in (await self.exhausts_in(targets)).items()
            if left is not None and left <= self.horizon and not math.isnan(left)
        }
