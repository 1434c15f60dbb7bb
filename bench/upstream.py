"""A fast fake upstream for the benchmark: OpenAI chat and Anthropic messages, fixed replies,
streams of N events."""

from __future__ import annotations

import sys

import orjson
from aiohttp import web

REPLY = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "The quick brown fox jumps."},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27},
    }
)
EVENT = (
    b'data: {"id":"c","object":"chat.completion.chunk",'
    b'"choices":[{"index":0,"delta":{"content":"tok"}}]}\n\n'
)
USAGE = (
    b'data: {"id":"c","choices":[],'
    b'"usage":{"prompt_tokens":20,"completion_tokens":20,"total_tokens":40}}\n\n'
)


async def chat(request: web.Request) -> web.StreamResponse:
    body = orjson.loads(await request.read())
    if not body.get("stream"):
        return web.Response(body=REPLY, content_type="application/json")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for _ in range(20):
        await resp.write(EVENT)
    if (body.get("stream_options") or {}).get("include_usage"):
        await resp.write(USAGE)
    await resp.write(b"data: [DONE]\n\n")
    return resp


def _sse(obj: dict[str, object]) -> bytes:
    return b"event: " + str(obj["type"]).encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


MESSAGE = {"id": "msg_bench", "type": "message", "role": "assistant", "model": "claude-bench",
           "content": [{"type": "text", "text": "The quick brown fox jumps."}],
           "stop_reason": "end_turn", "stop_sequence": None,
           "usage": {"input_tokens": 20, "output_tokens": 7}}  # fmt: skip
MESSAGE_EVENTS = [
    _sse({"type": "message_start", "message": {**MESSAGE, "content": [], "stop_reason": None,
                                               "usage": {"input_tokens": 20, "output_tokens": 1}}}),
    _sse({"type": "content_block_start", "index": 0,
          "content_block": {"type": "text", "text": ""}}),
    *[_sse({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "tok"}})] * 20,
    _sse({"type": "content_block_stop", "index": 0}),
    _sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
          "usage": {"output_tokens": 20}}),
    _sse({"type": "message_stop"}),
]  # fmt: skip


async def messages(request: web.Request) -> web.StreamResponse:
    """Anthropic's Messages API: the same reply, its stream as Anthropic sends it."""
    body = orjson.loads(await request.read())
    if not body.get("stream"):
        return web.Response(body=orjson.dumps(MESSAGE), content_type="application/json")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for event in MESSAGE_EVENTS:
        await resp.write(event)
    return resp


def main() -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/messages", messages)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
