"""Bytes of one served file, read from the bundle at the member's offset: never extracted, never copied.

A single-file bundle's member is one contiguous range of one file, so the response body is that
file's descriptor positioned at the member's data (`Segment`): gunicorn hands it to
`os.sendfile` for exactly Content-Length bytes, and the kernel copies from the page cache to the
socket without the bytes passing through Python. A member of a multi-part bundle that lies in
one part is the same; one that spans parts is read part by part in bounded chunks
(`MultiSegment`).

Every open checks that the file is still the one that was verified (device, inode, size,
modification time): a bundle replaced or rewritten since is never served from, and the request
is answered 503 until the rescan has verified it again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from mirror import parts
from mirror.errors import MirrorError
from mirror.manifest import FileEntry
from mirror.safeio import NotRegularFile, open_regular

CHUNK = 1024 * 1024  # per read when the bytes must pass through Python: memory stays bounded


@dataclass(frozen=True)
class Stream:
    """Where a bundle's byte stream lives: one file, or the parts of a multi-part bundle."""

    files: tuple[Path, ...]
    idents: tuple[tuple[str, int, int, int, int], ...]  # per file: (name, st_dev, st_ino, st_size, st_mtime_ns)
    span: int  # bytes in every part but the last (the file's size for a single file)
    size: int


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


def stream_of(path: Path, ident) -> Stream:
    """The Stream of a bundle whose identity (`state.identity`) is `ident`."""
    loc = parts.locate(path)
    if loc.multipart:
        index = parts.read_index(loc.index)
        files = tuple(loc.index.parent / p.name for p in index.parts)
        return Stream(files=files, idents=tuple(ident[1:]), span=index.max_part_size, size=index.size)
    size = ident[0][3]
    return Stream(files=(path,), idents=(ident[0],), span=max(1, size), size=size)


def _open(stream: Stream, k: int) -> BinaryIO:
    path = stream.files[k]
    try:
        f = open_regular(path, buffering=0)
    except (FileNotFoundError, NotRegularFile):
        raise BundleChanged(path) from None
    st = os.fstat(f.fileno())
    if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != tuple(stream.idents[k][1:]):
        f.close()
        raise BundleChanged(path)
    return f


def open_range(src: FileSource, start: int, end: int) -> "Segment | MultiSegment":
    """The body for bytes [start, end) of the file `src` (0 <= start <= end <= size)."""
    stream = src.stream
    at, n = src.offset + start, end - start
    if len(stream.files) == 1:
        return Segment(_open(stream, 0), at, n)
    k = min(at // stream.span, len(stream.files) - 1)
    off = at - k * stream.span
    if off + n <= stream.span:
        return Segment(_open(stream, k), off, n)
    return MultiSegment(stream, at, n)


class Segment:
    """`length` bytes of one open file from `start`, as a file-like gunicorn can `sendfile`:
    `fileno()` positioned at the data, `read()` stopping at the end, and `seek()` (which
    `socket.sendfile` calls with where it stopped) recording what was sent."""

    def __init__(self, f: BinaryIO, start: int, length: int):
        self._f = f
        self.start = start
        self.length = length
        self.pos = start
        os.lseek(f.fileno(), start, os.SEEK_SET)

    @property
    def sent(self) -> int:
        return max(0, min(self.pos - self.start, self.length))

    def fileno(self) -> int:
        return self._f.fileno()

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        self.pos = os.lseek(self._f.fileno(), pos, whence)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        left = self.start + self.length - self.pos
        n = left if n is None or n < 0 else min(n, left)
        if n <= 0:
            return b""
        data = os.pread(self._f.fileno(), n, self.pos)
        if not data:  # the file shrank under us: the identity check makes this a race, not a state
            raise BundleChanged(Path(getattr(self._f, "name", "bundle")))
        self.pos += len(data)
        return data

    def chunks(self) -> Iterator[bytes]:
        while data := self.read(CHUNK):
            yield data

    def close(self) -> None:
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
        self.sent = 0
        self._open: BinaryIO | None = None
        first = at // stream.span
        self._open = _open(stream, first)  # the first part checked now: a changed bundle is a 503, not a cut body
        self._k = first

    def chunks(self) -> Iterator[bytes]:
        pos, left = self.at, self.length
        while left > 0:
            k, off = divmod(pos, self.stream.span)
            if k != self._k or self._open is None:
                self.close()
                self._open, self._k = _open(self.stream, k), k
            n = min(CHUNK, left, self.stream.span - off)
            data = os.pread(self._open.fileno(), n, off)
            if not data:
                raise BundleChanged(self.stream.files[k])
            pos += len(data)
            left -= len(data)
            self.sent += len(data)
            yield data

    def close(self) -> None:
        if self._open is not None:
            self._open.close()
            self._open = None

    def __enter__(self) -> "MultiSegment":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
