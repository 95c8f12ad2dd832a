"""`mirror pull` against a loopback Hub (tests/fixtures/fake_hub.py) with the real huggingface_hub
client: commit pinning, the Hub's hashes, default excludes, auth, resume, corruption, determinism,
and the full round trip to an offline `from_pretrained`."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from mirror.bundle.codec import iter_payload, read_manifest
from mirror.errors import AuthRequired, HashMismatch, HubError, PolicyError, RepoNotFound, RevisionNotFound, UsageError
from mirror.hub import DEFAULT_EXCLUDES, STAGING_DIR, pull, select_files
from tests.fixtures.fake_hub import FakeHub, git_blob_sha1, lfs_pointer

MiB = 1024 * 1024
WEIGHTS = bytes(range(256)) * 400  # 100 KiB, stands in for safetensors weights
README = b"---\nlicense: mit\ntags: [test]\n---\n# A test model\n"
FILES = {
    "README.md": README,
    "config.json": b'{"model_type": "bert", "hidden_size": 32}\n',
    "model.safetensors": WEIGHTS,
    "tokenizer.json": b'{"version": "1.0"}\n',
    "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}\n',
}


@pytest.fixture(autouse=True)
def hermetic(tmp_path, monkeypatch):
    """No stored token, no endpoint, no offline switch and no cache from the outside world."""
    import huggingface_hub.constants as hf_constants

    for var in ("HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    # huggingface_hub read these at import time; another test may have switched them
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))
    monkeypatch.setattr(hf_constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf_home" / "stored_tokens"))


@pytest.fixture
def hub():
    with FakeHub() as h:
        yield h


def payload(bundle: Path) -> dict[str, bytes]:
    return {name.removeprefix("files/"): b"".join(chunks) for name, entry, chunks in iter_payload(bundle) if entry is not None}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(out: Path) -> list[str]:
    """Everything in out_dir that a reader could mistake for a bundle."""
    return sorted(p.name for p in out.iterdir() if p.name != STAGING_DIR)


# --- the loopback Hub itself ----------------------------------------------------------------------


def test_fake_hub_answers_like_the_hub(hub, tmp_path):
    """The fixture's fidelity, through the real client: metadata headers, 404 codes, ranges."""
    import urllib.error
    import urllib.request

    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import RemoteEntryNotFoundError

    commit = hub.add_repo("org/tiny", FILES).head.sha

    def url(path: str) -> str:
        return hf_hub_url("org/tiny", path, revision=commit, endpoint=hub.url)

    regular = get_hf_file_metadata(url("config.json"))
    assert (regular.commit_hash, regular.etag, regular.size) == (commit, git_blob_sha1(FILES["config.json"]), len(FILES["config.json"]))
    lfs = get_hf_file_metadata(url("model.safetensors"))
    assert (lfs.etag, lfs.size) == (sha256(WEIGHTS), len(WEIGHTS))
    assert lfs.location.startswith(f"http://localhost:{hub.port}/_cdn/{sha256(WEIGHTS)}?")

    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("org/tiny", "nope.json", revision=commit, endpoint=hub.url, local_dir=tmp_path / "dl")

    ranged = urllib.request.Request(lfs.location, headers={"Range": "bytes=100-199"})
    with urllib.request.urlopen(ranged) as r:
        assert (r.status, r.headers["Content-Range"], r.read()) == (206, f"bytes 100-199/{len(WEIGHTS)}", WEIGHTS[100:200])
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(urllib.request.Request(lfs.location, headers={"Range": f"bytes={len(WEIGHTS)}-"}))
    assert bad.value.code == 416
    with pytest.raises(urllib.error.HTTPError) as unsigned:
        urllib.request.urlopen(lfs.location.replace("sig=", "sig=0"))
    assert unsigned.value.code == 403


# --- what a pull writes ---------------------------------------------------------------------------


