"""The install record names the bundle whose sha256 the install checked, so lineage never has
to re-hash a bundle; and the fast extractor's positioned reads into reused buffers."""

from __future__ import annotations

import json

import pytest

from mirror import hfcache
from mirror.errors import HashMismatch, UnsafeCache
from mirror.install import install_bundle, installed_bundle
from mirror.bundle.stored import Ranges
from mirror.bundle.codec import BundleReader
from tests.mirror.test_bundle import COMMIT, make_repo, write


@pytest.fixture
def small(tmp_path):
    src = tmp_path / "src"
    make_repo(src)
    return src, write(src, tmp_path / "out")


def _record(cache) -> dict:
    return json.loads((cache / "models--org--name" / ".mirror" / f"{COMMIT}.json").read_text())


def test_an_install_that_checks_the_bundle_sha256_records_it(small, tmp_path):
    _, info = small
    cache = tmp_path / "cache"
    r = install_bundle(info.path, cache_dir=cache)  # the library default computes it in its pass
    assert r.bundle_sha256 == info.sha256
    want = {"name": info.path.name, "path": str(info.path), "size": info.size, "sha256": info.sha256}
    assert _record(cache)["bundle"] == want
    got = installed_bundle("org/name", COMMIT, cache_dir=cache)
    assert (got.name, got.path, got.size, got.sha256) == tuple(want.values())
    assert installed_bundle("org/name", "f" * 40, cache_dir=cache) is None  # not installed


def test_without_the_sha256_nothing_is_recorded_until_a_ticketed_install_checks_it(small, tmp_path):
    _, info = small
    cache = tmp_path / "cache"
    info.path.with_name(info.path.name + ".sha256").unlink()  # with its sidecar beside it, the sha256 is checked and recorded
    install_bundle(info.path, cache_dir=cache, bundle_sha256=False)  # what `mirror install` does
    assert "bundle" not in _record(cache) and installed_bundle("org/name", COMMIT, cache_dir=cache) is None
    files = _record(cache)["files"]
    # already installed: `--sha256 HEX` checks the bundle's sha256, and the record gains it (files unchanged)
    again = install_bundle(info.path, cache_dir=cache, bundle_sha256=False, expected_sha256=info.sha256)
    assert again.already_installed and again.bundle_sha256 == info.sha256
    assert _record(cache)["files"] == files and _record(cache)["bundle"]["sha256"] == info.sha256


def test_a_multi_part_bundle_records_its_index_and_the_stream_sha256(small, tmp_path):
    src, single = small
    info = write(src, tmp_path / "parts", max_part_size=4096)
    cache = tmp_path / "cache"
    install_bundle(info.path, cache_dir=cache)  # each part checked as it passes
    rec = installed_bundle("org/name", COMMIT, cache_dir=cache)
    assert (rec.name, rec.sha256, rec.size) == (info.path.name, single.sha256, single.size)


def test_a_sidecar_that_disagrees_with_the_bytes_is_refused_and_the_cache_left_as_it_was(small, tmp_path):
    _, info = small
    sidecar = info.path.with_name(info.path.name + ".sha256")
    sidecar.write_text(f"{'0' * 64}  {info.path.name}\n")
    cache = tmp_path / "cache"
    with pytest.raises(HashMismatch) as e:
        install_bundle(info.path, cache_dir=cache)
    msg = str(e.value)
    assert "\n" not in msg and sidecar.name in msg and info.sha256 in msg and "0" * 64 in msg
    assert e.value.exit_code == 4
    assert not cache.exists()  # refused after the pass, before anything was moved in; the folders it made removed
    sidecar.write_text("not a digest\n")  # an unusable sidecar is ignored (it is optional)
    assert install_bundle(info.path, cache_dir=cache).bundle_sha256 == info.sha256


def test_a_damaged_bundle_entry_in_the_record_is_one_clear_error(small, tmp_path):
    _, info = small
    cache = tmp_path / "cache"
    install_bundle(info.path, cache_dir=cache)
    p = cache / "models--org--name" / ".mirror" / f"{COMMIT}.json"
    d = json.loads(p.read_text())
    d["bundle"]["sha256"] = "../../etc"
    p.write_text(json.dumps(d))
    with pytest.raises(UnsafeCache) as e:
        installed_bundle("org/name", COMMIT, cache_dir=cache)
    assert "bundle sha256" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("repo_id,repo_type", [("org/name", "model"), ("gpt2", "model"), ("org/data.v2", "dataset"), ("a-b/c_d", "space")])
def test_the_repo_folder_name_is_huggingface_hubs(repo_id, repo_type):
    from huggingface_hub.file_download import repo_folder_name

    assert hfcache.repo_folder_name(repo_id, repo_type) == repo_folder_name(repo_id=repo_id, repo_type=repo_type)


def test_positioned_reads_into_a_buffer_give_the_same_bytes_across_parts(small, tmp_path):
    src, single = small
    index = write(src, tmp_path / "parts", max_part_size=4096).path
    raw = single.path.read_bytes()
    with BundleReader(single.path) as r, r.ranges() as one, Ranges(index) as many:
        for off, n in ((0, 512), (4000, 200), (4095, 4098), (len(raw) - 700, 700), (12345, 100_000)):
            for src_ in (one, many):
                buf = bytearray(n)
                src_.readinto(off, memoryview(buf))
                assert bytes(buf) == raw[off : off + n] == src_.read(off, n)
        with pytest.raises(Exception, match="past the end"):
            many.readinto(len(raw) - 10, memoryview(bytearray(20)))


def test_a_sidecar_beside_the_bundle_is_checked_even_when_the_sha256_is_not_asked_for(small, tmp_path):
    """A byte of the manifest changed in transit (its licence): every file still matches that
    manifest, but not the sidecar shipped beside it; `mirror install` (no --sha256) refuses it."""
    from mirror.bundle.codec import BundleReader

    _, info = small
    with BundleReader(info.path, hash_all=False) as r:
        head = r.manifest_bytes
    data = info.path.read_bytes()
    at = data.index(head)
    altered = head.replace(b'"created_at": "2024', b'"created_at": "2025')  # a timestamp touched in transit
    assert altered != head and len(altered) == len(head)
    info.path.write_bytes(data[:at] + altered + data[at + len(head):])
    cache = tmp_path / "cache"
    with pytest.raises(HashMismatch) as e:
        install_bundle(info.path, cache_dir=cache, bundle_sha256=False)
    assert "sidecar" in str(e.value) and e.value.exit_code == 4
    assert not (cache / "models--org--name" / "snapshots").exists()
