"""Provider wire formats: one `Upstream` per provider type, and which targets serve which path.

http.py       the pooled session, timeouts, aiohttp errors -> ours; OpenAI's API as is
anthropic.py  OpenAI chat <-> Anthropic Messages, and the native /v1/messages
mock.py       a fake transport speaking either API, so the real translators run over it
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from router.balancer import Target
from router.errors import BadRequest
from router.providers.anthropic import AnthropicUpstream
from router.providers.anthropic_chat import refusal
from router.providers.http import HttpUpstream, Reply, Upstream
from router.providers.mock import MockUpstream

# What each wire format serves; `api` is `type`, except for the mock, which speaks either.
_SERVES = {
    "openai": frozenset({"/chat/completions", "/completions", "/embeddings", "/responses"}),
    "anthropic": frozenset({"/chat/completions", "/messages"}),
}


class _ByApi:
    """The mock provider: its `api` setting picks the wire format."""

    def __init__(self, by_api: Mapping[str, Upstream]) -> None:
        self.by_api = by_api

    async def send(
        self, target: Target, path: str, body: bytes, stream: bool, client: Mapping[str, str]
    ) -> Reply:
        return await self.by_api[target.provider.api].send(target, path, body, stream, client)


def build(session: aiohttp.ClientSession, max_reply_bytes: int = 64 * 2**20) -> dict[str, Upstream]:
    """The app's providers by `type`, all over its one pooled session."""
    http, mock = HttpUpstream(session, max_reply_bytes), MockUpstream()
    return {
        "openai": http,
        "anthropic": AnthropicUpstream(http),
        "mock": _ByApi({"openai": mock, "anthropic": AnthropicUpstream(mock)}),
    }


def serving(targets: Sequence[Target], path: str, body: Mapping[str, Any]) -> Sequence[Target]:
    """The group's targets that can serve this request on `path`; a 400 when none can.

    Anthropic targets take a chat completion only when it translates: in a mixed group a
    request with, say, `n: 2` goes to the OpenAI targets; with none left, a 400 names `n`.
    """
    refused = None
    if path == "/chat/completions" and any(t.provider.api == "anthropic" for t in targets):
        refused = refusal(body)
    if refused is None and all(path in _SERVES[t.provider.api] for t in targets):
        return targets
    kept = tuple(
        t
        for t in targets
        if path in _SERVES[t.provider.api] and not (refused and t.provider.api == "anthropic")
    )
    if kept:
        return kept
    if refused is not None:
        code = "unsupported_parameter"
        raise BadRequest(refused.message, param=refused.param, code=code)
    group = body["model"]
    if path == "/messages":
        message = f"The model {group!r} has no Anthropic target: /v1/messages needs one."
    else:
        message = f"The model {group!r} has only Anthropic targets, which do not serve /v1{path}."
    raise BadRequest(message, param="model", code="unsupported_endpoint")