def test_pull_bundles_the_commit_with_the_hubs_hashes(hub, tmp_path):
    repo = hub.add_repo("org/tiny", FILES, date=datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc))
    commit = repo.head.sha
    info = pull("org/tiny", out_dir=tmp_path / "out", endpoint=hub.url, progress=False)

    assert info.path == tmp_path / "out" / f"org--tiny--{commit[:12]}.tar"
    assert leftovers(tmp_path / "out") == [info.path.name, info.path.name + ".sha256"]
    assert not (tmp_path / "out" / STAGING_DIR).exists()  # staging removed after success
    assert (tmp_path / "out" / (info.path.name + ".sha256")).read_text() == f"{info.sha256}  {info.path.name}\n"
    assert sha256(info.path.read_bytes()) == info.sha256

    m = read_manifest(info.path)
    assert (m.repo_id, m.repo_type, m.revision, m.commit) == ("org/tiny", "model", "main", commit)
    assert m.source == hub.url
    assert m.created_at == "2024-05-06T07:08:09Z"  # the commit's date, not the pull's
    assert m.license == "mit"
    entries = m.by_path()
    assert sorted(entries) == sorted(FILES)
    for path, data in FILES.items():
        e = entries[path]
        # the tree's oid: of the content for a regular file, of the LFS pointer for an LFS file
        git = git_blob_sha1(lfs_pointer(sha256(data), len(data)) if e.lfs else data)
        assert (e.size, e.sha256, e.git_sha1) == (len(data), sha256(data), git), path
    assert entries["model.safetensors"].lfs and entries["model.safetensors"].kind == "safetensors"
    assert not entries["config.json"].lfs and entries["1_Pooling/config.json"].kind == "json"
    assert payload(info.path) == FILES


def test_revision_is_pinned_to_a_commit_before_any_download(hub, tmp_path):
    repo = hub.add_repo("org/tiny", FILES)
    first = repo.head.sha
    repo.tag("v1")
    second = repo.commit({**FILES, "config.json": b'{"hidden_size": 64}\n'})

    by_tag = pull("org/tiny", revision="v1", out_dir=tmp_path / "a", endpoint=hub.url, progress=False)
    assert (by_tag.manifest.revision, by_tag.manifest.commit) == ("v1", first)
    assert payload(by_tag.path)["config.json"] == FILES["config.json"]

    by_sha = pull("org/tiny", revision=second, out_dir=tmp_path / "b", endpoint=hub.url, progress=False)
    assert by_sha.manifest.commit == second
    assert payload(by_sha.path)["config.json"] == b'{"hidden_size": 64}\n'

    # after the one call that resolves the revision, every request names the commit itself
    after_info = [r for r in hub.requests if r.kind in ("tree", "resolve")]
    assert after_info and all(f"/{first}" in r.url or f"/{second}" in r.url for r in after_info)
    assert [r.url for r in hub.requests if r.kind == "info"] == ["/api/models/org/tiny/revision/v1", f"/api/models/org/tiny/revision/{second}"]


def test_lfs_files_come_from_the_cdn_redirect(hub, tmp_path):
    hub.add_repo("org/tiny", FILES)
    pull("org/tiny", out_dir=tmp_path / "out", endpoint=hub.url, progress=False)
    served = {(r.kind, r.file) for r in hub.requests if r.method == "GET" and r.status == 200 and r.file}
    assert ("cdn", "model.safetensors") in served and ("resolve", "model.safetensors") not in served
    assert ("resolve", "config.json") in served


def test_tree_listing_is_followed_across_pages(tmp_path):
    with FakeHub(tree_page_size=2) as hub:
        hub.add_repo("org/tiny", FILES)
        info = pull("org/tiny", out_dir=tmp_path / "out", endpoint=hub.url, progress=False)
        assert sorted(p.path for p in info.manifest.files) == sorted(FILES)
        assert sum(r.kind == "tree" for r in hub.requests) == 3  # 6 entries (5 files, 1 folder), 2 a page


def test_endpoint_defaults_to_hf_endpoint(hub, tmp_path, monkeypatch):
    hub.add_repo("org/tiny", FILES)
    monkeypatch.setenv("HF_ENDPOINT", hub.url + "/")
    info = pull("org/tiny", out_dir=tmp_path / "out", progress=False)
    assert info.manifest.source == hub.url


