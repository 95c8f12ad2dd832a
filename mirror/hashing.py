"""Streaming file digests: sha256 and the git blob sha1 the Hub lists as a file's `oid`.

Files are read in fixed-size chunks, never whole, so memory stays flat whatever the model size.
For a regular (non-LFS) file the git sha1 is of its content, computed in the same pass as the
sha256. For an LFS file git stores a pointer, not the content, so its git sha1 is that of the
pointer (`lfs_pointer_sha1`): derived from sha256 and size with no second pass over the data, and
equal to the `oid` the Hub lists. The content of an LFS file is protected by its sha256.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Container, Iterable

CHUNK = 8 * 1024 * 1024  # large enough that per-call overhead is invisible next to hashlib's own cost


LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"


def git_blob_sha1(data: bytes) -> str:
    """What git names a blob: sha1 over `blob <size>\\0` then the bytes (for small data only)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer_sha1(sha256: str, size: int) -> str:
    """The git blob sha1 of the canonical Git LFS pointer for content with this sha256 and size
    (what `git lfs` writes and the Hub stores): the Hub's tree `oid` of an LFS file."""
    return git_blob_sha1(LFS_POINTER.format(sha256=sha256, size=size).encode("ascii"))


@dataclass(frozen=True)
class Digest:
    size: int
    sha256: str
    git_sha1: str


class HashLanes:
    """Worker threads that each apply hash updates in submission order.

    A hash is a serial chain, but different chains are independent: with the tar's sha256, a
    file's sha256 and its git sha1 on separate lanes, a streaming pass costs about one sha256
    instead of three. hashlib releases the GIL on large updates, so threads really run in
    parallel. Each lane's queue is short, which bounds the chunks alive at once (flat memory).
    Chunks handed to a lane must not be mutated afterwards (pass `bytes`, not a reused buffer).
    """

    def __init__(self, n: int, *, depth: int = 3):
        self._queues: list[queue.Queue] = [queue.Queue(maxsize=depth) for _ in range(n)]
        self._closed = False
        self._threads = [threading.Thread(target=self._run, args=(q,), daemon=True, name=f"hash-lane-{i}") for i, q in enumerate(self._queues)]
        for t in self._threads:
            t.start()

    @staticmethod
    def _run(q: queue.Queue) -> None:
        while True:
            item = q.get()
            try:
                if item is None:
                    return
                item[0].update(item[1])
            finally:
                q.task_done()

    # After `close` (the owner unwinding: an error, Ctrl-C, SIGTERM) no lane runs any more. A
    # thread still feeding or draining them (a worker of a pool the owner could not join) then
    # gets Cancelled instead of waiting forever on a queue nobody serves, which would keep the
    # process alive after its error message. Hence the short timeouts: they are only the
    # interval at which a blocked caller looks at `_closed`.
    _POLL = 0.1

    def submit(self, lane: int, h, data: bytes) -> None:
        q = self._queues[lane]
        while True:
            if self._closed:
                raise Cancelled("the hash lanes were closed")
            try:
                q.put((h, data), timeout=self._POLL)
                return
            except queue.Full:
                continue

    def drain(self, *lanes: int) -> None:
        """Wait until every update submitted to these lanes (all lanes if none named) is applied."""
        for i in lanes or range(len(self._queues)):
            q = self._queues[i]
            with q.all_tasks_done:
                while q.unfinished_tasks:
                    if self._closed:
                        raise Cancelled("the hash lanes were closed")
                    q.all_tasks_done.wait(self._POLL)

    def close(self) -> None:
        self._closed = True
        for q in self._queues:
            q.put(None)  # after what is queued: the lanes finish it, so drained digests are whole
        for t in self._threads:
            t.join()

    def __enter__(self) -> "HashLanes":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DualHasher:
    """Feed bytes once, get both digests. `git_sha1` needs the size up front (git's blob header).
    With `lfs=True` only the sha256 is computed from the bytes, and `git_sha1` is the pointer's.

    With `lanes` (a HashLanes and the two lane numbers to use), the digests are computed on
    those worker threads, overlapped with whatever the caller does next (reading, writing)."""

    def __init__(self, size: int, *, lfs: bool = False, lanes: "HashLanes | None" = None, lane_ids: tuple[int, int] = (0, 1)):
        self.size = size
        self.lfs = lfs
        self._seen = 0
        self._sha256 = hashlib.sha256()
        self._sha1 = None if lfs else hashlib.sha1(f"blob {size}\0".encode())
        self._lanes = lanes
        self._lane_ids = lane_ids

    def update(self, chunk: bytes | memoryview) -> None:
        self._seen += len(chunk)
        if self._lanes is not None:
            self._lanes.submit(self._lane_ids[0], self._sha256, chunk)
            if self._sha1 is not None:
                self._lanes.submit(self._lane_ids[1], self._sha1, chunk)
        else:
            self._sha256.update(chunk)
            if self._sha1 is not None:
                self._sha1.update(chunk)

    @property
    def seen(self) -> int:
        return self._seen

    def digest(self) -> Digest:
        if self._lanes is not None:
            self._lanes.drain(*self._lane_ids)
        if self._seen != self.size:
            # a git sha1 over the wrong declared size would be silently wrong; refuse instead
            raise ValueError(f"hashed {self._seen} bytes, expected {self.size}")
        sha256 = self._sha256.hexdigest()
        sha1 = lfs_pointer_sha1(sha256, self.size) if self._sha1 is None else self._sha1.hexdigest()
        return Digest(size=self.size, sha256=sha256, git_sha1=sha1)


