"""What `mirror serve` admits under the site policy, as install does: a `.sha256` sidecar beside
a bundle is checked, and the approvals the environment requires ($MIRROR_APPROVALS) are enforced;
every served commit names its bundle's identity."""

from __future__ import annotations

import os
from pathlib import Path

from mirror.identity import read_bundle_id
from mirror.serve import catalogue
from mirror.serve.catalogue import Catalogue
from tests.fixtures.serve import pack


def _model(root: Path, text: str) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(text)
    (root / "weights.safetensors").write_bytes(os.urandom(5000))
    return root


def test_a_bundle_whose_sidecar_disagrees_is_not_served(tmp_path):
    good = pack(_model(tmp_path / "a", '{"created": "2024"}'), "acme/a", tmp_path / "bundles")
    bad = pack(_model(tmp_path / "b", '{"created": "2024"}'), "acme/b", tmp_path / "bundles")
    sidecar = bad.with_name(bad.name + ".sha256")
    sidecar.write_text(f"{'0' * 64}  {bad.name}\n")  # a stale or altered copy beside its sidecar
    view = Catalogue(tmp_path / "bundles", state_file=None).refresh()
    assert [r.repo_id for r in view.repos] == ["acme/a"]
    assert view.repos[0].commits[0].bundle_id == read_bundle_id(good)
    assert [f.path.name for f in view.failed] == [bad.name] and "against its sidecar" in view.failed[0].reason


def test_only_approved_bundles_are_served_when_approvals_are_required(tmp_path, monkeypatch):
    from mirror.approval import write_approval
    from mirror.signing import keygen

    priv, pub = keygen(tmp_path / "security")
    approved = pack(_model(tmp_path / "a", "{}"), "acme/approved", tmp_path / "bundles")
    pack(_model(tmp_path / "b", "{}"), "acme/pending", tmp_path / "bundles")
    write_approval([approved], reviewer="sec", decision="approved", key_path=priv, out=tmp_path / "ok.json")
    monkeypatch.setenv("MIRROR_APPROVALS", str(tmp_path / "ok.json"))
    monkeypatch.setenv("MIRROR_APPROVAL_KEYS", str(pub))
    view = Catalogue(tmp_path / "bundles", state_file=None).refresh()
    assert [r.repo_id for r in view.repos] == ["acme/approved"]
    assert "not served" in view.failed[0].reason and "is in none of the 1 approval file(s)" in view.failed[0].reason
    assert view.failed[0].kind == catalogue.UNAPPROVED  # decided where the approval is required
