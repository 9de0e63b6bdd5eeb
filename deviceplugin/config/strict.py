"""The strict reader behind every user-written document fatia takes: typed getters that
name the key path.

A config (:mod:`deviceplugin.config.schema`) and a claim's ``gpu.fatia.dev`` parameters
(:mod:`deviceplugin.dra.sharing`) are read the same way, so they fail the same way: an
unknown key, a wrong type, a value out of its range or not one of its choices raises
:class:`~mig.errors.ConfigError` whose message starts with the key path
(``gpus[1].replicas: ...``), and a value is quoted short (:func:`show`) so a message stays
readable whatever was written.

Pure: plain data in, values or an error out.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping
from typing import Any

from deviceplugin.config import limits
from mig.errors import ConfigError

TYPE_NAMES: dict[type, str] = {
    dict: "a mapping",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    type(None): "empty",
    bytes: "binary data",
    datetime.date: "a date",
    datetime.datetime: "a timestamp",
}


def kind_of(value: object) -> str:
    return TYPE_NAMES.get(type(value), type(value).__name__)


def show(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: a message must stay readable (and small)."""
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print; the loader keeps them short
        text = f"<{kind_of(value)}>"
    return text if len(text) <= limit else text[: limit - 1] + "\N{HORIZONTAL ELLIPSIS}"


class Node:
    """A mapping being validated: typed getters, and a check for unknown keys."""

    def __init__(self, data: Mapping[Any, Any], path: str) -> None:
        self.data = data
        self.path = path

    def at(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key

    def only(self, *allowed: str) -> None:
        unknown = [k for k in self.data if k not in allowed]
        if unknown:
            key = unknown[0]
            name = show(key, 60).strip("'") if isinstance(key, str) else show(key, 60)
            raise ConfigError(f"{self.at(name)}: unknown key; allowed here: {', '.join(allowed)}")

    def get(self, key: str, types: type | tuple[type, ...], default: Any = None) -> Any:
        if key not in self.data or self.data[key] is None:
            return default
        value = self.data[key]
        wanted = types if isinstance(types, tuple) else (types,)
        if isinstance(value, bool) and bool not in wanted:
            raise ConfigError(f"{self.at(key)}: expected {_names(wanted)}, got a boolean")
        if not isinstance(value, wanted):
            raise ConfigError(f"{self.at(key)}: expected {_names(wanted)}, got {kind_of(value)}")
        return value

    def child(self, key: str) -> Node:
        return Node(self.get(key, dict, {}), self.at(key))

    def items(self, key: str, maximum: int, default: list[Any] | None = None) -> list[Any]:
        """A list of at most ``maximum`` items."""
        values: list[Any] = self.get(key, list, [] if default is None else default)
        if len(values) > maximum:
            raise ConfigError(f"{self.at(key)}: {len(values)} entries; at most {maximum}")
        return values

    def children(self, key: str, maximum: int) -> list[Node]:
        nodes = []
        for i, item in enumerate(self.items(key, maximum)):
            if not isinstance(item, dict):
                raise ConfigError(f"{self.at(key)}[{i}]: expected a mapping, got {kind_of(item)}")
            nodes.append(Node(item, f"{self.at(key)}[{i}]"))
        return nodes

    def text(self, key: str, default: str | None = None, *, maximum: int = limits.MAX_STRING) -> str | None:
        value: str | None = self.get(key, str, default)
        if value is not None and len(value) > maximum:
            raise ConfigError(f"{self.at(key)}: {len(value)} characters; at most {maximum}")
        return value

    def flag(self, key: str, default: bool = False) -> bool:
        return bool(self.get(key, bool, default))

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            raise ConfigError(f"{self.at(key)}: must be one of {', '.join(choices)}, not {show(value)}")
        return str(value)

    def whole(self, key: str, default: int | None = None, *, minimum: int = 1, maximum: int) -> int | None:
        """A whole number within ``[minimum, maximum]``."""
        value: int | None = self.get(key, int, default)
        if value is not None:
            check_range(self.at(key), value, minimum, maximum)
        return value


def check_range(path: str, value: float, minimum: float, maximum: float) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{path}: must be a finite number, not {value}")
    if value < minimum:
        raise ConfigError(f"{path}: must be at least {_bound(minimum)}, not {show(value)}")
    if value > maximum:
        raise ConfigError(f"{path}: must be at most {_bound(maximum)}, not {show(value)}")


def _bound(limit: float) -> str:
    return str(int(limit)) if float(limit).is_integer() else str(limit)


def _names(types: tuple[type, ...]) -> str:
    return " or ".join(TYPE_NAMES.get(t, t.__name__) for t in types)