def test_same_commit_gives_a_byte_identical_bundle(hub, tmp_path):
    hub.add_repo("org/tiny", FILES)
    a = pull("org/tiny", out_dir=tmp_path / "a", endpoint=hub.url, progress=False)
    b = pull("org/tiny", out_dir=tmp_path / "b", endpoint=hub.url, workers=1, progress=False)
    assert a.sha256 == b.sha256
    assert a.path.read_bytes() == b.path.read_bytes()


def test_dataset_repo(hub, tmp_path):
    files = {
        "README.md": b"---\nlicense: cc-by-4.0\n---\n# data\n",
        "data/train.parquet": b"PAR1" + bytes(5000) + b"PAR1",
        "data/test.jsonl": b'{"text": "a", "label": 0}\n',
    }
    repo = hub.add_repo("org/data", files, repo_type="dataset")
    info = pull("org/data", repo_type="dataset", out_dir=tmp_path / "out", endpoint=hub.url, progress=False)
    assert info.path.name == f"datasets--org--data--{repo.head.sha[:12]}.tar"
    m = info.manifest
    assert (m.repo_type, m.license) == ("dataset", "cc-by-4.0")
    assert m.by_path()["data/train.parquet"].lfs and not m.by_path()["data/test.jsonl"].lfs
    assert payload(info.path) == files
    assert {r.url.split("/")[1] for r in hub.requests if r.kind in ("info", "tree", "resolve")} <= {"api", "datasets"}
    assert any(r.url.startswith("/datasets/org/data/resolve/") for r in hub.requests)


# --- file selection -------------------------------------------------------------------------------


REDUNDANT = {
    "pytorch_model.bin": b"pickle weights",
    "tf_model.h5": b"hdf5 weights",
    "flax_model.msgpack": b"flax weights",
    "rust_model.ot": b"rust weights",
    "onnx/model.onnx": b"onnx weights",
    "openvino/openvino_model.xml": b"<xml/>",
}


def test_select_files_rules():
    paths = ["config.json", "model.safetensors", *REDUNDANT, "1_Pooling/config.json"]
    kept, skipped = select_files(paths)
    assert kept == ["1_Pooling/config.json", "config.json", "model.safetensors"]
    assert skipped == sorted(REDUNDANT)
    # without safetensors weights, the pickle ones are the weights: nothing is dropped
    assert select_files(["config.json", "pytorch_model.bin"])[0] == ["config.json", "pytorch_model.bin"]
    # include narrows; an include pattern overrides a default exclude; exclude adds to defaults
    assert select_files(paths, include=["*.json"])[0] == ["1_Pooling/config.json", "config.json"]
    assert select_files(paths, include=["onnx/", "*.safetensors"])[0] == ["model.safetensors", "onnx/model.onnx"]
    assert select_files(paths, include=["*"])[0] == sorted(paths)
    assert select_files(paths, exclude=["1_Pooling/*"])[0] == ["config.json", "model.safetensors"]
    assert select_files(paths, include=None, exclude=None) == select_files(paths)
    assert "*.bin" in DEFAULT_EXCLUDES and "onnx/*" in DEFAULT_EXCLUDES


def test_default_excludes_skip_redundant_weights_without_downloading_them(hub, tmp_path):
    hub.add_repo("org/multi", {**FILES, **REDUNDANT})
    info = pull("org/multi", out_dir=tmp_path / "out", endpoint=hub.url, progress=False)
    assert sorted(f.path for f in info.manifest.files) == sorted(FILES)
    assert all(hub.downloads("org/multi", p) == 0 for p in REDUNDANT)
    assert not [r for r in hub.requests if r.file in REDUNDANT]


