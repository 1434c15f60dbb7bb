"""Cost, /metrics, /status, the usage log and its rollup, the status command and the logs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml
from prometheus_client.parser import text_string_to_metric_families

from router.usagelog import UsageLog, read, rollup
from tests.conftest import ALICE
from tests.fakes import RouterProcess, config_tree, status

CHAT = "/v1/chat/completions"
ROOT = Path(__file__).resolve().parent.parent


def priced(url: str, **extra: Any) -> dict[str, Any]:
    tree = config_tree([url], **extra)
    tree["groups"][0]["models"][0].update(input_cost=2.0, output_cost=10.0)
    return tree


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: dict[Any, float], name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_cost_header_on_non_streamed_replies(fakes: Any, router: Any) -> None:
    [(_, url)] = await fakes(1)
    client = await router(tree=priced(url))
    r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    # 7 prompt tokens at $2/M + 3 completion tokens at $10/M
    assert float(r.headers["x-llm-router-cost"]) == (7 * 2 + 3 * 10) / 1e6
    r = await client.post(CHAT, json={"model": "g", "stream": True}, headers=ALICE)
    await r.read()
    assert "x-llm-router-cost" not in r.headers


async def test_metrics_after_traffic(fakes: Any, router: Any) -> None:
    [(fake, url)] = await fakes(1)
    client = await router(tree=priced(url, breaker={"failures": 1}))
    fake.script.append(status(500))  # p0#0 fails once: failover to p0#1, breaker opens
    assert (await client.post(CHAT, json={"model": "g"}, headers=ALICE)).status == 200
    r = await client.post(CHAT, json={"model": "g", "stream": True}, headers=ALICE)
    await r.read()
    assert (await client.post(CHAT, json={"model": "nope"}, headers=ALICE)).status == 404
    r = await client.get("/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    text = await r.text()
    assert "sk-p0" not in text and "alice-secret" not in text
    m = samples(text)
    ok = {"group": "g", "provider": "p0", "model": "up-0", "key": "p0#1", "status": "200"}
    assert value(m, "llm_router_requests_total", **ok) == 2
    assert (
        value(m, "llm_router_requests_total", group="", provider="", model="", key="", status="404")
        == 1
    )
    assert value(m, "llm_router_request_duration_seconds_count", group="g") == 2
    assert value(m, "llm_router_time_to_first_token_seconds_count", group="g") == 1
    assert value(m, "llm_router_upstream_duration_seconds_count", provider="p0", model="up-0") == 3
    k1 = {"provider": "p0", "model": "up-0", "key": "p0#1"}
    assert value(m, "llm_router_prompt_tokens_total", **k1) == 7 + 8
    assert value(m, "llm_router_completion_tokens_total", **k1) == 3 + 2
    assert value(m, "llm_router_cost_usd_total", **k1, client="alice") > 0
    assert (
        value(
            m,
            "llm_router_upstream_attempts_total",
            provider="p0",
            model="up-0",
            key="p0#0",
            outcome="error",
        )
        == 1
    )
    assert value(m, "llm_router_breaker_state", provider="p0", model="up-0", key="p0#0") == 2
    assert value(m, "llm_router_failovers_total", group="g") == 1
    assert value(m, "llm_router_in_flight_requests") == 0
    assert value(m, "llm_router_state_degraded") == 0


async def test_cost_and_failover_series_exist_at_zero(one: Any) -> None:
    """A dashboard's rate() needs the series before the first dollar or failover."""
    _, client = one  # no prices configured
    assert (await client.post(CHAT, json={"model": "g"}, headers=ALICE)).status == 200
    m = samples(await (await client.get("/metrics")).text())
    k = {"provider": "p0", "model": "up-0", "key": "p0#0", "client": "alice"}
    assert ("llm_router_cost_usd_total", tuple(sorted(k.items()))) in m
    assert m[("llm_router_failovers_total", (("group", "g"),))] == 0


