"""The command line, run as real subprocesses: check, serve with the demo config, drain, reload."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import yaml

from tests.fakes import RouterProcess as Server
from tests.fakes import config_tree, free_port

ROOT = Path(__file__).resolve().parent.parent


def run_cli(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_check_lists_targets_without_secrets() -> None:
    out = run_cli("check", "config.example.yaml", env={"OPENAI_API_KEY": "sk-very-secret"})
    assert out.returncode == 0, out.stderr
    assert "group fast-model" in out.stdout and "key=team-a" in out.stdout
    assert "sk-very-secret" not in out.stdout + out.stderr


def test_check_reports_every_error_with_its_path(tmp_path: Path) -> None:
    tree = config_tree(["http://127.0.0.1:1/v1"])
    tree["groups"][0]["models"][0]["weight"] = "x"
    tree["bogus"] = 1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tree))
    out = run_cli("check", "--config", str(path))
    assert out.returncode == 1
    assert 'groups[0].models[0].weight: must be a number >= 0, got "x"' in out.stderr
    assert "bogus: unknown key" in out.stderr


def test_demo_config_answers_with_no_config_anywhere(tmp_path: Path) -> None:
    env = {k: "" for k in ("LLM_ROUTER_CONFIG", "LLM_ROUTER_API_KEY", "OPENAI_API_KEY")}
    server = Server([], cwd=tmp_path, env=env)
    try:
        r = httpx.post(
            server.url + "/v1/chat/completions",
            json={"model": "demo", "messages": [{"role": "user", "content": "ping"}]},
        )
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"] == "[MOCK] ping"
        assert r.json()["usage"]["total_tokens"] > 0
        models = httpx.get(server.url + "/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["demo", "demo-fast", "demo-claude"]
    finally:
        code, out = server.stop()
    assert code == 0
    assert "NO CLIENT KEY" in out


def test_demo_config_requires_a_key_off_loopback(tmp_path: Path) -> None:
    out = run_cli(
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        str(free_port()),
        cwd=tmp_path,
        env={"LLM_ROUTER_API_KEY": "", "LLM_ROUTER_CONFIG": ""},
    )
    assert out.returncode == 1
    assert "api_key: required" in out.stderr


def test_sigterm_drains_an_open_stream(tmp_path: Path, fakes_thread: tuple) -> None:
    fake, url, bg = fakes_thread
    fake.gate = bg.run(_event())
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_tree([url], shutdown_timeout=20)))
    server = Server(["--config", str(path), "--loop", "asyncio"], cwd=tmp_path)
    headers = {"Authorization": "Bearer alice-secret"}
    body = {"model": "g", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream(
        "POST", server.url + "/v1/chat/completions", json=body, headers=headers, timeout=30
    ) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line)
        assert '"Hel"' in first
        server.terminate()
        # New connections are refused while the open stream goes on (the signal may take
        # a moment to arrive on a busy machine).
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(server.url + "/health", timeout=2)
            except httpx.TransportError:
                break
            assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
            time.sleep(0.1)
        bg.loop.call_soon_threadsafe(fake.gate.set)
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    code, out = server.stop()
    assert code == 0, out


async def _event() -> asyncio.Event:
    return asyncio.Event()


def test_sighup_reloads_and_refuses_a_broken_config(tmp_path: Path, fakes_thread: tuple) -> None:
    _, url, _ = fakes_thread
    path = tmp_path / "config.json"
    tree = config_tree([url])
    path.write_bytes(orjson.dumps(tree))
    server = Server(["--config", str(path)], cwd=tmp_path)
    headers = {"Authorization": "Bearer alice-secret"}

    def groups() -> list[str]:
        data = httpx.get(server.url + "/v1/models", headers=headers).json()["data"]
        return [m["id"] for m in data]

    def wait_for(expected: list[str]) -> None:
        deadline = time.monotonic() + 10
        while groups() != expected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert groups() == expected

    try:
        tree["groups"].append({"name": "h", "models": [{"provider": "p0", "name": "x"}]})
        path.write_bytes(orjson.dumps(tree))
        server.proc.send_signal(signal.SIGHUP)
        wait_for(["g", "h"])
        path.write_text('{"groups": [{"name": "broken", "models": [{"weight": "x"}]}]')
        server.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert groups() == ["g", "h"]  # the old config keeps serving
        r = httpx.post(server.url + "/v1/chat/completions", json={"model": "g"}, headers=headers)
        assert r.status_code == 200
    finally:
        code, out = server.stop()
    assert "reload refused" in out
    assert code == 0


def test_workers_share_one_port(tmp_path: Path) -> None:
    env = {"LLM_ROUTER_CONFIG": "", "LLM_ROUTER_API_KEY": ""}
    server = Server(["--workers", "2"], cwd=tmp_path, env=env)
    try:
        children = [
            p for p in Path("/proc").iterdir()
            if p.name.isdigit() and _ppid(p) == server.proc.pid
            and b"spawn_main" in (p / "cmdline").read_bytes()
        ]  # fmt: skip
        assert len(children) == 2
        for _ in range(10):
            assert httpx.get(server.url + "/health").status_code == 200
    finally:
        code, _ = server.stop()
    assert code == 0
    assert all(not (p / "cmdline").exists() for p in children)


def _ppid(proc: Path) -> int:
    try:
        stat = (proc / "stat").read_text()
    except OSError:
        return -1
    return int(stat.rsplit(")", 1)[1].split()[1])
