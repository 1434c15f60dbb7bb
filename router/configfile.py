"""Reading a config file into a plain tree: YAML or JSON, nothing typed yet.

Refused here, each with the file, line and column where the format has them: syntax
errors, duplicate keys, nesting deeper than MAX_DEPTH, anchors that refer to themselves
or expand past MAX_VALUES. Messages never quote the offending line: it may hold a key.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import orjson
import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from router.schema import ConfigError, join, key_name

MAX_DEPTH = 64  # a real config nests about 6 deep
MAX_VALUES = 100_000  # values once YAML anchors are expanded
MAX_BYTES = 16 * 1024 * 1024
_MERGE = "tag:yaml.org,2002:merge"
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def read(path: Path) -> Any:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    if len(data) > MAX_BYTES:
        raise ConfigError([f"{path}: larger than {MAX_BYTES // 2**20} MiB; not a config file"])
    if path.suffix == ".json":
        return _json(path, data)
    return _yaml(path, data)


class _Loader(yaml.SafeLoader):
    """The safe loader, refusing absurd nesting as it composes (before Python's stack does)."""

    depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise _Refused(f"line {mark.line + 1}: nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _Refused(Exception):
    pass


def _yaml(path: Path, data: bytes) -> Any:
    loader: _Loader | None = None
    try:
        loader = _Loader(data)
        node = loader.get_single_node()
        if node is None:
            return None
        problems: list[str] = []
        _Measure(problems).node(node, "", 1)
        if problems:
            raise ConfigError([f"{path}: {p}" for p in problems])
        return loader.construct_document(node)
    except _Refused as exc:
        raise ConfigError([f"{path}: {exc}"]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError([f"{where}: not valid YAML: {_problem(exc)}"]) from None
    except yaml.reader.ReaderError as exc:
        raise ConfigError(
            [f"{path}: not valid YAML: {exc.reason} at byte {exc.position}"]
        ) from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
        # A value the YAML resolver took for a date or number but that is none (2024-02-30).
        raise ConfigError([f"{path}: not valid YAML: {type(exc).__name__}"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: nested too deep"]) from None
    finally:
        if loader is not None:
            loader.dispose()


def _problem(exc: yaml.MarkedYAMLError) -> str:
    """The parser's words without what it quotes, unless that is a character or a token."""

    def keep(m: re.Match[str]) -> str:
        inner = m.group()[1:-1]
        return m.group() if len(inner) <= 2 or inner.startswith("<") else "'...'"

    text = " ".join(x for x in (exc.context, exc.problem) if x)
    return _QUOTED.sub(keep, text) or "syntax error"


class _Measure:
    """Walks the composed YAML graph once per node: duplicate keys (with their path and line),
    anchors that contain themselves, and the size and depth the tree will have once built."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        self.done: dict[int, tuple[int, int]] = {}  # id(node) -> (values, height)
        self.open: set[int] = set()

    def node(self, node: Node, path: str, depth: int) -> tuple[int, int]:
        known = self.done.get(id(node))
        if known is None:
            if id(node) in self.open:
                raise _Refused(f"line {node.start_mark.line + 1}: an anchor refers to itself")
            if depth > MAX_DEPTH:
                raise _Refused(f"{path}: nested deeper than {MAX_DEPTH} levels")
            self.open.add(id(node))
            known = self.done[id(node)] = self._children(node, path, depth)
            self.open.discard(id(node))
        values, height = known
        if depth + height - 1 > MAX_DEPTH:
            raise _Refused(f"{path or '<root>'}: nested deeper than {MAX_DEPTH} levels")
        return known

    def _children(self, node: Node, path: str, depth: int) -> tuple[int, int]:
        values, height = 1, 0
        children: list[tuple[Node, str]] = []
        child: Node
        if isinstance(node, SequenceNode):
            children = [(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        elif isinstance(node, MappingNode):
            seen: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                name = key.value if isinstance(key, ScalarNode) else None
                where = join(path, key_name(name))
                if isinstance(key, ScalarNode) and key.tag != _MERGE:
                    first = seen.setdefault((key.tag, key.value), key.start_mark.line + 1)
                    if first != key.start_mark.line + 1:
                        self.problems.append(
                            f"{where}: duplicate key at line {key.start_mark.line + 1}"
                            f" (first at line {first})"
                        )
                children += [(key, path), (value, where)]
        for child, where in children:
            v, h = self.node(child, where, depth + 1)
            values, height = values + v, max(height, h)
            if values > MAX_VALUES:
                raise _Refused(f"more than {MAX_VALUES} values once its anchors are expanded")
        return values, height + 1


def _json(path: Path, data: bytes) -> Any:
    try:
        tree = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        where = f"{path}:{exc.lineno}:{exc.colno}"
        raise ConfigError([f"{where}: not valid JSON: {exc.msg.split(':')[0]}"]) from None
    problems: list[str] = []
    if _depth(tree) > MAX_DEPTH:
        raise ConfigError([f"{path}: nested deeper than {MAX_DEPTH} levels"])
    # orjson keeps the last of duplicate keys silently; the standard parser can tell.
    _duplicates(json.loads(data, object_pairs_hook=_Object), "", problems)
    if problems:
        raise ConfigError([f"{path}: {p}" for p in problems])
    return tree


def _depth(tree: Any) -> int:
    deepest, stack = 0, [(tree, 1)]
    while stack:
        value, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            break
        if isinstance(value, dict):
            stack += [(v, depth + 1) for v in value.values()]
        elif isinstance(value, list):
            stack += [(v, depth + 1) for v in value]
    return deepest


class _Object(dict[str, Any]):
    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.dups: list[str] = []
        if len(self) < len(pairs):
            seen: set[str] = set()
            for k, _ in pairs:
                if k in seen:
                    self.dups.append(k)
                seen.add(k)


def _duplicates(tree: Any, path: str, problems: list[str]) -> None:
    if isinstance(tree, _Object):
        problems += [f"{join(path, key_name(k))}: duplicate key" for k in dict.fromkeys(tree.dups)]
        for k, v in tree.items():
            _duplicates(v, join(path, key_name(k)), problems)
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            _duplicates(v, f"{path}[{i}]", problems)
