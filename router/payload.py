"""The request body: parsed once, then rewritten by splicing bytes so the rest stays exact."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from router.config import MAX_OUTPUT_TOKENS
from router.errors import BadRequest

# A JSON string token, or one structural character: enough to track nesting depth.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\]]', re.S)
_AFTER_KEY = re.compile(rb'\s*:\s*("(?:[^"\\]|\\.)*")', re.S)
_DEFAULT_COMPLETION = 512  # reserved when the request sets no max_tokens


def parse(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise BadRequest("We could not parse the JSON body of your request: the body is empty.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(
            f"We could not parse the JSON body of your request ({exc.msg}). "
            "Send valid JSON with 'Content-Type: application/json'."
        ) from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    model = body.get("model")
    if model is None:
        raise BadRequest("you must provide a model parameter", param="model")
    if not isinstance(model, str):
        raise BadRequest("'model' must be a string.", param="model", code="invalid_type")
    return body


def _model_value_span(raw: bytes, model: str) -> tuple[int, int] | None:
    """Byte span of the top-level "model" value (quotes included)."""

    plain = b'"' + model.encode() + b'"'

    def value_after(key_end: int) -> tuple[int, int] | None:
        m = _AFTER_KEY.match(raw, key_end)
        if m and (m.group(1) == plain or orjson.loads(m.group(1)) == model):
            return m.start(1), m.end(1)
        return None

    # Fast path: a body that spells "model" once has it only as the top-level key.
    first = raw.find(b'"model"')
    if first >= 0 and raw.find(b'"model"', first + 7) < 0:
        return value_after(first + 7)
    depth = 0
    for tok in _TOKENS.finditer(raw):
        t = tok.group()
        if t in (b"{", b"["):
            depth += 1
        elif t in (b"}", b"]"):
            depth -= 1
        elif depth == 1 and t == b'"model"':
            span = value_after(tok.end())
            if span:
                return span
    return None


def rewrite(raw: bytes, body: dict[str, Any], upstream_model: str, add_usage: bool) -> bytes:
    """Set `model` (and `stream_options.include_usage` when asked), leaving every other byte."""
    out = None
    if upstream_model == body["model"]:
        out = raw
    else:
        span = _model_value_span(raw, body["model"])
        if span:
            out = raw[: span[0]] + orjson.dumps(upstream_model) + raw[span[1] :]
    if add_usage and "stream_options" in body:
        out = None  # the client sent stream_options without include_usage: merge into it
    elif add_usage and out is not None:
        start = out.index(b"{") + 1
        out = out[:start] + b'"stream_options":{"include_usage":true},' + out[start:]
    if out is None:  # unusual spelling: fall back to one re-serialisation
        copy = dict(body, model=upstream_model)
        if add_usage:
            options = body.get("stream_options")
            copy["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
        out = orjson.dumps(copy)
    return out


def wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def estimate(
    raw: bytes, body: dict[str, Any], embeddings: bool, cap: int = MAX_OUTPUT_TOKENS
) -> float:
    """Tokens to reserve while a request is in flight: prompt estimate plus its output budget.

    The budget is capped at `cap` (the models' max_output_tokens): a client asking for
    `max_tokens: 10**15` must not reserve, nor ever be charged, a key's whole window.
    """
    prompt = len(raw) / 4
    if embeddings:
        return prompt
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        v = body.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return prompt + min(v, cap)
    return prompt + min(_DEFAULT_COMPLETION, cap)


def prompt_tokens(raw: bytes) -> int:
    """The prompt part of `estimate`: what a reply that reports no usage is charged for it."""
    return len(raw) // 4


# String values that carry generated text in stream events: chat, completions and
# Responses (OpenAI), text, thinking and tool input deltas (Anthropic).
_TEXT = re.compile(
    rb'"(?:content|text|arguments|refusal|delta|partial_json|thinking)"\s*:\s*"((?:[^"\\]|\\.)*)"'
)


def text_chars(data: bytes) -> int:
    """Characters of generated text in some stream events (JSON escapes counted as written)."""
    return sum(m.end(1) - m.start(1) for m in _TEXT.finditer(data))


_USAGE_FIELD = re.compile(
    rb'"(prompt_tokens|completion_tokens|input_tokens|output_tokens|total_tokens)"\s*:\s*(\d+)'
)


@dataclass(frozen=True)
class Tokens:
    prompt: int
    completion: int

    @property
    def total(self) -> int:
        return self.prompt + self.completion


def read_usage(data: bytes) -> Tokens | None:
    """`usage` from a body not labelled JSON, scanned from its last "usage" key.

    (JSON replies are parsed whole by the proxy, which also checks they are valid.)
    """
    at = data.rfind(b'"usage"')
    if at < 0:
        return None
    found: dict[bytes, int] = {}
    for m in _USAGE_FIELD.finditer(data, at, at + 1024):
        found.setdefault(m.group(1), int(m.group(2)))
    prompt = found.get(b"prompt_tokens", found.get(b"input_tokens"))
    completion = found.get(b"completion_tokens", found.get(b"output_tokens"))
    total = found.get(b"total_tokens")
    if prompt is None and total is None:
        return None
    prompt = prompt if prompt is not None else (total or 0) - (completion or 0)
    if completion is None:
        completion = (total or prompt) - prompt  # embeddings: prompt only
    return Tokens(prompt, completion)


def usage_tokens(usage: Any) -> Tokens | None:
    """The same from a parsed `usage` object (stream chunks)."""
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens"))
    total = usage.get("total_tokens")
    if not isinstance(prompt, int):
        prompt = total - (completion or 0) if isinstance(total, int) else None
    if prompt is None:
        return None
    for cached in ("cache_creation_input_tokens", "cache_read_input_tokens"):
        # Anthropic's input_tokens leaves out the prompt tokens written to or read from cache.
        if isinstance(n := usage.get(cached), int):
            prompt += n
    if not isinstance(completion, int):
        completion = total - prompt if isinstance(total, int) else 0
    return Tokens(prompt, completion)
