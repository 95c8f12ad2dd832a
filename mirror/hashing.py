"""Streaming file digests: sha256 and the git blob sha1 the Hub uses for non-LFS files.

Files are read in fixed-size chunks, never whole, so memory stays flat whatever the model size.
Both digests are computed in the same pass over the bytes.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable

CHUNK = 8 * 1024 * 1024  # large enough that per-call overhead is invisible next to hashlib's own cost


@dataclass(frozen=True)
class Digest:
    size: int
    sha256: str
    git_sha1: str


class DualHasher:
    """Feed bytes once, get both digests. `git_sha1` needs the size up front (git's blob header)."""

    def __init__(self, size: int):
        self.size = size
        self._seen = 0
        self._sha256 = hashlib.sha256()
        self._sha1 = hashlib.sha1(f"blob {size}\0".encode())

    def update(self, chunk: bytes | memoryview) -> None:
        self._seen += len(chunk)
        self._sha256.update(chunk)
        self._sha1.update(chunk)

    def digest(self) -> Digest:
        if self._seen != self.size:
            # a git sha1 over the wrong declared size would be silently wrong; refuse instead
            raise ValueError(f"hashed {self._seen} bytes, expected {self.size}")
        return Digest(size=self.size, sha256=self._sha256.hexdigest(), git_sha1=self._sha1.hexdigest())


def hash_stream(f: BinaryIO, size: int, *, chunk: int = CHUNK) -> Digest:
    h = DualHasher(size)
    buf = bytearray(chunk)
    view = memoryview(buf)
    while True:
        n = f.readinto(buf)
        if not n:
            break
        h.update(view[:n])
    return h.digest()


def hash_file(path: str | os.PathLike) -> Digest:
    with open(path, "rb", buffering=0) as f:
        return hash_stream(f, os.fstat(f.fileno()).st_size)


def sha256_file(path: str | os.PathLike, *, chunk: int = CHUNK) -> str:
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def hash_files(paths: Iterable[Path], *, workers: int | None = None) -> dict[Path, Digest]:
    """Hash many files in parallel. hashlib releases the GIL on large updates, so threads scale
    across cores without the cost of processes."""
    paths = list(paths)
    workers = workers or min(len(paths), os.cpu_count() or 1) or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(paths, pool.map(hash_file, paths)))
