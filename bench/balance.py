"""The cross-instance balance with Redis state, for `make bench`: two routers on one Redis,
one group of two targets weighted 1 and 3, 400 requests spread over both, 16 at a time.

Every reply has the same token count, so the share of requests is the share of tokens;
lowest-usage with weights 1:3 should give the light target 0.75 of them.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp

REQUESTS, AT_ONCE = 400, 16
# max_tokens about the size of the bench upstream's reply (27 tokens): the reservation
# then matches the usage it becomes, and the split follows tokens, not in-flight counts.
BODY = {"model": "balance", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi."}]}


def config(upstream: str, port: int, redis_url: str, key: str, prefix: str) -> dict[str, object]:
    return {
        "port": port,
        "state": {"backend": "redis", "redis_url": redis_url, "prefix": prefix},
        "api_keys": [{"name": "bench", "key": key}],
        "groups": [{"name": "balance", "models": [
            {"provider": "up", "name": "m-light", "weight": 1},
            {"provider": "up", "name": "m-heavy", "weight": 3},
        ]}],
        "providers": [{"name": "up", "base_url": upstream, "api_keys": ["sk-1"]}],
        "logging": {"level": "warning"},
    }  # fmt: skip


async def _spread(urls: list[str], key: str) -> Counter[str]:
    served: Counter[str] = Counter()
    sem = asyncio.Semaphore(AT_ONCE)
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> None:
            async with sem, session.post(urls[i % 2], json=BODY, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    raise SystemExit(f"balance run: status {r.status}")
                served[r.headers["x-llm-router-model"]] += 1

        await asyncio.gather(*(one(i) for i in range(REQUESTS)))
    return served


def light_share(
    tmp: Path,
    upstream: str,
    redis_url: str,
    key: str,
    start: Callable[[list[str]], subprocess.Popen[bytes]],
    free_port: Callable[[], int],
) -> float:
    """The light target's share of the requests (configured: 0.75)."""
    procs, urls = [], []
    prefix = f"balance-{time.time_ns()}"  # one for both: they act as one router
    try:
        for _ in range(2):
            port = free_port()
            path = tmp / f"balance-{port}.json"
            path.write_text(json.dumps(config(upstream, port, redis_url, key, prefix)))
            procs.append(
                start(["-m", "router", "serve", "--config", str(path), "--port", str(port)])
            )
            urls.append(f"http://127.0.0.1:{port}/v1/chat/completions")
        served = asyncio.run(_spread(urls, key))
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
    return served["m-light"] / REQUESTS
