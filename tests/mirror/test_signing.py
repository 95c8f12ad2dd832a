"""Signatures: keygen, sign, verify (right key, wrong key, tampered), and the upstream
`model_signing verify key` CLI accepting an installed snapshot."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mirror.identity import read_bundle_id
from mirror.bundle.codec import BundleReader, append_trailer, read_manifest
from mirror.errors import SignatureError, UsageError
from mirror.install import install_bundle
from mirror.pack import pack_folder
from mirror.signing import (
    SIGNATURE_MEMBER,
    keygen,
    read_signature,
    require_valid,
    sign_bundle,
    verify_signature,
    verify_snapshot,
)
from mirror.verify import verify_bundle

MODEL_SIGNING = Path(sys.executable).with_name("model_signing")


def _folder(root: Path, *, weights: bytes = b"\x01\x02" * 700) -> Path:
    (root / "1_Pooling").mkdir(parents=True)
    (root / "config.json").write_text('{"hidden_size": 8}\n')
    (root / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}\n')
    (root / "model.safetensors").write_bytes(weights)
    (root / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    (root / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny\n")
    return root


@pytest.fixture
def bundle(tmp_path) -> Path:
    return pack_folder(_folder(tmp_path / "model"), repo_id="org/tiny", out_dir=tmp_path / "bundles").path


@pytest.fixture
def keys(tmp_path) -> tuple[Path, Path]:
    (tmp_path / "keys").mkdir()
    return keygen(tmp_path / "keys" / "signer")


def _der_fingerprint_openssl(pub: Path) -> str:
    der = subprocess.run(["openssl", "pkey", "-pubin", "-in", str(pub), "-outform", "DER"], check=True, capture_output=True).stdout
    return hashlib.sha256(der).hexdigest()


def test_keygen_writes_p256_pem_with_private_mode_0600(tmp_path):
    priv, pub = keygen(tmp_path / "k")
    assert (priv.name, pub.name) == ("k.pem", "k.pub")
    assert priv.stat().st_mode & 0o777 == 0o600
    assert priv.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    text = subprocess.run(["openssl", "pkey", "-in", str(priv), "-noout", "-text"], check=True, capture_output=True, text=True).stdout
    assert "prime256v1" in text
    with pytest.raises(UsageError, match="refusing to overwrite"):
        keygen(tmp_path / "k")
    assert not list(tmp_path.glob("*.partial"))


def test_sign_then_verify_with_the_right_key(bundle, keys):
    priv, pub = keys
    manifest_before = read_manifest(bundle)
    head_before = bundle.read_bytes()[:4096]
    assert verify_signature(bundle).present is False

    sha_before = hashlib.sha256(bundle.read_bytes()).hexdigest()
    signed = sign_bundle(bundle, key_path=priv)
    status = signed.status
    assert status.present and status.valid is None  # signed; not checked without a public key
    # what changed: the file's sha256 (said, and in the sidecar), never the identity
    assert signed.new_sha256 == hashlib.sha256(bundle.read_bytes()).hexdigest() != sha_before
    assert signed.bundle_id == read_bundle_id(bundle) and signed.replaced_signer is None
    assert status.key_fingerprint == _der_fingerprint_openssl(pub)

    checked = verify_signature(bundle, public_key_path=pub)
    assert checked.valid is True
    assert checked.key_fingerprint == _der_fingerprint_openssl(pub)
    # the manifest and payload are untouched and the bundle still verifies; the sidecar follows
    assert read_manifest(bundle) == manifest_before
    assert bundle.read_bytes()[:4096] == head_before
    report = verify_bundle(bundle)
    assert report.ok, report.lines()
    sidecar = bundle.with_name(bundle.name + ".sha256").read_text()
    assert sidecar == f"{hashlib.sha256(bundle.read_bytes()).hexdigest()}  {bundle.name}\n"


def test_signature_payload_lists_every_file_and_binds_the_manifest(bundle, keys):
    priv, _ = keys
    sign_bundle(bundle, key_path=priv)
    sig = json.loads(read_signature(bundle))
    assert sig["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    statement = json.loads(base64.b64decode(sig["dsseEnvelope"]["payload"]))
    assert statement["predicateType"] == "https://model_signing/signature/v1.0"
    m = read_manifest(bundle)
    resources = {r["name"]: r["digest"] for r in statement["predicate"]["resources"]}
    # every file but the git metadata model_signing ignores by default
    assert resources == {f.path: f.sha256 for f in m.files if f.path != ".gitattributes"}
    claims = statement["predicate"]["mirror"]
    assert claims["repo_id"] == "org/tiny" and claims["commit"] == m.commit
    with BundleReader(bundle, hash_all=False) as r:  # the member's bytes, as stored
        assert claims["manifest_sha256"] == hashlib.sha256(r.manifest_bytes).hexdigest()


def test_resigning_replaces_the_signature(bundle, keys, tmp_path):
    priv, pub = keys
    other_priv, other_pub = keygen(tmp_path / "keys" / "other")
    sign_bundle(bundle, key_path=priv)
    sign_bundle(bundle, key_path=other_priv)
    assert verify_signature(bundle, public_key_path=other_pub).valid is True
    assert verify_signature(bundle, public_key_path=pub).valid is False
    names = subprocess.run(["tar", "tf", str(bundle)], check=True, capture_output=True, text=True).stdout.split()
    assert names.count(SIGNATURE_MEMBER) == 1 and names[-1] == SIGNATURE_MEMBER


def test_wrong_key_and_missing_signature_fail(bundle, keys, tmp_path):
    priv, _ = keys
    with pytest.raises(SignatureError, match="not signed") as e:
        require_valid(verify_signature(bundle, public_key_path=keys[1]), bundle=str(bundle))
    assert e.value.exit_code == 5
    sign_bundle(bundle, key_path=priv)
    _, stranger = keygen(tmp_path / "keys" / "stranger")
    status = verify_signature(bundle, public_key_path=stranger)
    assert status.valid is False
    assert status.reason == f"signed by key sha256:{_der_fingerprint_openssl(keys[1])}, not by the given key sha256:{_der_fingerprint_openssl(stranger)}"
    assert status.key_fingerprint == _der_fingerprint_openssl(stranger)
    with pytest.raises(SignatureError) as e:
        require_valid(status, bundle=str(bundle))
    assert "\n" not in str(e.value)


def _rewrite_signature(bundle: Path, edit) -> None:
    sig = json.loads(read_signature(bundle))
    edit(sig)
    append_trailer(bundle, SIGNATURE_MEMBER, json.dumps(sig).encode())


def test_forged_payload_fails(bundle, keys):
    priv, pub = keys
    sign_bundle(bundle, key_path=priv)

    def forge(sig):  # claim another commit, keep the original signature bytes
        statement = json.loads(base64.b64decode(sig["dsseEnvelope"]["payload"]))
        statement["predicate"]["mirror"]["commit"] = "f" * 40
        sig["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()

    _rewrite_signature(bundle, forge)
    status = verify_signature(bundle, public_key_path=pub)
    assert status.valid is False and "does not match its payload" in status.reason


def test_corrupt_signature_bytes_fail(bundle, keys):
    priv, pub = keys
    sign_bundle(bundle, key_path=priv)

    def flip(sig):
        raw = bytearray(base64.b64decode(sig["dsseEnvelope"]["signatures"][0]["sig"]))
        raw[-1] ^= 0x01
        sig["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()

    _rewrite_signature(bundle, flip)
    assert verify_signature(bundle, public_key_path=pub).valid is False
    append_trailer(bundle, SIGNATURE_MEMBER, b"{not json")
    status = verify_signature(bundle, public_key_path=pub)
    assert status.present and status.valid is False and "not a readable model-signing bundle" in status.reason


def test_signature_transplanted_to_another_bundle_fails(tmp_path, keys):
    priv, pub = keys
    a = pack_folder(_folder(tmp_path / "a"), repo_id="org/tiny", out_dir=tmp_path / "out").path
    b = pack_folder(_folder(tmp_path / "b", weights=b"\x09" * 1400), repo_id="org/tiny", out_dir=tmp_path / "out").path
    sign_bundle(a, key_path=priv)
    append_trailer(b, SIGNATURE_MEMBER, read_signature(a))  # a valid signature, for other content
    status = verify_signature(b, public_key_path=pub)
    assert status.valid is False and "different manifest" in status.reason


def test_openssl_ecparam_keys_work(bundle, tmp_path):
    priv, pub = tmp_path / "ossl.pem", tmp_path / "ossl.pub"
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(priv)], check=True)
    subprocess.run(["openssl", "ec", "-in", str(priv), "-pubout", "-out", str(pub)], check=True, capture_output=True)
    sign_bundle(bundle, key_path=priv)
    assert verify_signature(bundle, public_key_path=pub).valid is True


def test_non_ec_key_is_a_usage_error(bundle, tmp_path):
    rsa = tmp_path / "rsa.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024", "-out", str(rsa)], check=True, capture_output=True)
    with pytest.raises(UsageError, match="elliptic-curve"):
        sign_bundle(bundle, key_path=rsa)
    assert verify_signature(bundle).present is False  # nothing was appended


def test_upstream_model_signing_cli_verifies_the_installed_snapshot(bundle, keys, tmp_path):
    priv, pub = keys
    sign_bundle(bundle, key_path=priv)
    result = install_bundle(bundle, cache_dir=tmp_path / "cache")
    snapshot = result.snapshot_dir
    assert (snapshot / "model.safetensors").is_symlink()  # the HF layout: links into ../../blobs
    sig = tmp_path / "model.sig"
    sig.write_bytes(read_signature(bundle))

    def model_signing(*extra: str) -> subprocess.CompletedProcess:
        cmd = [str(MODEL_SIGNING), "verify", "key", str(snapshot), "--signature", str(sig), "--public_key", str(pub), *extra]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    ok = model_signing("--allow_symlinks")
    assert ok.returncode == 0 and "Verification succeeded" in ok.stdout, ok.stderr
    verify_snapshot(snapshot, signature_path=sig, public_key_path=pub)
    # without --allow_symlinks model_signing refuses the cache's symlinks (documented in security.md)
    assert "symlink" in model_signing().stderr
    # a dereferenced copy verifies with the plain command
    plain = tmp_path / "plain"
    shutil.copytree(snapshot, plain, symlinks=False)
    r = subprocess.run([str(MODEL_SIGNING), "verify", "key", str(plain), "--signature", str(sig), "--public_key", str(pub)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr

    # tamper with an installed blob: both verifiers notice
    blob = (snapshot / "config.json").resolve()
    os.chmod(blob, 0o644)
    blob.write_text('{"hidden_size": 9}\n')
    bad = model_signing("--allow_symlinks")
    assert bad.returncode == 1 and "config.json" in bad.stderr
    with pytest.raises(SignatureError, match="config.json"):
        verify_snapshot(snapshot, signature_path=sig, public_key_path=pub)


# --- the commands ---------------------------------------------------------------------------------


def test_cli_keygen_pack_sign_verify_inspect_signature(tmp_path):
    from click.testing import CliRunner

    from mirror.cli import cli

    runner = CliRunner()
    folder = _folder(tmp_path / "model")
    r = runner.invoke(cli, ["keygen", str(tmp_path / "release")])
    assert r.exit_code == 0, r.output
    priv, pub = tmp_path / "release.pem", tmp_path / "release.pub"
    fp = _der_fingerprint_openssl(pub)
    assert f"key sha256:{fp}" in r.stderr

    r = runner.invoke(cli, ["pack", str(folder), "--repo-id", "org/tiny", "--out", str(tmp_path / "b"), "--sign-key", str(priv)])
    assert r.exit_code == 0, r.output
    bundle = Path(r.stdout.strip().splitlines()[-1])  # the bundle path is still the last line
    assert f"signed: key sha256:{fp}" in r.stderr

    r = runner.invoke(cli, ["verify", str(bundle), "--public-key", str(pub)])
    assert r.exit_code == 0 and f"intact, signature valid, key sha256:{fp}" in r.stdout and r.stdout.count("\n") == 1  # one verdict

    r = runner.invoke(cli, ["inspect", str(bundle)])
    assert f"signature: signed, not checked (no public key given), key sha256:{fp}" in r.stdout
    r = runner.invoke(cli, ["inspect", str(bundle), "--public-key", str(pub)])
    assert f"signature: valid, key sha256:{fp}" in r.stdout

    r = runner.invoke(cli, ["signature", str(bundle)])
    assert r.exit_code == 0 and r.stdout.encode() == read_signature(bundle) + b"\n"

    # wrong key: exit 5, one line, no traceback
    runner.invoke(cli, ["keygen", str(tmp_path / "other")])
    r = runner.invoke(cli, ["verify", str(bundle), "--public-key", str(tmp_path / "other.pub")])
    assert r.exit_code == 5
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("mirror: error: ") and "not by the given key" in line and "Traceback" not in r.output

    # an unsigned bundle: verify --public-key fails, `signature` says so
    unsigned = pack_folder(_folder(tmp_path / "model2", weights=b"\x07" * 50), repo_id="org/other", out_dir=tmp_path / "b").path
    r = runner.invoke(cli, ["verify", str(unsigned), "--public-key", str(pub)])
    assert r.exit_code == 5 and "not signed" in r.stderr
    r = runner.invoke(cli, ["signature", str(unsigned)])
    assert r.exit_code == 5 and r.stdout == ""

    # `mirror sign` re-signs, and refuses a bundle whose bytes do not match its manifest
    r = runner.invoke(cli, ["sign", str(unsigned), "--key", str(priv)])
    assert r.exit_code == 0 and verify_signature(unsigned, public_key_path=pub).valid is True
    data = bytearray(unsigned.read_bytes())
    at = data.index(b"\x07" * 50)
    data[at] = 0x08
    unsigned.write_bytes(bytes(data))
    r = runner.invoke(cli, ["sign", str(unsigned), "--key", str(priv)])
    assert r.exit_code == 4 and "mismatched" in r.stderr


# A training image may carry the mirror without cryptography / model-signing: reading, verifying
# and installing bundles must work there; signing and checking signatures say what to install.
_WITHOUT_SIGNING_STACK = """
import sys
for name in ("cryptography", "model_signing", "OpenSSL"):
    sys.modules[name] = None  # import fails, importlib.util.find_spec answers None
