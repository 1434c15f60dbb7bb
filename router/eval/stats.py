"""From finished calls to numbers: the per-target summary (`--json`), the table, `--out` lines.

Latency and TTFT percentiles are over the calls that succeeded (a fast failure is not a
fast answer). Tokens/s is the targets' completion tokens over their streaming time
(latency - TTFT), summed over successful calls that reported usage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from router.eval.judge import Judge
from router.eval.runner import EvalTarget, Result
from router.usagelog import table as text_table


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    at = (len(ordered) - 1) * q
    low = math.floor(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def summarise_target(target: EvalTarget, results: Sequence[Result]) -> dict[str, Any]:
    ok = [r.answer for r in results if r.answer.error is None]
    errors = len(results) - len(ok)
    latencies = [a.latency for a in ok if a.latency is not None]
    ttfts = [a.ttft for a in ok if a.ttft is not None]
    streamed = [
        (a.tokens.completion, a.latency - a.ttft)
        for a in ok
        if a.tokens and a.latency is not None and a.ttft is not None and a.latency > a.ttft
    ]
    seconds = sum(s for _, s in streamed)
    with_usage = [r.answer for r in results if r.answer.tokens is not None]
    costs = [a.cost for a in with_usage if a.cost is not None]
    cost = sum(costs) if costs else None
    scores = [r.score for r in results if r.score is not None]
    return {
        "group": target.group,
        "provider": target.provider.name,
        "model": target.model.name,
        "calls": len(results),
        "errors": errors,
        "error_rate": round(errors / len(results), 4) if results else None,
        "latency_ms": {"p50": _ms(percentile(latencies, 0.5)),
                       "p95": _ms(percentile(latencies, 0.95))},
        "ttft_ms": {"p50": _ms(percentile(ttfts, 0.5))},
        "tokens_per_s": round(sum(c for c, _ in streamed) / seconds, 1) if seconds else None,
        "prompt_tokens": sum(a.tokens.prompt for a in with_usage if a.tokens),
        "completion_tokens": sum(a.tokens.completion for a in with_usage if a.tokens),
        "cost_usd": round(cost, 8) if cost is not None else None,
        "cost_per_1k_usd": round(cost / len(results) * 1000, 6) if cost is not None else None,
        "score": round(sum(scores) / len(scores), 3) if scores else None,
        "scored": len(scores),
    }  # fmt: skip


def summarise(
    targets: Sequence[EvalTarget], results: Sequence[Result], judge: Judge | None
) -> dict[str, Any]:
    """The `--json` document of SPEC section 11."""
    by_target: dict[str, list[Result]] = {t.name: [] for t in targets}
    for r in results:
        by_target[r.target.name].append(r)
    return {
        "targets": [summarise_target(t, by_target[t.name]) for t in targets],
        "judge": None
        if judge is None
        else {
            "group": judge.group,
            "calls": judge.calls,
            "cost_usd": round(judge.cost, 8) if judge.cost is not None else None,
        },
    }


def record(r: Result) -> dict[str, Any]:
    """One `--out` line."""
    a = r.answer
    return {
        "target": r.target.name,
        "group": r.target.group,
        "provider": r.target.provider.name,
        "model": r.target.model.name,
        "key": a.key,
        "prompt_id": r.prompt.id,
        "repeat": r.repeat,
        "latency_ms": _ms(a.latency),
        "ttft_ms": _ms(a.ttft),
        "prompt_tokens": a.tokens.prompt if a.tokens else None,
        "completion_tokens": a.tokens.completion if a.tokens else None,
        "cost_usd": round(a.cost, 8) if a.cost is not None else None,
        "score": r.score,
        "reason": r.reason,
        "error": a.error,
        "output": a.text,
    }


def _num(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def usd(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.6f}".rstrip("0").rstrip(".") if v else "0"


def table(summary: dict[str, Any]) -> str:
    rows = []
    for t in summary["targets"]:
        rate = t["error_rate"]
        rows.append(
            {
                "target": f"{t['group']}  {t['provider']}/{t['model']}",
                "calls": str(t["calls"]),
                "errors": str(t["errors"]),
                "error %": "-" if rate is None else f"{rate * 100:.1f}",
                "p50 ms": _num(t["latency_ms"]["p50"], 0),
                "p95 ms": _num(t["latency_ms"]["p95"], 0),
                "ttft ms": _num(t["ttft_ms"]["p50"], 0),
                "tok/s": _num(t["tokens_per_s"]),
                "tokens in/out": f"{t['prompt_tokens']}/{t['completion_tokens']}",
                "cost $": usd(t["cost_usd"]),
                "$/1k calls": usd(t["cost_per_1k_usd"]),
                "score (n)": "-" if t["score"] is None else f"{t['score']:.2f} ({t['scored']})",
            }
        )
    out = text_table(rows, list(rows[0])) if rows else "no targets"
    judge = summary["judge"]
    if judge is not None:
        out += f"\njudge {judge['group']}: {judge['calls']} calls, cost ${usd(judge['cost_usd'])}"
    return out
