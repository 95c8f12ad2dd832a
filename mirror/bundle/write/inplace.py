"""Writing a bundle in place: every file's bytes at their final offset, as they arrive (pull).

The Hub's listing gives each file's size and each LFS file's sha256, and digests have fixed
lengths, so the whole tar layout is known before any file is downloaded (the writer is
deterministic, docs/bundle-format.md 1.3-1.4; only the card's licence and any pickle scans go
into the manifest's size): each shard has a known region of the bundle. `mirror pull` downloads
every shard straight into its region, several at once, hashing each on the way (`Region`, the
file object huggingface_hub's `http_get` writes to), while the small files arrive and are
hashed for the manifest; the bytes around the regions are written once it is final
(`write_fixed`), and one lane follows the bundle front to back and hashes it for the sidecar,
each region as it is written, passing it once it is complete and matched. No staging copy is
written and read back: each byte is written once and read once.

Resume: the partial bundle and a journal (bytes written per region, updated every
`NOTE_EVERY` bytes and at the end of each file) live in the pull's staging folder, which is never
trusted. A rerun with the same manifest re-hashes what the journal names from the partial (that
rebuilds each file's sha256 state) and downloads only the rest, with a `Range`. Whatever the
partial holds is what gets hashed, so a journal that claims more than is really there (a power
cut) ends in that file's sha256 mismatch, its entry reset, and a rerun fetching it again.
Everything outside the regions (headers, the small files, padding, the trailer) is rewritten on
every run. The finished partial is renamed onto the bundle's name only after every file and the
stream were hashed.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from common import atomic
from mirror.errors import HashMismatch, NotEnoughSpace, UsageError
from mirror.hashing import Cancelled
from mirror.bundle.layout import BLOCK, archive_size
from mirror.bundle.write.files import copy_source

JOURNAL_FORMAT = 1
NOTE_EVERY = 32 * 1024 * 1024  # journal each region's progress this often (a rerun resumes from there; ~30 small writes per GB)
READ_CHUNK = 1024 * 1024  # read-back (stream lane, re-hash on resume) into one reused buffer
PARTIAL_NAME = "bundle.tar.partial"
JOURNAL_NAME = "bundle.journal.json"
LOCK_NAME = "lock"
MAX_JOURNAL = 16 * 1024 * 1024  # a path and a count per file: far more than any repo needs


@dataclass(frozen=True)
class Fixed:
    """Bytes the writer itself puts at `offset` (headers, a small file's content, padding)."""

    offset: int
    data: bytes | None  # None: `source` is copied there (a file already hashed and checked)
    size: int
    source: object = None  # mirror.bundle.write.files.SourceFile
    path: str = ""
    sha256: str | None = None  # a source not hashed yet (its digest the Hub's): checked as it is copied


@dataclass(frozen=True)
class Slot:
    """A region the caller fills: one file's bytes at `offset`, expected to hash to `sha256`."""

    path: str
    offset: int
    size: int
    sha256: str


def journaled(staging: Path) -> int:
    """Bytes the journal in `staging` says are already written (for a free-space estimate)."""
    j = _read_journal(staging / JOURNAL_NAME)
    return sum(j.get("done", {}).values()) if j else 0


def _open_own(path: Path) -> int:
    """Open (creating) one of the writer's own files for reading and writing: never through a
    link, never a FIFO or device planted under its name (O_NONBLOCK: such an open cannot hang)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as e:
        if e.errno == getattr(errno, "ELOOP", -1):
            raise UsageError(f"{path} is a symbolic link, not a pull's own file; remove it and pull again") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError(f"{path} is not a regular file, not a pull's own file; remove it and pull again")
    os.set_blocking(fd, True)
    return fd


def _read_journal(path: Path) -> dict | None:
    try:  # never through a link, never a FIFO (it would block), never a huge file
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_JOURNAL:
                return None
            raw = json.loads(os.pread(fd, MAX_JOURNAL, 0))
        finally:
            os.close(fd)
    except (OSError, ValueError):
        return None  # none, unreadable or not JSON: start over, the partial is never trusted anyway
    if not isinstance(raw, dict) or raw.get("format") != JOURNAL_FORMAT or not isinstance(done := raw.get("done"), dict):
        return None
    if not all(isinstance(k, str) and type(v) is int and v >= 0 for k, v in done.items()):
        return None
    return raw


class Region:
    """One file's bytes in the partial bundle, written by position. A binary file object for
    huggingface_hub's `http_get`: `write` appends (never past the listed size), `tell`, and
    `seek`/`truncate` back (what `http_get` does when a server ignores a `Range`), after which
    the file's sha256 is rebuilt from what the partial holds up to there."""

    def __init__(self, owner: "InPlaceWriter", slot: Slot, start: int):
        self._owner = owner
        self.slot = slot
        self.path, self.size = slot.path, slot.size
        self.done = threading.Event()  # complete and matched: the stream lane may hash it
        self._noted = 0
        self._pos = 0
        self._lane_at = 0  # how far into this region the stream lane has read (or is reading)
        self._rehash(min(start, slot.size))

    # --- the file object ------------------------------------------------------------------------

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        pass

    def write(self, b) -> int:
        view = memoryview(b).cast("B")
        n = len(view)
        if self._pos + n > self.size:
            raise HashMismatch(self.path, algorithm="size", expected=str(self.size), actual=f"more than {self.size}", where="in the download")
        self._owner._pwrite(view, self.slot.offset + self._pos)
        self._sha.update(view)
        with self._owner._lock:  # the stream lane follows what is written, as it is written
            self._pos += n
            self._owner._lock.notify_all()
        if self._pos - self._noted >= NOTE_EVERY:
            self._owner._note(self, self._pos)
        return n

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        target = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._pos}[whence] + pos
        if not 0 <= target <= self._pos:
            raise ValueError(f"a region can seek back only within what was written ({target} of {self._pos})")
        if target != self._pos:
            self._rehash(target)
        return target

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        if size < self._pos:
            self._rehash(size)
        return self._pos

    # --- the writer's side ----------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self.done.is_set()

    def finish(self) -> None:
        """The file is in: check its size and sha256 against the listing. A mismatch resets its
        journal entry (a rerun fetches it afresh) and raises HashMismatch naming it."""
        if self._pos != self.size or (got := self._sha.hexdigest()) != self.slot.sha256:
            self._owner._note(self, 0)
            if self._pos != self.size:
                raise HashMismatch(self.path, algorithm="size", expected=str(self.size), actual=str(self._pos), where="in the download")
            raise HashMismatch(self.path, algorithm="sha256", expected=self.slot.sha256, actual=got, where="against the Hub's hash")
        self._owner._note(self, self.size)
        with self._owner._lock:
            self.done.set()
            self._owner._lock.notify_all()

    def _rehash(self, upto: int) -> None:
        with self._owner._lock:
            if self._lane_at > upto:  # the stream lane hashed bytes about to be rewritten: it starts over
                self._owner._restart = True
            self._pos = upto
        self._sha = hashlib.sha256()
        self._owner._read_into(self._sha, self.slot.offset, upto)
        self._noted = upto


