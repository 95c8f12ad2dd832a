"""A bundle on disk: one NAME.tar, or the parts of a multi-part bundle behind NAME.tar.parts.json;
where its bytes are, how they are read (one sequential stream, or by position), its `.sha256`
sidecar, and which bundles a folder holds.

Every reader of a stored bundle asks here, so the rules are written once: a single NAME.tar wins
over parts of the same name (`locate`, `scan_folder`); a part, the index or the base name all
name a multi-part bundle; nothing is opened that is not a regular file (a FIFO named like a
bundle or a sidecar would block the reader for ever, a device would never end). The parts'
format and writer are `mirror.bundle.parts`; the tar inside is `mirror.bundle.codec`'s.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from common.atomic import write_atomic
from common.safeio import NotRegularFile, describe, open_regular
from mirror.bundle.parts import INDEX_SUFFIX, PART_RE, PartsIndex, index_path, read_index
from mirror.errors import BundleError, PartError
from mirror.hashing import sha256sum_line
from mirror.ids import is_sha256

SIDECAR_SUFFIX = ".sha256"
_READ_THROUGH = 64 * 1024  # forward seeks this short are read (and hashed) rather than seeked
MAX_SIDECAR = 4096  # `<64 hex>  NAME.tar\n`: a longer file is not a sidecar of ours


# --- locating a bundle --------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredBundle:
    """A bundle on disk: where its bytes are. `path` is the logical NAME.tar (it does not exist on
    disk for a multi-part bundle); `index` is NAME.tar.parts.json for a multi-part one, else None."""

    path: Path
    index: Path | None

    @property
    def multipart(self) -> bool:
        return self.index is not None

    @property
    def where(self) -> Path:
        """The name on disk that stands for the bundle: the index of a multi-part one, else the file."""
        return self.index if self.index is not None else self.path

    @property
    def sidecar(self) -> Path | None:
        """NAME.tar.sha256 beside a single-file bundle (a multi-part one's index holds its sha256)."""
        return None if self.multipart else self.path.with_name(self.path.name + SIDECAR_SUFFIX)

    def size(self) -> int:
        """Bytes of the whole stream: the index's figure for a multi-part bundle."""
        return read_index(self.index).size if self.index is not None else os.stat(self.path).st_size

    def pieces(self) -> tuple[tuple[Path, ...], int, int]:
        """The files that hold the stream, in order; the bytes in each but the last (`span`:
        `piece_at` finds a stream offset's file with it); and the stream's size."""
        if self.index is None:
            size = os.stat(self.path).st_size
            return (self.path,), max(1, size), size
        index = read_index(self.index)
        return tuple(self.index.parent / p.name for p in index.parts), index.max_part_size, index.size

    def sidecar_sha256(self) -> str | None:
        """The digest the `.sha256` sidecar claims, or None (see `read_sidecar`)."""
        return None if self.sidecar is None else read_sidecar(self.sidecar)


def piece_at(offset: int, span: int, count: int) -> tuple[int, int]:
    """Which of `count` files of a stream cut every `span` bytes holds stream byte `offset`, and
    the offset in that file (the last file takes whatever is past its start)."""
    k = min(offset // span, count - 1)
    return k, offset - k * span


def locate(path: str | os.PathLike) -> StoredBundle:
    """Accept any of the names a user might type for a multi-part bundle: the index
    (NAME.tar.parts.json), any part (NAME.tar.part0003), or the base name NAME.tar. A single
    NAME.tar file on disk wins over parts of the same name (it is what the name says)."""
    p = Path(path)
    if p.name.endswith(INDEX_SUFFIX):
        return StoredBundle(path=p.with_name(p.name[: -len(INDEX_SUFFIX)]), index=p)
    m = PART_RE.match(p.name)
    if m:
        base = p.with_name(m.group("bundle"))
        idx = index_path(base)
        if not idx.is_file():
            raise BundleError(
                str(p),
                f"this is a part of a multi-part bundle but its index {idx.name} is missing",
                fix=f"copy {idx.name} next to the parts (it was written with them) and try again",
            )
        return StoredBundle(path=base, index=idx)
    if not p.is_file() and index_path(p).is_file():
        return StoredBundle(path=p, index=index_path(p))
    return StoredBundle(path=p, index=None)


def check_parts(index: PartsIndex, folder: Path, *, where: str) -> None:
    """Up front, before any work: every part exists, is a regular file (a FIFO would block the
    reader) and has its recorded size. Names them all."""
    missing, wrong = [], []
    for p in index.parts:
        try:
            st = (folder / p.name).stat()
        except FileNotFoundError:
            missing.append(p.name)
            continue
        actual = st.st_size
        if not stat.S_ISREG(st.st_mode):
            wrong.append(f"{p.name} is {describe(st.st_mode)}, not a regular file")
        elif actual != p.size:
            wrong.append(f"{p.name} is {actual} bytes, the index says {p.size}")
    if missing or wrong:
        reason = "; ".join(
            ([f"{len(missing)} of {len(index.parts)} parts missing: {', '.join(missing)}"] if missing else []) + wrong
        )
        raise PartError(where, reason, parts=tuple(missing) + tuple(w.split(" ", 1)[0] for w in wrong))


def open_stream(path: str | os.PathLike) -> BinaryIO:
    """The bundle's bytes as one sequential binary file object, single-file or multi-part."""
    loc = locate(path)
    if loc.multipart:
        return PartsReader(loc.index)
    try:
        return open_regular(loc.path)
    except FileNotFoundError as e:
        raise BundleError(str(loc.path), "no such bundle (neither a file nor NAME.tar.parts.json next to it)", fix="check the path; 'mirror list DIR' shows the bundles in a folder") from e
    except NotRegularFile as e:
        raise BundleError(str(loc.path), f"this is {e.what}, not a regular file", fix="give the path of a .tar bundle") from None


def stream_sha256(path: str | os.PathLike) -> str:
    """The bundle's identity: sha256 of the whole stream. Free for a multi-part bundle (the index
    records it, and each part's digest is checked when it is read); one streaming pass otherwise."""
    loc = locate(path)
    if loc.multipart:
        return read_index(loc.index).sha256
    with open_stream(loc.path) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# --- the sidecar ----------------------------------------------------------------------------------


def read_sidecar(sidecar: Path) -> str | None:
    """The digest a `sha256sum`-format sidecar claims, or None when there is no usable one (the
    sidecar is optional; one that is not a regular small file or not in that format is ignored,
    and never blocks: a FIFO under its name is not opened for reading)."""
    try:
        with open_regular(sidecar) as f:
            text = f.read(MAX_SIDECAR).decode("ascii", "replace")
    except (OSError, NotRegularFile):
        return None
    head = text.split(" ", 1)[0].strip().lower()
    return head if is_sha256(head) else None


def sidecar_sha256(path: str | os.PathLike) -> str | None:
    """The digest the `.sha256` sidecar beside the single-file bundle at `path` claims, or None."""
    return locate(path).sidecar_sha256()


def has_sidecar(path: str | os.PathLike) -> bool:
    """Whether a usable `.sha256` sidecar sits beside the single-file bundle at `path`: then the
    bundle's own sha256 is computed and compared with it (a multi-part bundle's index has its own)."""
    return sidecar_sha256(path) is not None


def write_sidecar(bundle: Path, sha256: str) -> None:
    """`<bundle>.sha256` in sha256sum format, written atomically."""
    write_atomic(bundle.with_name(bundle.name + SIDECAR_SUFFIX), sha256sum_line(sha256, bundle.name))


# --- a folder of bundles --------------------------------------------------------------------------


def scan_folder(folder: str | os.PathLike) -> list[Path]:
    """The bundles of `folder` (not recursive), by the one rule every reader uses (`mirror list`,
    `mirror serve`, the trainer's bundles folder): every NAME.tar, and every NAME.tar.parts.json
    without a NAME.tar beside it (a single file of that name wins, as `locate` decides).
    Unfinished `.partial` files never match. Nothing is opened: each caller judges each entry."""
    d = Path(folder)
    tars = set(d.glob("*.tar"))
    indexes = {p for p in d.glob("*.tar" + INDEX_SUFFIX) if p.with_name(p.name[: -len(INDEX_SUFFIX)]) not in tars}
    return sorted(tars | indexes)


# --- reading ------------------------------------------------------------------------------------


class PartsReader(io.RawIOBase):
    """The parts of a multi-part bundle as one read-only, seekable stream, never joined on disk.

    Opening checks that every part exists with its recorded size (`PartError` names the missing
    ones). Each part's sha256 is computed as it is read and checked when the read reaches the
    part's end, so a damaged part is named during the single pass. Reads always fill the buffer
    unless the stream ends (tarfile treats a short read as truncation). Seeks are real seeks: a
    part that is not read contiguously from its start is simply not checked in this pass.
    """

    def __init__(self, index: str | os.PathLike, *, check_present: bool = True, strict: bool = True):
        super().__init__()
        self.index_path = Path(index)
        self.index = read_index(self.index_path)
        self.folder = self.index_path.parent
        self.name = str(self.index_path)  # tarfile reads .name/.mode from its file object
        self.mode = "rb"
        self.checked: set[int] = set()  # 0-based numbers of parts whose sha256 matched
        # strict: raise PartError at the end of a damaged part (install: stop at once);
        # otherwise record it in `damaged` and go on (verify: report every damaged part)
        self.strict = strict
        self.damaged: list[str] = []
        if check_present:
            check_parts(self.index, self.folder, where=self.name)
        self._pos = 0
        self._k = -1  # 0-based number of the open part
        self._fh: io.FileIO | None = None
        self._fh_pos = 0
        self._hasher = hashlib.sha256()
        self._hashed: int | None = None  # bytes of part _k hashed contiguously from its start

    # io.RawIOBase protocol
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.index.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, b) -> int:
        view = memoryview(b).cast("B")
        filled = 0
        while filled < len(view) and self._pos < self.index.size:
            k, off = piece_at(self._pos, self.index.max_part_size, len(self.index.parts))
            part = self.index.parts[k]
            self._position(k, off)
            want = min(len(view) - filled, part.size - off)
            n = self._fh.readinto(view[filled : filled + want])
            if not n:
                raise PartError(self.name, f"{part.name} ended after {off} bytes, the index says {part.size}", parts=(part.name,))
            if self._hashed == off:
                self._hasher.update(view[filled : filled + n])
                self._hashed += n
            filled += n
            self._pos += n
            self._fh_pos += n
            if off + n == part.size:
                self._finish_part(k)
        return filled

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        super().close()

    # checks
    def check_current_part(self) -> None:
        """After a content error mid-part, read on to the end of the current part so that, if the
        part itself is damaged, the error names it. Bounded work: at most one part."""
        if self._k < 0 or self._hashed is None or self._k in self.checked:
            return
        part = self.index.parts[self._k]
        end = self.index.offset_of(self._k) + part.size
        self._pos = self.index.offset_of(self._k) + self._hashed
        buf = bytearray(1 << 20)
        while self._pos < end and self._k not in self.checked:
            self.readinto(memoryview(buf)[: min(len(buf), end - self._pos)])

    def finish(self) -> tuple[str, ...]:
        """Read from here to the end (a tar reader stops at the first end-of-archive block) and
        return the parts that could not be checked in this pass (empty after a sequential one)."""
        buf = bytearray(1 << 20)
        while self.readinto(buf):
            pass
        return self.unchecked_parts()

    def unchecked_parts(self) -> tuple[str, ...]:
        return tuple(p.name for i, p in enumerate(self.index.parts) if i not in self.checked)

    def _position(self, k: int, off: int) -> None:
        if k != self._k or self._fh is None:
            if self._fh is not None:
                self._fh.close()
            self._fh = _open_part(self.folder / self.index.parts[k].name, where=self.name)
            self._k, self._fh_pos = k, 0
            self._hashed = None
        gap = off - self._fh_pos
        if 0 < gap <= _READ_THROUGH and self._hashed == self._fh_pos:
            # tarfile in random-access mode seeks over each member's padding: read those few
            # bytes instead, so the part can still be checked in this pass
            skipped = self._fh.read(gap)
            if len(skipped) != gap:
                raise PartError(self.name, f"{self.index.parts[k].name} ended early", parts=(self.index.parts[k].name,))
            self._hasher.update(skipped)
            self._hashed += gap
            self._fh_pos = off
        elif gap:
            self._fh.seek(off)
            self._fh_pos = off
        if off == 0 and self._hashed != 0:
            self._hasher, self._hashed = hashlib.sha256(), 0
        elif self._hashed is not None and self._hashed != off:
            self._hashed = None  # a jump inside the part: it cannot be checked in this pass

    def _finish_part(self, k: int) -> None:
        part = self.index.parts[k]
        if self._hashed != part.size:
            return
        actual = self._hasher.hexdigest()
        self._hashed = None  # a re-read starts from a fresh hasher
        if actual != part.sha256:
            if part.name not in self.damaged:
                self.damaged.append(part.name)
            if self.strict:
                raise PartError(self.name, f"{part.name} is damaged: sha256 {actual}, the index says {part.sha256}", parts=(part.name,))
            return
        self.checked.add(k)

    def require_all_checked(self) -> None:
        """After a full pass: raise PartError naming damaged (or unread) parts, if any."""
        if self.damaged:
            raise PartError(self.name, f"damaged part(s), sha256 differs from the index: {', '.join(self.damaged)}", parts=tuple(self.damaged))
        unchecked = self.unchecked_parts()
        if unchecked:
            raise PartError(self.name, f"part(s) not checked in this pass: {', '.join(unchecked)}", parts=unchecked)


# --- positioned reads ---------------------------------------------------------------------------


class Ranges:
    """Positioned reads (`pread`) over a bundle's bytes, one file or the parts of a multi-part
    bundle, safe to call from many threads at once: what lets independent files of one bundle be
    hashed, pushed or served in parallel. Part digests are not checked here (the caller checks
    the files' own digests). `Ranges(path)` opens the bundle; `Ranges.over_fd` reads through a
    descriptor someone else opened (a BundleReader's: the manifest read and the payload read by
    position then come from one file)."""

    def __init__(self, path: str | os.PathLike):
        loc = locate(path)
        self._files: list[BinaryIO] = []  # regular files only: a FIFO would block the first pread
        self._fds: list[int] = []
        self._where = str(loc.index or loc.path)
        self._names = [loc.path.name]
        self._borrowed = False
        try:
            if loc.multipart:
                index = read_index(loc.index)
                check_parts(index, loc.index.parent, where=str(loc.index))
                self._names = [p.name for p in index.parts]
                for p in index.parts:
                    self._files.append(_open_part(loc.index.parent / p.name, where=self._where))
                self._span = index.max_part_size
                self.size = index.size
            else:
                self._files.append(open_stream(loc.path))
                self.size = os.fstat(self._files[0].fileno()).st_size
                self._span = max(1, self.size)
            self._fds = [f.fileno() for f in self._files]
        except BaseException:
            self.close()
            raise

    @classmethod
    def over_fd(cls, fd: int, label: str) -> "Ranges":
        """Over one open file whose descriptor stays its owner's (closing these Ranges leaves it open)."""
        self = cls.__new__(cls)
        self._files, self._fds, self._where, self._names, self._borrowed = [], [fd], label, [label], True
        self.size = os.fstat(fd).st_size
        self._span = max(1, self.size)
        return self

    def _ended(self, k: int, off: int) -> Exception:
        """The error for a file found shorter than when it was opened."""
        if self._borrowed:
            return BundleError(self._where, f"the file shrank while it was read (at byte {off} of {self.size})", fix="something is writing to the bundle: wait for it to finish, then retry")
        return PartError(self._where, f"{self._names[k]} ended early at byte {off}", parts=(self._names[k],))

    def read(self, offset: int, n: int) -> bytes:
        """Up to `n` bytes at `offset` (fewer only at the end of the stream)."""
        out = []
        n = max(0, min(n, self.size - offset))
        while n:
            k, off = piece_at(offset, self._span, len(self._fds))
            got = os.pread(self._fds[k], min(n, self._span - off), off)
            if not got:  # the file shrank after it was opened
                raise self._ended(k, off)
            out.append(got)
            offset += len(got)
            n -= len(got)
        return out[0] if len(out) == 1 else b"".join(out)

    def readinto(self, offset: int, view: memoryview) -> None:
        """Fill `view` with the stream's bytes at `offset`, crossing part boundaries, into the
        caller's (reused) buffer: no allocation per read, and a buffer that stays in the CPU
        cache for the hash and the write."""
        if offset + len(view) > self.size and not self._borrowed:
            raise PartError(self._where, f"a read at byte {offset} runs past the end of the stream ({self.size} bytes)", parts=(self._names[-1],))
        got = 0
        while got < len(view):
            k, off = piece_at(offset + got, self._span, len(self._fds))
            want = min(len(view) - got, self._span - off)
            n = os.preadv(self._fds[k], [view[got : got + want]], off)
            if not n:  # the file shrank after it was opened
                raise self._ended(k, off)
            got += n

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files, self._fds = [], []

    def __enter__(self) -> "Ranges":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open_part(path: Path, *, where: str) -> BinaryIO:
    """A part, unbuffered, only if it is a regular file (a FIFO would block the read for ever)."""
    try:
        return open_regular(path, buffering=0)
    except FileNotFoundError as e:
        raise PartError(where, f"{path.name} is missing", parts=(path.name,)) from e
    except NotRegularFile as e:
        raise PartError(where, f"{path.name} is {e.what}, not a regular file", parts=(path.name,)) from None
