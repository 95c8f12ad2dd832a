"""Hostile bundles: one crafted tar per attack, each run through `verify` and `install`.

Every bundle here is built byte by byte, as an attacker would, not with our writer. For each one:
verify refuses with a one-line reason, install raises a typed one-line error, the cache is
exactly as it was (a good snapshot is installed there first), and nothing appears anywhere else.
"""

from __future__ import annotations

import hashlib
import unicodedata
from pathlib import Path
from typing import Callable

import pytest

from mirror.errors import MirrorError, PolicyError
from mirror.hashing import git_blob_sha1, lfs_pointer_sha1
from mirror.install import install_bundle
from mirror.manifest import FileEntry, Manifest, classify
from mirror.pack import pack_folder
from mirror.verify import verify_bundle
from tests.fixtures.cachetree import tree as cache_tree

BLOCK = 512
COMMIT = "c" * 40
CONFIG = b'{"hidden_size": 4}\n'
WEIGHTS = b"\x00\x01\x02\x03" * 300


# --- a tar written by hand ------------------------------------------------------------------------

def header(name: bytes, size: int, typeflag: bytes = b"0", linkname: bytes = b"") -> bytes:
    h = bytearray(BLOCK)
    h[0:100] = name[:100].ljust(100, b"\0")
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"%011o\0" % 0
    h[148:156] = b" " * 8
    h[156:157] = typeflag
    h[157:257] = linkname[:100].ljust(100, b"\0")
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def member(name: str | bytes, data: bytes = b"", *, typeflag: bytes = b"0", linkname: bytes = b"", size: int | None = None) -> bytes:
    raw = name.encode() if isinstance(name, str) else name
    return header(raw, len(data) if size is None else size, typeflag, linkname) + data + b"\0" * (-len(data) % BLOCK)


def pax(records: dict[str, str]) -> bytes:
    body = b""
    for k, v in records.items():
        line = f" {k}={v}\n".encode()
        n = len(line) + len(str(len(line)))
        n = len(line) + len(str(n))
        body += str(n).encode() + line
    return header(b"././@PaxHeader", len(body), b"x") + body + b"\0" * (-len(body) % BLOCK)


def tar(*parts: bytes) -> bytes:
    data = b"".join(parts) + b"\0" * (2 * BLOCK)
    return data + b"\0" * (-len(data) % (20 * BLOCK))


def entry(path: str, data: bytes, **over) -> FileEntry:
    lfs, sha256 = path.endswith(".safetensors"), hashlib.sha256(data).hexdigest()
    fields = dict(
        path=path, size=len(data), sha256=sha256,
        git_sha1=lfs_pointer_sha1(sha256, len(data)) if lfs else git_blob_sha1(data), lfs=lfs, kind=classify(path),
    )
    fields.update(over)
    return FileEntry(**fields)


def manifest(*entries: FileEntry, repo_id: str = "org/victim") -> bytes:
    return Manifest(
        repo_id=repo_id, repo_type="model", revision="main", commit=COMMIT, source="https://hub.example",
        created_at="2024-01-01T00:00:00Z", license="mit", files=tuple(entries),
    ).to_json()


def man_member(*entries: FileEntry, raw: bytes | None = None) -> bytes:
    return member("_mirror/manifest.json", manifest(*entries) if raw is None else raw)


GOOD = (entry("config.json", CONFIG), entry("model.safetensors", WEIGHTS))


def good_files() -> bytes:
    return member("files/config.json", CONFIG) + member("files/model.safetensors", WEIGHTS)


# --- the attacks ----------------------------------------------------------------------------------
# Each builder gets the folder an attacker would like to write into and returns the tar bytes.

