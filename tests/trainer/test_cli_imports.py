"""trainer/cli/: every import inside a function says why it is there (docs/architecture.md: a
function-level import only defers a heavy library, or waits until the process is offline, and
says so), read from the source with ast, so a new one without its reason fails here."""

from __future__ import annotations

import ast
from pathlib import Path

CLI = Path(__file__).resolve().parents[2] / "trainer" / "cli"


def _explained(lines: list[str], node: ast.stmt, import_lines: set[int]) -> bool:
    """A comment on the import's own lines, or directly above the block of imports it is in
    (imports and blank lines between them count as one block)."""
    if any("#" in lines[i] for i in range(node.lineno - 1, node.end_lineno)):
        return True
    i = node.lineno - 2
    while i >= 0 and (not lines[i].strip() or i in import_lines):
        i -= 1
    return i >= 0 and lines[i].strip().startswith("#")


def function_level_imports() -> list[tuple[str, ast.stmt, list[str], set[int]]]:
    """(file name, import node, the file's lines, the 0-based lines every import of it spans)."""
    found = []
    for path in sorted(CLI.glob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        tree = ast.parse("\n".join(lines))
        spans = {i for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for i in range(n.lineno - 1, n.end_lineno)}
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found += [(path.name, n, lines, spans) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return found


def test_every_function_level_import_in_the_trainer_cli_says_why():
    imports = function_level_imports()
    assert len(imports) >= 15  # the commands do defer their libraries: the check sees them
    unexplained = [f"{name}:{node.lineno}: {ast.unparse(node)}" for name, node, lines, spans in imports if not _explained(lines, node, spans)]
    assert unexplained == [], "function-level imports without a comment saying why:\n" + "\n".join(unexplained)
