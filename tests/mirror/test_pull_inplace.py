"""A single-file pull is written in place (mirror.inplace): each LFS shard downloads straight into
its region of the bundle, a journal keeps what is in, and a rerun after a kill resumes mid-file
with a `Range`. The writer's own guarantees (a region never written past its end, a rewound
region re-hashed, a journal that lies caught by the sha256) are checked on the writer itself."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mirror.bundle.write import inplace
from mirror.errors import HashMismatch, NotEnoughSpace, UsageError
from mirror.hub import STAGING_DIR, pull
from tests.fixtures.fake_hub import FakeHub
from tests.fixtures.procs import default_signals
from tests.mirror.test_pull import hermetic, leftovers, payload  # noqa: F401 (hermetic: an autouse fixture)

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]
SHARD1 = hashlib.shake_256(b"shard one").digest(48 * MiB)
SHARD2 = hashlib.shake_256(b"shard two").digest(3 * MiB)
FILES = {
    "config.json": b'{"model_type": "bert"}\n',
    "model-00001-of-00002.safetensors": SHARD1,
    "model-00002-of-00002.safetensors": SHARD2,
}
BIG = "model-00001-of-00002.safetensors"


@pytest.fixture
def hub():
    with FakeHub() as h:
        h.add_repo("org/sharded", FILES)
        yield h


def _journal(out: Path) -> dict:
    found = list(out.glob(f"{STAGING_DIR}/*.inplace/{inplace.JOURNAL_NAME}"))
    return json.loads(found[0].read_bytes()) if found else {}


def _gets(hub, path: str) -> list[tuple[int, str | None]]:
    return [(r.status, r.range) for r in hub.requests if r.method == "GET" and r.file == path]


def _check_sidecar(info) -> None:
    want = hashlib.sha256(info.path.read_bytes()).hexdigest()
    assert info.sha256 == want
    assert Path(f"{info.path}.sha256").read_text() == f"{want}  {info.path.name}\n"


def test_killed_mid_shard_the_rerun_resumes_from_the_journal_with_a_range(hub, tmp_path):
    out = tmp_path / "out"
    stall = hub.stall_after("org/sharded", BIG, 41 * MiB)  # huggingface_hub writes 10 MiB chunks: 40 MiB land
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mirror", "pull", "org/sharded", "--endpoint", hub.url, "--out", str(out), "--no-progress"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=default_signals,
    )
    try:
        deadline = time.monotonic() + 60  # a bounded wait for a state, not a timing assertion
        while time.monotonic() < deadline and _journal(out).get("done", {}).get(BIG, 0) < 40 * MiB:
            time.sleep(0.05)
        assert _journal(out)["done"][BIG] == 40 * MiB, "the journal never recorded the first 40 MiB"
        proc.kill()  # SIGKILL: no cleanup runs
        proc.wait(30)
    finally:
        stall.set()
        if proc.poll() is None:
            proc.kill()
    assert leftovers(out) == []  # no bundle, no sidecar: only the staging folder

    info = pull("org/sharded", out_dir=out, endpoint=hub.url, progress=False)
    assert _gets(hub, BIG) == [(200, None), (206, f"bytes={40 * MiB}-")]  # the rest only
    assert _gets(hub, "model-00002-of-00002.safetensors") in ([(200, None)], [(200, None), (200, None)])
    assert payload(info.path) == FILES
    _check_sidecar(info)
    assert not (out / STAGING_DIR).exists()
    fresh = pull("org/sharded", out_dir=tmp_path / "fresh", endpoint=hub.url, progress=False)
    assert fresh.path.read_bytes() == info.path.read_bytes()  # byte-identical to an uninterrupted pull


def test_a_server_that_ignores_range_restarts_the_file_and_the_sidecar_stays_right(hub, tmp_path):
    hub.drop_after("org/sharded", BIG, 11 * MiB)  # one drop: huggingface_hub asks for the rest...
    hub.ignore_range("org/sharded", BIG)  # ...and gets the whole file again, from byte 0
    info = pull("org/sharded", out_dir=tmp_path / "out", endpoint=hub.url, progress=False)
    assert _gets(hub, BIG) == [(200, None), (200, f"bytes={10 * MiB}-")]
    assert payload(info.path) == FILES
    _check_sidecar(info)  # whatever the stream lane had hashed before the rewind was hashed again


def test_a_full_disk_mid_download_is_one_line_and_leaves_no_bundle(hub, tmp_path, monkeypatch):
    real = inplace.InPlaceWriter._pwrite

    def full(self, view, offset):
        if offset > 20 * MiB:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, view, offset)

    monkeypatch.setattr(inplace.InPlaceWriter, "_pwrite", full)
    out = tmp_path / "out"
    with pytest.raises(NotEnoughSpace) as e:
        pull("org/sharded", out_dir=out, endpoint=hub.url, progress=False)
    assert "\n" not in str(e.value) and "free some space" in str(e.value)
    assert leftovers(out) == []
    monkeypatch.setattr(inplace.InPlaceWriter, "_pwrite", real)
    info = pull("org/sharded", out_dir=out, endpoint=hub.url, progress=False)  # space freed: the rerun finishes
    assert payload(info.path) == FILES
    _check_sidecar(info)


# --- the writer itself ----------------------------------------------------------------------------


def _writer(tmp_path: Path, *, key: str = "k1") -> tuple[inplace.InPlaceWriter, bytes, bytes]:
    """A toy layout: 512 fixed bytes, a 3 MiB region, 512 fixed bytes."""
    data = hashlib.shake_256(b"region").digest(3 * MiB)
    head, tail = b"H" * 512, b"T" * 512
    fixed = [inplace.Fixed(offset=0, data=head, size=512), inplace.Fixed(offset=512 + len(data), data=tail, size=512)]
    slots = [inplace.Slot(path="w.safetensors", offset=512, size=len(data), sha256=hashlib.sha256(data).hexdigest())]
    w = _Writer(tmp_path / "fill", key=key, total=1024 + len(data), slots=slots, where=str(tmp_path))
    w.toy_fixed = fixed
    return w, data, head + data + tail


class _Writer(inplace.InPlaceWriter):
    """The writer as the bundle writer drives it: the bytes around the regions once it is open."""

    def __enter__(self):
        super().__enter__()
        self.write_fixed(self.toy_fixed)
        return self


def test_a_region_is_never_written_past_its_end(tmp_path):
    w, data, whole = _writer(tmp_path)
    with w:
        (r,) = w.regions()
        r.write(data)
        with pytest.raises(HashMismatch, match="size mismatch"):
            r.write(b"x")  # one byte more than listed: refused before it is written
        r.finish()
        assert w.stream_sha256() == hashlib.sha256(whole).hexdigest()
    assert (tmp_path / "fill" / inplace.PARTIAL_NAME).read_bytes() == whole  # the tail is intact


def test_the_writer_resumes_from_its_journal_and_starts_over_for_another_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(inplace, "NOTE_EVERY", MiB)
    w, data, whole = _writer(tmp_path)
    with pytest.raises(RuntimeError), w:
        w.regions()[0].write(data[: 2 * MiB + 5])
        raise RuntimeError("interrupted")
    w, _, _ = _writer(tmp_path)
    with w:
        (r,) = w.regions()
        assert r.tell() == 2 * MiB + 5  # what the journal holds (its last note), re-hashed from the partial
        r.write(data[r.tell() :])
        r.finish()
        assert w.stream_sha256() == hashlib.sha256(whole).hexdigest()
    w, _, _ = _writer(tmp_path, key="another manifest")
    with w:
        assert w.regions()[0].tell() == 0


def test_a_journal_that_claims_bytes_the_partial_does_not_hold_is_caught(tmp_path, monkeypatch):
    monkeypatch.setattr(inplace, "NOTE_EVERY", MiB)
    w, data, whole = _writer(tmp_path)
    with pytest.raises(RuntimeError), w:
        w.regions()[0].write(data[: 2 * MiB])
        raise RuntimeError("interrupted")
    partial = tmp_path / "fill" / inplace.PARTIAL_NAME
    with open(partial, "r+b") as f:  # a power cut lost a page the journal had counted
        f.seek(512 + MiB)
        f.write(b"\0" * 4096)
    w, _, _ = _writer(tmp_path)
    with w:
        (r,) = w.regions()
        r.write(data[r.tell() :])
        with pytest.raises(HashMismatch, match="sha256 mismatch"):
            r.finish()
    assert json.loads((tmp_path / "fill" / inplace.JOURNAL_NAME).read_bytes())["done"] == {"w.safetensors": 0}
    w, _, _ = _writer(tmp_path)
    with w:  # the rerun fetches that file afresh
        (r,) = w.regions()
        assert r.tell() == 0
        r.write(data)
        r.finish()
        assert w.stream_sha256() == hashlib.sha256(whole).hexdigest()


def test_seeking_back_rehashes_what_the_region_holds(tmp_path):
    w, data, whole = _writer(tmp_path)
    with w:
        (r,) = w.regions()
        r.write(b"\xff" * MiB)  # what a server sent before it ignored the Range
        assert r.seek(0) == 0 and r.truncate() == 0
        r.write(data)
        r.finish()
        assert w.stream_sha256() == hashlib.sha256(whole).hexdigest()
    with pytest.raises(ValueError):
        w2, _, _ = _writer(tmp_path, key="k2")
        with w2:
            w2.regions()[0].seek(10)  # forward past what was written: refused


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_shard_exits_at_once_with_one_line_and_the_rerun_resumes(hub, tmp_path, sig):
    out = tmp_path / "out"
    stall = hub.stall_after("org/sharded", BIG, 41 * MiB)  # held for up to 60 s
    # a read timeout far past that: a pull that waited for the stalled download could not exit in time
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_DOWNLOAD_TIMEOUT": "300"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mirror", "pull", "org/sharded", "--endpoint", hub.url, "--out", str(out), "--no-progress"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=default_signals,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _journal(out).get("done", {}).get(BIG, 0) < 40 * MiB:
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=50)  # before the stall ends: the stalled download is not waited for
    finally:
        stall.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, err
    assert b"Traceback" not in err and err.decode().count("\n") == 1, err
    assert b"run the same command again" in err
    assert leftovers(out) == []
    info = pull("org/sharded", out_dir=out, endpoint=hub.url, progress=False)
    assert _gets(hub, BIG)[-1] == (206, f"bytes={40 * MiB}-")
    assert payload(info.path) == FILES
    _check_sidecar(info)


def test_a_second_writer_of_the_same_bundle_is_refused_while_the_first_runs(tmp_path):
    w, data, whole = _writer(tmp_path)
    with w:
        other, _, _ = _writer(tmp_path, key="other --include patterns, same commit")
        with pytest.raises(UsageError, match="another mirror pull is writing this bundle"):
            other.__enter__()
        (r,) = w.regions()  # the first one's partial was not touched
        r.write(data)
        r.finish()
        assert w.stream_sha256() == hashlib.sha256(whole).hexdigest()
    again, _, _ = _writer(tmp_path)
    with again:  # released when the first one ended
        assert again.regions()[0].complete


@pytest.mark.parametrize("planted", ["symlink", "fifo"])
def test_a_link_or_fifo_planted_as_the_partial_is_refused_in_one_line(tmp_path, planted):
    w, _, _ = _writer(tmp_path)
    (tmp_path / "fill").mkdir(exist_ok=True)
    target = tmp_path / "fill" / inplace.PARTIAL_NAME
    # the journal matches, so nothing is unlinked first: the planted name itself is opened
    w.journal.write_text(json.dumps({"format": inplace.JOURNAL_FORMAT, "key": w.key, "total": w.total, "done": {}}))
    if planted == "symlink":
        victim = tmp_path / "victim"
        victim.write_bytes(b"precious")
        target.symlink_to(victim)
    else:
        os.mkfifo(target)
    with pytest.raises(UsageError, match="pull's own file; remove it and pull again") as e:
        w.__enter__()
    assert "\n" not in str(e.value)
    if planted == "symlink":
        assert victim.read_bytes() == b"precious"


@pytest.mark.parametrize("planted", ["fifo", "symlink", "garbage", "a list", "negative", "past the end"])
def test_a_hostile_journal_only_makes_the_writer_start_over(tmp_path, planted):
    w, data, whole = _writer(tmp_path)
    (tmp_path / "fill").mkdir(exist_ok=True)
    if planted == "fifo":
        os.mkfifo(w.journal)  # reading it must not block
    elif planted == "symlink":
        w.journal.symlink_to("/etc/passwd")
    elif planted == "garbage":
        w.journal.write_bytes(b"\xff{not json")
    elif planted == "a list":
        w.journal.write_text("[1, 2]")
    elif planted == "negative":
        w.journal.write_text(json.dumps({"format": 1, "key": w.key, "total": w.total, "done": {"w.safetensors": -1}}))
    else:  # claims the whole file (and more): re-hashed from the partial, which holds none of it
        w.journal.write_text(json.dumps({"format": 1, "key": w.key, "total": w.total, "done": {"w.safetensors": 10**12}}))
    with w:
        (r,) = w.regions()
        assert r.tell() == 0 and not r.complete
        r.write(data)
        r.finish()
        assert w.stream_sha256() == hashlib.sha256(whole).hexdigest()
    assert Path("/etc/passwd").exists()
