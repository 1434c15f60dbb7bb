"""Typed reading of a parsed YAML/JSON tree: `${VAR}` substitution and checks that name paths.

Every problem is collected (not raised at the first one) so `llm-router check` can list
them all, each as `groups[0].models[1].weight: must be a number >= 0, got "x"`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

import yaml

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_MISSING = object()


class ConfigError(Exception):
    """The config is invalid; `errors` holds one message per problem, each naming its path."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def show(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value + '"'
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)


def substitute(tree: Any, env: Mapping[str, str], errors: list[str], path: str = "") -> Any:
    """Replace `${VAR}` / `${VAR:-default}` in string values; a lone placeholder keeps its type."""
    if isinstance(tree, dict):
        return {k: substitute(v, env, errors, join(path, str(k))) for k, v in tree.items()}
    if isinstance(tree, list):
        return [substitute(v, env, errors, f"{path}[{i}]") for i, v in enumerate(tree)]
    if not isinstance(tree, str) or "${" not in tree:
        return tree

    def one(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        errors.append(f"{path or '<root>'}: environment variable {name} is not set")
        return ""

    out = _VAR.sub(one, tree)
    if _VAR.fullmatch(tree.strip()):
        # `port: ${PORT:-8080}` should give a number, as if the value had been written inline.
        try:
            typed = yaml.safe_load(out) if out else out
        except yaml.YAMLError:
            return out
        if isinstance(typed, int | float | bool) or typed is None:
            return typed
    return out


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class Reader:
    """Reads one mapping of the tree; remembers the keys it was asked for to reject the rest."""

    def __init__(self, data: Any, path: str, errors: list[str]) -> None:
        self.path = path
        self.errors = errors
        self.ok = isinstance(data, Mapping)
        if not self.ok and data is not None:
            self.fail(path, f"must be a mapping, got {show(data)}")
        self.data: Mapping[str, Any] = data if self.ok else {}
        self.known: set[str] = set()

    def fail(self, path: str, message: str) -> None:
        self.errors.append(f"{path or '<root>'}: {message}")

    def at(self, key: str) -> str:
        return join(self.path, key)

    def raw(self, key: str) -> Any:
        self.known.add(key)
        return self.data.get(key, _MISSING)

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def text(self, key: str, default: Any = _MISSING, choices: tuple[str, ...] = ()) -> Any:
        v = self.raw(key)
        if v is _MISSING or v is None:
            if default is _MISSING:
                self.fail(self.at(key), "is required")
                return ""
            return default
        if isinstance(v, int | float) and not isinstance(v, bool) and not choices:
            v = str(v)  # a YAML key like `key: 12345` is still a string to us
        if not isinstance(v, str):
            self.fail(self.at(key), f"must be a string, got {show(v)}")
            return default if default is not _MISSING else ""
        if choices and v not in choices:
            self.fail(self.at(key), f"must be one of {', '.join(choices)}, got {show(v)}")
        return v

    def num(
        self,
        key: str,
        default: Any,
        *,
        minimum: float = 0.0,
        integer: bool = False,
        above: bool = False,
    ) -> Any:
        v = self.raw(key)
        if v is _MISSING or v is None:
            return default
        bad = isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)
        bad = bad or (v <= minimum if above else v < minimum)
        bad = bad or (integer and isinstance(v, float) and not v.is_integer())
        if bad:
            kind = "an integer" if integer else "a number"
            op = ">" if above else ">="
            self.fail(self.at(key), f"must be {kind} {op} {minimum:g}, got {show(v)}")
            return default
        return int(v) if integer else float(v)

    def flag(self, key: str, default: bool) -> bool:
        v = self.raw(key)
        if v is _MISSING or v is None:
            return default
        if not isinstance(v, bool):
            self.fail(self.at(key), f"must be true or false, got {show(v)}")
            return default
        return v

    def items(self, key: str, *, required: bool = False) -> Iterator[tuple[str, Any]]:
        """Yield (path, item) for each entry of a list."""
        v = self.raw(key)
        if v is _MISSING or v is None:
            if required:
                self.fail(self.at(key), "is required")
            return
        if not isinstance(v, list):
            self.fail(self.at(key), f"must be a list, got {show(v)}")
            return
        for i, item in enumerate(v):
            yield f"{self.at(key)}[{i}]", item

    def mapping(self, key: str) -> Reader:
        v = self.raw(key)
        return Reader(None if v is _MISSING else v, self.at(key), self.errors)

    def str_map(self, key: str) -> dict[str, str]:
        v = self.raw(key)
        if v is _MISSING or v is None:
            return {}
        if not isinstance(v, Mapping) or not all(
            isinstance(k, str) and isinstance(x, str) for k, x in v.items()
        ):
            self.fail(self.at(key), f"must map strings to strings, got {show(v)}")
            return {}
        return dict(v)

    def done(self) -> None:
        for key in self.data:
            if key not in self.known:
                self.fail(self.at(str(key)), "unknown key")
