"""Fake providers: real aiohttp servers on 127.0.0.1 that script replies, streams and faults."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiohttp import web

Action = Callable[[web.Request, "Seen"], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    """One request as the fake provider received it."""

    path: str
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.raw)


def chat_reply(model: str, text: str = "hello", total: int = 10) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": total - 3, "completion_tokens": 3, "total_tokens": total},
        "service_tier": "default",  # a field a typed round-trip would drop
    }


def chunk(model: str, content: str | None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    obj = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def usage_chunk(model: str, total: int) -> bytes:
    obj = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [],
        "usage": {"prompt_tokens": total - 2, "completion_tokens": 2, "total_tokens": total},
    }
    return b"data: " + orjson.dumps(obj) + b"\n\n"


@dataclass
class FakeProvider:
    """Answers like OpenAI unless told otherwise: push actions onto `script` for the next calls."""

    total_tokens: int = 10
    words: tuple[str, ...] = ("Hel", "lo", "!")
    script: list[Action] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    extra_headers: dict[str, str] = field(default_factory=dict)
    disconnected: asyncio.Event | None = None
    gate: asyncio.Event | None = None  # when set up, streams wait on it after the first event

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/{tail:.*}", self.handle)
        _FAKE_OF[app] = self
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(request.path, dict(request.headers), await request.read())
        self.seen.append(seen)
        action = self.script.pop(0) if self.script else ok
        return await action(request, seen)

    async def stream(
        self,
        request: web.Request,
        seen: Seen,
        *,
        fail_after: int | None = None,
        error_event: bool = False,
        no_done: bool = False,
    ) -> web.StreamResponse:
        body = seen.json
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", **self.extra_headers}
        )
        await resp.prepare(request)
        try:
            for i, word in enumerate(self.words):
                if fail_after is not None and i == fail_after:
                    if error_event:
                        err = {"error": {"message": "overloaded", "type": "server_error"}}
                        await resp.write(b"data: " + orjson.dumps(err) + b"\n\n")
                        return resp
                    assert request.transport is not None
                    request.transport.close()  # a reset mid-stream
                    return resp
                await resp.write(chunk(body["model"], word))
                if i == 0 and self.gate is not None:
                    await self.gate.wait()
            await resp.write(chunk(body["model"], None, "stop"))
            if (body.get("stream_options") or {}).get("include_usage"):
                await resp.write(usage_chunk(body["model"], self.total_tokens))
            if not no_done:
                await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            if self.disconnected is not None:
                self.disconnected.set()
            raise
        return resp


async def ok(request: web.Request, seen: Seen) -> web.StreamResponse:
    fake = _FAKE_OF[request.app]
    body = seen.json
    if body.get("stream") is True:
        return await fake.stream(request, seen)
    if seen.path.endswith("/embeddings"):
        reply: dict[str, Any] = {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
            "model": body["model"],
            "usage": {"prompt_tokens": 4, "total_tokens": 4},
        }
    else:
        reply = chat_reply(body["model"], total=fake.total_tokens)
    return web.json_response(reply, headers=fake.extra_headers)


def status(code: int, headers: dict[str, str] | None = None) -> Action:
    async def action(request: web.Request, seen: Seen) -> web.StreamResponse:
        err = {
            "error": {"message": f"fake {code}", "type": "fake_error", "param": None, "code": None}
        }
        return web.json_response(err, status=code, headers=headers)

    return action


def stream_failing(after: int, *, error_event: bool = False, no_done: bool = False) -> Action:
    async def action(request: web.Request, seen: Seen) -> web.StreamResponse:
        fake = _FAKE_OF[request.app]
        return await fake.stream(
            request, seen, fail_after=after, error_event=error_event, no_done=no_done
        )

    return action


def raw_reply(body: bytes, content_type: str = "application/json") -> Action:
    async def action(request: web.Request, seen: Seen) -> web.StreamResponse:
        return web.Response(body=body, content_type=content_type)

    return action


def slow(seconds: float, then: Action = ok) -> Action:
    async def action(request: web.Request, seen: Seen) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return await then(request, seen)

    return action


_FAKE_OF: dict[web.Application, FakeProvider] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_tree(urls: list[str], **extra: Any) -> dict[str, Any]:
    """A config with one provider per fake URL, two keys each, and one group over them all."""
    providers = [
        {"name": f"p{i}", "base_url": url, "api_keys": [f"sk-p{i}-a", f"sk-p{i}-b"]}
        for i, url in enumerate(urls)
    ]
    models = [{"provider": f"p{i}", "name": f"up-{i}"} for i in range(len(urls))]
    tree: dict[str, Any] = {
        "api_keys": [{"name": "alice", "key": "alice-secret"}, {"name": "bob", "key": "bob-key"}],
        "groups": [{"name": "g", "models": models}],
        "providers": providers,
    }
    tree.update(extra)
    return tree


class BackgroundLoop:
    """An event loop in a thread: servers there can be called from synchronous test code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


async def start_site(app: web.Application) -> tuple[web.AppRunner, int]:
    """Serve `app` on a free loopback port; a client that leaves cancels its handler."""
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    return runner, int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]


class LiveStack:
    """A fake provider and a router, both on real loopback ports, in a background loop."""

    def __init__(self, **extra: Any) -> None:
        from router.app import create_app
        from router.config import parse

        self.bg = BackgroundLoop()
        self.fake = FakeProvider()
        self.runners: list[web.AppRunner] = []
        fake_port = self.bg.run(self._start(self.fake.app()))
        self.config = parse(config_tree([f"http://127.0.0.1:{fake_port}/v1"], **extra), env={})
        port = self.bg.run(self._start(create_app(self.config)))
        self.url = f"http://127.0.0.1:{port}"

    async def _start(self, app: web.Application) -> int:
        runner, port = await start_site(app)
        self.runners.append(runner)
        return port

    def close(self) -> None:
        for runner in reversed(self.runners):
            self.bg.run(runner.cleanup())
        self.bg.close()


def iter_events(body: bytes) -> Iterator[bytes]:
    for event in body.split(b"\n\n"):
        if event.startswith(b"data: "):
            yield event[6:]


async def reset_before_headers(request: web.Request, seen: Seen) -> web.StreamResponse:
    assert request.transport is not None
    request.transport.close()
    raise asyncio.CancelledError  # nothing more to say on a closed connection


async def reset_mid_body(request: web.Request, seen: Seen) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.content_length = 1000
    await resp.prepare(request)
    await resp.write(b'{"id": "chatcmpl-fake", "choi')
    assert request.transport is not None
    request.transport.close()
    return resp


class RouterProcess:
    """`python -m router serve` as a real subprocess on a free port."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router", "serve", "--port", str(self.port), *args],
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        self.proc.kill()
        raise AssertionError(f"router did not start: {self.proc.communicate()[0]}")

    def terminate(self) -> None:
        self.terminated = True
        self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None and not getattr(self, "terminated", False):
            self.terminate()
        out, _ = self.proc.communicate(timeout=30)
        return self.proc.returncode, out
