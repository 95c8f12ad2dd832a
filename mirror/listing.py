"""What bundles a folder holds: repo, commit, size and file count, read from each manifest only.

Reading just the head of each tar keeps `mirror list` instant on a folder of 100 GB bundles. A
folder of bundles is whatever arrived on a USB stick, so every entry is judged on its own: an
unreadable or hostile one is listed with a one-line reason instead of hiding the rest of the
folder, and an entry that is not a regular file (a FIFO named `x.tar` would block the reader for
ever, a device would never end) is reported without being opened.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from mirror.bundle import parts
from mirror.bundle.stored import scan_folder
from mirror.errors import MirrorError, UsageError
from common.safeio import describe
from mirror.bundle.codec import read_manifest

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class BundleSummary:
    path: Path
    size: int  # bytes of the tar file (of the whole stream for a multi-part bundle)
    repo_id: str | None = None
    repo_type: str | None = None
    revision: str | None = None
    commit: str | None = None
    files: int = 0
    payload_bytes: int = 0
    created_at: str | None = None
    problem: str | None = None  # one line: why the manifest could not be read; the fields above are then None
    signed: bool | None = None  # None: the signature member could not be read
    signer: str | None = None  # the key fingerprint the signature claims (read, not checked: 'verify --public-key' checks)


def list_bundles(directory: str | os.PathLike) -> list[BundleSummary]:
    """The bundles of `directory` (`stored.scan_folder`: every NAME.tar, and every multi-part
    NAME.tar.parts.json without a NAME.tar beside it; not recursive, unfinished `.partial` files
    skipped), one summary each, problems included: never raises for a bad entry, only for a
    `directory` that is not one."""
    if not Path(directory).is_dir():
        raise UsageError(f"{directory} is not a directory; pass the folder that holds the bundles")
    return [summarize(p) for p in scan_folder(directory)]


def summarize(path: Path) -> BundleSummary:
    """One bundle (a single file or a multi-part index) from its manifest; `problem` says why not."""
    try:
        st = path.stat()
    except OSError as e:  # a dangling link, a name removed meanwhile, a folder we may not search
        return BundleSummary(path=path, size=0, problem=f"cannot be read ({e.strerror or e})")
    if not stat.S_ISREG(st.st_mode):
        return BundleSummary(path=path, size=0, problem=f"{describe(st.st_mode)}, not a regular file (not opened)")
    size = st.st_size
    try:  # a multi-part bundle is listed once, by its index, with the whole stream's size
        if path.name.endswith(parts.INDEX_SUFFIX):
            size = parts.read_index(path).size
        m = read_manifest(path)
    except MirrorError as e:
        return BundleSummary(path=path, size=size, problem=one_line(getattr(e, "reason", None) or str(e)))
    except OSError as e:  # permission denied, an I/O error on a failing stick
        return BundleSummary(path=path, size=size, problem=f"cannot be read ({e.strerror or e})")
    try:  # the signature is the last member: a header walk, still instant on any size
        from mirror.signing import verify_signature

        sig = verify_signature(path)
        signed, signer = sig.present, sig.key_fingerprint
    except (MirrorError, OSError):
        signed, signer = None, None
    return BundleSummary(
        path=path, size=size, repo_id=m.repo_id, repo_type=m.repo_type, revision=m.revision,
        commit=m.commit, files=len(m.files), payload_bytes=m.total_size, created_at=m.created_at,
        signed=signed, signer=signer,
    )


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def shown_name(path: str | os.PathLike) -> str:
    """A file name fit for one line of a terminal: as is, or quoted with escapes when it holds
    control characters (a newline would forge a row, an escape sequence drive the terminal) or
    bytes that are not UTF-8."""
    name = Path(path).name
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return ascii(name)
    return ascii(name) if _CONTROL.search(name) else name
