"""OpenAI chat completions <-> Anthropic's Messages API: pure translation, no I/O.

chat_request() turns a chat request into a Messages request (or raises Refused naming the
field); chat_reply(), ChatStream and chat_error() turn a message, each stream event and an
error body back into OpenAI's shapes. Usage counts are cumulative (MessageUsage).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from router.errors import UpstreamError, error_body
from router.payload import Tokens

DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; OpenAI clients rarely send it
_STOP = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_NO_PARAMS: dict[str, Any] = {"type": "object", "properties": {}}


class Refused(Exception):
    """A chat request field with no Anthropic equivalent: a 400 naming it as `param`."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


# --- requests ------------------------------------------------------------------------------


def chat_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI chat completion request as a Messages API request; raises Refused."""
    n = body.get("n")
    if n is not None and n != 1:
        raise Refused("n", "Anthropic models return one choice: 'n' must be 1.")
    for name in ("logprobs", "top_logprobs", "audio", "prediction"):
        if body.get(name) not in (None, False):
            raise Refused(name, f"'{name}' is not supported by Anthropic models.")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise Refused(
            "response_format", "Anthropic models support only response_format {type: text}."
        )
    system, turns = _turns(body.get("messages"))
    out: dict[str, Any] = {"model": body["model"], "messages": turns}
    if system:
        out["system"] = system
    out["max_tokens"] = next(
        (v for k in ("max_completion_tokens", "max_tokens") if _positive_int(v := body.get(k))),
        DEFAULT_MAX_TOKENS,
    )
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, int | float) and temperature > 1:
            raise Refused("temperature", "Anthropic models take a temperature from 0 to 1.")
        out["temperature"] = temperature
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else stop
    if body.get("user"):
        out["metadata"] = {"user_id": body["user"]}
    tools = body.get("tools")
    if tools:
        out["tools"] = [_tool(i, t) for i, t in enumerate(tools)]
    choice = _tool_choice(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False and tools and (choice or {}).get("type") != "none":
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice is not None:
        out["tool_choice"] = choice
    if body.get("stream") is True:
        out["stream"] = True
    return out


def refusal(body: Mapping[str, Any]) -> Refused | None:
    """Why a chat request cannot go to an Anthropic model, if it cannot."""
    try:
        chat_request(body)
    except Refused as exc:
        return exc
    return None


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _turns(messages: Any) -> tuple[str, list[dict[str, Any]]]:
    """System and developer messages joined into `system`; the rest as alternating turns."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise Refused("messages", "'messages' must be a list of message objects.")
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        role, content, at = m.get("role"), m.get("content"), f"messages[{i}]"
        if role in ("system", "developer"):
            text = _plain_text(content, f"{at}.content")
            if text:
                system.append(text)
            continue
        if role == "user":
            blocks = _blocks(content, f"{at}.content")
        elif role == "assistant":
            blocks = _blocks(content, f"{at}.content")
            for j, call in enumerate(m.get("tool_calls") or []):
                blocks.append(_tool_use(call, f"{at}.tool_calls[{j}]"))
        elif role == "tool":
            result = content if isinstance(content, str) else _blocks(content, f"{at}.content")
            blocks = [
                {"type": "tool_result", "tool_use_id": m.get("tool_call_id"), "content": result}
            ]
            role = "user"
        else:
            raise Refused(f"{at}.role", f"Unsupported message role {role!r}.")
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)  # consecutive same-role messages: one turn
        else:
            turns.append({"role": role, "content": blocks})
    return "\n\n".join(system), turns


def _plain_text(content: Any, path: str) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(b["text"] for b in _blocks(content, path) if b["type"] == "text")


def _blocks(content: Any, path: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise Refused(path, "Message content must be a string or a list of parts.")
    out = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if text:
                out.append({"type": "text", "text": text})
        elif kind == "image_url":
            out.append(_image(part.get("image_url"), f"{path}[{j}].image_url"))
        else:
            raise Refused(f"{path}[{j}].type", f"Unsupported content part type {kind!r}.")
    return out


def _image(spec: Any, path: str) -> dict[str, Any]:
    url = spec.get("url") if isinstance(spec, dict) else spec
    if isinstance(url, str) and url.startswith("data:"):
        head, sep, data = url[5:].partition(",")
        media, _, encoding = head.partition(";")
        if sep and encoding == "base64":
            source = {"type": "base64", "media_type": media, "data": data}
            return {"type": "image", "source": source}
    elif isinstance(url, str) and url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise Refused(path, "An image must be an http(s) URL or a base64 data URL.")


def _tool_use(call: Any, path: str) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict):
        raise Refused(path, "A tool call needs a function.")
    args = fn.get("arguments") or "{}"
    try:
        parsed = orjson.loads(args) if isinstance(args, str) else args
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise Refused(f"{path}.function.arguments", "Tool call arguments must be a JSON object.")
    return {"type": "tool_use", "id": call.get("id"), "name": fn.get("name"), "input": parsed}


def _tool(i: int, tool: Any) -> dict[str, Any]:
    fn = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
        raise Refused(f"tools[{i}].type", "Only function tools can be sent to Anthropic models.")
    out = {"name": fn.get("name"), "input_schema": fn.get("parameters") or _NO_PARAMS}
    if fn.get("description"):
        out["description"] = fn["description"]
    return out


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    named = {"auto": "auto", "none": "none", "required": "any"}
    if isinstance(choice, str) and choice in named:
        return {"type": named[choice]}
    fn = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(fn, dict) and fn.get("name"):
        return {"type": "tool", "name": fn["name"]}
    raise Refused("tool_choice", "tool_choice must be auto, none, required or a function.")


