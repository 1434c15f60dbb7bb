"""Running the app: one process or N on one port, SIGTERM drain, SIGHUP reload."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from router.app import build_runtime, create_app
from router.config import Config, load
from router.demo import demo_config
from router.keys import HANDLERS, LIVE, STATE
from router.logs import setup_logging
from router.protocol import Runner
from router.schema import ConfigError
from router.state import StateBackend

log = logging.getLogger("router")
# Settings a running server cannot change in place; a reload that changes them says so.
_FIXED = (
    "host",
    "port",
    "state",
    "cache",
    "cors",
    "logging",
    "usage_log",
    "usage_window",
    "shutdown_timeout",
    "max_reply_bytes",
    "trust_env",
    "read_timeout",
)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_config(path: str | None, overrides: dict[str, Any]) -> Config:
    config = load(path) if path else demo_config()
    return dataclasses.replace(config, **overrides) if overrides else config


def check_exposure(config: Config) -> None:
    if config.auth_required:
        return
    if not is_loopback(config.host):
        raise ConfigError(
            [
                f"api_key: required when listening on {config.host}; set api_key or "
                "api_keys (or LLM_ROUTER_API_KEY for the demo config)"
            ]
        )
    log.warning(
        "NO CLIENT KEY IS SET: anyone who can reach %s:%d may use this router. "
        "Set api_key (or LLM_ROUTER_API_KEY) to require one.",
        config.host,
        config.port,
    )


async def drain(runner: web.AppRunner, handlers: set[asyncio.Task[Any]], total: float) -> None:
    """Stop accepting, let open requests finish, cut the rest; all within `total` seconds.

    aiohttp's own shutdown waits its timeout twice (and rounds it up past 5 s), so the
    waiting is done here, on the handlers the middleware keeps: what is still open near the
    end is cancelled, accounts itself (499) and ends its stream with an error event.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + total
    for site in list(runner.sites):
        await site.stop()
    if runner.server is not None:
        runner.server.pre_shutdown()  # idle keep-alive connections close; busy ones finish
    cut_at = deadline - min(1.0, total * 0.2)  # leave time to cancel, account and close
    while handlers and loop.time() < cut_at:
        await asyncio.wait(set(handlers), timeout=cut_at - loop.time())
    if handlers:
        log.warning("drain: cutting %d open request(s)", len(handlers))
        for task in handlers:
            task.cancel()
        await asyncio.wait(set(handlers), timeout=max(0.05, deadline - loop.time() - 0.2))


async def run(
    config: Config, path: str | None, overrides: dict[str, Any], reuse_port: bool
) -> None:
    app = create_app(config)
    runner = Runner(
        app,
        read_timeout=config.read_timeout,
        handler_cancellation=True,  # a client that hangs up cancels its upstream call
        access_log=None,  # ours is written by the middleware
        shutdown_timeout=0.2,  # by then drain() has let every handler finish or cut it
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, reuse_port=reuse_port or None)
    await site.start()
    log.info("llm-router serving %s on http://%s:%d", config.source, config.host, config.port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload, app, path, overrides)
    try:
        await stop.wait()
        log.info("draining in-flight requests for up to %gs", config.shutdown_timeout)
        await drain(runner, app[HANDLERS], config.shutdown_timeout)
    finally:
        await runner.cleanup()
    log.info("stopped")


def reload(app: web.Application, path: str | None, overrides: dict[str, Any]) -> None:
    live = app[LIVE]
    try:
        new = load_config(path, overrides)
    except ConfigError as exc:
        log.error("reload refused, still serving the old config:\n  %s", "\n  ".join(exc.errors))
        return
    old = live.runtime.config
    try:  # what serve would refuse at start, a reload refuses too
        check_exposure(dataclasses.replace(new, host=old.host))
    except ConfigError as exc:
        log.error("reload refused, still serving the old config:\n  %s", "\n  ".join(exc.errors))
        return
    for name in _FIXED:
        if getattr(old, name) != getattr(new, name):
            log.warning("reload: %s changed; it takes effect only after a restart", name)
    rotated = _rotated(old, new)
    live.runtime = build_runtime(new, app[STATE])
    if rotated:
        # A key quarantined for a 401 under its old secret gets its new one tried at once.
        ids = [t.id for ts in live.runtime.balancer.groups.values() for t in ts
               if (t.provider.name, t.key.label) in rotated]  # fmt: skip
        task = asyncio.get_running_loop().create_task(_uncool(app[STATE], ids))
        live.chores.add(task)
        task.add_done_callback(live.chores.discard)
    log.info("reloaded %s: %d groups", new.source, len(new.groups))


def _rotated(old: Config, new: Config) -> set[tuple[str, str]]:
    """(provider, key label) pairs whose secret a reload changed."""
    before = {(p.name, k.label): k.secret for p in old.providers for k in p.keys}
    return {
        (p.name, k.label)
        for p in new.providers
        for k in p.keys
        if (p.name, k.label) in before and before[(p.name, k.label)] != k.secret
    }


async def _uncool(state: StateBackend, ids: list[str]) -> None:
    for tid in ids:
        await state.uncool(tid)


def loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when asked, or for "auto" when it is installed; else asyncio's own loop."""
    if loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if loop == "uvloop":
            raise ConfigError(["--loop uvloop: uvloop is not installed"]) from None
        return None
    return uvloop.new_event_loop


def _run(coro: Coroutine[Any, Any, None], loop: str) -> None:
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        runner.run(coro)


def _worker(
    config: Config, path: str | None, overrides: dict[str, Any], level: str | None, loop: str
) -> None:
    setup_logging(config.logging, level)
    _run(run(config, path, overrides, reuse_port=True), loop)


def serve(
    config: Config,
    path: str | None,
    overrides: dict[str, Any],
    workers: int = 1,
    level: str | None = None,
    loop: str = "auto",
) -> int:
    check_exposure(config)
    if workers <= 1:
        _run(run(config, path, overrides, reuse_port=False), loop)
        return 0
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(config, path, overrides, level, loop), name=f"worker-{i}")
        for i in range(workers)
    ]
    for p in procs:
        p.start()

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.pid and p.is_alive():
                os.kill(p.pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    for p in procs:
        p.join()
    return max((p.exitcode or 0) for p in procs)
