"""Typed reading of a parsed YAML/JSON tree: `${VAR}` substitution and checks that name paths.

Every problem is collected (not raised at the first one) so `llm-router check` can list
them all, each as `groups[0].models[1].weight: must be a number >= 0, got "x"`.

Every value leaves a `Reader` through one typed check and has the type its method
declares (a wrong value becomes the default, or an empty value, plus an error), so code
after it never sees a wrong type. Errors never echo a string that could be a secret: only
short strings are shown (see `show`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from typing import Any, Literal, TypeVar, overload

import yaml

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_MISSING = object()
T = TypeVar("T", bound=str)


class ConfigError(Exception):
    """The config is invalid; `errors` holds one message per problem, each naming its path."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


_SHOWN = re.compile(r"[A-Za-z0-9_.:/ -]{0,8}")  # a string this short is no secret
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,23}")  # a key name, or a typo of one
LIMIT = 1e12  # the largest number any setting takes: out-of-range values must not overflow


def show(value: Any) -> str:
    """A value for an error message: short strings as they are, longer ones only described."""
    if isinstance(value, str):
        if _SHOWN.fullmatch(value):
            return '"' + value + '"'
        return f"a string of {len(value)} characters"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if abs(value) < 10**16 else "a huge integer"
    if isinstance(value, float):
        return str(value) if abs(value) < 1e16 else f"{value:.3g}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    kind = type(value).__name__  # a YAML date, binary or set: named, never printed
    return f"a {kind}" if kind != "bytes" else "binary data"


def key_name(key: object) -> str:
    """A mapping key for a path: itself when it looks like one of ours, else described."""
    if isinstance(key, str) and _KEY.fullmatch(key) and sum(c.isdigit() for c in key) <= 2:
        return key  # (a random secret has more digits than that)
    return f"<{show(key)}>"


def substitute(tree: Any, env: Mapping[str, str], errors: list[str], path: str = "") -> Any:
    """Replace `${VAR}` / `${VAR:-default}` in string values; a lone placeholder keeps its type."""
    if isinstance(tree, dict):
        return {k: substitute(v, env, errors, join(path, key_name(k))) for k, v in tree.items()}
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
    """Reads one mapping of the tree; remembers the keys it was asked for to reject the rest.

    Each method returns exactly its declared type: a missing or null value gives the
    default, a wrong one gives the default (or an empty value when there is none) and
    records an error naming the path.
    """

    def __init__(self, data: Any, path: str, errors: list[str]) -> None:
        self.path = path
        self.errors = errors
        self.ok = isinstance(data, Mapping)
        self.wrong = not self.ok and data is not None  # its required keys need no mention
        if self.wrong:
            self.fail(path, f"must be a mapping, got {show(data)}")
        self.data: Mapping[Any, Any] = data if self.ok else {}
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

    @overload
    def text(self, key: str, default: str = ..., choices: tuple[str, ...] = ()) -> str: ...
    @overload
    def text(self, key: str, default: None, choices: tuple[str, ...] = ()) -> str | None: ...
    def text(self, key: str, default: Any = _MISSING, choices: tuple[str, ...] = ()) -> Any:
        """A string; `default` omitted means required. A choice outside `choices` is an
        error and gives the default (or the first choice)."""
        fallback = default if default is not _MISSING else (choices[0] if choices else "")
        v = self.raw(key)
        if v is _MISSING or v is None:
            if default is _MISSING and not self.wrong:
                self.fail(self.at(key), "is required")
            return fallback
        if isinstance(v, int | float) and not isinstance(v, bool) and not choices:
            v = str(v)  # a YAML key like `key: 12345` is still a string to us
        if not isinstance(v, str):
            self.fail(self.at(key), f"must be a string, got {show(v)}")
            return fallback
        if choices and v not in choices:
            self.fail(self.at(key), f"must be one of {', '.join(choices)}, got {show(v)}")
            return fallback
        return v

    @overload
    def name(self, key: str, default: str = ...) -> str: ...
    @overload
    def name(self, key: str, default: None) -> str | None: ...
    def name(self, key: str, default: Any = _MISSING) -> Any:
        """A name or label: it ends up in response headers and logs, so one printable line."""
        v = self.text(key, default)
        given = isinstance(self.data.get(key), str)  # (else text() has said what is wrong)
        if given and isinstance(v, str) and (not v or len(v) > 256 or not v.isprintable()):
            self.fail(self.at(key), "must be 1 to 256 printable characters on one line")
            return default if default is not _MISSING else ""
        return v

    @overload
    def choice(self, key: str, options: tuple[T, ...], default: T) -> T: ...
    @overload
    def choice(self, key: str, options: tuple[T, ...], default: None) -> T | None: ...
    def choice(self, key: str, options: tuple[T, ...], default: T | None) -> T | None:
        """One of `options` (declare them as a typed tuple so the result keeps its Literal)."""
        v = self.text(key, default, choices=options)
        return next((o for o in options if o == v), default)

    @overload
    def num(
        self,
        key: str,
        default: int,
        *,
        minimum: float = ...,
        integer: Literal[True],
        above: bool = ...,
        maximum: float = ...,
    ) -> int: ...
    @overload
    def num(
        self,
        key: str,
        default: None,
        *,
        minimum: float = ...,
        integer: Literal[True],
        above: bool = ...,
        maximum: float = ...,
    ) -> int | None: ...
    @overload
    def num(
        self,
        key: str,
        default: float,
        *,
        minimum: float = ...,
        integer: Literal[False] = ...,
        above: bool = ...,
        maximum: float = ...,
    ) -> float: ...
    @overload
    def num(
        self,
        key: str,
        default: None,
        *,
        minimum: float = ...,
        integer: Literal[False] = ...,
        above: bool = ...,
        maximum: float = ...,
    ) -> float | None: ...
    def num(
        self,
        key: str,
        default: Any,
        *,
        minimum: float = 0.0,
        integer: bool = False,
        above: bool = False,
        maximum: float = LIMIT,
    ) -> Any:
        v = self.raw(key)
        if v is _MISSING or v is None:
            return default
        kind = "an integer" if integer else "a number"
        op = ">" if above else ">="
        if isinstance(v, bool) or not isinstance(v, int | float):
            self.fail(self.at(key), f"must be {kind} {op} {minimum:g}, got {show(v)}")
            return default
        finite = not isinstance(v, float) or math.isfinite(v)  # (ints compare exactly)
        if not finite or (integer and isinstance(v, float) and not v.is_integer()):
            self.fail(self.at(key), f"must be {kind} {op} {minimum:g}, got {show(v)}")
            return default
        if v <= minimum if above else v < minimum:
            self.fail(self.at(key), f"must be {kind} {op} {minimum:g}, got {show(v)}")
            return default
        if v > maximum:
            self.fail(self.at(key), f"must be {kind} <= {maximum:g}, got {show(v)}")
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
            if required and not self.wrong:
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
        if not isinstance(v, Mapping):
            self.fail(self.at(key), f"must map strings to strings, got {show(v)}")
            return {}
        out: dict[str, str] = {}
        for k, x in v.items():
            if isinstance(k, str) and isinstance(x, str):
                out[k] = x
            else:
                self.fail(join(self.at(key), key_name(k)), f"must be a string, got {show(x)}")
        return out

    def done(self) -> None:
        for key in self.data:
            if key not in self.known:
                self.fail(self.at(key_name(key)), "unknown key")
