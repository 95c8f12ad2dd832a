"""The scripting contract of the `mirror` CLI (issue 14): one exit-code table, `--json` with one
object per input (failed ones too), the worst status of several inputs, "N of M failed", one
error style for click's own usage errors, and messages that say what really happened."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from common import exitcodes
from mirror.cli import cli
from mirror.errors import BundleError, NotEnoughSpace, UsageError
from mirror.bundle.codec import read_manifest
from tests.mirror.test_bundle import make_repo


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def json_lines(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def no_traceback(result) -> None:
    assert "Traceback" not in result.output and isinstance(result.exception, (SystemExit, type(None))), result.output


@pytest.fixture
def corrupt(packed, tmp_path) -> Path:
    raw = bytearray(packed.read_bytes())
    raw[-10240 - 500] ^= 0x01  # inside model.safetensors, the last payload member
    p = tmp_path / "corrupt.tar"
    p.write_bytes(bytes(raw))
    return p


@pytest.fixture
def notes(tmp_path) -> Path:
    p = tmp_path / "notes.txt"
    p.write_text("not a bundle\n" * 100)
    return p


# --- the table ------------------------------------------------------------------------------------


def test_error_classes_use_the_shared_table():
    assert BundleError("x", "y").exit_code == exitcodes.NOT_A_BUNDLE == 10
    assert UsageError("x").exit_code == exitcodes.USAGE == 2
    from mirror.errors import MissingDependency

    assert MissingDependency("signing", packages="cryptography").exit_code == exitcodes.PREREQUISITE


def test_the_top_level_help_ends_with_the_exit_code_table():
    r = run("--help")
    assert r.exit_code == 0
    tail = r.stdout.rstrip().splitlines()
    assert "Exit codes:" in r.stdout and tail[-1].split()[0] == "130"
    assert " 10  not a bundle" in r.stdout


@pytest.mark.parametrize("command", [["verify"], ["install"], ["list"], ["inspect"], ["audit"], ["pack"], ["pull"], ["keygen"], ["sign"], ["signature"]])
def test_each_command_help_points_to_the_table_once_instead_of_repeating_it(command):
    """Issue 22: the 13-line table was repeated in every --help; it is in `mirror --help` and the README."""
    r = run(*command, "--help")
    assert r.exit_code == 0
    assert r.stdout.rstrip().splitlines()[-1].strip() == "Exit codes: see 'mirror --help' or the README."
    assert " 10  not a bundle" not in r.stdout and "130" not in r.stdout


# --- several inputs: all processed, worst status, one JSON line each ------------------------------


def test_verify_several_inputs_exits_with_the_worst_and_gives_each_a_json_line(packed, corrupt, notes):
    r = run("verify", "--json", packed, corrupt, notes)
    no_traceback(r)
    assert r.exit_code == max(exitcodes.INTEGRITY, exitcodes.NOT_A_BUNDLE) == 10
    good, bad, junk = json_lines(r)
    assert good["ok"] is True and good["exit_code"] == 0 and good["repo_id"] == "acme/m"
    assert bad["ok"] is False and bad["exit_code"] == 4 and bad["mismatched"][0]["path"] == "model.safetensors"
    assert junk == {"input": str(notes), "bundle": str(notes), "ok": False, "exit_code": 10, "error": junk["error"]}
    assert "not a mirror bundle" in junk["error"]
    assert r.stderr.splitlines()[-1].startswith("mirror: error: 2 of 3 bundle(s) failed")


def test_verify_order_does_not_change_the_status(packed, corrupt, notes):
    assert run("verify", notes, corrupt, packed).exit_code == 10
    r = run("verify", corrupt, packed)
    assert r.exit_code == 4 and r.stdout.count("OK acme/m@") == 1  # the good one after the bad is still checked
    assert r.stderr.splitlines()[-1].startswith("mirror: error: 1 of 2 bundle(s) failed")


def test_install_several_inputs(packed, notes, tmp_path):
    cache = tmp_path / "cache"
    r = run("install", "--json", notes, packed, "--cache-dir", cache)
    no_traceback(r)
    junk, ok = json_lines(r)
    commit = read_manifest(packed).commit
    assert r.exit_code == 10 and junk["ok"] is False and junk["exit_code"] == 10
    assert ok["ok"] is True and ok["snapshot_dir"] == str(cache / "models--acme--m" / "snapshots" / commit)
    assert "1 of 2 bundle(s) failed" in r.stderr


def test_install_bad_sha256_is_a_usage_error(packed, tmp_path):
    r = run("install", packed, "--sha256", "abc", "--cache-dir", tmp_path / "cache")
    assert r.exit_code == 2 and "is not 64 hex characters" in r.stderr and r.stderr.count("\n") == 1


def test_audit_json_alias_and_worst_code(packed, corrupt, notes, tmp_path):
    d = tmp_path / "estate"
    d.mkdir()
    for p in (packed, corrupt):
        (d / p.name).write_bytes(p.read_bytes())
    (d / "junk.tar").write_bytes(notes.read_bytes())
    r = run("audit", "--json", d)
    rows = {Path(x["bundle"]).name: x for x in json_lines(r)}
    assert r.exit_code == 10 and len(rows) == 3
    assert rows[packed.name]["ok"] is True and rows[packed.name]["exit_code"] == 0
    assert rows["corrupt.tar"]["exit_code"] == 4 and rows["junk.tar"]["exit_code"] == 10 and rows["junk.tar"]["error"]
    assert run("audit", "--format", "json", d).stdout == r.stdout


# --- one error style ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["verify"], "Missing argument 'BUNDLE|DIR...'"),
        (["verify", "x.tar", "--bogus"], "No such option '--bogus'"),
        (["pack", "no-such-folder", "--repo-id", "a/b"], "does not exist"),
        (["nosuchcommand"], "No such command 'nosuchcommand'"),
    ],
)
def test_click_usage_errors_read_like_ours(args, needle):
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("mirror: error: ") and r.stderr.count("\n") == 1 and needle in r.stderr, r.stderr
    assert "Usage:" not in r.output and "see 'mirror" in r.stderr
    no_traceback(r)


def test_quiet_and_verbose_contradict():
    r = run("verify", "-q", "-v", "x.tar")
    assert r.exit_code == 2 and r.stderr.splitlines()[-1].startswith("mirror: error: -q/--quiet and -v/--verbose contradict each other")


def test_verbose_usage_error_shows_the_usage(tmp_path):
    r = run("pack", tmp_path / "nope", "--repo-id", "a/b", "-v")
    assert r.exit_code == 2 and r.stderr.startswith("Usage: mirror pack") and r.stderr.splitlines()[-1].startswith("mirror: error: ")


# --- quiet / verbose ------------------------------------------------------------------------------


def test_quiet_and_verbose(folder, tmp_path):
    q = run("pack", folder, "--repo-id", "acme/m", "--out", tmp_path / "out", "-q")
    assert q.exit_code == 0 and q.stderr == "" and Path(q.stdout.strip()).is_file()
    v = run("verify", "-v", q.stdout.strip())
    assert v.exit_code == 0 and "checked 5 files" in v.stderr and v.stdout.startswith("OK acme/m@")
    i = run("install", "-q", q.stdout.strip(), "--cache-dir", tmp_path / "cache")
    assert i.exit_code == 0 and i.stderr == "" and i.stdout.strip().endswith(read_manifest(Path(q.stdout.strip())).commit)


def test_quiet_and_verbose_reach_the_progress_reporter(packed, monkeypatch):
    progress = pytest.importorskip("common.progress")
    seen = []
    monkeypatch.setattr(progress, "configure", lambda **kw: seen.append(kw))
    assert run("verify", "-q", packed).exit_code == 0 and seen[-1] == {"quiet": True, "verbose": False}
    assert run("verify", "-v", packed).exit_code == 0 and seen[-1] == {"quiet": False, "verbose": True}


# --- signatures -----------------------------------------------------------------------------------


def test_keygen_creates_the_folder_sign_prints_the_new_digest_and_verify_prints_one_verdict(packed, tmp_path):
    r = run("keygen", tmp_path / "keys" / "release")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "keys" / "release.pem").is_file() and (tmp_path / "keys" / "release.pub").is_file()
    r = run("keygen", "--json", tmp_path / "keys" / "other")
    other = json.loads(r.stdout)
    assert r.exit_code == 0 and other["public"].endswith("other.pub") and len(other["key_sha256"]) == 64
    before = hashlib.sha256(packed.read_bytes()).hexdigest()
    r = run("sign", packed, "--key", tmp_path / "keys" / "release.pem")
    after = hashlib.sha256(packed.read_bytes()).hexdigest()
    assert r.exit_code == 0 and before != after and f"its sha256 is now {after}" in r.stderr and "rewrote" in r.stderr

    good = run("verify", packed, "--public-key", tmp_path / "keys" / "release.pub")
    assert good.exit_code == 0 and good.stdout.count("\n") == 1 and "intact, signature valid" in good.stdout

    wrong = run("verify", packed, "--public-key", tmp_path / "keys" / "other.pub")
    assert wrong.exit_code == 5 and "intact" not in wrong.stdout and wrong.stdout == ""
    assert wrong.stderr.startswith("mirror: error: ") and wrong.stderr.count("\n") == 1
    j = run("verify", "--json", packed, "--public-key", tmp_path / "keys" / "other.pub")
    (d,) = json_lines(j)
    assert j.exit_code == 5 and d["ok"] is False and d["exit_code"] == 5 and "signature" in d["error"]


# --- messages that are right ----------------------------------------------------------------------


def test_list_installed_missing_cache_names_it(tmp_path):
    r = run("list", "--installed", "--cache-dir", tmp_path / "missing")
    assert r.exit_code == 3 and str(tmp_path / "missing") in r.stderr and "does not exist" in r.stderr
    assert r.stderr.count("\n") == 1


def test_list_json_and_header(packed, notes, tmp_path):
    (packed.parent / "junk.tar").write_bytes(notes.read_bytes())
    r = run("list", "--json", packed.parent)
    rows = {Path(x["bundle"]).name: x for x in json_lines(r)}
    assert r.exit_code == 10 and rows[packed.name]["repo_id"] == "acme/m" and rows[packed.name]["files"] == 5
    assert rows["junk.tar"]["ok"] is False and rows["junk.tar"]["exit_code"] == 10
    t = run("list", packed.parent)
    assert t.stdout.splitlines()[0].split() == ["REPO", "COMMIT", "REVISION", "SIZE", "FILES", "SIGNED", "BY", "BUNDLE"]


def test_inspect_truncated_checks_first_then_prints(packed, tmp_path):
    cut = tmp_path / "cut.tar"
    cut.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    r = run("inspect", cut)
    no_traceback(r)
    assert r.exit_code == 10 and r.stdout == "" and r.stderr.startswith("mirror: error: ") and "truncated" in r.stderr
    j = run("inspect", "--json", cut)
    (d,) = json_lines(j)
    assert j.exit_code == 10 and d["ok"] is False and d["exit_code"] == 10


def test_inspect_plain_labels(tmp_path):
    d = tmp_path / "trained"
    make_repo(d)
    (d / "lineage.json").write_text('{"base": "acme/base"}')
    r = run("pack", d, "--repo-id", "acme/t", "--out", tmp_path / "out")
    r = run("inspect", r.stdout.strip())
    assert r.exit_code == 0 and "extra:" not in r.stdout and "training record" in r.stdout and "policy:" in r.stdout


def test_pack_include_exclude_and_the_pickle_advice_works(folder, tmp_path):
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    refused = run("pack", folder, "--repo-id", "acme/m", "--out", tmp_path / "out")
    assert refused.exit_code == 6 and "--exclude" in refused.stderr
    r = run("pack", folder, "--repo-id", "acme/m", "--out", tmp_path / "out", "--exclude", "*.bin")
    assert r.exit_code == 0, r.output
    assert "pytorch_model.bin" not in read_manifest(Path(r.stdout.strip())).by_path()
    r = run("pack", folder, "--repo-id", "acme/m", "--out", tmp_path / "out2", "--include", "*.json")
    assert r.exit_code == 0 and sorted(read_manifest(Path(r.stdout.strip())).by_path()) == ["1_Pooling/config.json", "config.json"]
    r = run("pack", folder, "--repo-id", "acme/m", "--out", tmp_path / "out3", "--include", "*.nothing")
    assert r.exit_code == 2 and "left after --include/--exclude" in r.stderr


def test_not_enough_space_says_real_numbers():
    e = NotEnoughSpace("/c", needed=2_500, free=29_400_000)
    assert "need 2.5 KB, 29.4 MB free" in str(e)


def test_install_disk_full_reports_the_bytes_it_needs(packed, tmp_path, monkeypatch):
    import mirror.install

    monkeypatch.setattr(mirror.install.shutil, "disk_usage", lambda p: type("U", (), {"free": 10})())
    r = run("install", packed, "--cache-dir", tmp_path / "cache")
    need = read_manifest(packed).total_size  # every file is new to this cache
    assert need == 300_051 and r.exit_code == 7 and "need 300.1 KB, 10 B free" in r.stderr, r.stderr


def test_readme_holds_the_same_exit_code_table():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    rows = [line.strip("|").split("|") for line in readme.splitlines() if line.startswith("|") and line.strip("| ").split("|")[0].strip().isdigit()]
    assert [(int(c), w.strip()) for c, w in rows] == list(exitcodes.TABLE)
