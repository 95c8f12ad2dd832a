"""verify_bundle: a diff against the manifest in one pass (missing, extra, mismatched, problems)."""

from __future__ import annotations

import hashlib
import tarfile

import pytest

from mirror.errors import ManifestError
from mirror.verify import Mismatch, verify_bundle
from tests.mirror.test_bundle import make_repo, retar, write


@pytest.fixture
def good(tmp_path):
    src = tmp_path / "src"
    files = make_repo(src)
    return write(src, tmp_path / "out"), files


def data_offset(path, member: str) -> int:
    with tarfile.open(path) as t:
        return t.getmember(member).offset_data


def test_intact_bundle(good):
    info, files = good
    r = verify_bundle(info.path)
    assert r.ok and r.lines() == []
    assert r.bundle_sha256 == info.sha256
    assert (r.checked, r.checked_bytes) == (len(files), sum(map(len, files.values())))
    assert r.summary() == f"OK org/name@0123456789ab: 5 files, {info.manifest.total_size} bytes intact"


def test_a_flipped_byte_names_the_file_with_expected_and_actual(good, tmp_path):
    info, files = good
    raw = bytearray(info.path.read_bytes())
    at = data_offset(info.path, "files/model.safetensors") + 12345
    raw[at] ^= 0xFF
    bad = tmp_path / "flipped.tar"
    bad.write_bytes(bytes(raw))
    corrupted = bytearray(files["model.safetensors"])
    corrupted[12345] ^= 0xFF
    r = verify_bundle(bad)
    assert not r.ok and r.missing == () and r.extra == () and r.problems == ()
    entry = info.manifest.by_path()["model.safetensors"]
    # an LFS file's git sha1 is its pointer's (derived from the sha256), so only the sha256 is named
    assert entry.lfs and r.mismatched == (Mismatch("model.safetensors", "sha256", entry.sha256, hashlib.sha256(corrupted).hexdigest()),)
    assert f"mismatched: model.safetensors: sha256 expected {entry.sha256}, actual {hashlib.sha256(corrupted).hexdigest()}" in r.lines()
    assert r.summary() == "FAILED org/name@0123456789ab: 1 mismatched"
    assert r.bundle_sha256 == hashlib.sha256(bytes(raw)).hexdigest()


def test_truncated_bundle_reports_the_cut_and_what_is_missing(good, tmp_path):
    info, _ = good
    raw = info.path.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(raw[: data_offset(info.path, "files/model.safetensors") + 1000])
    r = verify_bundle(cut)
    assert not r.ok and r.bundle_sha256 is None
    assert len(r.problems) == 1 and "truncated" in r.problems[0]
    # files after the cut were never seen; the one cut in half is missing too
    assert r.missing == ("model.safetensors",)


def test_missing_and_extra_members(good, tmp_path):
    info, _ = good
    r = verify_bundle(retar(info, tmp_path / "m.tar", drop=["files/config.json"], add=[("files/surprise.py", b"import os\n")]))
    assert r.missing == ("config.json",)
    assert r.extra == ("surprise.py",)
    assert r.mismatched == () and r.problems == ()
    assert r.lines() == ["missing: config.json", "extra: surprise.py"]
    assert r.summary() == "FAILED org/name@0123456789ab: 1 missing, 1 extra"


def test_size_mismatch_is_reported_as_a_mismatch(good, tmp_path):
    info, _ = good
    r = verify_bundle(retar(info, tmp_path / "s.tar", drop=["files/config.json"], add=[("files/config.json", b'{"hidden": 44}\n')]))
    assert r.mismatched == (Mismatch("config.json", "size", "14", "15"),)


def test_links_and_unsafe_names_are_problems(good, tmp_path):
    info, _ = good
    r = verify_bundle(retar(info, tmp_path / "l.tar", add=[("files/../escape", b"x")], symlink=("files/link", "/etc/shadow")))
    assert not r.ok
    assert any("'..' component" in p for p in r.problems)
    assert any("'files/link' is a symlink" in p for p in r.problems)


