"""The architecture, checked: which package may import which, and no import cycles.

Read from the source with `ast`, so function-level imports count too (an import moved into a
function to dodge a cycle is still a cycle). The layers, bottom up:

    common/    imports neither mirror nor trainer
    mirror/    may import common, never trainer
    trainer/   may import common, and from mirror only the facade modules in TRAINER_MAY_IMPORT
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "mirror", "trainer")
TRAINER_MAY_IMPORT = 3  # the most mirror modules the trainer may import (issue 25)


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = p.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = p
    return mods


def _graph() -> dict[str, set[str]]:
    mods = _modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                # `from pkg import sub` imports the submodule when there is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for t in targets:
                o = owner(t)
                if o and o != m:
                    graph[m].add(o)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_module_or_function_level():
    assert _cycles(_graph()) == []


def test_common_imports_neither_package():
    g = _graph()
    bad = {m: sorted(t for t in ts if not t.startswith("common")) for m, ts in g.items() if m.startswith("common")}
    assert {m: ts for m, ts in bad.items() if ts} == {}


def test_mirror_never_imports_the_trainer():
    g = _graph()
    bad = {m: sorted(t for t in ts if t.startswith("trainer")) for m, ts in g.items() if m.startswith("mirror")}
    assert {m: ts for m, ts in bad.items() if ts} == {}


def test_the_trainer_uses_mirror_through_a_handful_of_modules():
    g = _graph()
    used = sorted({t for m, ts in g.items() if m.startswith("trainer") for t in ts if t.startswith("mirror")})
    assert len(used) <= TRAINER_MAY_IMPORT, used


def test_the_checker_sees_a_cycle_and_a_function_level_import():
    """The checks above can fail: a made-up graph with a cycle through a function-level import."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    tree = ast.parse("def f():\n    from mirror import hub\n")
    assert any(isinstance(n, ast.ImportFrom) and n.module == "mirror" for n in ast.walk(tree))
