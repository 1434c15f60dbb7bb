"""`python -m bench.anthropic`: time to first byte of streamed Anthropic replies through the
router, translated for an OpenAI client and native on /v1/messages, beside an OpenAI stream
passed through, each minus calling the same fake upstream directly (paired samples)."""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from bench.__main__ import HERE, KEY, STREAM_BODY, free_port, paired_latencies, pct, start

CHAT = b'{"model":"claude","messages":[{"role":"user","content":"Say something short."}],' \
       b'"stream":true}'  # fmt: skip
NATIVE = b'{"model":"claude","max_tokens":64,"stream":true,' \
         b'"messages":[{"role":"user","content":"Say something short."}]}'  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.anthropic")
    ap.add_argument("--requests", type=int, default=1000, help="samples per path")
    args = ap.parse_args()
    up_port, router_port = free_port(), free_port()
    up = f"http://127.0.0.1:{up_port}"
    config = Path(tempfile.mkdtemp(prefix="llm-router-bench-")) / "config.json"
    config.write_text(json.dumps({
        "port": router_port,
        "api_keys": [{"name": "bench", "key": KEY}],
        "groups": [{"name": "bench", "models": [{"provider": "up", "name": "bench-model"}]},
                   {"name": "claude", "models": [{"provider": "claude", "name": "claude-b"}]}],
        "providers": [{"name": "up", "base_url": up + "/v1", "api_keys": ["sk-1"]},
                      {"name": "claude", "type": "anthropic", "base_url": up,
                       "api_keys": ["sk-ant-1"]}],
    }))  # fmt: skip
    procs = [
        start([str(HERE / "upstream.py"), str(up_port)]),
        start(["-m", "router", "serve", "--config", str(config), "--port", str(router_port)]),
    ]
    router = f"http://127.0.0.1:{router_port}"
    urls = {
        "openai direct": (up + "/v1/chat/completions", False),
        "openai via router": (router + "/v1/chat/completions", True),
        "anthropic direct": (up + "/v1/messages", False),
        "anthropic translated": (router + "/v1/chat/completions", True),
        "anthropic native": (router + "/v1/messages", True),
    }
    bodies = {"openai direct": STREAM_BODY, "openai via router": STREAM_BODY,
              "anthropic direct": NATIVE, "anthropic translated": CHAT,
              "anthropic native": NATIVE}  # fmt: skip
    try:
        ttfb = asyncio.run(paired_latencies(urls, args.requests, True, bodies))
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
    rows = [
        ("OpenAI stream, passed through", "openai via router", "openai direct"),
        ("Anthropic stream, translated", "anthropic translated", "anthropic direct"),
        ("Anthropic stream, /v1/messages", "anthropic native", "anthropic direct"),
    ]
    print(f"| {'stream TTFB added by the router':<34} | {'p50':>8} | {'p99':>8} |")
    print(f"|{'-' * 36}|{'-' * 10}|{'-' * 10}|")
    for label, ours, direct in rows:
        added = [a - b for a, b in zip(ttfb[ours], ttfb[direct], strict=True)]
        p50, p99 = pct(added, 0.5) * 1000, pct(added, 0.99) * 1000
        print(f"| {label:<34} | {p50:>5.2f} ms | {p99:>5.2f} ms |")
    print(f"(direct upstream TTFB p50: {pct(ttfb['anthropic direct'], 0.5) * 1000:.2f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
