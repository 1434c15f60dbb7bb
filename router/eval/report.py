"""`--report`: one self-contained HTML page with the charts drawn here as inline SVG.

Nothing is loaded from the network (a Content-Security-Policy says so to the browser);
the only script sorts the table.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from router.eval.runner import Result
from router.eval.stats import percentile, usd

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04",
           "#db2777", "#4b5563", "#65a30d")  # fmt: skip
_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 640, 340, 64, 24, 16, 48


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (1, 2, 5 x a power of ten apart)."""
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if raw <= step * m)
    first = math.floor(low / step) * step
    ticks = []
    v = first
    while v < high + step * 0.999:
        ticks.append(round(v, 12))
        v += step
    return ticks


class _Axis:
    def __init__(self, ticks: list[float], start: float, end: float) -> None:
        self.ticks, self.start, self.end = ticks, start, end
        self.low, self.high = ticks[0], ticks[-1]

    def __call__(self, v: float) -> float:
        return self.start + (v - self.low) / (self.high - self.low) * (self.end - self.start)


def _label(v: float) -> str:
    return f"{v:,.6g}"


def _el(name: str, text: str = "", **attrs: object) -> str:
    """An SVG element; `class_` and `text_anchor` style names become `class`, `text-anchor`."""
    fields = " ".join(
        f'{k.rstrip("_").replace("_", "-")}="{f"{v:.1f}" if isinstance(v, float) else _e(v)}"'
        for k, v in attrs.items()
    )
    return f"<{name} {fields}>{text}</{name}>"


def _frame(x: _Axis, y: _Axis, bottom: float, x_title: str, y_title: str | None) -> list[str]:
    """Grid lines, tick labels and axis titles; no y ticks without a y title."""
    out = []
    for t in x.ticks:
        out.append(_el("line", class_="grid", x1=x(t), y1=y.end, x2=x(t), y2=bottom))
        out.append(_el("text", _label(t), x=x(t), y=bottom + 16, text_anchor="middle"))
    if y_title is not None:
        for t in y.ticks:
            out.append(_el("line", class_="grid", x1=x.start, y1=y(t), x2=x.end, y2=y(t)))
            out.append(_el("text", _label(t), x=x.start - 6, y=y(t) + 4, text_anchor="end"))
        middle = (y.start + y.end) / 2
        out.append(_el("text", _e(y_title), class_="title", text_anchor="middle",
                       transform=f"translate(14 {middle:.1f}) rotate(-90)"))  # fmt: skip
    out.append(_el("text", _e(x_title), class_="title", x=(x.start + x.end) / 2,
                   y=bottom + 32.0, text_anchor="middle"))  # fmt: skip
    return out


def scatter(summary: dict[str, Any]) -> str:
    """Cost per 1k calls against mean score, or against latency p50 when nothing was scored."""
    rows = summary["targets"]
    scored = any(t["score"] is not None for t in rows)
    points = []
    for i, t in enumerate(rows):
        yv = t["score"] if scored else t["latency_ms"]["p50"]
        if yv is not None:
            points.append((i, t, t["cost_per_1k_usd"] or 0.0, float(yv)))
    y_title = "mean judge score (0-5)" if scored else "latency p50 (ms)"
    x = _Axis(nice_ticks(0.0, 1.05 * max((p[2] for p in points), default=0.0)), PAD_L, W - PAD_R)
    y_ticks = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0] if scored else nice_ticks(
        0.0, 1.05 * max((p[3] for p in points), default=0.0))  # fmt: skip
    y = _Axis(y_ticks, H - PAD_B, PAD_T)
    parts = _frame(x, y, H - PAD_B, "cost per 1k calls (USD)", y_title)
    for i, t, xv, yv in points:
        name = f"{t['provider']}/{t['model']}"
        tip = f"{name}: ${usd(t['cost_per_1k_usd'])} per 1k calls, {y_title} {yv:g}"
        parts.append(_el("circle", f"<title>{_e(tip)}</title>", class_="point", cx=x(xv),
                         cy=y(yv), r=7, fill=PALETTE[i % len(PALETTE)]))  # fmt: skip
        right = x(xv) > (x.start + x.end) / 2  # label on the side with room for it
        parts.append(_el("text", _e(name), x=x(xv) + (-10 if right else 10), y=y(yv) - 8,
                         text_anchor="end" if right else "start"))  # fmt: skip
    if not points:
        parts.append(_el("text", "no finished calls", x=W / 2, y=H / 2, text_anchor="middle"))
    title = "Cost versus quality" if scored else "Cost versus latency (no judge scores)"
    return _svg("scatter", title, parts)


