"""The usage log: one JSON line per request (never prompt or completion text), written off
the request path by an owned task, rotated when it grows past a size or the UTC day turns;
and the rollup behind `llm-router usage`."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import glob
import logging
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

MAX_BYTES = 100 * 1024 * 1024
FLUSH_EVERY = 0.5  # seconds
MAX_BACKLOG = 1_000_000  # lines kept while the file cannot be written (about 300 MB)
log = logging.getLogger("router.usagelog")


class UsageLog:
    def __init__(self, path: str, max_bytes: int = MAX_BYTES) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        # Workers of one server share the file: rotation happens under this lock, and the
        # day is read from the file itself, so two workers never both rotate it.
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")
        self._lines: list[bytes] = []
        self._failing = False
        self.dropped = 0  # lines given up after the backlog passed MAX_BACKLOG

    def add(self, record: dict[str, Any]) -> None:
        self._lines.append(orjson.dumps(record) + b"\n")

    async def run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            await self.flush()

    async def flush(self) -> None:
        """Write what has queued up. A failed write keeps its lines for the next try."""
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        try:
            await asyncio.to_thread(self._write, b"".join(lines))
        except OSError as exc:
            self._lines[:0] = lines
            if len(self._lines) > MAX_BACKLOG:
                over = len(self._lines) - MAX_BACKLOG
                del self._lines[:over]
                self.dropped += over
            if not self._failing:
                self._failing = True
                log.error("usage log %s cannot be written (%s); keeping lines and retrying",
                          self.path, exc.strerror or type(exc).__name__)  # fmt: skip
            return
        if self._failing:
            self._failing = False
            log.warning("usage log %s is written again (%d lines were dropped meanwhile)",
                        self.path, self.dropped)  # fmt: skip

    def _write(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._rotate_if_due(len(data))
            with open(self.path, "ab") as f:
                f.write(data)

    def _rotate_if_due(self, incoming: int) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return
        now = time.time()
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        if st.st_size and (
            time.strftime("%Y-%m-%d", time.gmtime(st.st_mtime)) != day
            or st.st_size + incoming > self.max_bytes
        ):
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
            target = self.path.with_name(f"{self.path.name}.{stamp}")
            n = 1
            while target.exists():
                target = self.path.with_name(f"{self.path.name}.{stamp}-{n}")
                n += 1
            os.replace(self.path, target)


def read(path: str) -> Iterator[dict[str, Any]]:
    """Every record of the log and its rotated files, oldest file first."""
    files = sorted(glob.glob(glob.escape(path) + ".*")) + [path]
    for name in files:
        with contextlib.suppress(FileNotFoundError), open(name, "rb") as f:
            for line in f:
                with contextlib.suppress(orjson.JSONDecodeError):
                    record = orjson.loads(line)
                    if isinstance(record, dict):  # a torn or foreign line is skipped
                        yield record


def rollup(records: Iterable[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    field = {"day": "time", "model": "model", "key": "key", "client": "client"}[by]
    rows: dict[str, dict[str, Any]] = {}
    for r in records:
        name = str(r.get(field) or "-")
        if by == "day":
            name = name[:10]
        row = rows.setdefault(
            name, {by: name, "requests": 0, "errors": 0, "prompt_tokens": 0,
                   "completion_tokens": 0, "total_tokens": 0, "cost_usd": 0.0,
                   "latency_ms": 0.0},
        )  # fmt: skip
        prompt, completion = _number(r, "prompt_tokens"), _number(r, "completion_tokens")
        row["requests"] += 1
        row["errors"] += _number(r, "status", 200) >= 400 or bool(r.get("stream_error"))
        row["prompt_tokens"] += prompt
        row["completion_tokens"] += completion
        # Lines written before total_tokens existed count their parts.
        row["total_tokens"] += _number(r, "total_tokens", prompt + completion)
        row["cost_usd"] += _number(r, "cost_usd")
        row["latency_ms"] += _number(r, "latency_ms")
    out = sorted(rows.values(), key=lambda row: row[by])
    for row in out:
        row["latency_ms"] = round(row["latency_ms"] / row["requests"], 1)
        row["cost_usd"] = round(row["cost_usd"], 6)
    return out


def _number(record: dict[str, Any], key: str, default: float = 0) -> Any:
    v = record.get(key)
    return v if isinstance(v, int | float) and not isinstance(v, bool) else default


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[_fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(columns, widths, strict=True)))]  # fmt: skip
    for r in cells:
        lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in
                               enumerate(zip(r, widths, strict=True))))  # fmt: skip
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6f}".rstrip("0").rstrip(".") if v else "0"
    return "-" if v is None else str(v)
