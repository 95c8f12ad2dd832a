"""Nothing half-written where a reader would trust it: temp name, then rename.

Every temporary this package creates is named `.<final name>.<pid>-<random>.<suffix>` in the
folder of its final name, so (1) the final name appears only complete, by `os.replace`, and (2) a
leftover of a killed process (SIGKILL runs no cleanup) is recognisable: its pid no longer runs.
`sweep` removes such leftovers; commands call it on the folders they write to.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_TEMP = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{12}\.(?P<suffix>partial|incomplete|tmp|staging|journal)")


def temp_path(final: str | os.PathLike, *, suffix: str = "partial") -> Path:
    """A fresh temporary name next to `final` (same folder, so the rename is atomic)."""
    final = Path(final)
    return final.with_name(f".{final.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.{suffix}")


def temp_owner(name: str) -> int | None:
    """The pid that created a temporary of ours, from its name; None if it is not one."""
    m = _TEMP.fullmatch(name)
    return int(m.group("pid")) if m else None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(name: str) -> bool:
    """A temporary whose creator no longer runs (killed, or crashed past its cleanup)."""
    pid = temp_owner(name)
    return pid is not None and not _alive(pid)


def sweep(folder: str | os.PathLike) -> list[Path]:
    """Remove the stale temporaries directly inside `folder` (files or folders, never following
    a link); returns what was removed."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not is_stale(name):
            continue
        p = Path(folder) / name
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


def write_atomic(path: str | os.PathLike, data: bytes | str, *, mode: int | None = None) -> None:
    """Write `data` to `path` all at once: a reader sees the old content or the new, never part."""
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_file(path, mode=mode) as f:
        f.write(raw)


@contextmanager
def atomic_file(path: str | os.PathLike, *, mode: int | None = None) -> Iterator:
    """Open a temporary next to `path` for binary writing; renamed onto `path` only when the
    block ends without an exception, removed otherwise (also on KeyboardInterrupt)."""
    path = Path(path)
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644 if mode is None else mode)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
