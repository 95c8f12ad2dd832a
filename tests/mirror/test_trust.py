"""The trust promise, attacked through the CLI: a snapshot installed at commit C holds exactly the
bytes its manifest names, and nothing a later bundle, a shared cache or an interruption changes
that silently (issue "Trust by content"; docs/security.md)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from mirror.bundle import is_lfs
from mirror.bundle.write.driver import write_bundle
from mirror.hashing import hash_file
from mirror.manifest import FileEntry, classify
from tests.fixtures.cachetree import tree
from tests.fixtures.procs import default_signals
from tests.mirror.test_cli import assert_one_line_error, run

C = "c" * 40
REPO = "org/model"


def entry(root: Path, path: str) -> FileEntry:
    size = (root / path).stat().st_size
    lfs = is_lfs(path, size)
    d = hash_file(root / path, lfs=lfs)
    return FileEntry(path=path, size=size, sha256=d.sha256, git_sha1=d.git_sha1, lfs=lfs, kind=classify(path))


def folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def bundle(src: Path, out: Path, *, commit: str = C, revision: str = "main", extra=None, paths=None, repo_id: str = REPO) -> Path:
    return write_bundle(src_root=src, repo_id=repo_id, revision=revision, commit=commit, source="https://hub.example",
                        created_at="2024-05-01T12:00:00Z", license=None, out_dir=out, extra=extra, paths=paths).path


def delta(src: Path, out: Path, *, commit: str, base: str, carried: list[str], target: list[FileEntry]) -> Path:
    section = {
        "format": "mirror-delta/1",
        "base": {"repo_id": REPO, "repo_type": "model", "commit": base, "revision": "main", "bundle": None, "bundle_sha256": None},
        "target_files": [asdict(f) for f in sorted(target, key=lambda f: f.path)],
        "removed": [],
    }
    return bundle(src, out, commit=commit, extra={"delta": section}, paths=carried)


V1 = {"config.json": b'{"hidden": 4}\n', "model.safetensors": os.urandom(50_000), "README.md": b"# model\n"}


@pytest.fixture
def installed(tmp_path):
    """org/model at commit C, installed from a genuine bundle."""
    src = folder(tmp_path / "v1", V1)
    b = bundle(src, tmp_path / "out")
    cache = tmp_path / "cache"
    r = run("install", b, "--cache-dir", cache)
    assert r.exit_code == 0, r.output
    snap = cache / "models--org--model" / "snapshots" / C
    return cache, snap, src


def snapshot_bytes(snap: Path) -> dict[str, bytes]:
    return {p.relative_to(snap).as_posix(): p.read_bytes() for p in snap.rglob("*") if p.is_file()}


# --- an installed commit is immutable ------------------------------------------------------------


def test_a_forged_bundle_cannot_rewrite_an_installed_commit(installed, tmp_path):
    cache, snap, _ = installed
    before = tree(cache)
    forged = folder(tmp_path / "forged", {**V1, "model.safetensors": os.urandom(60_000), "extra.py": b"import os\n"})
    fb = bundle(forged, tmp_path / "forged-out")
    assert run("verify", fb).exit_code == 0  # internally consistent: only the cache knows better
    r = run("install", fb, "--cache-dir", cache)
    assert_one_line_error(r, 4, f"claims {REPO}@{C[:12]}, which is installed with other content: model.safetensors")
    assert tree(cache) == before and snapshot_bytes(snap) == V1


def test_an_extra_file_alone_cannot_be_slipped_into_an_installed_commit(installed, tmp_path):
    cache, snap, _ = installed
    before = tree(cache)
    forged = folder(tmp_path / "forged", {**V1, "tokenizer.json": b"{}"})
    r = run("install", bundle(forged, tmp_path / "o"), "--cache-dir", cache)
    assert_one_line_error(r, 4, "tokenizer.json is in the bundle, not in the installed commit")
    assert tree(cache) == before
    # a bundle with only some of the commit's files (pulled with --include) changes nothing
    fewer = folder(tmp_path / "fewer", {k: v for k, v in V1.items() if k != "README.md"})
    r = run("install", bundle(fewer, tmp_path / "o2"), "--cache-dir", cache)
    assert r.exit_code == 0 and "already installed" in r.stderr, r.output
    assert tree(cache) == before


def test_the_same_bundle_again_is_already_installed_after_checking_every_blob(installed, tmp_path):
    cache, snap, src = installed
    r = run("install", bundle(src, tmp_path / "again"), "--cache-dir", cache)
    assert r.exit_code == 0 and "already installed" in r.stderr


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_blob_is_repaired_and_the_output_says_so(installed, tmp_path, damage):
    cache, snap, src = installed
    blob = (snap / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    if damage == "flip":
        data[1000] ^= 1
    else:
        del data[-100:]
    blob.write_bytes(bytes(data))
    r = run("install", bundle(src, tmp_path / "again"), "--cache-dir", cache)
    assert r.exit_code == 0, r.output
    assert "repaired: model.safetensors" in r.stderr and "already installed" not in r.stderr
    assert snapshot_bytes(snap) == V1


# --- deltas obey the same rules --------------------------------------------------------------------


def test_a_delta_onto_its_own_base_commit_is_refused(installed, tmp_path):
    cache, snap, src = installed
    new = folder(tmp_path / "v2", {**V1, "model.safetensors": os.urandom(50_000)})
    target = [entry(new, p) for p in V1]
    d = delta(new, tmp_path / "d", commit=C, base=C, carried=["model.safetensors"], target=target)
    before = tree(cache)
    assert_one_line_error(run("install", d, "--cache-dir", cache), 10, f"target commit {C[:12]} is its own base commit")
    assert tree(cache) == before and snapshot_bytes(snap) == V1


def test_a_delta_onto_an_installed_commit_with_other_content_is_refused(installed, tmp_path):
    cache, snap, src = installed
    base2 = "b" * 40
    assert run("install", bundle(src, tmp_path / "b2", commit=base2, revision=base2), "--cache-dir", cache).exit_code == 0
    new = folder(tmp_path / "v2", {**V1, "model.safetensors": os.urandom(50_000)})
    d = delta(new, tmp_path / "d", commit=C, base=base2, carried=["model.safetensors"], target=[entry(new, p) for p in V1])
    assert_one_line_error(run("install", d, "--cache-dir", cache), 4, "which is installed with other content: model.safetensors")
    assert snapshot_bytes(snap) == V1


def test_a_delta_cannot_smuggle_a_pickle_through_target_files(tmp_path):
    """A first bundle installs pickle bytes under an innocent name; a delta lists
    pytorch_model.bin in target_files pointing at that blob. Refused by name (default policy),
    and with --allow-pickle because its base does not hold that file."""
    cache = tmp_path / "cache"
    pickle_bytes = b"\x80\x04cposix\nsystem\n(S'id'\ntR."
    base_src = folder(tmp_path / "base", {"config.json": b"{}", "notes/data.txt": pickle_bytes})
    assert run("install", bundle(base_src, tmp_path / "b"), "--cache-dir", cache).exit_code == 0
    new = folder(tmp_path / "new", {"config.json": b'{"v": 2}'})
    smuggled = FileEntry(path="pytorch_model.bin", size=len(pickle_bytes), sha256=hashlib.sha256(pickle_bytes).hexdigest(),
                         git_sha1=entry(base_src, "notes/data.txt").git_sha1, lfs=False, kind="other")
    d = delta(new, tmp_path / "d", commit="d" * 40, base=C, carried=["config.json"], target=[entry(new, "config.json"), smuggled])
    r = run("install", d, "--cache-dir", cache)
    assert_one_line_error(r, 6, "pytorch_model.bin")
    r = run("install", d, "--cache-dir", cache, "--allow-pickle")
    assert_one_line_error(r, 10, "does not carry pytorch_model.bin, and its base")
    assert not (cache / "models--org--model" / "snapshots" / ("d" * 40)).exists()
    r = run("audit", d, "--format", "json")
    assert '"pytorch_model.bin"' in r.output  # audit judges the delta's complete file list


def test_case_colliding_target_files_are_refused(installed, tmp_path):
    cache, snap, src = installed
    new = folder(tmp_path / "v2", {"Config.json": b"{}"})
    target = [entry(src, p) for p in V1] + [entry(new, "Config.json")]
    d = delta(new, tmp_path / "d", commit="e" * 40, base=C, carried=["Config.json"], target=target)
    assert_one_line_error(run("install", d, "--cache-dir", cache), 10, "collide on a case-insensitive filesystem")


# --- links planted in a shared cache ---------------------------------------------------------------


@pytest.mark.parametrize("where", ["refs", "snapshots", "commit", "inner"])
def test_planted_links_are_refused_with_their_path(tmp_path, where):
    src = folder(tmp_path / "src", {**V1, "sub/inner.json": b"{}"})
    b = bundle(src, tmp_path / "out")
    cache = tmp_path / "cache"
    repo = cache / "models--org--model"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("precious")
    (repo / "blobs").mkdir(parents=True)
    if where == "refs":
        os.symlink(outside, repo / "refs")
        needle = "refs/ is a symbolic link"
    elif where == "snapshots":
        os.symlink(outside, repo / "snapshots")
        needle = "snapshots/ is a symbolic link"
    elif where == "commit":
        (repo / "snapshots").mkdir()
        os.symlink(outside, repo / "snapshots" / C)
        needle = f"snapshot folder {C[:12]} is a symbolic link"
    else:
        (repo / "snapshots" / C).mkdir(parents=True)
        os.symlink(outside, repo / "snapshots" / C / "sub")
        needle = "a folder inside a snapshot is a symbolic link"
    r = run("install", b, "--cache-dir", cache)
    assert_one_line_error(r, 9, needle)
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"] and (outside / "keep.txt").read_text() == "precious"


def test_a_symlinked_blobs_folder_stays_allowed(tmp_path):
    src = folder(tmp_path / "src", V1)
    cache = tmp_path / "cache"
    elsewhere = tmp_path / "big-disk"
    elsewhere.mkdir()
    (cache / "models--org--model").mkdir(parents=True)
    os.symlink(elsewhere, cache / "models--org--model" / "blobs")
    r = run("install", bundle(src, tmp_path / "out"), "--cache-dir", cache)
    assert r.exit_code == 0, r.output
    assert snapshot_bytes(cache / "models--org--model" / "snapshots" / C) == V1
    assert len(list(elsewhere.iterdir())) == 3


# --- signatures and transfer tickets tie install to what was published -----------------------------


@pytest.fixture
def keys(tmp_path):
    (tmp_path / "k").mkdir()
    for name in ("good", "other"):
        assert run("keygen", tmp_path / "k" / name).exit_code == 0
    return tmp_path / "k"


def test_install_with_public_key_requires_a_valid_signature_over_what_it_installs(tmp_path, keys, monkeypatch):
    src = folder(tmp_path / "src", V1)
    b = bundle(src, tmp_path / "out")
    cache = tmp_path / "cache"
    assert_one_line_error(run("install", b, "--cache-dir", cache, "--public-key", keys / "good.pub"), 5, "the bundle is not signed")
    assert run("sign", b, "--key", keys / "other.pem").exit_code == 0
    assert_one_line_error(run("install", b, "--cache-dir", cache, "--public-key", keys / "good.pub"), 5, "signature required and not valid")
    assert not (cache / "models--org--model" / "snapshots").exists()
    assert run("sign", b, "--key", keys / "good.pem").exit_code == 0
    r = run("install", b, "--cache-dir", cache, "--public-key", keys / "other.pub", "--public-key", keys / "good.pub")
    assert r.exit_code == 0 and "signed by key sha256:" in r.stderr, r.output
    # already installed: the signature is still required, over this bundle's manifest
    r = run("install", b, "--cache-dir", cache, "--public-key", keys / "good.pub")
    assert r.exit_code == 0 and "already installed" in r.stderr and "signed by key sha256:" in r.stderr, r.output
    assert_one_line_error(run("install", b, "--cache-dir", cache, "--public-key", keys / "other.pub"), 5, "signature required and not valid")
    # the site policy: the environment makes a signature mandatory, whatever the command line says
    unsigned = bundle(folder(tmp_path / "src2", {"a.json": b"{}"}), tmp_path / "out2", commit="a" * 40, repo_id="org/other")
    monkeypatch.setenv("MIRROR_TRUSTED_KEYS", str(keys / "good.pub"))
    assert_one_line_error(run("install", unsigned, "--cache-dir", cache), 5, "the bundle is not signed")
    monkeypatch.setenv("MIRROR_TRUSTED_KEYS", str(tmp_path / "missing.pub"))
    assert_one_line_error(run("install", unsigned, "--cache-dir", cache), 2, "MIRROR_TRUSTED_KEYS")


def test_install_sha256_pins_the_bundle_from_a_transfer_ticket(tmp_path):
    src = folder(tmp_path / "src", V1)
    b = bundle(src, tmp_path / "out")
    good = b.with_name(b.name + ".sha256").read_text().split()[0]
    cache = tmp_path / "cache"
    assert_one_line_error(run("install", b, "--cache-dir", cache, "--sha256", "0" * 64), 4, f"bundle sha256 mismatch against --sha256 (the transfer ticket) (expected {'0' * 64}, got {good})")
    assert not (cache / "models--org--model" / "snapshots").exists()
    assert run("install", b, "--cache-dir", cache, "--sha256", good.upper()).exit_code == 0


# --- concurrency and interruptions -----------------------------------------------------------------


def _mirror(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mirror", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_signals, **kw)


def test_concurrent_installs_of_one_repo_are_safe_and_refs_main_follows_the_rule(tmp_path):
    shared = os.urandom(400_000)
    bundles = []
    for i, rev in enumerate(["main", "v1", "v2", "main"]):
        src = folder(tmp_path / f"s{i}", {"model.safetensors": shared, "config.json": b'{"i": %d}' % i})
        bundles.append((bundle(src, tmp_path / f"o{i}", commit=f"{i + 1}" * 40, revision=rev), rev))
    fifth = bundle(folder(tmp_path / "s5", {"model.safetensors": shared, "config.json": b'{"i": 5}'}), tmp_path / "o5", commit="5" * 40, revision="v5")
    corrupt = bytearray(fifth.read_bytes())
    corrupt[-10240 - 30] ^= 1  # inside model.safetensors: a failing install sharing its blob with the others
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(corrupt))
    cache = tmp_path / "cache"
    procs = [_mirror("install", b, "--cache-dir", cache) for b, _ in bundles] + [_mirror("install", bad, "--cache-dir", cache)]
    codes = [p.wait(timeout=120) for p in procs]
    assert codes[:4] == [0, 0, 0, 0] and codes[4] != 0, [p.stderr.read() for p in procs]
    repo = cache / "models--org--model"
    for i in range(4):
        assert (repo / "snapshots" / (f"{i + 1}" * 40) / "model.safetensors").read_bytes() == shared
    assert (repo / "refs" / "main").read_text() in ("1" * 40, "4" * 40)  # only a revision-main bundle moves it
    assert (repo / "refs" / "v1").read_text() == "2" * 40 and (repo / "refs" / "v2").read_text() == "3" * 40
    assert not [p for p in repo.rglob("*") if ".incomplete" in p.name or ".staging" in p.name]
    assert not (repo / "snapshots" / ("5" * 40)).exists() and not (repo / "refs" / "v5").exists()


def _big_bundle(tmp_path: Path) -> Path:
    src = folder(tmp_path / "big", {f"model-{i}.safetensors": os.urandom(40_000_000) for i in range(4)})
    return bundle(src, tmp_path / "bigout")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_during_install_leaves_nothing_behind(tmp_path, sig):
    b = _big_bundle(tmp_path)
    cache = tmp_path / "cache"
    p = _mirror("install", b, "--cache-dir", cache)
    deadline = time.time() + 30
    while time.time() < deadline and not list((cache / "models--org--model" / "blobs").glob(".*.incomplete")):
        time.sleep(0.01)
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 128 + sig, err
    assert b"Traceback" not in err and err.decode().count("\n") == 1
    assert not tree(cache), tree(cache)


def test_a_killed_install_is_finished_or_undone_by_the_next_command(tmp_path):
    b = _big_bundle(tmp_path)
    cache = tmp_path / "cache"
    repo = cache / "models--org--model"
    for delay in (0.05, 0.3, 0.6, 1.0, 2.0):
        p = _mirror("install", b, "--cache-dir", cache)
        time.sleep(delay)
        p.kill()
        p.wait()
        snap = repo / "snapshots" / C
        # never a snapshot that its refs do not name, once the next command has looked
        r = run("list", "--installed", "--cache-dir", cache)
        assert r.exit_code == 0 or (r.exit_code == 3 and not cache.exists()), r.output  # 3: killed before the cache was made
        if snap.exists():
            assert (repo / "refs" / "main").read_text() == C
            assert len(list(snap.iterdir())) == 4
        assert not [q for q in repo.rglob("*") if q.name.endswith((".incomplete", ".staging", ".journal"))]
        assert ".staging" not in r.output
        if snap.exists():
            break
    r = run("install", b, "--cache-dir", cache)
    assert r.exit_code == 0 and snapshot_bytes(repo / "snapshots" / C) == {p.name: p.read_bytes() for p in (tmp_path / "big").iterdir()}


def test_install_takes_huggingface_hubs_own_blob_lock(tmp_path):
    """A concurrent hf_hub_download holds `.locks/<repo folder>/<etag>.lock` while it writes a
    blob; mirror install waits for the same lock before it moves that blob in."""
    from filelock import FileLock

    src = folder(tmp_path / "src", V1)
    b = bundle(src, tmp_path / "out")
    etag = entry(src, "model.safetensors").etag
    cache = tmp_path / "cache"
    lock_path = cache / ".locks" / "models--org--model" / f"{etag}.lock"
    lock_path.parent.mkdir(parents=True)
    with FileLock(lock_path):
        p = _mirror("install", b, "--cache-dir", cache)
        time.sleep(3)
        assert p.poll() is None, p.communicate()  # waiting for the lock, not racing
        assert not (cache / "models--org--model" / "snapshots" / C).exists()
        assert not (cache / "models--org--model" / "blobs" / etag).exists()
    assert p.wait(timeout=60) == 0, p.stderr.read()
    assert snapshot_bytes(cache / "models--org--model" / "snapshots" / C) == V1


@pytest.mark.parametrize("field", ["refs", "created_blobs", "added_links", "commit"])
def test_a_planted_journal_is_never_acted_on(installed, tmp_path, field):
    """Recovery writes refs and removes files by the names a journal holds: a journal left by a
    dead pid whose names point outside the repo is discarded, not followed. Each case puts a
    victim exactly where the name would lead."""
    import json as _json

    cache, snap, src = installed
    journal = {"commit": C, "refs": ["main"], "created_blobs": [], "added_links": [], "new_snapshot": False, "new_record": False}
    victim = cache / "victim"
    if field == "refs":  # C is complete: recovery would roll forward and write this ref
        journal["refs"] = ["../../escaped"]
        victim = cache / "escaped"
    elif field == "created_blobs":  # would be unlinked by the rollback of an incomplete commit
        journal.update(commit="f" * 40, created_blobs=["../../victim"])
        victim.write_text("keep")
    elif field == "added_links":  # links of an incomplete commit would be unlinked
        (cache / "models--org--model" / "snapshots" / ("f" * 40)).mkdir()
        journal.update(commit="f" * 40, added_links=["../../../victim"])
        victim.symlink_to(src / "config.json")
    else:  # a new snapshot of an incomplete commit would be removed, folder and all
        journal.update(commit="../../victim", new_snapshot=True)
        victim.mkdir()
        (victim / "data.txt").write_text("keep")
    locks = cache / ".locks" / "models--org--model"
    (locks / ".install.999999-0123456789ab.journal").write_text(_json.dumps(journal))  # pid 999999: not running
    before = tree(cache)
    r = run("list", "--installed", "--cache-dir", cache)
    assert r.exit_code == 0, r.output
    assert tree(cache) == before  # the victim (or its absence) included
    assert not list(locks.glob("*.journal"))
