"""The official SDKs through the router to a fake Anthropic server: the openai SDK on the
translated /v1/chat/completions, the anthropic SDK on /v1/messages."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import orjson
import pytest

from tests.fakes_anthropic import TOOL_CALL, AnthropicStack
from tests.test_anthropic import tree

USER = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"location": {"type": "string"}}}}}]  # fmt: skip


@pytest.fixture(scope="module")
def stack() -> Iterator[AnthropicStack]:
    s = AnthropicStack(tree)
    yield s
    s.close()


@pytest.fixture
def oai(stack: AnthropicStack) -> Iterator[openai.OpenAI]:
    stack.fake.tool = False
    with openai.OpenAI(base_url=stack.url + "/v1", api_key="alice-secret", max_retries=0) as c:
        yield c


@pytest.fixture
def claude(stack: AnthropicStack) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=stack.url, api_key="alice-secret", max_retries=0) as c:
        yield c


def test_openai_sdk_plain(oai: openai.OpenAI, stack: AnthropicStack) -> None:
    reply = oai.chat.completions.create(model="claude", messages=USER, max_tokens=50)
    assert reply.choices[0].message.content == "Hello!"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.total_tokens == 40
    assert stack.fake.seen[-1].json["max_tokens"] == 50


def test_openai_sdk_streamed(oai: openai.OpenAI) -> None:
    chunks = list(oai.chat.completions.create(model="claude", messages=USER, stream=True,
                                              stream_options={"include_usage": True}))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello!"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


def test_openai_sdk_tools_with_streamed_arguments(
    oai: openai.OpenAI, stack: AnthropicStack
) -> None:
    stack.fake.tool = True
    stream = oai.chat.completions.create(model="claude", messages=USER, tools=TOOLS,
                                         tool_choice="auto", stream=True)  # fmt: skip
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        for delta_call in chunk.choices[0].delta.tool_calls or []:
            call = calls.setdefault(delta_call.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta_call.id or ""
            if delta_call.function is not None:
                call["name"] += delta_call.function.name or ""
                call["arguments"] += delta_call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert list(calls) == [0]
    assert calls[0]["id"] == TOOL_CALL["id"] and calls[0]["name"] == "get_weather"
    assert orjson.loads(calls[0]["arguments"]) == TOOL_CALL["input"]
    sent = stack.fake.seen[-1].json
    assert sent["tools"][0]["name"] == "get_weather" and sent["tool_choice"] == {"type": "auto"}
    # The tool's answer goes back as a tool_result in a user turn.
    reply = oai.chat.completions.create(model="claude", tools=TOOLS, messages=[
        *USER,
        {"role": "assistant", "content": None, "tool_calls": [{"id": calls[0]["id"],
            "type": "function", "function": {"name": "get_weather",
                                             "arguments": calls[0]["arguments"]}}]},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "18C"},
    ])  # fmt: skip
    assert reply.choices[0].message.tool_calls is not None
    assert stack.fake.seen[-1].json["messages"][-1] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": TOOL_CALL["id"], "content": "18C"}]}  # fmt: skip


def test_openai_sdk_sees_a_refusal_as_bad_request(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="claude", messages=USER, logprobs=True)
    assert info.value.param == "logprobs"


def test_anthropic_sdk_plain(claude: anthropic.Anthropic, stack: AnthropicStack) -> None:
    raw = claude.messages.with_raw_response.create(
        model="claude", max_tokens=100, messages=USER,
        extra_headers={"anthropic-beta": "fake-beta-2099"},
    )  # fmt: skip
    msg = raw.parse()
    assert msg.content[0].type == "text" and msg.content[0].text == "Hello!"
    assert msg.usage.input_tokens == 20 and msg.usage.cache_read_input_tokens == 5
    assert raw.headers["x-llm-router-provider"] == "claude"
    seen = stack.fake.seen[-1]
    assert seen.json["model"] == "claude-up" and seen.headers["anthropic-beta"] == "fake-beta-2099"
    assert seen.headers["x-api-key"] == "sk-ant-secret"


def test_anthropic_sdk_stream(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(model="mixed", max_tokens=100, messages=USER) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello!"
    assert final.usage.output_tokens == 12 and final.stop_reason == "end_turn"


def test_anthropic_sdk_typed_errors(claude: anthropic.Anthropic, stack: AnthropicStack) -> None:
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="nope", max_tokens=10, messages=USER)
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(model="gpt", max_tokens=10, messages=USER)
    assert "no Anthropic target" in str(info.value)
    bad = anthropic.Anthropic(base_url=stack.url, api_key="wrong", max_retries=0)
    with bad, pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="claude", max_tokens=10, messages=USER)
