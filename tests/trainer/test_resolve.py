"""model_id -> snapshot: local folder, installed cache, auto-installed bundle, or the exact fix."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from common.modelfacts import remote_code_reason
from mirror.bundle.write.driver import write_bundle
from trainer.errors import BundleRejected, ModelNotAvailable, RemoteCodeRefused
from trainer.offline import network_guard
from trainer.resolve import resolve_model

REPO = "acme/tiny-encoder"


def _model_folder(root: Path, *, hidden: int = 8, extra: dict[str, str] | None = None) -> Path:
    """A small folder shaped like a model repo (resolution never loads the weights)."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": hidden}))
    (root / "model.safetensors").write_bytes(bytes(range(256)) * hidden)
    (root / "tokenizer_config.json").write_text("{}")
    for name, text in (extra or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def _bundle(tmp_path: Path, *, created_at: str = "2026-01-01T00:00:00Z", repo_id: str = REPO, **folder):
    src = _model_folder(tmp_path / f"src-{created_at[:10]}-{repo_id.replace('/', '_')}", **folder)
    return write_bundle(
        src_root=src, repo_id=repo_id, revision="main", commit=None, source=f"local:{src.name}",
        created_at=created_at, license=None, out_dir=tmp_path / "bundles",
    )


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    c = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(c))
    return c


def test_a_local_folder_is_used_as_is(tmp_path, cache):
    folder = _model_folder(tmp_path / "my-model")
    m = resolve_model(str(folder), bundles_dir=tmp_path / "bundles")
    assert (m.source, m.path, m.commit, m.bundle_path, m.repo_id) == ("local", folder.resolve(), None, None, str(folder))


def test_bundle_is_verified_installed_then_found_in_the_cache(tmp_path, cache):
    info = _bundle(tmp_path)
    with network_guard():
        first = resolve_model(REPO, bundles_dir=tmp_path / "bundles")
    assert first.source == "bundle"
    assert first.commit == info.manifest.commit
    assert first.path == cache / "models--acme--tiny-encoder" / "snapshots" / info.manifest.commit
    assert first.bundle_path == info.path
    assert first.bundle_sha256 == info.sha256 == hashlib.sha256(info.path.read_bytes()).hexdigest()
    assert (first.path / "model.safetensors").read_bytes() == bytes(range(256)) * 8
    assert (first.path / "model.safetensors").is_symlink()  # the standard HF cache layout

    with network_guard():
        second = resolve_model(REPO, bundles_dir=tmp_path / "bundles")
    assert second.source == "cache"
    assert second.path == first.path
    # the bundle it came from is still recognised by its commit, so lineage keeps its sha256
    assert (second.bundle_path, second.bundle_sha256) == (info.path, info.sha256)


def test_a_cache_hit_names_the_installed_bundle_from_the_install_record_not_the_bundle(tmp_path, cache):
    info = _bundle(tmp_path)
    resolve_model(REPO, bundles_dir=tmp_path / "bundles")  # installs it, checking its sha256
    # other bytes under the bundle's name: hashing or even opening it would change the answer
    info.path.write_bytes(b"not the bundle" * 1000)
    m = resolve_model(REPO, bundles_dir=tmp_path / "bundles")
    assert (m.source, m.bundle_path, m.bundle_sha256, m.commit) == ("cache", info.path, info.sha256, info.manifest.commit)
    info.path.unlink()  # gone after install: the lineage still names the bundle that was installed
    m = resolve_model(REPO, bundles_dir=tmp_path / "bundles")
    assert (m.source, m.bundle_path.name, m.bundle_sha256) == ("cache", info.path.name, info.sha256)


def test_a_cache_hit_without_a_checked_bundle_sha256_and_without_the_bundle_records_no_bundle(tmp_path, cache):
    from mirror.install import install_bundle

    info = _bundle(tmp_path)
    info.path.with_name(info.path.name + ".sha256").unlink()  # no sidecar beside it: nothing makes the install hash the bundle
    install_bundle(info.path, bundle_sha256=False)  # as `mirror install` does: the sha256 not computed, not recorded
    info.path.unlink()
    m = resolve_model(REPO, bundles_dir=tmp_path / "bundles")
    assert (m.source, m.bundle_path, m.bundle_sha256, m.commit) == ("cache", None, None, info.manifest.commit)


def test_the_newest_bundle_of_the_repo_wins(tmp_path, cache):
    old = _bundle(tmp_path, created_at="2025-06-01T00:00:00Z", hidden=8)
    new = _bundle(tmp_path, created_at="2026-03-01T00:00:00Z", hidden=16)
    _bundle(tmp_path, created_at="2027-01-01T00:00:00Z", repo_id="acme/other")  # newer, other repo
    assert old.manifest.commit != new.manifest.commit
    m = resolve_model(REPO, bundles_dir=tmp_path / "bundles")
    assert (m.bundle_path, m.commit) == (new.path, new.manifest.commit)
    assert json.loads((m.path / "config.json").read_text())["hidden_size"] == 16


