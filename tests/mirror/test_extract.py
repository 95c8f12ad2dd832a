"""The parallel extractor: positioned reads into reused buffers, hashed inline, written from the
same buffer; with fewer large files than cores, the writes overlap the hashing (double buffer)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from mirror import extract as extract_mod
from mirror.errors import HashMismatch
from mirror.extract import extract
from mirror.install import install_bundle
from mirror.bundle.codec import BundleReader
from tests.fixtures.cachetree import tree
from tests.mirror.test_bundle import make_repo, write


@pytest.fixture
def small(tmp_path):
    src = tmp_path / "src"
    files = make_repo(src)
    return write(src, tmp_path / "out"), files


class FileSink:
    """Writes every file under `root`; `fail_after` bytes into a file, its write raises ENOSPC."""

    def __init__(self, root: Path, fail_after: int | None = None):
        self.root, self.fail_after = root, fail_after
        self.kept, self.discarded = [], []

    def open(self, entry):
        p = self.root / entry.path
        p.parent.mkdir(parents=True, exist_ok=True)
        sink = self

        class Out:
            def __init__(self):
                self.f, self.n = open(p, "wb"), 0

            def write(self, view):
                if sink.fail_after is not None and self.n + len(view) > sink.fail_after:
                    raise OSError(errno.ENOSPC, "No space left on device")
                self.n += len(view)
                return self.f.write(view)

            def close(self):
                self.f.close()

        return Out()

    def keep(self, entry, out):
        out.close()
        self.kept.append(entry.path)

    def discard(self, entry, out):
        out.close()
        (self.root / entry.path).unlink()
        self.discarded.append(entry.path)


@pytest.mark.parametrize("overlap", [True, False])
def test_both_write_modes_give_exactly_the_files(small, tmp_path, monkeypatch, overlap):
    info, files = small
    monkeypatch.setattr(extract_mod, "RANGE_CHUNK", 4096)  # many chunks: both buffers are reused often
    monkeypatch.setattr(extract_mod, "_LARGE", 1 << 62 if overlap else 0)  # no large file -> overlapped writes
    sink = FileSink(tmp_path / "x")
    with BundleReader(info.path, hash_all=False) as r:
        ex = extract(r, sink=sink, sequential=False)
    assert ex is not None and ex.files == len(files)
    assert sorted(sink.kept) == sorted(files) and sink.discarded == []
    assert {p: (tmp_path / "x" / p).read_bytes() for p in files} == files


@pytest.mark.parametrize("overlap", [True, False])
def test_a_failed_write_stops_the_extraction_and_keeps_nothing_of_that_file(small, tmp_path, monkeypatch, overlap):
    info, _ = small
    monkeypatch.setattr(extract_mod, "RANGE_CHUNK", 4096)
    monkeypatch.setattr(extract_mod, "_LARGE", 1 << 62 if overlap else 0)
    sink = FileSink(tmp_path / "x", fail_after=50_000)  # only model.safetensors (300 kB) gets that far
    with BundleReader(info.path, hash_all=False) as r, pytest.raises(OSError) as e:
        extract(r, sink=sink, sequential=False)
    assert e.value.errno == errno.ENOSPC
    assert "model.safetensors" in sink.discarded and "model.safetensors" not in sink.kept
    assert not (tmp_path / "x" / "model.safetensors").exists()


def test_a_single_large_file_installs_through_the_overlapped_writes_and_still_checks_bytes(small, tmp_path, monkeypatch):
    info, _ = small
    monkeypatch.setattr(extract_mod, "RANGE_CHUNK", 4096)
    monkeypatch.setattr(extract_mod, "_LARGE", 1 << 62)
    a = tmp_path / "a"
    install_bundle(info.path, cache_dir=a, bundle_sha256=False)
    monkeypatch.setattr(extract_mod, "_LARGE", 0)
    b = tmp_path / "b"
    install_bundle(info.path, cache_dir=b, bundle_sha256=False)
    assert tree(a, stamps=False) == tree(b, stamps=False)

    monkeypatch.setattr(extract_mod, "_LARGE", 1 << 62)
    raw = bytearray(info.path.read_bytes())
    raw[-10240 - 20_000] ^= 0x01  # inside model.safetensors
    info.path.write_bytes(bytes(raw))
    with pytest.raises(HashMismatch, match="model.safetensors"):
        install_bundle(info.path, cache_dir=tmp_path / "c", bundle_sha256=False)
    assert tree(tmp_path / "c") is None  # the folders it made are removed again