Attack = Callable[[Path], bytes]
ATTACKS: dict[str, tuple[Attack, str]] = {
    "absolute-path": (
        lambda out: tar(man_member(*GOOD), good_files(), member(str(out / "pwned"), b"owned")),
        "absolute",
    ),
    "dotdot-component": (
        lambda out: tar(man_member(*GOOD), good_files(), member("files/../../../../pwned", b"owned")),
        "'..'",
    ),
    "pax-path-escape": (  # a harmless ustar name, overridden by a PAX path that escapes
        lambda out: tar(man_member(*GOOD), good_files(), pax({"path": "../../pwned"}), member("files/harmless.txt", b"owned")),
        "'..'",
    ),
    "symlink": (
        lambda out: tar(man_member(*GOOD), member("files/config.json", typeflag=b"2", linkname=str(out / "target").encode()), member("files/model.safetensors", WEIGHTS)),
        "symlink",
    ),
    "hardlink": (
        lambda out: tar(man_member(*GOOD), member("files/config.json", typeflag=b"1", linkname=b"/etc/passwd"), member("files/model.safetensors", WEIGHTS)),
        "hard link",
    ),
    "char-device": (
        lambda out: tar(man_member(*GOOD), good_files(), member("files/tty", typeflag=b"3")),
        "character device",
    ),
    "fifo": (
        lambda out: tar(man_member(*GOOD), good_files(), member("files/pipe", typeflag=b"6")),
        "FIFO",
    ),
    "gnu-longname": (
        lambda out: tar(man_member(*GOOD), good_files(), member("././@LongLink", b"../../pwned\0", typeflag=b"L"), member("files/x", b"owned")),
        "tar type",
    ),
    "duplicate-member": (  # the second copy would overwrite the checked first one
        lambda out: tar(man_member(*GOOD), good_files(), member("files/config.json", b'{"evil": true}\n')),
        "twice",
    ),
    "unlisted-member": (
        lambda out: tar(man_member(*GOOD), good_files(), member("files/extra.py", b"import os\n")),
        "extra",
    ),
    "listed-but-missing": (
        lambda out: tar(man_member(*GOOD, entry("tokenizer.json", b"{}")), good_files()),
        "missing",
    ),
    "size-smaller-than-manifest": (
        lambda out: tar(man_member(entry("config.json", CONFIG + b" "), GOOD[1]), good_files()),
        "size",
    ),
    "size-larger-than-manifest": (  # a member declaring far more data than the manifest allows
        lambda out: tar(man_member(*GOOD), member("files/config.json", CONFIG + b"\0" * 200_000), member("files/model.safetensors", WEIGHTS)),
        "size",
    ),
    "directory-with-data": (  # bytes hidden in a folder member, counted by no manifest entry
        lambda out: tar(man_member(*GOOD), good_files(), member("files/sub/", b"hidden payload" * 100, typeflag=b"5")),
        "directory member with data",
    ),
    "bytes-differ": (
        lambda out: tar(man_member(*GOOD), member("files/config.json", CONFIG.replace(b"4", b"5")), member("files/model.safetensors", WEIGHTS)),
        "sha256",
    ),
    "manifest-missing": (
        lambda out: tar(good_files()),
        "first member",
    ),
    "manifest-not-first": (
        lambda out: tar(good_files(), man_member(*GOOD)),
        "first member",
    ),
    "manifest-not-json": (
        lambda out: tar(man_member(raw=b"{this is not json"), good_files()),
        "JSON",
    ),
    "manifest-unknown-version": (
        lambda out: tar(man_member(raw=manifest(*GOOD).replace(b"mirror-bundle/1", b"mirror-bundle/99")), good_files()),
        "unknown manifest format",
    ),
    "manifest-path-traversal": (
        lambda out: tar(man_member(raw=manifest(*GOOD).replace(b'"path": "config.json"', b'"path": "../config.json"')), good_files()),
        "'..'",
    ),
    "case-insensitive-collision": (
        lambda out: tar(
            man_member(GOOD[0], entry("Config.json", b"{}\n"), GOOD[1]),
            member("files/Config.json", b"{}\n"), good_files(),
        ),
        "case-insensitive",
    ),
    "unicode-normalization-collision": (  # NFC vs NFD: one name on macOS filesystems
        lambda out: tar(
            man_member(*GOOD, entry(unicodedata.normalize("NFC", "caf\u00e9.txt"), b"a"), entry(unicodedata.normalize("NFD", "caf\u00e9.txt"), b"b")),
            good_files(), pax({"path": "files/" + unicodedata.normalize("NFC", "caf\u00e9.txt")}), member("files/cafe-nfc", b"a"),
            pax({"path": "files/" + unicodedata.normalize("NFD", "caf\u00e9.txt")}), member("files/cafe-nfd", b"b"),
        ),
        "case-insensitive",
    ),
    "file-and-folder-collision": (  # 'config.json' as a file and as a folder cannot both exist
        lambda out: tar(man_member(*GOOD, entry("config.json/inner.txt", b"x")), good_files(), member("files/config.json/inner.txt", b"x")),
        "folder",
    ),
    "non-utf8-name": (
        lambda out: tar(man_member(*GOOD), good_files(), member(b"files/\xff\xfe.bin", b"owned")),
        "UTF-8",
    ),
    "trailing-data-after-end": (
        lambda out: tar(man_member(*GOOD), good_files()) + b"#!/bin/sh\nrm -rf /\n",
        "after the end",
    ),
    "truncated": (
        lambda out: tar(man_member(*GOOD), good_files())[: 3 * BLOCK + 100],
        "truncated",
    ),
    "unknown-mirror-member": (
        lambda out: tar(man_member(*GOOD), good_files(), member("_mirror/hooks.py", b"import os\n")),
        "unknown mirror member",
    ),
    "payload-after-signature": (  # the signature must be last: nothing may ride behind it
        lambda out: tar(man_member(*GOOD), member("files/config.json", CONFIG), member("_mirror/signature.json", b"{}"), member("files/model.safetensors", WEIGHTS)),
        "after the trailer",
    ),
    "sparse-member": (
        lambda out: tar(man_member(*GOOD), good_files(), pax({"GNU.sparse.map": "0,10"}), member("files/sparse", b"x")),
        "GNU.sparse",
    ),
}


