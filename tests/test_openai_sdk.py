"""The official openai SDK as a real client: sync, async and streaming, against loopback servers."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.fakes import LiveStack


@pytest.fixture(scope="module")
def stack() -> Iterator[LiveStack]:
    s = LiveStack()
    yield s
    s.close()


def client(stack: LiveStack, key: str = "alice-secret") -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url + "/v1", api_key=key, max_retries=0)


def test_sync_chat_completion(stack: LiveStack) -> None:
    with client(stack) as c:
        raw = c.chat.completions.with_raw_response.create(
            model="g", messages=[{"role": "user", "content": "hi"}], temperature=0, stop="\n"
        )
        reply = raw.parse()
    assert reply.choices[0].message.content == "hello"
    assert reply.usage is not None and reply.usage.total_tokens == 10
    assert raw.headers["x-llm-router-provider"] == "p0"
    sent = stack.fake.seen[-1].json
    assert sent["temperature"] == 0 and sent["stop"] == "\n"  # seed bugs: both were lost


def test_sync_streaming(stack: LiveStack) -> None:
    with client(stack) as c:
        chunks = list(
            c.chat.completions.create(
                model="g", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "Hello!"
    assert all(ch.choices for ch in chunks)


def test_streaming_with_usage_requested(stack: LiveStack) -> None:
    with client(stack) as c:
        chunks = list(
            c.chat.completions.create(
                model="g",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 10


async def test_async_chat_and_stream(stack: LiveStack) -> None:
    async with openai.AsyncOpenAI(
        base_url=stack.url + "/v1", api_key="bob-key", max_retries=0
    ) as c:
        reply = await c.chat.completions.create(
            model="g", messages=[{"role": "user", "content": "x"}]
        )
        assert reply.choices[0].message.content == "hello"
        stream = await c.chat.completions.create(
            model="g", messages=[{"role": "user", "content": "x"}], stream=True
        )
        text = "".join([ch.choices[0].delta.content or "" async for ch in stream])
    assert text == "Hello!"


def test_embeddings_and_models(stack: LiveStack) -> None:
    with client(stack) as c:
        emb = c.embeddings.create(model="g", input="hello")
        assert emb.data[0].embedding == [0.1, 0.2]
        assert [m.id for m in c.models.list()] == ["g"]
        assert c.models.retrieve("g").id == "g"
        with pytest.raises(openai.NotFoundError):
            c.models.retrieve("nope")


def test_sdk_sees_typed_errors(stack: LiveStack) -> None:
    with client(stack) as c, pytest.raises(openai.NotFoundError) as info:
        c.chat.completions.create(model="nope", messages=[])
    assert info.value.code == "model_not_found"
    with client(stack, "wrong") as c, pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(model="g", messages=[])
