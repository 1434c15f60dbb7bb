"""Config files as a careless or hostile user writes them: exit 1, one line per error naming
its path, never a traceback and never a secret (issue 12). `check` and `serve` run as real
subprocesses; SIGHUP is in test_secrets.py and below."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import orjson
import pytest
import yaml

from router.config import load, parse
from router.schema import ConfigError
from tests.fakes import RouterProcess, config_tree
from tests.test_cli import run_cli

SECRET = "sk-HOSTILE-0123456789abcdef"
PROVIDER = "providers:\n  - name: p\n    {line}\n    api_keys: [sk-a]\n"
HEADERS = {"Authorization": "Bearer alice-secret"}
GROUPS = "groups:\n  - name: g\n    models: [{provider: p, name: m}]\n"


def check(tmp_path: Path, text: str | bytes, name: str = "c.yaml") -> list[str]:
    """`llm-router check` on the file; asserts exit 1 and no traceback, returns the errors."""
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    out = run_cli("check", str(path))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "Error:" not in out.stderr, out.stderr
    assert SECRET not in out.stdout + out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert errors and out.stderr.splitlines()[-1].endswith(f"error(s) in {path}")
    return [e.removeprefix("error: ") for e in errors]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("base_ur: http://x/v1", ["providers[0].base_url: is required", "providers[0].base_ur: "]),
        ("base_url: null", ["providers[0].base_url: is required"]),
        ("base_url: 2024-01-01", ["providers[0].base_url: must be a string, got a date"]),
        ("typ: openai\n    base_url: http://x/v1", ["providers[0].typ: unknown key"]),
        ("type: opanai\n    base_url: http://x/v1", ["one of openai, anthropic, mock, got"]),
        ("type: [openai]", ["providers[0].type: must be a string, got a list"]),
    ],
)
def test_misspelt_null_or_dated_base_url_and_type_are_errors_not_tracebacks(
    tmp_path: Path, line: str, expected: list[str]
) -> None:
    errors = check(tmp_path, PROVIDER.format(line=line) + GROUPS)
    for want in expected:
        assert any(want in e for e in errors), errors


def test_yaml_nested_ten_thousand_deep_is_refused(tmp_path: Path) -> None:
    errors = check(tmp_path, "a: " + "[" * 10_000 + "]" * 10_000 + "\n")
    assert errors == [f"{tmp_path / 'c.yaml'}: line 1: nested deeper than 64 levels"]
    errors = check(tmp_path, "".join(" " * i + f"k{i}:\n" for i in range(3000)))
    assert "nested deeper than 64 levels" in errors[0]


def test_json_nested_deep_is_refused(tmp_path: Path) -> None:
    errors = check(tmp_path, '{"a": ' + "[" * 200 + "]" * 200 + "}", "c.json")
    assert errors == [f"{tmp_path / 'c.json'}: nested deeper than 64 levels"]
    errors = check(tmp_path, "[" * 100_000, "c.json")  # orjson's own limit
    assert "not valid JSON" in errors[0]


def test_client_key_string_where_a_mapping_belongs_does_not_echo_it(tmp_path: Path) -> None:
    text = f'api_keys: ["{SECRET}"]\n' + GROUPS + PROVIDER.format(line="type: mock")
    errors = check(tmp_path, text)
    assert errors == ["api_keys[0]: must be a mapping, got a string of 27 characters"]


@pytest.mark.parametrize(
    "text",
    [
        f"api_key: {SECRET}\n  bad: [indent\n",
        f'api_key: "{SECRET}\n',
        f"api_key: {SECRET}: more\n",
        f"groups: [{{name: {SECRET}}}\n",
        f"api_key: !{SECRET} x\n",
        f"api_key: *{SECRET}\n",
        f"{SECRET}\t: x\n",
    ],
)
def test_yaml_syntax_errors_give_the_line_but_not_its_text(tmp_path: Path, text: str) -> None:
    [error] = check(tmp_path, text)
    assert f"{tmp_path / 'c.yaml'}:" in error and ": not valid YAML: " in error
    assert SECRET[:12] not in error


def test_json_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    [error] = check(tmp_path, '{"api_key": "' + SECRET + '",\n  oops}', "c.json")
    assert error == (
        f"{tmp_path / 'c.json'}:2:3: not valid JSON: unexpected character, expected a string key"
    )


def test_duplicate_keys_are_errors_with_path_and_line(tmp_path: Path) -> None:
    text = "port: 1\n" + GROUPS + PROVIDER.format(line="type: mock\n    type: mock") + "port: 2\n"
    errors = check(tmp_path, text)
    assert f"{tmp_path / 'c.yaml'}: port: duplicate key at line 10 (first at line 1)" in errors
    assert any("providers[0].type: duplicate key at line 8 (first at line 7)" in e for e in errors)
    tree = {"groups": [{"name": "g", "models": [{"provider": "p", "name": "m"}]}]}
    raw = orjson.dumps(tree).decode()[:-1] + ', "groups": []}'
    assert check(tmp_path, raw, "c.json") == [f"{tmp_path / 'c.json'}: groups: duplicate key"]


def test_anchors_may_be_shared_but_not_bombs_or_loops(tmp_path: Path) -> None:
    base = "defaults: &d {timeout: 5}\n"
    path = tmp_path / "ok.yaml"  # a merge key is not a duplicate, and a shared anchor is fine
    path.write_text(
        "x-defaults: &d {type: mock}\n" + GROUPS + "providers:\n  - {<<: *d, name: p}\n"
    )
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.errors == ["x-defaults: unknown key"]
    bomb = base + "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, 9):
        bomb += f"l{i}: &l{i} [" + ", ".join([f"*{'a' if i == 1 else f'l{i - 1}'}"] * 10) + "]\n"
    errors = check(tmp_path, bomb)
    assert errors == [
        f"{tmp_path / 'c.yaml'}: more than 100000 values once its anchors are expanded"
    ]
    errors = check(tmp_path, "a: &a [1, *a]\n")
    assert errors == [f"{tmp_path / 'c.yaml'}: line 1: an anchor refers to itself"]


@pytest.mark.parametrize(
    "junk",
    [
        b"\x00\x01\x02\xff\xfe garbage",
        b"\xff\xd8\xff\xe0\x00\x10JFIF",
        bytes(range(256)),
        b"groups: \x85\x85",
        b"port: 2024-02-30\n",
        b"port: !!int abc\n",
        b"port: !!binary ###\n",
        b"? [a, b]\n: c\n",
        b"!!python/object:os.system {}\n",
    ],
)
def test_binary_junk_and_impossible_values_are_refused(tmp_path: Path, junk: bytes) -> None:
    check(tmp_path, junk)
    check(tmp_path, junk, "c.json")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("port", 10**400, "port: must be an integer <= 1e+12, got a huge integer"),
        ("shutdown_timeout", float("inf"), "shutdown_timeout: must be a number >= 0, got inf"),
        ("max_body_bytes", 0, "max_body_bytes: must be an integer >= 1, got 0"),
        ("port", 70000, "port: must be an integer from 0 to 65535, got 70000"),
        ("usage_window", -1e300, "usage_window: must be a number >= 0, got -1e+300"),
        ("host", "bad host\n", "host: must be a host name or an IP address"),
        ("max_reply_bytes", 1.5, "max_reply_bytes: must be an integer >= 1, got 1.5"),
    ],
)
def test_out_of_range_numbers_are_errors(key: str, value: object, message: str) -> None:
    tree = config_tree(["http://127.0.0.1:1/v1"])
    tree[key] = value
    with pytest.raises(ConfigError) as info:
        parse(tree, env={})
    assert info.value.errors == [message]


def test_values_that_would_break_a_request_later_are_refused_now() -> None:
    tree = config_tree(["http://127.0.0.1:1/v1"])
    tree["providers"][0]["headers"] = {"X-Team": "a\r\nInjected: 1", "bad name": "x", "n": 1}
    tree["providers"][0]["base_url"] = f"https://{SECRET}@/v1"
    tree["state"] = {"redis_url": "localhost:6379"}
    tree["groups"][0]["models"][0]["max_output_tokens"] = 0
    with pytest.raises(ConfigError) as info:
        parse(tree, env={})
    assert sorted(info.value.errors) == [
        "groups[0].models[0].max_output_tokens: must be an integer >= 1, got 0",
        "providers[0].base_url: must be an http:// or https:// URL with a host",
        "providers[0].headers.n: must be a string, got 1",
        'providers[0].headers: header "X-Team": the value must not hold line breaks or NUL',
        'providers[0].headers: header "bad name": not a valid header name',
        "state.redis_url: must start with redis://, rediss:// or unix://",
    ]


def test_unset_variable_and_unknown_reference_do_not_echo_values() -> None:
    tree = config_tree(["http://127.0.0.1:1/v1"])
    tree["groups"][0]["models"][0]["provider"] = SECRET
    tree["api_key"] = "${MISSING_KEY}"
    tree["providers"][0]["api_keys"] = [{"key": SECRET, "rpm": SECRET}]
    with pytest.raises(ConfigError) as info:
        parse(tree, env={})
    text = "\n".join(info.value.errors)
    assert SECRET not in text
    assert "api_key: environment variable MISSING_KEY is not set" in text
    assert "groups[0].models[0].provider: no provider named a string of 27 characters" in text
    assert "providers[0].api_keys[0].rpm: must be an integer >= 1, got a string" in text
    assert f"{SECRET}" not in str(info.value)


def test_serve_with_a_broken_config_exits_1_listing_every_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(PROVIDER.format(line="base_ur: http://x") + GROUPS + "bogus: 1\n")
    out = run_cli("serve", "--config", str(path), "--port", "1")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.splitlines() == [
        "error: providers[0].base_url: is required",
        "error: providers[0].base_ur: unknown key",
        "error: bogus: unknown key",
    ]


def test_sighup_with_a_misspelt_base_url_keeps_the_old_config(
    tmp_path: Path, fakes_thread: tuple
) -> None:
    _, url, _ = fakes_thread
    path = tmp_path / "config.yaml"
    tree = config_tree([url])
    path.write_text(yaml.safe_dump(tree))
    server = RouterProcess(["--config", str(path)], cwd=tmp_path)
    try:
        for broken in (
            PROVIDER.format(line="base_ur: http://x") + GROUPS,
            "a: " + "[" * 10_000 + "]" * 10_000,
            "\x00\xff junk",
        ):
            path.write_text(broken, errors="surrogateescape")
            server.proc.send_signal(signal.SIGHUP)
            time.sleep(0.5)
            url = server.url + "/v1/chat/completions"
            r = httpx.post(url, json={"model": "g"}, headers=HEADERS)
            assert r.status_code == 200
    finally:
        code, out = server.stop()
    assert code == 0 and "Traceback" not in out, out
    assert out.count("reload refused, still serving the old config") == 3
    assert "providers[0].base_url: is required" in out


def test_names_that_would_break_a_response_header_are_refused() -> None:
    """Found by test_generated.py: a provider named "\\n" passed, and names and key labels
    go into x-llm-router-* response headers, where a line break fails the reply."""
    tree = config_tree(["http://127.0.0.1:1/v1"])
    tree["providers"][0]["name"] = "p\n"
    tree["providers"][0]["api_keys"] = [{"key": "k", "name": "team\r\nX-Evil: 1"}]
    tree["groups"][0]["models"][0]["name"] = "model\x00"
    tree["groups"][0]["name"] = ""
    tree["api_keys"][0]["name"] = "x" * 300
    with pytest.raises(ConfigError) as info:
        parse(tree, env={})
    bad = "must be 1 to 256 printable characters on one line"
    assert sorted(info.value.errors) == [
        f"api_keys[0].name: {bad}",
        f"groups[0].models[0].name: {bad}",
        'groups[0].models[0].provider: no provider named "p0" (none exist)',
        f"groups[0].name: {bad}",
        f"providers[0].api_keys[0].name: {bad}",
        f"providers[0].name: {bad}",
    ]
