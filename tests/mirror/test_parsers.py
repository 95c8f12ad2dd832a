"""Hostile JSON and special files, tried through the CLI as an attacker would.

Every JSON file mirror reads can come from across the trust boundary: the manifest member of a
bundle, a parts index (`*.tar.parts.json`), a `--since-manifest` file, a signature member. Each
attack here is one such file with a 5000-digit integer, 100000-deep nesting, NaN, a duplicate
key, a trailing newline in an id or a control character, and the assertions are the same: a
typed one-line error and its exit code, never a traceback; in a folder (`list`, `audit`) the
hostile bundle is one failed row and every other bundle is still reported. Special files (FIFOs,
sockets, devices) named like bundles are run in a subprocess with a timeout: a hang fails.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from mirror.cli import cli
from mirror.bundle.codec import append_trailer
from tests.mirror.test_cli import assert_one_line_error
from tests.mirror.test_hostile import COMMIT, GOOD, good_files, member, tar
from tests.mirror.test_hostile import manifest as victim_manifest

ROOT = Path(__file__).resolve().parents[2]
HOLE = "@@HOLE@@"  # a placeholder string, replaced by raw bytes json.dumps cannot produce
DEEP = b"[" * 100_000 + b"]" * 100_000


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def run_process(*args, timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -m mirror ARGS` in a child: a FIFO that blocks an open() fails the test by timeout
    instead of hanging the suite."""
    return subprocess.run([sys.executable, "-m", "mirror", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)


def assert_no_traceback(text: str) -> None:
    assert "Traceback" not in text and "RecursionError" not in text and "Exceeds the limit" not in text, text


# --- the hostile documents --------------------------------------------------------------------------


def mutated(base: bytes, mutate: Callable[[dict], object], hole: bytes = b"") -> bytes:
    d = json.loads(base)
    mutate(d)
    return json.dumps(d, indent=2, sort_keys=True).encode().replace(f'"{HOLE}"'.encode(), hole)


def good_manifest() -> bytes:
    return victim_manifest(*GOOD)


OTHER = "d" * 40
# name -> (the manifest bytes, what the one-line error must say)
MANIFEST_ATTACKS: dict[str, tuple[Callable[[], bytes], str]] = {
    "5000-digit-integer": (lambda: mutated(good_manifest(), lambda d: d["totals"].update(bytes=HOLE), b"9" * 5000), "5000-character integer"),
    "100000-deep-nesting": (lambda: mutated(good_manifest(), lambda d: d.update(lineage=HOLE), DEEP), "more than 64 levels deep"),
    "nan": (lambda: mutated(good_manifest(), lambda d: d.update(lineage={"loss": float("nan")})), "holds NaN"),
    "infinity-by-overflow": (lambda: mutated(good_manifest(), lambda d: d.update(lineage={"loss": HOLE}), b"1e999"), "overflows to infinity"),
    "duplicate-key": (  # a parser keeping the first 'commit' and one keeping the last would disagree
        lambda: good_manifest().replace(f'"commit": "{COMMIT}"'.encode(), f'"commit": "{OTHER}",\n  "commit": "{COMMIT}"'.encode()),
        "has the key 'commit' twice",
    ),
    "commit-trailing-newline": (lambda: mutated(good_manifest(), lambda d: d.update(commit=COMMIT + "\n")), "commit must be 40 lowercase hex"),
    "repo-id-trailing-newline": (lambda: mutated(good_manifest(), lambda d: d.update(repo_id="org/victim\n")), "is not a Hub repo id"),
    "revision-control-character": (lambda: mutated(good_manifest(), lambda d: d.update(revision="main\x1b[2J")), "revision 'main\\x1b[2J' contains control characters"),
    "invalid-utf8": (lambda: good_manifest().replace(b'"mit"', b'"m\xffit"'), "not valid UTF-8"),
    "lone-surrogate": (lambda: good_manifest().replace(b'"mit"', b'"\\ud800"'), "lone surrogate"),
}


def hostile_bundle(path: Path, raw_manifest: bytes) -> Path:
    path.write_bytes(tar(member("_mirror/manifest.json", raw_manifest), good_files()))
    return path


# --- a folder that also holds good bundles ----------------------------------------------------------


def _model(folder: Path, weights: bytes = bytes(range(256)) * 8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_bytes(b'{"hidden_size": 4}\n')
    (folder / "model.safetensors").write_bytes(weights)
    return folder


@pytest.fixture(scope="module")
def good_bundles(tmp_path_factory) -> dict[str, Path]:
    """A single-file bundle of org/good and a multi-part one of org/parts (1 KiB parts)."""
    root = tmp_path_factory.mktemp("good")
    out = root / "out"
    r = run("pack", _model(root / "m"), "--repo-id", "org/good", "--out", out)
    assert r.exit_code == 0, r.output
    single = Path(r.stdout.splitlines()[-1])
    r = run("pack", _model(root / "p", bytes(range(256)) * 20), "--repo-id", "org/parts", "--out", root / "parts", "--max-part-size", "1K")
    assert r.exit_code == 0, r.output
    return {"single": single, "multi": Path(r.stdout.splitlines()[-1]), "model": root / "m"}


@pytest.fixture
def folder(tmp_path, good_bundles) -> Path:
    """A bundles folder holding one good single-file bundle."""
    d = tmp_path / "bundles"
    d.mkdir()
    shutil.copy(good_bundles["single"], d)
    return d


@pytest.fixture
def multi(tmp_path, good_bundles) -> Path:
    """A copy of the good multi-part bundle, next to a good single-file one; returns its index."""
    d = tmp_path / "multi"
    shutil.copytree(good_bundles["multi"].parent, d)
    shutil.copy(good_bundles["single"], d)
    return d / good_bundles["multi"].name


def assert_list_reports_one_bad_row(folder: Path, bad_name: str, needle: str) -> None:
    r = run("list", folder)
    assert_no_traceback(r.output)
    assert r.exit_code == 10, r.output
    head, *rows = r.stdout.splitlines()
    assert head.split()[0] == "REPO"
    assert len(rows) == len(list(folder.glob("*.tar"))) + len(list(folder.glob("*.tar.parts.json")))
    bad = [row for row in rows if row.split()[0] == bad_name]
    assert len(bad) == 1 and "unreadable: " in bad[0] and needle in bad[0], rows
    assert any(row.startswith("org/good ") for row in rows), rows  # the unrelated bundle is still listed
    assert r.stderr.strip().endswith("bundle(s) could not be read") and r.stderr.count("\n") == 1


def assert_audit_reports_one_bad_row(folder: Path, bad_name: str, needle: str) -> None:
    r = run("audit", folder)
    assert_no_traceback(r.output)
    assert r.exit_code == 10, r.output
    table = r.stdout.splitlines()
    assert [row.split()[-1] for row in table if row.split()[:1] == [bad_name]] == ["UNREADABLE"], table
    assert any(row.startswith("org/good ") and row.split()[-1] == "ok" for row in table), table
    reason = [row for row in table if row.startswith(f"{bad_name}: ")]
    assert len(reason) == 1 and needle in reason[0], table
    assert r.stderr == f"mirror: error: 1 of {len(table) - len(reason) - 2} bundle(s) failed the audit; exit 10 is the worst of them\n"
    r = run("audit", folder, "--format", "json")
    rows = {Path(b["bundle"]).name: b for b in map(json.loads, r.stdout.splitlines())}
    assert r.exit_code == 10 and rows[bad_name]["exit_code"] == 10 and needle in rows[bad_name]["error"] and "\n" not in rows[bad_name]["error"]
    assert [b["ok"] for name, b in rows.items() if name.startswith("org--good--")] == [True]


# --- the manifest member ----------------------------------------------------------------------------


@pytest.mark.parametrize("attack", sorted(MANIFEST_ATTACKS))
def test_hostile_manifest_is_a_one_line_error(attack, tmp_path):
    build, needle = MANIFEST_ATTACKS[attack]
    bad = hostile_bundle(tmp_path / "bad.tar", build())
    for cmd in ("verify", "inspect"):
        r = run(cmd, bad)
        assert_no_traceback(r.output)
        assert_one_line_error(r, 10, needle)
        assert r.stderr.startswith(f"mirror: error: {bad}: ")
    cache = tmp_path / "cache"
    r = run("install", bad, "--cache-dir", cache)
    assert_one_line_error(r, 10, needle)
    assert not list(cache.glob("models--*/snapshots/*"))  # no snapshot, let alone one named 'c...c\n'


@pytest.mark.parametrize("attack", sorted(MANIFEST_ATTACKS))
def test_hostile_manifest_in_a_folder_is_one_failed_row(attack, folder):
    build, needle = MANIFEST_ATTACKS[attack]
    hostile_bundle(folder / "bad.tar", build())
    assert_list_reports_one_bad_row(folder, "bad.tar", needle)
    assert_audit_reports_one_bad_row(folder, "bad.tar", needle)


def test_the_good_manifest_of_these_attacks_is_accepted(tmp_path):
    """The attacks differ from an accepted bundle only by what they inject."""
    good = hostile_bundle(tmp_path / "good.tar", good_manifest())
    r = run("verify", good)
    assert r.exit_code == 0 and r.stdout.startswith("OK org/victim@"), r.output


# --- the parts index --------------------------------------------------------------------------------

INDEX_ATTACKS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "5000-digit-integer": (lambda raw: mutated(raw, lambda d: d.update(size=HOLE), b"9" * 5000), "5000-character integer"),
    "100000-deep-nesting": (lambda raw: mutated(raw, lambda d: d.update(note=HOLE), DEEP), "more than 64 levels deep"),
    "nan": (lambda raw: mutated(raw, lambda d: d.update(max_part_size=float("nan"))), "holds NaN"),
    "duplicate-key": (lambda raw: raw.replace(b'{\n  "bundle"', b'{\n  "size": 1,\n  "bundle"', 1), "has the key 'size' twice"),
    "sha256-trailing-newline": (lambda raw: mutated(raw, lambda d: d.update(sha256=d["sha256"] + "\n")), "sha256 must be 64 lowercase hex"),
    "part-sha256-trailing-newline": (lambda raw: mutated(raw, lambda d: d["parts"][0].update(sha256=d["parts"][0]["sha256"] + "\n")), "parts[0] has a bad size or sha256"),
    "bundle-name-trailing-newline": (lambda raw: mutated(raw, lambda d: d.update(bundle=d["bundle"] + "\n")), "no '/', '\\' or control characters"),
    "over-16-MiB": (lambda raw: raw + b" " * (16 * 1024 * 1024), "larger than 16777216 bytes"),
}


@pytest.mark.parametrize("attack", sorted(INDEX_ATTACKS))
def test_hostile_parts_index(attack, multi):
    build, needle = INDEX_ATTACKS[attack]
    multi.write_bytes(build(multi.read_bytes()))
    for cmd in ("verify", "inspect"):
        r = run(cmd, multi)
        assert_no_traceback(r.output)
        assert_one_line_error(r, 10, needle)
    assert_list_reports_one_bad_row(multi.parent, multi.name, needle)
    assert_audit_reports_one_bad_row(multi.parent, multi.name, needle)


def test_the_multi_part_bundle_of_these_attacks_is_accepted(multi):
    r = run("verify", multi)
    assert r.exit_code == 0 and r.stdout.startswith("OK org/parts@"), r.output
    r = run("list", multi.parent)
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 3, r.output  # the header and two bundles


# --- --since-manifest OLD.json ----------------------------------------------------------------------


@pytest.mark.parametrize("attack", sorted(MANIFEST_ATTACKS))
def test_hostile_since_manifest(attack, tmp_path, good_bundles):
    build, needle = MANIFEST_ATTACKS[attack]
    old = tmp_path / "OLD.json"
    old.write_bytes(build())
    out = tmp_path / "out"
    r = run("pack", good_bundles["model"], "--repo-id", "org/victim", "--since-manifest", old, "--out", out)
    assert_no_traceback(r.output)
    assert_one_line_error(r, 10, needle)
    assert str(old) in r.stderr
    assert not list(out.glob("*.tar*"))  # nothing written


def test_a_good_since_manifest_makes_a_delta(tmp_path, good_bundles):
    """The same command with the untouched manifest works: the attacks above reach the parser."""
    old = tmp_path / "OLD.json"
    r = run("inspect", "--json", good_bundles["single"])
    assert r.exit_code == 0
    old.write_text(r.stdout)
    changed = _model(tmp_path / "m2", b"\x07" * 2048)
    r = run("pack", changed, "--repo-id", "org/good", "--since-manifest", old, "--out", tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert "--delta-from-" in Path(r.stdout.splitlines()[-1]).name


def test_since_manifest_over_the_manifest_limit_is_refused_unread(tmp_path, good_bundles):
    old = tmp_path / "OLD.json"
    with open(old, "wb") as f:  # sparse: the limit is checked on a bounded read, never by reading it all
        f.truncate(64 * 1024 * 1024 + 1)
    r = run("pack", good_bundles["model"], "--repo-id", "org/good", "--since-manifest", old, "--out", tmp_path / "out")
    assert_one_line_error(r, 2, "larger than 67108864 bytes")


# --- the signature member ---------------------------------------------------------------------------

SIGNATURE_ATTACKS = {
    "100000-deep-nesting": DEEP,
    "5000-digit-integer": b'{"dsseEnvelope": {"payload": ' + b"9" * 5000 + b"}}",
    "nan": b'{"dsseEnvelope": NaN}',
}


@pytest.mark.parametrize("attack", sorted(SIGNATURE_ATTACKS))
def test_hostile_signature_member(attack, folder):
    bundle = next(folder.glob("*.tar"))
    append_trailer(bundle, "_mirror/signature.json", SIGNATURE_ATTACKS[attack])
    r = run("inspect", bundle)
    assert_no_traceback(r.output)
    assert r.exit_code == 0, r.output
    assert "signature: INVALID, key sha256:? (signature is not a readable model-signing bundle" in r.stdout
    r = run("audit", folder)
    assert_no_traceback(r.output)
    assert r.exit_code == 0 and " INVALID ? " in r.stdout.splitlines()[1] and r.stdout.splitlines()[1].endswith("ok"), r.output


def test_hostile_signature_fails_verify_with_a_key(folder, tmp_path):
    pytest.importorskip("model_signing")
    r = run("keygen", tmp_path / "k")
    assert r.exit_code == 0, r.output
    bundle = next(folder.glob("*.tar"))
    append_trailer(bundle, "_mirror/signature.json", DEEP)
    r = run("verify", bundle, "--public-key", tmp_path / "k.pub")
    assert_no_traceback(r.output)
    assert r.exit_code == 5 and r.stderr.count("\n") == 1 and "signature is not a readable model-signing bundle" in r.stderr, r.output


# --- special files named like bundles ---------------------------------------------------------------


def _unix_socket(path: Path) -> socket.socket | None:
    if len(os.fsencode(path)) >= 100:  # sun_path holds 108 bytes
        return None
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    return s


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_special_files_in_a_folder_are_rows_never_a_hang(folder):
    os.mkfifo(folder / "x.tar")
    os.mkfifo(folder / "y.tar.parts.json")
    os.symlink("/dev/zero", folder / "zero.tar")
    os.symlink(folder / "absent", folder / "dangling.tar")
    sock = _unix_socket(folder / "s.tar")
    try:
        r = run_process("list", folder)
        assert_no_traceback(r.stderr)
        assert r.returncode == 10, (r.stdout, r.stderr)
        rows = {row.split()[0]: row for row in r.stdout.splitlines()[1:]}
        assert rows["x.tar"].endswith("unreadable: a FIFO (named pipe), not a regular file (not opened)")
        assert rows["y.tar.parts.json"].endswith("unreadable: a FIFO (named pipe), not a regular file (not opened)")
        assert rows["zero.tar"].endswith("unreadable: a character device, not a regular file (not opened)")
        assert "unreadable: cannot be read (No such file or directory)" in rows["dangling.tar"]
        assert sock is None or rows["s.tar"].endswith("unreadable: a socket, not a regular file (not opened)")
        assert sum(row.startswith("org/good ") for row in r.stdout.splitlines()) == 1
        bad = 4 + (sock is not None)
        assert r.stderr == f"mirror: error: {bad} of {bad + 1} bundle(s) could not be read\n"

        r = run_process("audit", folder)
        assert_no_traceback(r.stderr)
        assert r.returncode == 10, (r.stdout, r.stderr)
        assert f"x.tar: {folder / 'x.tar'} is a FIFO (named pipe), not a regular file (not opened)" in r.stdout
        assert f"zero.tar: {folder / 'zero.tar'} is a character device, not a regular file (not opened)" in r.stdout
        assert any(row.startswith("org/good ") and row.endswith(" ok") for row in r.stdout.splitlines())
        assert r.stderr == f"mirror: error: {bad} of {bad + 1} bundle(s) failed the audit; exit 10 is the worst of them\n"

        for name in ("x.tar", "y.tar.parts.json"):  # named directly, too
            r = run_process("verify", folder / name)
            # 10, not a bundle, whether it poses as a single file or as a parts index
            assert r.returncode == 10 and "FIFO" in r.stderr and r.stderr.count("\n") == 1, (r.stdout, r.stderr)
            r = run_process("audit", folder / name)
            assert r.returncode == 10 and "not a regular file (not opened)" in r.stdout, (r.stdout, r.stderr)
    finally:
        if sock is not None:
            sock.close()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_part_is_named_never_opened(multi):
    index = json.loads(multi.read_text())
    victim = multi.parent / index["parts"][1]["name"]
    victim.unlink()
    os.mkfifo(victim)
    r = run_process("verify", multi)
    assert r.returncode == 4, (r.stdout, r.stderr)
    assert f"{victim.name} is a FIFO (named pipe), not a regular file" in r.stderr and r.stderr.count("\n") == 1
    r = run_process("list", multi.parent)
    assert r.returncode == 10 and f"{victim.name} is a FIFO" in r.stdout and "org/good " in r.stdout, (r.stdout, r.stderr)
    r = run_process("audit", multi.parent)
    assert r.returncode == 10 and f"{victim.name} is a FIFO" in r.stdout, (r.stdout, r.stderr)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_since_manifest_is_refused(tmp_path, good_bundles):
    old = tmp_path / "OLD.json"
    os.mkfifo(old)
    r = run_process("pack", good_bundles["model"], "--repo-id", "org/good", "--since-manifest", old, "--out", tmp_path / "out")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr == f"mirror: error: {old}: the --since-manifest file is a FIFO (named pipe), not a regular file; give the path of the --since-manifest file itself\n"


def test_a_file_name_with_a_newline_cannot_forge_a_row(folder):
    hostile_bundle(folder / "evil\norg--fake 0000.tar", b"{}")
    r = run("list", folder)
    assert r.exit_code == 10
    assert len(r.stdout.splitlines()) == 3 and "'evil\\norg--fake 0000.tar'" in r.stdout