async def test_status_needs_auth_and_shows_targets_and_clients(fakes: Any, router: Any) -> None:
    [(fake, url)] = await fakes(1)
    tree = priced(url)
    tree["api_keys"][0].update(budget_usd=1.0, rpm=100)
    tree["providers"][0]["api_keys"] = [{"key": "sk-secret-a", "name": "a", "tpm": 5000}, "sk-b"]
    client = await router(tree=tree)
    assert (await client.get("/status")).status == 401
    for _ in range(3):
        await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    r = await client.get("/status", headers=ALICE)
    text = await r.text()
    assert "sk-secret-a" not in text and "alice-secret" not in text
    data = orjson.loads(text)
    assert data["state"] == "memory"
    by_key = {t["key"]: t for t in data["targets"]}
    a = by_key["a"]
    assert a["usage_total"] == 20 and a["requests"] == 2 and a["breaker"] == "closed"
    assert a["tpm"] == {"used": 20, "limit": 5000}
    assert a["latency_ms"] > 0 and a["error_rate"] == 0 and a["cost_usd"] > 0
    assert a["in_flight"] == 0 and a["groups"] == ["g"]
    alice = next(c for c in data["clients"] if c["name"] == "alice")
    assert alice["requests"] == 3 and alice["tokens"] == 30
    assert alice["budget_left_usd"] == round(1.0 - alice["cost_usd"], 6)


async def test_usage_log_lines_have_no_text(fakes: Any, router: Any, tmp_path: Path) -> None:
    [(_, url)] = await fakes(1)
    log = tmp_path / "usage.jsonl"
    client = await router(tree=priced(url, usage_log=str(log)))
    secret_prompt = "the launch code is 0000"
    await client.post(
        CHAT,
        json={"model": "g", "messages": [{"role": "user", "content": secret_prompt}]},
        headers=ALICE,
    )
    r = await client.post(CHAT, json={"model": "g", "stream": True}, headers=ALICE)
    await r.read()
    await client.post(CHAT, json={"model": "nope"}, headers=ALICE)
    await client.close()  # the writer flushes on shutdown
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    assert len(lines) == 3
    assert secret_prompt not in log.read_text() and "hello" not in log.read_text()
    first = lines[0]
    assert {
        "time",
        "request_id",
        "client",
        "group",
        "key",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "latency_ms",
        "ttft_ms",
        "status",
        "attempts",
    } <= set(first)
    assert first["client"] == "alice" and first["key"] == "p0#0" and first["status"] == 200
    assert first["prompt_tokens"] == 7 and first["cost_usd"] > 0 and first["ttft_ms"] is None
    assert lines[1]["ttft_ms"] > 0 and lines[1]["completion_tokens"] == 2
    assert lines[2]["status"] == 404 and lines[2]["key"] is None


async def test_usage_log_rotates_by_size_and_by_day(tmp_path: Path) -> None:
    log = UsageLog(str(tmp_path / "u.jsonl"), max_bytes=200)
    for i in range(6):
        log.add({"i": i, "pad": "x" * 50})
        await log.flush()
    rotated = sorted(p.name for p in tmp_path.iterdir() if p.name[0] != "." and p.name != "u.jsonl")
    assert rotated and all(name.startswith("u.jsonl.") for name in rotated)
    assert [r["i"] for r in read(str(tmp_path / "u.jsonl"))] == list(range(6))
    log.max_bytes = 10**9
    day_ago = time.time() - 86400
    os.utime(tmp_path / "u.jsonl", (day_ago, day_ago))  # last written on the day before
    n = len(list(tmp_path.iterdir()))
    log.add({"i": 6})
    await log.flush()
    assert len(list(tmp_path.iterdir())) == n + 1


