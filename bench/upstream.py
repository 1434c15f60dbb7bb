"""A fast fake OpenAI upstream for the benchmark: fixed replies, streams of N events."""

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


def main() -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
