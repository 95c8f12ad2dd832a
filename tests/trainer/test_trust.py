"""What the trainer installs from a bundles folder, through the CLI: only bundles signed by a
trusted key when keys are given (--public-key, the config's public_keys, $MIRROR_TRUSTED_KEYS), and
a hostile or unreadable bundle in the folder never takes down a run for another model."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

import mirror.install
import trainer.recipes
from mirror.bundle.write.driver import write_bundle
from mirror.errors import SignatureError
from mirror.manifest import MANIFEST_NAME
from tests.trainer.clitools import error_line
from trainer.recipes import RunResult

REPO = "acme/enc"
UNTRUSTED_NOTE = "(the model was not installed; the trusted keys are --public-key, the config's public_keys and $MIRROR_TRUSTED_KEYS)"


def _bundle(tmp_path: Path, *, repo_id: str = REPO) -> Path:
    src = tmp_path / f"src-{repo_id.replace('/', '_')}"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    (src / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    info = write_bundle(
        src_root=src, repo_id=repo_id, revision="main", commit=None, source="local:src",
        created_at="2026-01-01T00:00:00Z", license=None, out_dir=tmp_path / "bundles",
    )
    return info.path


def _snapshots(cache: Path, repo_id: str = REPO) -> list[str]:
    folder = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.fixture
def fake_recipe(monkeypatch):
    """trainer.recipes.run replaced: a run that got past model resolution records the model."""
    seen = {}

    def run(cfg, *, model, resume):
        seen["model"] = model
        return RunResult(output_dir=Path(cfg.output_dir), metrics={}, wall_time_s=0.0)

    monkeypatch.setattr(trainer.recipes, "run", run)
    return seen


# --- signature-pinned auto-install ------------------------------------------------------------------


def test_keys_from_the_flags_and_the_config_reach_install(tmp_path, trainer_cli, config_file, monkeypatch):
    """Plumbing: --public-key (as given) then public_keys (against the config's folder); mirror's
    SignatureError becomes one line naming the bundle, exit 5."""
    bundle = _bundle(tmp_path)
    for key in ("a.pub", "b.pub", "conf/keys/c.pub"):
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_text("PEM")
    calls = []

    def install_bundle(path, *, cache_dir=None, public_keys=(), **kw):
        calls.append((Path(path), list(public_keys)))
        raise SignatureError(str(path), "signature required and not valid: the bundle is not signed", fix="sign it with 'mirror sign BUNDLE --key KEY.pem' on the publishing host")

    monkeypatch.setattr(mirror.install, "install_bundle", install_bundle)
    monkeypatch.chdir(tmp_path)
    cfg = config_file(name="conf/cfg.yaml", model_id=REPO, public_keys=["keys/c.pub"])
    refusal = (
        f"{Path('bundles') / bundle.name}: signature required and not valid: the bundle is not signed; "
        f"sign it with 'mirror sign BUNDLE --key KEY.pem' on the publishing host {UNTRUSTED_NOTE}"
    )

    r = trainer_cli("run", cfg, "--public-key", "a.pub", "--public-key", "b.pub")
    assert (r.exit_code, error_line(r)) == (5, refusal)
    r = trainer_cli("check", cfg, "--public-key", "a.pub", "--public-key", "b.pub")
    assert r.exit_code == 5
    assert f"  - {refusal}\n" in r.stdout
    assert calls == [(Path("bundles") / bundle.name, ["a.pub", "b.pub", str(tmp_path / "conf" / "keys" / "c.pub")])] * 2


@pytest.mark.parametrize("make, what", [
    (lambda p: None, "{key}: file not found; pass the path of a PEM public key (--public-key or public_keys)"),
    (lambda p: p.mkdir(), "{key} is a directory, not a regular file; pass the path of a PEM public key file"),
    (os.mkfifo, "{key} is a FIFO (named pipe), not a regular file; pass the path of a PEM public key file"),
])
@pytest.mark.parametrize("where", ["flag", "config"])
def test_a_key_that_is_not_a_file_fails_at_once(tmp_path, trainer_cli, config_file, make, what, where):
    key = tmp_path / "release.pub"
    make(key)
    cfg = config_file(public_keys=[str(key)] if where == "config" else None)
    args = ["--public-key", key] if where == "flag" else []
    for command in ("run", "check"):
        r = trainer_cli(command, cfg, *args, timeout=30)
        assert (r.exit_code, error_line(r)) == (2, "public key " + what.format(key=key))


@pytest.fixture
def keys(tmp_path) -> dict[str, Path]:
    from mirror.signing import keygen, signing_stack_available

    if not signing_stack_available():
        pytest.skip("the signing stack (cryptography, model-signing) is not installed")
    (tmp_path / "keys").mkdir()
    out = {}
    for name in ("release", "other"):
        private, public = keygen(tmp_path / "keys" / name)
        out[name], out[f"{name}.pub"] = private, public
    return out


def test_only_a_bundle_signed_by_a_trusted_key_is_installed(tmp_path, trainer_cli, config_file, keys, hf_isolated, local_model):
    from mirror.signing import sign_bundle

    bundle = _bundle(tmp_path)
    sign_bundle(bundle, key_path=keys["release"])
    cfg = config_file(model_id=REPO)

    r = trainer_cli("check", cfg, "--bundles", bundle.parent, "--public-key", keys["other.pub"])
    assert r.exit_code == 5, r.output
    assert f"  - {bundle}: " in r.stdout and UNTRUSTED_NOTE in r.stdout
    assert _snapshots(hf_isolated) == []

    trusted = config_file(name="conf/trusted.yaml", model_id=REPO, public_keys=["../keys/release.pub"])  # against conf/
    r = trainer_cli("check", trusted, "--bundles", bundle.parent)
    assert r.exit_code == 0, r.output
    assert "verified its bundle and installed it into the HF cache at" in r.stdout
    assert len(_snapshots(hf_isolated)) == 1


def test_site_policy_makes_a_signature_mandatory_for_auto_install(tmp_path, trainer_cli, config_file, keys, hf_isolated, monkeypatch, fake_recipe):
    bundle = _bundle(tmp_path)  # unsigned
    monkeypatch.setenv("MIRROR_TRUSTED_KEYS", str(keys["release.pub"]))
    r = trainer_cli("run", config_file(model_id=REPO), "--bundles", bundle.parent)
    assert r.exit_code == 5
    line = error_line(r)
    assert line.startswith(f"{bundle}: ") and line.endswith(UNTRUSTED_NOTE)
    assert _snapshots(hf_isolated) == [] and "model" not in fake_recipe

    from mirror.signing import sign_bundle

    sign_bundle(bundle, key_path=keys["release"])
    r = trainer_cli("run", config_file(model_id=REPO), "--bundles", bundle.parent)
    assert r.exit_code == 0, r.output
    assert fake_recipe["model"].source == "bundle" and fake_recipe["model"].bundle_path == bundle


# --- a hostile bundles folder --------------------------------------------------------------------


def _tar(path: Path, manifest: bytes) -> None:
    """A tar whose first member is a manifest with these bytes, as a bundle's would be."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo(MANIFEST_NAME)
        info.size = len(manifest)
        tf.addfile(info, io.BytesIO(manifest))


def _hostile_folder(bundles: Path) -> list[str]:
    """Every kind of unreadable entry a shared bundles folder might hold; returns their names."""
    bundles.mkdir(exist_ok=True)
    _tar(bundles / "big-int.tar", b'{"format_version": ' + b"1" * 5000 + b"}")
    _tar(bundles / "deep.tar", b"[" * 200_000 + b"]" * 200_000)
    _tar(bundles / "not-json.tar", b"\xff\xfe garbage")
    (bundles / "garbage.tar").write_bytes(os.urandom(4096))
    (bundles / "empty.tar").write_bytes(b"")
    os.mkfifo(bundles / "x.tar")
    (bundles / "y.tar").mkdir()
    os.mkfifo(bundles / "z.tar.parts.json")
    (bundles / "zero.tar").symlink_to("/dev/zero")
    (bundles / "dangling.tar").symlink_to(bundles / "nowhere")
    return sorted(p.name for p in bundles.iterdir())


@pytest.mark.parametrize("command", ["check", "run"])
def test_hostile_bundles_do_not_stop_an_unrelated_model(tmp_path, trainer_cli, config_file, hf_isolated, fake_recipe, command):
    bundle = _bundle(tmp_path)
    assert len(_hostile_folder(bundle.parent)) == 12  # with the good bundle and its .sha256
    r = trainer_cli(command, config_file(model_id=REPO), "--bundles", bundle.parent, timeout=60)
    assert r.exit_code == 0, r.output
    assert len(_snapshots(hf_isolated)) == 1
    if command == "check":
        assert f"model   {REPO}: verified its bundle and installed it into the HF cache at" in r.stdout
    else:
        assert fake_recipe["model"].bundle_path == bundle


def test_with_only_hostile_bundles_the_model_is_not_available_and_they_are_counted(tmp_path, trainer_cli, config_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _hostile_folder(tmp_path / "bundles")
    r = trainer_cli("run", config_file(model_id=REPO), timeout=60)
    assert r.exit_code == 3
    assert error_line(r).startswith(f"model {REPO} is not available offline (10 unreadable bundle(s) in bundles/ skipped: ")


@pytest.mark.parametrize("make", [
    lambda p: p.write_bytes(os.urandom(4096)),
    lambda p: _tar(p, b'{"format_version": ' + b"1" * 5000 + b"}"),
    lambda p: _tar(p, b"[" * 200_000 + b"]" * 200_000),
    os.mkfifo,
    lambda p: p.mkdir(),
], ids=["garbage", "big-int", "deep", "fifo", "directory"])
@pytest.mark.parametrize("command", ["check", "run"])
def test_an_unreadable_bundle_named_for_the_model_is_reported_in_one_line(tmp_path, trainer_cli, config_file, monkeypatch, make, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bundles").mkdir()
    bad = Path("bundles") / "acme--enc--0123456789ab.tar"
    make(bad)
    _bundle(tmp_path, repo_id="acme/other")  # a good bundle of another model changes nothing
    r = trainer_cli(command, config_file(model_id=REPO), timeout=60)
    note = f" (it is named as a bundle of {REPO}; replace it with a good copy)"
    if command == "run":
        line = error_line(r)
    else:
        assert error_line(r) == "check found 1 error(s), listed above; fix them and run 'trainer check' again"
        [line] = [m[4:] for m in r.stdout.splitlines() if m.startswith(f"  - {bad}")]
    assert r.exit_code != 0
    assert line.startswith(f"{bad}: ") and line.endswith(note) and len(line) < 500, line
