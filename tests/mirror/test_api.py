"""mirror.api, the facade the trainer and scripts use: every name resolves, the lazy table and
the typed imports agree, importing it loads no Hugging Face library, and a name is looked up
at each use (a test's monkeypatch of the module is what the caller gets)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import mirror.install
from mirror import api


def test_every_public_name_resolves():
    missing = [name for name in api.__all__ if getattr(api, name, None) is None]
    assert missing == []
    assert api.trust_policy is __import__("mirror.trust", fromlist=["policy"]).policy
    assert issubclass(api.SignatureError, api.MirrorError)


def test_the_typed_imports_are_the_lazy_table():
    """The TYPE_CHECKING block (what readers, type checkers and the layering test see) names
    exactly what `__getattr__` loads, from the same modules."""
    tree = ast.parse(Path(api.__file__).read_text(encoding="utf-8"))
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    typed = {(a.asname or a.name): (imp.module, a.name) for imp in block.body for a in imp.names}
    assert typed == api._LAZY


def test_importing_the_facade_imports_no_hugging_face_library():
    code = "import sys, mirror.api; print(sorted(m for m in ('huggingface_hub', 'transformers', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"


def test_a_name_is_looked_up_at_each_use(monkeypatch):
    real = api.install_bundle
    assert real is mirror.install.install_bundle
    monkeypatch.setattr(mirror.install, "install_bundle", lambda *a, **k: "patched")
    assert api.install_bundle() == "patched"


def test_an_unknown_name_says_where_the_public_ones_are():
    try:
        api.write_bundle  # internal: not on the facade
    except AttributeError as e:
        assert "mirror.api.__all__" in str(e)
    else:
        raise AssertionError("an internal name resolved through the facade")
