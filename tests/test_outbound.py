"""Outbound networks as companies have them (issue 12): a private CA (`ca_file`), TLS checks
switched off (`verify_tls: false`), and an HTTPS proxy from the environment (`trust_env`).
The upstream is a fake provider speaking TLS on 127.0.0.1 with a certificate made here."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from router.app import create_app
from router.config import parse
from router.schema import ConfigError
from tests.conftest import ALICE
from tests.fakes import FakeProvider, config_tree
from tests.fakes_hostile import ConnectProxy, self_signed

CHAT = "/v1/chat/completions"
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy",
              "ALL_PROXY", "all_proxy")  # fmt: skip


class TlsFake:
    def __init__(self, fake: FakeProvider, url: str, ca: Path) -> None:
        self.fake, self.url, self.ca = fake, url, ca


@pytest.fixture
async def tls_fake(tmp_path: Path) -> AsyncIterator[TlsFake]:
    cert, key = self_signed(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    fake = FakeProvider()
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield TlsFake(fake, f"https://127.0.0.1:{port}/v1", cert)
    await runner.cleanup()


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


async def ask(aiohttp_client: Any, tree: dict[str, Any]) -> Any:
    client = await aiohttp_client(create_app(parse(tree, env={})))
    return await client.post(CHAT, json={"model": "g"}, headers=ALICE)


async def test_a_private_ca_is_trusted_with_ca_file(tls_fake: TlsFake, aiohttp_client: Any) -> None:
    tree = config_tree([tls_fake.url])
    tree["providers"][0]["ca_file"] = str(tls_fake.ca)
    r = await ask(aiohttp_client, tree)
    assert r.status == 200 and len(tls_fake.fake.seen) == 1


async def test_an_untrusted_certificate_fails_the_attempt_and_says_why(
    tls_fake: TlsFake, aiohttp_client: Any
) -> None:
    r = await ask(aiohttp_client, config_tree([tls_fake.url]))
    assert r.status == 502
    assert "TLS failed (an untrusted certificate?" in (await r.json())["error"]["message"]
    assert tls_fake.fake.seen == []


async def test_verify_tls_false_accepts_any_certificate(
    tls_fake: TlsFake, aiohttp_client: Any
) -> None:
    tree = config_tree([tls_fake.url])
    tree["providers"][0]["verify_tls"] = False
    assert (await ask(aiohttp_client, tree)).status == 200


def test_a_ca_file_that_is_missing_or_not_pem_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate")
    for name, problem in (("missing.pem", "cannot read"), ("junk.pem", "holds no PEM certificate")):
        tree = config_tree(["https://127.0.0.1:1/v1"])
        tree["providers"][0]["ca_file"] = str(tmp_path / name)
        with pytest.raises(ConfigError) as info:
            parse(tree, env={})
        assert info.value.errors[0].startswith(f"providers[0].ca_file: {problem}")


@pytest.mark.parametrize(
    ("trust_env", "no_proxy", "via_proxy"),
    [(True, None, True), (True, "127.0.0.1", False), (False, None, False)],
)
async def test_https_proxy_is_used_only_when_trust_env_allows_and_no_proxy_does_not_exclude(
    tls_fake: TlsFake,
    aiohttp_client: Any,
    no_proxy_env: pytest.MonkeyPatch,
    trust_env: bool,
    no_proxy: str | None,
    via_proxy: bool,
) -> None:
    proxy = ConnectProxy()
    await proxy.start()
    try:
        no_proxy_env.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
        if no_proxy:
            no_proxy_env.setenv("NO_PROXY", no_proxy)
        tree = config_tree([tls_fake.url], trust_env=trust_env)
        tree["providers"][0]["ca_file"] = str(tls_fake.ca)
        r = await ask(aiohttp_client, tree)
        assert r.status == 200
        port = tls_fake.url.split(":")[2].split("/")[0]
        assert proxy.targets == ([f"127.0.0.1:{port}"] if via_proxy else [])
    finally:
        await proxy.close()
