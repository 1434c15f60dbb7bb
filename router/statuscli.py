"""`llm-router status`: /status as tables, refreshed in place like `top` with --watch."""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
from typing import Any

import orjson

from router.usagelog import table

_CLEAR = "\x1b[H\x1b[2J"


def fetch(url: str, api_key: str | None) -> dict[str, Any]:
    req = urllib.request.Request(url.rstrip("/") + "/status")
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(req, timeout=5) as resp:
        data: dict[str, Any] = orjson.loads(resp.read())
        return data


def render(data: dict[str, Any], url: str) -> str:
    targets = [
        {
            "target": f"{t['provider']}/{t['model']} ({t['key']})",
            "breaker": t["breaker"]
            + (f" {t['cooldown_seconds']}s" if t["cooldown_seconds"] else ""),
            "tokens": int(t["usage_window"]),
            "in_flight": t["in_flight"],
            "latency_ms": t["latency_ms"],
            "errors": t["errors"],
            "err_rate": f"{100 * t['error_rate']:.1f}%",
            "requests": t["requests"],
            "rpm": _limit(t["rpm"]),
            "tpm": _limit(t["tpm"]),
            "exhausts_in": "-" if t.get("exhausts_in") is None else f"{t['exhausts_in']:g}s",
            "cost_usd": t["cost_usd"],
        }
        for t in data["targets"]
    ]
    lines = [f"llm-router {url}  state: {data['state']}  {time.strftime('%H:%M:%S')}", ""]
    lines.append(table(targets, list(targets[0]) if targets else ["target"]))
    if data["clients"]:
        clients = [
            {
                "client": c["name"],
                "requests": c["requests"],
                "errors": c["errors"],
                "tokens": c["tokens"],
                "cost_usd": c["cost_usd"],
                "budget_left": "-"
                if c["budget_usd"] is None
                else f"{c['budget_left_usd']:.4f}/{c['budget_usd']:g} per {c['budget_period']}",
            }
            for c in data["clients"]
        ]
        lines += ["", table(clients, list(clients[0]))]
    return "\n".join(lines)


def _limit(w: dict[str, Any]) -> str:
    used = int(w["used"])
    return f"{used}/{w['limit']}" if w["limit"] else str(used)


def run_status(url: str, api_key: str | None, watch: float | None) -> int:
    try:
        while True:
            try:
                text = render(fetch(url, api_key), url)
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace")
                text = f"error: {url}/status answered {exc.code}: {detail}"
                if not watch:
                    print(text, file=sys.stderr)
                    return 1
            except (urllib.error.URLError, OSError) as exc:
                text = f"error: cannot reach {url}: {getattr(exc, 'reason', exc)}"
                if not watch:
                    print(text, file=sys.stderr)
                    return 1
            if watch:
                sys.stdout.write(_CLEAR + text + "\n")
                sys.stdout.flush()
                time.sleep(watch)
            else:
                print(text)
                return 0
    except KeyboardInterrupt:
        return 0