# --- replies -------------------------------------------------------------------------------


def finish_reason(stop: Any) -> str | None:
    return None if stop is None else _STOP.get(stop, "stop")


class MessageUsage:
    """Usage over a message's events: every count is cumulative, so a later one replaces."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def update(self, usage: Any) -> Tokens | None:
        if isinstance(usage, dict):
            for name, value in usage.items():
                if isinstance(value, int):
                    self.counts[name] = value
        return self.tokens()

    def tokens(self) -> Tokens | None:
        c = self.counts
        if "input_tokens" not in c and "output_tokens" not in c:
            return None
        prompt = (
            c.get("input_tokens", 0)
            + c.get("cache_creation_input_tokens", 0)
            + c.get("cache_read_input_tokens", 0)
        )
        return Tokens(prompt, c.get("output_tokens", 0))

    def openai(self) -> dict[str, Any]:
        tokens, c = self.tokens() or Tokens(0, 0), self.counts
        return {
            "prompt_tokens": tokens.prompt,
            "completion_tokens": tokens.completion,
            "total_tokens": tokens.total,
            "prompt_tokens_details": {"cached_tokens": c.get("cache_read_input_tokens", 0)},
        }


def chat_reply(msg: Mapping[str, Any]) -> dict[str, Any]:
    """A Messages API reply as an OpenAI chat.completion."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in msg.get("content") or []:
        if block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            function = {"name": block.get("name"), "arguments": arguments}
            calls.append({"id": block.get("id"), "type": "function", "function": function})
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    usage = MessageUsage()
    usage.update(msg.get("usage"))
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": finish_reason(msg.get("stop_reason")),
    }
    return {
        "id": msg.get("id"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": msg.get("model"),
        "choices": [choice],
        "usage": usage.openai(),
    }


def _error_fields(status: int, data: bytes) -> tuple[str, str]:
    """(type, message) of an Anthropic error body, or a stand-in for a body that is not one."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        obj = None
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return str(err.get("type") or error_type(status)), err["message"]
    text = data[:300].decode("utf-8", "replace").strip()
    return error_type(status), text or f"HTTP {status}"


def chat_error(status: int, data: bytes) -> bytes:
    """An Anthropic error body in OpenAI's shape (the status stays the same)."""
    type_, message = _error_fields(status, data)
    return error_body(message, type_)


class ChatStream:
    """Anthropic stream events in, OpenAI chat.completion.chunk events out, one at a time."""

    def __init__(self) -> None:
        self.id = ""
        self.model = ""
        self.created = int(time.time())
        self.usage = MessageUsage()
        self.calls: dict[int, int] = {}  # content block index -> tool call position

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return self._event({"choices": [choice]})

    def _event(self, fields: dict[str, Any]) -> bytes:
        obj = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
               "model": self.model, **fields}  # fmt: skip
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def event(self, raw: bytes) -> bytes:
        """One SSE event (without its blank line) in; zero or more OpenAI events out."""
        data = b"".join(line[5:].strip() for line in raw.split(b"\n") if line.startswith(b"data:"))
        if not data:
            return b""
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError("invalid JSON in a stream event") from None
        kind = obj.get("type") if isinstance(obj, dict) else None
        if kind == "content_block_delta":
            delta = obj.get("delta") or {}
            if delta.get("type") == "text_delta":
                return self._chunk({"content": delta.get("text", "")})
            if delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                call = {"index": self.calls.get(obj.get("index", 0), 0),
                        "function": {"arguments": delta["partial_json"]}}  # fmt: skip
                return self._chunk({"tool_calls": [call]})
            return b""  # thinking, signatures, citations: no chat equivalent
        if kind == "message_start":
            msg = obj.get("message") or {}
            self.id, self.model = str(msg.get("id", "")), str(msg.get("model", ""))
            self.usage.update(msg.get("usage"))
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "content_block_start":
            block = obj.get("content_block") or {}
            if block.get("type") == "tool_use":
                position = self.calls[obj.get("index", 0)] = len(self.calls)
                call = {"index": position, "id": block.get("id"), "type": "function",
                        "function": {"name": block.get("name"), "arguments": ""}}  # fmt: skip
                return self._chunk({"tool_calls": [call]})
            if block.get("type") == "text" and block.get("text"):
                return self._chunk({"content": block["text"]})
            return b""
        if kind == "message_delta":
            self.usage.update(obj.get("usage"))
            stop = (obj.get("delta") or {}).get("stop_reason")
            return self._chunk({}, finish_reason(stop)) if stop else b""
        if kind == "message_stop":
            return self._event({"choices": [], "usage": self.usage.openai()}) + b"data: [DONE]\n\n"
        if kind == "ping":  # keeps idle connections open on the way to the client too
            return b": ping\n\n"
        if kind == "error":
            err = obj.get("error") or {}
            type_ = str(err.get("type") or "api_error")
            return b"data: " + error_body(str(err.get("message", "stream error")), type_) + b"\n\n"
        return b""  # content_block_stop, and events added later
