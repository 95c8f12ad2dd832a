"""What `mirror serve` admits: verdicts remembered by identity, rescans, deltas, parts, signatures.

The catalogue is exercised in-process (it is plain code); the watcher is also tested through a
real server, as a client sees it.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from mirror.serve import catalogue
from mirror.serve.catalogue import Catalogue, FailedBundle
from mirror.webui import views
from mirror.bundle.codec import read_manifest
from tests.fixtures.serve import pack, serve_bundles


def _model(root: Path, text: str, *, big: int = 5000) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(text)
    (root / "weights.safetensors").write_bytes(os.urandom(big))
    (root / "tokenizer.json").write_text('{"t": 1}')
    return root


def _flip_last_payload_byte(bundle: Path, entry_size: int) -> None:
    """Damage a file's data in place without changing the bundle's size."""
    from mirror.bundle.codec import BundleReader
    from mirror.bundle.layout import writer_layout

    with BundleReader(bundle, hash_all=False) as r, r.ranges() as src:
        layout = writer_layout(src, r.manifest, r.offset)
    f, off = next((f, off) for f, off in layout.files if f.path == "weights.safetensors")
    with open(bundle, "r+b") as fh:
        fh.seek(off + f.size - 1)
        b = fh.read(1)
        fh.seek(off + f.size - 1)
        fh.write(bytes([b[0] ^ 0xFF]))


def test_a_restart_verifies_nothing_that_did_not_change(tmp_path, caplog):
    b = pack(_model(tmp_path / "m", "{}"), "acme/m", tmp_path / "bundles")
    state = tmp_path / "state.json"
    caplog.set_level(logging.INFO, logger="mirror.serve")
    first = Catalogue(tmp_path / "bundles", state_file=state).refresh()
    assert "verifying 1 bundle(s)" in caplog.text and [r.repo_id for r in first.repos] == ["acme/m"]
    caplog.clear()
    second = Catalogue(tmp_path / "bundles", state_file=state).refresh()
    assert "verifying" not in caplog.text
    assert second.repos[0].commits[0].verified_at == first.repos[0].commits[0].verified_at
    from mirror.bundle.stored import stream_sha256

    assert second.repos[0].commits[0].bundle_sha256 == stream_sha256(b)
    os.utime(b, ns=(1, 1))  # same bytes, other identity: verified again
    caplog.clear()
    Catalogue(tmp_path / "bundles", state_file=state).refresh()
    assert "verifying 1 bundle(s)" in caplog.text


@pytest.mark.parametrize("content", [b"{not json", b'{"format": "mirror-serve-state/1", "bundles": {"x": {"ok": true}}}', b"\xff" * 10])
def test_a_corrupt_state_file_means_verify_again_never_trust(tmp_path, caplog, content):
    b = pack(_model(tmp_path / "m", "{}"), "acme/m", tmp_path / "bundles")
    state = tmp_path / "state.json"
    Catalogue(tmp_path / "bundles", state_file=state).refresh()
    state.write_bytes(content)
    caplog.set_level(logging.INFO, logger="mirror.serve")
    view = Catalogue(tmp_path / "bundles", state_file=state).refresh()
    assert "verifying 1 bundle(s)" in caplog.text and [r.repo_id for r in view.repos] == ["acme/m"]
    assert json.loads(state.read_text())["bundles"][str(b.resolve())]["ok"] is True  # rewritten whole


def test_a_bundle_that_stops_verifying_stops_being_served_the_others_unaffected(tmp_path):
    bad = pack(_model(tmp_path / "a", "{}"), "acme/a", tmp_path / "bundles")
    pack(_model(tmp_path / "b", "{}"), "acme/b", tmp_path / "bundles")
    (tmp_path / "bundles" / "junk.tar").write_bytes(b"not a tar" * 100)
    cat = Catalogue(tmp_path / "bundles", state_file=tmp_path / "state.json")
    view = cat.refresh()
    assert [r.repo_id for r in view.repos] == ["acme/a", "acme/b"]
    assert [f.path.name for f in view.failed] == ["junk.tar"] and "not a mirror bundle" in view.failed[0].reason
    _flip_last_payload_byte(bad, 5000)
    view = cat.refresh()
    assert [r.repo_id for r in view.repos] == ["acme/b"]
    reason = next(f.reason for f in view.failed if f.path.name == bad.name)
    assert "mismatched" in reason and "weights.safetensors" in reason
    pack(_model(tmp_path / "c", "{}"), "acme/c", tmp_path / "bundles")  # added: served on the next scan
    assert [r.repo_id for r in cat.refresh().repos] == ["acme/b", "acme/c"]


def test_a_delta_is_served_on_top_of_its_base(tmp_path):
    base_dir = _model(tmp_path / "v1", '{"v": 1}')
    base = pack(base_dir, "acme/m", tmp_path / "bundles", revision="v1")
    new_dir = tmp_path / "v2"
    new_dir.mkdir()
    for p in base_dir.iterdir():
        (new_dir / p.name).write_bytes(p.read_bytes())
    (new_dir / "config.json").write_text('{"v": 2}')
    delta = pack(new_dir, "acme/m", tmp_path / "bundles", since=base)
    assert len(read_manifest(delta).files) == 1  # only config.json travels
    cat = Catalogue(tmp_path / "bundles", state_file=None)
    repo = cat.refresh().repos[0]
    top = cat.resolve(repo, "main")
    assert top.bundle == delta.resolve() and {f.path for f in top.files} == {"config.json", "weights.safetensors", "tokenizer.json"}
    for f in top.files:
        assert cat.read_file(top, f.path, limit=1 << 20) == (new_dir / f.path).read_bytes()
    assert top.sources["weights.safetensors"].stream.files == (base.resolve(),)  # unchanged bytes come from the base bundle
    base.unlink()
    view = cat.refresh()
    assert view.repos == () and "not served from this folder" in view.failed[0].reason
    assert view.failed[0].kind == catalogue.NO_BASE


def test_a_member_spanning_parts_is_read_part_by_part(tmp_path):
    src = _model(tmp_path / "m", "{}", big=9000)
    index = pack(src, "acme/p", tmp_path / "bundles", max_part_size=4096)
    assert len(list((tmp_path / "bundles").glob("*.part*[0-9]"))) >= 3
    cat = Catalogue(tmp_path / "bundles", state_file=None)
    commit = cat.refresh().repos[0].commits[0]
    assert commit.bundle == index.resolve() and index.name.endswith(".parts.json")
    from mirror.serve.spans import open_range

    want = (src / "weights.safetensors").read_bytes()
    for start, end in ((0, 9000), (100, 8000), (4000, 4200), (8999, 9000)):
        with open_range(commit.sources["weights.safetensors"], start, end) as body:
            assert b"".join(body.chunks()) == want[start:end]


def test_with_public_keys_only_signed_bundles_are_served(tmp_path):
    from mirror.signing import keygen, sign_bundle

    priv, pub = keygen(tmp_path / "release")
    other, _ = keygen(tmp_path / "other")
    signed = pack(_model(tmp_path / "s", "{}"), "acme/signed", tmp_path / "bundles")
    sign_bundle(signed, key_path=priv)
    unsigned = pack(_model(tmp_path / "u", "{}"), "acme/unsigned", tmp_path / "bundles")
    stranger = pack(_model(tmp_path / "o", "{}"), "acme/stranger", tmp_path / "bundles")
    sign_bundle(stranger, key_path=other)
    view = Catalogue(tmp_path / "bundles", public_keys=[pub], state_file=None).refresh()
    assert [r.repo_id for r in view.repos] == ["acme/signed"]
    c = view.repos[0].commits[0]
    assert c.signer and c.signature.startswith("valid")
    failed = {f.path.name: f for f in view.failed}
    assert "not signed" in failed[unsigned.name].reason
    # the kind is decided where the signature is judged: the page reads it, not the words
    assert (failed[unsigned.name].kind, failed[stranger.name].kind) == (catalogue.UNSIGNED, catalogue.UNTRUSTED_SIGNATURE)
    assert [views.failure_kind(failed[b.name]) for b in (unsigned, stranger)] == ["unsigned", "signature"]
    open_view = Catalogue(tmp_path / "bundles", state_file=None).refresh()
    assert {r.repo_id: r.commits[0].signer for r in open_view.repos} == {"acme/signed": None, "acme/stranger": None, "acme/unsigned": None}


def test_the_page_groups_a_refusal_by_its_kind_not_its_words(tmp_path):
    """views.failure_kind reads FailedBundle.kind: a reason that quotes a signature refusal's
    words (a file name, a forged manifest's text) does not move a bundle out of the failures."""
    words = "not served: signature required and not valid: the bundle is not signed"
    assert views.failure_kind(FailedBundle(tmp_path / "x.tar", words, catalogue.FAILED)) == "failed"
    assert views.failure_kind(FailedBundle(tmp_path / "x.tar", "does not verify", catalogue.UNTRUSTED_SIGNATURE)) == "signature"
    assert views.failure_kind(FailedBundle(tmp_path / "x.tar", "does not verify", catalogue.UNSIGNED)) == "unsigned"
    for kind, group in ((catalogue.UNAPPROVED, "unapproved"), (catalogue.CONFLICT, "conflict"), (catalogue.NO_BASE, "no-base")):
        assert views.failure_kind(FailedBundle(tmp_path / "x.tar", words, kind)) == group  # each its own heading on the page
    # a damaged bundle: failed, decided where it did not verify
    bad = pack(_model(tmp_path / "d", "{}"), "acme/damaged", tmp_path / "bundles")
    _flip_last_payload_byte(bad, 5000)
    (failed,) = Catalogue(tmp_path / "bundles", state_file=None).refresh().failed
    assert failed.path.name == bad.name and failed.kind == catalogue.FAILED


def _get(url: str, path: str) -> tuple[int, bytes]:
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("GET", path)
    r = conn.getresponse()
    out = r.status, r.read()
    conn.close()
    return out


def test_the_server_picks_up_new_bundles_and_drops_changed_ones_without_a_restart(tmp_path):
    a = pack(_model(tmp_path / "a", '{"a": 1}'), "acme/a", tmp_path / "bundles")
    with serve_bundles(tmp_path / "bundles", tmp_path / "state.json", "--rescan-interval", "0.2") as srv:
        assert _get(srv.url, "/acme/a/resolve/main/config.json") == (200, b'{"a": 1}')
        b = pack(_model(tmp_path / "b", '{"b": 1}'), "acme/b", tmp_path / "bundles")
        srv.wait_for(f"serving {b.name}")
        assert _get(srv.url, "/acme/b/resolve/main/config.json") == (200, b'{"b": 1}')
        _flip_last_payload_byte(a, 5000)
        srv.wait_for(f"not serving {a.name}: .*mismatched")
        assert _get(srv.url, "/acme/a/resolve/main/config.json")[0] == 404
        assert _get(srv.url, "/acme/b/resolve/main/config.json") == (200, b'{"b": 1}')
    with serve_bundles(tmp_path / "bundles", tmp_path / "state.json") as srv:  # a restart: remembered, nothing re-verified
        assert "verifying" not in srv.log()
        assert _get(srv.url, "/acme/b/resolve/main/config.json") == (200, b'{"b": 1}')


def test_a_link_out_of_the_folder_is_never_opened_and_nothing_of_its_target_is_echoed(tmp_path):
    """A shared drop folder: someone plants `x.tar -> /some/secret` (or another user's bundle). The
    server reads with its own rights, so it must not parse, serve or quote the target; a link to a
    bundle inside the folder is fine."""
    inside = pack(_model(tmp_path / "m", "{}"), "acme/m", tmp_path / "bundles")
    secret = tmp_path / "secret"
    secret.write_bytes(b"root:$y$j9T$SECRETHASH:19000:0:99999:7:::\n" * 20)
    other = pack(_model(tmp_path / "o", '{"o": 1}'), "acme/other-users", tmp_path / "elsewhere")
    (tmp_path / "bundles" / "planted.tar").symlink_to(secret)
    (tmp_path / "bundles" / "borrowed.tar").symlink_to(other)
    (tmp_path / "bundles" / "alias.tar").symlink_to(inside.name)
    view = Catalogue(tmp_path / "bundles", state_file=tmp_path / "state.json").refresh()
    assert [r.repo_id for r in view.repos] == ["acme/m"]
    failed = {f.path.name: f.reason for f in view.failed}
    assert set(failed) == {"planted.tar", "borrowed.tar"}
    for reason in failed.values():
        assert "a link to a file outside the bundles folder (not opened)" in reason
        assert "SECRET" not in reason and "19000" not in reason


def test_a_file_that_is_not_a_bundle_is_refused_without_quoting_its_bytes(tmp_path):
    (tmp_path / "bundles").mkdir()
    (tmp_path / "bundles" / "notes.tar").write_bytes(b"password=hunter2:19000:0:99999:7:::\n" * 30)
    view = Catalogue(tmp_path / "bundles").refresh()
    (reason,) = [f.reason for f in view.failed]
    assert "not a mirror bundle" in reason and "hunter2" not in reason and "99999" not in reason
