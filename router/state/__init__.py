"""Routing state behind one small async interface, so memory and Redis are interchangeable.

Keys are target ids (`provider/key-label/model`): usage is per key per upstream model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from router.config import State as StateConfig

Clock = Callable[[], float]


@dataclass(frozen=True)
class Usage:
    window: float  # tokens within usage_window (everything since start when it is 0)
    total: float  # tokens since start
    reserved: float  # tokens held by in-flight requests


class StateBackend(Protocol):
    async def loads(self, keys: Sequence[str]) -> list[float]:
        """Windowed usage plus in-flight reservations, one number per key, in order."""

    async def reserve(self, key: str, tokens: float) -> None:
        """Hold `tokens` for an in-flight request to `key`."""

    async def settle(self, key: str, reserved: float, used: float) -> None:
        """Release a reservation and count what was really used (penalties: reserved=0)."""

    async def usage(self, key: str) -> Usage: ...

    async def close(self) -> None: ...


def open_state(
    cfg: StateConfig, usage_window: float, clock: Clock = time.monotonic
) -> StateBackend:
    if cfg.backend == "memory":
        from router.state.memory import MemoryState

        return MemoryState(usage_window, clock)
    raise ValueError(f"state backend {cfg.backend!r} is not available in this build")
