"""Bounds a YAML document must keep before it is built into Python values.

A few hundred bytes can stand for billions of values through aliases (the "billion laughs"
bomb), a value can contain itself, and nesting can go deeper than any code that follows it.
All of it is checked on the composed node graph, where an alias is still one node shared by
its uses: the check takes time proportional to the file, never to what the file expands to.
The bounds are far above any inventory or playbook a person writes (a 500-host inventory is
about 100 KB, 8 levels deep, with a handful of aliases)."""

from __future__ import annotations

import yaml

from orchestrator.errors import ConfigError

MAX_DOCUMENT_BYTES = 2 * 1024 * 1024
MAX_DEPTH = 64
#: Values a document may gain through its aliases, counted as if every alias were written out.
MAX_ALIASED_VALUES = 100_000


def check_node_graph(root: yaml.Node, path: str) -> None:
    """Refuse a document that nests too deeply, contains itself, or expands through aliases
    beyond MAX_ALIASED_VALUES; a ConfigError names the line of the offending anchor or value."""
    _Walk(path).visit(root, 1)


def too_deep(path: str, line: int) -> ConfigError:
    return ConfigError(f"invalid YAML: nested too deeply (more than {MAX_DEPTH} levels; an inventory or "
                       "playbook needs fewer than 10)", path=path, line=line)


class _Walk:
    def __init__(self, path: str):
        self.path = path
        self.measured: dict[int, tuple[int, int]] = {}   # id(node) -> (values, levels)
        self.open: set[int] = set()                      # nodes whose children are being walked
        self.aliased_values = 0

    def visit(self, node: yaml.Node, depth: int) -> tuple[int, int]:
        """(values, levels) of ``node`` as if written out; ``depth`` is where it is used."""
        key = id(node)
        if key in self.open:
            raise self._error(node, "an alias is used inside the value of its own anchor (a value that "
                                    "contains itself); refer to a value that is complete")
        if key in self.measured:        # a second use of the same node: an alias
            values, levels = self.measured[key]
            self.aliased_values += values
            if self.aliased_values > MAX_ALIASED_VALUES:
                raise self._error(node, f"aliases of the anchor here expand the file to more than "
                                        f"{MAX_ALIASED_VALUES} values (a YAML bomb?); write the values out")
            self._check_depth(node, depth + levels - 1)
            return values, levels
        self._check_depth(node, depth)
        self.open.add(key)
        values, levels = 1, 1
        for child in _children(node):
            child_values, child_levels = self.visit(child, depth + 1)
            values, levels = values + child_values, max(levels, child_levels + 1)
        self.open.discard(key)
        self.measured[key] = values, levels
        return values, levels

    def _check_depth(self, node: yaml.Node, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise too_deep(self.path, node.start_mark.line + 1)

    def _error(self, node: yaml.Node, message: str) -> ConfigError:
        return ConfigError(f"invalid YAML: {message}", path=self.path, line=node.start_mark.line + 1)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []
