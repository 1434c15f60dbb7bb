"""`make bench-strategies`: what every routing strategy costs per request, against
`lowest-usage`, measured three ways in the same run.

One router process per strategy, each with the same group of four targets (two models,
two keys each) in front of one fast fake upstream; wrk runs take turns router by router,
round after round. Per strategy: requests/s (median of its per-round ratios to
`lowest-usage`), the router process's CPU time per request (from /proc, summed over all
rounds: steadier than requests/s on a shared machine), and, in-process, the microseconds
one request spends in routing (options, pick with the strategy's order, finish).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.__main__ import BODY, HERE, KEY, client_rps, free_port, start, wrk_rps

CONTROL = "lowest-usage (a second router)"  # the noise floor: the same strategy again
STRATEGIES = (
    "lowest-usage",
    CONTROL,
    "round-robin",
    "priority",
    "lowest-cost",
    "lowest-latency",
    "headroom",
    "complexity",
    "examples.policies.cheapest_first:CheapestFirst",
)


def write_config(path: Path, upstream: str, port: int, strategy: str) -> None:
    models = [
        {"provider": "up", "name": "bench-small", "priority": 0, "tier": "fast",
         "input_cost": 0.15, "output_cost": 0.6},
        {"provider": "up", "name": "bench-large", "priority": 1, "tier": "accurate",
         "input_cost": 2.5, "output_cost": 10},
    ]  # fmt: skip
    path.write_text(
        json.dumps(
            {
                "port": port,
                "api_keys": [{"name": "bench", "key": KEY}],
                "groups": [{"name": "bench", "strategy": strategy, "models": models}],
                "providers": [{"name": "up", "base_url": upstream, "api_keys": ["sk-1", "sk-2"]}],
                "logging": {"level": "warning"},
            }
        )
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def routing_cost_us(strategy: str, n: int = 20000) -> float:
    """Microseconds of routing work per request: everything the proxy asks of the balancer
    and the policies (options, pick, the latency sample, finish, reply headers, done)."""
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from router.balancer import Balancer
    from router.config import parse
    from router.payload import Tokens
    from router.policies.route import Policies
    from router.proxy import Call
    from router.state.memory import MemoryState

    path = Path(tempfile.mkdtemp()) / "c.json"
    write_config(path, "http://127.0.0.1:1/v1", 1, strategy)
    tree = json.loads(path.read_text())
    cfg = parse(tree, env={})
    balancer = Balancer(cfg, MemoryState())
    policies = Policies(cfg, balancer)
    targets = balancer.targets("bench")
    body = json.loads(BODY)
    request = make_mocked_request("POST", "/v1/chat/completions", app=web.Application())

    async def run() -> float:
        t0 = time.process_time()
        for _ in range(n):
            route = policies.route(request, body, "/chat/completions", "bench", len(BODY), 530)
            target, _ = await balancer.pick(targets, 530, (), route)
            assert target is not None
            await policies.sample(target, 0.001)
            await balancer.finish(target, 530, 27, False)
            call = Call("bench", "/chat/completions", BODY, body, False, 530, "bench", 0.0)
            call.target, call.tokens, call.started = target, Tokens(20, 7), 1
            route.headers(target)
            await route.served(200, target)
            route.done(200, call, 0.002)
        return (time.process_time() - t0) / n * 1e6

    return asyncio.run(run())


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.strategies")
    ap.add_argument("--seconds", type=int, default=2, help="length of one wrk run")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=10, help="wrk runs per strategy, taking turns")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="llm-router-bench-strategies-"))
    up_port = free_port()
    upstream = f"http://127.0.0.1:{up_port}/v1"
    procs = {"upstream": start([str(HERE / "upstream.py"), str(up_port)])}
    urls: dict[str, str] = {}
    try:
        for strategy in STRATEGIES:
            port = free_port()
            config = tmp / f"{len(urls)}.json"
            write_config(config, upstream, port, strategy.split(" ")[0])
            # Started from the repository's root (make does), so the example policy imports.
            procs[strategy] = start(
                ["-m", "router", "serve", "--config", str(config), "--port", str(port)]
            )
            urls[strategy] = f"http://127.0.0.1:{port}/v1/chat/completions"
        use_wrk = shutil.which("wrk") is not None
        rounds: dict[str, list[float]] = {s: [] for s in STRATEGIES}
        cpu = dict.fromkeys(STRATEGIES, 0.0)
        served = dict.fromkeys(STRATEGIES, 0.0)
        for s in STRATEGIES:  # warm-up
            if use_wrk:
                wrk_rps(urls[s], args.connections, 1, True)
        for n in range(args.rounds):
            # Each round starts one router later, so no strategy always runs first.
            for s in STRATEGIES[n % len(STRATEGIES) :] + STRATEGIES[: n % len(STRATEGIES)]:
                before = cpu_seconds(procs[s].pid)
                if use_wrk:
                    rps = wrk_rps(urls[s], args.connections, args.seconds, True)
                else:
                    rps = asyncio.run(client_rps(urls[s], args.connections, args.seconds, True))
                cpu[s] += cpu_seconds(procs[s].pid) - before
                served[s] += rps * args.seconds
                rounds[s].append(rps)
    finally:
        for p in procs.values():
            p.terminate()
            p.wait(10)

    base = rounds["lowest-usage"]
    base_cpu = cpu["lowest-usage"] / served["lowest-usage"]
    # In-process, the best of 7 interleaved runs: the least disturbed by other processes.
    samples: dict[str, list[float]] = {s: [] for s in STRATEGIES}
    for _ in range(7):
        for s in STRATEGIES:
            samples[s].append(routing_cost_us(s.split(" ")[0], 5000))
    routing = {s: min(v) for s, v in samples.items()}
    print(
        f"load generator: {'wrk' if use_wrk else 'aiohttp client (wrk not found)'}; "
        f"{args.rounds} rounds of {args.seconds} s at {args.connections} connections"
    )
    print("| strategy | requests/s | ratio | CPU per request | ratio | routing work per request |")
    print("|---|---|---|---|---|---|")
    results = {}
    for s in STRATEGIES:
        ratio = statistics.median(o / b for o, b in zip(rounds[s], base, strict=True))
        per = cpu[s] / served[s]
        results[s] = {
            "rps": statistics.median(rounds[s]),
            "ratio": ratio,
            "rounds": rounds[s],
            "cpu_us": per * 1e6,
            "cpu_ratio": per / base_cpu,
            "routing_us": routing[s],
        }
        name = s if s == CONTROL else f"`{s}`"
        if ":" in s:
            name = f"user policy (`{s.rsplit(':', 1)[1]}`)"
        print(
            f"| {name} | {results[s]['rps']:.0f} | {ratio:.2f}x | {per * 1e6:.0f} us | "
            f"{per / base_cpu:.2f}x | {routing[s]:.1f} us |"
        )
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "strategies.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