@pytest.fixture
def world(tmp_path):
    """A cache that already holds a good snapshot, and an 'outside' folder attackers aim at."""
    good = tmp_path / "good"
    good.mkdir()
    (good / "config.json").write_bytes(CONFIG)
    bundle = pack_folder(good, repo_id="org/good", out_dir=tmp_path / "bundles").path
    cache = tmp_path / "cache"
    install_bundle(bundle, cache_dir=cache)
    outside = tmp_path / "outside"
    outside.mkdir()
    return tmp_path, cache, outside


def test_there_are_at_least_fifteen_attacks():
    assert len(ATTACKS) >= 15


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_hostile_bundle_is_refused_by_verify_and_install(world, name):
    tmp_path, cache, outside = world
    build, reason = ATTACKS[name]
    bundle = tmp_path / "bundles" / f"{name}.tar"
    bundle.write_bytes(build(outside))
    before_cache, before_all = cache_tree(cache), cache_tree(tmp_path)

    # verify: either a report that is not ok, or a typed error when there is no manifest to judge by
    try:
        report = verify_bundle(bundle)
        assert not report.ok, f"{name}: verify accepted a hostile bundle"
        said = "\n".join(report.lines())
        assert all("\n" not in line for line in report.lines())
    except MirrorError as e:
        said = str(e)
        assert "\n" not in said
    assert reason.lower() in said.lower(), f"{name}: verify said {said!r}"

    with pytest.raises(MirrorError) as e:
        install_bundle(bundle, cache_dir=cache)
    msg = str(e.value)
    assert "\n" not in msg and e.value.exit_code != 0
    assert reason.lower() in msg.lower(), f"{name}: install said {msg!r}"

    assert cache_tree(cache) == before_cache, f"{name}: the cache changed"
    assert cache_tree(tmp_path) == before_all, f"{name}: something was written"
    assert not any(outside.iterdir())


def test_manifest_lying_about_a_pickle_kind_does_not_bypass_the_policy(world):
    """The manifest says `pytorch_model.bin` is json; the policy classifies by path and refuses."""
    tmp_path, cache, outside = world
    data = b"\x80\x04\x8c\x05posix\x8c\x06system\x93\x8c\x04echo\x85R."
    files = (entry("config.json", CONFIG), entry("pytorch_model.bin", data, kind="json"))
    bundle = tmp_path / "bundles" / "liar.tar"
    bundle.write_bytes(tar(man_member(*files), member("files/config.json", CONFIG), member("files/pytorch_model.bin", data)))
    before = cache_tree(cache)
    with pytest.raises(PolicyError, match="pytorch_model.bin"):
        install_bundle(bundle, cache_dir=cache)
    with pytest.raises(PolicyError, match="posix.system"):
        install_bundle(bundle, cache_dir=cache, allow_pickle=True)
    assert cache_tree(cache) == before


def test_handmade_good_bundle_installs(world):
    """The control: the same hand-written tar format, without an attack, is accepted."""
    tmp_path, cache, _ = world
    bundle = tmp_path / "bundles" / "fine.tar"
    bundle.write_bytes(tar(man_member(*GOOD), good_files()))
    assert verify_bundle(bundle).ok
    result = install_bundle(bundle, cache_dir=cache)
    assert (result.snapshot_dir / "config.json").read_bytes() == CONFIG
    assert (result.snapshot_dir / "model.safetensors").read_bytes() == WEIGHTS
