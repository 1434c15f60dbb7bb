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

# Markers, found in the lower-cased prompt in one regex pass.
_CODE = ("```", "def ", "class ", "function", "import ", "#include", "=>", "return ",
         "const ", "select ", "traceback", ";\n", "{\n", "}\n")  # fmt: skip
_MATHS = ("\\frac", "\\sum", "\\int", "∫", "∑", "√", "∂", "≤", "≥", "integral",
          "derivative", "prove", "proof", "theorem", "equation", "matrix", "probability",
          "eigen")  # fmt: skip
_STEPS = ("step by step", "step-by-step", "explain why", "explain how", "finally")
_KIND = {**dict.fromkeys(_CODE, 0), **dict.fromkeys(_MATHS, 1), **dict.fromkeys(_STEPS, 2)}
_SCAN = re.compile(
    "|".join(re.escape(m) for m in sorted(_KIND, key=len, reverse=True))
    + r"|(\d ?[-+*/^=] ?\d)|(\n *\d+[.)] )|(\?)"
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
    found = [0, 0, 0, 0]  # code, maths, steps, questions
    for m in _SCAN.finditer(text[:_SCANNED].lower()):
        # A listed marker, else the group that matched: 1 arithmetic, 2 numbered line, 3 "?"
        found[_KIND.get(m.group(), m.lastindex or 0)] += 1
    code, maths, steps, questions = found
    s = 0.25 * min(1.0, len(text) / 4 / 300)
    s += 0.30 * min(1.0, code / 4)
    s += 0.15 * min(1.0, maths / 3)
    s += 0.15 * min(1.0, questions / 3)
    s += 0.10 * min(1.0, steps / 2)
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
