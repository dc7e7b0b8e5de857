"""The package's shape, as docs/DESIGN.md draws it: which room may import which, no import
cycles, and modules and functions small enough to read on one screen.

Imports are read from the source (every ``import``/``from`` statement, also those inside
functions), so a lazy import cannot hide a cycle or a forbidden arrow."""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "orchestrator"

#: room -> the rooms it may import (besides itself and the shared bottom modules).
#: Faces sit on top; nothing but faces/cli (and tests, bench) reaches the virtual lab.
SHARED = {"errors", "paths", "tunables", "__init__"}
MAY_IMPORT = {
    "__main__": {"faces"},
    "faces": {"config", "cycle", "fleet", "kernel", "protocols", "transports", "results", "triage", "vlab"},
    "fleet": {"config", "cycle", "kernel", "protocols", "transports", "results"},
    "cycle": {"config", "kernel", "protocols", "results"},
    "triage": {"kernel"},
    "results": set(),
    "kernel": {"protocols", "config"},
    "transports": {"protocols", "config"},
    "vlab": {"config", "protocols", "transports", "cycle"},
    "config": set(),
    "protocols": set(),
}
MAX_MODULE_LINES = 250
MAX_FUNCTION_LINES = 50


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=None)
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported(path: Path) -> set[str]:
    """Modules of this package that ``path`` imports (a package's __init__ counts for it)."""
    names: set[str] = set()
    current = module_name(path).split(".")
    package = current if path.name == "__init__.py" else current[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)    # "from pkg import module"
    known = modules()
    return {n for n in names if n in known and n != module_name(path)}


@lru_cache(maxsize=None)
def graph() -> dict[str, set[str]]:
    return {name: imported(path) for name, path in modules().items()}


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_the_package_has_no_import_cycle():
    g, index, low, stack, on_stack, cycles = graph(), {}, {}, [], set(), []

    def visit(v: str) -> None:               # Tarjan: every strongly connected component
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_each_room_imports_only_the_rooms_below_it():
    wrong = []
    for module, targets in graph().items():
        source = room(module)
        allowed = MAY_IMPORT.get(source, set()) | SHARED | {source}
        wrong += [f"{module} -> {t}" for t in sorted(targets) if room(t) not in allowed]
    assert not wrong, "imports against docs/DESIGN.md's layering:\n" + "\n".join(wrong)


def test_only_the_command_line_face_reaches_the_virtual_lab():
    outside = [f"{m} -> {t}" for m, targets in graph().items() for t in targets
               if room(t) == "vlab" and room(m) != "vlab" and not m.startswith("orchestrator.faces.cli")]
    assert not outside, outside


@pytest.mark.parametrize("name", sorted(modules()))
def test_module_and_its_functions_fit_on_a_screen(name):
    path = modules()[name]
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path}: {len(text.splitlines())} lines"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path}: {', '.join(long)}"


def test_the_checks_see_real_arrows():
    """The walker itself can fail: the cycle reaches the kernel, the CLI reaches the lab."""
    g = graph()
    assert "orchestrator.kernel.signatures" in set().union(*(g[m] for m in g if m.startswith("orchestrator.cycle")))
    assert any(room(t) == "vlab" for m in g if m.startswith("orchestrator.faces.cli") for t in g[m])
