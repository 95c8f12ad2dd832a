"""The site policy on models already in the HF cache, as `trainer check`, `run` and `serve` load
them: a snapshot is judged by its install record (the bundle identity and the key whose signature
its install checked), a record that cannot tell is settled by re-checking the bundle, and a
snapshot that no longer matches its record is refused. Approvals are required the same way."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mirror import hfcache
from mirror.identity import read_bundle_id
from tests.trainer.clitools import error_line
from tests.trainer.test_trust import fake_recipe  # noqa: F401 (a fixture: a run that records the model it got)

REPO = "acme/enc"
pytestmark = pytest.mark.usefixtures("hf_isolated")


@pytest.fixture
def keys(tmp_path) -> dict[str, Path]:
    from mirror.signing import keygen

    (tmp_path / "keys").mkdir()
    out = {}
    for name in ("release", "other", "security"):
        out[name], out[f"{name}.pub"] = keygen(tmp_path / "keys" / name)
    return out


def _bundle(tmp_path: Path, *, size: int = 2048) -> Path:
    from mirror.bundle.write.driver import write_bundle

    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    (src / "model.safetensors").write_bytes(bytes(range(256)) * (size // 256))
    return write_bundle(src_root=src, repo_id=REPO, revision="main", commit=None, source="local:src",
                        created_at="2026-01-01T00:00:00Z", license=None, out_dir=tmp_path / "bundles").path


def _install(bundle: Path, *keys: Path) -> None:
    from mirror.install import install_bundle

    install_bundle(bundle, public_keys=list(keys), bundle_sha256=False)


def _serve(trainer_cli, *args):
    """`trainer serve` up to where it resolves its models (a refusal comes before anything loads)."""
    return trainer_cli("serve", REPO, "--port", "0", *args, timeout=60)


def test_a_base_signed_by_another_key_is_refused_by_check_run_and_serve(tmp_path, trainer_cli, config_file, keys, fake_recipe):
    from mirror.signing import sign_bundle

    bundle = _bundle(tmp_path)
    sign_bundle(bundle, key_path=keys["other"])
    _install(bundle, keys["other.pub"])  # installed and recorded as signed by `other`
    bundle.unlink()  # nothing left to re-check: the record decides
    cfg = config_file(model_id=REPO)
    for command in ("check", "run"):
        r = trainer_cli(command, cfg, "--bundles", tmp_path / "bundles", "--public-key", keys["release.pub"])
        assert r.exit_code == 5, r.output
        text = r.stdout if command == "check" else error_line(r)
        assert "signed by key sha256:" in text and "not by any of the 1 required key(s)" in text, text
    assert "model" not in fake_recipe
    r = _serve(trainer_cli, "--bundles", tmp_path / "bundles", "--public-key", keys["release.pub"])
    assert r.exit_code == 5 and "not by any of the 1 required key(s)" in error_line(r), r.output
    # the same base under the key it was signed by: accepted, from the record alone
    r = trainer_cli("run", cfg, "--bundles", tmp_path / "bundles", "--public-key", keys["other.pub"])
    assert r.exit_code == 0, r.output
    assert fake_recipe["model"].source == "cache" and fake_recipe["model"].signer is not None


def test_an_unsigned_base_installed_earlier_is_refused_under_the_site_keys_until_its_bundle_checks(tmp_path, trainer_cli, config_file, keys, monkeypatch, fake_recipe):
    """What `trainer serve` or `check` installed without a key is not trusted later because it is
    in the cache: with $MIRROR_TRUSTED_KEYS the bundle is checked again (and then recorded)."""
    bundle = _bundle(tmp_path)
    cfg = config_file(model_id=REPO)
    assert trainer_cli("check", cfg, "--bundles", tmp_path / "bundles").exit_code == 0  # installed, no key asked for
    monkeypatch.setenv("MIRROR_TRUSTED_KEYS", str(keys["release.pub"]))
    r = trainer_cli("run", cfg, "--bundles", tmp_path / "bundles")
    assert r.exit_code == 5, r.output
    assert "model" not in fake_recipe and "the bundle is not signed" in error_line(r)
    r = _serve(trainer_cli, "--bundles", tmp_path / "bundles")
    assert r.exit_code == 5 and "the bundle is not signed" in error_line(r), r.output

    from mirror.signing import sign_bundle

    sign_bundle(bundle, key_path=keys["release"])
    r = trainer_cli("run", cfg, "--bundles", tmp_path / "bundles")
    assert r.exit_code == 0, r.output
    model = fake_recipe["model"]
    assert model.source == "cache" and model.bundle_id == read_bundle_id(bundle)
    from mirror.signing import key_fingerprint

    assert model.signer == key_fingerprint(keys["release.pub"])
    bundle.unlink()  # recorded now: the next load needs no bundle
    r = trainer_cli("check", cfg, "--bundles", tmp_path / "bundles")
    assert r.exit_code == 0 and f"signed by key sha256:{model.signer} (required)" in r.stdout, r.output


def test_without_a_record_or_a_bundle_the_model_is_refused_when_keys_are_required(tmp_path, trainer_cli, config_file, keys, hf_isolated):
    bundle = _bundle(tmp_path)
    _install(bundle)
    (hf_isolated / "models--acme--enc" / ".mirror").rename(tmp_path / "record")  # as snapshot_download leaves it
    bundle.unlink()
    r = trainer_cli("check", config_file(model_id=REPO), "--bundles", tmp_path / "bundles", "--public-key", keys["release.pub"])
    assert r.exit_code == 5, r.output
    assert "it was not installed by mirror (no install record), and no bundle of commit" in r.stdout


def test_a_plain_folder_is_refused_while_keys_are_required(tmp_path, trainer_cli, config_file, keys, local_model):
    r = trainer_cli("check", config_file(model_id=str(local_model)), "--public-key", keys["release.pub"])
    assert r.exit_code == 5 and "a plain folder carries no signature" in r.stdout, r.output


# --- the snapshot against its install record -------------------------------------------------------


def _snapshot(cache: Path) -> Path:
    return next((cache / "models--acme--enc" / "snapshots").iterdir())


def test_a_snapshot_changed_since_its_install_is_refused(tmp_path, trainer_cli, config_file, hf_isolated, fake_recipe):
    bundle = _bundle(tmp_path)
    _install(bundle)
    cfg = config_file(model_id=REPO)
    assert trainer_cli("run", cfg, "--bundles", tmp_path / "bundles").exit_code == 0
    config = _snapshot(hf_isolated) / "config.json"
    blob = config.resolve()
    original = blob.read_bytes()
    blob.write_bytes(original.replace(b'"hidden_size": 8', b'"hidden_size": 9'))  # same size, other bytes
    r = trainer_cli("run", cfg, "--bundles", tmp_path / "bundles", "--overwrite")
    assert r.exit_code == 4, r.output
    line = error_line(r)
    assert "the snapshot no longer matches its install record: config.json: its sha256 is" in line and "\n" not in line
    blob.write_bytes(original)
    # a link swapped for another file
    config.unlink()
    config.write_bytes(original + b" ")
    r = trainer_cli("check", cfg, "--bundles", tmp_path / "bundles")
    assert r.exit_code == 4 and "config.json" in r.stdout, r.output
    config.unlink()
    config.symlink_to(os.path.relpath(blob, config.parent))
    (config.parent / "extra.py").write_text("print('hi')\n")
    r = trainer_cli("check", cfg, "--bundles", tmp_path / "bundles")
    assert r.exit_code == 4 and "extra.py is in the snapshot but not in its install record" in r.stdout, r.output


def test_a_large_blob_is_hashed_only_when_its_stamp_changed(tmp_path, hf_isolated, monkeypatch):
    """Weights are not re-hashed on every load: the stamp recorded at install (inode, size, mtime,
    ctime) stands for the bytes; a write in place changes ctime, so the blob is hashed again."""
    from mirror import hashing
    from mirror.errors import SnapshotChanged
    from mirror.install import check_snapshot

    monkeypatch.setattr(hfcache, "SMALL_BLOB", 1024)  # model.safetensors (8 KiB) counts as large here
    bundle = _bundle(tmp_path, size=8192)
    _install(bundle)
    commit = _snapshot(hf_isolated).name
    hashed: list[int] = []
    real = hashing.hash_files
    monkeypatch.setattr(hashing, "hash_files", lambda items, **kw: (hashed.append(len(list(items))), real(items, **kw))[1])
    check_snapshot(REPO, commit)
    assert hashed == [1]  # config.json only
    weights = (_snapshot(hf_isolated) / "model.safetensors").resolve()
    st = weights.stat()
    with open(weights, "r+b") as f:  # one byte changed in place, mtime put back: ctime still moves
        f.seek(4000)
        f.write(b"\xff")
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(SnapshotChanged, match="model.safetensors: its sha256 is"):
        check_snapshot(REPO, commit)
    with open(weights, "r+b") as f:
        f.seek(4000)
        f.write(bytes([4000 % 256]))
    hashed.clear()
    check_snapshot(REPO, commit)  # same bytes again: hashed once, its new stamp remembered
    check_snapshot(REPO, commit)
    assert hashed == [2, 1]


# --- identity in lineage ------------------------------------------------------------------------------


def test_a_re_signed_bundle_keeps_its_identity_in_lineage(tmp_path, keys, hf_isolated, monkeypatch):
    from mirror.signing import sign_bundle
    from trainer import config as config_mod
    from trainer import lineage
    from trainer.resolve import resolve_model

    bundle = _bundle(tmp_path)
    identity = read_bundle_id(bundle)
    first = resolve_model(REPO, bundles_dir=tmp_path / "bundles")
    sha_before = first.bundle_sha256
    sign_bundle(bundle, key_path=keys["release"])
    sign_bundle(bundle, key_path=keys["other"])  # re-signed: the file's sha256 moved twice
    later = resolve_model(REPO, bundles_dir=tmp_path / "bundles")
    fresh = resolve_model(REPO, bundles_dir=tmp_path / "bundles", cache_dir=tmp_path / "other-cache", public_keys=[str(keys["other.pub"])])
    assert first.bundle_id == later.bundle_id == fresh.bundle_id == identity
    assert fresh.bundle_sha256 != sha_before
    train = tmp_path / "t.jsonl"
    train.write_text('{"text": "a", "label": "x"}\n')
    cfg = config_mod.from_dict({"model_id": REPO, "output_dir": str(tmp_path / "o"), "train_file": str(train), "labels": ["x", "y"]})
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    for m in (first, later, fresh):
        rec = lineage.build(cfg, m, started=now, ended=now, wall_time_s=0.0)
        assert rec["base_model"]["bundle_id"] == identity


# --- approvals --------------------------------------------------------------------------------------


def test_an_approval_file_is_required_and_honoured(tmp_path, trainer_cli, config_file, keys, monkeypatch, fake_recipe):
    from mirror.approval import write_approval

    bundle = _bundle(tmp_path)
    cfg = config_file(model_id=REPO)
    assert trainer_cli("check", cfg, "--bundles", tmp_path / "bundles").exit_code == 0  # installed before the host opted in
    other = tmp_path / "other.tar"
    other_src = tmp_path / "osrc"
    other_src.mkdir()
    (other_src / "config.json").write_text("{}")
    from mirror.bundle.write.driver import write_bundle

    unrelated = write_bundle(src_root=other_src, repo_id="acme/other", revision="main", commit=None, source="local:o",
                             created_at="2026-01-01T00:00:00Z", license=None, out_dir=tmp_path / "elsewhere").path
    decisions = tmp_path / "approvals"
    decisions.mkdir()
    write_approval([unrelated], reviewer="sec@acme", decision="approved", key_path=keys["security"], out=decisions / "a.json", date="2026-02-01")
    monkeypatch.setenv("MIRROR_APPROVALS", str(decisions / "a.json"))
    monkeypatch.setenv("MIRROR_APPROVAL_KEYS", str(keys["security.pub"]))
    r = trainer_cli("run", cfg, "--bundles", tmp_path / "bundles")
    assert r.exit_code == 6, r.output
    assert f"is in none of the 1 approval file(s)" in error_line(r) and "model" not in fake_recipe
    r = _serve(trainer_cli, "--bundles", tmp_path / "bundles")
    assert r.exit_code == 6, r.output

    write_approval([bundle], reviewer="sec@acme", decision="approved", key_path=keys["security"], out=decisions / "b.json", date="2026-02-02")
    monkeypatch.setenv("MIRROR_APPROVALS", os.pathsep.join([str(decisions / "a.json"), str(decisions / "b.json")]))
    r = trainer_cli("run", cfg, "--bundles", tmp_path / "bundles")
    assert r.exit_code == 0, r.output
    assert fake_recipe["model"].bundle_id == read_bundle_id(bundle)

    write_approval([bundle], reviewer="sec@acme", decision="rejected", key_path=keys["security"], out=decisions / "c.json", date="2026-02-03", note="CVE")
    monkeypatch.setenv("MIRROR_APPROVALS", os.pathsep.join(str(decisions / n) for n in ("a.json", "b.json", "c.json")))
    r = trainer_cli("check", cfg, "--bundles", tmp_path / "bundles")
    assert r.exit_code == 6 and "was rejected by sec@acme" in r.stdout, r.output


def test_an_unapproved_bundle_is_not_auto_installed(tmp_path, trainer_cli, config_file, keys, monkeypatch, hf_isolated):
    from mirror.approval import write_approval

    bundle = _bundle(tmp_path)
    (tmp_path / "ap").mkdir()
    write_approval([bundle], reviewer="sec", decision="rejected", key_path=keys["security"], out=tmp_path / "ap" / "r.json")
    monkeypatch.setenv("MIRROR_APPROVALS", str(tmp_path / "ap" / "r.json"))
    monkeypatch.setenv("MIRROR_APPROVAL_KEYS", str(keys["security.pub"]))
    r = trainer_cli("check", config_file(model_id=REPO), "--bundles", tmp_path / "bundles")
    assert r.exit_code == 6 and "was rejected by sec" in r.stdout, r.output
    assert not (hf_isolated / "models--acme--enc" / "snapshots").exists()  # refused before anything was written


def test_trainer_serve_refuses_a_run_folder_while_keys_are_required(tmp_path, trainer_cli, keys, local_model, monkeypatch):
    monkeypatch.setenv("MIRROR_TRUSTED_KEYS", str(keys["release.pub"]))
    r = trainer_cli("serve", local_model, "--port", "0", timeout=60)
    assert r.exit_code == 5 and "a plain folder carries no signature" in error_line(r), r.output
