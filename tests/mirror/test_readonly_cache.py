"""A shared HF cache mounted read-only (a pod's volume): checks pass without a write, writes fail in one line.

The cache is made read-only for real: each command runs in a mount namespace of its own (`unshare
-rm`) where the cache folder is bind-mounted read-only, so even root gets EROFS. Any write the
command tried (a lock file, a ref, the install record) would fail it; exit 0 is the proof that
none was tried, and the tree is compared byte for byte as well.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

from common import exitcodes
from mirror.install import install_bundle
from mirror.pack import pack_folder
from tests.fixtures.cachetree import tree
from tests.mirror.test_bundle import make_repo

ROOT = Path(__file__).resolve().parents[2]
# mount CACHE read-only in a private mount namespace, then run the command there
_RO = 'mount --bind -o ro "$0" "$0" && exec "$@"'


@lru_cache(maxsize=1)
def _read_only_mounts() -> str | None:
    """Why a read-only bind mount cannot be made here, or None."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "unshare or mount not found: apt-get install util-linux mount"
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"ro-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        p = subprocess.run(["unshare", "-rm", "sh", "-c", _RO, str(probe), "sh", "-c", 'touch "$0/x" 2>/dev/null && exit 1 || exit 0', str(probe)],
                           capture_output=True, text=True, timeout=30)
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    return None if p.returncode == 0 else f"no read-only bind mount in a user namespace here (unshare -rm: {p.stderr.strip()[:200]})"


@pytest.fixture(autouse=True)
def read_only_mounts():
    """These tests need the kernel to make a read-only mount: skipped on a user's machine that
    cannot, failed in CI (as tests/fixtures/requires.py treats a missing tool)."""
    why = _read_only_mounts()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(why, pytrace=False)
        pytest.skip(why)


