"""`mirror serve` sends only bytes that were verified, whatever the file's timestamps say.

The attack: someone with write access to the bundles folder rewrites bytes of a served bundle in
place (same size) and puts its mtime back, so that (dev, inode, size, mtime) look unchanged. A
real server (`python -m mirror serve`) is asked with requests and huggingface_hub, before and
after, and after a restart over the same state file. The in-process tests pin the two guards a
stat cannot fool: a small file is hashed before it is sent, and bytes read through Python are
checked after every read.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from mirror.serve import spans
from mirror.serve.catalogue import Catalogue
from mirror.serve.state import identity
from mirror.bundle.codec import BundleReader, read_manifest
from mirror.bundle.layout import writer_layout
from tests.fixtures.serve import pack, serve_bundles

CONFIG = b'{"hidden_size": 8, "note": "the verified config"}\n'
BIG = spans.SMALL_FILE + 3 * 1024 * 1024  # over the hashed-before-sending size: sent from the descriptor
IMMUTABLE = "public, max-age=31536000, immutable"


def _model(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_bytes(CONFIG)
    (root / "weights.safetensors").write_bytes(os.urandom(BIG))
    return root


def _offset(bundle: Path, path: str) -> int:
    """Where `path`'s data starts in the bundle file."""
    with BundleReader(bundle, hash_all=False) as r, r.ranges() as src:
        layout = writer_layout(src, r.manifest, r.offset)
    return next(off for f, off in layout.files if f.path == path)


def _rewrite_backdated(path: Path, at: int, data: bytes) -> None:
    """Write `data` at `at` in place and put atime and mtime back: only ctime shows the write."""
    before = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns)


