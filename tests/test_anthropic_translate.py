"""Golden tests of the Anthropic translator: OpenAI chat request in, Messages API request out;
Messages replies, stream events and errors in, OpenAI shapes out."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from router.providers.anthropic import error_event, messages_path, native_error, rate_headers
from router.providers.anthropic_chat import (
    ChatStream,
    Refused,
    chat_error,
    chat_reply,
    chat_request,
)
from tests.fakes_anthropic import events, message

PNG = "iVBORw0KGgo="


GOLDEN_CHAT: dict[str, Any] = {
    "model": "claude",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
        {"role": "user", "content": [
            {"type": "text", "text": "Weather in Paris and London?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
        ]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "London"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2",
         "content": [{"type": "text", "text": "12C"}]},
        {"role": "user", "content": "Thanks"},
    ],
    "tools": [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather by city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
    "tool_choice": "required",
    "parallel_tool_calls": False,
    "max_tokens": 300,
    "temperature": 0.5,
    "top_p": 0.9,
    "stop": "END",
    "user": "user-42",
    "stream": True,
    "stream_options": {"include_usage": True},
    "seed": 7,
    "presence_penalty": 0.1,
    "frequency_penalty": 0.1,
    "logit_bias": {"1": 2},
    "store": True,
    "metadata": {"a": "b"},
    "service_tier": "auto",
}  # fmt: skip

GOLDEN_MESSAGES: dict[str, Any] = {
    "model": "claude-up",
    "system": "Be brief.\n\nUse metric units.",
    "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "Weather in Paris and London?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": PNG}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
        ]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "call_1", "name": "get_weather",
             "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "get_weather",
             "input": {"city": "London"}},
        ]},
        {"role": "user", "content": [  # two tool results and the user's text: one turn
            {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "call_2",
             "content": [{"type": "text", "text": "12C"}]},
            {"type": "text", "text": "Thanks"},
        ]},
    ],
    "max_tokens": 300,
    "temperature": 0.5,
    "top_p": 0.9,
    "stop_sequences": ["END"],
    "metadata": {"user_id": "user-42"},
    "tools": [{"name": "get_weather", "description": "Weather by city",
               "input_schema": {"type": "object",
                                "properties": {"city": {"type": "string"}}}}],
    "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    "stream": True,
}  # fmt: skip


def test_request_golden() -> None:
    assert chat_request({**GOLDEN_CHAT, "model": "claude-up"}) == GOLDEN_MESSAGES


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, 4096),
        ({"max_tokens": 100}, 100),
        ({"max_completion_tokens": 50, "max_tokens": 100}, 50),
    ],
)
def test_max_tokens(fields: dict[str, Any], expected: int) -> None:
    assert chat_request(chat(**fields))["max_tokens"] == expected


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        ({"type": "function", "function": {"name": "f"}}, {"type": "tool", "name": "f"}),
    ],
)
def test_tool_choice(choice: Any, expected: dict[str, Any]) -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    out = chat_request(chat(tools=tools, tool_choice=choice))
    assert out["tool_choice"] == expected
    assert out["tools"] == [{"name": "f", "input_schema": {"type": "object", "properties": {}}}]


def test_minimal_request_and_stop_list() -> None:
    out = chat_request(chat(stop=["a", "b"], temperature=0))
    assert out == {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi"}]}], "max_tokens": 4096, "temperature": 0,
        "stop_sequences": ["a", "b"]}  # fmt: skip
    only_parallel = chat_request(chat(tools=[{"type": "function", "function": {"name": "f"}}],
                                      parallel_tool_calls=False))  # fmt: skip
    assert only_parallel["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"temperature": 1.5}, "temperature"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
         "messages[0].content[0].type"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "ftp://x"}}]}]},
         "messages[0].content[0].image_url"),
        ({"messages": [{"role": "assistant", "tool_calls": [
            {"id": "c", "function": {"name": "f", "arguments": "{not json"}}]}]},
         "messages[0].tool_calls[0].function.arguments"),
    ],
)  # fmt: skip
def test_refused_fields_name_their_param(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(Refused) as info:
        chat_request(chat(**fields))
    assert info.value.param == param


def test_accepted_defaults_of_refusable_fields() -> None:
    chat_request(chat(n=1, logprobs=False, response_format={"type": "text"}))


def test_reply_golden() -> None:
    msg = message("claude-x", [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "text", "text": "Let me "}, {"type": "text", "text": "check."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
    ], stop="tool_use", output=30)  # fmt: skip
    out = chat_reply(msg)
    assert isinstance(out.pop("created"), int)
    assert out == {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "object": "chat.completion",
        "model": "claude-x",
        "choices": [{"index": 0, "logprobs": None, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Let me check.", "refusal": None,
            "tool_calls": [{"id": "toolu_1", "type": "function", "function": {
                "name": "get_weather", "arguments": '{"city":"Paris"}'}}]}}],
        "usage": {"prompt_tokens": 28, "completion_tokens": 30, "total_tokens": 58,
                  "prompt_tokens_details": {"cached_tokens": 5}},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("stop", "finish"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("pause_turn", "stop"),
     ("max_tokens", "length"), ("tool_use", "tool_calls"), ("refusal", "content_filter")],
)  # fmt: skip
def test_finish_reasons(stop: str, finish: str) -> None:
    out = chat_reply(message("m", [], stop=stop))
    assert out["choices"][0]["finish_reason"] == finish
    assert out["choices"][0]["message"]["content"] is None  # no text block: null content


def translate(stream: list[bytes]) -> list[Any]:
    """Feed each event (without its blank line); parse what comes out."""
    t = ChatStream()
    out = b"".join(t.event(e[:-2]) for e in stream)
    parsed: list[Any] = []
    for event in out.split(b"\n\n"):
        if event.startswith(b"data: "):
            parsed.append(event[6:] if event == b"data: [DONE]" else orjson.loads(event[6:]))
        elif event:
            parsed.append(event)
    return parsed


def test_stream_golden_text() -> None:
    out = translate(events("claude-x", ("Hel", "lo"), tool=False, output=7))
    assert out[1] == b": ping"
    chunks = [c for c in out if isinstance(c, dict)]
    assert {c["id"] for c in chunks} == {"msg_01XFDUDYJgAACzvnptvVoYEL"}
    assert {c["model"] for c in chunks} == {"claude-x"}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks[:-1]] == [
        ({"role": "assistant", "content": ""}, None),
        ({"content": "Hel"}, None),
        ({"content": "lo"}, None),
        ({}, "stop"),
    ]
    assert chunks[-1]["choices"] == []  # usage: message_start's input, message_delta's output
    assert chunks[-1]["usage"] == {"prompt_tokens": 28, "completion_tokens": 7,
                                   "total_tokens": 35,
                                   "prompt_tokens_details": {"cached_tokens": 5}}  # fmt: skip
    assert out[-1] == b"[DONE]"


def test_stream_golden_tool_call() -> None:
    out = translate(events("claude-x", ("Hi",), tool=True, output=40))
    deltas = [c["choices"][0]["delta"] for c in out if isinstance(c, dict) and c["choices"]]
    calls = [d["tool_calls"] for d in deltas if "tool_calls" in d]
    assert calls == [
        [{"index": 0, "id": "toolu_01A", "type": "function",
          "function": {"name": "get_weather", "arguments": ""}}],
        [{"index": 0, "function": {"arguments": '{"location":'}}],
        [{"index": 0, "function": {"arguments": ' "Paris", "unit"'}}],
        [{"index": 0, "function": {"arguments": ': "c"}'}}],
    ]  # fmt: skip
    arguments = "".join(c[0]["function"]["arguments"] for c in calls)
    assert orjson.loads(arguments) == {"location": "Paris", "unit": "c"}
    finish = [c for c in out if isinstance(c, dict) and c["choices"]][-1]
    assert finish["choices"][0]["finish_reason"] == "tool_calls"


def test_stream_usage_is_replaced_not_added() -> None:
    t = ChatStream()
    t.event(b'data: {"type":"message_start","message":{"usage":{"input_tokens":9,'
            b'"output_tokens":1}}}')  # fmt: skip
    t.event(b'data: {"type":"message_delta","delta":{},"usage":{"output_tokens":5}}')
    t.event(b'data: {"type":"message_delta","delta":{},"usage":{"output_tokens":8}}')
    assert t.usage.openai()["completion_tokens"] == 8
    assert t.usage.openai()["prompt_tokens"] == 9


def test_stream_error_event_becomes_an_openai_error_event() -> None:
    raw = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",' \
          b'"message":"Overloaded"}}'  # fmt: skip
    out = ChatStream().event(raw)
    assert orjson.loads(out[6:]) == {"error": {"message": "Overloaded",
        "type": "overloaded_error", "param": None, "code": None}}  # fmt: skip


def test_errors_in_openai_shape() -> None:
    body = b'{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}'
    assert orjson.loads(chat_error(400, body)) == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}
    }
    assert orjson.loads(chat_error(502, b"<html>Bad Gateway</html>"))["error"] == {
        "message": "<html>Bad Gateway</html>", "type": "api_error", "param": None,
        "code": None}  # fmt: skip
    assert orjson.loads(chat_error(529, b""))["error"]["type"] == "overloaded_error"


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"),
     (404, "not_found_error"), (413, "request_too_large"), (429, "rate_limit_error"),
     (500, "api_error"), (502, "api_error"), (529, "overloaded_error")],
)  # fmt: skip
def test_native_error_types(status: int, kind: str) -> None:
    assert orjson.loads(native_error(status, "x")) == {
        "type": "error",
        "error": {"type": kind, "message": "x"},
    }
    assert error_event("cut").startswith(b"event: error\ndata: ")


def test_rate_headers_turn_reset_times_into_durations() -> None:
    now = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2026-01-01T00:00:01Z",
        "anthropic-ratelimit-tokens-remaining": "100",
        "anthropic-ratelimit-tokens-reset": "2026-01-01T00:00:05Z",
        "anthropic-ratelimit-output-tokens-limit": "8000",
        "anthropic-ratelimit-output-tokens-remaining": "0",
        "anthropic-ratelimit-output-tokens-reset": "2026-01-01T00:00:30+00:00",
    }
    out = rate_headers(headers, now)
    assert out["x-ratelimit-remaining-requests"] == "49"
    assert out["x-ratelimit-reset-requests"] == "1.000s"
    # The output-token budget ran out: that is the token reset that counts.
    assert out["x-ratelimit-remaining-tokens"] == "0"
    assert out["x-ratelimit-reset-tokens"] == "30.000s"
    assert out["x-ratelimit-limit-tokens"] == "8000"
    assert rate_headers({"content-type": "x"}) == {"content-type": "x"}


def test_messages_path() -> None:
    assert messages_path("https://api.anthropic.com") == "/v1/messages"
    assert messages_path("https://api.anthropic.com/v1") == "/messages"