def test_include_and_exclude_globs(hub, tmp_path):
    hub.add_repo("org/multi", {**FILES, **REDUNDANT})
    only_json = pull("org/multi", include=["*.json"], exclude=["tokenizer.json"], out_dir=tmp_path / "a", endpoint=hub.url, progress=False)
    assert sorted(f.path for f in only_json.manifest.files) == ["1_Pooling/config.json", "config.json"]
    assert only_json.manifest.license is None  # README.md was not pulled
    # an include brings the pickle weights back, so the safetensors-only policy refuses the pull
    # before downloading anything (docs/security.md; --allow-pickle scans instead)
    with pytest.raises(PolicyError, match="pytorch_model.bin"):
        pull("org/multi", include=["*.bin", "*.json"], out_dir=tmp_path / "b", endpoint=hub.url, progress=False)
    assert not [r for r in hub.requests if r.kind in ("resolve", "cdn") and r.file == "pytorch_model.bin"]


def test_patterns_matching_nothing_fail_before_downloading(hub, tmp_path):
    hub.add_repo("org/tiny", FILES)
    with pytest.raises(UsageError, match="no file of org/tiny") as exc:
        pull("org/tiny", include=["*.gguf"], out_dir=tmp_path / "out", endpoint=hub.url, progress=False)
    assert "\n" not in str(exc.value)
    assert not [r for r in hub.requests if r.kind == "resolve"]
    assert not (tmp_path / "out").exists() or leftovers(tmp_path / "out") == []


# --- errors ---------------------------------------------------------------------------------------


def test_missing_repo_revision_and_bad_id(hub, tmp_path):
    hub.add_repo("org/tiny", FILES)
    out = tmp_path / "out"
    with pytest.raises(RepoNotFound, match="'org/nope' was not found") as exc:
        pull("org/nope", out_dir=out, endpoint=hub.url, progress=False)
    assert exc.value.exit_code == 3 and "\n" not in str(exc.value)
    with pytest.raises(RevisionNotFound, match="revision 'v9' of 'org/tiny'"):
        pull("org/tiny", revision="v9", out_dir=out, endpoint=hub.url, progress=False)
    with pytest.raises(RepoNotFound):  # the dataset namespace is separate
        pull("org/tiny", repo_type="dataset", out_dir=out, endpoint=hub.url, progress=False)
    with pytest.raises(UsageError, match="not a Hub repo id"):
        pull("../etc", out_dir=out, endpoint=hub.url, progress=False)
    with pytest.raises(UsageError, match="not an http"):
        pull("org/tiny", out_dir=out, endpoint="ftp://example", progress=False)
    assert not out.exists() or leftovers(out) == []


def test_unreachable_endpoint_is_a_hub_error(tmp_path):
    with FakeHub() as h:
        dead = h.url  # a port that was just listening and is now closed
    with pytest.raises(HubError, match="could not reach") as exc:
        pull("org/tiny", out_dir=tmp_path / "out", endpoint=dead, progress=False)
    assert "\n" not in str(exc.value)


def test_file_listed_but_missing_on_the_hub(hub, tmp_path):
    hub.add_repo("org/tiny", FILES)
    hub.fail("org/tiny", "tokenizer.json", status=404, code="EntryNotFound", head=True)
    out = tmp_path / "out"
    with pytest.raises(HubError, match="lists tokenizer.json in org/tiny but answers 404"):
        pull("org/tiny", out_dir=out, endpoint=hub.url, progress=False)
    assert leftovers(out) == []


PLANTED = "hf_PLANTEDtokenZ9q8w7e6r5t4y3u2i1o0"


def _no_token_anywhere(out: Path, exc: BaseException | None, captured) -> None:
    seen = [captured.out, captured.err]
    while exc is not None:
        seen += [str(exc), repr(exc)]
        exc = exc.__cause__ or exc.__context__
    assert not any(PLANTED in s for s in seen)
    for p in out.rglob("*") if out.exists() else ():
        if p.is_file():
            assert PLANTED.encode() not in p.read_bytes(), p


