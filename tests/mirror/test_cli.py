"""The `mirror` CLI: exit codes, one-line errors, the bundle path as the last line of stdout."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from mirror import hub
from mirror.bundle import BundleInfo
from mirror.bundle.codec import read_manifest
from mirror.cli import cli


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, code: int, needle: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.output)
    assert result.stderr.startswith("mirror: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)


def test_pack_prints_the_bundle_path_last(packed, tmp_path):
    assert packed.parent == tmp_path / "out" and packed.is_file()
    assert read_manifest(packed).repo_id == "acme/m"


def test_verify_ok_and_failure(packed, tmp_path):
    r = run("verify", packed)
    assert r.exit_code == 0 and r.stdout.startswith("OK acme/m@")
    raw = bytearray(packed.read_bytes())
    raw[-10240 - 500] ^= 0x01  # a byte near the end of model.safetensors, the last payload member
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(raw))
    r = run("verify", bad)
    m = read_manifest(packed).by_path()["model.safetensors"]
    assert f"mismatched: model.safetensors: sha256 expected {m.sha256}, actual " in r.stdout
    assert_one_line_error(r, 4, "1 mismatched; do not install it")


def test_verify_json(packed):
    sha = hashlib.sha256(packed.read_bytes()).hexdigest()
    r = run("verify", "--json", packed)
    d = json.loads(r.stdout)
    # the .sha256 sidecar beside it is checked, so its sha256 is computed
    assert r.exit_code == 0 and d["ok"] is True and d["repo_id"] == "acme/m" and d["bundle_sha256"] == sha
    packed.with_name(packed.name + ".sha256").unlink()
    r = run("verify", "--json", packed)  # nothing asks for it: the files are hashed in parallel instead
    assert r.exit_code == 0 and json.loads(r.stdout)["bundle_sha256"] is None
    r = run("verify", "--json", "--print-sha256", packed)
    d = json.loads(r.stdout)
    assert r.exit_code == 0 and d["ok"] is True and d["bundle_sha256"] == sha


def test_inspect_human_and_json(packed):
    r = run("inspect", packed)
    assert r.exit_code == 0 and "repo:      acme/m (model)" in r.stdout and "model.safetensors" in r.stdout
    r = run("inspect", "--json", packed)
    assert r.stdout.encode() == read_manifest(packed).to_json()


def test_install_then_list_installed(packed, tmp_path):
    cache = tmp_path / "cache"
    r = run("install", packed, "--cache-dir", cache)
    commit = read_manifest(packed).commit
    assert r.exit_code == 0 and r.stdout.splitlines()[-1] == str(cache / "models--acme--m" / "snapshots" / commit)
    assert "installed: acme/m@" in r.stderr
    again = run("install", packed, "--cache-dir", cache)
    assert again.exit_code == 0 and "already installed" in again.stderr
    r = run("list", "--installed", "--cache-dir", cache)
    head, row = r.stdout.splitlines()
    assert r.exit_code == 0 and head.split()[:3] == ["REPO", "COMMIT", "REFS"] and row.split()[:3] == ["acme/m", commit[:12], "local,main"]


def test_list_bundles(packed, tmp_path):
    (tmp_path / "out" / "broken.tar").write_bytes(b"garbage" * 100)
    r = run("list", tmp_path / "out")
    head, *lines = r.stdout.splitlines()
    assert head.split()[:3] == ["REPO", "COMMIT", "REVISION"]
    assert r.exit_code == 10 and len(lines) == 2  # the unreadable one is a row, and fails the command
    assert r.stderr == "mirror: error: 1 of 2 bundle(s) could not be read\n"
    assert lines[0].startswith(packed.name.replace("acme--m--", "acme/m ")[:6]) and "5 files" in lines[0]
    assert lines[1].startswith("broken.tar") and "unreadable" in lines[1]


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["verify", "absent.tar"], 2, "absent.tar: no such bundle"),
        (["inspect", "absent.tar"], 2, "no such bundle"),
        (["install", "absent.tar"], 2, "no such bundle"),
        (["pull"], 2, "nothing to pull"),
        (["list", "nowhere"], 2, "nowhere is not a directory"),
    ],
)
def test_bad_input_gives_one_line_and_an_exit_code(args, code, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run(*args), code, needle)


def test_not_a_bundle(tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"hello" * 300)
    assert_one_line_error(run("verify", junk), 10, "not a mirror bundle")


def test_pack_errors_leave_nothing_partial(folder, tmp_path, monkeypatch):
    assert_one_line_error(run("pack", folder, "--repo-id", "a/b/c", "--out", tmp_path / "out"), 2, "is not a Hub repo id")
    import mirror.bundle.write.sinks

    monkeypatch.setattr(mirror.bundle.write.sinks.shutil, "disk_usage", lambda p: type("U", (), {"free": 10})())
    assert_one_line_error(run("pack", folder, "--repo-id", "acme/m", "--out", tmp_path / "out"), 7, "not enough disk space")
    assert list((tmp_path / "out").iterdir()) == []


def test_interrupt_exits_130(folder, tmp_path, monkeypatch):
    import mirror.pack

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mirror.pack, "write", interrupted)
    r = run("pack", folder, "--repo-id", "acme/m", "--out", tmp_path / "out")
    assert r.exit_code == 130 and r.stderr.startswith("mirror: error: interrupted")


def test_pull_wiring_config_and_last_line(packed, tmp_path, monkeypatch):
    calls = []

    def fake_pull(repo_id, **kw):
        calls.append((repo_id, kw))
        return BundleInfo(path=packed, sha256="0" * 64, size=1, manifest=read_manifest(packed))

    monkeypatch.setattr(hub, "pull", fake_pull)
    cfg = tmp_path / "train.yaml"
    cfg.write_text("# trainer train train.yaml\nmodel_id: sentence-transformers/all-MiniLM-L6-v2\noutput_dir: runs/x\ntrain_files: [a.jsonl]\n")
    r = run("pull", "org/one", "--config", cfg, "--revision", "v2", "--exclude", "*.onnx", "--out", tmp_path / "b", "--endpoint", "http://127.0.0.1:9", "--token", "hf_secret")
    assert r.exit_code == 0, r.output
    assert [c[0] for c in calls] == ["org/one", "sentence-transformers/all-MiniLM-L6-v2"]
    kw = calls[0][1]
    assert (kw["revision"], kw["exclude"], kw["out_dir"], kw["endpoint"], kw["token"]) == ("v2", ["*.onnx"], tmp_path / "b", "http://127.0.0.1:9", "hf_secret")
    assert r.stdout.splitlines()[-1] == str(packed)
    assert "hf_secret" not in r.output


def test_pull_config_without_model_id(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("output_dir: x\n")
    assert_one_line_error(run("pull", "--config", cfg), 2, "no 'model_id' string")


def test_help_shows_examples_and_default_excludes():
    for cmd in ("pull", "pack", "verify", "inspect", "install", "list"):
        r = run(cmd, "--help")
        assert r.exit_code == 0 and "Examples:" in r.stdout, cmd
    assert "*.bin" in run("pull", "--help").stdout


def test_python_dash_m_mirror(tmp_path):
    p = subprocess.run([sys.executable, "-m", "mirror", "verify", str(tmp_path / "x.tar")], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr == f"mirror: error: {tmp_path / 'x.tar'}: no such bundle; check the path\n"
