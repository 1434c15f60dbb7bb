"""One full scenario with recognisable keys, and every byte the router wrote or served
scanned for them (issue 12): zero hits.

Covered: a plain reply, a stream, failover after an upstream 401 whose body echoes the
key, a bad client key, SIGHUP with a valid config (rotated keys) and with invalid ones
(a key where a mapping belongs, a YAML syntax error on a line holding a key), `check`,
`status`, the usage log, /metrics, /status, the dashboard, and JSON logs at debug level.
"""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml
from aiohttp import web

from tests.fakes import RouterProcess, Seen, ok
from tests.test_cli import run_cli

CLIENT = "sk-CLIENTSECRET-alice-9f8e7d6c5b4a"
CLIENT_2 = "sk-CLIENTSECRET-bob-1a2b3c4d5e6f"
PROVIDER = ["sk-PROVIDERSECRET-one-0a1b2c3d", "sk-PROVIDERSECRET-two-4e5f6a7b"]
ROTATED = "sk-PROVIDERSECRET-rotated-8c9d0e1f"
WRONG = "sk-CLIENTSECRET-wrong-000000000"
SECRETS = [CLIENT, CLIENT_2, *PROVIDER, ROTATED, WRONG]


async def echo_401(request: web.Request, seen: Seen) -> web.StreamResponse:
    """A provider refusing the key and quoting it back, as some do."""
    key = request.headers.get("Authorization", "")
    body = {"error": {"message": f"Incorrect API key provided: {key}", "type": "auth"}}
    return web.json_response(body, status=401, headers={"x-echo": key})


def tree(url: str, usage_log: Path, provider_keys: list[Any]) -> dict[str, Any]:
    return {
        "api_keys": [{"name": "alice", "key": CLIENT}, {"name": "bob", "key": CLIENT_2}],
        "providers": [{"name": "up", "base_url": url, "api_keys": provider_keys}],
        "groups": [{"name": "g", "models": [{"provider": "up", "name": "m"}]}],
        "usage_log": str(usage_log),
        "logging": {"level": "debug", "format": "json"},
    }


def test_no_secret_is_ever_written_or_served(tmp_path: Path, fakes_thread: tuple) -> None:
    fake, url, _ = fakes_thread
    usage_log = tmp_path / "usage.jsonl"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tree(url, usage_log, PROVIDER)))
    seen: list[bytes] = []  # every byte the router and its commands produced

    def keep(r: httpx.Response) -> httpx.Response:
        seen.append(str(r.status_code).encode() + repr(r.headers.raw).encode() + r.content)
        return r

    server = RouterProcess(["--config", str(config)], cwd=tmp_path)
    auth = {"Authorization": f"Bearer {CLIENT}"}
    chat = {"model": "g", "messages": [{"role": "user", "content": "hi"}]}
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:

            def post(body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
                return keep(client.post("/v1/chat/completions", json=body, headers=headers))

            assert post(chat, auth).status_code == 200
            r = keep(
                client.post("/v1/chat/completions", json={**chat, "stream": True}, headers=auth)
            )
            assert r.status_code == 200 and b"[DONE]" in r.content
            fake.script[:] = [echo_401, ok]  # the first key is refused and echoed; failover
            r = post(chat, auth)
            assert r.status_code == 200 and r.headers["x-llm-router-attempts"] == "2"
            fake.script[:] = [echo_401, echo_401]  # the other key refused too: a 502
            assert post(chat, auth).status_code == 502
            fake.script.clear()
            bad = {"Authorization": f"Bearer {WRONG}"}
            assert post(chat, bad).status_code == 401
            keep(client.get("/v1/models", headers=bad))

            # SIGHUP: a valid config with a rotated key, then invalid ones that hold keys.
            # (named: the old labels are quarantined after their 401s)
            rotated = [{"key": ROTATED, "name": "rotated"}]
            config.write_text(yaml.safe_dump(tree(url, usage_log, rotated)))
            server.proc.send_signal(signal.SIGHUP)
            time.sleep(1)
            assert post(chat, auth).status_code == 200
            assert fake.seen[-1].headers["Authorization"] == f"Bearer {ROTATED}"
            broken = tree(url, usage_log, rotated)
            broken["api_keys"] = [CLIENT, CLIENT_2]  # strings where mappings belong
            config.write_text(yaml.safe_dump(broken))
            server.proc.send_signal(signal.SIGHUP)
            time.sleep(0.5)
            config.write_text(f"api_key: {CLIENT}\n  oops: [{ROTATED}\n")  # a syntax error
            server.proc.send_signal(signal.SIGHUP)
            time.sleep(0.5)
            config.write_text(yaml.safe_dump(tree(url, usage_log, rotated)))

            keep(client.get("/metrics"))
            keep(client.get("/status", headers=auth))
            keep(client.get("/dashboard"))
            keep(client.get(f"/dashboard?key={CLIENT}"))
            keep(client.get("/health"))
            keep(client.post("/v1/nope", headers=auth))
        for raw in (  # what the HTTP parser refuses, with keys in the refused bytes
            f"POST /v1/chat/completions HTTP/1.1\r\nAuthorization: Bearer {CLIENT}\r\n"
            f"X-Big: {PROVIDER[0] * 400}\r\n\r\n",
            f"GET /{CLIENT} HTTP/9.9\r\nAuthorization: Bearer {CLIENT}\r\n\r\n",
        ):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.sendall(raw.encode())
                seen.append(sock.recv(65536))
        status = run_cli("status", "--url", server.url, "--api-key", CLIENT)
        assert status.returncode == 0, status.stderr
        seen += [status.stdout.encode(), status.stderr.encode()]
        for text in (config.read_text(), yaml.safe_dump(broken), f"api_key: {CLIENT}\n  x: [\n"):
            config.write_text(text)
            out = run_cli("check", str(config))
            seen += [out.stdout.encode(), out.stderr.encode()]
    finally:
        code, log = server.stop()
    seen.append(log.encode())
    for path in tmp_path.glob("usage.jsonl*"):
        seen.append(path.read_bytes())
    assert code == 0
    assert log.count("reload refused") == 2 and log.count("refused a malformed request") == 2
    lines = [orjson.loads(line) for line in usage_log.read_text().splitlines()]
    assert len(lines) == 6 and all("total_tokens" in line for line in lines)
    everything = b"\n".join(seen)
    hits = [s for s in SECRETS if s.encode() in everything]
    parts = [s[3:15] for s in SECRETS if s[3:15].encode() in everything]  # partial echoes too
    assert hits == [] and parts == [], (hits, parts)
    assert b"SECRET" not in everything
