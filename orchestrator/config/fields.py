"""Typed access to a located YAML mapping: every error names file, line and field path, and
describes values in the words of the person who wrote the file."""

from __future__ import annotations

import datetime
import difflib
from pathlib import Path
from typing import Any, Iterator

from orchestrator.errors import ConfigError


class Fields:
    """Typed accessors over one located mapping; every error names file, line and field path."""

    def __init__(self, data: Any, path: Path, where: str, line: int = 0):
        if not isinstance(data, dict):
            raise ConfigError(f"{'must' if where else 'the file must'} be a mapping (key: value), got {describe(data)}",
                              path=str(path), line=getattr(data, "line", line) or None, field=where or None)
        self.data, self.path, self.where = data, path, where
        self.line = getattr(data, "line", line)

    def _field(self, key: Any) -> str:
        return f"{self.where}.{key}" if self.where else str(key)

    def line_of(self, key: Any) -> int:
        return getattr(self.data, "key_lines", {}).get(key, self.line)

    def error(self, key: Any, message: str) -> ConfigError:
        """An error at ``key``'s line; a key YAML read as a number or a date is found as such."""
        return ConfigError(message, path=str(self.path), line=self.line_of(key), field=self._field(key))

    def reject_unknown(self, allowed: set[str]) -> None:
        for key in self.data:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                guess = f"did you mean {close[0]!r}? " if close else ""
                raise self.error(key, f"unknown field ({guess}expected one of: {', '.join(sorted(allowed))})")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., *, choices=None) -> Any:
        if key not in self.data or self.data[key] is None:
            if default is ...:
                raise ConfigError("required field is missing", path=str(self.path), line=self.line, field=self._field(key))
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > 1e300:      # float() of a longer integer overflows
                raise self.error(key, f"{describe(value)} is too large to be a number of seconds")
            value = float(value)
        if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
            raise self.error(key, f"must be {_names(kinds)}, got {describe(value)}")
        if choices is not None and value not in choices:
            raise self.error(key, f"{value!r} is not one of: {', '.join(map(str, choices))}")
        return value

    def port(self, key: str, default: Any = ...) -> int:
        value = self.get(key, int, default)
        if value is not None and not 1 <= value <= 65535:
            raise self.error(key, f"port {value} is out of range 1-65535")
        return value

    def str_list(self, key: str, default: Any = ()) -> tuple[str, ...]:
        value = self.get(key, list, None)
        if value is None:
            return tuple(default)
        for i, item in enumerate(value):
            if not isinstance(item, str):
                line = getattr(value, "item_lines", [self.line_of(key)] * len(value))[i]
                raise ConfigError(f"item {i} must be a string, got {describe(item)}",
                                  path=str(self.path), line=line, field=self._field(key))
        return tuple(value)

    def mappings(self, key: str, what: str) -> Iterator[tuple[str, int, dict]]:
        """(field path, line, item) of each item of the list ``key``; each must be a mapping."""
        items = self.get(key, list)
        for i, item in enumerate(items):
            where, line = f"{self._field(key)}[{i}]", items.item_lines[i]
            if not isinstance(item, dict):
                raise ConfigError(f"each {what} must be a mapping, got {describe(item)}",
                                  path=str(self.path), line=line, field=where)
            yield where, line, item

    def sub(self, key: str, default: Any = ...) -> "Fields | None":
        value = self.get(key, dict, default)
        if value is None:
            return None
        return Fields(value, self.path, self._field(key), self.line_of(key))


class UniqueNames:
    """The names given to the items of one list: a second use is refused, naming the first's line."""

    def __init__(self, path: Path, what: str):
        self.path, self.what = path, what
        self.first_line: dict[str, int] = {}

    def add(self, name: str, *, line: int, field: str) -> None:
        if name in self.first_line:
            raise ConfigError(f"duplicate {self.what} name {name!r} (first at line {self.first_line[name]})",
                              path=str(self.path), line=line, field=field)
        self.first_line[name] = line

    def __contains__(self, name: object) -> bool:
        return name in self.first_line


def _names(kinds: tuple[type, ...]) -> str:
    words = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list", dict: "a mapping"}
    return " or ".join(words.get(k, k.__name__) for k in kinds)


def describe(value: Any) -> str:
    """What a YAML value is, in the words of someone who wrote the file (never a type name)."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int) and abs(value) > 10**30:
        return f"a number of {len(str(abs(value)))} digits"       # not a screenful of them
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the text {value!r}" if len(value) <= 80 else f"a text of {len(value)} characters ({value[:40]!r}...)"
    kinds = ((dict, "a mapping"), (list, "a list"), (datetime.date, "a date"), (bytes, "binary data"),
             (set, "a set"), (tuple, "a list"))
    return next((words for kind, words in kinds if isinstance(value, kind)), "an unsupported value")
