"""`mirror pack` attacked through the CLI (issue 10: pack opens each file once, never through a
link, checks what it opened and bundles those bytes; SIGTERM and SIGKILL leave nothing behind).

The attacker can write inside the folder being packed, not the secret outside it. Whatever they
do (links, a file swapped for a link between the check and the read, a FIFO, a signal), the
secret's bytes must never reach the output folder, and a pack either refuses in one line or
bundles exactly the bytes its manifest describes.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tarfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

import mirror.bundle.write.driver
import mirror.pack
import mirror.bundle.write.files
from mirror.cli import cli
from mirror.bundle.codec import read_manifest
from tests.fixtures.procs import default_signals

ROOT = Path(__file__).resolve().parents[2]
SECRET = b"ROOT-ONLY SECRET " + random.Random(7).randbytes(4000)  # in no file of the folder
def REWRITTEN(n: int) -> bytes:  # the attacker's own bytes, n of them (not the secret)
    return bytes(range(256)) * (n // 256) + bytes(n % 256)


# decoys: the size and mtime of the secret, so that only the inode tells them apart
ORIGINAL = {
    "config.json": b'{"hidden": 4}\n',
    "decoy.txt": random.Random(1).randbytes(len(SECRET)),
    "model.safetensors": random.Random(0).randbytes(300_001),
    "sub/decoy.txt": random.Random(2).randbytes(len(SECRET)),
    "sub/tokenizer.json": b'{"vocab": ["a", "b"]}\n',
}
MTIME_NS = 1_700_000_000 * 10**9


@pytest.fixture
def folder(tmp_path) -> Path:
    d = tmp_path / "model"
    for rel, data in ORIGINAL.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)
        os.utime(d / rel, ns=(MTIME_NS, MTIME_NS))
    return d


@pytest.fixture
def secret(tmp_path) -> Path:
    """A file the packer can read (it runs as root) and must never bundle, with a twin folder
    holding it under the names of the folder's own files (for a swapped parent folder)."""
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    for rel in [*ORIGINAL, "shadow"]:
        (outside / rel).write_bytes(SECRET)
        os.utime(outside / rel, ns=(MTIME_NS, MTIME_NS))
    return outside / "shadow"


def pack(folder: Path, out: Path, *extra: str):
    return CliRunner().invoke(cli, ["pack", str(folder), "--repo-id", "acme/m", "--out", str(out), *extra])


def everything_under(out: Path) -> bytes:
    """Every byte written under `out`, hidden temporaries included."""
    return b"".join(p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()) if out.exists() else b""


