"""The manifest: canonical bytes, strict parsing, file kinds, path safety, licenses."""

from __future__ import annotations

import json

import pytest

from mirror.errors import ManifestError
from mirror.manifest import (
    FORMAT,
    FileEntry,
    Manifest,
    classify,
    license_from_card,
    parse,
    repo_id_problem,
    unsafe_path_reason,
)

SHA = "a" * 64
SHA1 = "b" * 40
COMMIT = "c" * 40


def entry(path: str, size: int = 3, *, lfs: bool = False) -> FileEntry:
    return FileEntry(path=path, size=size, sha256=SHA, git_sha1=SHA1, lfs=lfs, kind=classify(path))


def manifest(**kw) -> Manifest:
    base = dict(
        repo_id="org/name", repo_type="model", revision="main", commit=COMMIT, source="https://hub.example",
        created_at="2024-05-01T12:00:00Z", license="mit",
        files=(entry("z.json"), entry("model.safetensors", 10, lfs=True), entry("1_Pooling/config.json")),
    )
    base.update(kw)
    return Manifest(**base)


def test_canonical_json_sorts_keys_and_files_and_is_stable():
    m = manifest()
    raw = m.to_json()
    d = json.loads(raw)
    assert list(d) == sorted(d)
    assert [f["path"] for f in d["files"]] == ["1_Pooling/config.json", "model.safetensors", "z.json"]
    assert d["totals"] == {"files": 3, "bytes": 16, "by_kind": {"json": 2, "safetensors": 1}}
    assert raw.endswith(b"}\n") and raw == manifest(files=tuple(reversed(m.files))).to_json()


def test_parse_round_trips_including_extensions():
    m = manifest().with_extra(lineage={"base_model": "org/base", "steps": 3})
    back = parse(m.to_json())
    assert back == parse(back.to_json())
    assert back.extra == {"lineage": {"base_model": "org/base", "steps": 3}}
    assert back.by_path()["model.safetensors"].etag == SHA  # LFS files are named by sha256 in the cache
    assert back.by_path()["z.json"].etag == SHA1  # others by git blob sha1
    assert back.format == FORMAT


def test_parse_accepts_trailing_space_padding():
    raw = manifest().to_json()
    assert parse(raw + b" " * 300) == parse(raw)


def _broken(mutate) -> bytes:
    d = json.loads(manifest().to_json())
    mutate(d)
    return json.dumps(d).encode()


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.update(format="mirror-bundle/99"), "unknown manifest format 'mirror-bundle/99'"),
        (lambda d: d.update(commit="main"), "commit must be 40 lowercase hex"),
        (lambda d: d.update(repo_id="../../etc"), "is not a Hub repo id"),
        (lambda d: d.update(repo_type="space-station"), "repo_type 'space-station'"),
        (lambda d: d["files"][0].update(path="../evil"), "'..' component"),
        (lambda d: d["files"][0].update(path="/etc/passwd"), "is absolute"),
        (lambda d: d["files"][1].update(path=d["files"][0]["path"]), "is listed twice"),
        (lambda d: d["files"][0].update(sha256="XYZ"), "sha256 must be 64 lowercase hex"),
        (lambda d: d["files"][0].update(size="3"), "files[0].size must be int"),
        (lambda d: d["files"][0].update(lfs=1), "files[0].lfs must be bool"),
        (lambda d: d["files"][0].update(surprise=1), "unknown keys ['surprise']"),
        (lambda d: d["totals"].update(bytes=1), "totals disagree"),
        (lambda d: d.pop("files"), "files must be list"),
    ],
)
def test_parse_rejects_bad_manifests_with_one_clear_error(mutate, needle):
    with pytest.raises(ManifestError) as e:
        parse(_broken(mutate), bundle="b.tar")
    assert needle in str(e.value)
    assert str(e.value).startswith("b.tar: ")
    assert "\n" not in str(e.value)


def test_parse_rejects_non_json_and_non_objects():
    with pytest.raises(ManifestError, match="not valid UTF-8 JSON"):
        parse(b"\xff\xfe{")
    with pytest.raises(ManifestError, match="not a JSON object"):
        parse(b"[1, 2]")


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("model.safetensors", "safetensors"),
        ("pytorch_model.bin", "pickle"),
        ("sub/optimizer.pt", "pickle"),
        ("modeling_custom.py", "code"),
        ("1_Pooling/config.json", "json"),
        ("vocab.txt", "text"),
        ("README.md", "text"),
        (".gitattributes", "text"),
        ("spiece.model", "text"),
        ("weights.onnx", "other"),
    ],
)
def test_classify(path, kind):
    assert classify(path) == kind


@pytest.mark.parametrize(
    ("path", "ok"),
    [("a/b.json", True), ("", False), ("/abs", False), ("C:/x", False), ("a/../b", False), ("./a", False), ("a//b", False), ("a\\b", False), ("a\x00b", False)],
)
def test_unsafe_path_reason(path, ok):
    assert (unsafe_path_reason(path) is None) is ok


@pytest.mark.parametrize(("rid", "ok"), [("org/name", True), ("gpt2", True), ("sentence-transformers/all-MiniLM-L6-v2", True), ("a/b/c", False), ("a--b/c", False), ("org/x.git", False), ("", False), ("../x", False)])
def test_repo_id_problem(rid, ok):
    assert (repo_id_problem(rid) is None) is ok


def test_license_from_card():
    assert license_from_card("---\nlicense: apache-2.0\ntags: [x]\n---\n# hi") == "apache-2.0"
    assert license_from_card("---\nlicense: 'mit' # quoted\n---\n") == "mit"
    assert license_from_card("# no front matter\nlicense: mit\n") is None
    assert license_from_card("---\ntags: [x]\n---\n") is None


def test_every_problem_is_listed_in_one_line_in_the_order_of_the_fields():
    def mutate(d):
        d.update(commit="main", license=7)
        d["files"][0].update(size="3", surprise=1, extra=2)
        d["files"][1].update(sha256="0" * 64 + "\n", kind="binary")

    with pytest.raises(ManifestError) as e:
        parse(_broken(mutate), bundle="b.tar")
    assert str(e.value).split(": ", 1)[1].startswith(
        "invalid manifest: commit must be 40 lowercase hex characters; license must be a string or null; "
        "files[0].size must be int; files[0] has unknown keys ['extra', 'surprise']; "
        "files[1].sha256 must be 64 lowercase hex characters; files[1].kind 'binary' is not one of "
    )
