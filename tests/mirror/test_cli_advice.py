"""Issue 22, the `mirror` side: keys kept out of git, advice that points the right way, a key file
checked before any hashing, `verify DIR`, "did you mean" for a mistyped path, and the signer in
`mirror list`. Each test runs the real command (click's runner) on real bundles and keys."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

import mirror.verify
from mirror.cli import cli
from mirror.pack import pack_folder
from mirror.signing import keygen, sign_bundle

GIT = shutil.which("git") or "git"  # a system tool the checks need (the repo is a git checkout)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_error(result) -> str:
    assert result.stderr.startswith("mirror: error: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


@pytest.fixture
def bundle(tmp_path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text('{"hidden_size": 8}\n')
    (src / "model.safetensors").write_bytes(b"\x01" * 4096)
    return pack_folder(src, repo_id="acme/m", out_dir=tmp_path / "bundles").path


@pytest.fixture
def keys(tmp_path):
    (tmp_path / "keys").mkdir()
    return keygen(tmp_path / "keys" / "release")


# --- keygen in a git checkout ---------------------------------------------------------------------


def test_keygen_in_a_git_checkout_keeps_the_private_key_out_of_git_add(tmp_path, monkeypatch):
    subprocess.run([GIT, "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    r = run("keygen", "keys/release")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == ["keys/release.pem", "keys/release.pub"]
    assert "inside a git work tree: added it to keys/.gitignore" in r.stderr
    subprocess.run([GIT, "add", "."], check=True, cwd=tmp_path)
    staged = subprocess.run([GIT, "diff", "--cached", "--name-only"], check=True, cwd=tmp_path, capture_output=True, text=True).stdout.split()
    assert "keys/release.pub" in staged and "keys/.gitignore" in staged
    assert "keys/release.pem" not in staged  # `git add .` took the public key, never the private one
    # a second key in the same folder: the .gitignore grows, the first line stays
    assert run("keygen", "keys/other").exit_code == 0
    assert (tmp_path / "keys" / ".gitignore").read_text().count("\n/") == 2


def test_keygen_leaves_gitignore_alone_when_git_already_ignores_keys_or_outside_a_checkout(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    subprocess.run([GIT, "init", "-q", str(repo)], check=True)
    (repo / ".gitignore").write_text("*.pem\n")
    monkeypatch.chdir(repo)
    r = run("keygen", "--json", "secrets/k")
    assert r.exit_code == 0 and '"gitignore": null' in r.stdout and not (repo / "secrets" / ".gitignore").exists()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    monkeypatch.chdir(outside)
    assert run("keygen", "k").exit_code == 0 and not (outside / ".gitignore").exists()


# --- advice that points the right way --------------------------------------------------------------


def test_an_unsigned_bundle_tells_the_receiver_to_ask_the_sender_not_to_sign_it(bundle, keys):
    r = run("verify", bundle, "--public-key", keys[1])
    assert r.exit_code == 5
    line = one_error(r)
    assert "ask the sender for a signed bundle" in line and "do not sign it yourself" in line
    assert "sign it with 'mirror sign BUNDLE" not in line  # the old advice: the receiver signing what it cannot vouch for


def test_a_bundle_signed_by_another_key_points_at_the_pub_not_at_a_fresh_copy(bundle, keys, tmp_path):
    other = keygen(tmp_path / "keys" / "other")
    sign_bundle(bundle, key_path=other[0])
    r = run("verify", bundle, "--public-key", keys[1])
    assert r.exit_code == 5
    line = one_error(r)
    assert "check that --public-key is the publisher's .pub" in line
    assert "freshly signed copy" not in line


def test_a_private_key_as_public_key_fails_before_the_bundle_is_hashed(bundle, keys, monkeypatch):
    hashed = []
    real = mirror.verify.verify_bundle
    monkeypatch.setattr(mirror.verify, "verify_bundle", lambda *a, **k: hashed.append(a) or real(*a, **k))
    for command in (["verify", bundle], ["audit", bundle], ["inspect", bundle], ["install", bundle]):
        r = run(*command, "--public-key", keys[0])
        assert r.exit_code == 2, (command, r.output)
        assert "release.pem is a private key, not a public one; pass the .pub beside it" in one_error(r)
    assert hashed == []
    assert run("verify", bundle).exit_code == 0 and len(hashed) == 1  # the spy does see a real verify


# --- verify DIR, did you mean ----------------------------------------------------------------------


def test_verify_takes_a_folder_one_verdict_each_and_fails_if_any_fails(bundle, tmp_path):
    folder = bundle.parent
    damaged = folder / "damaged.tar"
    raw = bytearray(bundle.read_bytes())
    raw[raw.index(b"\x01" * 4096) + 100] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    r = run("verify", folder)
    assert r.exit_code == 4, r.output
    verdicts = [line for line in r.stdout.splitlines() if line.startswith(("OK ", "FAILED "))]
    assert len(verdicts) == 2
    assert any(v.startswith("OK acme/m@") and bundle.name in v for v in verdicts)
    assert any(v.startswith("FAILED acme/m@") and "damaged.tar" in v for v in verdicts)
    damaged.unlink()
    ok = run("verify", folder)
    assert ok.exit_code == 0 and ok.stdout.count("OK acme/m@") == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run("verify", empty)
    assert r.exit_code == 2 and "holds no bundles" in one_error(r)


def test_a_mistyped_path_gets_a_did_you_mean(bundle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run("verify", "bundels")
    assert r.exit_code == 2 and one_error(r) == "mirror: error: bundels: no such bundle; did you mean bundles?\n"
    typo = f"bundles/{bundle.name[:-4]}.tra"
    r = run("verify", typo)
    assert r.exit_code == 2 and f"did you mean bundles/{bundle.name}?" in one_error(r)
    r = run("audit", "bundels")
    assert r.exit_code == 2 and "did you mean bundles?" in one_error(r)
    r = run("verify", "nothing-like-it.tar")
    assert r.exit_code == 2 and one_error(r) == "mirror: error: nothing-like-it.tar: no such bundle; check the path\n"


# --- list: the signer ------------------------------------------------------------------------------


def test_list_shows_who_signed_each_bundle(bundle, keys, tmp_path):
    from mirror.signing import key_fingerprint

    signed = bundle.with_name("signed.tar")
    shutil.copy(bundle, signed)
    sign_bundle(signed, key_path=keys[0])
    fp = key_fingerprint(keys[1])
    r = run("list", bundle.parent)
    assert r.exit_code == 0
    header, *rows = r.stdout.splitlines()
    assert "SIGNED BY" in header
    by_name = {row.split()[-1]: row for row in rows}
    assert "unsigned" in by_name[bundle.name] and f"sha256:{fp[:8]}" in by_name["signed.tar"]
    j = run("list", "--json", bundle.parent)
    import json

    rows = {Path(x["bundle"]).name: x for x in map(json.loads, j.stdout.splitlines())}
    assert rows["signed.tar"]["signed"] is True and rows["signed.tar"]["signer_key_sha256"] == fp
    assert rows[bundle.name]["signed"] is False and rows[bundle.name]["signer_key_sha256"] is None


def test_inspect_says_a_local_pack_is_not_from_the_hub(bundle):
    r = run("inspect", bundle)
    assert r.exit_code == 0
    assert "source:    local:src (packed locally, not from the Hub)" in r.stdout.splitlines()
