"""`llm-router eval` against fake providers on loopback with known latencies, token counts,
prices and failures, a fake judge, the demo config, Ctrl-C, and the report in Chromium.

Timing tolerances (a shared, noisy machine): a measured latency or TTFT lies within
[scripted - 5 ms, scripted + 250 ms]; tokens/s within [0.5, 1.05] x scripted. Costs and
counts are exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import os
import pty
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from router import cli
from router.balancer import Balancer
from router.config import parse
from router.eval import judge as judging
from router.eval.prompts import PromptError, load
from router.eval.runner import Caller, Result, eval_targets, run, upstreams
from router.state.memory import MemoryState
from tests.fakes import BackgroundLoop, start_site
from tests.fakes_eval import FENCED_SCORES, JUDGE_USAGE, SCRIPTS, EvalFake, Script, eval_config
from tests.test_browser import browser, wait_for  # noqa: F401 (the fixture, shared)

ROOT = Path(__file__).resolve().parent.parent
LATE = 0.25  # seconds a measured time may exceed the script by
EARLY = 0.005  # timers may fire a hair early


@dataclass
class Served:
    fake: EvalFake
    url: str
    bg: BackgroundLoop


@contextlib.contextmanager
def serve_fake(models: dict[str, Script]) -> Iterator[Served]:
    bg = BackgroundLoop()
    fake = EvalFake(dict(models))
    runner, port = bg.run(start_site(fake.app()))
    try:
        yield Served(fake, f"http://127.0.0.1:{port}/v1", bg)
    finally:
        bg.run(runner.cleanup())
        bg.close()


def write_prompts(path: Path, lines: list[Any]) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else orjson.dumps(x).decode() for x in lines))
    return path


PROMPTS = [
    {"id": "p-fenced", "prompt": "fenced: name a prime", "expected": "7", "max_tokens": 50},
    {"id": "p-prose", "messages": [{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": "prose: why is the sky blue"}]},
    {"id": "p-garbage", "prompt": "garbage: say hi", "temperature": 0.2},
    {"id": "p-slow", "prompt": "slow: count to three"},
]  # fmt: skip


def run_main(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["eval", *args])
    return code, out.getvalue(), err.getvalue()


@dataclass
class Graded:
    summary: dict[str, Any]
    table: str
    calls: list[dict[str, Any]]
    report: Path
    fake: EvalFake


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Graded]:
    """One eval of three targets x 4 prompts x 2 repeats, judged, with --out and --report."""
    tmp = tmp_path_factory.mktemp("eval")
    with serve_fake(SCRIPTS) as served:
        config = tmp / "config.yaml"
        config.write_text(yaml.safe_dump(eval_config(served.url)))
        prompts = write_prompts(tmp / "prompts.jsonl", PROMPTS)
        out, report = tmp / "calls.jsonl", tmp / "report.html"
        code, stdout, stderr = run_main(
            "--config", str(config), "--prompts", str(prompts), "--judge", "judge",
            "--repeat", "2", "--concurrency", "4", "--out", str(out), "--report", str(report),
            "--json",
        )  # fmt: skip
        assert code == 0, stderr
        assert stderr == ""  # no progress bar off a terminal, no logs
        code, table, _ = run_main("--config", str(config), "--prompts", str(prompts),
                                  "--group", "g")  # fmt: skip
        assert code == 0
        served.fake.calls.clear()  # the second run was only for its table
        calls = [orjson.loads(line) for line in out.read_bytes().splitlines()]
        yield Graded(orjson.loads(stdout), table, calls, report, served.fake)


def target(summary: dict[str, Any], model: str) -> dict[str, Any]:
    return next(t for t in summary["targets"] if t["model"] == model)


SPEC_FIELDS = {"group", "provider", "model", "calls", "errors", "error_rate", "latency_ms",
               "ttft_ms", "tokens_per_s", "prompt_tokens", "completion_tokens", "cost_usd",
               "cost_per_1k_usd", "score", "scored"}  # fmt: skip


def within(measured: float, scripted: float) -> bool:
    return scripted - EARLY <= measured <= scripted + LATE


def test_latency_ttft_tokens_per_s_and_cost_match_the_fakes(graded: Graded) -> None:
    s = graded.summary
    assert set(s) == {"targets", "judge"} and set(s["judge"]) == {"group", "calls", "cost_usd"}
    assert all(set(t) == SPEC_FIELDS for t in s["targets"])
    assert [(t["group"], t["provider"], t["model"]) for t in s["targets"]] == [
        ("g", "fast", "fast-model"), ("g", "slow", "slow-model"), ("g", "flaky", "flaky-model")
    ]  # fmt: skip
    for model, prices in (("fast-model", (1.0, 2.0)), ("slow-model", (0.5, 1.0))):
        t, script = target(s, model), SCRIPTS[model]
        assert t["calls"] == 8 and t["errors"] == 0 and t["error_rate"] == 0
        assert within(t["latency_ms"]["p50"] / 1000, script.latency), t
        assert within(t["latency_ms"]["p95"] / 1000, script.latency), t
        assert t["latency_ms"]["p50"] <= t["latency_ms"]["p95"]
        assert within(t["ttft_ms"]["p50"] / 1000, script.ttft), t
        rate = script.completion_tokens / (script.gap * (script.chunks - 1))
        assert 0.5 * rate <= t["tokens_per_s"] <= 1.05 * rate, t
        assert t["prompt_tokens"] == 8 * script.prompt_tokens
        assert t["completion_tokens"] == 8 * script.completion_tokens
        per_call = (script.prompt_tokens * prices[0] + script.completion_tokens * prices[1]) / 1e6
        assert t["cost_usd"] == pytest.approx(8 * per_call)
        assert t["cost_per_1k_usd"] == pytest.approx(1000 * per_call)
    assert (
        target(s, "fast-model")["latency_ms"]["p50"] < target(s, "slow-model")["latency_ms"]["p50"]
    )
    # The table shows the same numbers, rounded.
    fast = target(s, "fast-model")
    row = next(line for line in graded.table.splitlines() if "fast/fast-model" in line)
    assert row.split()[2:5] == ["4", "0", "0.0"]  # 4 prompts, one repeat in the table run
    assert "0.008" in row and "2" in row.split()  # cost of 4 calls, $2 per 1k calls
    assert fast["score"] is not None and "score (n)" in graded.table.splitlines()[0]


def test_error_rate_from_a_target_failing_one_call_in_four(graded: Graded) -> None:
    flaky = target(graded.summary, "flaky-model")
    assert flaky["calls"] == 8 and flaky["errors"] == 2 and flaky["error_rate"] == 0.25
    errors = sorted(c["error"] for c in graded.calls if c["model"] == "flaky-model" and c["error"])
    # One failed before the stream (HTTP 500), one with an error event mid-stream.
    assert errors == ["HTTP 500: fake outage", "upstream sent an error event"]
    # Usage came back on the 6 good calls; with no prices configured that costs 0, not null.
    assert flaky["completion_tokens"] == 6 * 500 and flaky["cost_usd"] == 0.0


def test_judge_scores_fenced_and_prose_replies_and_never_makes_one_up(graded: Graded) -> None:
    s, calls = graded.summary, graded.calls
    for model in ("fast-model", "slow-model"):
        t, fenced = target(s, model), FENCED_SCORES[SCRIPTS[model].word]
        assert t["scored"] == 4 and t["score"] == pytest.approx((fenced * 2 + 2.5 * 2) / 4)
    by_prompt: dict[str, set[Any]] = {}
    for c in calls:
        if c["error"] is None:
            by_prompt.setdefault(c["prompt_id"], set()).add((c["score"], c["reason"]))
    fenced = {(float(n), "clear and right") for n in FENCED_SCORES.values()}
    assert {(4.0, "clear and right"), (5.0, "clear and right")} <= by_prompt["p-fenced"] <= fenced
    assert by_prompt["p-prose"] == {(2.5, "partly right")}
    assert by_prompt["p-garbage"] == {(None, "judge gave no score (asked twice)")}
    # aiohttp's total timeout or ours, whichever fires first: both say so.
    assert all(score is None and reason.startswith("judge failed: timed out")
               for score, reason in by_prompt["p-slow"])  # fmt: skip
    assert all(c["score"] is None and c["reason"] is None for c in calls if c["error"])
    garbage = sum(1 for c in calls if c["prompt_id"] == "p-garbage" and c["error"] is None)
    slow = sum(1 for c in calls if c["prompt_id"] == "p-slow" and c["error"] is None)
    judged = graded.fake.judged
    assert judged["garbage"] == 2 * garbage  # an unparsable reply is asked once more, once
    assert judged["slow"] == slow  # a timeout is not retried
    judge = s["judge"]
    assert judge["group"] == "judge" and judge["calls"] == sum(judged.values())
    per_call = (JUDGE_USAGE["prompt_tokens"] * 3.0 + JUDGE_USAGE["completion_tokens"] * 15.0) / 1e6
    assert judge["cost_usd"] == pytest.approx((judge["calls"] - slow) * per_call)
    assert "judge judge:" in graded.table or s["judge"] is not None


def test_out_has_one_line_per_call_and_requests_are_sent_as_written(graded: Graded) -> None:
    calls = graded.calls
    assert len(calls) == 24
    fields = {"target", "prompt_id", "latency_ms", "ttft_ms", "prompt_tokens",
              "completion_tokens", "cost_usd", "score", "reason", "error"}  # fmt: skip
    assert all(fields <= set(c) for c in calls)
    # The balancer spreads a target's calls over its keys, as in serving; labels only.
    assert {c["key"] for c in calls if c["provider"] == "fast"} == {"fast#0", "fast#1"}
    assert all("sk-" not in orjson.dumps(c).decode() for c in calls)
    fenced = [b for b in graded.fake.bodies if b["model"] == "fast-model"
              and b["messages"][-1]["content"].startswith("fenced")]  # fmt: skip
    assert fenced and all(
        b["stream"] is True and b["stream_options"] == {"include_usage": True}
        and b["max_tokens"] == 50 and not {"id", "expected", "prompt"} & set(b)
        for b in fenced
    )  # fmt: skip


def test_judge_reply_parsing() -> None:
    parse = judging.parse
    assert parse('{"score": 5, "reason": "great"}') == (5.0, "great")
    assert parse('```\n{"score": 0}\n```') == (0.0, "")
    assert parse('{"verdict": {"score": 3, "reason": "nested"}}') == (3.0, "nested")
    assert parse('{"score": 7} then {"score": 1, "reason": "in range"}') == (1.0, "in range")
    for bad in ("", "score: 4", '{"score": "4"}', '{"score": true}', '{"score": -1}',
                '{"score": NaN}', "{not json}", '["score", 4]'):  # fmt: skip
        assert parse(bad) is None, bad


def test_bad_prompt_lines_are_all_named_and_nothing_is_sent(tmp_path: Path) -> None:
    lines = [
        {"prompt": "fine"},
        "",
        "{not json",
        {"prompt": "a", "messages": [{"role": "user", "content": "b"}]},
        {"messages": []},
        {"id": "x", "prompt": "one"},
        {"id": "x", "prompt": "two"},
        "[1, 2]",
        {"prompt": "ok", "expected": 4},
    ]
    path = write_prompts(tmp_path / "bad.jsonl", lines)
    with pytest.raises(PromptError) as err:
        load(path)
    assert [e.split(":")[1] for e in err.value.errors] == ["3", "4", "5", "7", "8", "9"]
    with serve_fake(SCRIPTS) as served:
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump(eval_config(served.url)))
        code, stdout, stderr = run_main("--config", str(config), "--prompts", str(path))
        assert code == 1 and stdout == ""
        assert f"{path}:3: not valid JSON" in stderr
        assert f"{path}:7: id 'x' is already used on line 6" in stderr
        assert "6 error(s)" in stderr and "nothing was sent" in stderr
        assert not served.fake.calls
        code, _, stderr = run_main("--config", str(config), "--prompts", str(path), "--group", "no")
        assert code == 1


async def test_every_reservation_is_released_after_failures_timeouts_and_cancels(
    aiohttp_server: Any,
) -> None:
    fake = EvalFake({**SCRIPTS, "stuck-model": Script(ttft=30)})
    server = await aiohttp_server(fake.app())
    tree = eval_config(f"http://127.0.0.1:{server.port}/v1")
    tree["providers"].append({"name": "stuck", "base_url": tree["providers"][0]["base_url"],
                              "api_keys": ["sk-stuck"], "timeout": 0.5})  # fmt: skip
    tree["groups"][0]["models"].append({"provider": "stuck", "name": "stuck-model"})
    config = parse(tree, env={})
    state = MemoryState(0.0)
    balancer = Balancer(config, state)
    prompts = load(write_prompts(Path(tempfile.mkdtemp()) / "p.jsonl", PROMPTS))
    targets = eval_targets(balancer, ["g"])
    results: list[Result] = []
    async with aiohttp.ClientSession() as session:
        caller = Caller(upstreams(session), balancer)
        judge = judging.Judge(caller, "judge", balancer.targets("judge"))
        await run(caller, targets, prompts, 1, 3, results, judge)
    stuck = [r for r in results if r.target.model.name == "stuck-model"]
    assert len(results) == 16 and {r.answer.error for r in stuck} == {"timed out after 0.5 s"}
    every = [t.id for t in balancer.targets("g") + balancer.targets("judge")]
    assert [(await state.usage(i)).reserved for i in every] == [0] * len(every)
    assert fake.cancelled == 4  # the timed-out streams were closed, not left hanging
    # A cancelled run (Ctrl-C) releases what its calls in flight had reserved, too.
    results.clear()
    async with aiohttp.ClientSession() as session:
        caller = Caller(upstreams(session), balancer)
        task = asyncio.create_task(run(caller, targets[1:], prompts, 1, 2, results))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [(await state.usage(i)).reserved for i in every] == [0] * len(every)


async def test_a_refused_key_is_set_aside_as_in_serving(aiohttp_server: Any) -> None:
    fake = EvalFake(SCRIPTS)
    server = await aiohttp_server(fake.app())
    tree = eval_config(f"http://127.0.0.1:{server.port}/v1")
    tree["providers"][0]["api_keys"] = ["sk-refused", "sk-fine"]
    balancer = Balancer(parse(tree, env={}), MemoryState(0.0))
    prompts = load(write_prompts(Path(tempfile.mkdtemp()) / "p.jsonl", PROMPTS))
    results: list[Result] = []
    async with aiohttp.ClientSession() as session:
        caller = Caller(upstreams(session), balancer)
        await run(caller, eval_targets(balancer, ["g"])[:1], prompts, 1, 1, results)
    assert [(r.answer.key, r.answer.error) for r in results] == [
        ("fast#0", "HTTP 401: Incorrect API key provided"), ("fast#1", None),
        ("fast#1", None), ("fast#1", None),
    ]  # fmt: skip


def test_demo_config_end_to_end_in_a_subprocess(tmp_path: Path) -> None:
    env = {**os.environ, "LLM_ROUTER_CONFIG": ""}
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GROQ_API_KEY", "OPENROUTER_API_KEY",
                "GEMINI_API_KEY"):  # fmt: skip
        env.pop(var, None)
    out, report = tmp_path / "calls.jsonl", tmp_path / "report.html"
    proc = subprocess.run(
        [sys.executable, "-m", "router", "eval", "--prompts", str(ROOT / "examples/prompts.jsonl"),
         "--group", "demo", "--group", "demo-fast", "--judge", "demo-fast", "--json",
         "--out", str(out), "--report", str(report)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = orjson.loads(proc.stdout)  # --json prints only the JSON
    n = len(load(ROOT / "examples/prompts.jsonl"))
    assert [(t["group"], t["model"]) for t in summary["targets"]] == [
        ("demo", "mock-large"), ("demo-fast", "mock-small")
    ]  # fmt: skip
    for t in summary["targets"]:
        assert t["calls"] == n and t["errors"] == 0 and t["latency_ms"]["p50"] >= 20
        assert t["completion_tokens"] > 0 and t["cost_usd"] == 0.0  # the mock has no prices
        assert t["score"] is None and t["scored"] == 0  # an echo is no grade
    assert summary["judge"] == {"group": "demo-fast", "calls": 4 * n, "cost_usd": 0.0}
    assert len(out.read_bytes().splitlines()) == 2 * n
    assert "<svg" in report.read_text() and "Cost versus latency" in report.read_text()


def test_ctrl_c_cancels_calls_in_flight_and_keeps_what_finished(tmp_path: Path) -> None:
    slow = {"fast-model": Script(ttft=0.3, gap=0.01, chunks=2)}
    with serve_fake(slow) as served:
        tree = eval_config(served.url)
        tree["groups"][0]["models"] = tree["groups"][0]["models"][:1]
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump(tree))
        prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": f"q{i}"} for i in range(40)])
        out, report = tmp_path / "calls.jsonl", tmp_path / "report.html"
        proc = subprocess.Popen(
            [sys.executable, "-m", "router", "eval", "--config", str(config), "--prompts",
             str(prompts), "--group", "g", "--concurrency", "2", "--out", str(out),
             "--report", str(report)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while served.fake.calls["fast-model"] < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=20)
        assert proc.returncode == 130, stderr
        finished = len(out.read_bytes().splitlines())
        assert 2 <= finished < 40
        assert f"interrupted: {finished} of 40 calls finished" in stderr
        row = next(line for line in stdout.splitlines() if "fast/fast-model" in line)
        assert row.split()[2] == str(finished)  # the table counts only the finished calls
        assert "interrupted" in report.read_text()
        deadline = time.monotonic() + 5
        while served.fake.cancelled < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert served.fake.cancelled >= 1  # the calls in flight were cancelled upstream


def test_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    args = [sys.executable, "-m", "router", "eval", "--prompts", str(prompts), "--group", "demo"]
    env = {**os.environ, "LLM_ROUTER_CONFIG": ""}
    piped = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, timeout=60)
    assert piped.returncode == 0 and piped.stderr == b""
    main, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        tty = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=secondary)  # fmt: skip
        os.close(secondary)
        drawn = b""
        with contextlib.suppress(OSError):  # EIO once the child has closed its end
            while chunk := os.read(main, 4096):
                drawn += chunk
        stdout, _ = tty.communicate(timeout=60)
    finally:
        os.close(main)
    assert tty.returncode == 0 and b"mock/mock-large" in stdout
    assert b"0/1" in drawn and b"call/s" in drawn  # tqdm's bar, on stderr only


def test_report_opens_in_chromium_with_its_charts_and_no_console_errors(
    browser: Any,  # noqa: F811
    graded: Graded,
) -> None:
    from selenium.webdriver.common.by import By

    text = graded.report.read_text()
    assert "http://" not in text and "https://" not in text  # nothing to load from outside
    browser.get_log("browser")  # forget what earlier tests logged
    browser.get(graded.report.as_uri())
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#summary tbody tr"))
    points = browser.find_elements(By.CSS_SELECTOR, "svg#scatter circle.point")
    assert len(points) == 3  # every target was scored: cost versus quality
    assert "Cost versus quality" in browser.find_element(By.TAG_NAME, "body").text
    dots = browser.find_elements(By.CSS_SELECTOR, "svg#latency circle.call")
    assert len(dots) == sum(1 for c in graded.calls if c["error"] is None)
    assert all(d.size["width"] > 0 for d in dots[:3])  # drawn, not just present
    rows = browser.find_elements(By.CSS_SELECTOR, "#summary tbody tr")
    assert len(rows) == 3
    # Sorting by p50 puts the fastest first; a second click reverses.
    header = browser.find_elements(By.CSS_SELECTOR, "#summary th")[4]
    header.click()
    first = browser.find_element(By.CSS_SELECTOR, "#summary tbody tr").text
    header.click()
    assert browser.find_element(By.CSS_SELECTOR, "#summary tbody tr").text != first
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    shot = os.environ.get("LLM_ROUTER_EVAL_SCREENSHOT")  # set to refresh the README's picture
    browser.save_screenshot(shot or str(Path(tempfile.gettempdir()) / "eval-report.png"))
