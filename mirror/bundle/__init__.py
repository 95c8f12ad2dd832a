"""Bundles: one uncompressed tar whose first member is the manifest (docs/bundle-format.md).

The package's layers, each importing only those above it in this list:

    __init__      names (`bundle_filename`, the pack commit id), `BundleInfo`, and `BundleSpec`:
                  what one bundle is to say about itself (repo, commit, source, expected hashes)
    layout        pure: tar header bytes, every member's offset, the trailer, the record padding
    parts         the multi-part format: the index, the part writer
    stored        a bundle on disk: file or parts, one stream or positioned reads, its sidecar,
                  the bundles of a folder
    codec         the strict one-pass tar reader, the signature trailer
    write/        the writer: sources (a folder, files still arriving, shards filled in place)
                  and sinks (one file, parts, in place) driven by one short loop (`write.driver`)
"""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirror.errors import UsageError
from mirror.manifest import REPO_TYPES, FileEntry, Manifest, repo_id_problem

PACK_COMMIT_DOMAIN = b"mirror-pack-commit/1\n"

# The patterns of the Hub's default .gitattributes: files matching them are stored in LFS, so a
# pulled snapshot names their cache blob by sha256. Packs use the same rule (plus the Hub's
# 10 MB limit for plain git files) so a packed model lands in the cache the way a pulled one does.
LFS_PATTERNS = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
    "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
    "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "*.tar.*", "*.tar", "*.tflite",
    "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
)
LFS_SIZE = 10 * 1024 * 1024


@dataclass(frozen=True)
class BundleInfo:
    path: Path
    sha256: str  # of the whole tar file, as in the .sha256 sidecar
    size: int
    manifest: Manifest


@dataclass(frozen=True)
class BundleSpec:
    """What a bundle says about itself, fixed before a byte is written: the manifest's fields,
    and the hashes its files must have. One object instead of a dozen keywords handed down from
    `mirror pull` or `mirror pack` to the writer (mirror.bundle.write).

    `commit=None` (a pack) derives the id from the content (`pack_commit`). `expected` (the hashes
    the Hub published) must match or HashMismatch is raised: digests left empty in an entry are
    not checked, and an LFS file with an expected sha256 is read only once. `lfs` decides a file's
    `lfs` flag where given (else `expected`'s, else `is_lfs`). `extra` goes into the manifest as
    is (the pickle policy, a lineage, a delta section)."""

    repo_id: str
    revision: str
    commit: str | None
    source: str
    created_at: str
    license: str | None
    repo_type: str = "model"
    expected: dict[str, FileEntry] | None = None
    lfs: dict[str, bool] | None = None
    extra: dict[str, Any] | None = None

    def check(self) -> None:
        """UsageError for a repo type or id no bundle may carry (before anything is read)."""
        if self.repo_type not in REPO_TYPES:
            raise UsageError(f"repo type {self.repo_type!r} is not one of {', '.join(REPO_TYPES)}")
        if why := repo_id_problem(self.repo_id):
            raise UsageError(f"repo id {self.repo_id!r} {why}")

    @property
    def delta_base(self) -> str | None:
        """The base commit of a delta bundle, None for a full one."""
        delta = (self.extra or {}).get("delta")
        return delta["base"]["commit"] if delta else None

    def lfs_of(self, path: str, size: int) -> bool:
        if self.expected is not None:
            return self.expected[path].lfs
        if self.lfs is not None and path in self.lfs:
            return self.lfs[path]
        return is_lfs(path, size)

    def manifest(self, files: tuple[FileEntry, ...], commit: str) -> Manifest:
        m = Manifest(
            repo_id=self.repo_id, repo_type=self.repo_type, revision=self.revision, commit=commit, source=self.source,
            created_at=self.created_at, license=self.license, files=files,
        )
        return m.with_extra(**self.extra) if self.extra else m

    def filename(self, commit: str) -> str:
        """The bundle's file name; a delta never takes the name of the full bundle of its commit."""
        name = bundle_filename(self.repo_id, commit, repo_type=self.repo_type)
        if (base := self.delta_base) is not None:
            name = f"{name[: -len('.tar')]}--delta-from-{base[:12]}.tar"
        return name


# --- names ----------------------------------------------------------------------------------------


def bundle_stem(repo_id: str, commit: str, *, repo_type: str = "model") -> str:
    """`org--name--<commit[:12]>`, with `datasets--` / `spaces--` in front for those repo types."""
    prefix = "" if repo_type == "model" else f"{repo_type}s--"
    return f"{prefix}{repo_id.replace('/', '--')}--{commit[:12]}"


def bundle_filename(repo_id: str, commit: str, *, repo_type: str = "model") -> str:
    return bundle_stem(repo_id, commit, repo_type=repo_type) + ".tar"


def pack_commit(files: list[FileEntry] | tuple[FileEntry, ...]) -> str:
    """The commit id of a pack (a folder has no git commit): sha1 over a domain line then one
    `<sha256> <path>\\n` line per file in path order. Same content, same id; see bundle-format.md."""
    h = hashlib.sha1(PACK_COMMIT_DOMAIN)
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.sha256} {f.path}\n".encode("utf-8"))
    return h.hexdigest()


def is_lfs(path: str, size: int) -> bool:
    """How a pack decides `lfs` (the Hub's rule for a new repo): a default LFS pattern, or big."""
    name = path.rsplit("/", 1)[-1]
    return size > LFS_SIZE or any(fnmatch.fnmatch(name, p) for p in LFS_PATTERNS)
