"""`complexity`: a tier per request, from `x-llm-router-mode` or a 0-1 score of the prompt.

fast -> the `fast` tier, accurate -> `accurate`, balanced -> by score: < 0.35 fast,
< 0.7 balanced, else accurate. The tier's targets go first, then the nearer tiers
(equally near: the one listed first in the config).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from router.balancer import Target
from router.config import Group, Tier
from router.policies.strategy import Ready, Strategy

if TYPE_CHECKING:
    from router.policies.route import Policies, Route

RANK: Mapping[str, int] = {"fast": 0, "balanced": 1, "accurate": 2}
_SCANNED = 20_000  # characters the markers are looked for in; length counts them all

_CODE = re.compile(
    r"```|\bdef |\bclass \w|\bfunction\b|\bimport \w|#include|=>|\breturn\b|\bconst \w"
    r"|\bSELECT\b|\bstack ?trace\b|\bTraceback\b|[;{}]\s*$",
    re.M,
)
_MATHS = re.compile(
    r"\d\s*[-+*/^=]\s*\d|\\frac|\\sum|\\int|[∫∑√∂≤≥]|\b(?:integral|derivative|prove|proof"
    r"|theorem|equation|matrix|probability|eigen\w*)\b",
    re.I,
)
_STEPS = re.compile(
    r"step[- ]by[- ]step|\bexplain (?:why|how)\b|\bthen\b.*\bfinally\b|^\s*\d+[.)]\s", re.I | re.M
)


def prompt_text(body: Mapping[str, Any]) -> str:
    """The text of the request: messages (string or text parts), `prompt`, or `input`."""
    parts: list[str] = []

    def add(v: Any) -> None:
        if isinstance(v, str):
            parts.append(v)
        elif isinstance(v, list):
            for item in v:
                if isinstance(item, Mapping):
                    add(item.get("text", item.get("content")))
                else:
                    add(item)

    messages = body.get("messages")
    if isinstance(messages, list):
        for m in messages:
            if isinstance(m, Mapping):
                add(m.get("content"))
    add(body.get("prompt"))
    add(body.get("input"))
    return "\n".join(parts)


def score(body: Mapping[str, Any]) -> float:
    """0 (a greeting) to 1 (a long, multi-part question about code or maths)."""
    text = prompt_text(body)
    head = text[:_SCANNED]
    tokens = len(text) / 4
    s = 0.25 * min(1.0, tokens / 300)
    s += 0.30 * min(1.0, len(_CODE.findall(head)) / 4)
    s += 0.15 * min(1.0, len(_MATHS.findall(head)) / 3)
    s += 0.15 * min(1.0, head.count("?") / 3)
    s += 0.10 * min(1.0, len(_STEPS.findall(head)) / 2)
    if body.get("tools") or body.get("functions"):
        s += 0.10
    return min(1.0, s)


def tier_for(mode: str, value: float) -> Tier:
    if mode == "fast" or (mode == "balanced" and value < 0.35):
        return "fast"
    if mode == "accurate" or value >= 0.7:
        return "accurate"
    return "balanced"


class Complexity(Strategy):
    def __init__(self, group: Group, targets: tuple[Target, ...], policies: Policies) -> None:
        super().__init__(group, targets, policies)
        self.first: dict[str, int] = {}  # each tier's first place in the config
        for i, t in enumerate(targets):
            self.first.setdefault(t.model.tier, i)

    async def order(self, route: Route, ready: list[Ready]) -> list[Ready]:
        want, first = RANK[route.tier or "balanced"], self.first

        def key(r: Ready) -> tuple[int, int]:
            tier = r[2].model.tier
            return abs(RANK[tier] - want), first[tier]

        return sorted(ready, key=key)
