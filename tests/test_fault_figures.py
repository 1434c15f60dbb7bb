"""The README's fault figure for a drain: SIGTERM while 50 streams are open, counting
requests sent, succeeded and lost (issue 12). A stream is lost when it ends without
[DONE] or its usage line is missing; the goal is zero."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import orjson
import yaml
from aiohttp import web

from router.usagelog import read
from tests.conftest import ALICE
from tests.fakes import RouterProcess, Seen, chunk, config_tree

STREAMS = 50


async def slow_stream(request: web.Request, seen: Seen) -> web.StreamResponse:
    """Ten content events 0.1 s apart (1 s a stream), then usage and [DONE]."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for i in range(10):
        await resp.write(chunk("m", f"w{i} "))
        await asyncio.sleep(0.1)
    usage = {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 10,
                                      "total_tokens": 15}}  # fmt: skip
    await resp.write(b"data: " + orjson.dumps(usage) + b"\n\ndata: [DONE]\n\n")
    await resp.write_eof()
    return resp


def test_sigterm_during_50_streams_loses_none(tmp_path: Path, fakes_thread: tuple) -> None:
    fake, url, _ = fakes_thread
    fake.script[:] = [slow_stream] * STREAMS
    log = tmp_path / "usage.jsonl"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_tree([url], usage_log=str(log), shutdown_timeout=20)))
    server = RouterProcess(["--config", str(path)], cwd=tmp_path)
    results: list[bool] = []
    first_bytes = threading.Semaphore(0)

    def one() -> None:
        body = {"model": "g", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        try:
            with httpx.stream("POST", server.url + "/v1/chat/completions", json=body,
                              headers=ALICE, timeout=30) as r:  # fmt: skip
                lines = r.iter_lines()
                got = [next(line for line in lines if line)]
                first_bytes.release()
                got += list(lines)
            results.append(r.status_code == 200 and "data: [DONE]" in got[-3:])
        except httpx.HTTPError:
            first_bytes.release()
            results.append(False)

    threads = [threading.Thread(target=one) for _ in range(STREAMS)]
    for t in threads:
        t.start()
    for _ in range(STREAMS):
        assert first_bytes.acquire(timeout=30)  # every stream has started
    began = time.monotonic()
    server.terminate()
    for t in threads:
        t.join(30)
    code, out = server.stop()
    drained = time.monotonic() - began
    succeeded = sum(results)
    lines = list(read(str(log)))
    print(f"SIGTERM during {STREAMS} streams: sent {STREAMS}, succeeded {succeeded}, "
          f"lost {STREAMS - succeeded}; drained in {drained:.1f}s")  # fmt: skip
    assert code == 0, out
    assert succeeded == STREAMS
    assert len(lines) == STREAMS and all(x["status"] == 200 for x in lines)
    assert sum(x["total_tokens"] for x in lines) == 15 * STREAMS


def test_redis_killed_and_restarted_under_load_loses_none(
    tmp_path: Path, fakes_thread: tuple
) -> None:
    """Two routers on one Redis take a steady load (8 requests at a time, streams and plain
    replies, each router half); Redis is killed a third of the way in and restarted at two
    thirds. Every request must succeed, every one must be in its router's usage log, and
    both routers must be back on shared state at the end."""
    from tests.redis_server import RedisServer

    _, url, _ = fakes_thread
    server = RedisServer()
    routers: list[RouterProcess] = []
    try:
        for i in range(2):
            tree = config_tree(
                [url],
                state={"backend": "redis", "redis_url": server.url, "prefix": "kill"},
                usage_log=str(tmp_path / f"usage{i}.jsonl"),
            )
            path = tmp_path / f"config{i}.yaml"
            path.write_text(yaml.safe_dump(tree))
            routers.append(RouterProcess(["--config", str(path)], cwd=tmp_path))
        total, statuses = 600, []

        async def load() -> None:
            sem = asyncio.Semaphore(8)
            async with httpx.AsyncClient(timeout=30) as client:

                async def one(i: int) -> int:
                    body = {"model": "g", "stream": i % 2 == 0,
                            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
                    async with sem:
                        if i == total // 3:
                            server.stop()  # Redis killed mid-load
                        if i == 2 * total // 3:
                            server.start()
                        r = await client.post(routers[i % 2].url + "/v1/chat/completions",
                                              json=body, headers=ALICE)  # fmt: skip
                        ok = r.status_code == 200 and (i % 2 or b"[DONE]" in r.content)
                        return 200 if ok else r.status_code

                statuses.extend(await asyncio.gather(*(one(i) for i in range(total))))

        asyncio.run(load())
        deadline = time.monotonic() + 15
        while any(httpx.get(r.url + "/health").json()["state"] != "ok" for r in routers):
            assert time.monotonic() < deadline, "a router did not go back to shared state"
            time.sleep(0.1)
    finally:
        outs = [r.stop()[1] for r in routers]
        server.stop()
    succeeded = statuses.count(200)
    logged = sum(len(list(read(str(tmp_path / f"usage{i}.jsonl")))) for i in range(2))
    print(f"redis killed and restarted: sent {total}, succeeded {succeeded}, "
          f"logged {logged}, lost {total - succeeded}")  # fmt: skip
    assert succeeded == total and logged == total
    assert all("redis unreachable" in out and "shared state resumed" in out for out in outs)
