"""Writing and reading bundle tars: layout, determinism, hash checks, hostile members."""

from __future__ import annotations

import hashlib
import io
import os
import random
import tarfile
from pathlib import Path

import pytest

from mirror import bundle
from mirror.bundle import layout
from mirror.bundle.write import driver, sinks
from mirror.bundle import bundle_filename, pack_commit
from mirror.bundle.write.driver import write_bundle
from mirror.bundle.codec import BundleReader, append_trailer, iter_payload, read_manifest
from mirror.errors import BundleError, HashMismatch, ManifestError, NotEnoughSpace, UsageError
from mirror.hashing import hash_file
from mirror.manifest import FileEntry

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LONG = "d" * 110 + "/long-é.txt"  # over 100 bytes and not ASCII: needs a PAX path record


def make_repo(root: Path) -> dict[str, bytes]:
    rng = random.Random(0)
    files = {
        "config.json": b'{"hidden": 4}\n',
        "model.safetensors": rng.randbytes(300_001),
        "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}\n',
        LONG: b"x",
        "empty.txt": b"",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def write(src: Path, out: Path, **kw) -> bundle.BundleInfo:
    args = dict(
        src_root=src, repo_id="org/name", revision="main", commit=COMMIT, source="https://hub.example",
        created_at="2024-05-01T12:00:00Z", license="mit", out_dir=out,
    )
    args.update(kw)
    return write_bundle(**args)


@pytest.fixture
def repo(tmp_path) -> tuple[Path, dict[str, bytes]]:
    src = tmp_path / "src"
    return src, make_repo(src)


def test_layout_headers_and_sidecar(repo, tmp_path):
    src, files = repo
    info = write(src, tmp_path / "out")
    assert info.path == tmp_path / "out" / "org--name--0123456789ab.tar"
    raw = info.path.read_bytes()
    assert len(raw) == info.size and info.size % 10240 == 0
    assert info.sha256 == hashlib.sha256(raw).hexdigest()
    assert (tmp_path / "out" / "org--name--0123456789ab.tar.sha256").read_text() == f"{info.sha256}  org--name--0123456789ab.tar\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["org--name--0123456789ab.tar", "org--name--0123456789ab.tar.sha256"]

    with tarfile.open(info.path) as t:  # an independent reader sees exactly the documented layout
        members = t.getmembers()
        assert [m.name for m in members] == ["_mirror/manifest.json"] + ["files/" + p for p in sorted(files)]
        for m in members:
            assert (m.mode, m.uid, m.gid, m.mtime, m.uname, m.gname, m.type) == (0o644, 0, 0, 0, "", "", tarfile.REGTYPE)
        assert members[0].size % 512 == 0
        for p, data in files.items():
            assert t.extractfile("files/" + p).read() == data
        head = t.extractfile(members[0]).read()
    assert head.rstrip(b" ") == info.manifest.to_json()
    m = info.manifest
    assert [f.path for f in m.files] == sorted(files)
    st = m.by_path()["model.safetensors"]
    assert (st.lfs, st.kind, st.sha256) == (True, "safetensors", hashlib.sha256(files["model.safetensors"]).hexdigest())
    assert m.by_path()["config.json"].lfs is False
    assert m.by_path()["config.json"].git_sha1 == hash_file(src / "config.json").git_sha1
    # an LFS file's git sha1 is that of its Git LFS pointer (the Hub's tree oid), not of its bytes
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{st.sha256}\nsize {st.size}\n".encode()
    assert st.git_sha1 == hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()
    assert info.sha256 == hashlib.sha256(info.path.read_bytes()).hexdigest()


def test_a_file_changed_after_hashing_is_refused(repo, tmp_path, monkeypatch):
    """Files are hashed before the tar is written: one rewritten in between (same size, new
    bytes) would make the manifest lie about the payload, so the write is refused."""
    src, files = repo
    real = driver.hash_files

    def then_rewrite(paths, **kw):
        digests = real(paths, **kw)
        target = src / "model.safetensors"
        target.write_bytes(bytes(len(files["model.safetensors"])))
        os.utime(target, ns=(1, 1))  # a different mtime, as any write gives a moment later
        return digests

    monkeypatch.setattr(driver, "hash_files", then_rewrite)
    with pytest.raises(UsageError, match="model.safetensors changed while it was being bundled"):
        write(src, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_same_snapshot_gives_identical_bytes(repo, tmp_path):
    src, _ = repo
    a = write(src, tmp_path / "a")
    b = write(src, tmp_path / "b")
    assert a.sha256 == b.sha256 and a.path.read_bytes() == b.path.read_bytes()


def test_read_manifest_reads_only_the_head(repo, tmp_path):
    src, _ = repo
    info = write(src, tmp_path / "out")
    head = tmp_path / "head-only.tar"
    with open(info.path, "rb") as f:
        head.write_bytes(f.read(512 + len(info.manifest.to_json()) + 511))  # the payload is gone
    assert read_manifest(head) == info.manifest


def test_reader_streams_every_member_and_hashes_the_whole_file(repo, tmp_path):
    src, files = repo
    info = write(src, tmp_path / "out")
    got = {}
    with BundleReader(info.path) as r:
        for member, chunks in r.payload():
            assert member.problem is None and member.kind == "file"
            got[member.path] = b"".join(chunks)
        assert r.sha256 == info.sha256 and r.missing == ()
    assert got == files
    assert {name: b"".join(c) for name, _, c in iter_payload(info.path)} == {"files/" + p: d for p, d in files.items()}


def test_pack_commit_is_derived_from_content(repo, tmp_path):
    src, files = repo
    info = write(src, tmp_path / "out", commit=None)
    lines = "".join(f"{hashlib.sha256(files[p]).hexdigest()} {p}\n" for p in sorted(files))
    expected = hashlib.sha1(b"mirror-pack-commit/1\n" + lines.encode()).hexdigest()
    assert info.manifest.commit == expected == pack_commit(info.manifest.files)
    assert info.path.name == bundle_filename("org/name", expected)


def test_dataset_and_single_name_repo_file_names():
    assert bundle_filename("org/data", COMMIT, repo_type="dataset") == "datasets--org--data--0123456789ab.tar"
    assert bundle_filename("gpt2", COMMIT) == "gpt2--0123456789ab.tar"


def test_expected_hashes_must_match_and_nothing_is_left(repo, tmp_path):
    src, files = repo
    good = {p: FileEntry(path=p, size=len(d), sha256=hashlib.sha256(d).hexdigest(), git_sha1="", lfs=p.endswith(".safetensors"), kind="other") for p, d in files.items()}
    info = write(src, tmp_path / "ok", expected=good)  # empty git_sha1 = not published, not checked
    assert info.manifest.by_path()["model.safetensors"].lfs is True

    bad = dict(good)
    bad["config.json"] = FileEntry(path="config.json", size=len(files["config.json"]), sha256="f" * 64, git_sha1="", lfs=False, kind="json")
    out = tmp_path / "bad"
    with pytest.raises(HashMismatch) as e:
        write(src, out, expected=bad)
    assert e.value.path == "config.json" and e.value.expected == "f" * 64
    assert e.value.actual == hashlib.sha256(files["config.json"]).hexdigest()
    assert list(out.iterdir()) == []

    # an LFS file with a published sha256 is checked while it is copied (read once)
    bytes_of = files["model.safetensors"]
    lfs_bad = dict(good, **{"model.safetensors": FileEntry(path="model.safetensors", size=len(bytes_of), sha256="e" * 64, git_sha1="", lfs=True, kind="safetensors")})
    with pytest.raises(HashMismatch) as e:
        write(src, out, expected=lfs_bad)
    assert (e.value.path, e.value.algorithm, e.value.expected, e.value.actual) == ("model.safetensors", "sha256", "e" * 64, hashlib.sha256(bytes_of).hexdigest())
    assert list(out.iterdir()) == []
    # a published oid that is not the LFS pointer's of the published sha256 contradicts itself
    oid_bad = dict(good, **{"model.safetensors": FileEntry(path="model.safetensors", size=len(bytes_of), sha256=hashlib.sha256(bytes_of).hexdigest(), git_sha1="d" * 40, lfs=True, kind="safetensors")})
    with pytest.raises(HashMismatch) as e:
        write(src, out, expected=oid_bad)
    assert (e.value.path, e.value.algorithm, e.value.expected) == ("model.safetensors", "git sha1", "d" * 40)
    assert e.value.actual == info.manifest.by_path()["model.safetensors"].git_sha1
    assert list(out.iterdir()) == []


def test_expected_size_is_checked_before_writing(repo, tmp_path):
    src, files = repo
    exp = {p: FileEntry(path=p, size=len(d) + (p == "empty.txt"), sha256="", git_sha1="", lfs=False, kind="other") for p, d in files.items()}
    with pytest.raises(HashMismatch, match="empty.txt: size mismatch"):
        write(src, tmp_path / "out", expected=exp)


def test_not_enough_space_is_refused_up_front(repo, tmp_path, monkeypatch):
    src, _ = repo
    monkeypatch.setattr(sinks.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(NotEnoughSpace) as e:
        write(src, tmp_path / "out")
    assert e.value.free == 1000 and e.value.needed > 300_000
    assert list((tmp_path / "out").iterdir()) == []


def test_unsafe_names_and_empty_file_lists_are_usage_errors(repo, tmp_path):
    src, _ = repo
    with pytest.raises(UsageError, match="no files to bundle"):
        write(src, tmp_path / "out", paths=[])
    with pytest.raises(UsageError, match="'..' component"):
        write(src, tmp_path / "out", paths=["../x"])
    with pytest.raises(UsageError, match="not a Hub repo id"):
        write(src, tmp_path / "out", repo_id="a/b/c")


# --- hostile or broken tars --------------------------------------------------------------------


def retar(info: bundle.BundleInfo, dst: Path, *, drop=(), add=(), symlink=None, fmt=tarfile.PAX_FORMAT) -> Path:
    """Rebuild a bundle with tarfile (an independent writer): drop members, add (name, data)."""
    with tarfile.open(info.path) as src, tarfile.open(dst, "w", format=fmt) as out:
        for m in src.getmembers():
            if m.name not in drop:
                out.addfile(m, src.extractfile(m))
        for name, data in add:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            out.addfile(ti, io.BytesIO(data))
        if symlink:
            ti = tarfile.TarInfo(symlink[0])
            ti.type, ti.linkname = tarfile.SYMTYPE, symlink[1]
            out.addfile(ti)
    return dst


def problems(path: Path) -> list[str]:
    with BundleReader(path) as r:
        return [m.problem for m, _ in r.payload() if m.problem]


def test_a_tarfile_written_copy_reads_the_same(repo, tmp_path):
    src, files = repo
    info = write(src, tmp_path / "out")
    copy = retar(info, tmp_path / "copy.tar")
    assert problems(copy) == []
    assert {n: b"".join(c) for n, _, c in iter_payload(copy)} == {"files/" + p: d for p, d in files.items()}


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        (dict(symlink=("files/evil", "/etc/passwd")), "is a symlink"),
        (dict(add=[("/etc/cron.d/x", b"x")]), "is absolute"),
        (dict(add=[("files/../../x", b"x")]), "'..' component"),
        (dict(add=[("files/config.json", b'{"hidden": 4}\n')]), "appears twice"),
        (dict(add=[("_mirror/unknown.json", b"{}")]), "unknown mirror member"),
        (dict(add=[("elsewhere.txt", b"x")]), "outside files/ and _mirror/"),
        (dict(add=[("files/new.bin", b"x")]), "extra member 'files/new.bin'"),
        (dict(add=[("_mirror/signature.json", b"{}"), ("files/1_Pooling/x", b"x")]), "extra member"),
    ],
)
def test_reader_flags_hostile_members(repo, tmp_path, kw, needle):
    info = write(repo[0], tmp_path / "out")
    found = problems(retar(info, tmp_path / "bad.tar", **kw))
    assert any(needle in p for p in found), found
    with pytest.raises(BundleError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        list(iter_payload(tmp_path / "bad.tar"))


def test_a_known_trailer_is_accepted_and_a_payload_after_it_is_not(repo, tmp_path):
    info = write(repo[0], tmp_path / "out")
    assert problems(retar(info, tmp_path / "sig.tar", add=[("_mirror/signature.json", b"{}")])) == []
    late = retar(info, tmp_path / "late.tar", drop=["files/config.json"], add=[("_mirror/signature.json", b"{}"), ("files/config.json", b'{"hidden": 4}\n')])
    assert any("comes after the trailer" in p for p in problems(late))


def test_manifest_must_come_first(repo, tmp_path):
    info = write(repo[0], tmp_path / "out")
    moved = retar(info, tmp_path / "moved.tar", drop=["_mirror/manifest.json"], add=[("_mirror/manifest.json", info.manifest.to_json())])
    with pytest.raises(ManifestError, match="the first member is 'files/1_Pooling/config.json'"):
        read_manifest(moved)
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"PK\x03\x04 not a tar at all" * 40)
    with pytest.raises(ManifestError, match="not a mirror bundle"):
        read_manifest(junk)
    with pytest.raises(UsageError, match="no such bundle"):
        read_manifest(tmp_path / "absent.tar")


def test_structural_damage_raises(repo, tmp_path):
    info = write(repo[0], tmp_path / "out")
    raw = info.path.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BundleError, match="truncated"):
        list(iter_payload(cut))
    tail = tmp_path / "tail.tar"
    tail.write_bytes(raw + b"\x01hidden")
    with pytest.raises(BundleError, match="unexpected data after the end of the archive"):
        list(iter_payload(tail))
    hdr = bytearray(raw)
    with tarfile.open(info.path) as t:
        second = 512 + t.getmembers()[0].size  # the header after the manifest member
    hdr[second + 10] ^= 0x01  # a flipped bit in the second member's header
    broken = tmp_path / "hdr.tar"
    broken.write_bytes(bytes(hdr))
    with pytest.raises(BundleError, match="checksum mismatch"):
        list(iter_payload(broken))