def test_private_repo_needs_its_token_which_is_never_written_or_shown(hub, tmp_path, capfd):
    hub.add_repo("org/secret", FILES, private=True, token=PLANTED)
    out = tmp_path / "out"

    with pytest.raises(RepoNotFound, match="--token") as anonymous:
        pull("org/secret", out_dir=out, endpoint=hub.url, progress=False)
    assert [r.status for r in hub.requests] == [401]

    # a valid token without access: the Hub does not confirm that the repo exists
    hub.add_repo("org/other", FILES, private=True, token="hf_someone_else")
    with pytest.raises(RepoNotFound):
        pull("org/secret", out_dir=out, endpoint=hub.url, token="hf_someone_else", progress=False)
    with pytest.raises(AuthRequired, match="pass --token or set HF_TOKEN") as wrong:
        pull("org/secret", out_dir=out, endpoint=hub.url, token="hf_not_a_token_at_all", progress=False)

    before = len(hub.requests)
    info = pull("org/secret", out_dir=out, endpoint=hub.url, token=PLANTED, progress=True)
    assert payload(info.path) == FILES
    # the token went to the Hub, never to the CDN host serving the LFS bytes
    hub_side = [r for r in hub.requests[before:] if r.kind != "cdn"]
    assert len(hub_side) == 2 + 2 * len(FILES) - 1 and all(r.authorized for r in hub_side)
    assert [r.authorized for r in hub.requests[before:] if r.kind == "cdn"] == [False]

    captured = capfd.readouterr()
    for exc in (anonymous.value, wrong.value, None):
        _no_token_anywhere(out, exc, captured)
    assert PLANTED.encode() not in info.path.read_bytes()


def test_gated_repo_without_access_is_auth_required(hub, tmp_path):
    hub.add_repo("org/gated", FILES, gated=True, token=PLANTED)
    with pytest.raises(AuthRequired, match="needs authentication"):
        pull("org/gated", out_dir=tmp_path / "out", endpoint=hub.url, progress=False)
    assert leftovers(tmp_path / "out") == []
    info = pull("org/gated", out_dir=tmp_path / "out", endpoint=hub.url, token=PLANTED, progress=False)
    assert payload(info.path) == FILES


# --- resilience -----------------------------------------------------------------------------------


def test_connection_dropped_mid_file_is_resumed_with_range(hub, tmp_path):
    # huggingface_hub writes in 10 MiB chunks, so it can resume only past the first one
    big = hashlib.shake_256(b"weights").digest(12 * MiB)
    hub.add_repo("org/big", {"config.json": b"{}", "model.safetensors": big})
    hub.drop_after("org/big", "model.safetensors", 11 * MiB)
    info = pull("org/big", out_dir=tmp_path / "out", endpoint=hub.url, progress=False)

    gets = [r for r in hub.requests if r.method == "GET" and r.file == "model.safetensors"]
    assert [(r.status, r.range) for r in gets] == [(200, None), (206, f"bytes={10 * MiB}-")]
    assert info.manifest.by_path()["model.safetensors"].sha256 == sha256(big)
    assert payload(info.path)["model.safetensors"] == big


def test_interrupted_pull_resumes_without_refetching_finished_files(hub, tmp_path):
    hub.add_repo("org/tiny", FILES)
    hub.fail("org/tiny", "model.safetensors", status=503)
    out = tmp_path / "out"
    with pytest.raises(HubError, match="HTTP 503 for model.safetensors of org/tiny"):
        pull("org/tiny", out_dir=out, endpoint=hub.url, progress=False)
    assert leftovers(out) == []  # no bundle, only the hidden staging folder
    first_run = len(hub.requests)

    info = pull("org/tiny", out_dir=out, endpoint=hub.url, progress=False)
    assert payload(info.path) == FILES
    refetched = {r.file for r in hub.requests[first_run:] if r.file}
    assert refetched == {"model.safetensors"}  # finished files: not even a HEAD
    assert {p: hub.downloads("org/tiny", p) for p in FILES} == {p: 1 for p in FILES}


