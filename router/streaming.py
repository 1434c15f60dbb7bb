"""SSE relay: upstream events reach the client as they arrive, with usage read on the way.

The client's response is not started until the upstream's first complete event is in hand,
so a stream that fails before then can still be retried elsewhere. After that, a failure
can only be reported in-band: an OpenAI-shaped `data: {"error": ...}` event, never `[DONE]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

import orjson
from aiohttp import web
from aiohttp.tcp_helpers import tcp_nodelay

from router.compression import StreamCompressor
from router.errors import UpstreamError, error_body
from router.payload import Tokens, text_chars, usage_tokens
from router.providers import anthropic
from router.providers.http import Reply

log = logging.getLogger("router.streaming")
_EVENT_END = re.compile(rb"\r?\n\r?\n")
MAX_EVENT_BYTES = 16 * 2**20  # one SSE event, held whole until its end arrives
# The Responses API's stream has no [DONE]: it ends with one of these events.
_RESPONSES_MARK = re.compile(rb'"type"\s*:\s*"(?:response\.(?:completed|incomplete|failed)|error)"')
_RESPONSES_END = ("response.completed", "response.incomplete")
# Anthropic's Messages API (/v1/messages): usage in message_start/_delta, ends with message_stop.
_MESSAGES_MARK = re.compile(rb'"type"\s*:\s*"(?:message_(?:start|delta|stop)|error)"')


@dataclass
class StreamOutcome:
    tokens: Tokens | None = None  # usage reported by the upstream
    events: int = 0
    error: str | None = None  # why the stream ended badly, if it did
    client_gone: bool = False
    sent: int = 0  # bytes of events passed on
    runs: int = 0
    sampled: tuple[int, int] = (0, 0)  # (bytes, text characters) of the runs looked into

    def count(self, run: bytes) -> None:
        """Tally a run passed on. Its generated text is counted in the first 4 KiB and one
        run in 32 after that: enough to estimate a stream that ends without usage."""
        self.sent += len(run)
        self.runs += 1
        seen, chars = self.sampled
        if seen < 4096 or self.runs % 32 == 0:
            self.sampled = (seen + len(run), chars + text_chars(run))

    def completion_estimate(self) -> int:
        """Tokens of the text passed on, estimated like a prompt (4 characters a token)."""
        seen, chars = self.sampled
        return round(self.sent * chars / seen / 4) if seen else 0


class _Events:
    """Splits an upstream byte stream into runs of complete SSE events."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    async def next(self) -> bytes | None:
        """The next run of complete events; at EOF whatever is left; None when done."""
        async for chunk in self._chunks:
            buf = self._buf + chunk if self._buf else chunk
            end = buf.rfind(b"\n\n")
            if end < 0 and b"\r" in buf:
                ends = list(_EVENT_END.finditer(buf))
                end = ends[-1].end() - 2 if ends else -1
            if end < 0:
                if len(buf) > MAX_EVENT_BYTES:  # an upstream that never ends its event
                    raise UpstreamError(f"an SSE event larger than {MAX_EVENT_BYTES} bytes")
                self._buf = buf
                continue
            self._buf = buf[end + 2 :]
            return buf[: end + 2]
        rest, self._buf = self._buf, b""
        return rest or None