def distributions(summary: dict[str, Any], results: Sequence[Result]) -> str:
    """Per target: every successful call's latency as a dot, the p25-p75 box, p50 and p95."""
    names = [f"{t['provider']}/{t['model']}" for t in summary["targets"]]
    lat: dict[str, list[float]] = {n: [] for n in names}
    for r in results:
        if r.answer.error is None and r.answer.latency is not None:
            lat[r.target.name].append(r.answer.latency * 1000)
    top = max((v for vs in lat.values() for v in vs), default=0.0)
    band, left = 44, 170
    bottom = PAD_T + band * max(len(names), 1)
    x = _Axis(nice_ticks(0.0, top), left, W - PAD_R)
    parts = _frame(x, _Axis([0.0], bottom, PAD_T), bottom, "latency, sent to end of stream (ms)",
                   None)  # fmt: skip
    for i, name in enumerate(names):
        color = PALETTE[i % len(PALETTE)]
        mid = PAD_T + band * i + band / 2
        parts.append(_el("text", _e(name), x=left - 8, y=mid + 4, text_anchor="end"))
        values = sorted(lat[name])
        if not values:
            parts.append(_el("text", "no successful call", x=left + 4.0, y=mid + 4))
            continue
        q = [percentile(values, p) or 0.0 for p in (0.25, 0.5, 0.75, 0.95)]
        parts.append(_el("rect", class_="box", x=x(q[0]), y=mid - 12, height=24,
                         width=max(x(q[2]) - x(q[0]), 1.0), stroke=color))  # fmt: skip
        for p, label in ((q[1], "p50"), (q[3], "p95")):
            parts.append(_el("line", f"<title>{label} {p:.0f} ms</title>", class_=label,
                             x1=x(p), y1=mid - 14, x2=x(p), y2=mid + 14, stroke=color))  # fmt: skip
        for n, v in enumerate(values):
            jitter = ((n * 7919) % 17 - 8) * 1.1  # spread equal values apart, reproducibly
            parts.append(_el("circle", f"<title>{v:.0f} ms</title>", class_="call", cx=x(v),
                             cy=mid + jitter, r=2.5, fill=color))  # fmt: skip
    return _svg("latency", "Latency distributions", parts, bottom + PAD_B)


def _svg(ident: str, title: str, parts: list[str], height: int = H) -> str:
    body = "\n".join(parts)
    return (
        f"<figure><figcaption>{_e(title)}</figcaption>"
        f'<svg id="{ident}" viewBox="0 0 {W} {height}" width="{W}" height="{height}" '
        f'role="img" aria-label="{_e(title)}">{body}</svg></figure>'
    )


COLUMNS = (
    ("target", "target"), ("calls", "calls"), ("errors", "errors"), ("error %", "error_rate"),
    ("p50 ms", "p50"), ("p95 ms", "p95"), ("TTFT p50 ms", "ttft"), ("tokens/s", "tokens_per_s"),
    ("prompt tokens", "prompt_tokens"), ("completion tokens", "completion_tokens"),
    ("cost $", "cost_usd"), ("$ per 1k calls", "cost_per_1k_usd"), ("score", "score"),
    ("scored", "scored"),
)  # fmt: skip