def assert_refused(r, needle: str, out: Path) -> None:
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert r.stderr.startswith("mirror: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert needle in r.stderr, r.stderr
    assert "Traceback" not in r.output and isinstance(r.exception, SystemExit)
    assert not out.exists() or sorted(os.listdir(out)) == []  # no bundle, no sidecar, no .partial
    assert SECRET not in everything_under(out)


def assert_original_bundle(r, out: Path, *, rewritten: str | None = None) -> None:
    """Packed: the bundle holds each file's original bytes, its manifest their sha256s (or, for
    `rewritten`, the attacker's own new bytes, consistently: the bundle still verifies)."""
    assert r.exit_code == 0, r.output
    bundle = Path(r.stdout.splitlines()[-1])
    m = read_manifest(bundle).by_path()
    raw = bundle.read_bytes()
    for p, data in ORIGINAL.items():
        if p == rewritten and m[p].sha256 != hashlib.sha256(data).hexdigest():
            data = REWRITTEN(len(data))
        assert m[p].sha256 == hashlib.sha256(data).hexdigest() and data in raw, p
    assert SECRET not in everything_under(out)
    with tarfile.open(bundle) as t:  # an independent reader: every member's bytes match the manifest
        members = {i.name: hashlib.sha256(t.extractfile(i).read()).hexdigest() for i in t if i.name.startswith("files/")}
    assert members == {f"files/{p}": e.sha256 for p, e in m.items()}


# --- (a) links inside the folder --------------------------------------------------------------


@pytest.mark.parametrize(
    ("plant", "named", "needle"),
    [
        (lambda d, s: (d / "leak.txt").symlink_to(s), "leak.txt", "is a symlink to"),  # absolute target
        (lambda d, s: (d / "sub" / "leak.json").symlink_to(os.path.relpath(s, d / "sub")), "sub/leak.json", "is a symlink to"),
        # a link inside pointing at a link inside that points outside: resolved to the end
        (lambda d, s: ((d / "hop").symlink_to(s), (d / "alias.json").symlink_to("hop")), "alias.json", "outside"),
        (lambda d, s: (d / "weights").symlink_to(s.parent), "weights", "is a symlinked folder"),
        (lambda d, s: (d / "zero.bin").symlink_to("/dev/zero"), "zero.bin", "is a symlink to /dev/zero, outside"),
    ],
    ids=["absolute", "relative-in-subfolder", "chain", "folder", "device"],
)
def test_a_link_out_of_the_folder_is_refused_and_its_target_never_read(folder, secret, tmp_path, plant, named, needle):
    plant(folder, secret)
    out = tmp_path / "out"
    r = pack(folder, out)
    assert_refused(r, needle, out)
    assert f"{folder / named}" in r.stderr or f"{folder / 'hop'}" in r.stderr


def test_links_that_stay_inside_are_packed_as_their_target(folder, tmp_path):
    (folder / "alias.json").symlink_to("sub/tokenizer.json")
    r = pack(folder, tmp_path / "out")
    assert r.exit_code == 0, r.output
    m = read_manifest(Path(r.stdout.splitlines()[-1])).by_path()
    assert m["alias.json"].sha256 == hashlib.sha256(ORIGINAL["sub/tokenizer.json"]).hexdigest()


# --- (b) the race: checked, then swapped before it is read ------------------------------------


def swap(kind: str, folder: Path, rel: str, secret: Path) -> None:
    """What an attacker does between pack's check and its read of `folder/rel`, atomically."""
    target = folder / rel
    tmp = target.with_name(".swap")
    if kind == "symlink":  # the file becomes a link to the secret
        tmp.symlink_to(secret.parent / rel)
        os.replace(tmp, target)
    elif kind == "hardlink":  # a regular file, in the folder, holding the secret (another inode)
        os.link(secret, tmp)
        os.replace(tmp, target)
    elif kind == "parent-symlink":  # the folder holding it becomes a link to a twin holding the secret
        twin = secret.parent if target.parent == folder else secret.parent / target.parent.name
        os.rename(target.parent, target.parent.with_name(".moved"))
        target.parent.symlink_to(twin)
    elif kind == "fifo":  # opening a FIFO blocks until a writer comes, unless opened non-blocking
        os.mkfifo(tmp)
        os.replace(tmp, target)
    elif kind == "rewrite":  # same inode and size, other bytes written in place, mtime put back
        # a later tick of the file clock than the file's last change, or fstat cannot see the
        # write (the limit mirror.sources documents); the ctime it bumps is what shows it
        time.sleep(0.05)
        st = target.stat()
        with open(target, "r+b") as f:
            f.write(REWRITTEN(st.st_size))
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    else:
        raise AssertionError(kind)


@contextmanager
def no_hang(seconds: int = 30):
    """A read that blocks (a FIFO opened blocking) fails the test instead of hanging it."""

    def boom(signum, frame):
        raise AssertionError(f"pack hung for {seconds}s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


KINDS = ["symlink", "hardlink", "parent-symlink", "fifo", "rewrite"]


@pytest.mark.parametrize("held", [True, False], ids=["descriptor-held", "reopened"])
@pytest.mark.parametrize("when", ["before-hashing", "between-hashing-and-copy"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rel", ["decoy.txt", "sub/decoy.txt", "model.safetensors"])
def test_a_file_swapped_after_the_check_never_leaks(folder, secret, tmp_path, monkeypatch, rel, kind, when, held):
    """Swapped after the walk checked it, before pass 1 hashes it or before pass 2 copies it,
    with the descriptor held since the check or (past the descriptor budget) reopened: pack
    refuses in one line, or bundles the original bytes. Never the secret's."""
    if not held:
        monkeypatch.setattr(mirror.bundle.write.files, "fd_budget", lambda: 0)
    real = mirror.bundle.write.driver.hash_files

    def racing_hash_files(items, **kw):
        if when == "before-hashing":
            swap(kind, folder, rel, secret)
            return real(items, **kw)
        digests = real(items, **kw)
        swap(kind, folder, rel, secret)
        return digests

    monkeypatch.setattr(mirror.bundle.write.driver, "hash_files", racing_hash_files)
    out = tmp_path / "out"
    with no_hang():
        r = pack(folder, out)
    root_swapped = kind == "parent-symlink" and "/" not in rel  # the folder itself: its descriptor is held
    if r.exit_code == 0:
        # only where what is read is still the inode that was checked: a descriptor held since
        # the check (the original, unlinked meanwhile) or a file reached from the held folder
        assert held or root_swapped, r.output
        assert kind != "rewrite", r.output  # the ctime the write bumped shows it
        assert_original_bundle(r, out, rewritten=rel if kind == "rewrite" else None)
    else:
        what = re.escape(str(folder / rel))
        assert re.search(f"{what} (changed while it was being bundled|is a symlink|is a FIFO)|{what}: sub on its path is a symlink", r.stderr), r.stderr
        assert_refused(r, "mirror: error: ", out)


def test_a_file_swapped_between_its_lstat_and_its_open_is_refused(folder, secret, tmp_path, monkeypatch):
    """The narrowest window: the walk's lstat saw a regular file, the open that follows finds
    a link. O_NOFOLLOW refuses it (a plain open would have read the secret)."""
    real_stat = os.stat
    swapped = []

    def stat_then_swap(path, *a, **kw):
        st = real_stat(path, *a, **kw)
        if path == "model.safetensors" and kw.get("dir_fd") is not None and not swapped:
            swapped.append(True)
            swap("symlink", folder, "model.safetensors", secret)
        return st

    monkeypatch.setattr(os, "stat", stat_then_swap)
    out = tmp_path / "out"
    r = pack(folder, out)
    assert swapped
    assert_refused(r, f"{folder / 'model.safetensors'} is a symlink", out)


@pytest.mark.parametrize("held", [True, False], ids=["descriptor-held", "reopened"])
def test_lineage_json_swapped_for_a_link_never_reaches_the_manifest(folder, tmp_path, monkeypatch, held):
    """lineage.json is copied into the manifest itself: swapped for a link to a JSON secret
    after the walk checked it, it is read through the checked descriptor (or refused)."""
    lineage = b'{"base_model": "acme/base"}'
    (folder / "lineage.json").write_bytes(lineage)
    secret_json = tmp_path / "credentials.json"
    secret_json.write_text('{"token": "ROOT-ONLY-TOKEN"}')
    if not held:
        monkeypatch.setattr(mirror.bundle.write.files, "fd_budget", lambda: 0)
    real = mirror.pack.check_files

    def swap_then_check(*a, **kw):  # runs after the walk, before lineage.json is read
        (folder / ".swap").symlink_to(secret_json)
        os.replace(folder / ".swap", folder / "lineage.json")
        return real(*a, **kw)

    monkeypatch.setattr(mirror.pack, "check_files", swap_then_check)
    out = tmp_path / "out"
    r = pack(folder, out)
    assert b"ROOT-ONLY-TOKEN" not in everything_under(out)
    if r.exit_code == 0:
        assert held, r.output
        assert read_manifest(Path(r.stdout.splitlines()[-1])).extra["lineage"] == {"base_model": "acme/base"}
    else:
        needle = "changed while it was being bundled" if held else "lineage.json is a symlink"
        assert_refused(r, needle, out)


def test_many_files_past_the_descriptor_budget_pack_the_same_bytes(folder, tmp_path, monkeypatch):
    """Files beyond the budget are reopened by identity; the bundle is byte-identical."""
    for i in range(40):
        (folder / "shards" / f"{i:03d}.txt").parent.mkdir(exist_ok=True)
        (folder / "shards" / f"{i:03d}.txt").write_bytes(b"%d\n" % i * (i + 1))
    held = pack(folder, tmp_path / "a")
    monkeypatch.setattr(mirror.bundle.write.files, "fd_budget", lambda: 5)
    reopened = pack(folder, tmp_path / "b")
    assert held.exit_code == reopened.exit_code == 0, reopened.output
    a, b = (Path(r.stdout.splitlines()[-1]) for r in (held, reopened))
    assert a.read_bytes() == b.read_bytes() and len(read_manifest(a).files) == len(ORIGINAL) + 40


# --- (c) special files --------------------------------------------------------------------------


def mirror_cli(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mirror", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False, **kw)


def _device(p: Path) -> None:
    try:
        os.mknod(p, 0o600 | 0o020000, os.makedev(1, 5))  # a character device: /dev/zero's numbers
    except (PermissionError, AttributeError, OSError):
        pytest.skip("creating a device node needs CAP_MKNOD")


def _socket(p: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(p))  # stays bound while the test runs; closed at exit


@pytest.mark.parametrize(
    ("plant", "needle"),
    [
        (lambda d: os.mkfifo(d / "sub" / "pipe"), "sub/pipe is a FIFO (named pipe), not a regular file"),
        (lambda d: (os.mkfifo(d / "pipe"), (d / "weights.bin").symlink_to("pipe")), "is a FIFO (named pipe), not a regular file"),
        (_device, "is a character device, not a regular file"),
        (_socket, "is a socket, not a regular file"),
    ],
    ids=["fifo", "link-to-fifo-inside", "char-device", "socket"],
)
def test_a_special_file_is_refused_without_hanging(folder, tmp_path, plant, needle):
    target = folder / "special" if plant in (_device, _socket) else folder
    plant(target)
    out = tmp_path / "out"
    r = mirror_cli("pack", folder, "--repo-id", "acme/m", "--out", out)  # a hang fails by timeout
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("mirror: error: ") and r.stderr.count("\n") == 1 and needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert not out.exists() or os.listdir(out) == []


# --- (d) signals, (e) leftovers -----------------------------------------------------------------


@pytest.fixture
def big(tmp_path) -> Path:
    d = tmp_path / "big"
    d.mkdir()
    with open(d / "model.safetensors", "wb") as f:
        f.writelines(os.urandom(8 * 1024 * 1024) for _ in range(25))  # 200 MB: long enough to be caught mid-write
    (d / "config.json").write_text("{}")
    return d


def start_pack(folder: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mirror", "pack", str(folder), "--repo-id", "acme/big", "--out", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_signals,
    )


def wait_for_partial(proc: subprocess.Popen, out: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        found = [n for n in os.listdir(out) if n.endswith(".partial")] if out.exists() else []
        if found:
            return found[0]
        time.sleep(0.001)
    raise AssertionError(f"no .partial appeared (exit {proc.poll()})")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_mid_write_exits_128_plus_it_and_leaves_nothing(big, tmp_path, sig):
    out = tmp_path / "out"
    proc = start_pack(big, out)
    name = wait_for_partial(proc, out)
    assert re.fullmatch(rf"\.acme--big--[0-9a-f]{{12}}\.tar\.{proc.pid}-[0-9a-f]{{12}}\.partial", name), name
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, (proc.returncode, stderr)
    assert stderr == f"mirror: error: interrupted by {sig.name}; nothing half-written is left under a name anyone trusts; run the same command again to finish\n"
    assert stdout == "" and os.listdir(out) == []


def test_a_sigkill_leftover_is_swept_by_the_next_pack(big, tmp_path):
    out = tmp_path / "out"
    proc = start_pack(big, out)
    name = wait_for_partial(proc, out)
    proc.kill()  # SIGKILL: no cleanup can run
    proc.communicate(timeout=60)
    assert name in os.listdir(out)  # left behind, under the dead pid's name
    r = mirror_cli("pack", big, "--repo-id", "acme/big", "--out", out)
    assert r.returncode == 0, r.stderr
    bundle = Path(r.stdout.splitlines()[-1])
    assert sorted(os.listdir(out)) == [bundle.name, bundle.name + ".sha256"]
    assert hashlib.sha256(bundle.read_bytes()).hexdigest() == (out / (bundle.name + ".sha256")).read_text().split()[0]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporaries_of_dead_writers_are_removed_and_others_kept(folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = _dead_pid()
    stale = [f".x.tar.{dead}-0123456789ab.partial", f".x.tar.sha256.{dead}-ba9876543210.partial"]
    alive = f".y.tar.{os.getpid()}-0123456789ab.partial"  # a pack running right now (this process)
    kept = [alive, "notes.txt", ".x.tar.partial", "old--m--0123456789ab.tar"]
    for n in stale + kept:
        (out / n).write_bytes(b"left over")
    r = pack(folder, out)
    assert r.exit_code == 0, r.output
    bundle = Path(r.stdout.splitlines()[-1]).name
    assert sorted(os.listdir(out)) == sorted(kept + [bundle, bundle + ".sha256"])


@pytest.mark.parametrize("held", [True, False], ids=["descriptor-held", "reopened"])
def test_a_pickle_swapped_after_the_walk_is_scanned_as_bundled(folder, tmp_path, monkeypatch, held):
    """With --allow-pickle, pickles are scanned through the checked descriptors: a benign pickle
    swapped for a link to a malicious one after its scan is either refused or bundled as the
    benign bytes that were scanned, never the unscanned ones."""
    import pickle
    from collections import OrderedDict

    benign = pickle.dumps(OrderedDict(a=1), protocol=2)
    (folder / "weights.pt").write_bytes(benign)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(b"\x80\x02cposix\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03.")
    if not held:
        monkeypatch.setattr(mirror.bundle.write.files, "fd_budget", lambda: 0)
    real = mirror.pack.check_files

    def scan_then_swap(*a, **kw):  # the scan passes the benign bytes; then the name is swapped
        report = real(*a, **kw)
        (folder / ".swap").symlink_to(evil)
        os.replace(folder / ".swap", folder / "weights.pt")
        return report

    monkeypatch.setattr(mirror.pack, "check_files", scan_then_swap)
    out = tmp_path / "out"
    r = pack(folder, out, "--allow-pickle")
    assert b"posix\nsystem" not in everything_under(out)
    if r.exit_code == 0:
        assert held, r.output
        m = read_manifest(Path(r.stdout.splitlines()[-1]))
        assert m.by_path()["weights.pt"].sha256 == hashlib.sha256(benign).hexdigest()
    else:
        assert "Traceback" not in r.output and r.exit_code == 2, r.output
