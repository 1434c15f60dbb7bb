"""The built-in `mock` provider: echo replies with honest token counts, no network.

It speaks OpenAI's API, and Anthropic's Messages API on `/v1/messages` (so a `type: mock,
api: anthropic` provider runs the real Anthropic translator over it). Its embeddings are
character n-gram hashing vectors, so similar texts get similar vectors.
"""

from __future__ import annotations

import asyncio
import base64
import random
import struct
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from router.balancer import Target
from router.errors import UpstreamTimeout


def count_tokens(text: str) -> int:
    """About four characters a token, as the OpenAI tokenizers average on English."""
    return max(1, (len(text) + 3) // 4) if text else 0


def _text_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # content parts, or the Responses API's input items
        return " ".join(t for t in map(_text_of, value) if t)
    if isinstance(value, dict):
        return _text_of(value.get("content", value.get("text", "")))
    return ""


def _last_user(messages: Any) -> str:
    if not isinstance(messages, list):
        return _text_of(messages)
    users = [m for m in messages if isinstance(m, dict) and m.get("role", "user") == "user"]
    return _text_of(users[-1]) if users else ""


class MockReply:
    def __init__(self, status: int, payload: bytes | list[bytes], stream: bool) -> None:
        self.status = status
        ctype = "text/event-stream" if stream and status == 200 else "application/json"
        self.headers: Mapping[str, str] = {"Content-Type": ctype}
        self._payload = payload

    async def read(self) -> bytes:
        p = self._payload
        return p if isinstance(p, bytes) else b"".join(p)

    async def chunks(self) -> AsyncIterator[bytes]:
        if isinstance(self._payload, bytes):
            yield self._payload
            return
        for event in self._payload:
            await asyncio.sleep(0)  # a real yield point, as a network stream has
            yield event

    def close(self) -> None:
        pass


class MockUpstream:
    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    async def post(
        self, target: Target, path: str, body: bytes, headers: Mapping[str, str], stream: bool
    ) -> MockReply:
        return await self.send(target, path, body, stream, headers)

    async def send(
        self, target: Target, path: str, body: bytes, stream: bool, client: Mapping[str, str]
    ) -> MockReply:
        p = target.provider
        if p.latency_ms:
            # The mock's latency is its time to response headers, so the provider's
            # timeouts apply to it as to a real upstream (504s and failover can be tried).
            wait = min(p.first_byte_timeout, p.timeout)
            if p.latency_ms / 1000 > wait:
                await asyncio.sleep(wait)
                raise UpstreamTimeout("timed out before response headers")
            await asyncio.sleep(p.latency_ms / 1000)
        if p.failure_rate and self.rng.random() < p.failure_rate:
            err = {
                "error": {
                    "message": "mock failure",
                    "type": "server_error",
                    "param": None,
                    "code": "mock_failure",
                }
            }
            if path.endswith("/messages"):
                return _anthropic_error(500, "api_error", "mock failure")
            return MockReply(500, orjson.dumps(err), False)
        req = orjson.loads(body)
        model = req.get("model", target.model.name)
        if path.endswith("/messages"):
            return _messages(req, model, stream)
        missing = _missing(path, req)
        if missing:  # what OpenAI answers, so clients see the same 400 through the router
            err = {
                "error": {
                    "message": f"Missing required parameter: '{missing}'.",
                    "type": "invalid_request_error",
                    "param": missing,
                    "code": "missing_required_parameter",
                }
            }
            return MockReply(400, orjson.dumps(err), False)
        if path == "/embeddings":
            return MockReply(200, _embeddings(req, model), False)
        if path == "/chat/completions":
            prompt = _text_of(req.get("messages") or [])
            last = _last_user(req.get("messages") or [])
        elif path == "/responses":  # `input`: a string or a list of messages and items
            prompt = _text_of([req.get("instructions") or "", req.get("input", "")])
            last = _last_user(req.get("input", ""))
        else:
            prompt = last = _text_of(req.get("prompt", ""))
        answer = f"[MOCK] {last}".strip()
        usage = {
            "prompt_tokens": count_tokens(prompt),
            "completion_tokens": count_tokens(answer),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if path == "/responses":
            if stream:
                return MockReply(200, _response_stream(model, answer, usage), True)
            return MockReply(200, orjson.dumps(_response(model, answer, usage)), False)
        if stream:
            include = bool((req.get("stream_options") or {}).get("include_usage"))
            return MockReply(200, _stream(path, model, answer, usage, include), True)
        return MockReply(200, _completion(path, model, answer, usage), False)


def _missing(path: str, req: dict[str, Any]) -> str | None:
    if path == "/chat/completions":
        messages = req.get("messages")
        ok = isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages)
        return None if ok else "messages"
    if path == "/embeddings":
        return None if req.get("input") not in (None, "", []) else "input"
    return None  # /completions and /responses have defaults for everything


def _pieces(answer: str) -> list[str]:
    """A reply streamed word by word: each piece after the first keeps its space."""
    words = answer.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _ident(prefix: str) -> str:
    return f"{prefix}-mock{time.time_ns():x}"


def _completion(path: str, model: str, answer: str, usage: dict[str, int]) -> bytes:
    if path == "/chat/completions":
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": answer},
            "logprobs": None,
            "finish_reason": "stop",
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": answer, "logprobs": None, "finish_reason": "stop"}
        obj = "text_completion"
    return orjson.dumps(
        {
            "id": _ident("cmpl"),
            "object": obj,
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
            "usage": usage,
        }
    )


def _stream(
    path: str, model: str, answer: str, usage: dict[str, int], include_usage: bool
) -> list[bytes]:
    chat = path == "/chat/completions"
    ident, created = _ident("chatcmpl" if chat else "cmpl"), int(time.time())
    obj = "chat.completion.chunk" if chat else "text_completion"

    def event(choice: dict[str, Any] | None, usage_: dict[str, int] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": ident,
            "object": obj,
            "created": created,
            "model": model,
            "choices": [choice] if choice else [],
        }
        if include_usage:
            chunk["usage"] = usage_
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def choice(text: str, finish: str | None, first: bool = False) -> dict[str, Any]:
        if not chat:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        delta: dict[str, Any] = {"role": "assistant", "content": text} if first else {}
        if not first and text:
            delta["content"] = text
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    events = [event(choice("", None, first=True))] if chat else []
    events += [event(choice(piece, None)) for piece in _pieces(answer)]
    events.append(event(choice("", "stop")))
    if include_usage:
        events.append(event(None, usage))
    events.append(b"data: [DONE]\n\n")
    return events


def _embeddings(req: dict[str, Any], model: str) -> bytes:
    from router.cache.semantic import hash_vector  # numpy is loaded only when used

    inputs = req.get("input", "")
    # A list of strings or of token arrays is a batch; one token array is a single input.
    batch = isinstance(inputs, list) and not all(isinstance(x, int) for x in inputs)
    items = inputs if batch and inputs else [inputs]
    data, tokens = [], 0
    for i, item in enumerate(items):
        text = item if isinstance(item, str) else orjson.dumps(item).decode()
        tokens += count_tokens(text)
        # The semantic cache's n-gram hashing: similar texts get similar vectors.
        vector = [round(float(x), 6) for x in hash_vector(text)]
        embedding: Any = vector
        if req.get("encoding_format") == "base64":  # what the openai SDKs ask for by default
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return orjson.dumps({"object": "list", "data": data, "model": model, "usage": usage})


def _response(model: str, answer: str, usage: dict[str, int]) -> dict[str, Any]:
    return {
        "id": _ident("resp"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": model,
        "output": [_message(_ident("msg"), answer)],
        "usage": {
            "input_tokens": usage["prompt_tokens"],
            "output_tokens": usage["completion_tokens"],
            "total_tokens": usage["total_tokens"],
        },
    }


def _message(ident: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": []}] if text else []
    return {"type": "message", "id": ident, "status": status, "role": "assistant",
            "content": content}  # fmt: skip


def _response_stream(model: str, answer: str, usage: dict[str, int]) -> list[bytes]:
    """The Responses API's event sequence, from response.created to response.completed."""
    final = _response(model, answer, usage)
    ident = final["output"][0]["id"]
    started = {**final, "status": "in_progress", "output": [], "usage": None}
    part = {"type": "output_text", "text": "", "annotations": []}
    at = {"item_id": ident, "output_index": 0, "content_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
        {"type": "response.output_item.added", "output_index": 0,
         "item": _message(ident, "", "in_progress")},
        {"type": "response.content_part.added", **at, "part": part},
        *({"type": "response.output_text.delta", **at, "delta": piece, "logprobs": []}
          for piece in _pieces(answer)),
        {"type": "response.output_text.done", **at, "text": answer, "logprobs": []},
        {"type": "response.content_part.done", **at, "part": {**part, "text": answer}},
        {"type": "response.output_item.done", "output_index": 0, "item": _message(ident, answer)},
        {"type": "response.completed", "response": final},
    ]  # fmt: skip
    return [
        b"event: " + e["type"].encode() + b"\ndata: "
        + orjson.dumps({**e, "sequence_number": n}) + b"\n\n"
        for n, e in enumerate(events)
    ]  # fmt: skip


def _anthropic_error(status: int, kind: str, message: str) -> MockReply:
    err = {"type": "error", "error": {"type": kind, "message": message}}
    return MockReply(status, orjson.dumps(err), False)


def _messages(req: dict[str, Any], model: str, stream: bool) -> MockReply:
    """Anthropic's Messages API: a message, or its event stream from message_start on."""
    max_tokens = req.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        return _anthropic_error(400, "invalid_request_error", "max_tokens: Field required")
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        return _anthropic_error(400, "invalid_request_error", "messages: Field required")
    answer = f"[MOCK] {_last_user(messages)}".strip()
    block: dict[str, Any] = {"type": "text", "text": answer}
    stop = "end_turn"
    choice, tools = req.get("tool_choice"), req.get("tools")
    if not isinstance(choice, dict):
        choice = {}
    forced = choice.get("type") in ("any", "tool")
    if forced and isinstance(tools, list) and tools and isinstance(tools[0], dict):
        name = choice.get("name") or tools[0].get("name")  # a forced call: made with {}
        block = {"type": "tool_use", "id": _ident("toolu"), "name": name, "input": {}}
        answer, stop = orjson.dumps(block).decode(), "tool_use"
    usage = {
        "input_tokens": count_tokens(_text_of([req.get("system") or "", messages])),
        "output_tokens": count_tokens(answer),
    }
    msg: dict[str, Any] = {"id": _ident("msg"), "type": "message", "role": "assistant",
                           "model": model, "content": [block], "stop_reason": stop,
                           "stop_sequence": None, "usage": usage}  # fmt: skip
    if not stream:
        return MockReply(200, orjson.dumps(msg), False)
    if block["type"] == "text":
        start = {**block, "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in _pieces(answer)]
    else:
        start = block
        deltas = [{"type": "input_json_delta", "partial_json": "{}"}]
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {**msg, "content": [], "stop_reason": None,
                                              "usage": {**usage, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": start},
        {"type": "ping"},
        *({"type": "content_block_delta", "index": 0, "delta": d} for d in deltas),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
         "usage": {"output_tokens": usage["output_tokens"]}},
        {"type": "message_stop"},
    ]  # fmt: skip
    payload = [
        b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events
    ]
    return MockReply(200, payload, True)
