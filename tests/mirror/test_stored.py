"""A bundle on disk (mirror.bundle.stored): one rule for the bundles of a folder, the sidecar read
without blocking, one ranged reader over a file or its parts; and the writer's spec, source and
sink fitting together (mirror.bundle.write)."""

from __future__ import annotations

import os
import random
import shutil
import threading
from pathlib import Path

import pytest

from mirror.bundle import BundleSpec, stored
from mirror.bundle.codec import BundleReader
from mirror.bundle.write.driver import write
from mirror.bundle.write.sinks import FileSink, PartsSink
from mirror.bundle.write.sources import FillSource, FolderSource
from mirror.listing import list_bundles
from mirror.serve.catalogue import Catalogue

SPEC = BundleSpec(repo_id="org/tiny", revision="main", commit=None, source="local:model", created_at="2024-05-01T12:00:00Z", license=None)


def _model(root: Path) -> Path:
    rng = random.Random(3)
    root.mkdir(parents=True)
    (root / "model.safetensors").write_bytes(rng.randbytes(70_000))
    (root / "config.json").write_text('{"hidden_size": 8}\n')
    return root


def test_one_rule_for_the_bundles_of_a_folder(tmp_path):
    model = _model(tmp_path / "model")
    single = write(SPEC, FolderSource(model), FileSink(tmp_path / "single"))
    multi = write(SPEC, FolderSource(model), PartsSink(tmp_path / "multi", max_part_size=16 * 1024))
    folder = tmp_path / "bundles"
    folder.mkdir()
    # X.tar beside X.tar.parts.json (copied by hand: the writers remove the other form), and Y only in parts
    shutil.copy(single.path, folder / single.path.name)
    for f in multi.path.parent.iterdir():
        shutil.copy(f, folder / f.name)
        shutil.copy(f, folder / f.name.replace("org--tiny", "org--other"))
    (folder / ".x.tar.123-abc.partial").write_bytes(b"unfinished")
    other_index = folder / multi.path.name.replace("org--tiny", "org--other")
    assert stored.scan_folder(folder) == [other_index, folder / single.path.name]  # X.tar wins, Y's index stays
    assert [s.path for s in list_bundles(folder)] == stored.scan_folder(folder)
    view = Catalogue(folder, state_file=tmp_path / "state.json").refresh()
    served = [c for r in view.repos for c in r.commits]
    assert len(served) == 1 and served[0].bundle in (folder / single.path.name, other_index)
    assert stored.locate(folder / single.path.name).multipart is False  # the same rule as locate's


def test_a_sidecar_that_is_a_fifo_is_never_opened_for_reading(tmp_path):
    model = _model(tmp_path / "model")
    info = write(SPEC, FolderSource(model), FileSink(tmp_path / "out"))
    sidecar = info.path.with_name(info.path.name + ".sha256")
    assert stored.sidecar_sha256(info.path) == info.sha256
    sidecar.unlink()
    os.mkfifo(sidecar)  # a plain read_text() would wait for a writer for ever
    got: list = []
    t = threading.Thread(target=lambda: got.append(stored.sidecar_sha256(info.path)), daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive() and got == [None]
    assert stored.has_sidecar(info.path) is False


def test_one_ranged_reader_over_a_file_its_parts_and_a_borrowed_descriptor(tmp_path):
    model = _model(tmp_path / "model")
    single = write(SPEC, FolderSource(model), FileSink(tmp_path / "single"))
    multi = write(SPEC, FolderSource(model), PartsSink(tmp_path / "multi", max_part_size=16 * 1024))
    whole = single.path.read_bytes()
    assert multi.sha256 == single.sha256 and multi.size == len(whole)
    with stored.Ranges(single.path) as a, stored.Ranges(multi.path) as b, BundleReader(single.path) as r:
        c = r.ranges()
        for at, n in ((0, 10), (16 * 1024 - 3, 7), (16 * 1024 * 2 - 1, 16 * 1024 + 2), (len(whole) - 5, 50)):
            assert a.read(at, n) == b.read(at, n) == c.read(at, n) == whole[at : at + n]
            view = memoryview(bytearray(min(n, len(whole) - at)))
            b.readinto(at, view)
            assert bytes(view) == whole[at : at + len(view)]
    assert stored.piece_at(16 * 1024 * 2 + 5, 16 * 1024, 3) == (2, 5)
    assert stored.piece_at(16 * 1024 * 5, 16 * 1024, 3) == (2, 16 * 1024 * 3)  # the last part takes the rest
    files, span, size = stored.locate(multi.path).pieces()
    assert span == 16 * 1024 and size == len(whole) and b"".join(f.read_bytes() for f in files) == whole


def test_a_fill_needs_the_in_place_sink_and_a_delta_its_own_name(tmp_path):
    model = _model(tmp_path / "model")

    class Filler:
        paths = frozenset({"model.safetensors"})

        def start(self, regions):
            raise AssertionError("never started")

    with pytest.raises(ValueError, match="in place"):
        write(SPEC, FillSource(model, lambda p: None, Filler()), FileSink(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    delta = BundleSpec(**{**SPEC.__dict__, "extra": {"delta": {"base": {"commit": "ab" * 20}}}})
    assert delta.filename("cd" * 20) == "org--tiny--cdcdcdcdcdcd--delta-from-abababababab.tar"
    assert SPEC.filename("cd" * 20) == "org--tiny--cdcdcdcdcdcd.tar"
