"""Multi-part bundles (mirror.parts): split, read back as one stream, name what is missing or damaged."""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mirror.bundle import parts, stored
from mirror.errors import BundleError, PartError, UsageError
from mirror.install import install_bundle
from mirror.pack import pack_folder
from mirror.verify import verify_bundle

PART = 16 * 1024


def _model(root: Path) -> Path:
    """A tiny model folder whose bundle spans many 16 KiB parts, with a nested file."""
    rng = __import__("random").Random(7)
    (root / "1_Pooling").mkdir(parents=True)
    (root / "model.safetensors").write_bytes(rng.randbytes(150_000))
    (root / "config.json").write_text('{"hidden_size": 8}\n')
    (root / "tokenizer.json").write_bytes(rng.randbytes(30_000))
    (root / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}\n')
    return root


def _pack(tmp_path: Path, *, max_part_size: int | None = PART, out: str = "out"):
    folder = tmp_path / "model"
    if not folder.exists():
        _model(folder)
    return pack_folder(folder, repo_id="org/tiny", revision="v1", out_dir=tmp_path / out, max_part_size=max_part_size)


def _tree(snapshot: Path) -> dict[str, str]:
    return {p.relative_to(snapshot).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in snapshot.rglob("*") if p.is_file()}


def test_split_verify_install_equals_single_file(tmp_path: Path) -> None:
    single = _pack(tmp_path, max_part_size=None, out="single")
    multi = _pack(tmp_path, out="multi")
    assert multi.path.name == single.path.name + ".parts.json"
    index = parts.read_index(multi.path)
    joined = b"".join((multi.path.parent / p.name).read_bytes() for p in index.parts)
    assert joined == single.path.read_bytes()  # the parts are the single-file stream, cut
    assert multi.sha256 == single.sha256 == index.sha256 == hashlib.sha256(joined).hexdigest()
    assert len(index.parts) == -(-index.size // PART) > 5

    # any name a user might type: the index, a part, or the base name
    for name in (multi.path, multi.path.parent / index.parts[2].name, multi.path.parent / single.path.name):
        report = verify_bundle(name)
        assert report.ok, report.lines()
        assert report.bundle_sha256 == single.sha256
        assert report.checked == 4

    a = install_bundle(multi.path, cache_dir=tmp_path / "cache_multi")
    b = install_bundle(single.path, cache_dir=tmp_path / "cache_single")
    assert a.bundle_sha256 == b.bundle_sha256 == single.sha256
    assert _tree(a.snapshot_dir) == _tree(b.snapshot_dir) == _tree(tmp_path / "model")
    # sha256sum-compatible sidecar, so plain coreutils can check the parts on arrival
    sums = (multi.path.parent / (single.path.name + ".parts.sha256")).read_text().splitlines()
    assert sums == [f"{p.sha256}  {p.name}" for p in index.parts]


def test_missing_part_is_named_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    multi = _pack(tmp_path)
    index = parts.read_index(multi.path)
    (multi.path.parent / index.parts[3].name).unlink()
    (multi.path.parent / index.parts[5].name).write_bytes(b"short")
    opened: list[str] = []
    real_open = stored.open_regular
    monkeypatch.setattr(stored, "open_regular", lambda p, *a, **k: opened.append(str(p)) or real_open(p, *a, **k))
    for action in (verify_bundle, lambda p: install_bundle(p, cache_dir=tmp_path / "cache")):
        with pytest.raises(PartError) as err:
            action(multi.path)
        assert err.value.parts == (index.parts[3].name, index.parts[5].name)
        assert f"1 of {len(index.parts)} parts missing: {index.parts[3].name}" in str(err.value)
        assert f"{index.parts[5].name} is 5 bytes, the index says {PART}" in str(err.value)
    assert opened == []  # refused from the index and a stat() per part: no part was read
    assert not (tmp_path / "cache").exists()


def test_corrupted_part_is_named(tmp_path: Path) -> None:
    multi = _pack(tmp_path)
    index = parts.read_index(multi.path)
    damaged = multi.path.parent / index.parts[2].name  # inside model.safetensors' data
    data = bytearray(damaged.read_bytes())
    data[PART // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))

    report = verify_bundle(multi.path)
    assert not report.ok
    assert [(m.path, m.field) for m in report.mismatched] == [("model.safetensors", "sha256")]
    assert any(index.parts[2].name in p and "damaged" in p for p in report.problems), report.problems
    assert report.missing == ()  # the pass went on to the end: later files were still checked
    assert report.checked == 4

    cache = tmp_path / "cache"
    with pytest.raises(PartError) as err:
        install_bundle(multi.path, cache_dir=cache)
    assert err.value.parts == (index.parts[2].name,)
    assert f"{index.parts[2].name} is damaged" in str(err.value)
    assert list(cache.rglob("*")) == []  # the install rolled back


@pytest.mark.parametrize("max_size", [1024, 5000, 10240, 1 << 20])
def test_parts_are_equal_except_the_last(tmp_path: Path, max_size: int) -> None:
    multi = _pack(tmp_path, max_part_size=max_size)
    index = parts.read_index(multi.path)
    sizes = [(multi.path.parent / p.name).stat().st_size for p in index.parts]
    assert sizes == [p.size for p in index.parts]
    assert all(s == max_size for s in sizes[:-1])
    assert 0 < sizes[-1] <= max_size
    assert sum(sizes) == index.size
    if index.size % max_size == 0:  # tars are multiples of 10240: no empty trailing part
        assert sizes[-1] == max_size


def test_stale_parts_from_an_earlier_write_are_removed(tmp_path: Path) -> None:
    small = _pack(tmp_path, max_part_size=4096)
    out = small.path.parent
    many = len(parts.read_index(small.path).parts)
    (out / "org--tiny--x.tar.part0001").write_bytes(b"another bundle's part")  # not ours: kept
    big = _pack(tmp_path, max_part_size=64 * 1024)
    index = parts.read_index(big.path)
    assert len(index.parts) < many
    stem = big.path.name[: -len(".parts.json")]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [p.name for p in index.parts] + [big.path.name, stem + ".parts.sha256", "org--tiny--x.tar.part0001"]
    )
    assert verify_bundle(big.path).ok
    # writing the same bundle as a single file supersedes the parts, index first
    single = _pack(tmp_path, max_part_size=None)
    assert sorted(p.name for p in out.iterdir()) == sorted([single.path.name, single.path.name + ".sha256", "org--tiny--x.tar.part0001"])
    # and the other way round
    again = _pack(tmp_path, max_part_size=64 * 1024)
    assert not single.path.exists() and not Path(f"{single.path}.sha256").exists()
    assert verify_bundle(again.path).ok


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with parts.PartWriter(tmp_path, max_part_size=1024) as w:
            w.write(os.urandom(5000))
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_reader_never_joins_parts_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    multi = _pack(tmp_path)
    index = parts.read_index(multi.path)
    writes: list[str] = []
    real_open = builtins.open

    def spy(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            writes.append(str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    before = {p.name: p.stat().st_size for p in multi.path.parent.iterdir()}
    with stored.open_stream(multi.path) as stream:
        assert isinstance(stream, stored.PartsReader)
        digest = hashlib.sha256()
        while chunk := stream.read(3000):  # reads that straddle part boundaries
            digest.update(chunk)
        assert stream.unchecked_parts() == ()
    assert digest.hexdigest() == index.sha256
    assert verify_bundle(multi.path).ok
    assert writes == []
    assert {p.name: p.stat().st_size for p in multi.path.parent.iterdir()} == before


@settings(max_examples=40, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=20_000),
    part=st.integers(min_value=1024, max_value=6000),
    cuts=st.lists(st.integers(min_value=1, max_value=4000), max_size=20),
    patch_at=st.integers(min_value=0, max_value=19_999),
)
def test_writer_reader_round_trip(tmp_path_factory, data: bytes, part: int, cuts: list[int], patch_at: int) -> None:
    folder = tmp_path_factory.mktemp("rt")
    w = parts.PartWriter(folder, max_part_size=part)
    with w:
        pos = 0
        for n in cuts + [len(data)]:  # arbitrary write sizes, then the rest
            w.write(data[pos : pos + n])
            pos = min(len(data), pos + n)
        if data:  # seek back and patch, as the bundle writer does with its manifest
            at = patch_at % len(data)
            w.seek(at)
            w.write(data[at : at + 700])
            w.seek(0, io.SEEK_END)
    index = w.commit(folder / "b.tar")
    assert index.sha256 == hashlib.sha256(data).hexdigest() and index.size == len(data)
    assert all(p.size == part for p in index.parts[:-1])
    with stored.PartsReader(folder / "b.tar.parts.json") as r:
        assert r.read() == data
        assert r.unchecked_parts() == ()
        r.seek(len(data) // 2)
        assert r.read(100) == data[len(data) // 2 : len(data) // 2 + 100]


def test_parse_size_units() -> None:
    assert parts.parse_size("4G") == 4 * 1024**3
    assert parts.parse_size("4095M") == 4095 * 1024**2
    assert parts.parse_size("650MB") == 650 * 10**6
    assert parts.parse_size("1.5k") == 1536
    assert parts.parse_size("4096") == 4096
    for bad in ("4", "lots", "4Q", "-1G", ""):
        with pytest.raises(UsageError) as err:
            parts.parse_size(bad)
        assert "--max-part-size" in str(err.value)


def test_hostile_or_inconsistent_index_is_refused(tmp_path: Path) -> None:
    multi = _pack(tmp_path)
    good = json.loads(multi.path.read_text())
    cases = {
        "escape": lambda d: d["parts"][0].update(name="../../etc/passwd"),
        "uneven": lambda d: (d["parts"][0].update(size=d["parts"][0]["size"] - 1), d.update(size=d["size"] - 1)),
        "sum": lambda d: d.update(size=d["size"] + 1),
        "format": lambda d: d.update(format="mirror-parts/9"),
    }
    for name, mutate in cases.items():
        d = json.loads(json.dumps(good))
        mutate(d)
        multi.path.write_text(json.dumps(d))
        with pytest.raises(BundleError) as err:
            verify_bundle(multi.path)
        assert "index" in str(err.value), name


def test_a_part_without_its_index_is_explained(tmp_path: Path) -> None:
    multi = _pack(tmp_path)
    first = multi.path.parent / parts.read_index(multi.path).parts[0].name
    multi.path.unlink()
    with pytest.raises(BundleError) as err:
        verify_bundle(first)
    assert multi.path.name in str(err.value) and "missing" in str(err.value)


def test_cli_parts_options_and_errors(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from mirror.cli import cli

    folder = _model(tmp_path / "model")
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["pack", str(folder), "--repo-id", "org/tiny", "--out", str(out), "--max-part-size", "16K"])
    assert r.exit_code == 0, r.output
    index = Path(r.output.strip().splitlines()[-1])
    assert index.name.endswith(".tar.parts.json") and parts.read_index(index).max_part_size == PART
    r = CliRunner().invoke(cli, ["list", str(out)])
    assert r.exit_code == 0 and index.name in r.output
    (out / parts.read_index(index).parts[1].name).unlink()
    r = CliRunner().invoke(cli, ["verify", str(index)])
    assert r.exit_code == 4 and "part0002" in r.output and r.output.count("\n") == 1
    r = CliRunner().invoke(cli, ["pack", str(folder), "--repo-id", "org/tiny", "--out", str(out), "--max-part-size", "4"])
    assert r.exit_code == 2 and "did you forget the unit" in r.output


def test_parallel_verify_reads_ranges_of_single_files_and_parts(tmp_path: Path) -> None:
    single = _pack(tmp_path, max_part_size=None, out="single")
    multi = _pack(tmp_path, out="multi")
    for bundle in (single.path, multi.path):
        fast = verify_bundle(bundle, bundle_sha256=False)
        assert fast.ok and fast.checked == 4 and fast.checked_bytes == single.manifest.total_size
        assert fast.bundle_sha256 is None  # skipped: the files alone were hashed, in parallel
    with stored.Ranges(multi.path) as r, open(single.path, "rb") as f:
        whole = f.read()
        assert r.size == len(whole)
        for at, n in ((0, 10), (PART - 3, 7), (PART * 2 - 1, PART + 2), (len(whole) - 5, 50)):
            assert r.read(at, n) == whole[at : at + n]
    # a damaged part: the parallel pass sees a bad file digest and hands over to the full pass,
    # which names the file and the part
    index = parts.read_index(multi.path)
    victim = multi.path.parent / index.parts[4].name
    data = bytearray(victim.read_bytes())
    data[100] ^= 1
    victim.write_bytes(bytes(data))
    report = verify_bundle(multi.path, bundle_sha256=False)
    assert not report.ok and report.mismatched[0].path == "model.safetensors"
    assert any(index.parts[4].name in p for p in report.problems)
