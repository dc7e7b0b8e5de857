"""YAML loading that remembers where every value came from, so errors name file and line."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, Iterator

import yaml

from orchestrator.errors import ConfigError


class LocDict(dict):
    """A mapping that knows its own line and the line of each key (1-based)."""

    line: int = 0
    key_lines: dict


class LocList(list):
    line: int = 0
    item_lines: list


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that records lines and refuses duplicate keys (a silent YAML trap)."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, AttributeError, LookupError, OverflowError):
            # PyYAML's own constructors raise these for a scalar its tag cannot hold
            # ("!!int abc", the date 2026-13-45): bad input, reported at its line.
            what = f"{node.value!r}" if isinstance(node, yaml.ScalarNode) else "this value"
            raise yaml.constructor.ConstructorError(
                None, None, f"{what} cannot be read as a YAML {node.tag.rsplit(':', 1)[-1]}",
                node.start_mark) from None


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode, deep: bool = False) -> LocDict:
    out = LocDict()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise ConfigError("mapping key must be a plain value", path=loader.name, line=key_node.start_mark.line + 1)
        if key in out:
            raise ConfigError(f"duplicate key {key!r}", path=loader.name, line=key_node.start_mark.line + 1)
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = key_node.start_mark.line + 1
    return out


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode, deep: bool = False) -> LocList:
    out = LocList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.item_lines = [child.start_mark.line + 1 for child in node.value]
    return out


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_located(path: Path) -> tuple[Any, bytes]:
    """Parse ``path``; returns the located data and the raw bytes (for the digest).

    Whatever is wrong with the file itself (unreadable, not UTF-8, characters or syntax YAML
    refuses) is bad input: a ConfigError naming the line, never a parser's exception."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path=str(path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"invalid YAML: not UTF-8 text (byte {raw[exc.start]:#04x})",
                          path=str(path), line=raw.count(b"\n", 0, exc.start) + 1)
    try:
        loader = _LineLoader(text)      # the reader refuses control characters here already
        loader.name = str(path)
        try:
            return loader.get_single_data(), raw
        finally:
            loader.dispose()
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply", path=str(path)) from None
    except yaml.reader.ReaderError as exc:
        raise ConfigError(f"invalid YAML: character U+{exc.character:04X} is not allowed in YAML text",
                          path=str(path), line=text.count("\n", 0, exc.position) + 1)
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, path)
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", path=str(path))


def _syntax_error(exc: yaml.MarkedYAMLError, path: Path) -> ConfigError:
    """One line from PyYAML's multi-line report: the problem, where it was found, and where
    the construct it broke began (an unclosed bracket is found only at the end of the file)."""
    mark = exc.problem_mark or exc.context_mark
    message = (exc.problem or exc.context or "").replace("'<stream end>'", "the end of the file")
    if "'\\t'" in message:
        message += " (YAML indents with spaces, not tabs)"
    if exc.context and exc.problem and exc.context_mark and exc.context_mark.line != mark.line:
        message += f" ({exc.context} that starts at line {exc.context_mark.line + 1})"
    return ConfigError(f"invalid YAML: {message}", path=str(path), line=mark.line + 1 if mark else None)


class Fields:
    """Typed accessors over one located mapping; every error names file, line and field path."""

    def __init__(self, data: Any, path: Path, where: str, line: int = 0):
        if not isinstance(data, dict):
            raise ConfigError(f"{'must' if where else 'the file must'} be a mapping, got {describe(data)}",
                              path=str(path), line=getattr(data, "line", line) or None, field=where or None)
        self.data, self.path, self.where = data, path, where
        self.line = getattr(data, "line", line)

    def _field(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def line_of(self, key: str) -> int:
        return getattr(self.data, "key_lines", {}).get(key, self.line)

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, path=str(self.path), line=self.line_of(key), field=self._field(key))

    def reject_unknown(self, allowed: set[str]) -> None:
        for key in self.data:
            if key not in allowed:
                hint = ", ".join(sorted(allowed))
                raise self.error(str(key), f"unknown field (expected one of: {hint})")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., *, choices=None) -> Any:
        if key not in self.data or self.data[key] is None:
            if default is ...:
                raise ConfigError("required field is missing", path=str(self.path), line=self.line, field=self._field(key))
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
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
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the text {value!r}"
    kinds = ((dict, "a mapping"), (list, "a list"), (datetime.date, "a date"), (bytes, "binary data"),
             (set, "a set"), (tuple, "a list"))
    return next((words for kind, words in kinds if isinstance(value, kind)), "an unsupported value")


def deep_merge(base: dict, over: dict) -> dict:
    """Defaults < group < host: nested mappings merge, everything else is replaced. The
    result keeps ``over``'s line information where ``over`` supplied the key."""
    out = LocDict(base)
    out.line = getattr(over, "line", getattr(base, "line", 0))
    out.key_lines = {**getattr(base, "key_lines", {}), **getattr(over, "key_lines", {})}
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
