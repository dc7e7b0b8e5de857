"""YAML loading that remembers where every value came from, so errors name file and line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from orchestrator.config.fields import Fields, UniqueNames, describe
from orchestrator.config.yamllimits import MAX_DEPTH, MAX_DOCUMENT_BYTES, check_node_graph, too_deep
from orchestrator.errors import ConfigError

# Fields, UniqueNames and describe live in fields.py; the loaders import them from here too.
__all__ = ["Fields", "LocDict", "LocList", "UniqueNames", "deep_merge", "describe", "load_located"]


class LocDict(dict):
    """A mapping that knows its own line and the line of each key (1-based)."""

    line: int = 0
    key_lines: dict


class LocList(list):
    line: int = 0
    item_lines: list


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that records lines and refuses duplicate keys (a silent YAML trap)."""

    # PyYAML's scanner slows down with the square of the nesting (it keeps a possible key per
    # flow level), so depth is refused while scanning, long before the composer would see it.
    def fetch_flow_collection_start(self, TokenClass) -> None:
        self._check_depth()
        super().fetch_flow_collection_start(TokenClass)

    def add_indent(self, column: int) -> bool:
        self._check_depth()
        return super().add_indent(column)

    def _check_depth(self) -> None:
        if self.flow_level + len(self.indents) >= MAX_DEPTH:
            raise too_deep(self.name, self.line + 1)

    def get_single_data(self) -> dict:
        """The file's one document, which must be a mapping (inventories and playbooks are)."""
        node = self.get_single_node()
        if node is None:
            raise ConfigError("the file is empty (or only comments): expected 'key: value' lines, "
                              "starting with 'version: 1'", path=self.name)
        check_node_graph(node, self.name)   # before any alias is followed: bombs stay small
        data = self.construct_document(node)
        if not isinstance(data, dict):
            raise ConfigError(f"the file must be a mapping ('key: value' lines), got {describe(data)}",
                              path=self.name, line=node.start_mark.line + 1)
        return data

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, AttributeError, LookupError, OverflowError):
            # PyYAML's own constructors raise these for a scalar its tag cannot hold
            # ("!!int abc", the date 2026-13-45): bad input, reported at its line.
            what = f"{node.value!r}" if isinstance(node, yaml.ScalarNode) else "this value"
            raise yaml.constructor.ConstructorError(
                None, None, f"{what} cannot be read as a YAML {node.tag.rsplit(':', 1)[-1]} "
                            "(quote it if it is meant as text)", node.start_mark) from None


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode, deep: bool = False) -> LocDict:
    out = LocDict()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    written = sum(1 for key_node, _ in node.value if key_node.tag != _MERGE_TAG)
    loader.flatten_mapping(node)        # "<<: *anchor" pairs come first, the mapping's own last
    merged, from_anchor = len(node.value) - written, set()
    for index, (key_node, value_node) in enumerate(node.value):
        key, line = loader.construct_object(key_node, deep=True), key_node.start_mark.line + 1
        try:
            hash(key)
        except TypeError:
            raise ConfigError("a mapping key must be a plain value, not a list or a mapping",
                              path=loader.name, line=line) from None
        # A key merged in from an anchor may be overridden (that is what merging is for);
        # a key written twice in the same mapping is a silent trap and refused.
        if key in out and key not in from_anchor:
            raise ConfigError(f"duplicate key {key!r} (first at line {out.key_lines[key]}); keep one of them",
                              path=loader.name, line=line)
        (from_anchor.add if index < merged else from_anchor.discard)(key)
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = line
    return out


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode, deep: bool = False) -> LocList:
    out = LocList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.item_lines = [child.start_mark.line + 1 for child in node.value]
    return out


_MERGE_TAG = "tag:yaml.org,2002:merge"
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_located(path: Path) -> tuple[dict, bytes]:
    """Parse ``path``; returns the located mapping and the raw bytes (for the digest).

    Whatever is wrong with the file itself (unreadable, not UTF-8, characters or syntax YAML
    refuses) is bad input: a ConfigError naming the line, never a parser's exception."""
    try:
        with path.open("rb") as file:       # at most one byte past the bound: /dev/zero ends too
            raw = file.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}; check the path and its permissions", path=str(path))
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise ConfigError(f"the file is larger than {MAX_DOCUMENT_BYTES // 1024 // 1024} MiB; an inventory or "
                          "playbook is a few kilobytes: is this the right file?", path=str(path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"invalid YAML: not UTF-8 text (byte {raw[exc.start]:#04x}); save the file as UTF-8",
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
        raise ConfigError(f"invalid YAML: character U+{exc.character:04X} is not allowed in YAML text; remove it "
                          "(control characters and NUL come from binary files or bad copies)",
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
    elif message.startswith("mapping values are not allowed here"):
        message += " (a value containing ': ' must be quoted, or the line is indented too far)"
    if exc.context and exc.problem and exc.context_mark and exc.context_mark.line != mark.line:
        message += f" ({exc.context} that starts at line {exc.context_mark.line + 1})"
    return ConfigError(f"invalid YAML: {message}", path=str(path), line=mark.line + 1 if mark else None)


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