class InPlaceWriter:
    """The partial bundle `staging/bundle.tar.partial`, `total` bytes: `slots` (filled by the
    caller through `regions()`, from the moment it is entered) and the `Fixed` pieces around them
    (`write_fixed`, once the manifest is final). `key` identifies what the regions hold (the
    layout and every region's expected sha256): a journal with another key is ignored and the
    partial starts over. Use as a context manager; `stream_sha256()`
    (after every region finished) is the bundle's sha256 for the sidecar."""

    def __init__(self, staging: Path, *, key: str, total: int, slots: list[Slot], where: str):
        staging.mkdir(parents=True, exist_ok=True)
        self.partial = staging / PARTIAL_NAME
        self.journal = staging / JOURNAL_NAME
        self.key, self.total, self.slots, self.where = key, total, slots, where
        self._fixed_ready = False  # the bytes around the regions are written (`write_fixed`)
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._lock = threading.Condition()
        self._users = 0  # positioned reads and writes in flight (close waits for them)
        self._cancelled = False
        self._restart = False  # a region was rewound below what the stream lane hashed
        self._done: dict[str, int] = {}
        self._regions: list[Region] = []
        self._lane: threading.Thread | None = None
        self._lane_result: list = []

    # --- open, fill, close ------------------------------------------------------------------------

    def __enter__(self) -> "InPlaceWriter":
        # One writer at a time (a second pull of the same commit, even with other --include
        # patterns, shares this folder): taken before anything here is read or replaced, and
        # released by the kernel if this process dies.
        self._lock_fd = _open_own(self.partial.parent / LOCK_NAME)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise UsageError(f"another mirror pull is writing this bundle in {self.partial.parent}; wait for it to finish, then rerun") from None
        try:
            return self._open()
        except BaseException:
            self._unlock()
            raise

    def _open(self) -> "InPlaceWriter":
        atomic.sweep(self.partial.parent)  # a journal temporary of a SIGKILLed run
        j = _read_journal(self.journal)
        resume = j is not None and j.get("key") == self.key and j.get("total") == self.total
        if not resume:
            # nothing of an older layout is kept. Unlinked, not truncated: ext4 flushes a file
            # truncated to zero when it is closed (auto_da_alloc), a synchronous write of it all.
            self.partial.unlink(missing_ok=True)
        self._fd = _open_own(self.partial)
        try:
            self._done = {s.path: min(int((j or {}).get("done", {}).get(s.path, 0)) if resume else 0, s.size) for s in self.slots}
            needed = self.total - sum(self._done.values())  # what the regions still take, and the rest
            free = shutil.disk_usage(self.partial.parent).free
            if free < needed:
                raise NotEnoughSpace(self.where, needed=needed, free=free)
            os.ftruncate(self._fd, self.total)
            self._write_journal()
            self._regions = [Region(self, s, self._done[s.path]) for s in self.slots]
            for r in self._regions:  # resumed whole: re-hashed above, matched here, not fetched again
                if r.tell() == r.size:
                    try:
                        r.finish()
                    except HashMismatch:
                        r._rehash(0)
        except BaseException:
            self._close_fd()
            raise
        self._lane = threading.Thread(target=self._stream_lane, name="bundle-stream-sha256", daemon=True)
        self._lane.start()
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()
        if self._lane is not None:
            self._lane.join()
        self._close_fd()
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def write_fixed(self, fixed: list[Fixed]) -> None:
        """Write everything around the regions (the manifest member, headers, the small files,
        padding, the trailer: rewritten on every run); the stream lane starts hashing then."""
        for piece in fixed:
            self._put_fixed(piece)
        with self._lock:
            self._fixed_ready = True
            self._lock.notify_all()

    def regions(self) -> list[Region]:
        """Every slot's region, in bundle order; those not `complete` are to be filled, each
        ended by `finish()`."""
        return list(self._regions)

    def cancel(self) -> None:
        """Stop: writes in flight finish, the next ones raise Cancelled, the lane stops."""
        with self._lock:
            self._cancelled = True
            self._lock.notify_all()

    def stream_sha256(self) -> str:
        """The sha256 of the whole partial, once every region is complete (the lane's result)."""
        assert self._lane is not None
        self._lane.join()
        if not self._lane_result or isinstance(self._lane_result[0], BaseException):
            raise self._lane_result[0] if self._lane_result else Cancelled("the stream lane did not finish")
        return self._lane_result[0]

    def publish(self, final: Path) -> None:
        """Move the finished partial onto `final` (same file system: the staging folder is
        inside the bundle folder) and forget the journal."""
        self._close_fd()
        os.replace(self.partial, final)
        self.journal.unlink(missing_ok=True)

    # --- internals --------------------------------------------------------------------------------

    def _close_fd(self) -> None:
        with self._lock:
            self._cancelled = True
            while self._users:
                self._lock.wait()
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _enter(self) -> int:
        with self._lock:
            if self._cancelled or self._fd is None:
                raise Cancelled("the bundle writer stopped")
            self._users += 1
            return self._fd

    def _leave(self) -> None:
        with self._lock:
            self._users -= 1
            self._lock.notify_all()

    def _pwrite(self, view: memoryview, offset: int) -> None:
        fd = self._enter()  # the descriptor cannot be closed (and its number reused) under us
        try:
            while len(view):
                n = os.pwrite(fd, view, offset)
                view, offset = view[n:], offset + n
        finally:
            self._leave()

    def _read_into(self, h, offset: int, size: int, view: memoryview | None = None) -> None:
        """Feed `size` bytes of the partial from `offset` to the hash `h`, read by position into
        `view` (the stream lane's own buffer) or a fresh one."""
        if not size:
            return
        if view is None:
            view = memoryview(bytearray(min(READ_CHUNK, size)))
        end = offset + size
        while offset < end:
            fd = self._enter()
            try:
                n = os.preadv(fd, [view[: min(len(view), end - offset)]], offset)
            finally:
                self._leave()
            if not n:
                raise EOFError(f"{self.partial} ended at {offset} of {self.total} bytes")
            h.update(view[:n])
            offset += n

    def _put_fixed(self, piece: Fixed) -> None:
        if piece.data is not None:
            self._pwrite(memoryview(piece.data), piece.offset)
            return
        at = [piece.offset]

        def put(data: bytes) -> None:
            self._pwrite(memoryview(data), at[0])
            at[0] += len(data)

        check = hashlib.sha256() if piece.sha256 else None
        copy_source(piece.source, put, check=check)
        if at[0] - piece.offset != piece.size:
            raise EOFError(f"{piece.source.shown} gave {at[0] - piece.offset} of {piece.size} bytes")
        if check is not None and (got := check.hexdigest()) != piece.sha256:
            raise HashMismatch(str(piece.path), algorithm="sha256", expected=piece.sha256, actual=got, where="against the Hub's hash")

    def _note(self, region: Region, upto: int) -> None:
        with self._lock:
            self._done[region.path] = upto
            region._noted = upto
            self._write_journal()

    def _write_journal(self) -> None:
        body = {"format": JOURNAL_FORMAT, "key": self.key, "total": self.total, "done": self._done}
        atomic.write_atomic(self.journal, json.dumps(body, sort_keys=True))

    def _stream_lane(self) -> None:
        """Hash the partial front to back for the sidecar, following each region's bytes as they
        are written (one serial chain: it keeps up with any download, so the hash is done soon
        after the last byte arrives), and passing a region only once it is complete and matched.
        A region rewound below what was hashed (a server that ignored `Range`) starts it over."""
        try:
            while True:
                try:
                    self._lane_result.append(self._hash_stream())
                    return
                except _Restart:
                    continue
        except BaseException as e:  # handed to stream_sha256's caller
            self._lane_result.append(e)

    def _hash_stream(self) -> str:
        with self._lock:
            self._restart = False
            for r in self._regions:
                r._lane_at = 0
        with self._lock:
            while not (self._fixed_ready or self._cancelled):
                self._lock.wait(0.1)
        h = hashlib.sha256()
        view = memoryview(bytearray(READ_CHUNK))  # one buffer for the whole pass
        at = 0
        for r in self._regions:
            self._read_into(h, at, r.slot.offset - at, view)
            pos = 0
            while True:
                with self._lock:
                    while not (self._restart or self._cancelled or r._pos > pos or (pos == r.size and r.done.is_set())):
                        self._lock.wait(0.1)
                    if self._cancelled:
                        raise Cancelled("the bundle writer stopped")
                    if self._restart:
                        raise _Restart()
                    if pos == r.size:
                        break
                    upto = r._lane_at = r._pos
                self._read_into(h, r.slot.offset + pos, upto - pos, view)
                pos = upto
            at = r.slot.offset + r.size
        self._read_into(h, at, self.total - at, view)
        with self._lock:
            if self._restart:
                raise _Restart()
        return h.hexdigest()


