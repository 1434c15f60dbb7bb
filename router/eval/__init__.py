"""`llm-router eval`: how fast, cheap and good each target of a group is on your own prompts.

prompts (the file, checked before anything is sent) -> runner (the calls) -> judge (the
scores) -> stats (the numbers, the table, --out) -> report (the HTML page). The CLI
imports this package only for the `eval` command.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import aiohttp
import orjson

from router.balancer import Balancer
from router.config import Config
from router.eval import prompts as prompt_file
from router.eval import report, stats
from router.eval.judge import Judge
from router.eval.runner import Caller, EvalTarget, Result, eval_targets, run, upstreams
from router.logs import setup_logging
from router.schema import ConfigError
from router.server import load_config
from router.state import open_state

if TYPE_CHECKING:
    from tqdm import tqdm

INTERRUPTED = 130  # the shell's code for a SIGINT


@dataclass(frozen=True)
class Options:
    prompts: str
    groups: tuple[str, ...] = ()
    judge: str | None = None
    concurrency: int = 4
    repeat: int = 1
    out: str | None = None
    report: str | None = None
    json: bool = False


def main(config_path: str | None, options: Options) -> int:
    try:
        config = load_config(config_path, {})
    except ConfigError as exc:
        return _fail(exc.errors, f"in {config_path or 'the demo config'}")
    try:
        prompts = prompt_file.load(options.prompts)
    except prompt_file.PromptError as exc:
        return _fail(exc.errors, f"in {options.prompts}; nothing was sent")
    names = [g.name for g in config.groups]
    unknown = [g for g in (*options.groups, options.judge) if g is not None and g not in names]
    if unknown:
        errors = [f"no group {g!r} in the config (groups: {', '.join(names)})" for g in unknown]
        return _fail(errors, "")
    setup_logging(config.logging, "warning")
    try:
        return asyncio.run(_main(config, prompts, options))
    except KeyboardInterrupt:  # before the calls started, or a second Ctrl-C
        print("interrupted", file=sys.stderr)
        return INTERRUPTED


def _fail(errors: list[str], where: str) -> int:
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if where:
        print(f"{len(errors)} error(s) {where}", file=sys.stderr)
    return 1


async def _main(config: Config, prompts: list[prompt_file.Prompt], options: Options) -> int:
    hold = max((p.timeout for p in config.providers), default=600.0) + 5
    state = open_state(config.state, config.usage_window, hold=hold)
    balancer = Balancer(config, state)
    groups = options.groups or tuple(g.name for g in config.groups if g.name != options.judge)
    targets = eval_targets(balancer, groups)
    total = len(targets) * len(prompts) * options.repeat
    results: list[Result] = []
    await state.start()
    connector = aiohttp.TCPConnector(limit=max(options.concurrency * 2, 16))
    async with aiohttp.ClientSession(connector=connector, trust_env=config.trust_env) as session:
        caller = Caller(upstreams(session), balancer)
        judge = None
        if options.judge is not None:
            judge = Judge(caller, options.judge, balancer.targets(options.judge))
        bar = _progress(total)

        def advance() -> None:
            if bar is not None:
                bar.update()

        work = asyncio.create_task(
            run(caller, targets, prompts, options.repeat, options.concurrency, results, judge,
                advance)
        )  # fmt: skip
        interrupted = await _until_done_or_sigint(work)
        if bar is not None:
            bar.close()
    await state.close()
    results.sort(key=lambda r: r.index)
    summary = stats.summarise(targets, results, judge)
    if options.json:
        print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    else:
        print(stats.table(summary))
    if options.out:
        with open(options.out, "wb") as f:
            f.writelines(orjson.dumps(stats.record(r)) + b"\n" for r in results)
    if options.report:
        meta = _meta(config, options, prompts, targets, len(results), total, interrupted)
        Path(options.report).write_text(report.render(summary, results, meta), encoding="utf-8")
    if interrupted:
        print(f"interrupted: {len(results)} of {total} calls finished", file=sys.stderr)
        return INTERRUPTED
    return 0


async def _until_done_or_sigint(work: asyncio.Task[None]) -> bool:
    """Wait for the run; Ctrl-C cancels the calls in flight. True when interrupted."""
    loop = asyncio.get_running_loop()
    interrupted = False

    def on_sigint() -> None:
        nonlocal interrupted
        interrupted = True
        work.cancel()

    handled = True
    try:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    except (ValueError, RuntimeError, NotImplementedError):  # not the main thread
        handled = False
    try:
        await work
    except asyncio.CancelledError:
        if not interrupted:
            raise
    finally:
        if handled:
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(signal.SIGINT)
    return interrupted


def _progress(total: int) -> tqdm[NoReturn] | None:
    """tqdm on stderr, only when stderr is a terminal."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm  # imported when there is a bar to draw

    return tqdm(total=total, file=sys.stderr, unit="call", dynamic_ncols=True, leave=False)


def _meta(
    config: Config,
    options: Options,
    prompts: list[prompt_file.Prompt],
    targets: list[EvalTarget],
    finished: int,
    total: int,
    interrupted: bool,
) -> str:
    judge = f", judged by {options.judge}" if options.judge else ""
    stop = f" (interrupted: {finished} of {total} finished)" if interrupted else ""
    return (
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · config {config.source} · "
        f"{len(prompts)} prompts from {options.prompts} × {options.repeat} on "
        f"{len(targets)} targets = {total} calls, {options.concurrency} at once{judge}{stop}"
    )
