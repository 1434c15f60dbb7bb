from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from router.app import create_app
from router.config import Config, parse
from tests.fakes import FakeProvider, config_tree

ALICE = {"Authorization": "Bearer alice-secret"}


@pytest.fixture
async def fakes(aiohttp_server: Any) -> Callable[[int], Awaitable[list[tuple[FakeProvider, str]]]]:
    async def start(n: int = 1) -> list[tuple[FakeProvider, str]]:
        out = []
        for _ in range(n):
            fake = FakeProvider()
            server: TestServer = await aiohttp_server(fake.app())
            out.append((fake, f"http://127.0.0.1:{server.port}/v1"))
        return out

    return start


@pytest.fixture
async def router(aiohttp_client: Any) -> Callable[..., Awaitable[TestClient[Any, Any]]]:
    async def start(
        urls: list[str] | None = None, tree: dict[str, Any] | None = None, **extra: Any
    ) -> TestClient[Any, Any]:
        config: Config = parse(
            tree if tree is not None else config_tree(urls or [], **extra), env={}
        )
        client: TestClient[Any, Any] = await aiohttp_client(create_app(config))
        return client

    return start


@pytest.fixture
async def one(fakes: Any, router: Any) -> tuple[FakeProvider, TestClient[Any, Any]]:
    """One fake provider (two keys) behind a router with client keys alice and bob."""
    [(fake, url)] = await fakes(1)
    return fake, await router([url])


@pytest.fixture(scope="session")
def redis_server() -> Any:
    from tests.redis_server import RedisServer

    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def fakes_thread() -> Any:
    """A fake provider on a real port in a background loop, for subprocess routers."""
    from tests.fakes import BackgroundLoop, start_site

    bg = BackgroundLoop()
    fake = FakeProvider()
    runner, port = bg.run(start_site(fake.app()))
    yield fake, f"http://127.0.0.1:{port}/v1", bg
    bg.run(runner.cleanup())
    bg.close()
