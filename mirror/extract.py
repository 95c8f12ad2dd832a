"""The one verified extractor: every payload byte checked against the manifest as it is read.

`verify`, `install` (full bundles and deltas alike) and anything else that needs a bundle's files
call `extract` on an open `BundleReader`: the manifest it holds is the one the bytes are checked
against, and the bytes a sink receives are the bytes hashed. Two ways to read, same guarantees:

- by position, in parallel (one thread per core, each file's sha256 and git sha1 on their own
  hash lanes), when the bundle is laid out exactly as the deterministic writer lays it out
  (`bundle.layout.writer_layout`), over the reader's own descriptor;
- otherwise one sequential pass (`BundleReader.payload`), which judges every member (links,
  unsafe names, extras, duplicates) and, when asked, hashes the whole stream for the bundle's
  own sha256.

The first problem raises (HashMismatch naming the file, BundleError naming the member); a sink
learns which of its files to keep only after their digests matched.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from common import progress
from mirror.errors import BundleError, HashMismatch
from mirror.hashing import Cancelled, DualHasher, HashLanes, cores, first_difference
from mirror.manifest import FileEntry
from mirror.bundle.codec import BundleReader
from mirror.bundle.layout import MAX_TRAILER, TRAILER_MEMBERS, writer_layout

RANGE_CHUNK = 1024 * 1024  # per positioned read into a thread's own buffer: fits the CPU cache (measured: 1 MiB as fast as 8 MiB)
_MAX_THREADS = 8
SIGNATURE = TRAILER_MEMBERS[0]


class Sink(Protocol):
    """Where verified bytes go. `open` returns a writable file for this entry, or None to only
    check it (e.g. its blob is already in the cache, or another path has the same content).
    `keep` is called once its digests matched; `discard` on any failure."""

    def open(self, entry: FileEntry) -> BinaryIO | None: ...

    def keep(self, entry: FileEntry, out: BinaryIO) -> None: ...

    def discard(self, entry: FileEntry, out: BinaryIO) -> None: ...


@dataclass(frozen=True)
class Extraction:
    signature: bytes | None  # the signature trailer member, when the bundle has one
    sha256: str | None  # the bundle's own sha256: when asked for, and always for multi-part
    files: int
    bytes: int


def _check(entry: FileEntry, h: DualHasher, where: str) -> None:
    if diff := first_difference(entry, h.digest()):
        raise HashMismatch(entry.path, algorithm=diff[0], expected=diff[1], actual=diff[2], where=where)


def _meter(reader: BundleReader, sink: Sink | None) -> progress.Meter:
    """Bytes hashed; a sink means the files are being installed, none that they are only checked."""
    return progress.meter(f"{'install' if sink is not None else 'verify'} {reader.manifest.repo_id}", reader.manifest.total_size)


def deal(jobs: list[tuple[FileEntry, int]]) -> tuple[int, list[list[tuple[FileEntry, int]]]]:
    """Files dealt round-robin to one thread per core, largest first."""
    jobs = sorted(jobs, key=lambda j: -j[0].size)
    workers = max(1, min(len(jobs), cores(), _MAX_THREADS))
    return workers, [jobs[i::workers] for i in range(workers)]


def extract(reader: BundleReader, *, sink: Sink | None = None, bundle_sha256: bool = False, sequential: bool = True) -> Extraction | None:
    """Read every payload file of `reader`, checking each against `reader.manifest`, handing the
    bytes to `sink`. `bundle_sha256` also hashes the whole stream (one serial chain: the
    sequential pass); a multi-part bundle always takes that pass, checking each part's digest.
    `sequential=False`: only the parallel positioned read, None when the layout does not allow it."""
    if not bundle_sha256:
        with reader.ranges() as src:
            layout = writer_layout(src, reader.manifest, reader.offset)
            if layout is not None:
                try:
                    return _parallel(reader, src, layout, sink)
                except HashMismatch:
                    if reader.parts is None or not sequential:
                        raise
                    # a damaged part: the one-pass read (nothing consumed yet) names it
    return _sequential(reader, sink) if sequential else None


def _parallel(reader: BundleReader, src, layout, sink: Sink | None) -> Extraction:
    """One thread per core, each taking the next largest file not yet taken. A file is read by
    position into the thread's own buffer (reused: no allocation, and it is still in the CPU
    cache when it is hashed and written), hashed inline (hashlib releases the GIL, so the threads
    run on all cores) and written from that same buffer: each byte is read once, from the kernel
    into one buffer, and copied once more only into its blob. No hand-over between threads."""
    jobs = sorted(layout.files, key=lambda j: -j[0].size)
    workers = max(1, min(len(jobs), cores(), _MAX_THREADS))
    # Fewer large files than cores (a one-shard model): a file's hash is one serial chain, so the
    # writes go to a helper thread per worker, overlapped with hashing the next buffer.
    overlap = sink is not None and sum(1 for f, _ in jobs if f.size >= _LARGE) < cores()
    where = f"in {reader.label}"
    stop = threading.Event()
    take = iter(jobs)
    take_lock = threading.Lock()

    def run() -> None:
        bufs = [memoryview(bytearray(RANGE_CHUNK)) for _ in range(2 if overlap else 1)]
        writer = _Writer(stop) if overlap else None
        try:
            while not stop.is_set():
                with take_lock:
                    job = next(take, None)
                if job is None:
                    return
                f, start = job
                out = sink.open(f) if sink is not None else None
                try:
                    h = DualHasher(f.size, lfs=f.lfs)
                    end = start + f.size
                    for n, off in enumerate(range(start, end, RANGE_CHUNK)):
                        if stop.is_set():
                            raise Cancelled()
                        buf = bufs[n % len(bufs)]
                        if writer is not None:
                            writer.wait_free(n % len(bufs))
                        view = buf[: min(RANGE_CHUNK, end - off)]
                        src.readinto(off, view)
                        h.update(view)
                        if out is not None and writer is not None:
                            writer.write(out, view, n % len(bufs))
                        elif out is not None:
                            out.write(view)
                        meter.add(len(view))
                    if writer is not None:
                        writer.flush()
                    _check(f, h, where)
                except BaseException:
                    stop.set()
                    if writer is not None:
                        writer.close()  # no write still in flight into the file discarded now
                    if out is not None:
                        sink.discard(f, out)
                    raise
                if out is not None:
                    sink.keep(f, out)
        finally:
            if writer is not None:
                writer.close()

    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        with _meter(reader, sink) as meter:
            futures = [pool.submit(run) for _ in range(workers)]
            errors = [f.exception() for f in futures]
    except BaseException:  # Ctrl-C, SIGTERM: the threads stop at their next chunk
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    # the first real failure, not a thread that stopped because another one failed
    for e in sorted((e for e in errors if e is not None), key=lambda e: isinstance(e, Cancelled)):
        raise e
    sig = None
    if SIGNATURE in layout.trailer:
        off, size = layout.trailer[SIGNATURE]
        sig = src.read(off, size)
    return Extraction(signature=sig, sha256=None, files=len(layout.files), bytes=sum(f.size for f, _ in layout.files))


_LARGE = 64 * 1024 * 1024


class _Writer:
    """One helper thread that writes a worker's buffer k while the worker reads and hashes into
    buffer k+1 (double buffering: a buffer is reused only after its write finished). A failed
    write is raised in the worker at its next call."""

    def __init__(self, stop: threading.Event):
        self._stop = stop
        self._free = [threading.Event(), threading.Event()]
        for e in self._free:
            e.set()
        self._todo: list = []
        self._cv = threading.Condition()
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="extract-writer")
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._todo and not self._closed:
                    self._cv.wait()
                if not self._todo:
                    return
                out, view, slot = self._todo.pop(0)
            try:
                if self._error is None:
                    out.write(view)
            except BaseException as e:  # ENOSPC, EIO: the worker raises it
                self._error = e
            finally:
                self._free[slot].set()

    def wait_free(self, slot: int) -> None:
        while not self._free[slot].wait(0.1):
            if self._stop.is_set():
                raise Cancelled()
        if self._error is not None:
            raise self._error

    def write(self, out, view: memoryview, slot: int) -> None:
        self._free[slot].clear()
        with self._cv:
            self._todo.append((out, view, slot))
            self._cv.notify()

    def flush(self) -> None:
        for slot in range(len(self._free)):
            self.wait_free(slot)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join()


def _sequential(reader: BundleReader, sink: Sink | None) -> Extraction:
    where = f"in {reader.label}"
    sig = None
    files = total = 0
    with HashLanes(3) as lanes, _meter(reader, sink) as meter:
        reader.attach_lanes(lanes)
        for member, chunks in reader.payload():
            if member.problem:
                raise BundleError(reader.label, member.problem)
            if member.kind == "meta":
                if member.size > MAX_TRAILER:
                    raise BundleError(reader.label, f"{member.name} is {member.size} bytes, larger than any signature")
                data = b"".join(chunks)
                if member.name == SIGNATURE:
                    sig = data
                continue
            entry = member.entry
            if entry is None:  # a directory member
                continue
            if member.size != entry.size:
                raise HashMismatch(entry.path, algorithm="size", expected=str(entry.size), actual=str(member.size), where=where)
            out = sink.open(entry) if sink is not None else None
            try:
                h = DualHasher(entry.size, lfs=entry.lfs, lanes=lanes, lane_ids=(1, 2))
                for chunk in chunks:
                    if out is not None:
                        out.write(chunk)
                    h.update(chunk)
                    meter.add(len(chunk))
                try:
                    _check(entry, h, where)
                except HashMismatch:
                    if reader.parts is not None:
                        reader.parts.check_current_part()  # name the damaged part, if it is one
                    raise
            except BaseException:
                if out is not None:
                    sink.discard(entry, out)
                raise
            if out is not None:
                sink.keep(entry, out)
            files += 1
            total += entry.size
        if reader.missing:
            raise BundleError(reader.label, f"{len(reader.missing)} file(s) listed in the manifest are missing from the tar, first {reader.missing[0]!r}")
        sha = reader.sha256 if reader.hashing else None
    return Extraction(signature=sig, sha256=sha, files=files, bytes=total)
