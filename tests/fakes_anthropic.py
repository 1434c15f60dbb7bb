"""A fake Anthropic Messages API on 127.0.0.1: records what it receives, replies with
recorded-shape messages and event streams (text, tool use with input_json_delta fragments),
and scripts faults (error statuses, error events, cut streams)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakes import BackgroundLoop, FakeProvider, LiveStack, Seen

Action = Callable[[web.Request, Seen], Awaitable[web.StreamResponse]]
USAGE = {"input_tokens": 20, "cache_creation_input_tokens": 3, "cache_read_input_tokens": 5,
         "output_tokens": 1}  # fmt: skip


def text_blocks(*words: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": "".join(words)}]


TOOL_CALL = {"type": "tool_use", "id": "toolu_01A", "name": "get_weather",
             "input": {"location": "Paris", "unit": "c"}}  # fmt: skip
TOOL_FRAGMENTS = ("", '{"location":', ' "Paris", "unit"', ': "c"}')


def message(model: str, content: list[dict[str, Any]], stop: str = "end_turn",
            output: int = 12) -> dict[str, Any]:  # fmt: skip
    return {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {**USAGE, "output_tokens": output},
    }


def sse(obj: dict[str, Any]) -> bytes:
    return b"event: " + obj["type"].encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def events(model: str, words: tuple[str, ...], tool: bool, output: int) -> list[bytes]:
    """A stream as Anthropic sends it: message_start, blocks, message_delta, message_stop."""
    start = message(model, [], output=1)
    start["stop_reason"] = None
    out = [sse({"type": "message_start", "message": start})]
    out.append(sse({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}))  # fmt: skip
    out.append(sse({"type": "ping"}))
    for word in words:
        delta = {"type": "text_delta", "text": word}
        out.append(sse({"type": "content_block_delta", "index": 0, "delta": delta}))
    out.append(sse({"type": "content_block_stop", "index": 0}))
    if tool:
        block = {**TOOL_CALL, "input": {}}
        out.append(sse({"type": "content_block_start", "index": 1, "content_block": block}))
        for fragment in TOOL_FRAGMENTS:
            delta = {"type": "input_json_delta", "partial_json": fragment}
            out.append(sse({"type": "content_block_delta", "index": 1, "delta": delta}))
        out.append(sse({"type": "content_block_stop", "index": 1}))
    stop = {"stop_reason": "tool_use" if tool else "end_turn", "stop_sequence": None}
    out.append(sse({"type": "message_delta", "delta": stop, "usage": {"output_tokens": output}}))
    out.append(sse({"type": "message_stop"}))
    return out


@dataclass
class FakeAnthropic:
    words: tuple[str, ...] = ("Hel", "lo", "!")
    tool: bool = False  # reply with a tool call after the text
    output_tokens: int = 12
    script: list[Action] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    extra_headers: dict[str, str] = field(default_factory=dict)
    gate: asyncio.Event | None = None  # streams wait on it after their first event
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)  # the router hung up
    sent_first: float | None = None  # loop time when the first stream event was written

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/messages", self.handle)
        app[FAKE] = self
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(request.path, dict(request.headers), await request.read())
        self.seen.append(seen)
        action = self.script.pop(0) if self.script else self.ok
        return await action(request, seen)

    async def ok(self, request: web.Request, seen: Seen) -> web.StreamResponse:
        body = seen.json
        if body.get("stream") is True:
            return await self.stream(request, seen)
        content = text_blocks(*self.words) + ([TOOL_CALL] if self.tool else [])
        reply = message(body["model"], content, "tool_use" if self.tool else "end_turn",
                        self.output_tokens)  # fmt: skip
        return web.json_response(reply, headers=self.extra_headers)

    async def stream(
        self, request: web.Request, seen: Seen, *, cut_after: int | None = None,
        error_after: int | None = None,
    ) -> web.StreamResponse:  # fmt: skip
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", **self.extra_headers}
        )
        await resp.prepare(request)
        try:
            return await self._events(request, resp, seen, cut_after, error_after)
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnected.set()
            raise

    async def _events(
        self, request: web.Request, resp: web.StreamResponse, seen: Seen,
        cut_after: int | None, error_after: int | None,
    ) -> web.StreamResponse:  # fmt: skip
        for i, event in enumerate(
            events(seen.json["model"], self.words, self.tool, self.output_tokens)
        ):
            if i == error_after:
                err = {"type": "error",
                       "error": {"type": "overloaded_error", "message": "Overloaded"}}  # fmt: skip
                await resp.write(sse(err))
                return resp
            if i == cut_after:
                assert request.transport is not None
                request.transport.close()
                return resp
            await resp.write(event)
            if i == 0:
                self.sent_first = asyncio.get_running_loop().time()
                if self.gate is not None:
                    await self.gate.wait()
        await resp.write_eof()
        return resp


def error(status: int, kind: str, headers: dict[str, str] | None = None) -> Action:
    async def action(request: web.Request, seen: Seen) -> web.StreamResponse:
        body = {"type": "error", "error": {"type": kind, "message": f"fake {kind}"}}
        return web.json_response(body, status=status, headers=headers)

    return action


def stream_fault(*, cut_after: int | None = None, error_after: int | None = None) -> Action:
    async def action(request: web.Request, seen: Seen) -> web.StreamResponse:
        fake: FakeAnthropic = request.app[FAKE]
        return await fake.stream(request, seen, cut_after=cut_after, error_after=error_after)

    return action


FAKE = web.AppKey("fake", FakeAnthropic)


class AnthropicStack(LiveStack):
    """A fake Anthropic, a fake OpenAI provider and a router on real loopback ports, with the
    groups of `tree` (claude, mixed, gpt), for the official SDKs."""

    def __init__(self, tree: Callable[[str, str], dict[str, Any]]) -> None:
        from router.app import create_app
        from router.config import parse

        self.bg = BackgroundLoop()
        self.runners = []
        self.fake = FakeAnthropic()
        self.openai = FakeProvider()
        a_port = self.bg.run(self._start(self.fake.app()))
        o_port = self.bg.run(self._start(self.openai.app()))
        urls = (f"http://127.0.0.1:{a_port}", f"http://127.0.0.1:{o_port}/v1")
        self.config = parse(tree(*urls), env={})
        port = self.bg.run(self._start(create_app(self.config)))
        self.url = f"http://127.0.0.1:{port}"
