"""Property tests: whatever bytes arrive, the manifest parser and the tar reader answer with a typed
MirrorError or a result, never another exception, and `verify` and `install` agree."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mirror.errors import ManifestError, MirrorError
from mirror.hashing import hash_file
from mirror.install import install_bundle
from mirror.manifest import parse
from mirror.pack import pack_folder
from mirror.signing import verify_signature
from mirror.verify import verify_bundle
from tests.fixtures.cachetree import tree as cache_tree

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


def _valid_manifest() -> dict:
    return {
        "format": "mirror-bundle/1", "repo_id": "org/m", "repo_type": "model", "revision": "main",
        "commit": "a" * 40, "source": "https://hub.example", "created_at": "2024-01-01T00:00:00Z",
        "tool": {"name": "mirror", "version": "0"}, "license": "mit",
        "files": [{"path": "config.json", "size": 2, "sha256": "b" * 64, "git_sha1": "c" * 40, "lfs": False, "kind": "json"}],
        "totals": {"files": 1, "bytes": 2, "by_kind": {"json": 1}},
    }


def test_the_valid_manifest_parses():  # the control for the mutations below
    assert parse(json.dumps(_valid_manifest()).encode()).files[0].path == "config.json"


@FAST
@given(st.binary(max_size=400))
def test_parse_arbitrary_bytes(raw):
    try:
        parse(raw)
    except ManifestError as e:
        assert "\n" not in str(e)


@FAST
@given(json_values)
def test_parse_arbitrary_json(value):
    try:
        parse(json.dumps(value).encode())
    except ManifestError as e:
        assert "\n" not in str(e)


@FAST
@given(st.sampled_from(sorted(_valid_manifest())), json_values, st.booleans())
def test_parse_valid_manifest_with_one_field_replaced(key, value, in_file):
    d = _valid_manifest()
    if in_file:
        d["files"][0][key if key in d["files"][0] else "path"] = value
    else:
        d[key] = value
    try:
        m = parse(json.dumps(d).encode())
    except ManifestError as e:
        assert "\n" not in str(e)
    else:
        assert parse(m.to_json()) == m  # whatever was accepted survives a round trip unchanged


# --- the tar reader --------------------------------------------------------------------------------

_TEMPLATE: dict[str, bytes] = {}


def _template() -> bytes:
    """A real two-file bundle, built once: the seed every mutation starts from."""
    if not _TEMPLATE:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "m"
            (src / "1_Pooling").mkdir(parents=True)
            (src / "config.json").write_text('{"a": 1}\n')
            (src / "1_Pooling" / "config.json").write_text("{}\n")
            (src / "model.safetensors").write_bytes(bytes(range(256)) * 8)
            info = pack_folder(src, repo_id="org/fuzz", out_dir=Path(tmp) / "out")
            _TEMPLATE["bytes"] = info.path.read_bytes()
    return _TEMPLATE["bytes"]


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("zero-block"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("dup-block"), st.integers(0, 10**6), st.just(0)),
)


def _mutate(data: bytes, muts) -> bytes:
    b = bytearray(data)
    for kind, pos, val in muts:
        if not b:
            break
        pos %= len(b)
        if kind == "flip":
            b[pos] ^= val
        elif kind == "truncate":
            del b[pos:]
        elif kind == "insert":
            b[pos:pos] = bytes([val]) * 512
        else:
            start = pos - pos % 512
            block = bytes(512) if kind == "zero-block" else bytes(b[start:start + 512])
            b[start:start + 512] = block
            if kind == "dup-block":
                b[start:start] = block
    return bytes(b)


@SLOW
@given(st.lists(mutation, min_size=1, max_size=3))
def test_mutated_bundles_give_typed_errors_and_verify_agrees_with_install(muts):
    data = _mutate(_template(), muts)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "b.tar"
        bundle.write_bytes(data)
        cache = Path(tmp) / "cache"
        cache.mkdir()
        try:
            ok = verify_bundle(bundle).ok
        except MirrorError as e:
            assert "\n" not in str(e)
            ok = False
        try:
            verify_signature(bundle)
        except MirrorError as e:
            assert "\n" not in str(e)
        try:
            result = install_bundle(bundle, cache_dir=cache)
        except MirrorError as e:
            assert "\n" not in str(e)
            assert not ok, f"verify accepted what install refused: {e}"
            assert not cache_tree(cache), "a failed install left something in the cache"
        else:
            assert ok, "install accepted what verify refused"
            # what landed is exactly what the manifest promised
            for f in verify_bundle(bundle).manifest.files:
                assert hash_file(result.snapshot_dir / f.path).sha256 == f.sha256
        finally:
            shutil.rmtree(cache, ignore_errors=True)