def _cells(t: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """column -> (shown text, sort value)."""
    rate = t["error_rate"]

    def num(v: Any, fmt: str = "{:,.1f}") -> tuple[str, Any]:
        return ("-" if v is None else fmt.format(v), "" if v is None else v)

    return {
        "target": (f"{t['group']} {t['provider']}/{t['model']}", f"{t['provider']}/{t['model']}"),
        "calls": num(t["calls"], "{}"),
        "errors": num(t["errors"], "{}"),
        "error_rate": ("-" if rate is None else f"{rate * 100:.1f}", "" if rate is None else rate),
        "p50": num(t["latency_ms"]["p50"], "{:,.0f}"),
        "p95": num(t["latency_ms"]["p95"], "{:,.0f}"),
        "ttft": num(t["ttft_ms"]["p50"], "{:,.0f}"),
        "tokens_per_s": num(t["tokens_per_s"]),
        "prompt_tokens": num(t["prompt_tokens"], "{}"),
        "completion_tokens": num(t["completion_tokens"], "{}"),
        "cost_usd": (usd(t["cost_usd"]), "" if t["cost_usd"] is None else t["cost_usd"]),
        "cost_per_1k_usd": (usd(t["cost_per_1k_usd"]),
                            "" if t["cost_per_1k_usd"] is None else t["cost_per_1k_usd"]),
        "score": num(t["score"], "{:.2f}"),
        "scored": num(t["scored"], "{}"),
    }  # fmt: skip


def _table(summary: dict[str, Any]) -> str:
    head = "".join(f'<th data-col="{i}">{_e(label)}</th>' for i, (label, _) in enumerate(COLUMNS))
    rows = []
    for t in summary["targets"]:
        cells = _cells(t)
        rows.append("<tr>" + "".join(
            f'<td data-sort="{_e(cells[key][1])}">{_e(cells[key][0])}</td>' for _, key in COLUMNS
        ) + "</tr>")  # fmt: skip
    body = "".join(rows)
    return f'<table id="summary"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _errors(results: Sequence[Result]) -> str:
    counts: dict[tuple[str, str], int] = {}
    for r in results:
        if r.answer.error is not None:
            key = (r.target.name, r.answer.error)
            counts[key] = counts.get(key, 0) + 1
    if not counts:
        return ""
    items = "".join(
        f"<li><b>{_e(name)}</b> ×{n}: {_e(error)}</li>"
        for (name, error), n in sorted(counts.items(), key=lambda kv: -kv[1])[:50]
    )
    return f'<h2>Errors</h2><ul id="errors">{items}</ul>'


SCRIPT = """
document.querySelectorAll("#summary th").forEach((th) => {
  th.addEventListener("click", () => {
    const col = Number(th.dataset.col), body = th.closest("table").tBodies[0];
    const down = th.dataset.dir !== "asc";
    th.dataset.dir = down ? "asc" : "desc";
    const key = (tr) => {
      const v = tr.cells[col].dataset.sort;
      return v === "" || isNaN(Number(v)) ? v : Number(v);
    };
    const rows = Array.from(body.rows).sort((a, b) => {
      const x = key(a), y = key(b);
      return (x < y ? -1 : x > y ? 1 : 0) * (down ? 1 : -1);
    });
    rows.forEach((tr) => body.appendChild(tr));
  });
});
"""

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #111827; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 24px 0 8px; }
.meta { color: #4b5563; margin-bottom: 16px; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
figure { margin: 0; border: 1px solid #e5e7eb; border-radius: 6px; padding: 8px; }
figcaption { font-weight: 600; margin-bottom: 4px; }
svg text { font-size: 11px; fill: #374151; } svg text.title { font-size: 12px; fill: #111827; }
.grid { stroke: #e5e7eb; } .box { fill: none; stroke-width: 1.5; }
.p50 { stroke-width: 3; } .p95 { stroke-width: 1.5; stroke-dasharray: 3 2; }
.call { opacity: 0.6; }
table { border-collapse: collapse; margin-top: 8px; }
th, td { border-bottom: 1px solid #e5e7eb; padding: 4px 10px; text-align: right; }
th { cursor: pointer; background: #f9fafb; user-select: none; }
th:first-child, td:first-child { text-align: left; white-space: nowrap; }
"""


def render(summary: dict[str, Any], results: Sequence[Result], meta: str) -> str:
    judge = summary["judge"]
    judged = (
        f"<p>Judge <b>{_e(judge['group'])}</b>: {judge['calls']} calls, "
        f"cost ${_e(usd(judge['cost_usd']))}.</p>"
        if judge
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<title>llm-router eval</title><style>{STYLE}</style></head>
<body>
<h1>llm-router eval</h1>
<div class="meta">{_e(meta)}</div>
<div class="charts">{scatter(summary)}{distributions(summary, results)}</div>
<h2>Targets</h2>
{_table(summary)}
<p class="meta">Latency: sent to end of stream; TTFT: sent to first content; both over
successful calls. Tokens/s: completion tokens over (latency - TTFT). Click a heading to
sort.</p>
{judged}
{_errors(results)}
<script>{SCRIPT}</script>
</body></html>
"""
