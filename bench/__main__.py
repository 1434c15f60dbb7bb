"""`make bench`: the router against a bare aiohttp proxy, both in front of one fast fake upstream.

Prints requests/s at 32 connections (wrk), added latency p50/p99 at one connection,
streaming time-to-first-byte overhead and peak RSS, each also as a ratio to the bare proxy
measured in the same run. This machine is small and shared: compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench import balance

HERE = Path(__file__).resolve().parent
BODY = b'{"model":"bench","messages":[{"role":"user","content":"Say something short."}]}'
STREAM_BODY = BODY[:-1] + b',"stream":true}'
KEY = "bench-client-key"


def auth_headers(auth: bool) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = f"Bearer {KEY}"
    return headers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(args: list[str], health: str | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 20
    port = int(args[args.index("--port") + 1]) if "--port" in args else int(args[1])
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"could not start {args}")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def varied_body(run: str, n: int) -> bytes:
    """A body no earlier request sent: every one is a cache miss."""
    return BODY.replace(b"short.", f"short. {run}-{n}".encode())


def wrk_start(
    url: str, connections: int, seconds: int, auth: bool, vary: bool = False, extra: str = ""
) -> tuple[subprocess.Popen[str], str]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "POST"\n')
        script.write(f"wrk.body = '{BODY.decode()}'\n")
        script.write('wrk.headers["Content-Type"] = "application/json"\n')
        if extra:
            name, value = extra.split(": ")
            script.write(f'wrk.headers["{name}"] = "{value}"\n')
        if auth:
            script.write(f'wrk.headers["Authorization"] = "Bearer {KEY}"\n')
        if vary:
            head, tail = varied_body(os.urandom(6).hex(), 0).decode().rsplit("-0", 1)
            script.write(
                f"local n = 0\nrequest = function()\n  n = n + 1\n"
                f"  return wrk.format(nil, nil, nil, '{head}-' .. n .. '{tail}')\nend\n"
            )
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", script.name, url]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True), script.name


def wrk_rps(
    url: str, connections: int, seconds: int, auth: bool, vary: bool = False, extra: str = ""
) -> float:
    proc, script = wrk_start(url, connections, seconds, auth, vary, extra)
    out, _ = proc.communicate()
    os.unlink(script)
    if proc.returncode or "Non-2xx" in out:
        raise SystemExit(f"errors under load:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def client_rps(
    url: str, connections: int, seconds: int, auth: bool, vary: bool = False, extra: str = ""
) -> float:
    """Fallback load generator when wrk is missing (it costs more CPU than wrk)."""
    headers = {
        "Content-Type": "application/json",
        **({"Authorization": f"Bearer {KEY}"} if auth else {}),
        **(dict([extra.split(": ")]) if extra else {}),
    }
    done = 0
    run = os.urandom(6).hex()
    stop = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as s:

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < stop:
                body = varied_body(run, done) if vary else BODY
                async with s.post(url, data=body, headers=headers) as r:
                    await r.read()
                    assert r.status == 200
                    done += 1

        await asyncio.gather(*(worker() for _ in range(connections)))
    return done / seconds


async def paired_latencies(
    urls: dict[str, tuple[str, bool]],
    n: int,
    stream: bool,
    bodies: dict[str, bytes] | None = None,
) -> dict[str, list[float]]:
    """Seconds per request (to the first body byte, for streams), one connection per target.

    The targets take turns request by request, so a noisy moment on this shared machine
    hits all of them alike instead of skewing one.
    """
    out: dict[str, list[float]] = {name: [] for name in urls}
    sessions = {
        name: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) for name in urls
    }
    try:
        for i in range(n + 50):
            for name, (url, auth) in urls.items():
                t0 = time.perf_counter()
                body = (bodies or {}).get(name) or (STREAM_BODY if stream else BODY)
                async with sessions[name].post(url, data=body, headers=auth_headers(auth)) as r:
                    if stream:
                        await r.content.readany()
                        t1 = time.perf_counter()
                        await r.read()
                    else:
                        await r.read()
                        t1 = time.perf_counter()
                    assert r.status == 200, await r.text()
                if i >= 50:  # warm-up
                    out[name].append(t1 - t0)
    finally:
        for session in sessions.values():
            await session.close()
    return out


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def write_config(
    path: Path,
    upstream: str,
    port: int,
    log_level: str,
    redis_url: str | None = None,
    usage_log: str | None = None,
    cache: str = "none",
) -> None:
    state = {"backend": "redis", "redis_url": redis_url} if redis_url else {"backend": "memory"}
    path.write_text(
        json.dumps(
            {
                "port": port,
                "usage_log": usage_log,
                "state": state,
                "cache": {"backend": cache},
                "api_keys": [{"name": "bench", "key": KEY}],
                "groups": [
                    {"name": "bench", "models": [{"provider": "up", "name": "bench-model"}]}
                ],
                "providers": [{"name": "up", "base_url": upstream, "api_keys": ["sk-1", "sk-2"]}],
                "logging": {"level": log_level},
            }
        )
    )


def metrics_cost_us(n: int = 20000) -> float:
    """CPU time of the metrics calls one request makes, in microseconds."""
    from router.balancer import Balancer
    from router.config import parse
    from router.metrics import Metrics
    from router.state.memory import MemoryState

    cfg = parse(
        {
            "groups": [{"name": "g", "models": [{"provider": "p", "name": "m"}]}],
            "providers": [{"name": "p", "base_url": "http://127.0.0.1:1/v1", "api_keys": ["k"]}],
        },
        env={},
    )
    target = Balancer(cfg, MemoryState()).targets("g")[0]
    m = Metrics()
    t0 = time.perf_counter()
    for _ in range(n):
        m.attempt_started(target)
        m.attempt_done(target, False, 0.01, None)
        m.tokens(target, "client", 20, 7, 0.0001)
        m.request_done("g", target, "client", 200, 0.012, None, 1)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--seconds", type=int, default=3, help="length of one wrk run")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--requests", type=int, default=1000, help="latency samples per target")
    ap.add_argument("--rounds", type=int, default=5, help="wrk runs per target, taking turns")
    ap.add_argument("--log-level", default="info", help="router log level (access log at info)")
    ap.add_argument("--no-cache", action="store_true", help="skip the response cache scenarios")
    ap.add_argument(
        "--observability",
        action="store_true",
        help="also measure the router without access log and with a usage log",
    )
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="llm-router-bench-"))
    up_port, bare_port, router_port = free_port(), free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}/v1"
    write_config(tmp / "config.json", upstream, router_port, args.log_level)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    procs["upstream"] = start([str(HERE / "upstream.py"), str(up_port)])
    procs["bare"] = start(
        [str(HERE / "bare_proxy.py"), str(bare_port), f"http://127.0.0.1:{up_port}"]
    )
    procs["router"] = start(
        ["-m", "router", "serve", "--config", str(tmp / "config.json"), "--port", str(router_port)]
    )
    urls = {
        "direct": (f"http://127.0.0.1:{up_port}/v1/chat/completions", False),
        "bare": (f"http://127.0.0.1:{bare_port}/v1/chat/completions", False),
        "router": (f"http://127.0.0.1:{router_port}/v1/chat/completions", True),
    }
    proxies = ["bare", "router"]
    # The router runs on uvloop when installed (--loop auto); the same on asyncio's loop:
    port = free_port()
    cmd = ["-m", "router", "serve", "--config", str(tmp / "config.json"), "--loop", "asyncio"]
    procs["router-asyncio"] = start([*cmd, "--port", str(port)])
    urls["router-asyncio"] = (f"http://127.0.0.1:{port}/v1/chat/completions", True)
    proxies.append("router-asyncio")
    if args.observability:  # the same router without its access log, and with a usage log
        for name, level, log in (
            ("router-quiet", "warning", None),
            ("router-usage-log", args.log_level, str(tmp / "usage.jsonl")),
        ):
            port = free_port()
            write_config(tmp / f"{name}.json", upstream, port, level, usage_log=log)
            cmd = ["-m", "router", "serve", "--config", str(tmp / f"{name}.json")]
            procs[name] = start([*cmd, "--port", str(port)])
            urls[name] = (f"http://127.0.0.1:{port}/v1/chat/completions", True)
            proxies.append(name)
    varied: set[str] = set()  # rps only, each request a new body (every one a cache miss)
    extra: dict[str, str] = {}  # request headers of a variant
    if not args.no_cache:
        # The router with a memory cache: the bench body again and again is a hit; new
        # bodies are misses, measured against the router without a cache on new bodies,
        # and against the same process told to bypass its cache (no other process in the
        # comparison: on this shared machine two processes of the same program differ by
        # up to 10% in CPU per request).
        for name, cache in (
            ("router-cache-hit", "memory"),
            ("router-cache-miss", "memory"),
            ("router-new-bodies", "none"),
        ):
            port = free_port()
            write_config(tmp / f"{name}.json", upstream, port, args.log_level, cache=cache)
            cmd = ["-m", "router", "serve", "--config", str(tmp / f"{name}.json")]
            procs[name] = start([*cmd, "--port", str(port)])
            urls[name] = (f"http://127.0.0.1:{port}/v1/chat/completions", True)
            proxies.append(name)
        procs["router-cache-bypass"] = procs["router-cache-miss"]
        urls["router-cache-bypass"] = urls["router-cache-miss"]
        extra["router-cache-bypass"] = "x-llm-router-cache: bypass"
        proxies.append("router-cache-bypass")
        varied |= {"router-cache-miss", "router-new-bodies", "router-cache-bypass"}
    redis_bin = shutil.which("redis-server")
    if redis_bin:  # the same router with its state in Redis, measured in the same run
        redis_port, rr_port = free_port(), free_port()
        procs["redis"] = subprocess.Popen(
            [redis_bin, "--port", str(redis_port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        time.sleep(0.3)
        write_config(
            tmp / "redis.json",
            upstream,
            rr_port,
            args.log_level,
            f"redis://127.0.0.1:{redis_port}/0",
        )
        cmd = ["-m", "router", "serve", "--config", str(tmp / "redis.json")]
        procs["router-redis"] = start([*cmd, "--port", str(rr_port)])
        urls["router-redis"] = (f"http://127.0.0.1:{rr_port}/v1/chat/completions", True)
        proxies.append("router-redis")
    use_wrk = shutil.which("wrk") is not None
    results: dict[str, dict[str, float]] = {k: {} for k in urls}
    rounds: dict[str, list[float]] = {k: [] for k in proxies}
    cpu_us: dict[str, list[float]] = {k: [] for k in proxies}
    try:
        asyncio.run(paired_latencies({k: urls[k] for k in proxies}, 150, False))  # warm up
        for _ in range(args.rounds):  # short runs, taking turns: ratios per round
            for name in proxies:
                url, auth = urls[name]
                cpu = cpu_seconds(procs[name].pid)
                vary, more = name in varied, extra.get(name, "")
                if use_wrk:
                    rps = wrk_rps(url, args.connections, args.seconds, auth, vary, more)
                else:
                    rps = asyncio.run(
                        client_rps(url, args.connections, args.seconds, auth, vary, more)
                    )
                rounds[name].append(rps)
                # CPU per request is steadier than requests/s on a busy machine.
                cpu_us[name].append(
                    (cpu_seconds(procs[name].pid) - cpu) / (rps * args.seconds) * 1e6
                )
        for name in proxies:
            results[name]["rps"] = statistics.median(rounds[name])
            results[name]["cpu_us"] = statistics.median(cpu_us[name])
            results[name]["ratio"] = statistics.median(
                ours / bare for ours, bare in zip(rounds[name], rounds["bare"], strict=True)
            )
        timed = {k: v for k, v in urls.items() if k not in varied}
        lat = asyncio.run(paired_latencies(timed, args.requests, False))
        ttfb = asyncio.run(paired_latencies(timed, args.requests // 2, True))
        for name in timed:
            results[name].update(
                p50=pct(lat[name], 0.5), p99=pct(lat[name], 0.99), ttfb=pct(ttfb[name], 0.5)
            )
        for name in proxies:
            results[name]["rss"] = peak_rss_mib(procs[name].pid)
        if "redis" in procs:  # two more routers on the same Redis: how evenly they share
            results["balance"] = {"light": balance.light_share(
                tmp, upstream, f"redis://127.0.0.1:{redis_port}/0", KEY, start, free_port
            )}  # fmt: skip
    finally:
        for p in set(procs.values()):
            p.terminate()
            p.wait(10)

    d, b, r = results["direct"], results["bare"], results["router"]

    def added(key: str) -> tuple[str, str, str]:
        bare, ours = (b[key] - d[key]) * 1000, (r[key] - d[key]) * 1000
        return f"{bare:.2f} ms", f"{ours:.2f} ms", f"{ours / max(bare, 1e-6):.2f}x"

    rows = [
        (
            f"requests/s at {args.connections} connections",
            f"{b['rps']:.0f}",
            f"{r['rps']:.0f}",
            f"{r['ratio']:.2f}x",
        ),
        ("added latency p50 (1 conn)", *added("p50")),
        ("added latency p99 (1 conn)", *added("p99")),
        ("stream TTFB overhead p50", *added("ttfb")),
        ("peak RSS", f"{b['rss']:.1f} MiB", f"{r['rss']:.1f} MiB", f"{r['rss'] / b['rss']:.2f}x"),
    ]
    ms = 1000
    print(
        f"load generator: {'wrk' if use_wrk else 'aiohttp client (wrk not found)'}; "
        f"direct upstream p50 {d['p50'] * ms:.2f} ms"
    )
    print(f"| {'measure':<30} | {'bare proxy':>12} | {'llm-router':>12} | {'ratio':>7} |")
    print(f"|{'-' * 32}|{'-' * 14}|{'-' * 14}|{'-' * 9}|")
    for row in rows:
        print(f"| {row[0]:<30} | {row[1]:>12} | {row[2]:>12} | {row[3]:>7} |")
    ra = results["router-asyncio"]
    print(
        f"\nrouter on asyncio's own loop (--loop asyncio), same run: {ra['rps']:.0f} requests/s "
        f"({ra['ratio']:.2f}x the bare proxy), added p50 "
        f"{(ra['p50'] - d['p50']) * 1000:.2f} ms"
    )
    if "router-redis" in results:
        rr = results["router-redis"]
        # Redis against memory round by round: the two took turns in each round.
        rr["vs_memory"] = statistics.median(
            red / mem for red, mem in zip(rounds["router-redis"], rounds["router"], strict=True)
        )
        print("\nstate backend, same run:")
        print(f"| {'measure':<30} | {'memory':>12} | {'redis':>12} | {'ratio':>7} |")
        print(f"|{'-' * 32}|{'-' * 14}|{'-' * 14}|{'-' * 9}|")
        print(
            f"| {f'requests/s at {args.connections} connections':<30} | {r['rps']:>12.0f} |"
            f" {rr['rps']:>12.0f} | {rr['vs_memory']:>6.2f}x |"
        )
        for key, label in (
            ("p50", "added latency p50 (1 conn)"),
            ("p99", "added latency p99 (1 conn)"),
        ):
            mem, red = (r[key] - d[key]) * 1000, (rr[key] - d[key]) * 1000
            print(
                f"| {label:<30} | {mem:>9.2f} ms | {red:>9.2f} ms | {red / max(mem, 1e-6):>6.2f}x |"
            )
        light = results["balance"]["light"]
        print(
            f"balance: two routers on one Redis, weights 1:3, {balance.REQUESTS} requests: the "
            f"light target took {light:.3f} (configured 0.750, error {abs(light - 0.75):.3f})"
        )
    if not args.no_cache:
        names = (
            "router-cache-hit",
            "router-cache-miss",
            "router-new-bodies",
            "router-cache-bypass",
        )
        hit, miss, fresh, bypass = (results[k] for k in names)
        print(
            f"\nresponse cache (memory), same run (requests/s at {args.connections} connections):"
        )
        print(
            f"  every request a hit: {hit['rps']:.0f} ({hit['ratio']:.2f}x the bare proxy, "
            f"{hit['ratio'] / r['ratio']:.2f}x the router without a cache); added p50 "
            f"{(hit['p50'] - d['p50']) * 1000:.2f} ms, stream TTFB "
            f"{(hit['ttfb'] - d['ttfb']) * 1000:.2f} ms"
        )

        def per_round(ours: str, base: str) -> float:
            return statistics.median(a / b for a, b in zip(rounds[ours], rounds[base], strict=True))

        print(
            f"  every request a miss (new bodies): {miss['rps']:.0f}; the same process with "
            f"bypass: {bypass['rps']:.0f} "
            f"({per_round('router-cache-miss', 'router-cache-bypass'):.2f}x); another "
            f"router without a cache: {fresh['rps']:.0f} "
            f"({per_round('router-cache-miss', 'router-new-bodies'):.2f}x)"
        )
        print(
            f"  router CPU per request: no cache {r['cpu_us']:.0f} us, hit {hit['cpu_us']:.0f} "
            f"us ({hit['cpu_us'] / r['cpu_us']:.2f}x); new bodies: miss {miss['cpu_us']:.0f} "
            f"us, bypass {bypass['cpu_us']:.0f} us ({miss['cpu_us'] / bypass['cpu_us']:.2f}x), "
            f"no cache {fresh['cpu_us']:.0f} us ({miss['cpu_us'] / fresh['cpu_us']:.2f}x)"
        )
    if args.observability:
        q, u = results["router-quiet"], results["router-usage-log"]
        print(f"\nobservability, same run (requests/s at {args.connections} connections):")
        print(
            f"  no access log: {q['rps']:.0f}; access log (default): {r['rps']:.0f} "
            f"({r['ratio'] / q['ratio']:.2f}x); access + usage log: {u['rps']:.0f} "
            f"({u['ratio'] / q['ratio']:.2f}x)"
        )
        print(
            f"  metrics and /status bookkeeping: {metrics_cost_us():.1f} us per request "
            "(measured in-process)"
        )
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
