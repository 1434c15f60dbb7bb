"""Fake provider actions the cache tests need: tool-call, n > 1 and text completion streams."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from tests.fakes import Action, Seen

TOOL_CALLS = [
    {"id": "call_abc", "name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'},
    {"id": "call_def", "name": "get_time", "arguments": '{"tz": "Europe/Paris"}'},
]


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def scripted_stream(deltas: list[dict[str, Any]], usage: dict[str, int]) -> Action:
    """A stream of the given choices (chat deltas or text pieces), then usage if asked, [DONE]."""

    async def action(request: web.Request, seen: Seen) -> web.StreamResponse:
        body = seen.json
        chat = seen.path.endswith("/chat/completions")
        head = {
            "id": "chatcmpl-scripted" if chat else "cmpl-scripted",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": 1700000000,
            "model": body["model"],
            "system_fingerprint": "fp_fake",
        }
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for choice in deltas:
            await resp.write(_event({**head, "choices": [choice]}))
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(_event({**head, "choices": [], "usage": usage}))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    return action


def _chat(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}


def tool_call_stream() -> Action:
    """Two tool calls, their arguments cut into small pieces, as OpenAI streams them."""
    deltas = [_chat(0, {"role": "assistant", "content": None})]
    for i, call in enumerate(TOOL_CALLS):
        deltas.append(_chat(0, {"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                                "function": {"name": call["name"],
                                                             "arguments": ""}}]}))  # fmt: skip
        args = call["arguments"]
        for at in range(0, len(args), 5):
            piece = {"index": i, "function": {"arguments": args[at : at + 5]}}
            deltas.append(_chat(0, {"tool_calls": [piece]}))
    deltas.append(_chat(0, {}, "tool_calls"))
    return scripted_stream(deltas, {"prompt_tokens": 30, "completion_tokens": 12,
                                    "total_tokens": 42})  # fmt: skip


def two_choice_stream() -> Action:
    """n = 2: the choices' deltas interleaved, each with its own finish reason."""
    deltas = [_chat(0, {"role": "assistant", "content": ""}),
              _chat(1, {"role": "assistant", "content": ""}),
              _chat(0, {"content": "Red "}), _chat(1, {"content": "Blue "}),
              _chat(0, {"content": "apple."}), _chat(1, {"content": "sky, long"}),
              _chat(0, {}, "stop"), _chat(1, {}, "length")]  # fmt: skip
    return scripted_stream(deltas, {"prompt_tokens": 5, "completion_tokens": 6,
                                    "total_tokens": 11})  # fmt: skip


def text_stream() -> Action:
    """/v1/completions: text pieces, then the finish chunk."""
    pieces = ["Once", " upon", " a time"]
    deltas = [{"index": 0, "text": p, "logprobs": None, "finish_reason": None} for p in pieces]
    deltas.append({"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"})
    return scripted_stream(deltas, {"prompt_tokens": 3, "completion_tokens": 4,
                                    "total_tokens": 7})  # fmt: skip
