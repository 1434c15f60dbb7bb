"""The prompts file: one JSON object a line, every line checked before anything is sent."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

_NOT_SENT = ("id", "expected", "prompt")


@dataclass(frozen=True)
class Prompt:
    id: str
    line: int
    messages: tuple[dict[str, Any], ...]
    body: dict[str, Any]  # the other body fields, sent as they are (max_tokens, ...)
    expected: str | None = None

    @property
    def question(self) -> str:
        """The last user message as text, for the judge."""
        for m in reversed(self.messages):
            if m.get("role") == "user":
                return _text(m.get("content"))
        return _text(self.messages[-1].get("content"))


class PromptError(Exception):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def load(path: str | Path) -> list[Prompt]:
    """Every prompt of the file, or PromptError naming every bad line."""
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise PromptError([f"{path}: cannot read: {exc.strerror}"]) from None
    prompts: list[Prompt] = []
    errors: list[str] = []
    seen: dict[str, int] = {}
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            prompt = _parse(raw, n)
        except ValueError as exc:
            errors.append(f"{path}:{n}: {exc}")
            continue
        if prompt.id in seen:
            errors.append(f"{path}:{n}: id {prompt.id!r} is already used on line {seen[prompt.id]}")
            continue
        seen[prompt.id] = n
        prompts.append(prompt)
    if not prompts and not errors:
        errors.append(f"{path}: no prompts (one JSON object a line)")
    if errors:
        raise PromptError(errors)
    return prompts


def _parse(raw: bytes, n: int) -> Prompt:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise ValueError("must be a JSON object")
    has_messages, has_prompt = "messages" in obj, "prompt" in obj
    if has_messages == has_prompt:
        raise ValueError("needs exactly one of 'messages' or 'prompt'")
    if has_prompt:
        if not isinstance(obj["prompt"], str) or not obj["prompt"].strip():
            raise ValueError("'prompt' must be a non-empty string")
        messages: list[Any] = [{"role": "user", "content": obj["prompt"]}]
    else:
        messages = obj["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError("'messages' must be a non-empty list")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise ValueError(f"messages[{i}] must be an object with a string 'role'")
            if not isinstance(m.get("content"), str | list):
                raise ValueError(f"messages[{i}].content must be a string or a list of parts")
    ident = obj.get("id", n)
    if isinstance(ident, bool) or not isinstance(ident, str | int) or ident == "":
        raise ValueError("'id' must be a non-empty string or an integer")
    expected = obj.get("expected")
    if expected is not None and not isinstance(expected, str):
        raise ValueError("'expected' must be a string")
    body = {k: v for k, v in obj.items() if k not in _NOT_SENT and k != "messages"}
    return Prompt(str(ident), n, tuple(messages), body, expected)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return " ".join(p["text"] for p in content if isinstance(p, dict) and "text" in p)
    return ""
