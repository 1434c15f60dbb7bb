"""The `llm-router` command: a thin layer over config and server, flags mirroring config keys."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from router import __version__
from router.config import Config
from router.logs import setup_logging
from router.schema import ConfigError
from router.server import load_config, serve


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-router", description=__doc__)
    parser.add_argument("--version", action="version", version=f"llm-router {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the router")
    s.add_argument("--config", help="config file (YAML or JSON)")
    s.add_argument("--host", help="address to listen on (config: host)")
    s.add_argument("--port", type=int, help="port to listen on (config: port)")
    s.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    s.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop: uvloop when installed (auto), or asyncio's own",
    )
    s.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), help="(config: logging.level)"
    )

    c = sub.add_parser("check", help="validate a config and list each group's targets")
    c.add_argument("config_file", nargs="?", help="config file (same as --config)")
    c.add_argument("--config", dest="config_opt", help="config file (YAML or JSON)")

    st = sub.add_parser("status", help="show a running router's targets and clients")
    st.add_argument("--url", default="http://127.0.0.1:8080", help="the router's base URL")
    st.add_argument(
        "--api-key",
        default=os.environ.get("LLM_ROUTER_API_KEY"),
        help="a client key (default: $LLM_ROUTER_API_KEY)",
    )
    st.add_argument("--watch", type=float, metavar="SECONDS", help="refresh every SECONDS")

    u = sub.add_parser("usage", help="roll up a usage log")
    u.add_argument("--log", required=True, help="the usage_log path (rotated files included)")
    u.add_argument("--by", choices=("day", "model", "key", "client"), default="day")

    e = sub.add_parser("eval", help="run prompts against every target of groups and compare")
    e.add_argument("--config", help="config file (YAML or JSON)")
    e.add_argument("--prompts", required=True, help="JSONL: one prompt a line")
    e.add_argument("--group", action="append", default=[], help="a group to run (repeatable)")
    e.add_argument("--judge", metavar="GROUP", help="a group that scores each answer 0-5")
    e.add_argument("--concurrency", type=_positive, default=4, help="calls at once (4)")
    e.add_argument("--repeat", type=_positive, default=1, help="run each prompt K times")
    e.add_argument("--out", metavar="FILE.jsonl", help="write one line per call")
    e.add_argument("--report", metavar="FILE.html", help="write a self-contained HTML report")
    e.add_argument("--json", action="store_true", help="print only the JSON summary")
    return parser


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def discover(explicit: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """--config, else $LLM_ROUTER_CONFIG, else ./config.yaml, else ./config.json, else None."""
    env = os.environ if env is None else env
    if explicit:
        return explicit
    if env.get("LLM_ROUTER_CONFIG"):
        return env["LLM_ROUTER_CONFIG"]
    for name in ("config.yaml", "config.yml", "config.json"):
        if Path(name).is_file():
            return name
    return None


# The model fields each strategy orders by, shown by `check` beside every candidate.
_SHOWN: dict[str, tuple[str, ...]] = {
    "priority": ("priority",),
    "complexity": ("tier",),
    "lowest-cost": ("prices",),
    "lowest-usage": (),
    "round-robin": (),
    "lowest-latency": (),
    "headroom": (),
}


def describe(config: Config) -> str:
    lines = [f"config: {config.source}", f"listen: {config.host}:{config.port}"]
    lines.append(f"client keys: {', '.join(k.name for k in config.client_keys) or 'none'}")
    for group in config.groups:
        lines.append(f"group {group.name} (strategy: {group.strategy}):")
        shown = _SHOWN.get(group.strategy, ("priority", "tier", "prices"))  # user: all
        for ref in group.models:
            extra = ""
            if "priority" in shown:
                extra += f" priority={ref.priority}"
            if "tier" in shown:
                extra += f" tier={ref.tier}"
            if "prices" in shown:
                extra += f" input_cost={ref.input_cost:g} output_cost={ref.output_cost:g}"
            for key in config.provider(ref.provider).keys:
                lines.append(
                    f"  {ref.provider:<12} {ref.name:<28} key={key.label:<16} "
                    f"weight={ref.weight:g}{extra}"
                )
    return "\n".join(lines)


def warnings(config: Config) -> list[str]:
    """Legal but probably not meant: unpriced models in a lowest-cost group."""
    out = []
    for i, group in enumerate(config.groups):
        if group.strategy != "lowest-cost":
            continue
        for j, ref in enumerate(group.models):
            if not ref.priced:
                out.append(
                    f"groups[{i}].models[{j}]: {ref.provider}/{ref.name} has no input_cost or "
                    "output_cost, so lowest-cost counts it as free"
                )
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "status":
        from router.statuscli import run_status

        return run_status(args.url, args.api_key, args.watch)
    if args.command == "eval":
        from router.eval import Options
        from router.eval import main as run_eval

        options = Options(args.prompts, tuple(args.group), args.judge, args.concurrency,
                          args.repeat, args.out, args.report, args.json)  # fmt: skip
        return run_eval(discover(args.config), options)
    if args.command == "usage":
        from router import usagelog

        if not os.path.exists(args.log):
            print(f"error: usage log {args.log} does not exist", file=sys.stderr)
            return 1
        rows = usagelog.rollup(usagelog.read(args.log), args.by)
        columns = [
            args.by,
            "requests",
            "errors",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "cost_usd",
            "latency_ms",
        ]
        print(usagelog.table(rows, columns) if rows else f"no records in {args.log}")
        return 0
    if args.command == "check":
        path = discover(args.config_file or args.config_opt)
        try:
            config = load_config(path, {})
        except ConfigError as exc:
            for error in exc.errors:
                print(f"error: {error}", file=sys.stderr)
            print(f"{len(exc.errors)} error(s) in {path or 'the demo config'}", file=sys.stderr)
            return 1
        print(describe(config))
        for warning in warnings(config):
            print(f"warning: {warning}")
        print("ok")
        return 0

    path = discover(args.config)
    overrides: dict[str, Any] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    try:
        config = load_config(path, overrides)
        setup_logging(config.logging, args.log_level)
        return serve(
            config, path, overrides, workers=args.workers, level=args.log_level, loop=args.loop
        )
    except ConfigError as exc:
        for error in exc.errors:
            print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as exc:  # most often: the port is taken
        print(f"error: cannot serve: {exc}", file=sys.stderr)
        return 1
