"""Reading the files a user names (configs, data, keys): regular files only, read with bounds.

A path in a config can name anything a filesystem holds. A FIFO blocks the first read forever,
`/dev/zero` never ends, a directory or a socket fails somewhere deep in a parser. So every file the
trainer reads on a user's say-so goes through `open_regular`: it is stat'ed first (a special file
is never opened at all, since opening some devices has effects), then opened without blocking and
checked again on the open descriptor, so a file swapped for a FIFO in between is refused too.
Lines are read with a length limit, so one endless line is an error instead of all the memory.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import BinaryIO, Iterator

from common import safeio
from trainer.errors import DataError, NotRegularFile

MAX_LINE_BYTES = 16 * 1024 * 1024  # one JSONL row; far above any row a model trains on at its max_length
CHUNK = 1024 * 1024  # hashing reads this much at a time, never a whole file


def check_regular(path: str | Path) -> os.stat_result:
    """The stat of `path` (links followed); raises NotRegularFile, FileNotFoundError, OSError."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFile(str(path), safeio.describe(st.st_mode))
    return st


def open_regular(path: str | Path) -> BinaryIO:
    """`path` opened for binary reading, if and only if it is a regular file (stat'ed before the
    open, then common.safeio checks what was opened)."""
    check_regular(path)
    try:
        return safeio.open_regular(path)
    except safeio.NotRegularFile as e:  # swapped for a special file since the stat
        raise NotRegularFile(str(path), e.what) from None


def bounded_lines(f: BinaryIO, *, path: str, limit: int = MAX_LINE_BYTES) -> Iterator[bytes]:
    """The lines of `f`, each at most `limit` bytes; a longer one raises DataError naming it."""
    n = 0
    while raw := f.readline(limit + 1):
        n += 1
        if len(raw) > limit:
            raise DataError(path, f"line is longer than {limit // (1024 * 1024)} MiB, so this is not a JSONL file of training rows", line=n)
        yield raw


def sha256(path: str | Path) -> str:
    """sha256 of a regular file, read in chunks."""
    h = hashlib.sha256()
    with open_regular(path) as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
