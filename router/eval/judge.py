"""The judge: a group of the config grading each answer 0-5 with a fixed rubric.

Its score is the first JSON object in its reply holding a number 0-5 under `score`; a
reply without one is asked again once, then counts as no score. Never a made-up score.
"""

from __future__ import annotations

import json
import math
from typing import Any

from router.balancer import Target
from router.eval.prompts import Prompt
from router.eval.runner import Caller

RUBRIC = """You grade an AI assistant's answer to a user's request.
Weigh four things: relevance (does it address the request), correctness (are its facts
and reasoning right; when a reference answer is given, does it agree with it), clarity
(is it easy to follow) and completeness (does it cover what was asked).
Give one overall score from 0 (useless or wrong) to 5 (excellent).
Reply with only a JSON object, no other text, shaped like
{"score": <a number from 0 to 5>, "reason": "<one short sentence>"}"""


def request(prompt: Prompt, answer: str) -> dict[str, Any]:
    """The judge's body fields for one answer (the caller adds model and stream)."""
    parts = [f"The request:\n{prompt.question}"]
    if prompt.expected is not None:
        parts.append(f"A reference answer:\n{prompt.expected}")
    parts.append(f"The answer to grade:\n{answer}")
    return {
        "messages": [
            {"role": "system", "content": RUBRIC},
            {"role": "user", "content": "\n\n".join(parts)},
        ],
        "temperature": 0,
    }


def parse(text: str) -> tuple[float, str] | None:
    """(score, reason) from the first JSON object holding a number 0-5 under `score`.

    Scanning every `{` for a decodable object lets a fenced block or prose around it pass.
    """
    decoder = json.JSONDecoder()
    at = text.find("{")
    while at >= 0:
        try:
            obj, _ = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            score = obj.get("score")
            if (
                isinstance(score, int | float)
                and not isinstance(score, bool)
                and math.isfinite(score)
                and 0 <= score <= 5
            ):
                reason = obj.get("reason")
                return float(score), reason if isinstance(reason, str) else ""
        at = text.find("{", at + 1)
    return None


class Judge:
    """Grades answers on the judge group's keys and counts what judging cost."""

    def __init__(self, caller: Caller, group: str, keys: tuple[Target, ...]) -> None:
        self.caller = caller
        self.group = group
        self.keys = keys
        self.calls = 0
        self.cost: float | None = None  # None until a judge call reports usage

    async def score(self, prompt: Prompt, answer: str) -> tuple[float | None, str | None]:
        fields = request(prompt, answer)
        for _ in range(2):  # an unparsable reply is asked once more
            reply = await self.caller.call(self.keys, fields)
            self.calls += 1
            if reply.cost is not None:
                self.cost = (self.cost or 0.0) + reply.cost
            if reply.error is not None:
                return None, f"judge failed: {reply.error}"
            parsed = parse(reply.text)
            if parsed is not None:
                return parsed
        return None, "judge gave no score (asked twice)"
