"""Bytes of one served file, read from the bundle at the member's offset: never extracted, never copied.

Only bytes that were verified ever leave the server. The bundle was verified whole when it was
admitted (`mirror.serve.catalogue`); what a request then sends is guarded two ways:

- A small file (up to SMALL_FILE: configs, tokenizers, cards) is read whole, hashed, and sent
  from memory only if its sha256 is the manifest's (`Verified`). A change is refused whatever
  the timestamps say, and before a byte of it is sent.
- A larger file is sent from the bundle's descriptor positioned at the member's data
  (`Segment`): the HTTP front hands it to `os.sendfile` for exactly Content-Length bytes, and the
  kernel copies from the page cache to the socket without the bytes passing through Python. A
  member of a multi-part bundle that lies in one part is the same; one that spans parts is read
  part by part in bounded chunks (`MultiSegment`).

Every open checks on the open descriptor (`fstat`) that the file is still the one that was
verified: device, inode, size, mtime and ctime (`state.stat_key`; a write, even one followed by
putting the mtime back, sets ctime). A bundle replaced or rewritten since is never served from:
the request is answered 503 (`BundleChanged`) and the bundle's `Stream.on_change` asks the
catalogue to verify it again. Bytes that pass through Python are checked again after each read;
bytes sent by `sendfile` are checked once more when the response is closed, which can only report
a write that raced the send (docs/security.md, "mirror serve: served bytes").
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from mirror.bundle import stored
from mirror.errors import MirrorError
from mirror.manifest import FileEntry
from common.safeio import NotRegularFile, open_regular
from mirror.serve.state import FileIdentity, Identity, stat_key

CHUNK = 1024 * 1024  # per read when the bytes must pass through Python: memory stays bounded
SMALL_FILE = 16 * 1024 * 1024  # hashed before sending: every config and nearly every tokenizer.json; at most threads x this in memory
log = logging.getLogger("mirror.serve")


@dataclass(frozen=True)
class Stream:
    """Where a bundle's byte stream lives: one file, or the parts of a multi-part bundle."""

    files: tuple[Path, ...]
    idents: tuple[FileIdentity, ...]  # per file, as verified: (name, st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)
    span: int  # bytes in every part but the last (the file's size for a single file)
    size: int
    on_change: Callable[[Path], None] | None = field(default=None, compare=False, repr=False)  # told when a file is found changed

    def changed(self, path: Path) -> "BundleChanged":
        """The error for a file of this stream found changed, after telling `on_change`."""
        if self.on_change is not None:
            self.on_change(path)
        return BundleChanged(path)

    def check(self, k: int, fd: int) -> None:
        """BundleChanged unless the open file `k` is still the one that was verified."""
        if stat_key(os.fstat(fd)) != tuple(self.idents[k][1:]):
            raise self.changed(self.files[k])

    def unchanged(self) -> bool:
        """Whether every file still has its verified identity, by path (no open): for answers
        that send no bytes, such as HEAD."""
        try:
            return all(stat_key(os.stat(p)) == tuple(i[1:]) for p, i in zip(self.files, self.idents))
        except OSError:
            return False


@dataclass(frozen=True)
class FileSource:
    """One served file: its manifest entry and where its data starts in a bundle stream."""

    entry: FileEntry
    stream: Stream
    offset: int


class BundleChanged(MirrorError, OSError):
    """The bundle file is no longer the one that was verified: not served until verified again."""

    def __init__(self, path: Path):
        self.path = path
        super().__init__(f"{path.name} changed since it was verified; it is being verified again, retry in a few seconds")


def stream_of(path: Path, ident: Identity, *, on_change: Callable[[Path], None] | None = None) -> Stream:
    """The Stream of a bundle whose identity (`state.identity`) is `ident`."""
    loc = stored.locate(path)
    if loc.multipart:
        files, span, size = loc.pieces()
        return Stream(files=files, idents=tuple(ident[1:]), span=span, size=size, on_change=on_change)
    size = ident[0][3]
    return Stream(files=(path,), idents=(ident[0],), span=max(1, size), size=size, on_change=on_change)


def _open(stream: Stream, k: int) -> BinaryIO:
    path = stream.files[k]
    try:
        f = open_regular(path, buffering=0)
    except (FileNotFoundError, NotRegularFile):
        raise stream.changed(path) from None
    try:
        stream.check(k, f.fileno())
    except BaseException:
        f.close()
        raise
    return f


def open_range(src: FileSource, start: int, end: int) -> "Verified | Segment | MultiSegment":
    """The body for bytes [start, end) of the file `src` (0 <= start <= end <= size)."""
    if src.entry.size <= SMALL_FILE:
        return Verified(src, start, end)
    return _open_span(src, start, end)


