"""Streams and completions, both ways: the SSE a client was sent, added up into the completion
it amounts to; and a stored completion played back as a stream an SDK cannot tell from a live
one (role chunk, content or tool-call deltas, finish chunk, usage when asked, [DONE]).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

_EVENT_END = re.compile(rb"\r?\n\r?\n")
_PIECE = re.compile(r"\S*\s*")
_PIECE_CHARS = 48  # a replayed delta carries about this much text


class Assembler:
    """Adds up the chat or text completion chunks of one stream, fed run by run."""

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.head: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: Any = None
        self.done = False  # [DONE] arrived
        self.broken = False  # an event we could not read, or an error event

    def feed(self, run: bytes) -> None:
        for event in _EVENT_END.split(run):
            data = b"".join(
                line[5:].strip() for line in event.splitlines() if line.startswith(b"data:")
            )
            if not data:
                continue
            if data == b"[DONE]":
                self.done = True
                continue
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                self.broken = True
                continue
            if not isinstance(chunk, dict) or "error" in chunk:
                self.broken = True
                continue
            self._chunk(chunk)

    def _chunk(self, chunk: dict[str, Any]) -> None:
        for name in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if chunk.get(name) is not None:
                self.head.setdefault(name, chunk[name])
        if chunk.get("usage") is not None:
            self.usage = chunk["usage"]
        for c in chunk.get("choices") or ():
            if not isinstance(c, dict):
                continue
            index = c.get("index", 0)
            mine = self.choices.setdefault(index, {"index": index, "finish_reason": None})
            if c.get("finish_reason") is not None:
                mine["finish_reason"] = c["finish_reason"]
            if not self.chat:
                mine["text"] = mine.get("text", "") + (c.get("text") or "")
                continue
            delta = c.get("delta") or {}
            message = mine.setdefault("message", {"role": "assistant", "content": None})
            if delta.get("role"):
                message["role"] = delta["role"]
            for name in ("content", "refusal", "reasoning_content"):
                if delta.get(name) is not None:
                    message[name] = (message.get(name) or "") + delta[name]
            for call in delta.get("tool_calls") or ():
                self._tool_call(message, call)

    @staticmethod
    def _tool_call(message: dict[str, Any], call: dict[str, Any]) -> None:
        calls = message.setdefault("tool_calls", {})
        mine = calls.setdefault(call.get("index", len(calls)), {"function": {"arguments": ""}})
        if call.get("id"):
            mine["id"] = call["id"]
        if call.get("type"):
            mine["type"] = call["type"]
        function = call.get("function") or {}
        if function.get("name"):
            mine["function"]["name"] = function["name"]
        mine["function"]["arguments"] += function.get("arguments") or ""

    def completion(self, usage: dict[str, int] | None) -> dict[str, Any]:
        """The completion the stream added up to; `usage` stands in when none was streamed."""
        choices = []
        for index in sorted(self.choices):
            c = dict(self.choices[index])
            message = c.get("message")
            if message is not None and "tool_calls" in message:
                calls = message["tool_calls"]
                message["tool_calls"] = [
                    {"type": "function", **calls[i]} for i in sorted(calls)
                ]  # fmt: skip
            c.setdefault("logprobs", None)
            choices.append(c)
        return {
            "id": self.head.get("id", ""),
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.head.get("created", 0),
            "model": self.head.get("model", ""),
            "choices": choices,
            "usage": self.usage if self.usage is not None else usage,
            **{k: self.head[k] for k in ("system_fingerprint", "service_tier") if k in self.head},
        }


def pieces(text: str) -> list[str]:
    """Text cut at word boundaries into deltas of about _PIECE_CHARS characters."""
    out: list[str] = []
    for word in _PIECE.findall(text):
        if out and len(out[-1]) + len(word) <= _PIECE_CHARS:
            out[-1] += word
        elif word:
            out.append(word)
    return out


def replay(completion: dict[str, Any], include_usage: bool) -> bytes:
    """A stored chat or text completion as the SSE stream the same reply would have been."""
    chat = completion.get("object") != "text_completion"
    head: dict[str, Any] = {
        "id": completion.get("id", ""),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": completion.get("created", 0),
        "model": completion.get("model", ""),
    }
    for name in ("system_fingerprint", "service_tier"):
        if name in completion:
            head[name] = completion[name]
    out: list[bytes] = []

    def emit(choice: dict[str, Any] | None, **extra: Any) -> None:
        chunk = {**head, "choices": [choice] if choice is not None else [], **extra}
        out.append(b"data: " + orjson.dumps(chunk) + b"\n\n")

    for c in completion.get("choices") or ():
        index = c.get("index", 0)
        if chat:
            _chat_choice(emit, index, c.get("message") or {})
        else:
            for piece in pieces(c.get("text") or ""):
                emit({"index": index, "text": piece, "logprobs": None, "finish_reason": None})
        finish = c.get("finish_reason") or "stop"
        if chat:
            emit({"index": index, "delta": {}, "logprobs": None, "finish_reason": finish})
        else:
            emit({"index": index, "text": "", "logprobs": None, "finish_reason": finish})
    if include_usage and completion.get("usage") is not None:
        emit(None, usage=completion["usage"])
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def _chat_choice(emit: Any, index: int, message: dict[str, Any]) -> None:
    def delta(d: dict[str, Any]) -> None:
        emit({"index": index, "delta": d, "logprobs": None, "finish_reason": None})

    calls = message.get("tool_calls") or []
    first: dict[str, Any] = {"role": message.get("role") or "assistant"}
    first["content"] = None if calls and not message.get("content") else ""
    if message.get("refusal") is not None:
        first["refusal"] = ""
    delta(first)
    for name in ("reasoning_content", "content", "refusal"):
        for piece in pieces(message.get(name) or ""):
            delta({name: piece})
    # Tool calls go whole, one delta each: id, type, name and arguments exactly as stored.
    for i, call in enumerate(calls):
        delta({"tool_calls": [{"index": i, **call}]})
