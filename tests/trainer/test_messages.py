"""Messages that are right (issue 14), through the CLI: `trainer check` counts every bad row and
groups them by kind, a row without the label field says so, `labels: eligible` is refused and one
class warned about, a broken bundle gives way to an intact one of the same repo, and `trainer run`
finds data errors before it looks for the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import mirror.install
from mirror.bundle.write.driver import write_bundle
from mirror.errors import SignatureError
from trainer.cli import cli
from trainer.offline import offline_env
from tests.trainer.clitools import tiny_config

REPO = "acme/tiny-encoder"
FIX_DATA = "; fix the data file and run 'trainer check' again"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("MIRROR_TRUSTED_KEYS", raising=False)
    with offline_env():
        yield


def _invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _one_line(r) -> str:
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.output
    return lines[0]


def _config(tmp_path: Path, *, rows: str | None = None, name: str = "cfg.yaml", **over) -> tuple[Path, Path]:
    return tiny_config(tmp_path, rows=rows, name=name, **over)


# --- 1: counts and groups ---------------------------------------------------------------------------


def test_check_counts_every_bad_row_and_groups_them_by_kind(tmp_path):
    rows = []
    for i in range(1, 1013 + 1):
        if i == 1:
            rows.append({"text": "fine", "label": "pos"})
        elif i % 46 == 0:  # 22 rows without text
            rows.append({"label": "pos"})
        else:
            rows.append({"text": f"t{i}", "label": "nope"})
    assert sum("text" not in r for r in rows) == 22
    cfg, train = _config(tmp_path, rows="".join(json.dumps(r) + "\n" for r in rows))
    r = _invoke("check", str(cfg))
    assert r.exit_code == 2
    out = r.stdout.splitlines()
    assert "errors (1012)" in out
    assert f"  - {train}: unknown label (990 rows, e.g. rows 2, 3, 4); first: label 'nope' is not one of the config's labels ['pos', 'neg']" in out
    assert f"  - {train}: missing 'text' field (22 rows, e.g. rows 46, 92, 138); first: row 46 has no 'text' field" in out
    assert "result  FAILED: 1012 error(s), 2 warning(s)" in out
    assert not any("more data errors" in line for line in out)
    assert _one_line(r) == "trainer: error: check found 1012 error(s), listed above; fix them and run 'trainer check' again"
    j = json.loads(_invoke("check", str(cfg), "--json").stdout)
    assert j["error_count"] == 1012 and len(j["errors"]) == 2
    v = _invoke("check", str(cfg), "-v")  # -v: every row on its own line
    assert v.stdout.count("is not one of the config's labels") == 990 and "errors (1012)" in v.stdout


# --- 2: a row without the label field ----------------------------------------------------------------


def test_a_row_without_the_label_field_says_so(tmp_path):
    rows = "".join(json.dumps({"text": f"t{i}", "label": "pos"}) + "\n" for i in range(5)) + json.dumps({"text": "t6"}) + "\n"
    cfg, train = _config(tmp_path, rows=rows, label_field="category")
    cfg.write_text(cfg.read_text().replace('"label"', '"category"'))
    train.write_text(rows.replace('"label"', '"category"'))
    r = _invoke("check", str(cfg))
    assert r.exit_code == 2
    assert f"  - {train}:6: row 6 has no 'category' field{FIX_DATA}" in r.stdout.splitlines()
    assert "None" not in r.stdout


# --- 3: labels as a string; one class ---------------------------------------------------------------


def test_labels_given_as_a_string_is_a_config_error(tmp_path):
    cfg, _ = _config(tmp_path, labels="eligible")
    expected = f"trainer: error: {cfg}: labels must be a list of class names, got the string 'eligible'; fix the config (see configs/ for working examples)"
    r = _invoke("check", str(cfg))
    assert r.exit_code == 2 and _one_line(r) == expected
    r = _invoke("run", str(cfg))
    assert r.exit_code == 2 and _one_line(r) == expected


def test_a_classifier_with_one_class_is_warned_about_in_check_and_once_in_run(tmp_path):
    warning = "labels has a single class 'pos': a classifier needs at least two to learn anything"
    cfg, _ = _config(tmp_path, labels=["pos"], rows='{"text": "a", "label": "pos"}\n')
    r = _invoke("check", str(cfg))
    assert r.exit_code == 0 and f"  - {warning}" in r.stdout.splitlines()
    cfg2, _ = _config(tmp_path, name="gone.yaml", labels=["pos"], rows='{"text": "a", "label": "pos"}\n', model_id="acme/not-here")
    r = _invoke("run", str(cfg2), "--bundles", str(tmp_path / "none"))
    assert r.exit_code == 3 and "Traceback" not in r.output
    lines = r.stderr.splitlines()
    assert lines.count(f"warning: {warning}") == 1
    assert lines[-1].startswith("trainer: error: model acme/not-here is not available offline")


# --- 4: a broken bundle gives way to an intact one ---------------------------------------------------


def _model_folder(root: Path, hidden: int) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": hidden}))
    (root / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (root / "tokenizer_config.json").write_text("{}")
    return root


def _bundle(tmp_path: Path, created_at: str, hidden: int):
    src = _model_folder(tmp_path / f"src-{created_at[:10]}", hidden)
    return write_bundle(
        src_root=src, repo_id=REPO, revision="main", commit=None, source=f"local:{src.name}",
        created_at=created_at, license=None, out_dir=tmp_path / "bundles",
    )


def test_check_uses_the_intact_bundle_and_names_the_truncated_one(tmp_path):
    old = _bundle(tmp_path, "2025-06-01T00:00:00Z", 8)
    new = _bundle(tmp_path, "2026-03-01T00:00:00Z", 16)
    data = new.path.read_bytes()
    new.path.write_bytes(data[: len(data) * 2 // 3])  # truncated: the manifest still reads
    cfg, _ = _config(tmp_path, model_id=REPO)
    r = _invoke("check", str(cfg), "--bundles", str(tmp_path / "bundles"))
    assert r.exit_code == 0, r.output
    model = next(line for line in r.stdout.splitlines() if line.startswith("model   "))
    assert "NOT AVAILABLE" not in model and f"(commit {old.manifest.commit[:12]})" in model
    assert f"; skipped broken bundle: {new.path}" in model and f"; used {old.path.name} instead" in model
    snapshot = tmp_path / "hf-cache" / "models--acme--tiny-encoder" / "snapshots" / old.manifest.commit
    assert json.loads((snapshot / "config.json").read_text())["hidden_size"] == 8


def test_a_signature_refusal_falls_back_only_under_the_same_key_policy(tmp_path, monkeypatch):
    old = _bundle(tmp_path, "2025-06-01T00:00:00Z", 8)
    new = _bundle(tmp_path, "2026-03-01T00:00:00Z", 16)
    (tmp_path / "k.pub").write_text("PEM")
    real = mirror.install.install_bundle
    calls = []
    signed = {old.path}

    def install_bundle(path, *, cache_dir=None, public_keys=(), **kw):
        calls.append((Path(path).name, list(public_keys)))
        if Path(path) not in signed:
            raise SignatureError(str(path), "signature required and not valid: the bundle is not signed")
        return real(path, cache_dir=cache_dir, **kw)

    monkeypatch.setattr(mirror.install, "install_bundle", install_bundle)
    cfg, _ = _config(tmp_path, model_id=REPO)
    key = str(tmp_path / "k.pub")
    r = _invoke("check", str(cfg), "--bundles", str(tmp_path / "bundles"), "--public-key", key)
    assert r.exit_code == 0, r.output
    assert calls == [(new.path.name, [key]), (old.path.name, [key])]  # newest first, the same keys for both
    model = next(line for line in r.stdout.splitlines() if line.startswith("model   "))
    assert f"; skipped refused (signature) bundle: {new.path}: signature required and not valid" in model
    assert f"used {old.path.name} instead" in model

    signed.clear()  # no candidate passes the key policy: refused, exit 5, nothing installed unsigned
    calls.clear()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache2"))
    r = _invoke("check", str(cfg), "--bundles", str(tmp_path / "bundles"), "--public-key", key, "-q")
    assert r.exit_code == 5 and [c[0] for c in calls] == [new.path.name, old.path.name]
    assert r.stdout.strip() == f"{cfg}: FAILED: 1 error(s), 1 warning(s)"
    assert not (tmp_path / "cache2" / "models--acme--tiny-encoder").exists()


# --- 5: run checks the data before the model ---------------------------------------------------------


def test_run_reports_a_data_error_before_looking_for_the_model(tmp_path):
    rows = '{"text": "a", "label": "pos"}\n{"text": "b", "label": "maybe"}\n'
    cfg, train = _config(tmp_path, rows=rows, model_id="acme/not-here")
    r = _invoke("run", str(cfg), "--bundles", str(tmp_path / "none"))
    assert r.exit_code == 2
    assert _one_line(r) == f"trainer: error: {train}:2: label 'maybe' is not one of the config's labels ['pos', 'neg']{FIX_DATA}"
    train.write_text('{"text": "a", "label": "pos"}\n{"text": "b"\n')
    r = _invoke("run", str(cfg), "--bundles", str(tmp_path / "none"))
    assert r.exit_code == 2 and _one_line(r).startswith(f"trainer: error: {train}:2: not valid JSON")
    train.write_text('{"text": "a", "label": "pos"}\n{"label": "neg"}\n')
    r = _invoke("run", str(cfg), "--bundles", str(tmp_path / "none"))
    assert r.exit_code == 2 and _one_line(r) == f"trainer: error: {train}:2: row 2 has no 'text' field{FIX_DATA}"
    train.write_text(rows.replace("maybe", "neg"))  # good data: now the model is what fails
    r = _invoke("run", str(cfg), "--bundles", str(tmp_path / "none"))
    assert r.exit_code == 3 and "is not available offline" in _one_line(r)
