"""Opening files that came from someone else: only regular files, checked on what was opened.

A FIFO named `x.tar` blocks `open()` forever; `/dev/zero` as a data file never ends; a path
swapped for a symlink between a check and the open leaks whatever the link points at. So: open
with O_NONBLOCK (a FIFO opens at once instead of waiting for a writer), then fstat the descriptor
and refuse anything that is not a regular file. `follow=False` adds O_NOFOLLOW, for folders
being bundled, where a link must never be followed.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO


class NotRegularFile(OSError):
    """The path is a FIFO, device, socket, folder or (with follow=False) a symlink."""

    def __init__(self, path: str, what: str):
        self.what = what
        super().__init__(f"{path} is {what}, not a regular file")
        self.filename = path


def describe(mode: int) -> str:
    for test, what in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return what
    return "not a regular file"


def open_regular(path: str | os.PathLike, *, follow: bool = True, buffering: int = -1) -> BinaryIO:
    """Open `path` for binary reading; NotRegularFile unless it is a regular file.
    FileNotFoundError / PermissionError pass through unchanged."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if not follow and e.errno == getattr(os, "ELOOP", -1):
            raise NotRegularFile(str(path), "a symlink") from None
        if e.errno == getattr(os, "ENXIO", -1):  # a socket or a FIFO opened for writing elsewhere
            raise NotRegularFile(str(path), "a socket or FIFO") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(str(path), describe(st.st_mode))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=buffering)
    except BaseException:
        os.close(fd)
        raise