def hash_stream(f: BinaryIO, size: int, *, lfs: bool = False, chunk: int = CHUNK) -> Digest:
    h = DualHasher(size, lfs=lfs)
    buf = bytearray(chunk)
    view = memoryview(buf)
    while True:
        n = f.readinto(buf)
        if not n:
            break
        h.update(view[:n])
    return h.digest()


def hash_fd(fd: int, size: int, *, lfs: bool = False, chunk: int = CHUNK, stop: threading.Event | None = None) -> Digest:
    """The digests of the first `size` bytes of an open descriptor, read by position (the file
    offset is neither used nor moved, so one descriptor can serve a hash pass and a copy pass).
    EOFError when the file ends first: it shrank since `size` was taken. `stop` set: Cancelled."""
    h = DualHasher(size, lfs=lfs)
    buf = bytearray(min(chunk, size) or 1)
    view = memoryview(buf)
    offset = 0
    while offset < size:
        if stop is not None and stop.is_set():
            raise Cancelled()
        want = min(len(buf), size - offset)
        n = _pread_into(fd, view[:want], offset)
        if not n:
            raise EOFError(f"the file ended after {offset} of {size} bytes")
        h.update(view[:n])
        offset += n
    return h.digest()


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    if _preadv is not None:
        return _preadv(fd, [view], offset)
    data = os.pread(fd, len(view), offset)
    view[: len(data)] = data
    return len(data)


_preadv = getattr(os, "preadv", None)  # not on every platform; os.pread (one copy more) then


class Cancelled(Exception):
    """A hash worker stopped because the caller is unwinding (an error elsewhere, Ctrl-C, SIGTERM)."""


def hash_file(path: str | os.PathLike, *, lfs: bool = False) -> Digest:
    with open(path, "rb", buffering=0) as f:
        return hash_stream(f, os.fstat(f.fileno()).st_size, lfs=lfs)


def sha256_file(path: str | os.PathLike, *, chunk: int = CHUNK) -> str:
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def sha256sum_line(sha256: str, name: str) -> str:
    """One line in `sha256sum` format (what `sha256sum -c` checks): the sidecars and parts sums."""
    return f"{sha256}  {name}\n"


def cores() -> int:
    """The cores this process may run on (`taskset`, cgroup cpusets), not the machine's count:
    one hashing thread per usable core."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not on every platform
        return os.cpu_count() or 1


def hash_files(items: Iterable, *, lfs: Container = frozenset(), workers: int | None = None) -> dict:
    """Hash many files in parallel (those in `lfs` as LFS files); returns {item: Digest}. hashlib
    releases the GIL on large updates, so threads scale across cores without processes.

    An item is a path (opened by name: for files of our own, like cache blobs), an open
    descriptor or file object (hashed from offset 0 to its fstat size), or an already opened
    source (mirror.bundle.write.files.SourceFile: `size`, and `descriptor()` lends a descriptor): files
    from someone else's folder are hashed through what was checked, never reopened by name.
    If anything fails or the caller is interrupted, queued files are dropped and running ones
    stop at their next chunk, so a SIGTERM during a long pass does not wait for the whole pass."""
    items = list(items)
    workers = workers or min(len(items), cores()) or 1
    stop = threading.Event()

    def one(item) -> Digest:
        if stop.is_set():
            raise Cancelled()
        if isinstance(item, (str, os.PathLike)):
            return hash_file(item, lfs=item in lfs)
        if isinstance(item, int) or hasattr(item, "fileno"):
            fd = item if isinstance(item, int) else item.fileno()
            return hash_fd(fd, os.fstat(fd).st_size, lfs=item in lfs, stop=stop)
        with item.descriptor() as fd:
            return hash_fd(fd, item.size, lfs=item in lfs, stop=stop)

    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        return dict(zip(items, pool.map(one, items)))
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def first_difference(want, got: Digest, *, skip_empty: bool = False) -> tuple[str, str, str] | None:
    """(algorithm, expected, actual) of the first digest in which `got` differs from `want` (a
    FileEntry or anything with size, sha256 and git_sha1), or None. `skip_empty`: an expected
    value left empty (the Hub did not publish it) is not compared. The one comparison every
    check of a file against its manifest entry or the Hub's listing makes."""
    for algo, exp, act in (("sha256", want.sha256, got.sha256), ("git sha1", want.git_sha1, got.git_sha1), ("size", str(want.size), str(got.size))):
        if (exp or not skip_empty) and exp != act:
            return algo, exp, act
    return None
