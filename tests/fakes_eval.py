"""A fake provider for `eval`: streams with known timings, token counts and failures, and a
fake judge whose reply depends on the question it grades."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakes import chunk


@dataclass(frozen=True)
class Script:
    """How the fake answers one upstream model name."""

    ttft: float = 0.1  # seconds from the request to the first non-empty content
    gap: float = 0.05  # seconds between content chunks
    chunks: int = 4
    prompt_tokens: int = 1000
    completion_tokens: int = 500
    fail_every: int = 0  # every n-th call fails: an HTTP 500, then an error event mid-stream
    word: str = "w"  # what it says; the judge grades fenced answers by it (FENCED_SCORES)

    @property
    def latency(self) -> float:
        return self.ttft + self.gap * (self.chunks - 1)


# The judge grades by what the question asks for: a marker word picks its reply.
FENCED_SCORES = {"quick": 4, "careful": 5, "shaky": 3}
JUDGE_REPLIES = {
    "fenced": '```json\n{"score": %d, "reason": "clear and right"}\n```',
    "prose": 'Here is my grade: {"score": 2.5, "reason": "partly right"} Thanks!',
    "garbage": "I would rate this answer quite highly overall.",
}
JUDGE_USAGE = {"prompt_tokens": 200, "completion_tokens": 20, "total_tokens": 220}


@dataclass
class EvalFake:
    models: dict[str, Script]
    calls: Counter[str] = field(default_factory=Counter)
    judged: Counter[str] = field(default_factory=Counter)  # marker -> judge calls
    cancelled: int = 0  # streams the client abandoned
    judge_delay: float = 5.0  # for the marker "slow": longer than the judge's timeout
    bodies: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        model = body["model"]
        self.calls[model] += 1
        if model == "judge":
            return await self.judge(request, body)
        if request.headers.get("Authorization") == "Bearer sk-refused":
            err = {
                "error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}
            }
            return web.json_response(err, status=401)
        script = self.models[model]
        n = self.calls[model]
        failing = script.fail_every and n % script.fail_every == 0
        if failing and (n // script.fail_every) % 2 == 1:
            err = {"error": {"message": "fake outage", "type": "server_error"}}
            return web.json_response(err, status=500)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            await resp.write(_role_chunk(model))  # no content yet: TTFT has not started
            await asyncio.sleep(script.ttft)
            for i in range(script.chunks):
                if i:
                    await asyncio.sleep(script.gap)
                await resp.write(chunk(model, f"{script.word}{i} "))
                if failing and i == 0:
                    err = {"error": {"message": "overloaded", "type": "server_error"}}
                    await resp.write(b"data: " + orjson.dumps(err) + b"\n\n")
                    return resp
            await resp.write(chunk(model, None, "stop"))
            usage = {
                "prompt_tokens": script.prompt_tokens,
                "completion_tokens": script.completion_tokens,
                "total_tokens": script.prompt_tokens + script.completion_tokens,
            }
            await resp.write(_usage_chunk(model, usage))
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled += 1
            raise
        return resp

    async def judge(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        assert body["temperature"] == 0 and body["messages"][0]["role"] == "system"
        graded = body["messages"][1]["content"]
        marker = next((m for m in (*JUDGE_REPLIES, "slow") if m in graded), "plain")
        self.judged[marker] += 1
        if marker == "slow":
            await asyncio.sleep(self.judge_delay)
        text = JUDGE_REPLIES.get(marker, '{"score": 3, "reason": "fine"}')
        if marker == "fenced":
            text %= next(n for w, n in FENCED_SCORES.items() if f"answer to grade:\n{w}" in graded)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(chunk("judge", text))
        await resp.write(_usage_chunk("judge", JUDGE_USAGE))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _role_chunk(model: str) -> bytes:
    obj = orjson.loads(chunk(model, "")[6:])
    obj["choices"][0]["delta"] = {"role": "assistant", "content": ""}
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _usage_chunk(model: str, usage: dict[str, int]) -> bytes:
    obj = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000,
           "model": model, "choices": [], "usage": usage}  # fmt: skip
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def eval_config(url: str, **extra: Any) -> dict[str, Any]:
    """Three targets (fast with two keys, slow, flaky) in group `g`, and a judge group."""
    providers = [
        {"name": "fast", "base_url": url, "api_keys": ["sk-fast-a", "sk-fast-b"]},
        {"name": "slow", "base_url": url, "api_keys": ["sk-slow"]},
        {"name": "flaky", "base_url": url, "api_keys": ["sk-flaky"]},
        {"name": "judges", "base_url": url, "api_keys": ["sk-judge"], "timeout": 1},
    ]
    models = [
        {"provider": "fast", "name": "fast-model", "input_cost": 1.0, "output_cost": 2.0},
        {"provider": "slow", "name": "slow-model", "input_cost": 0.5, "output_cost": 1.0},
        {"provider": "flaky", "name": "flaky-model"},
    ]
    judge = [{"provider": "judges", "name": "judge", "input_cost": 3.0, "output_cost": 15.0}]
    tree: dict[str, Any] = {
        "groups": [{"name": "g", "models": models}, {"name": "judge", "models": judge}],
        "providers": providers,
    }
    tree.update(extra)
    return tree


SCRIPTS = {
    "fast-model": Script(0.1, 0.05, 5, prompt_tokens=1000, completion_tokens=500, word="quick"),
    "slow-model": Script(0.4, 0.1, 4, prompt_tokens=800, completion_tokens=300, word="careful"),
    "flaky-model": Script(0.05, 0.02, 3, fail_every=4, word="shaky"),
}
