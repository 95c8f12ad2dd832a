"""Where a bundle's files come from: a folder, files still arriving in a staging folder, or shards
filled in place while the rest arrives. The writer (`driver.write`) asks every source the same
three things: which files and how big (`open`, before pass 1), that the files needed by pass 1
are in (`before_hashing`), and each file when pass 2 reaches it (`file`).

Every file is opened once below its folder without following links (`files.Sources`), and
hashed and copied through that descriptor.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Protocol

from mirror.bundle import BundleSpec
from mirror.bundle.write.files import SourceFile, Sources, walk
from mirror.errors import HashMismatch, UsageError
from mirror.manifest import unsafe_path_reason


class FillRun(Protocol):
    def wait(self, *, quiet: bool = False) -> None: ...  # every file tried; the first failure raised unless quiet

    def stop(self) -> None: ...


class Filler(Protocol):
    """What fills regions of a bundle written in place (mirror.hub's downloader): `start(regions)`
    starts writing each file of `paths` into its region (`inplace.Region`, ended by `finish()`)."""

    paths: frozenset[str]

    def start(self, regions: list) -> FillRun: ...


class FolderSource:
    """The files of `root` (all of them, or `paths`; or those of the spec's `expected`), each
    opened and checked before pass 1. `files` passes files a caller already opened and checked
    (pack, whose link policy resolves links inside the folder itself; the OCI import)."""

    filled: frozenset[str] = frozenset()  # files written by a filler, never opened here

    def __init__(self, root: str | Path, *, paths: list[str] | None = None, files: Sources | None = None):
        self.root = Path(root)
        self.files = files
        self._paths = paths

    def open(self, spec: BundleSpec, stack: ExitStack) -> dict[str, int]:
        """Open what is here; returns every file's size in bundle order (path order), the listed
        size for one still arriving. UsageError for an unsafe name or nothing to bundle."""
        if self.files is None:
            self.files = stack.enter_context(Sources([self.root]))
            if self._paths is None and spec.expected is None:
                for rel, _ in walk(self.files):  # refuses (naming it) a symlink or special file inside
                    self.files.add(rel)
        paths = self._paths if self._paths is not None else sorted(spec.expected) if spec.expected is not None else self.files.paths
        paths = sorted(set(paths))
        if not paths and spec.delta_base is None:  # a delta may only remove files
            raise UsageError(f"{self.root}: no files to bundle; check the folder and the include/exclude patterns")
        sizes: dict[str, int] = {}
        for p in paths:
            if why := unsafe_path_reason(p):
                raise UsageError(f"file name {p!r} {why}; it cannot be stored in a bundle")
            sizes[p] = self.files[p].size if p in self.files else self._take(p, (spec.expected or {}).get(p))
        return sizes

    def _take(self, path: str, want) -> int:
        """A file not opened yet: open it now, returns its size."""
        return self.files.add(path).size

    def before_hashing(self) -> None:
        """Pass 1 is about to hash: every file it needs is opened by now."""

    def file(self, path: str) -> SourceFile:
        """The file pass 2 copies next (it waits for one still arriving)."""
        return self.files[path]


class StagedSource(FolderSource):
    """Files downloading into `root` while the bundle is written (a pull into parts, or a delta):
    `ready(path)` returns once a file is complete. A file whose digests the spec promises (an LFS
    file with the Hub's sha256) is opened only when pass 2 reaches it, with the listed size
    until then: the manifest follows from the listing, so the bundle is written while later
    files still arrive."""

    def __init__(self, root: str | Path, ready: Callable[[str], None], *, paths: list[str] | None = None):
        super().__init__(root, paths=paths)
        self.ready = ready
        self.later: dict[str, int] = {}  # opened when pass 2 reaches them: path -> listed size

    def _take(self, path: str, want) -> int:
        if want is not None and want.lfs and want.sha256:
            self.later[path] = want.size
            return want.size
        self.ready(path)
        return self.files.add(path).size

    def _arrive(self, path: str) -> SourceFile:
        """Wait for a file, open and check it once; its size must be the listed one."""
        self.ready(path)
        f = self.files.add(path)
        if f.size != self.later[path]:
            raise HashMismatch(path, algorithm="size", expected=str(self.later[path]), actual=str(f.size), where="in the download")
        return f

    def file(self, path: str) -> SourceFile:
        if path in self.later and path not in self.files:
            return self._arrive(path)
        return self.files[path]


class FillSource(StagedSource):
    """A pull written in place: the files of `filler.paths` (each with the Hub's sha256) are
    never opened here, the filler writes them into their regions of the bundle (`sinks.InPlace`)
    as soon as the layout is known; every other file arrives in `root` and is opened in pass 1,
    while those downloads run."""

    def __init__(self, root: str | Path, ready: Callable[[str], None], filler: Filler):
        super().__init__(root, ready)
        self.filler = filler
        self.filled = frozenset(filler.paths)

    def _take(self, path: str, want) -> int:
        if path in self.filled and (want is None or not (want.lfs and want.sha256)):
            raise ValueError(f"{path}: only a file with the Hub's sha256 can be filled in place")
        if want is None:  # not listed: here already
            self.ready(path)
            return self.files.add(path).size
        self.later[path] = want.size
        return want.size

    def before_hashing(self) -> None:
        for p in self.later:
            if p not in self.filled:
                self._arrive(p)
