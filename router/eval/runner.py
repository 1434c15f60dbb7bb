"""Eval calls: every prompt to every (provider, model) of the chosen groups, streamed.

A call goes through the router's own upstream objects and SSE relay, on a key the
balancer picks among the pair's keys, and is made once: a failure is recorded, never
retried elsewhere. At most `concurrency` workers run; each does a call and its judging.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from router import payload, providers
from router.balancer import Balancer, Target
from router.config import ModelRef, Provider
from router.errors import UpstreamError
from router.eval.prompts import Prompt
from router.payload import Tokens
from router.providers.http import Upstream
from router.proxy import RETRYABLE
from router.retry import cooldown_seconds
from router.streaming import Relay

if TYPE_CHECKING:
    from router.eval.judge import Judge

PATH = "/chat/completions"


def upstreams(session: aiohttp.ClientSession) -> dict[str, Upstream]:
    """Provider type -> the object that calls it: the same objects the app builds."""
    return providers.build(session)


@dataclass(frozen=True)
class EvalTarget:
    """One (provider, model) pair, with the keys the balancer chooses among."""

    group: str
    provider: Provider
    model: ModelRef
    keys: tuple[Target, ...]

    @property
    def name(self) -> str:
        return f"{self.provider.name}/{self.model.name}"


def eval_targets(balancer: Balancer, groups: Iterable[str]) -> list[EvalTarget]:
    """The pairs of the groups, in config order; a pair in two groups is run once, first."""
    pairs: dict[tuple[str, str], list[Target]] = {}
    first: dict[tuple[str, str], str] = {}
    for group in groups:
        for t in balancer.targets(group):
            pair = (t.provider.name, t.model.name)
            first.setdefault(pair, group)
            if first[pair] == group:
                pairs.setdefault(pair, []).append(t)
    return [
        EvalTarget(first[pair], keys[0].provider, keys[0].model, tuple(keys))
        for pair, keys in pairs.items()
    ]


@dataclass
class Answer:
    """What one upstream call gave: times in seconds from the moment it was sent."""

    key: str | None = None
    latency: float | None = None  # sent -> end of stream
    ttft: float | None = None  # sent -> first non-empty content
    tokens: Tokens | None = None  # as the upstream reported them
    cost: float | None = None  # None when no usage came back
    text: str = ""
    error: str | None = None


@dataclass
class Result:
    index: int  # job order: repeat, then prompt, then target
    target: EvalTarget
    prompt: Prompt
    repeat: int
    answer: Answer
    score: float | None = None
    reason: str | None = None


class Caller:
    """Makes one streamed call on a key of the given targets, as the proxy would."""

    def __init__(
        self,
        upstreams: Mapping[str, Upstream],
        balancer: Balancer,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.upstreams = upstreams
        self.balancer = balancer
        self.clock = clock

    async def call(self, keys: Sequence[Target], fields: Mapping[str, Any]) -> Answer:
        reserve = payload.estimate(orjson.dumps(fields), dict(fields), False)
        deadline = self.balancer.clock() + max(t.provider.timeout for t in keys)
        target, why = await self._pick(keys, reserve, deadline)
        if target is None:
            return Answer(error=why)
        picked = self.balancer.clock()  # no await since the pick: its time, for the breaker
        options = fields.get("stream_options")
        body = {
            **fields,
            "model": target.model.name,
            "stream": True,
            "stream_options": {**(options if isinstance(options, dict) else {}),
                               "include_usage": True},
        }  # fmt: skip
        answer = Answer(key=target.label)
        failed: bool | None = True
        sent = self.clock()
        try:
            async with asyncio.timeout(target.provider.timeout):
                failed = await self._send(target, orjson.dumps(body), answer, sent)
        except TimeoutError:
            answer.error = f"timed out after {target.provider.timeout:g} s"
        except UpstreamError as exc:
            answer.error = exc.reason
        except asyncio.CancelledError:  # interrupted: no verdict on the target
            failed = None
            raise
        finally:
            if answer.latency is None:
                answer.latency = self.clock() - sent
            used = float(answer.tokens.total) if answer.tokens else 0.0
            await self.balancer.finish(target, reserve, used, failed, picked)
        return answer

    async def _pick(
        self, keys: Sequence[Target], reserve: float, deadline: float
    ) -> tuple[Target | None, str]:
        """A key as serving picks one; wait out rate limits, not open circuits."""
        while True:
            target, blocked = await self.balancer.pick(keys, reserve)
            if target is not None:
                return target, ""
            limited = [b.until for b in blocked if b.rate_limited]
            if not limited:
                return None, "no key available (circuit open or key refused)"
            if min(limited) > deadline:
                return None, "every key is at its rate limit"
            await asyncio.sleep(max(min(limited) - self.balancer.clock(), 0.01))

    async def _send(self, target: Target, raw: bytes, answer: Answer, sent: float) -> bool | None:
        """Fill `answer`; return the verdict on the target (None: the request's fault)."""
        reply = await self.upstreams[target.provider.type].send(target, PATH, raw, True, {})
        try:
            if reply.status >= 400:
                answer.error = f"HTTP {reply.status}: {_message(await reply.read())}"
                if reply.status in (401, 403):  # a bad key: set aside, as serving does
                    await self.balancer.cool(target, self.balancer.cooldown, False)
                elif wait := cooldown_seconds(reply.headers):
                    await self.balancer.cool(target, wait, reply.status == 429)
                return True if reply.status in RETRYABLE else None
            if not reply.headers.get("Content-Type", "").startswith("text/event-stream"):
                self._whole(await reply.read(), answer, target)  # a provider that ignored stream
                answer.latency = answer.ttft = self.clock() - sent
                return answer.error is not None
            relay = Relay(reply, strip_usage=False, responses=False)
            pieces = []
            async for run in relay.runs():
                piece = _content(run)
                if piece:
                    if answer.ttft is None:
                        answer.ttft = self.clock() - sent
                    pieces.append(piece)
            answer.latency = self.clock() - sent
            answer.text = "".join(pieces)
            self._account(relay.outcome.tokens, answer, target)
            answer.error = relay.outcome.error
            return answer.error is not None
        finally:
            reply.close()

    def _whole(self, data: bytes, answer: Answer, target: Target) -> None:
        try:
            obj = orjson.loads(data)
            answer.text = obj["choices"][0]["message"]["content"] or ""
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            answer.error = "the reply was neither a stream nor a chat completion"
            return
        self._account(payload.usage_tokens(obj.get("usage")), answer, target)

    @staticmethod
    def _account(tokens: Tokens | None, answer: Answer, target: Target) -> None:
        answer.tokens = tokens
        answer.cost = target.cost(tokens) if tokens else None


def _content(run: bytes) -> str:
    """The text of choice 0's deltas in a run of chat completion chunks."""
    out = []
    for line in run.splitlines():
        data = line[5:].strip() if line.startswith(b"data:") else b""
        if not data.startswith(b"{") or b'"content"' not in data:
            continue
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        for choice in obj.get("choices") or ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                content = (choice.get("delta") or {}).get("content")
                if isinstance(content, str):
                    out.append(content)
    return "".join(out)


def _message(data: bytes) -> str:
    """An error body's message, short; never more than a line of it."""
    try:
        message = orjson.loads(data)["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = data.decode("utf-8", "replace")
    return " ".join(str(message).split())[:200]


async def run(
    caller: Caller,
    targets: Sequence[EvalTarget],
    prompts: Sequence[Prompt],
    repeat: int,
    concurrency: int,
    results: list[Result],
    judge: Judge | None = None,
    progress: Callable[[], None] = lambda: None,
) -> None:
    """Run every job, appending to `results` as calls end; cancel it to stop early."""
    order = ((r, p, t) for r in range(repeat) for p in prompts for t in targets)
    jobs = enumerate(order)  # one iterator shared by the workers: each job is taken once

    async def worker() -> None:
        for index, (rep, prompt, target) in jobs:
            fields = {**prompt.body, "messages": list(prompt.messages)}
            result = Result(index, target, prompt, rep, await caller.call(target.keys, fields))
            results.append(result)
            if judge is not None and result.answer.error is None:
                try:
                    result.score, result.reason = await judge.score(prompt, result.answer.text)
                except asyncio.CancelledError:
                    result.reason = "interrupted before the judge answered"
                    raise
            progress()

    workers = [asyncio.create_task(worker(), name=f"eval-worker-{n}") for n in range(concurrency)]
    try:
        await asyncio.gather(*workers)
    finally:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
