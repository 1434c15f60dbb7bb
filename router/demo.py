"""The config served when none is found: a mock provider, plus any provider whose key is set."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from router.config import Config, parse

# env var -> (provider name, type, base URL (None: the type's default), a small model)
_KNOWN = (
    ("OPENAI_API_KEY", "openai", "openai", "https://api.openai.com/v1", "gpt-4o-mini"),
    ("ANTHROPIC_API_KEY", "anthropic", "anthropic", None, "claude-haiku-4-5"),  # native
    ("GROQ_API_KEY", "groq", "openai", "https://api.groq.com/openai/v1", "llama-3.1-8b-instant"),
    ("OPENROUTER_API_KEY", "openrouter", "openai", "https://openrouter.ai/api/v1",
     "openai/gpt-4o-mini"),
    ("GEMINI_API_KEY", "gemini", "openai",
     "https://generativelanguage.googleapis.com/v1beta/openai", "gemini-2.0-flash"),
)  # fmt: skip


def demo_tree(env: Mapping[str, str]) -> dict[str, Any]:
    providers: list[dict[str, Any]] = [
        {
            "name": "mock",
            "type": "mock",
            "api_keys": [
                {"key": "mock-key-a", "name": "mock-a"},
                {"key": "mock-key-b", "name": "mock-b"},
            ],
            "latency_ms": 20,
        },
        {
            "name": "mock-claude",
            "type": "mock",
            "api": "anthropic",  # Anthropic's Messages API, through the real translator
            "api_keys": [{"key": "mock-key-c", "name": "mock-c"}],
            "latency_ms": 20,
        },
    ]
    groups: list[dict[str, Any]] = [
        {"name": "demo", "models": [{"provider": "mock", "name": "mock-large", "weight": 1}]},
        {"name": "demo-fast", "models": [{"provider": "mock", "name": "mock-small", "weight": 1}]},
        {"name": "demo-claude", "models": [{"provider": "mock-claude", "name": "claude-mock"}]},
    ]
    for var, name, type_, base_url, model in _KNOWN:
        if env.get(var):
            provider = {"name": name, "type": type_, "api_keys": [env[var]]}
            if base_url:
                provider["base_url"] = base_url
            providers.append(provider)
            groups.append({"name": name, "models": [{"provider": name, "name": model}]})
    tree: dict[str, Any] = {"groups": groups, "providers": providers}
    if env.get("LLM_ROUTER_API_KEY"):
        tree["api_key"] = env["LLM_ROUTER_API_KEY"]
    return tree


def demo_config(env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    return parse(demo_tree(env), env, source="<built-in demo config>")
