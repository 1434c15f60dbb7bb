"""The built-in `mock` provider, driven by the official openai SDK through a live router."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest

from tests.fakes import LiveStack

MOCK = {
    "groups": [
        {"name": "m", "models": [{"provider": "mock", "name": "mock-1"}]},
        {"name": "broken", "models": [{"provider": "down", "name": "mock-2"}]},
    ],
    "providers": [
        {"name": "mock", "type": "mock", "api_keys": ["a", "b"]},
        {"name": "down", "type": "mock", "api_keys": ["c"], "failure_rate": 1.0},
    ],
}
HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def stack() -> Iterator[LiveStack]:
    s = LiveStack(**MOCK)
    yield s
    s.close()


@pytest.fixture
def c(stack: LiveStack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=stack.url + "/v1", api_key="alice-secret", max_retries=0) as c:
        yield c


def test_chat_echoes_with_honest_usage(c: openai.OpenAI) -> None:
    reply = c.chat.completions.create(model="m", messages=HELLO)
    assert reply.choices[0].message.content == "[MOCK] hello there"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (3, 5)
    chunks = list(
        c.chat.completions.create(
            model="m", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "[MOCK] hello there"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 8


def test_completions_and_embeddings(c: openai.OpenAI) -> None:
    assert c.completions.create(model="m", prompt="hi").choices[0].text == "[MOCK] hi"
    streamed = c.completions.create(model="m", prompt="hi", stream=True)
    assert "".join(ch.choices[0].text for ch in streamed if ch.choices) == "[MOCK] hi"
    # The SDK asks for base64 by default and decodes it back into floats.
    e = c.embeddings.create(model="m", input=["a b", "c"])
    assert len(e.data) == 2 and len(e.data[0].embedding) == 256
    assert all(-1.0 <= x <= 1.0 for x in e.data[0].embedding)
    tokens = c.embeddings.create(model="m", input=[[1, 2, 3], [4, 5]], encoding_format="float")
    assert len(tokens.data) == 2
    one = c.embeddings.create(model="m", input=[1, 2, 3], encoding_format="float")
    assert len(one.data) == 1  # one token array is one input, as OpenAI reads it
    floats = c.embeddings.create(model="m", input="a b", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(e.data[0].embedding, abs=1e-6)


def test_embeddings_of_similar_texts_are_similar(c: openai.OpenAI) -> None:
    texts = ["What is the capital of France?", "what is the capital of  france", "Bake a cake"]
    e = c.embeddings.create(model="m", input=texts, encoding_format="float")
    [a, b, other] = (np.array(d.embedding) for d in e.data)
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-4)
    assert a @ b >= 0.95
    assert a @ other < 0.5


def test_responses_plain_and_streamed(c: openai.OpenAI, stack: LiveStack) -> None:
    before = completion_tokens(stack)
    assert c.responses.create(model="m", input="hello there").output_text == "[MOCK] hello there"
    with c.responses.stream(model="m", input="hello there") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "[MOCK] hello there"
    assert final.usage is not None and final.usage.total_tokens == 8
    events = [e.type for e in c.responses.create(model="m", input="x", stream=True)]
    assert events[0] == "response.created" and events[-1] == "response.completed"
    # The router read the usage of the streamed ones from their response.completed event.
    assert completion_tokens(stack) - before == 5 + 5 + 2  # "[MOCK] x" is 2


def completion_tokens(stack: LiveStack) -> int:
    status = httpx.get(stack.url + "/status", headers={"Authorization": "Bearer alice-secret"})
    return sum(t["completion_tokens"] for t in status.json()["targets"])


def test_failure_rate_fails_every_call(c: openai.OpenAI, stack: LiveStack) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        c.chat.completions.create(model="broken", messages=HELLO)
    assert info.value.status_code == 502
    assert "down#0" in str(info.value.message)  # each attempt named by its key label


def test_langchain_shaped_inputs_are_echoed(c: openai.OpenAI) -> None:
    """Content parts and Responses input items, as LangChain and the SDKs send them."""
    parts = [{"type": "text", "text": "part one"}, {"type": "image_url", "image_url": {"url": "x"}}]
    reply = c.chat.completions.create(
        model="m",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": parts}],
    )
    assert reply.choices[0].message.content == "[MOCK] part one"
    items = [{"role": "user", "content": [{"type": "input_text", "text": "hey you"}]}]
    assert c.responses.create(model="m", input=items).output_text == "[MOCK] hey you"


def test_a_request_openai_would_refuse_is_a_400(c: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model="m", messages=[])
    assert info.value.code == "missing_required_parameter"
    assert info.value.param == "messages"