def test_append_trailer_adds_then_replaces_the_last_member(repo, tmp_path):
    info = write(repo[0], tmp_path / "out")
    sha1 = append_trailer(info.path, "_mirror/signature.json", b'{"sig": 1}')
    sha2 = append_trailer(info.path, "_mirror/signature.json", b'{"sig": 22}')
    raw = info.path.read_bytes()
    assert sha2 == hashlib.sha256(raw).hexdigest() != sha1 and len(raw) % 10240 == 0
    assert (info.path.parent / (info.path.name + ".sha256")).read_text().split()[0] == sha2
    with tarfile.open(info.path) as t:
        assert t.getnames()[-1] == "_mirror/signature.json" and t.getnames().count("_mirror/signature.json") == 1
        assert t.extractfile("_mirror/signature.json").read() == b'{"sig": 22}'
    assert problems(info.path) == []


def test_sizes_over_8_gib_go_into_a_pax_record():
    size = 9 * 2**30
    head = layout.member_header("files/model-00001-of-00002.safetensors", size)
    assert len(head) == 3 * 512  # PAX header + its records block + the ustar header
    assert b" size=9663676416\n" in head[512:1024]
    with tarfile.open(fileobj=io.BytesIO(head + b"\0" * 1024), mode="r|") as t:
        ti = t.next()  # tarfile, an independent reader, sees the real size
        assert (ti.name, ti.size) == ("files/model-00001-of-00002.safetensors", size)
