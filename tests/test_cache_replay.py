"""Replays through the official openai SDK: a cached answer must read exactly like a live one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from router.cache.replay import Assembler, pieces, replay
from tests.fakes import LiveStack
from tests.fakes_cache import TOOL_CALLS, text_stream, tool_call_stream, two_choice_stream

TOOLS: Any = [
    {"type": "function", "function": {"name": c["name"], "parameters": {"type": "object"}}}
    for c in TOOL_CALLS
]


@pytest.fixture
def stack() -> Iterator[LiveStack]:
    s = LiveStack(cache={"backend": "memory"})
    yield s
    s.close()


def client(stack: LiveStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url + "/v1", api_key="alice-secret", max_retries=0)


def as_seen(chunks: list[Any]) -> dict[str, Any]:
    """What a client assembles from a chat stream, by choice index."""
    out: dict[int, dict[str, Any]] = {}
    usage = None
    for ch in chunks:
        usage = ch.usage or usage
        for c in ch.choices:
            mine = out.setdefault(c.index, {"content": "", "calls": {}, "finish": None})
            mine["content"] += c.delta.content or ""
            mine["finish"] = c.finish_reason or mine["finish"]
            for t in c.delta.tool_calls or ():
                call = mine["calls"].setdefault(t.index, {"id": None, "name": None, "args": ""})
                call["id"] = t.id or call["id"]
                if t.function:
                    call["name"] = t.function.name or call["name"]
                    call["args"] += t.function.arguments or ""
    return {"choices": out, "usage": usage.total_tokens if usage else None}


def test_tool_call_streams_replay_through_the_sdk(stack: LiveStack) -> None:
    stack.fake.script.append(tool_call_stream())
    ask: Any = {"model": "g", "messages": [{"role": "user", "content": "weather?"}],
                "tools": TOOLS, "stream": True}  # fmt: skip
    with client(stack) as c:
        live = list(c.chat.completions.create(**ask))
        replayed = list(c.chat.completions.create(**ask))
        with_usage = list(c.chat.completions.create(**ask, stream_options={"include_usage": True}))
        with c.chat.completions.stream(**{k: v for k, v in ask.items() if k != "stream"}) as s:
            final = s.get_final_completion()
        plain = c.chat.completions.create(**{**ask, "stream": False})
    assert len(stack.fake.seen) == 1
    assert as_seen(replayed) == as_seen(live)
    calls = as_seen(replayed)["choices"][0]["calls"]
    assert [(x["id"], x["name"], x["args"]) for x in calls.values()] == [
        (t["id"], t["name"], t["arguments"]) for t in TOOL_CALLS
    ]
    assert as_seen(replayed)["choices"][0]["finish"] == "tool_calls"
    assert as_seen(with_usage)["usage"] == 42 and as_seen(replayed)["usage"] is None
    assert replayed[0].choices[0].delta.role == "assistant"
    assert replayed[0].system_fingerprint == "fp_fake" and replayed[0].model == "up-0"
    for reply in (final, plain):
        message = reply.choices[0].message
        assert reply.choices[0].finish_reason == "tool_calls"
        assert message.tool_calls is not None
        got = [(t.id, t.type, t.function.name, t.function.arguments) for t in message.tool_calls]  # type: ignore[union-attr]
        assert got == [(t["id"], "function", t["name"], t["arguments"]) for t in TOOL_CALLS]
    assert plain.usage is not None and plain.usage.total_tokens == 42


def test_every_choice_of_n_replays_by_index(stack: LiveStack) -> None:
    stack.fake.script.append(two_choice_stream())
    ask: Any = {"model": "g", "messages": [{"role": "user", "content": "colours"}], "n": 2}
    with client(stack) as c:
        live = list(c.chat.completions.create(**ask, stream=True))
        replayed = list(c.chat.completions.create(**ask, stream=True))
        plain = c.chat.completions.create(**ask)
    assert len(stack.fake.seen) == 1
    assert as_seen(replayed) == as_seen(live)
    seen = as_seen(replayed)["choices"]
    assert (seen[0]["content"], seen[0]["finish"]) == ("Red apple.", "stop")
    assert (seen[1]["content"], seen[1]["finish"]) == ("Blue sky, long", "length")
    assert [(ch.index, ch.message.content, ch.finish_reason) for ch in plain.choices] == [
        (0, "Red apple.", "stop"),
        (1, "Blue sky, long", "length"),
    ]


def test_text_completion_streams_replay_as_text_deltas(stack: LiveStack) -> None:
    stack.fake.script.append(text_stream())
    with client(stack) as c:
        live = list(c.completions.create(model="g", prompt="story", stream=True))
        replayed = list(c.completions.create(model="g", prompt="story", stream=True,
                                             stream_options={"include_usage": True}))  # fmt: skip
        plain = c.completions.create(model="g", prompt="story")
    assert len(stack.fake.seen) == 1

    def text(chunks: list[Any]) -> tuple[str, list[str | None]]:
        choices = [c for ch in chunks for c in ch.choices]
        return "".join(c.text for c in choices), [
            c.finish_reason for c in choices if c.finish_reason
        ]

    assert text(replayed) == text(live) == ("Once upon a time", ["stop"])
    assert replayed[-1].usage is not None and replayed[-1].usage.total_tokens == 7
    assert plain.choices[0].text == "Once upon a time" and plain.object == "text_completion"


def test_assemble_then_replay_is_the_same_stream_content() -> None:
    """Long content survives the round trip, cut at word boundaries."""
    text = "word " * 200 + "end."
    completion = {"id": "x", "object": "chat.completion", "created": 1, "model": "m",
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                               "finish_reason": "stop"}],
                  "usage": {"total_tokens": 3}}  # fmt: skip
    a = Assembler(chat=True)
    a.feed(replay(completion, include_usage=True))
    assert a.done and not a.broken
    again = a.completion(None)
    assert again["choices"][0]["message"]["content"] == text
    assert again["usage"] == {"total_tokens": 3}
    assert "".join(pieces(text)) == text and max(map(len, pieces(text))) <= 48
