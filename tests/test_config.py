from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from router.config import load, parse
from router.schema import ConfigError

ROOT = Path(__file__).resolve().parent.parent

GO_SEED_CONFIG = """
port: 8080
api_key: "router-secret"
error_penalty: 10000
request_penalty: 500
groups:
  - name: "smart"
    models:
      - weight: 1
        provider: "openai"
        name: "gpt-4o"
      - weight: 2
        provider: "openrouter"
        name: "anthropic/claude-3.5-sonnet"
providers:
  - name: "openai"
    base_url: "https://api.openai.com/v1"
    api_keys: ["sk-1", "sk-2"]
  - name: "openrouter"
    base_url: "https://openrouter.ai/api/v1/"
    api_keys: ["or-1"]
"""


def errors_of(tree: object, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(tree, env or {})
    return info.value.errors


def test_go_gateway_config_loads_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(GO_SEED_CONFIG)
    cfg = load(path)
    assert cfg.port == 8080 and cfg.request_penalty == 500 and cfg.error_penalty == 10000
    assert [k.label for k in cfg.provider("openai").keys] == ["openai#0", "openai#1"]
    assert cfg.provider("openrouter").base_url == "https://openrouter.ai/api/v1"
    assert cfg.groups[0].models[1].weight == 2.0


def test_yaml_and_json_examples_are_the_same_config() -> None:
    env = {
        "LLM_ROUTER_API_KEY": "k",
        "OPENAI_API_KEY": "sk-x",
        "OPENAI_KEY_2": "sk-y",
        "ALICE_KEY": "a",
        "BOB_KEY": "b",
    }
    y = parse(yaml.safe_load((ROOT / "config.example.yaml").read_text()), env)
    j = parse(json.loads((ROOT / "config.example.json").read_text()), env)
    assert y == j


def test_fractional_weights_are_kept_and_zero_allowed() -> None:
    tree = yaml.safe_load(GO_SEED_CONFIG)
    tree["groups"][0]["models"][0]["weight"] = 0.5
    tree["groups"][0]["models"][1]["weight"] = 0
    cfg = parse(tree, {})
    assert [m.weight for m in cfg.groups[0].models] == [0.5, 0.0]


def test_errors_name_their_path_and_all_are_listed() -> None:
    tree = yaml.safe_load(GO_SEED_CONFIG)
    tree["groups"][0]["models"][1]["weight"] = "x"
    tree["groups"][0]["models"][0]["weight"] = -1
    tree["providers"][0]["timout"] = 5
    tree["groups"][0]["models"].append({"provider": "nope", "name": "m"})
    errors = errors_of(tree)
    assert 'groups[0].models[1].weight: must be a number >= 0, got "x"' in errors
    assert "groups[0].models[0].weight: must be a number >= 0, got -1" in errors
    assert "providers[0].timout: unknown key" in errors
    missing = 'groups[0].models[2].provider: no provider named "nope" (openai, openrouter exist)'
    assert missing in errors


def test_unknown_top_level_key_is_rejected() -> None:
    tree = yaml.safe_load(GO_SEED_CONFIG)
    tree["retries"] = {"attempts": 2}
    assert errors_of(tree) == ["retries: unknown key"]


def test_env_substitution_with_defaults_and_types() -> None:
    tree = yaml.safe_load(GO_SEED_CONFIG)
    tree["api_key"] = "${ROUTER_KEY}"
    tree["port"] = "${PORT:-9000}"
    tree["providers"][0]["api_keys"] = ["${OPENAI_KEY}", "prefix-${MISSING:-dflt}"]
    cfg = parse(tree, {"ROUTER_KEY": "rk", "OPENAI_KEY": "sk-env"})
    assert cfg.client_keys[0].key == "rk"
    assert cfg.port == 9000
    assert [k.secret for k in cfg.provider("openai").keys] == ["sk-env", "prefix-dflt"]


def test_unset_env_var_names_the_path() -> None:
    tree = yaml.safe_load(GO_SEED_CONFIG)
    tree["providers"][1]["api_keys"] = ["${OPENROUTER_KEY}"]
    assert errors_of(tree) == [
        "providers[1].api_keys[0]: environment variable OPENROUTER_KEY is not set"
    ]


def test_env_vars_in_yaml_comments_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(GO_SEED_CONFIG + "# export ${VAR_NAME} before starting\n")
    assert load(path, env={}).port == 8080


def test_named_keys_limits_and_labels() -> None:
    tree = yaml.safe_load(GO_SEED_CONFIG)
    tree["providers"][0]["api_keys"] = [{"key": "sk-1", "name": "team-a", "rpm": 500}, "sk-2"]
    tree["api_keys"] = [{"name": "alice", "key": "a", "budget_usd": 5, "budget_period": "month"}]
    cfg = parse(tree, {})
    assert [(k.label, k.rpm) for k in cfg.provider("openai").keys] == [
        ("team-a", 500),
        ("openai#1", None),
    ]
    assert [c.name for c in cfg.client_keys] == ["default", "alice"]


def test_bad_types_and_choices() -> None:
    tree = yaml.safe_load(GO_SEED_CONFIG)
    tree["port"] = "eighty"
    tree["providers"][0]["type"] = "azure"
    tree["logging"] = {"format": "xml"}
    tree["groups"][0]["models"] = []
    errors = errors_of(tree)
    assert 'port: must be an integer >= 0, got "eighty"' in errors
    assert 'providers[0].type: must be one of openai, anthropic, mock, got "azure"' in errors
    assert 'logging.format: must be one of text, json, got "xml"' in errors
    assert "groups[0].models: must list at least one model" in errors


def test_duplicate_names_are_errors() -> None:
    tree = yaml.safe_load(GO_SEED_CONFIG)
    tree["groups"].append(dict(tree["groups"][0]))
    tree["providers"].append(dict(tree["providers"][0]))
    errors = errors_of(tree)
    assert "groups[1].name: duplicate group name, as groups[0]" in errors
    assert "providers[2].name: duplicate provider name, as providers[0]" in errors


def test_invalid_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text("{nope")
    with pytest.raises(ConfigError) as info:
        load(path)
    expected = "c.json:1:2: not valid JSON: unexpected character, expected a string key"
    assert info.value.errors[0].endswith(expected)


THRESHOLD = "cache.semantic.threshold: must be between 0 and 1"


@pytest.mark.parametrize(
    ("cache", "error"),
    [
        ({"backend": "disk"}, 'cache.backend: must be one of none, memory, redis, got "disk"'),
        ({"backend": "memory", "ttl": 0}, "cache.ttl: must be a number > 0, got 0"),
        ({"scope": "team"}, 'cache.scope: must be one of client, shared, got "team"'),
        ({"groups": ["nope"]}, "cache.groups[0]: no group named 'nope'"),
        ({"groups": [3]}, "cache.groups[0]: must be a group name or *, got 3"),
        (
            {"semantic": {"threshold": 1.5}},
            "cache.semantic.threshold: must be between 0 and 1, got 1.5",
        ),
        (
            {"semantic": {"threshold": "high"}},
            'cache.semantic.threshold: must be between 0 and 1, got "high"',
        ),
        (
            {"semantic": {"embedder": "nope"}},
            "cache.semantic.embedder: must be hashing or a group name, no group named 'nope'",
        ),
        ({"semantic": {"embeder": "hashing"}}, "cache.semantic.embeder: unknown key"),
        ({"max_entry_bytes": -1}, "cache.max_entry_bytes: must be an integer >= 1, got -1"),
    ],
)
def test_cache_errors_name_their_path(cache: dict[str, object], error: str) -> None:
    tree = yaml.safe_load(GO_SEED_CONFIG)
    tree["cache"] = cache
    assert errors_of(tree) == [error]


def test_cache_settings_load() -> None:
    tree = yaml.safe_load(GO_SEED_CONFIG)
    group = tree["groups"][0]["name"]
    tree["cache"] = {
        "backend": "redis",
        "ttl": 60,
        "scope": "shared",
        "groups": [group],
        "semantic": {"embedder": group, "threshold": 0.9},
    }
    cache = parse(tree, env={}).cache
    assert (cache.backend, cache.ttl, cache.scope, cache.groups) == (
        "redis",
        60,
        "shared",
        (group,),
    )
    assert cache.semantic is not None and cache.semantic.threshold == 0.9
    assert cache.coalesce and cache.max_entry_bytes == 1048576 and cache.redis_url is None


def test_a_cache_embedder_group_must_serve_embeddings() -> None:
    tree = yaml.safe_load(GO_SEED_CONFIG)
    tree["providers"].append({"name": "claude", "type": "anthropic", "api_keys": ["k"]})
    tree["groups"].append({"name": "claude", "models": [{"provider": "claude", "name": "c"}]})
    tree["cache"] = {"backend": "memory", "semantic": {"embedder": "claude"}}
    assert errors_of(tree) == ["cache.semantic.embedder: group 'claude' serves no embeddings"]
