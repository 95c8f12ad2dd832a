"""Delta bundles (mirror.delta): carry only what changed, apply on the installed base, verify it all."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pytest

from mirror import delta
from mirror.bundle import parts
from mirror.bundle.codec import read_manifest
from mirror.errors import BaseNotInstalled, ManifestError, UsageError
from mirror.install import install_bundle
from mirror.manifest import FileEntry, parse
from mirror.pack import pack_folder
from mirror.verify import verify_bundle
from tests.fixtures.cachetree import tree as cache_tree


def _v1(root: Path) -> Path:
    rng = random.Random(3)
    (root / "1_Pooling").mkdir(parents=True)
    (root / "model.safetensors").write_bytes(rng.randbytes(200_000))
    (root / "config.json").write_text('{"hidden_size": 8}\n')
    (root / "vocab.txt").write_text("a\nb\nc\n")
    (root / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}\n')
    (root / "merges.txt").write_bytes(rng.randbytes(5_000))
    return root


def _to_v2(root: Path) -> None:
    """A new commit: one changed file, one new, one removed; the big shard is untouched."""
    (root / "config.json").write_text('{"hidden_size": 8, "dropout": 0.1}\n')
    (root / "generation_config.json").write_text('{"max_length": 32}\n')
    (root / "merges.txt").unlink()


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def _cache_state(cache: Path) -> list:
    return cache_tree(cache) or []


@pytest.fixture
def base_and_delta(tmp_path: Path):
    folder = _v1(tmp_path / "model")
    base = pack_folder(folder, repo_id="org/tiny", revision="main", out_dir=tmp_path / "bundles")
    _to_v2(folder)
    d = pack_folder(folder, repo_id="org/tiny", revision="main", out_dir=tmp_path / "bundles", since=base.path)
    return folder, base, d


def test_delta_holds_only_changed_and_new_files_and_names_its_base(base_and_delta) -> None:
    folder, base, d = base_and_delta
    assert sorted(f.path for f in d.manifest.files) == ["config.json", "generation_config.json"]
    info = delta.delta_info(d.manifest)
    assert info.base.commit == base.manifest.commit
    assert info.base.bundle == base.path.name
    assert info.base.bundle_sha256 == base.sha256
    assert info.removed == ("merges.txt",)
    assert {f.path: f.sha256 for f in info.target_files} == _tree(folder)
    full = pack_folder(folder, repo_id="org/tiny", revision="main", out_dir=folder.parent / "full")
    assert d.manifest.commit == full.manifest.commit  # the delta names the same target commit
    assert d.path.name == full.path.name[: -len(".tar")] + f"--delta-from-{base.manifest.commit[:12]}.tar"
    assert d.size < 16 * 1024 < full.size  # the 200 kB shard did not travel again
    assert verify_bundle(d.path).ok


def test_delta_applies_on_top_of_the_base_and_the_snapshot_verifies(tmp_path: Path, base_and_delta) -> None:
    folder, base, d = base_and_delta
    cache = tmp_path / "cache"
    first = install_bundle(base.path, cache_dir=cache)
    res = install_bundle(d.path, cache_dir=cache)
    assert not res.already_installed and res.commit == d.manifest.commit
    assert res.bundle_sha256 == hashlib.sha256(d.path.read_bytes()).hexdigest()
    assert _tree(res.snapshot_dir) == _tree(folder)
    assert (cache / "models--org--tiny" / "refs" / "main").read_text() == d.manifest.commit
    # the base commit is intact, and the unchanged shard is one blob shared by both commits
    assert "merges.txt" in _tree(first.snapshot_dir)
    old, new = first.snapshot_dir / "model.safetensors", res.snapshot_dir / "model.safetensors"
    assert os.readlink(new) == os.readlink(old) and old.resolve() == new.resolve()
    blobs = list((cache / "models--org--tiny" / "blobs").iterdir())
    assert len(blobs) == 5 + 2  # base's five files + the changed config and the new file
    again = install_bundle(d.path, cache_dir=cache)
    assert again.already_installed


def test_delta_without_its_base_is_refused_and_names_the_base(tmp_path: Path, base_and_delta) -> None:
    _, base, d = base_and_delta
    cache = tmp_path / "cache"
    with pytest.raises(BaseNotInstalled) as err:
        install_bundle(d.path, cache_dir=cache)
    msg = str(err.value)
    assert "org/tiny" in msg and base.manifest.commit in msg and base.sha256 in msg and base.path.name in msg
    assert err.value.exit_code == 8 and "\n" not in msg
    assert _cache_state(cache) == []


def test_delta_on_the_wrong_base_is_refused(tmp_path: Path, base_and_delta) -> None:
    folder, base, d2 = base_and_delta
    (folder / "vocab.txt").write_text("a\nb\nc\nd\n")
    d3 = pack_folder(folder, repo_id="org/tiny", revision="main", out_dir=tmp_path / "bundles", since=d2.path)  # base: v2
    cache = tmp_path / "cache"
    install_bundle(base.path, cache_dir=cache)  # v1 is installed, v3 needs v2
    before = _cache_state(cache)
    with pytest.raises(BaseNotInstalled) as err:
        install_bundle(d3.path, cache_dir=cache)
    assert d2.manifest.commit in str(err.value) and d2.sha256 in str(err.value)
    assert base.manifest.commit[:12] in str(err.value)  # says what the cache holds instead
    assert _cache_state(cache) == before
    # applied in order, the chain of deltas reaches v3
    install_bundle(d2.path, cache_dir=cache)
    res = install_bundle(d3.path, cache_dir=cache)
    assert _tree(res.snapshot_dir) == _tree(folder)
    assert [f.path for f in d3.manifest.files] == ["vocab.txt"]


def test_altered_base_in_the_cache_fails_verification_and_rolls_back(tmp_path: Path, base_and_delta) -> None:
    _, base, d = base_and_delta
    cache = tmp_path / "cache"
    first = install_bundle(base.path, cache_dir=cache)
    shard = (first.snapshot_dir / "model.safetensors").resolve()
    os.chmod(shard, 0o644)
    data = bytearray(shard.read_bytes())
    data[100] ^= 1
    shard.write_bytes(bytes(data))
    before = _cache_state(cache)
    with pytest.raises(BaseNotInstalled, match="its blob of model.safetensors is damaged in the cache"):
        install_bundle(d.path, cache_dir=cache)
    assert _cache_state(cache) == before  # no new blob, no target snapshot
    again = install_bundle(base.path, cache_dir=cache)  # the base bundle repairs its blob ...
    assert again.repaired == ("model.safetensors",) and not again.already_installed
    assert hashlib.sha256(shard.read_bytes()).hexdigest() == base.manifest.by_path()["model.safetensors"].sha256
    res = install_bundle(d.path, cache_dir=cache)  # ... and the delta then goes on top
    assert not res.already_installed and res.snapshot_dir.name == d.manifest.commit


def test_delta_from_a_manifest_and_as_parts(tmp_path: Path) -> None:
    folder = _v1(tmp_path / "model")
    base = pack_folder(folder, repo_id="org/tiny", out_dir=tmp_path / "bundles")
    manifest_json = tmp_path / "old.json"
    manifest_json.write_bytes(base.manifest.to_json())
    _to_v2(folder)
    d = pack_folder(folder, repo_id="org/tiny", out_dir=tmp_path / "bundles", since_manifest=manifest_json, max_part_size=1024)
    assert d.path.name.endswith(".parts.json") and len(parts.read_index(d.path).parts) > 1
    info = delta.delta_info(read_manifest(d.path))
    assert info.base.bundle is None and info.base.bundle_sha256 is None
    with pytest.raises(BaseNotInstalled) as err:
        install_bundle(d.path, cache_dir=tmp_path / "cache")
    assert "sha256 unknown" in str(err.value)
    install_bundle(base.path, cache_dir=tmp_path / "cache")
    res = install_bundle(d.path, cache_dir=tmp_path / "cache")
    assert _tree(res.snapshot_dir) == _tree(folder)


def test_base_of_another_repo_is_refused(tmp_path: Path) -> None:
    folder = _v1(tmp_path / "model")
    other = pack_folder(folder, repo_id="org/other", out_dir=tmp_path / "bundles")
    with pytest.raises(UsageError) as err:
        pack_folder(folder, repo_id="org/tiny", out_dir=tmp_path / "bundles", since=other.path)
    assert "org/other" in str(err.value) and "org/tiny" in str(err.value)
    with pytest.raises(UsageError):
        delta.load_base(since=other.path, since_manifest=tmp_path / "x.json")


def _entry(path: str, content: bytes, *, lfs: bool = False) -> FileEntry:
    return FileEntry(path=path, size=len(content), sha256=hashlib.sha256(content).hexdigest(), git_sha1=hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest(), lfs=lfs, kind="other")


def test_plan_and_remote_comparison() -> None:
    base = [_entry("a", b"1"), _entry("b", b"2"), _entry("c", b"3")]
    target = [_entry("a", b"1"), _entry("b", b"22"), _entry("d", b"4")]
    plan = delta.plan_delta(base, target)
    assert (plan.changed, plan.added, plan.removed, plan.unchanged) == (("b",), ("d",), ("c",), ("a",))
    assert plan.carried == ("b", "d")
    shard = _entry("w.safetensors", b"weights", lfs=True)
    # LFS files compare by sha256 (the tree's oid is the pointer's sha1); others by git blob sha1
    assert delta.unchanged_remote(shard, size=7, lfs_sha256=shard.sha256, git_oid="0" * 40)
    assert not delta.unchanged_remote(shard, size=7, lfs_sha256="f" * 64, git_oid=shard.git_sha1)
    assert delta.unchanged_remote(base[0], size=1, lfs_sha256=None, git_oid=base[0].git_sha1)
    assert not delta.unchanged_remote(base[0], size=2, lfs_sha256=None, git_oid=base[0].git_sha1)
    assert not delta.unchanged_remote(None, size=1, lfs_sha256=None, git_oid=base[0].git_sha1)


def test_tampered_delta_section_is_refused(base_and_delta) -> None:
    _, _, d = base_and_delta
    raw = json.loads(d.manifest.to_json())
    entry = next(f for f in raw["delta"]["target_files"] if f["path"] == "config.json")
    entry["sha256"] = "0" * 64  # payload and target list disagree about config.json
    with pytest.raises(ManifestError) as err:
        delta.delta_info(parse(json.dumps(raw).encode()))
    assert "config.json" in str(err.value)
    raw = json.loads(d.manifest.to_json())
    raw["delta"]["target_files"].append({**raw["delta"]["target_files"][0], "path": "../escape"})
    with pytest.raises(ManifestError):
        delta.delta_info(parse(json.dumps(raw).encode()))


def test_pull_since_downloads_and_carries_only_what_changed(tmp_path: Path) -> None:
    from mirror.hub import pull
    from tests.fixtures.fake_hub import FakeHub

    rng = random.Random(5)
    v1 = {
        "model.safetensors": rng.randbytes(120_000), "config.json": b'{"a": 1}\n',
        "README.md": b"---\nlicense: mit\n---\n# m\n", "old.txt": b"gone soon\n",
    }  # fmt: skip
    v2 = {k: v for k, v in v1.items() if k != "old.txt"} | {"config.json": b'{"a": 2}\n', "extra.json": b"{}\n"}
    with FakeHub() as hub:
        repo = hub.add_repo("org/pulled", v1)
        base = pull("org/pulled", out_dir=tmp_path / "b", endpoint=hub.url, progress=False)
        repo.commit(v2)
        d = pull("org/pulled", out_dir=tmp_path / "b", endpoint=hub.url, progress=False, since=base.path, max_part_size=4096)
        # unchanged files were recognised by the Hub's digests and never downloaded again
        assert hub.downloads("org/pulled", "model.safetensors") == 1
        assert hub.downloads("org/pulled", "README.md") == 1
        assert hub.downloads("org/pulled", "config.json") == 2
    assert d.path.name.endswith(".parts.json")
    assert d.manifest.commit == repo.head.sha and d.manifest.license == "mit"
    assert sorted(f.path for f in d.manifest.files) == ["config.json", "extra.json"]
    info = delta.delta_info(d.manifest)
    assert (info.base.commit, info.base.bundle_sha256, info.removed) == (base.manifest.commit, base.sha256, ("old.txt",))
    cache = tmp_path / "cache"
    install_bundle(base.path, cache_dir=cache)
    res = install_bundle(d.path, cache_dir=cache)
    got = {p: (res.snapshot_dir / p).read_bytes() for p in v2}
    assert got == v2 and not (res.snapshot_dir / "old.txt").exists()


def test_cli_delta_without_base_is_one_line(tmp_path: Path, base_and_delta) -> None:
    from click.testing import CliRunner

    from mirror.cli import cli

    _, base, d = base_and_delta
    r = CliRunner().invoke(cli, ["install", str(d.path), "--cache-dir", str(tmp_path / "cache")])
    assert r.exit_code == 8
    assert r.output.count("\n") == 1 and base.sha256 in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["inspect", str(d.path)])
    assert r.exit_code == 0 and f"delta:     on top of org/tiny@{base.manifest.commit[:12]}" in r.output
    assert "carries 2 of 5 target files; 1 removed" in r.output


def test_delta_since_a_multi_part_base_records_the_stream_sha256(tmp_path: Path) -> None:
    folder = _v1(tmp_path / "model")
    base = pack_folder(folder, repo_id="org/tiny", out_dir=tmp_path / "bundles", max_part_size=8192)
    index = parts.read_index(base.path)
    assert index.sha256 == base.sha256
    _to_v2(folder)
    for since in (base.path, base.path.parent / index.parts[0].name):  # the index or any part
        d = pack_folder(folder, repo_id="org/tiny", out_dir=tmp_path / "deltas", since=since)
        ref = delta.delta_info(d.manifest).base
        assert (ref.bundle, ref.bundle_sha256) == (index.bundle, base.sha256)