@pytest.mark.parametrize(("path", "algorithm"), [("model.safetensors", "sha256"), ("config.json", "git sha1")])
def test_corrupted_bytes_are_caught_by_the_hubs_hash(hub, tmp_path, path, algorithm):
    hub.add_repo("org/tiny", FILES)
    hub.corrupt("org/tiny", path)
    out = tmp_path / "out"
    with pytest.raises(HashMismatch) as exc:
        pull("org/tiny", out_dir=out, endpoint=hub.url, progress=False)
    assert (exc.value.path, exc.value.algorithm) == (path, algorithm)
    assert str(exc.value).startswith(f"{path}: {algorithm} mismatch")
    assert leftovers(out) == []  # no bundle, no .partial, no sidecar
    staged = next((out / STAGING_DIR).iterdir())
    assert not (staged / path).exists()  # the bad copy is gone, so a rerun fetches it again

    hub.clear_faults()
    info = pull("org/tiny", out_dir=out, endpoint=hub.url, progress=False)
    assert payload(info.path) == FILES
    assert hub.downloads("org/tiny", path) == 2
    assert all(hub.downloads("org/tiny", p) == 1 for p in FILES if p != path)


# --- round trip -----------------------------------------------------------------------------------


def _folder_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_round_trip_pull_verify_install_load_offline(hub, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants
    import torch
    from transformers import AutoModel

    from mirror.install import install_bundle
    from mirror.verify import verify_bundle
    from trainer.tiny import tiny_bert

    src = tiny_bert(tmp_path / "src")
    files = _folder_files(src)
    # the Hub repo also carries a pickle copy of the weights, which the default excludes skip
    repo = hub.add_repo("acme/tiny-bert", {**files, "pytorch_model.bin": b"not really a pickle"})
    info = pull("acme/tiny-bert", out_dir=tmp_path / "bundles", endpoint=hub.url, progress=False)
    assert "pytorch_model.bin" not in info.manifest.by_path()
    assert info.manifest.license == "apache-2.0"

    report = verify_bundle(info.path)
    assert report.ok, report.lines()
    assert report.bundle_sha256 == info.sha256

    cache = tmp_path / "sandbox-cache"
    result = install_bundle(info.path, cache_dir=cache)
    assert result.commit == repo.head.sha

    hub.stop()  # the sandbox has no Hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    loaded = AutoModel.from_pretrained("acme/tiny-bert")
    original = AutoModel.from_pretrained(src)
    want = original.state_dict()
    got = loaded.state_dict()
    assert sorted(got) == sorted(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


# --- the command line -----------------------------------------------------------------------------


def test_cli_pull_prints_the_bundle_path_last(hub, tmp_path):
    from mirror.cli import cli

    hub.add_repo("org/tiny", FILES)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["pull", "org/tiny", "--endpoint", hub.url, "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    last = res.stdout.strip().splitlines()[-1]
    assert Path(last) == out / f"org--tiny--{hub.repos[('model', 'org/tiny')].head.sha[:12]}.tar"
    assert Path(last).is_file()


def test_cli_pull_errors_are_one_line(hub, tmp_path):
    from mirror.cli import cli

    hub.add_repo("org/secret", FILES, private=True, token=PLANTED)
    out = tmp_path / "out"
    runner = CliRunner()
    missing = runner.invoke(cli, ["pull", "org/nope", "--endpoint", hub.url, "--out", str(out)])
    assert missing.exit_code == 3
    assert missing.stderr.count("\n") == 1 and missing.stderr.startswith("mirror: error: repository 'org/nope' was not found")
    assert "Traceback" not in missing.output and missing.stdout == ""

    wrong = runner.invoke(cli, ["pull", "org/secret", "--endpoint", hub.url, "--out", str(out), "--token", "hf_bad"])
    assert wrong.exit_code == 3 and wrong.stderr.count("\n") == 1

    hub.corrupt("org/secret", "model.safetensors")
    corrupt = runner.invoke(cli, ["pull", "org/secret", "--endpoint", hub.url, "--out", str(out)], env={"HF_TOKEN": PLANTED})
    assert corrupt.exit_code == 4
    assert corrupt.stderr.startswith("mirror: error: model.safetensors: sha256 mismatch")
    assert PLANTED not in corrupt.output
    assert leftovers(out) == []