def read_only(cache: Path, *argv: str, env: dict[str, str] | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """`argv` run with `cache` mounted read-only."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(["unshare", "-rm", "sh", "-c", _RO, str(cache), *argv], env=env, capture_output=True, text=True, timeout=timeout)


def mirror_ro(cache: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return read_only(cache, sys.executable, "-m", "mirror", *args, **kw)


def everything(root: Path) -> list[tuple[str, str | None, bytes | None, int]]:
    """Every entry under root, lock files and folders included, with its mtime."""
    return sorted(
        (str(p.relative_to(root)), os.readlink(p) if p.is_symlink() else None,
         p.read_bytes() if p.is_file() and not p.is_symlink() else None, p.lstat().st_mtime_ns)
        for p in root.rglob("*")
    )


@pytest.fixture
def bundles(tmp_path):
    """Two bundles of acme/m (two commits), packed from a small model folder."""
    src = tmp_path / "model"
    make_repo(src)
    first = pack_folder(src, repo_id="acme/m", out_dir=tmp_path / "b1")
    (src / "config.json").write_bytes(b'{"hidden": 8}\n')
    second = pack_folder(src, repo_id="acme/m", out_dir=tmp_path / "b2")
    assert first.manifest.commit != second.manifest.commit
    return first, second


@pytest.mark.parametrize("how", ["--cache-dir", "HF_HUB_CACHE", "no .locks folder"])
def test_installing_an_installed_bundle_again_writes_nothing(tmp_path, bundles, how):
    info, _ = bundles
    cache = tmp_path / "cache"
    installed = install_bundle(info.path, cache_dir=cache, bundle_sha256=False)  # no bundle sha256 in the record yet
    if how == "no .locks folder":  # filled by someone else (a copy, snapshot_download's cleaner): no lock file to open
        shutil.rmtree(cache / ".locks")
    before = everything(cache)
    # --sha256: a writable cache would now name the bundle in the install record; a read-only one goes without
    args = ["install", str(info.path), "--sha256", info.sha256, "--json"]
    p = mirror_ro(cache, *args, "--cache-dir", str(cache)) if how != "HF_HUB_CACHE" else mirror_ro(cache, *args, env={"HF_HUB_CACHE": str(cache)})
    assert p.returncode == 0, p.stderr
    row = json.loads(p.stdout)
    assert (row["ok"], row["already_installed"], row["snapshot_dir"], row["refs"]) == (True, True, str(installed.snapshot_dir), ["local", "main"])
    assert f"already installed: acme/m@{info.manifest.commit}" in p.stderr
    assert everything(cache) == before


def test_an_install_that_must_write_is_one_line_and_its_own_exit_code(tmp_path, bundles):
    first, second = bundles
    cache = tmp_path / "cache"
    cache.mkdir()
    p = mirror_ro(cache, "install", str(first.path), "--cache-dir", str(cache))
    assert p.returncode == exitcodes.NOT_WRITABLE == 12
    assert p.stderr.splitlines() == [
        f"mirror: error: the HF cache {cache} cannot be written (a read-only file system) and "
        f"acme/m@{first.manifest.commit[:12]} is not installed there (5 file(s) to write); nothing was written: "
        "install into a writable cache (--cache-dir DIR or $HF_HUB_CACHE), or where this one is mounted read-write"
    ], p.stderr
    assert p.stdout == "" and list(cache.iterdir()) == []

    install_bundle(first.path, cache_dir=cache)  # a second commit of the repo: its new files need writing
    before = everything(cache)
    p = mirror_ro(cache, "install", str(second.path), "--cache-dir", str(cache))
    assert p.returncode == 12 and len(p.stderr.splitlines()) == 1
    assert f"acme/m@{second.manifest.commit[:12]} is not installed there (1 file(s) to write)" in p.stderr
    assert everything(cache) == before


def test_an_installed_commit_whose_ref_is_missing_needs_a_write(tmp_path, bundles):
    info, _ = bundles
    cache = tmp_path / "cache"
    install_bundle(info.path, cache_dir=cache)
    (cache / "models--acme--m" / "refs" / "main").unlink()  # from_pretrained("acme/m") would not find it
    p = mirror_ro(cache, "install", str(info.path), "--cache-dir", str(cache))
    assert p.returncode == 12 and len(p.stderr.splitlines()) == 1
    assert f"acme/m@{info.manifest.commit[:12]} is installed there but refs/main would have to point at it" in p.stderr


def test_a_damaged_bundle_is_still_refused_on_a_read_only_cache(tmp_path, bundles):
    info, _ = bundles
    cache = tmp_path / "cache"
    install_bundle(info.path, cache_dir=cache)
    p = mirror_ro(cache, "install", str(info.path), "--cache-dir", str(cache), "--sha256", "0" * 64)
    assert p.returncode == exitcodes.INTEGRITY and len(p.stderr.splitlines()) == 1  # checked as on a writable cache


def test_list_installed_reads_a_read_only_cache_with_leftovers(tmp_path, bundles):
    info, _ = bundles
    cache = tmp_path / "cache"
    install_bundle(info.path, cache_dir=cache)
    # a temporary a killed install left: a writable cache is swept on the next read; this one cannot be
    (cache / "models--acme--m" / "blobs" / ".x.4194303-0123456789ab.incomplete").write_bytes(b"partial")
    before = everything(cache)
    p = mirror_ro(cache, "list", "--installed", "--cache-dir", str(cache), "--json")
    assert p.returncode == 0, p.stderr
    assert [(r["repo_id"], r["commit"]) for r in map(json.loads, p.stdout.splitlines())] == [("acme/m", info.manifest.commit)]
    assert everything(cache) == before


def test_the_trainer_uses_a_read_only_cache_and_says_when_it_cannot_install(tmp_path, tiny_bert_dir):
    info = pack_folder(tiny_bert_dir, repo_id="acme/tiny-bert", out_dir=tmp_path / "bundles")
    cache = tmp_path / "cache"
    cache.mkdir()
    (tmp_path / "train.jsonl").write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": "neg"}\n')
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model_id: acme/tiny-bert\noutput_dir: {tmp_path / 'out'}\ntrain_file: {tmp_path / 'train.jsonl'}\nlabels: [pos, neg]\n")
    env = {"HF_HUB_CACHE": str(cache)}
    trainer = (sys.executable, "-m", "trainer", "run", str(cfg), "--bundles", str(tmp_path / "bundles"))
    p = read_only(cache, *trainer, env=env)  # not installed, and the cache cannot take it
    assert p.returncode == 12, p.stderr
    assert p.stderr.splitlines() == [
        f"trainer: error: the HF cache {cache} cannot be written (a read-only file system) and "
        f"acme/tiny-bert@{info.manifest.commit[:12]} is not installed there ({len(info.manifest.files)} file(s) to write); nothing was written: "
        "install into a writable cache (--cache-dir DIR or $HF_HUB_CACHE), or where this one is mounted read-write"
    ]
    assert not (tmp_path / "out").exists()

    install_bundle(info.path, cache_dir=cache, bundle_sha256=False)  # installed elsewhere, without the bundle's sha256
    before = everything(cache)
    p = read_only(cache, sys.executable, "-m", "trainer", "check", str(cfg), "--bundles", str(tmp_path / "bundles"), "--json", env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert everything(cache) == before  # the bundle is not named in the record: no write, and no bundle read for it


def test_a_write_refused_midway_is_rolled_back_and_said_the_same_way(tmp_path, bundles):
    """blobs/ on a read-only disk of its own: the folders access(2) judges are writable, the blob
    write is refused anyway. The install is undone and ends as every refused write does."""
    first, second = bundles
    cache = tmp_path / "cache"
    install_bundle(first.path, cache_dir=cache)
    blobs = cache / "models--acme--m" / "blobs"
    before = tree(cache)
    p = read_only(blobs, sys.executable, "-m", "mirror", "install", str(second.path), "--cache-dir", str(cache))
    assert p.returncode == 12 and len(p.stderr.splitlines()) == 1, p.stderr
    assert p.stderr.startswith(f"mirror: error: the HF cache {cache} cannot be written ({blobs}/.")
    assert f": Read-only file system) and installing acme/m@{second.manifest.commit[:12]} writes there; nothing was written" in p.stderr
    assert tree(cache) == before  # lock files aside (huggingface_hub's convention), the cache is as it was