from mirror.cli import main
main(sys.argv[1:])
"""


def _mirror_without_signing_stack(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _WITHOUT_SIGNING_STACK, *args], capture_output=True, text=True, env=env, timeout=120)


def test_without_the_signing_stack_bundles_still_verify_inspect_and_install(bundle, keys, tmp_path):
    priv, pub = keys
    sign_bundle(bundle, key_path=priv)
    claimed = verify_signature(bundle).key_fingerprint
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "cache")}

    r = _mirror_without_signing_stack("inspect", str(bundle), env=env)
    assert r.returncode == 0, r.stderr
    assert f"signature: signed, not checked (no public key given), key sha256:{claimed}" in r.stdout
    r = _mirror_without_signing_stack("verify", str(bundle), env=env)
    assert r.returncode == 0, r.stderr
    r = _mirror_without_signing_stack("install", str(bundle), env=env)
    assert r.returncode == 0, r.stderr
    assert list((tmp_path / "cache").glob("models--org--tiny/snapshots/*/model.safetensors"))

    # what needs the stack: one line naming the packages, exit 2, nothing written
    for args in (["verify", str(bundle), "--public-key", str(pub)], ["keygen", str(tmp_path / "new")], ["sign", str(bundle), "--key", str(priv)]):
        before = bundle.read_bytes()
        r = _mirror_without_signing_stack(*args, env=env)
        assert r.returncode == 8, (args, r.stdout, r.stderr)  # a prerequisite is missing
        (line,) = r.stderr.strip().splitlines()
        assert line.startswith("mirror: error: ") and "pip install cryptography model-signing pyopenssl" in line, line
        assert bundle.read_bytes() == before
    assert not list(tmp_path.glob("new*"))

    # a key option fails before any work: pack --sign-key writes no (unsigned) bundle at all
    out = tmp_path / "packed"
    r = _mirror_without_signing_stack("pack", str(_folder(tmp_path / "model2")), "--repo-id", "org/two", "--out", str(out), "--sign-key", str(priv), env=env)
    assert r.returncode == 8 and "--sign-key needs cryptography model-signing pyopenssl" in r.stderr, r.stderr
    assert not out.exists() or not any(out.iterdir())