class Relay:
    def __init__(
        self,
        reply: Reply,
        *,
        strip_usage: bool,
        responses: bool,
        messages: bool = False,
        write_timeout: float = 60.0,
        tee: Callable[[bytes], None] | None = None,
    ) -> None:
        self.reply = reply
        self.write_timeout = write_timeout  # a client that stops reading is dropped after it
        self.tee = tee  # sees each run once the client has it (the response cache adds it up)
        self.strip_usage = strip_usage  # drop the usage-only chunk the client did not ask for
        self.responses = responses  # the Responses API: ends with response.completed, not [DONE]
        self.messages = anthropic.MessageUsage() if messages else None  # Anthropic's native API
        self.outcome = StreamOutcome()
        self._events = _Events(reply.chunks())
        self._done = False

    def _inspect(self, run: bytes) -> bytes:
        """Read usage, [DONE] and error events from a run; return the bytes to forward."""
        if b"[DONE]" not in run and not self._notable(run):
            self.outcome.events += run.count(b"data:")
            return run
        kept = []
        for event in _EVENT_END.split(run):
            if not event:
                continue
            data = b"".join(
                line[5:].strip() for line in event.splitlines() if line.startswith(b"data:")
            )
            keep = True
            if data == b"[DONE]":
                self._done = True
            elif data.startswith(b"{") and self._notable(data):
                keep = self._json_event(data)
            self.outcome.events += 1 if data else 0
            if keep:
                kept.append(event + b"\n\n")
        return b"".join(kept)

    def _notable(self, data: bytes) -> bool:
        """Whether bytes may hold usage, an error or the end of the stream."""
        if self.messages is not None:
            return _MESSAGES_MARK.search(data) is not None
        if b'"usage"' in data or b'"error"' in data:
            return True
        return self.responses and _RESPONSES_MARK.search(data) is not None

    def _json_event(self, data: bytes) -> bool:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return True
        if not isinstance(obj, dict):
            return True
        if self.messages is not None:
            kind = obj.get("type")
            if kind == "message_stop":
                self._done = True
            elif kind == "error":
                self.outcome.error = "upstream sent an error event"
            else:  # message_start carries the prompt's usage, message_delta the running total
                usage = obj.get("usage") or (obj.get("message") or {}).get("usage")
                self.outcome.tokens = self.messages.update(usage)
            return True
        if self.responses:
            kind = obj.get("type")
            if kind in _RESPONSES_END:
                self._done = True
            elif kind in ("response.failed", "error"):
                self.outcome.error = "upstream sent an error event"
                return True
        if obj.get("error") is not None and "choices" not in obj:
            self.outcome.error = "upstream sent an error event"
            return True
        usage = obj.get("usage")
        if usage is None and isinstance(obj.get("response"), dict):
            usage = obj["response"].get("usage")  # the Responses API's response.completed
        tokens = usage_tokens(usage)
        if tokens is not None:
            # Some providers repeat cumulative usage; keep the largest, never a sum.
            if self.outcome.tokens is None or tokens.total >= self.outcome.tokens.total:
                self.outcome.tokens = tokens
            if self.strip_usage and obj.get("choices") == []:
                return False
        return True

    async def first(self) -> bytes:
        """Wait for the first complete event; raises UpstreamError if the stream fails first."""
        while True:
            run = await self._events.next()
            if run is None:
                raise UpstreamError("stream ended before its first event")
            out = self._inspect(run)
            if self.outcome.error:
                raise UpstreamError(self.outcome.error)
            if out:
                return out

    async def relay(
        self,
        request: web.Request,
        first: bytes,
        headers: Mapping[str, str],
        encoding: str | None,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers=headers)
        resp.headers["Cache-Control"] = "no-cache"
        packer = StreamCompressor(encoding) if encoding else None
        if packer:
            resp.headers["Content-Encoding"] = encoding or ""
        await resp.prepare(request)
        transport = request.transport
        if transport is not None:
            tcp_nodelay(transport, True)  # an event must not wait for the next one
        run: bytes | None = first
        watchdog = _Watchdog(transport, self.write_timeout) if transport is not None else None
        try:
            while run is not None:
                if run:
                    self.outcome.count(run)
                    data = packer.feed(run) if packer else run
                    if watchdog is not None:
                        watchdog.since = watchdog.loop.time()
                    await resp.write(data)
                    if watchdog is not None:
                        watchdog.since = None
                    if self.tee is not None:
                        self.tee(run)
                if self.outcome.error:
                    break
                run = await self._events.next()
                run = self._inspect(run) if run is not None else None
            if not self.outcome.error and not self._done:
                self.outcome.error = f"upstream stream ended before {self._end()}"
        except UpstreamError as exc:
            self.outcome.error = exc.reason
        except ConnectionResetError:  # the client left (or was dropped); the caller closes
            self.outcome.client_gone = True  # the upstream
            return resp
        except asyncio.CancelledError:
            # The request was cancelled: its client left (this write then fails at once) or
            # a drain ran out of time. A client still there must not see a silent end.
            with contextlib.suppress(Exception):
                tail = self._error_event("the router cut the stream short (shutting down)")
                async with asyncio.timeout(0.5):
                    await resp.write(packer.feed(tail) + packer.finish() if packer else tail)
                    await resp.write_eof()
            raise
        finally:
            if watchdog is not None:
                watchdog.stop()
        try:
            tail = b""
            if self.outcome.error and not self._sent_error_event():
                tail = self._error_event(f"The upstream stream failed: {self.outcome.error}")
            if packer:
                tail = packer.feed(tail) + packer.finish() if tail else packer.finish()
            async with asyncio.timeout(self.write_timeout):
                if tail:
                    await resp.write(tail)
                await resp.write_eof()
        except ConnectionResetError:
            self.outcome.client_gone = True
        except TimeoutError:
            self.outcome.client_gone = True
            if transport is not None:
                transport.abort()
        return resp

    def _error_event(self, message: str) -> bytes:
        """The in-band event that ends a failed stream, in the client's API."""
        if self.messages is not None:
            return anthropic.error_event(message)
        return b"data: " + error_body(message, "upstream_error", None, "stream_error") + b"\n\n"

    async def runs(self) -> AsyncIterator[bytes]:
        """The stream read to its end by a reader that is not an HTTP client (`eval`).

        Yields each run of events as inspected; `outcome` then holds usage and any error.
        UpstreamError from the transport propagates.
        """
        while not self.outcome.error and (run := await self._events.next()) is not None:
            yield self._inspect(run)
        if not self.outcome.error and not self._done:
            self.outcome.error = f"upstream stream ended before {self._end()}"

    def _end(self) -> str:
        """What a complete stream ends with, in the client's API."""
        if self.messages is not None:
            return "message_stop"
        return "response.completed" if self.responses else "[DONE]"

    def _sent_error_event(self) -> bool:
        # An upstream error event was already forwarded as it came; do not add a second.
        return self.outcome.error == "upstream sent an error event"


class _Watchdog:
    """Drops a client whose socket has not taken a write for `timeout` seconds: a stream
    must not stay in flight, holding its reservation, because its reader went away
    without closing. One timer per stream, not one per write."""

    def __init__(self, transport: asyncio.Transport, timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport = transport
        self.timeout = timeout
        self.since: float | None = None  # when the write in progress began
        self._timer = self.loop.call_later(timeout / 2, self._check)

    def _check(self) -> None:
        if self.since is not None and self.loop.time() - self.since >= self.timeout:
            log.warning("a client stopped reading its stream for %gs: dropped", self.timeout)
            self.transport.abort()  # the blocked write raises ConnectionResetError
            return
        self._timer = self.loop.call_later(self.timeout / 2, self._check)

    def stop(self) -> None:
        self._timer.cancel()