class _Restart(Exception):
    """The stream lane must start over: bytes it hashed were rewritten."""


def layout(
    manifest_member: bytes, members: list[tuple[str, bytes, int, object, str | None]], *, total: int, slots: frozenset[str]
) -> tuple[list[Fixed], list[Slot]]:
    """Offsets of everything in the tar: `members` are (path, header bytes, size, source, the
    Hub's sha256 when it is promised) in bundle order; a path in `slots` is filled by the caller
    (its sha256 must be promised), any other is copied from `source`, checked against a promised
    sha256 on the way. The zero bytes after the last member fill it up to `total`, which must be
    the tar's size for these members (`layout.archive_size`)."""
    fixed = [Fixed(offset=0, data=manifest_member, size=len(manifest_member))]
    out: list[Slot] = []
    at = len(manifest_member)
    for path, header, size, source, sha in members:
        fixed.append(Fixed(offset=at, data=header, size=len(header)))
        at += len(header)
        if path in slots:
            if not sha:
                raise ValueError(f"{path} has no promised sha256 to check it against; it cannot be filled in place")
            out.append(Slot(path=path, offset=at, size=size, sha256=sha))
        elif size:
            fixed.append(Fixed(offset=at, data=None, size=size, source=source, path=path, sha256=sha))
        at += size
        if pad := -size % BLOCK:
            fixed.append(Fixed(offset=at, data=b"\0" * pad, size=pad))
            at += pad
    if archive_size(at) != total:
        raise RuntimeError(f"in-place layout of {at} bytes of members is not a tar of {total} bytes")
    fixed.append(Fixed(offset=at, data=b"\0" * (total - at), size=total - at))
    return fixed, out
