"""Streaming digests: sha256 and git blob sha1 in one pass, with and without hash lanes."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess

import pytest

from mirror.hashing import DualHasher, HashLanes, hash_file, hash_files, hash_stream, lfs_pointer_sha1, sha256_file

HELLO_SHA256 = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"  # sha256sum of "hello\n"
HELLO_GIT_SHA1 = "ce013625030ba8dba906f756967f9e9ca394464a"  # `git hash-object` of "hello\n"


def test_known_digests(tmp_path):
    p = tmp_path / "hello.txt"
    p.write_bytes(b"hello\n")
    d = hash_file(p)
    assert (d.size, d.sha256, d.git_sha1) == (6, HELLO_SHA256, HELLO_GIT_SHA1)
    assert sha256_file(p) == HELLO_SHA256


def test_git_sha1_matches_git_itself(tmp_path):
    p = tmp_path / "blob.bin"
    p.write_bytes(os.urandom(50_000))
    try:
        out = subprocess.run(["git", "hash-object", str(p)], capture_output=True, text=True, check=True).stdout.strip()
    except (FileNotFoundError, subprocess.CalledProcessError):
        pytest.skip("git is not available")
    assert hash_file(p).git_sha1 == out


def test_an_lfs_file_gets_its_pointer_git_sha1(tmp_path):
    p = tmp_path / "hello.bin"
    p.write_bytes(b"hello\n")
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{HELLO_SHA256}\nsize 6\n".encode()
    want = hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()
    assert lfs_pointer_sha1(HELLO_SHA256, 6) == want
    assert hash_file(p, lfs=True) == type(hash_file(p))(size=6, sha256=HELLO_SHA256, git_sha1=want)
    with HashLanes(2) as lanes:
        h = DualHasher(6, lfs=True, lanes=lanes)
        h.update(b"hel")
        h.update(b"lo\n")
        assert h.digest().git_sha1 == want
    assert hash_files([p], lfs={p}) == {p: hash_file(p, lfs=True)}
    ptr = tmp_path / "pointer"
    ptr.write_bytes(pointer)
    try:  # what git itself stores for the LFS file
        out = subprocess.run(["git", "hash-object", str(ptr)], capture_output=True, text=True, check=True).stdout.strip()
    except (FileNotFoundError, subprocess.CalledProcessError):
        return
    assert out == want


def test_chunk_boundaries_do_not_change_the_digest():
    data = os.urandom(10_000)
    whole = hash_stream(io.BytesIO(data), len(data))
    for chunk in (1, 7, 512, 4096, 9_999, 10_001):
        assert hash_stream(io.BytesIO(data), len(data), chunk=chunk) == whole
    assert whole.sha256 == hashlib.sha256(data).hexdigest()


def test_lanes_give_the_same_digests_as_inline_hashing():
    pieces = [os.urandom(n) for n in (0, 1, 3000, 70_000, 5)]
    size = sum(map(len, pieces))
    inline = DualHasher(size)
    with HashLanes(2) as lanes:
        laned = DualHasher(size, lanes=lanes, lane_ids=(0, 1))
        for p in pieces:
            inline.update(p)
            laned.update(p)
        assert laned.digest() == inline.digest()


def test_lanes_keep_submission_order():
    # sha256 is order-sensitive: any reordering of updates would change the digest
    parts = [bytes([i]) * 5000 for i in range(50)]
    with HashLanes(1) as lanes:
        h = hashlib.sha256()
        for p in parts:
            lanes.submit(0, h, p)
        lanes.drain()
        assert h.hexdigest() == hashlib.sha256(b"".join(parts)).hexdigest()


def test_digest_refuses_a_wrong_declared_size():
    h = DualHasher(5)
    h.update(b"abc")
    with pytest.raises(ValueError, match="hashed 3 bytes, expected 5"):
        h.digest()


def test_hash_files_in_parallel(tmp_path):
    paths = []
    for i in range(5):
        p = tmp_path / f"f{i}"
        p.write_bytes(os.urandom(1000 * (i + 1)))
        paths.append(p)
    got = hash_files(paths, workers=3)
    assert got == {p: hash_file(p) for p in paths}
