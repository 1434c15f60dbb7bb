"""Routing strategies, by name: every name resolves through one import-from-string path.

A built-in name maps to a `module:attr` inside this package; anything else written as
`package.module:attr` is a user policy (see base.py), imported and instantiated at load.
Strategies only order the available targets; the balancer keeps availability.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

BUILTIN = {
    "lowest-usage": "router.policies.usage:LowestUsage",
    "round-robin": "router.policies.usage:RoundRobin",
    "priority": "router.policies.priority:Priority",
    "lowest-cost": "router.policies.cost:LowestCost",
    "lowest-latency": "router.policies.latency:LowestLatency",
    "headroom": "router.policies.latency:Headroom",
    "complexity": "router.policies.complexity:Complexity",
}


class PolicyError(Exception):
    """A strategy that cannot be loaded; the message says why (no path: the config adds it)."""


def import_from_string(path: str) -> Any:
    """`package.module:attr` (attr may be dotted) -> the object, as uvicorn resolves apps."""
    module_name, _, attrs = path.partition(":")
    if not module_name or not attrs:
        raise PolicyError(
            f'must be one of {", ".join(BUILTIN)} or "package.module:attr", got {path!r}'
        )
    if os.getcwd() not in sys.path and "" not in sys.path:
        # As uvicorn's --app-dir ".": `llm-router` finds a policy beside where it runs.
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise PolicyError(f"cannot import module {module_name!r}") from None
        raise PolicyError(f"importing {module_name!r} failed: {exc}") from None
    except Exception as exc:  # the user's module raised while loading
        raise PolicyError(
            f"importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    for attr in attrs.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise PolicyError(f"module {module_name!r} has no attribute {attrs!r}") from None
    return obj


def resolve(strategy: str) -> Any:
    """A built-in strategy's class, or a user policy object (a class is instantiated once)."""
    from router.policies.strategy import Strategy

    if strategy in BUILTIN:
        return import_from_string(BUILTIN[strategy])
    obj = import_from_string(strategy)
    if isinstance(obj, type) and issubclass(obj, Strategy):
        return obj
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as exc:
            raise PolicyError(f"{strategy}() failed: {type(exc).__name__}: {exc}") from None
    if not callable(getattr(obj, "order", None)):
        raise PolicyError(f"{strategy} has no order(request, candidates) method")
    return obj
