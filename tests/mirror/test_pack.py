"""pack_folder: local folders into reproducible bundles (license, lineage, skips, symlinks)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from mirror.bundle.codec import read_manifest
from mirror.errors import UsageError
from mirror.pack import pack_folder
from tests.mirror.test_bundle import make_repo


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "model"
    files = make_repo(d)
    (d / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: en\n---\n# A model\n")
    files["README.md"] = (d / "README.md").read_bytes()
    for p in files:
        os.utime(d / p, (1_700_000_000, 1_700_000_000))
    os.utime(d / "config.json", (1_700_000_500, 1_700_000_500))
    return d, files


def test_pack_records_license_source_created_at_and_every_file(folder, tmp_path):
    d, files = folder
    info = pack_folder(d, repo_id="acme/m", out_dir=tmp_path / "out")
    m = info.manifest
    assert (m.repo_id, m.revision, m.source, m.license) == ("acme/m", "local", "local:model", "apache-2.0")
    assert m.created_at == "2023-11-14T22:21:40Z"  # the newest mtime: 1_700_000_500
    assert {f.path: f.sha256 for f in m.files} == {p: hashlib.sha256(b).hexdigest() for p, b in files.items()}
    assert read_manifest(info.path) == m


def test_repacking_is_byte_identical(folder, tmp_path):
    d, _ = folder
    a = pack_folder(d, repo_id="acme/m", out_dir=tmp_path / "a")
    b = pack_folder(d, repo_id="acme/m", out_dir=tmp_path / "b")
    assert a.sha256 == b.sha256 and a.path.name == b.path.name


def test_source_date_epoch_makes_copies_with_other_mtimes_identical(folder, tmp_path, monkeypatch):
    d, _ = folder
    copy = tmp_path / "elsewhere" / "model"
    shutil.copytree(d, copy)
    for p in copy.rglob("*"):
        os.utime(p, (1_800_000_000, 1_800_000_000))
    unpinned = pack_folder(copy, repo_id="acme/m", out_dir=tmp_path / "c0")
    assert unpinned.sha256 != pack_folder(d, repo_id="acme/m", out_dir=tmp_path / "d0").sha256  # created_at differs
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1600000000")
    a = pack_folder(d, repo_id="acme/m", out_dir=tmp_path / "a")
    b = pack_folder(copy, repo_id="acme/m", out_dir=tmp_path / "b")
    assert a.manifest.created_at == "2020-09-13T12:26:40Z"
    assert a.sha256 == b.sha256 and a.path.read_bytes() == b.path.read_bytes()
    assert a.manifest.commit == unpinned.manifest.commit  # the commit id depends on content only


def test_lineage_json_becomes_the_lineage_section(folder, tmp_path):
    d, _ = folder
    lineage = {"base_model": "sentence-transformers/all-MiniLM-L6-v2", "base_commit": "a" * 40, "data": [{"file": "train.jsonl", "sha256": "b" * 64}]}
    (d / "lineage.json").write_text(json.dumps(lineage))
    info = pack_folder(d, repo_id="acme/m", out_dir=tmp_path / "out")
    assert info.manifest.extra["lineage"] == lineage  # other sections (policy...) may sit beside it
    assert read_manifest(info.path).extra["lineage"] == lineage
    assert "lineage.json" in info.manifest.by_path()
    (d / "lineage.json").write_text("{not json")
    with pytest.raises(UsageError, match="lineage.json is not valid UTF-8 JSON"):
        pack_folder(d, repo_id="acme/m", out_dir=tmp_path / "out2")


def test_tool_state_is_skipped(folder, tmp_path):
    d, files = folder
    for junk in (".git/HEAD", ".cache/huggingface/x.lock", "__pycache__/m.cpython-311.pyc", "sub/__pycache__/y.pyc"):
        (d / junk).parent.mkdir(parents=True, exist_ok=True)
        (d / junk).write_text("junk")
    info = pack_folder(d, repo_id="acme/m", out_dir=tmp_path / "out")
    assert sorted(f.path for f in info.manifest.files) == sorted(files)


def test_symlinks_inside_are_followed_and_outside_refused(folder, tmp_path):
    d, files = folder
    (d / "alias.json").symlink_to("config.json")
    info = pack_folder(d, repo_id="acme/m", out_dir=tmp_path / "out")
    assert info.manifest.by_path()["alias.json"].sha256 == hashlib.sha256(files["config.json"]).hexdigest()
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    (d / "leak.txt").symlink_to(secret)
    with pytest.raises(UsageError, match="leak.txt is a symlink to .*secret.txt, outside"):
        pack_folder(d, repo_id="acme/m", out_dir=tmp_path / "out2")
    assert not (tmp_path / "out2").exists() or list((tmp_path / "out2").iterdir()) == []


def test_an_hf_cache_snapshot_folder_can_be_packed(folder, tmp_path):
    from mirror.install import install_bundle

    d, files = folder
    r = install_bundle(pack_folder(d, repo_id="acme/m", out_dir=tmp_path / "out").path, cache_dir=tmp_path / "cache")
    again = pack_folder(r.snapshot_dir, repo_id="acme/m", out_dir=tmp_path / "out2")
    assert {f.path: f.sha256 for f in again.manifest.files} == {p: hashlib.sha256(b).hexdigest() for p, b in files.items()}


def test_a_snapshot_folder_reads_its_own_blobs_and_nothing_else(tmp_path):
    """In an HF cache snapshot every file is a link into the repo's blobs/: those are packed
    (opened below blobs/ without following links), a link into another repo's blobs is not."""
    repo = tmp_path / "cache" / "models--acme--m"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "a1").write_bytes(b'{"hidden": 4}\n')
    snap = repo / "snapshots" / ("c" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").symlink_to("../../blobs/a1")
    info = pack_folder(snap, repo_id="acme/m", out_dir=tmp_path / "out")
    assert info.manifest.by_path()["config.json"].sha256 == hashlib.sha256(b'{"hidden": 4}\n').hexdigest()
    other = tmp_path / "cache" / "models--other--x" / "blobs"
    other.mkdir(parents=True)
    (other / "b2").write_bytes(b"another repo's weights")
    (snap / "stolen.bin").symlink_to("../../../models--other--x/blobs/b2")
    with pytest.raises(UsageError, match="stolen.bin is a symlink to .*models--other--x/blobs/b2, outside"):
        pack_folder(snap, repo_id="acme/m", out_dir=tmp_path / "out2")


@pytest.mark.parametrize(
    ("setup", "kw", "needle"),
    [
        (lambda d: None, {}, "holds no files to pack"),
        (lambda d: (d / ".git").mkdir() or (d / ".git" / "HEAD").write_text("x"), {}, "holds no files to pack"),
        (lambda d: (d / "x.json").write_text("{}"), {"repo_id": "not a repo"}, "is not a Hub repo id"),
        (lambda d: (d / "x.json").write_text("{}"), {"revision": "../up"}, "is not usable as a ref name"),
    ],
)
def test_bad_input_is_a_usage_error(tmp_path, setup, kw, needle):
    d = tmp_path / "empty"
    d.mkdir()
    setup(d)
    with pytest.raises(UsageError, match=needle):
        pack_folder(d, **{"repo_id": "acme/m", "out_dir": tmp_path / "out", **kw})
    with pytest.raises(UsageError, match="is not a directory"):
        pack_folder(tmp_path / "absent", repo_id="acme/m", out_dir=tmp_path / "out")


# --- a bundle file is never replaced by other bytes without --overwrite -------------------------------


def test_packing_again_with_another_revision_label_refuses_to_replace_the_bundle(folder, tmp_path):
    from tests.mirror.test_cli import assert_one_line_error, run

    folder, _ = folder
    out = tmp_path / "out"
    first = pack_folder(folder, repo_id="acme/m", revision="v1", out_dir=out)
    before = first.path.read_bytes()
    again = pack_folder(folder, repo_id="acme/m", revision="v1", out_dir=out)  # the same bytes: fine
    assert again.path == first.path and again.path.read_bytes() == before
    with pytest.raises(UsageError, match="already exists and it holds bundle sha256:.*pass --overwrite"):
        pack_folder(folder, repo_id="acme/m", revision="v2", out_dir=out)  # same commit id, another manifest
    assert first.path.read_bytes() == before and sorted(p.name for p in out.iterdir()) == [first.path.name, first.path.name + ".sha256"]
    r = run("pack", folder, "--repo-id", "acme/m", "--revision", "v2", "--out", out)
    assert_one_line_error(r, 2, "pass --overwrite to replace it")
    r = run("pack", folder, "--repo-id", "acme/m", "--revision", "v2", "--out", out, "--overwrite")
    assert r.exit_code == 0 and read_manifest(first.path).revision == "v2"


def test_a_signed_bundle_is_not_replaced_by_its_unsigned_copy(folder, tmp_path):
    from mirror.signing import keygen, sign_bundle

    folder, _ = folder
    out = tmp_path / "out"
    info = pack_folder(folder, repo_id="acme/m", out_dir=out)
    priv, _ = keygen(tmp_path / "k")
    sign_bundle(info.path, key_path=priv)
    signed = info.path.read_bytes()
    with pytest.raises(UsageError, match="it holds this bundle signed"):
        pack_folder(folder, repo_id="acme/m", out_dir=out)
    assert info.path.read_bytes() == signed
    with pytest.raises(UsageError, match="already exists"):  # nor by parts under the same name
        pack_folder(folder, repo_id="acme/m", out_dir=out, max_part_size=4096, revision="other")
    assert info.path.read_bytes() == signed
