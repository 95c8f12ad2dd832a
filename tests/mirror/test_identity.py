"""A bundle's identity (the sha256 of its manifest member) is what stays the same while the
file around it changes: signing, re-signing, parts, the install record. Its file sha256 is not."""

from __future__ import annotations

import hashlib

import pytest

from mirror.hfcache import RecordTrust
from mirror.identity import bundle_id, is_bundle_id, read_bundle_id
from mirror.install import install_bundle, installed_trust
from mirror.bundle.codec import BundleReader
from tests.mirror.test_bundle import COMMIT, make_repo, write


@pytest.fixture
def keys(tmp_path):
    from mirror.signing import keygen

    (tmp_path / "keys").mkdir()
    return {n: keygen(tmp_path / "keys" / n) for n in ("a", "b")}


def test_the_identity_is_the_manifest_members_sha256_and_survives_signing_and_parts(tmp_path, keys):
    from mirror.signing import sign_bundle

    src = tmp_path / "src"
    make_repo(src)
    info = write(src, tmp_path / "one")
    with BundleReader(info.path, hash_all=False) as r:
        member = r.manifest_bytes
    ident = read_bundle_id(info.path)
    assert ident == "sha256:" + hashlib.sha256(member).hexdigest() == bundle_id(member) and is_bundle_id(ident)
    shas = {hashlib.sha256(info.path.read_bytes()).hexdigest()}
    for name in ("a", "b", "a"):  # signed, re-signed by another key, signed again
        signed = sign_bundle(info.path, key_path=keys[name][0])
        assert signed.bundle_id == read_bundle_id(info.path) == ident
        shas.add(signed.new_sha256)
    assert len(shas) == 4  # four different files, one identity
    parts = write(src, tmp_path / "parts", max_part_size=4096)
    assert read_bundle_id(parts.path) == ident  # the same manifest, split: the same bundle


def test_the_install_record_names_the_identity_and_the_checked_signer(tmp_path, keys):
    from mirror.signing import key_fingerprint, sign_bundle

    src = tmp_path / "src"
    make_repo(src)
    info = write(src, tmp_path / "out")
    cache = tmp_path / "cache"
    r = install_bundle(info.path, cache_dir=cache)
    assert r.bundle_id == read_bundle_id(info.path)
    assert installed_trust("org/name", COMMIT, cache_dir=cache) == RecordTrust(r.bundle_id, None)  # no key required: none checked
    sign_bundle(info.path, key_path=keys["a"][0])
    again = install_bundle(info.path, cache_dir=cache, public_keys=[keys["a"][1]])
    assert again.already_installed and again.signer == key_fingerprint(keys["a"][1])
    rec = installed_trust("org/name", COMMIT, cache_dir=cache)
    assert (rec.bundle_id, rec.signer) == (r.bundle_id, again.signer)  # recorded by the install that checked it
    install_bundle(info.path, cache_dir=cache)  # an install that checks no key leaves the checked signer alone
    assert installed_trust("org/name", COMMIT, cache_dir=cache).signer == again.signer