def test_missing_model_fails_with_the_exact_command(tmp_path, cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with network_guard(), pytest.raises(ModelNotAvailable) as info:
        resolve_model("Qwen/Qwen2.5-1.5B-Instruct", bundles_dir="bundles")
    assert str(info.value) == (
        "model Qwen/Qwen2.5-1.5B-Instruct is not available offline: on a connected host run "
        "'mirror pull Qwen/Qwen2.5-1.5B-Instruct', copy the bundle into bundles/ here"
    )
    assert info.value.exit_code == 3
    (tmp_path / "bundles").mkdir()
    with pytest.raises(ModelNotAvailable) as info:
        resolve_model("distilbert-base-uncased", bundles_dir=tmp_path / "bundles")
    assert str(info.value) == (
        "model distilbert-base-uncased is not available offline: on a connected host run "
        f"'mirror pull distilbert-base-uncased', copy the bundle into {tmp_path / 'bundles'}/ here"
    )


def test_unreadable_bundles_are_named_when_nothing_matches(tmp_path, cache):
    (tmp_path / "bundles").mkdir()
    (tmp_path / "bundles" / "junk.tar").write_bytes(b"not a tar" * 100)
    with pytest.raises(ModelNotAvailable, match=r"\(1 unreadable bundle\(s\) in .* skipped: junk.tar\)"):
        resolve_model(REPO, bundles_dir=tmp_path / "bundles")


def test_a_corrupt_bundle_is_refused_and_the_cache_left_untouched(tmp_path, cache):
    info = _bundle(tmp_path)
    raw = bytearray(info.path.read_bytes())
    at = raw.index(b'"hidden_size": 8')
    raw[at + len('"hidden_size": ')] = ord("9")  # same size, different bytes
    info.path.write_bytes(bytes(raw))
    with pytest.raises(BundleRejected) as e:
        resolve_model(REPO, bundles_dir=tmp_path / "bundles")
    msg = str(e.value)
    assert "\n" not in msg and str(info.path) in msg and "config.json" in msg
    assert e.value.exit_code == 4
    assert not (cache / "models--acme--tiny-encoder" / "snapshots").exists()


def test_remote_code_is_refused_unless_trusted(tmp_path, cache):
    folder = _model_folder(tmp_path / "custom", extra={"modeling_custom.py": "print('hi')\n"})
    assert remote_code_reason(folder) == "Python files in the repo: modeling_custom.py"
    with pytest.raises(RemoteCodeRefused, match=r"Python files in the repo: modeling_custom.py.*trust_remote_code: true"):
        resolve_model(str(folder))
    assert resolve_model(str(folder), trust_remote_code=True).source == "local"

    mapped = _model_folder(tmp_path / "mapped")
    (mapped / "config.json").write_text(json.dumps({"auto_map": {"AutoModel": "acme/code--modeling.Model"}}))
    assert remote_code_reason(mapped) == "config.json has auto_map (custom model classes)"


def test_remote_code_in_a_bundle_is_refused_after_install(tmp_path, cache):
    _bundle(tmp_path, extra={"sub/modeling_x.py": "x = 1\n"})
    with pytest.raises(RemoteCodeRefused, match="sub/modeling_x.py"):
        resolve_model(REPO, bundles_dir=tmp_path / "bundles")


def test_a_multi_part_bundle_resolves_through_its_index(tmp_path, cache):
    from mirror.pack import pack_folder

    src = _model_folder(tmp_path / "src", hidden=16)
    info = pack_folder(src, repo_id=REPO, revision="main", out_dir=tmp_path / "bundles", max_part_size=1024)
    assert info.path.name.endswith(".tar.parts.json")
    assert len(list((tmp_path / "bundles").glob("*.tar.part0*"))) >= 4
    m = resolve_model(REPO, bundles_dir=tmp_path / "bundles")
    assert (m.source, m.bundle_path, m.bundle_sha256) == ("bundle", info.path, info.sha256)
    assert (m.path / "model.safetensors").read_bytes() == bytes(range(256)) * 16
    again = resolve_model(REPO, bundles_dir=tmp_path / "bundles")
    assert (again.source, again.bundle_path, again.bundle_sha256) == ("cache", info.path, info.sha256)


def test_a_delta_bundle_installs_its_base_first(tmp_path, cache):
    import os

    from mirror.pack import pack_folder

    src = _model_folder(tmp_path / "src")
    for f in src.iterdir():
        os.utime(f, (1_700_000_000, 1_700_000_000))
    base = pack_folder(src, repo_id=REPO, revision="main", out_dir=tmp_path / "bundles")
    (src / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8, "fine_tuned": True}))
    os.utime(src / "config.json", (1_800_000_000, 1_800_000_000))
    delta = pack_folder(src, repo_id=REPO, revision="main", out_dir=tmp_path / "bundles", since=base.path)
    assert [f.path for f in delta.manifest.files] == ["config.json"]  # only the change travels
    m = resolve_model(REPO, bundles_dir=tmp_path / "bundles")
    assert (m.source, m.commit, m.bundle_path) == ("bundle", delta.manifest.commit, delta.path)
    assert json.loads((m.path / "config.json").read_text())["fine_tuned"] is True
    assert (m.path / "model.safetensors").read_bytes() == bytes(range(256)) * 8  # from the base
    assert (cache / "models--acme--tiny-encoder" / "snapshots" / base.manifest.commit).is_dir()


def test_a_bundle_with_pickle_weights_is_refused_by_the_install_policy(tmp_path, cache):
    info = _bundle(tmp_path, extra={"pytorch_model.bin": "not really a pickle"})
    with pytest.raises(BundleRejected) as e:
        resolve_model(REPO, bundles_dir=tmp_path / "bundles")
    assert str(info.path) in str(e.value) and "pytorch_model.bin" in str(e.value)
    assert e.value.exit_code == 6  # the mirror policy error's code is kept
    assert not (cache / "models--acme--tiny-encoder" / "snapshots").exists()