def _open_span(src: FileSource, start: int, end: int) -> "Segment | MultiSegment":
    stream = src.stream
    at, n = src.offset + start, end - start
    if len(stream.files) == 1:
        return Segment(_open(stream, 0), at, n, stream=stream, k=0)
    k, off = stored.piece_at(at, stream.span, len(stream.files))
    if off + n <= stream.span:
        return Segment(_open(stream, k), off, n, stream=stream, k=k)
    return MultiSegment(stream, at, n)


class Verified:
    """Bytes [start, end) of a small file, held in memory after the whole file was read and its
    sha256 found equal to the manifest's: whatever happened to the bundle, these are the bytes
    that were verified (and, under --public-key, signed). BundleChanged, before anything is sent,
    when they are not."""

    def __init__(self, src: FileSource, start: int, end: int):
        with _open_span(src, 0, src.entry.size) as whole:
            data = b"".join(whole.chunks())
        if len(data) != src.entry.size or hashlib.sha256(data).hexdigest() != src.entry.sha256:
            raise src.stream.changed(src.stream.files[stored.piece_at(src.offset, src.stream.span, len(src.stream.files))[0]])
        self._data = memoryview(data)[start:end]
        self.length = end - start

    def chunks(self) -> Iterator[bytes]:
        for i in range(0, len(self._data), CHUNK):
            yield bytes(self._data[i : i + CHUNK])

    def close(self) -> None:
        self._data = memoryview(b"")

    def __enter__(self) -> "Verified":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Segment:
    """`length` bytes of one open file from `start`: what the HTTP front (`httpd`) sends with
    `os.sendfile` from `fileno()` at explicit offsets, or reads through `chunks()`."""

    def __init__(self, f: BinaryIO, start: int, length: int, *, stream: Stream, k: int):
        self._f = f
        self.start = start
        self.length = length
        self.pos = start
        self._stream, self._k = stream, k

    def fileno(self) -> int:
        return self._f.fileno()

    def read(self, n: int = -1) -> bytes:
        left = self.start + self.length - self.pos
        n = left if n is None or n < 0 else min(n, left)
        if n <= 0:
            return b""
        data = os.pread(self._f.fileno(), n, self.pos)
        self.check()  # a write sets ctime before it changes a byte: unchanged now means these bytes are the verified ones
        if not data:  # the file shrank under us: the identity check makes this a race, not a state
            raise self._stream.changed(self._stream.files[self._k])
        self.pos += len(data)
        return data

    def chunks(self) -> Iterator[bytes]:
        while data := self.read(CHUNK):
            yield data

    def check(self) -> None:
        """BundleChanged unless the file is still the one that was verified. A sender that copies
        with sendfile calls it after each slice: a write sets ctime before it changes a byte, so a
        check that passes after a slice went out means every byte of it was a verified one, and one
        that fails means: cut the connection, so the client never holds a complete response."""
        self._stream.check(self._k, self._f.fileno())

    def close(self) -> None:
        """Closes the file, after one more identity check: sendfile copies in the kernel, so a
        write that raced it is seen here at the latest. What went out cannot be recalled; it is
        logged, and the bundle is not served again until it verifies."""
        if self._f.closed:
            return
        try:
            self.check()
        except BundleChanged:
            log.error("%s changed while a response was being sent from it: that response may hold unverified bytes; "
                      "the bundle is not served until it verifies again", self._stream.files[self._k].name)
        finally:
            self._f.close()

    def __enter__(self) -> "Segment":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class MultiSegment:
    """`length` bytes from stream offset `at` across the parts of a multi-part bundle, read part
    by part in CHUNK-sized positioned reads."""

    def __init__(self, stream: Stream, at: int, length: int):
        self.stream = stream
        self.at = at
        self.length = length
        self._open: BinaryIO | None = None
        first = stored.piece_at(at, stream.span, len(stream.files))[0]
        self._open = _open(stream, first)  # the first part checked now: a changed bundle is a 503, not a cut body
        self._k = first

    def chunks(self) -> Iterator[bytes]:
        pos, left = self.at, self.length
        while left > 0:
            k, off = stored.piece_at(pos, self.stream.span, len(self.stream.files))
            if k != self._k or self._open is None:
                self.close()
                self._open, self._k = _open(self.stream, k), k
            n = min(CHUNK, left, self.stream.span - off)
            data = os.pread(self._open.fileno(), n, off)
            self.stream.check(k, self._open.fileno())
            if not data:
                raise self.stream.changed(self.stream.files[k])
            pos += len(data)
            left -= len(data)
            yield data

    def close(self) -> None:
        if self._open is not None:
            self._open.close()
            self._open = None

    def __enter__(self) -> "MultiSegment":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