def test_an_unreadable_manifest_raises(tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\0" * 10240)
    with pytest.raises(ManifestError, match="the tar is empty"):
        verify_bundle(junk)


def test_a_flipped_byte_in_a_regular_file_names_both_digests(good, tmp_path):
    info, files = good
    raw = bytearray(info.path.read_bytes())
    raw[data_offset(info.path, "files/config.json") + 3] ^= 0xFF
    bad = tmp_path / "flipped.tar"
    bad.write_bytes(bytes(raw))
    corrupted = bytearray(files["config.json"])
    corrupted[3] ^= 0xFF
    entry = info.manifest.by_path()["config.json"]
    r = verify_bundle(bad)
    # a regular file's git sha1 is of its content: both digests are checked and named
    assert not entry.lfs and r.mismatched == (
        Mismatch("config.json", "sha256", entry.sha256, hashlib.sha256(corrupted).hexdigest()),
        Mismatch("config.json", "git_sha1", entry.git_sha1, hashlib.sha1(b"blob %d\0" % len(corrupted) + bytes(corrupted)).hexdigest()),
    )


# --- verify says OK only where install would accept the bundle --------------------------------------


def _changed_manifest_byte(path) -> None:
    """A timestamp in the manifest changed in transit: the files still match that manifest."""
    from mirror.bundle.codec import BundleReader

    with BundleReader(path, hash_all=False) as r:
        head = r.manifest_bytes
    data = path.read_bytes()
    at = data.index(head)
    altered = head.replace(b'"created_at": "2024', b'"created_at": "2025')
    assert altered != head
    path.write_bytes(data[:at] + altered + data[at + len(head):])


def test_verify_and_install_check_the_sidecar_beside_the_bundle(good, tmp_path):
    from tests.mirror.test_cli import assert_one_line_error, run

    info, _ = good
    _changed_manifest_byte(info.path)
    assert verify_bundle(info.path, bundle_sha256=False).ok  # the manifest alone cannot tell
    assert_one_line_error(run("verify", info.path), 4, "against its sidecar")
    assert_one_line_error(run("install", info.path, "--cache-dir", tmp_path / "cache"), 4, "against its sidecar")
    assert not (tmp_path / "cache" / "models--org--name" / "snapshots").exists()


def test_sha256_is_a_value_to_compare_in_verify_as_in_install(good, tmp_path):
    from tests.mirror.test_cli import assert_one_line_error, run

    info, _ = good
    info.path.with_name(info.path.name + ".sha256").unlink()
    assert run("verify", info.path, "--sha256", info.sha256.upper()).exit_code == 0
    for command in (["verify"], ["install", "--cache-dir", tmp_path / "cache"]):
        assert_one_line_error(run(*command, info.path, "--sha256", "0" * 64), 4, f"(expected {'0' * 64}, got {info.sha256})")
        assert_one_line_error(run(*command, info.path, "--sha256", "abc"), 2, "is not 64 hex characters")
    r = run("verify", "--sha256", info.path)  # the old flag form: told what to use instead
    assert_one_line_error(r, 2, "use --print-sha256")


@pytest.fixture
def keys(tmp_path):
    from mirror.signing import keygen

    (tmp_path / "keys").mkdir()
    return {n: keygen(tmp_path / "keys" / n) for n in ("release", "security")}


def test_verify_enforces_the_site_keys_where_install_does(good, tmp_path, keys, monkeypatch):
    from mirror.signing import sign_bundle
    from tests.mirror.test_cli import assert_one_line_error, run

    info, _ = good
    monkeypatch.setenv("MIRROR_TRUSTED_KEYS", str(keys["release"][1]))
    assert_one_line_error(run("verify", info.path), 5, "signature required and not valid: the bundle is not signed")
    assert_one_line_error(run("install", info.path, "--cache-dir", tmp_path / "cache"), 5, "the bundle is not signed")
    sign_bundle(info.path, key_path=keys["release"][0])
    r = run("verify", info.path)
    assert r.exit_code == 0 and "signature valid, key sha256:" in r.stdout, r.output


def test_an_approval_is_required_and_honoured_by_verify_and_install(good, tmp_path, keys, monkeypatch):
    from mirror.approval import write_approval
    from mirror.identity import read_bundle_id
    from tests.mirror.test_cli import assert_one_line_error, run

    info, _ = good
    cache = tmp_path / "cache"
    other = tmp_path / "o"
    make_repo(other)
    (other / "more.txt").write_bytes(b"x")
    unrelated = write(other, tmp_path / "elsewhere")
    write_approval([unrelated.path], reviewer="sec", decision="approved", key_path=keys["security"][0], out=tmp_path / "a.json")
    monkeypatch.setenv("MIRROR_APPROVALS", str(tmp_path / "a.json"))
    monkeypatch.setenv("MIRROR_APPROVAL_KEYS", str(keys["security"][1]))
    assert_one_line_error(run("verify", info.path), 6, "is in none of the 1 approval file(s)")
    assert_one_line_error(run("install", info.path, "--cache-dir", cache), 6, f"bundle {read_bundle_id(info.path)} is in none")
    assert not cache.exists()  # refused before anything was written
    write_approval([info.path], reviewer="sec", decision="approved", key_path=keys["security"][0], out=tmp_path / "b.json")
    monkeypatch.setenv("MIRROR_APPROVALS", str(tmp_path / "b.json"))
    r = run("verify", info.path)
    assert r.exit_code == 0 and "approved by sec" in r.stdout
    r = run("install", info.path, "--cache-dir", cache)
    assert r.exit_code == 0 and f"identity {read_bundle_id(info.path)}" in r.stderr
