"""The config served when none is found: a mock provider, plus any provider whose key is set."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from router.config import Config, parse

# env var -> (provider name, OpenAI-compatible base URL, a small model)
_KNOWN = (
    ("OPENAI_API_KEY", "openai", "https://api.openai.com/v1", "gpt-4o-mini"),
    ("ANTHROPIC_API_KEY", "anthropic", "https://api.anthropic.com/v1", "claude-haiku-4-5"),
    ("GROQ_API_KEY", "groq", "https://api.groq.com/openai/v1", "llama-3.1-8b-instant"),
    ("OPENROUTER_API_KEY", "openrouter", "https://openrouter.ai/api/v1", "openai/gpt-4o-mini"),
    (
        "GEMINI_API_KEY",
        "gemini",
        "https://generativelanguage.googleapis.com/v1beta/openai",
        "gemini-2.0-flash",
    ),
)


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
        }
    ]
    groups: list[dict[str, Any]] = [
        {"name": "demo", "models": [{"provider": "mock", "name": "mock-large", "weight": 1}]},
        {"name": "demo-fast", "models": [{"provider": "mock", "name": "mock-small", "weight": 1}]},
    ]
    for var, name, base_url, model in _KNOWN:
        if env.get(var):
            providers.append({"name": name, "base_url": base_url, "api_keys": [env[var]]})
            groups.append({"name": name, "models": [{"provider": name, "name": model}]})
    tree: dict[str, Any] = {"groups": groups, "providers": providers}
    if env.get("LLM_ROUTER_API_KEY"):
        tree["api_key"] = env["LLM_ROUTER_API_KEY"]
    return tree


def demo_config(env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    return parse(demo_tree(env), env, source="<built-in demo config>")