def test_usage_command_rolls_up(tmp_path: Path) -> None:
    log = tmp_path / "usage.jsonl"
    records = [
        {
            "time": "2026-11-01T10:00:00Z",
            "client": "alice",
            "model": "m1",
            "key": "k1",
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "cost_usd": 0.5,
            "latency_ms": 100,
            "status": 200,
        },
        {
            "time": "2026-11-01T11:00:00Z",
            "client": "bob",
            "model": "m2",
            "key": "k1",
            "prompt_tokens": 1,
            "completion_tokens": 1,
            "cost_usd": 0.25,
            "latency_ms": 300,
            "status": 200,
        },
        {
            "time": "2026-11-02T09:00:00Z",
            "client": "alice",
            "model": "m1",
            "key": "k2",
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cost_usd": 0,
            "latency_ms": 5,
            "status": 502,
        },
    ]
    log.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    days = rollup(read(str(log)), "day")
    assert [(d["day"], d["requests"], d["errors"], d["cost_usd"]) for d in days] == [
        ("2026-11-01", 2, 0, 0.75),
        ("2026-11-02", 1, 1, 0.0),
    ]
    assert days[0]["latency_ms"] == 200
    out = subprocess.run(
        [sys.executable, "-m", "router", "usage", "--log", str(log), "--by", "client"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = out.splitlines()
    assert lines[0].split() == [
        "client",
        "requests",
        "errors",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cost_usd",
        "latency_ms",
    ]
    assert lines[1].split()[:3] == ["alice", "2", "1"] and lines[2].split()[:2] == ["bob", "1"]
    for by in ("model", "key"):
        rows = rollup(read(str(log)), by)
        assert sum(r["requests"] for r in rows) == 3


def test_status_command_and_json_logs(tmp_path: Path, fakes_thread: Any) -> None:
    fake, url, _ = fakes_thread
    tree = priced(url, logging={"format": "json"})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    server = RouterProcess(["--config", str(path)], cwd=tmp_path)
    try:
        for _ in range(2):
            assert (
                httpx.post(server.url + CHAT, json={"model": "g"}, headers=ALICE).status_code == 200
            )
        cmd = [sys.executable, "-m", "router", "status", "--url", server.url]
        out = subprocess.run([*cmd, "--api-key", "alice-secret"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert "p0/up-0 (p0#0)" in out.stdout and "closed" in out.stdout and "alice" in out.stdout
        bad = subprocess.run([*cmd, "--api-key", "wrong"], capture_output=True, text=True)
        assert bad.returncode == 1 and "401" in bad.stderr
        watch = subprocess.Popen(
            [*cmd, "--api-key", "alice-secret", "--watch", "0.3"], stdout=subprocess.PIPE, text=True
        )
        time.sleep(3)  # room for a slow interpreter start: several redraws either way
        watch.terminate()
        screens = watch.communicate()[0].count("\x1b[H\x1b[2J")
        assert screens >= 2  # redrawn in place
    finally:
        code, out = server.stop()
    lines = [orjson.loads(line) for line in out.splitlines() if line.strip()]
    access = [line for line in lines if line["logger"] == "router.access"]
    assert len(access) >= 2 and all(len(a["request_id"]) >= 16 for a in access)
    assert all(
        {"time", "level", "logger", "request_id", "message"} <= set(line)
        or line["logger"] == "router.access"
        for line in lines
    )
    assert "sk-p0" not in out and "alice-secret" not in out


async def test_observability_tolerates_concurrency(fakes: Any, router: Any) -> None:
    [(_, url)] = await fakes(1)
    client = await router(tree=priced(url))
    replies = await asyncio.gather(
        *(client.post(CHAT, json={"model": "g"}, headers=ALICE) for _ in range(30))
    )
    assert all(r.status == 200 for r in replies)
    data = await (await client.get("/status", headers=ALICE)).json()
    assert sum(t["requests"] for t in data["targets"]) == 30
    assert all(t["in_flight"] == 0 and t["reserved"] == 0 for t in data["targets"])
