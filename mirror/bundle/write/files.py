"""The files a bundle is written from: reached below their folder without following any link,
checked on what was opened, and read only through that descriptor.

Checking a path and opening it by name again later is a race: a file swapped for a symlink to a
root-only file in between is bundled, and the secret leaves the machine. So a folder is walked from
a descriptor of the folder, one component at a time with O_NOFOLLOW; each file is opened the same
way and checked with fstat (a regular file, the inode the walk saw), and its identity is recorded
(`Stamp`). The writer (mirror.bundle.write) hashes and copies through that descriptor by positioned
reads and checks at the end that the file is still the same inode with the same size, mtime and
ctime: the bytes bundled come from the file that was checked and hashed, and no other.

What fstat cannot see: a write in place within the same tick of the kernel's file clock as the
file's previous change (a few ms), or through a shared mapping into pages already dirty. Only
the folder's own writer can do that, to its own file; the bundle then fails `verify` (its
manifest holds what was hashed), and no byte of any other file can get in.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Container, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mirror.errors import UsageError
from mirror.hashing import CHUNK
from common.safeio import describe

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# O_NONBLOCK: opening a FIFO swapped in at the last moment returns at once instead of waiting
# for a writer (fstat then refuses it); it changes nothing for a regular file.
_FILE_FLAGS = os.O_RDONLY | _NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | os.O_NONBLOCK | _CLOEXEC

# Descriptors held from the check to the copy. Holding every file open would exhaust the process
# limit (1024 by default) on a folder of thousands of small files (a dataset), and the limit is
# shared with the hash threads, the output and whatever the caller holds; so at most half the soft
# limit, and never more than FD_MAX, stay open. A file beyond that is reopened the same no-follow
# way each time it is read and refused unless it is still the same file (device, inode, size,
# mtime, ctime: `Stamp`). Holding is the fast path, not the guarantee: the identity check on
# reopening gives the same assurance, and the writer checks the stamp after each copy either way.
FD_MAX = 1024


def fd_budget() -> int:
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            soft = 2 * FD_MAX
    except (ImportError, OSError, ValueError):
        soft = 256
    return max(0, min(FD_MAX, soft // 2 - 32))


@dataclass(frozen=True)
class Stamp:
    """What says a file is the one first opened, unchanged, without reading it. ctime is in it
    because a user cannot set it: a write followed by putting the mtime back still shows."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Stamp:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class SourceChanged(UsageError):
    """A file was replaced, rewritten, truncated or swapped for a link while being bundled."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        super().__init__(f"{path} changed while it was being bundled; make sure nothing writes to the folder and retry")


class SourceFile:
    """One file to bundle: where it is (a folder of its `Sources` and the path components below
    it, none of them a link), what it was when checked (`stamp`), and `shown`, its path in
    messages. `with f.descriptor() as fd` lends a descriptor for positioned reads."""

    def __init__(self, owner: Sources, *, shown: Path, root: int, parts: tuple[str, ...]):
        self._owner = owner
        self.shown = shown
        self.root = root
        self.parts = parts
        self.stamp: Stamp | None = None
        self._fd: int | None = None

    @property
    def size(self) -> int:
        return self.stamp.size

    @contextmanager
    def descriptor(self) -> Iterator[int]:
        """The descriptor held since the check, or a fresh no-follow open of the same file (closed
        afterwards). A file that ended early while being read (EOFError) is SourceChanged."""
        fd = self._fd
        if fd is None:
            fd = self._owner._open(self)
            try:
                if Stamp.of(os.fstat(fd)) != self.stamp:
                    raise SourceChanged(self.shown)
            except BaseException:
                os.close(fd)
                raise
        try:
            yield fd
        except EOFError as e:
            raise SourceChanged(self.shown) from e
        finally:
            if fd != self._fd:
                os.close(fd)

    def check_unchanged(self, fd: int) -> None:
        """SourceChanged unless the open file is still as it was when first checked."""
        if Stamp.of(os.fstat(fd)) != self.stamp:
            raise SourceChanged(self.shown)

    def read(self, limit: int) -> bytes:
        """The first `limit` bytes at most (for the small files pack reads itself: README, lineage)."""
        with self.descriptor() as fd:
            out = bytearray()
            while len(out) < min(limit, self.size):
                chunk = os.pread(fd, min(limit, self.size) - len(out), len(out))
                if not chunk:
                    raise EOFError(f"the file ended after {len(out)} bytes")
                out += chunk
            return bytes(out)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Sources:
    """The files of one bundle, by bundle path, below one or more folders (`roots`; a pack of an
    HF cache snapshot also reads that repo's blobs/). The folders themselves are opened as named,
    links included (the user chose them); nothing below them is ever reached through a link.
    Use it with `with` (or call `close`) to release the descriptors."""

    def __init__(self, roots: Sequence[str | os.PathLike]):
        self.roots = [Path(r) for r in roots]
        self._root_fds: list[int] = []
        self._files: dict[str, SourceFile] = {}
        self._budget = fd_budget()
        self._held = 0
        try:
            for r in self.roots:
                try:
                    self._root_fds.append(os.open(r, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC))
                except (NotADirectoryError, FileNotFoundError):
                    raise UsageError(f"{r} is not a directory; pass the folder that holds the files") from None
                except OSError as e:
                    raise UsageError(f"{r}: cannot read ({e.strerror}); check the folder") from e
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Sources:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for f in self._files.values():
            f._close()
        self._held = 0
        for fd in self._root_fds:
            os.close(fd)
        self._root_fds = []

    @property
    def paths(self) -> list[str]:
        return sorted(self._files)

    def __contains__(self, path: str) -> bool:
        return path in self._files

    def __getitem__(self, path: str) -> SourceFile:
        return self._files[path]

    def add(self, path: str, *, root: int = 0, target: str | None = None) -> SourceFile:
        """Check and register the file at `path` below roots[0], or, for a link pack resolved
        itself, at `target` below roots[root]. Refuses (UsageError, naming `path`) a link, a FIFO,
        device, socket or folder, and a file that cannot be read. Within the descriptor budget
        the file is opened now and stays open; otherwise only lstat'ed, and opened when read."""
        f = SourceFile(self, shown=self.roots[0] / path, root=root, parts=tuple((target or path).split("/")))
        parent = self._parent(f)
        try:
            try:
                st = os.stat(f.parts[-1], dir_fd=parent, follow_symlinks=False)
            except OSError as e:
                raise UsageError(f"{f.shown}: cannot read ({e.strerror}); check the folder") from e
            _refuse_special(f, st)
            if self._held < self._budget:
                fd = self._open_in(parent, f)
                opened = os.fstat(fd)
                if not os.path.samestat(st, opened):
                    os.close(fd)
                    raise SourceChanged(f.shown)
                f._fd, st = fd, opened
                self._held += 1
            f.stamp = Stamp.of(st)
        finally:
            if parent != self._root_fds[f.root]:
                os.close(parent)
        self._files[path] = f
        return f

    def _open(self, f: SourceFile) -> int:
        parent = self._parent(f)
        try:
            return self._open_in(parent, f)
        finally:
            if parent != self._root_fds[f.root]:
                os.close(parent)

    def _parent(self, f: SourceFile) -> int:
        """A descriptor of the folder holding `f`, reached from its root one component at a time
        without following links (the caller closes it unless it is the root's own)."""
        fd = self._root_fds[f.root]
        for i, name in enumerate(f.parts[:-1]):
            try:
                nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    why = f"{'/'.join(f.parts[: i + 1])} on its path is a symlink or not a folder; bundles never follow links, copy the files in instead"
                else:
                    why = f"cannot read ({e.strerror}); check the folder"
                raise UsageError(f"{f.shown}: {why}") from e
            finally:
                if fd != self._root_fds[f.root]:
                    os.close(fd)
            fd = nxt
        return fd

    def _open_in(self, parent: int, f: SourceFile) -> int:
        try:
            fd = os.open(f.parts[-1], _FILE_FLAGS, dir_fd=parent)
        except OSError as e:
            if e.errno == errno.ELOOP:  # swapped for a link since it was checked
                raise UsageError(f"{f.shown} is a symlink; bundles are made of regular files only, copy the file in instead") from None
            if e.errno == errno.ENXIO:  # a socket
                raise UsageError(f"{f.shown} is a socket, not a regular file; remove it from the folder") from None
            raise UsageError(f"{f.shown}: cannot read ({e.strerror}); check the folder") from e
        try:
            _refuse_special(f, os.fstat(fd))
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd


def _refuse_special(f: SourceFile, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(f"{f.shown} is a symlink; bundles are made of regular files only, copy the file in instead")
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{f.shown} is {describe(st.st_mode)}, not a regular file; remove it from the folder")


def walk(sources: Sources, *, skip: Container[str] = frozenset()) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry below roots[0] that is not a folder, as (POSIX path, lstat), descending only
    into real folders (opened without following links; never those named in `skip`). A symlink
    is yielded as itself (S_ISLNK) for the caller to decide; it is never followed here."""
    yield from _walk(sources._root_fds[0], "", skip, sources.roots[0])


def _walk(fd: int, prefix: str, skip: Container[str], shown: Path) -> Iterator[tuple[str, os.stat_result]]:
    with os.scandir(fd) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        try:
            st = e.stat(follow_symlinks=False)
        except FileNotFoundError:  # removed while we looked: it is not part of the folder any more
            continue
        rel = prefix + e.name
        if not stat.S_ISDIR(st.st_mode):
            yield rel, st
            continue
        if e.name in skip:
            continue
        try:
            sub = os.open(e.name, _DIR_FLAGS, dir_fd=fd)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped for a link or a file since listed
                raise SourceChanged(shown / rel) from err
            raise UsageError(f"{shown / rel}: cannot read ({err.strerror}); check the folder") from err
        try:
            if not os.path.samestat(st, os.fstat(sub)):
                raise SourceChanged(shown / rel)
            yield from _walk(sub, rel + "/", skip, shown)
        finally:
            os.close(sub)


def copy_source(src: SourceFile, put, *, check=None) -> None:
    """Stream `src` into `put` (and `check`) in chunks read by position from the descriptor that
    was checked (and hashed in pass 1), each a fresh `bytes` since a hash lane may still hold the
    previous one. Refuses (SourceChanged) a file that, once copied, is not the same inode with
    the same size, mtime and ctime as when it was first opened."""
    with src.descriptor() as fd:
        offset = 0
        while offset < src.size:
            chunk = os.pread(fd, min(CHUNK, src.size - offset), offset)
            if not chunk:
                raise EOFError(f"the file ended after {offset} of {src.size} bytes")
            put(chunk)
            if check is not None:
                check.update(chunk)
            offset += len(chunk)
        src.check_unchanged(fd)
