"""Groups to targets, and the pick: lowest weight x (windowed usage + reservations)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from router.config import Config, ModelRef, Provider, ProviderKey
from router.errors import NotFound
from router.state import StateBackend


@dataclass(frozen=True, eq=False)
class Target:
    provider: Provider
    key: ProviderKey
    model: ModelRef
    id: str  # the state key: usage is per provider key per upstream model

    @property
    def label(self) -> str:
        return self.key.label

    def describe(self) -> str:
        return f"{self.provider.name}/{self.model.name} ({self.key.label})"


class Balancer:
    def __init__(self, config: Config, state: StateBackend) -> None:
        self.state = state
        self.request_penalty = config.request_penalty
        self.error_penalty = config.error_penalty
        self.groups: dict[str, tuple[Target, ...]] = {}
        for group in config.groups:
            targets: dict[str, Target] = {}  # the same pair listed twice counts once
            for ref in group.models:
                provider = config.provider(ref.provider)
                for key in provider.keys:
                    tid = f"{provider.name}/{key.label}/{ref.name}"
                    targets.setdefault(tid, Target(provider, key, ref, tid))
            self.groups[group.name] = tuple(targets.values())

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
        self, targets: Sequence[Target], reserve: float, skip: Iterable[Target] = ()
    ) -> Target | None:
        """Choose the lowest score (ties: config order) and reserve `reserve` tokens on it."""
        skipped = set(skip)
        pool = [t for t in targets if t not in skipped] if skipped else targets
        if not pool:
            return None
        if len(pool) == 1:
            best = pool[0]
        else:
            loads = await self.state.loads([t.id for t in pool])
            best, best_score = pool[0], pool[0].model.weight * loads[0]
            for t, load in zip(pool[1:], loads[1:], strict=True):
                score = t.model.weight * load
                if score < best_score:
                    best, best_score = t, score
        await self.state.reserve(best.id, reserve + self.request_penalty)
        return best

    async def finish(self, target: Target, reserved: float, used: float, failed: bool) -> None:
        """Swap the reservation for real usage; the request penalty stays counted."""
        penalty = self.request_penalty + (self.error_penalty if failed else 0.0)
        await self.state.settle(target.id, reserved + self.request_penalty, used + penalty)