def _flip(path: Path, at: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(at)
        old = f.read(1)
    new = bytes([old[0] ^ 0xFF])
    _rewrite_backdated(path, at, new)
    return new


def _tamper(bundle: Path) -> tuple[int, int]:
    """Damage config.json (as "EVIL") and one weights byte in place, backdated; returns the
    weights range [a, b) that holds the changed byte."""
    _rewrite_backdated(bundle, _offset(bundle, "config.json") + 2, b"EVIL")
    at = 5 * 1024 * 1024 + 17
    _flip(bundle, _offset(bundle, "weights.safetensors") + at)
    return at - 1000, at + 1000


def _site(tmp_path: Path) -> dict:
    src = _model(tmp_path / "m")
    other = tmp_path / "o"
    other.mkdir()
    (other / "config.json").write_text('{"other": 1}')
    bundle = pack(src, "acme/m", tmp_path / "bundles")
    pack(other, "acme/other", tmp_path / "bundles")
    return {"src": src, "bundle": bundle, "commit": read_manifest(bundle).commit, "weights": (src / "weights.safetensors").read_bytes()}


def _refused_without_the_changed_bytes(r: requests.Response, status: int) -> None:
    assert r.status_code == status, (r.status_code, r.headers)
    assert b"EVIL" not in r.content and "immutable" not in r.headers.get("Cache-Control", "")
    assert "\n" not in r.headers["X-Error-Message"]


def test_a_byte_rewritten_in_place_with_the_mtime_put_back_never_reaches_a_client(tmp_path):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    s = _site(tmp_path)
    state = tmp_path / "state.json"
    # no watcher: the check made when a request opens the bundle is all that stands in the way
    with serve_bundles(tmp_path / "bundles", state, "--rescan-interval", "0") as srv:
        url = f"{srv.url}/acme/m/resolve/main"
        assert Path(hf_hub_download("acme/m", "config.json", endpoint=srv.url, cache_dir=tmp_path / "c1")).read_bytes() == CONFIG
        a, b = _tamper(s["bundle"])
        _refused_without_the_changed_bytes(requests.get(f"{url}/config.json", timeout=30), 503)
        r = requests.get(f"{url}/weights.safetensors", headers={"Range": f"bytes={a}-{b - 1}"}, timeout=30)
        assert r.status_code == 503 and "Content-Range" not in r.headers
        assert requests.get(f"{url}/weights.safetensors", timeout=30).status_code == 503
        with pytest.raises(HfHubHTTPError) as e:
            hf_hub_download("acme/m", "config.json", endpoint=srv.url, cache_dir=tmp_path / "c2")
        assert e.value.response.status_code == 503
        assert not list((tmp_path / "c2").rglob("config.json"))
        assert requests.get(f"{srv.url}/acme/other/resolve/main/config.json", timeout=30).content == b'{"other": 1}'
    # a restart over the state file that remembers the verdict: the identity differs, verified again
    with serve_bundles(tmp_path / "bundles", state, "--rescan-interval", "0") as srv:
        srv.wait_for(rf"verifying 1 bundle\(s\): {s['bundle'].name}")
        srv.wait_for(rf"not serving {s['bundle'].name}: .*mismatched")
        _refused_without_the_changed_bytes(requests.get(f"{srv.url}/acme/m/resolve/main/config.json", timeout=30), 404)
        r = requests.get(f"{srv.url}/acme/m/resolve/{s['commit']}/weights.safetensors", headers={"Range": f"bytes={a}-{b - 1}"}, timeout=30)
        assert r.status_code == 404 and r.headers["X-Error-Code"] == "RepoNotFound"
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download("acme/m", "config.json", endpoint=srv.url, cache_dir=tmp_path / "c3")
        assert Path(hf_hub_download("acme/other", "config.json", endpoint=srv.url, cache_dir=tmp_path / "c3")).read_bytes() == b'{"other": 1}'


def test_the_watcher_drops_a_changed_bundle_and_serves_it_again_once_it_verifies(tmp_path):
    s = _site(tmp_path)
    bundle = s["bundle"]
    original = bundle.read_bytes()
    with serve_bundles(tmp_path / "bundles", tmp_path / "state.json", "--rescan-interval", "0.2") as srv:
        url = f"{srv.url}/acme/m/resolve/main"
        a, b = _tamper(bundle)
        srv.wait_for(rf"not serving {bundle.name}: .*mismatched")
        assert requests.get(f"{url}/config.json", timeout=30).status_code == 404
        assert requests.get(f"{url}/weights.safetensors", headers={"Range": f"bytes={a}-{b - 1}"}, timeout=30).status_code == 404
        _rewrite_backdated(bundle, 0, original)  # put right again: verified again and served
        srv.wait_for(rf"(?s)not serving {bundle.name}: .*mirror serve: serving {bundle.name}\n")
        assert requests.get(f"{url}/config.json", timeout=30).content == CONFIG
        r = requests.get(f"{url}/weights.safetensors", headers={"Range": f"bytes={a}-{b - 1}"}, timeout=30)
        assert r.status_code == 206 and r.content == s["weights"][a:b]


@pytest.mark.parametrize("attack", ["re-signed in place by another key", "a weights byte changed"])
def test_under_public_key_only_bytes_the_key_signed_are_served(tmp_path, attack):
    from mirror.signing import keygen, sign_bundle

    s = _site(tmp_path)
    bundle = s["bundle"]
    trusted_priv, trusted = keygen(tmp_path / "release")
    other_priv, _ = keygen(tmp_path / "intruder")
    sign_bundle(bundle, key_path=trusted_priv)
    state = tmp_path / "state.json"
    with serve_bundles(tmp_path / "bundles", state, "--public-key", str(trusted), "--rescan-interval", "0") as srv:
        pinned = f"{srv.url}/acme/m/resolve/{s['commit']}"
        r = requests.get(f"{pinned}/config.json", timeout=30)
        assert r.content == CONFIG and r.headers["Cache-Control"] == IMMUTABLE
        before = os.stat(bundle)
        if attack.startswith("re-signed"):
            sign_bundle(bundle, key_path=other_priv)  # rewrites the signature member in place
            os.utime(bundle, ns=(before.st_atime_ns, before.st_mtime_ns))
        else:
            _flip(bundle, _offset(bundle, "weights.safetensors") + 123)
        assert (os.stat(bundle).st_ino, os.stat(bundle).st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        # config.json's bytes are the signed ones either way, but the file is not the one checked
        _refused_without_the_changed_bytes(requests.get(f"{pinned}/config.json", timeout=30), 503)
        assert requests.get(f"{pinned}/weights.safetensors", headers={"Range": "bytes=0-999"}, timeout=30).status_code == 503
    with serve_bundles(tmp_path / "bundles", state, "--public-key", str(trusted), "--rescan-interval", "0") as srv:
        srv.wait_for(rf"not serving {bundle.name}: " + ("not served: " if attack.startswith("re-signed") else ".*mismatched"))
        assert requests.get(f"{srv.url}/acme/m/resolve/{s['commit']}/config.json", timeout=30).status_code == 404


def test_long_lived_caching_only_for_verified_bytes_at_a_pinned_commit(tmp_path):
    s = _site(tmp_path)
    with serve_bundles(tmp_path / "bundles", tmp_path / "state.json", "--rescan-interval", "0") as srv:
        pinned, main = f"{srv.url}/acme/m/resolve/{s['commit']}", f"{srv.url}/acme/m/resolve/main"
        for method in ("GET", "HEAD"):
            assert requests.request(method, f"{pinned}/config.json", timeout=30).headers["Cache-Control"] == IMMUTABLE
            assert requests.request(method, f"{main}/config.json", timeout=30).headers["Cache-Control"] == "no-cache"  # main moves
        r = requests.get(f"{pinned}/weights.safetensors", headers={"Range": "bytes=0-9"}, timeout=30)
        assert r.status_code == 206 and r.headers["Cache-Control"] == IMMUTABLE and r.content == s["weights"][:10]
        assert "immutable" not in requests.get(f"{pinned}/nope.bin", timeout=30).headers.get("Cache-Control", "")
        _tamper(s["bundle"])
        # a HEAD sends no bytes, but its headers must not promise a year to what is no longer verified
        assert requests.head(f"{pinned}/config.json", timeout=30).headers["Cache-Control"] == "no-cache"
        r = requests.get(f"{pinned}/weights.safetensors", headers={"Range": "bytes=0-9"}, timeout=30)
        assert r.status_code == 503 and r.headers["Cache-Control"] == "no-store"


# --- in-process: the guards a stat cannot fool ------------------------------------------------


def _served(tmp_path: Path, **pack_kw):
    src = _model(tmp_path / "m")
    bundle = pack(src, "acme/m", tmp_path / "bundles", **pack_kw)
    cat = Catalogue(tmp_path / "bundles", state_file=None)
    commit = cat.refresh().repos[0].commits[0]
    return src, bundle, commit


def test_a_small_file_is_hashed_before_it_is_sent_even_if_its_identity_looks_unchanged(tmp_path):
    src, bundle, commit = _served(tmp_path)
    told = []
    good = commit.sources["config.json"]
    with spans.open_range(good, 2, 10) as body:
        assert b"".join(body.chunks()) == CONFIG[2:10]
    _rewrite_backdated(bundle, _offset(bundle, "config.json") + 2, b"EVIL")
    # as if ctime could be set back too (it cannot, short of the clock): the stream's identity is the file's now
    forged = replace(good, stream=replace(good.stream, idents=identity(bundle), on_change=told.append))
    with pytest.raises(spans.BundleChanged, match="changed since it was verified"):
        spans.open_range(forged, 2, 10)
    assert told == [bundle.resolve()]
    with pytest.raises(spans.BundleChanged):  # the real stream: refused by its identity before any read
        spans.open_range(good, 0, len(CONFIG))


def test_bytes_read_through_python_stop_at_a_write_that_races_them(tmp_path):
    """A member spanning parts passes through Python: each read is followed by an identity check,
    so a write between two reads ends the body before any changed byte is handed out."""
    src, index, commit = _served(tmp_path, max_part_size=4 * 1024 * 1024)
    want = (src / "weights.safetensors").read_bytes()
    source = commit.sources["weights.safetensors"]
    assert len(source.stream.files) > 2
    got = b""
    body = spans.open_range(source, 0, BIG)
    assert isinstance(body, spans.MultiSegment)
    chunks = body.chunks()
    got += next(chunks)
    last = source.stream.files[-1]
    _flip(last, os.path.getsize(last) // 2)
    with pytest.raises(spans.BundleChanged):
        for c in chunks:
            got += c
    body.close()
    assert 0 < len(got) < BIG and got == want[: len(got)]


def test_a_write_that_raced_a_sendfile_is_reported_when_the_response_closes(tmp_path, caplog):
    """sendfile copies in the kernel: the last check is when the body is closed. What went out
    cannot be recalled; the server says so and stops serving the bundle until it verifies."""
    src, bundle, commit = _served(tmp_path)
    told = []
    source = commit.sources["weights.safetensors"]
    source = replace(source, stream=replace(source.stream, on_change=told.append))
    body = spans.open_range(source, 0, BIG)
    assert isinstance(body, spans.Segment)
    body.check()  # what a sender does after each sendfile slice: still the verified file
    _flip(bundle, _offset(bundle, "weights.safetensors") + 10)
    with pytest.raises(spans.BundleChanged):  # the sender's next check: it cuts the connection
        body.check()
    caplog.set_level(logging.ERROR, logger="mirror.serve")
    body.close()
    assert told == [bundle.resolve()] * 2
    assert f"{bundle.name} changed while a response was being sent from it" in caplog.text
