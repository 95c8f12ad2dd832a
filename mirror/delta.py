"""Incremental (delta) bundles: carry only what changed since a bundle the sandbox already has.

Why: a repo gets a new commit that touches a config and one shard; re-sending 150 GB across a
data diode for that is the cost this module removes. A delta bundle is an ordinary bundle whose
payload holds only the files that are new or whose sha256 changed, and whose manifest adds a
`delta` section: the base it applies to (repo, commit, the base bundle's name and sha256) and the
complete target file list. Installing it puts the new blobs next to the base's in the HF cache
(blobs are content-addressed, so unchanged files are shared exactly as huggingface_hub shares them
between commits), builds the target snapshot, and verifies every file of it, not just the new ones.
Without the base commit installed, installation refuses and names the bundle that provides it.

Format: docs/bundle-format.md, "Delta bundles".
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable

from mirror.bundle import stored
from mirror.ids import is_commit, is_sha256
from mirror.bundle import BundleSpec, is_lfs, pack_commit
from mirror.bundle.codec import read_manifest
from mirror.errors import BundleError, HashMismatch, ManifestError, UsageError
from mirror.hashing import first_difference, hash_files
from mirror.manifest import KINDS, MAX_MANIFEST_BYTES, FileEntry, Manifest, classify, parse, unsafe_path_reason
from common.safejson import read_file

DELTA_FORMAT = "mirror-delta/1"
DELTA_KEY = "delta"  # the manifest section (Manifest.extra) that makes a bundle a delta
_FILE_KEYS = {"path", "size", "sha256", "git_sha1", "lfs", "kind"}


@dataclass(frozen=True)
class BaseRef:
    """The bundle a delta applies on top of."""

    repo_id: str
    repo_type: str
    commit: str
    revision: str
    bundle: str | None  # the base bundle's file name; None when made from a manifest alone
    bundle_sha256: str | None  # sha256 of the base bundle's whole stream; None likewise

    def describe(self) -> str:
        return f"{self.repo_id}@{self.commit[:12]} (bundle {self.bundle or '?'}, sha256 {self.bundle_sha256 or 'unknown'})"


@dataclass(frozen=True)
class DeltaPlan:
    """How a target file list differs from a base, by content (sha256), path by path."""

    changed: tuple[str, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]
    unchanged: tuple[str, ...]

    @property
    def carried(self) -> tuple[str, ...]:
        """What the delta bundle must hold."""
        return tuple(sorted(self.changed + self.added))


@dataclass(frozen=True)
class DeltaInfo:
    """The parsed `delta` section of a manifest."""

    base: BaseRef
    target_files: tuple[FileEntry, ...]  # the complete snapshot after applying the delta
    removed: tuple[str, ...]  # paths of the base absent from the target (informational)


# --- making a delta -----------------------------------------------------------------------------


def full_files(manifest: Manifest) -> tuple[FileEntry, ...]:
    """Every file of the snapshot a bundle stands for: its payload for a full bundle, the target
    list for a delta (so a delta can itself be the base of the next delta)."""
    info = delta_info(manifest)
    return info.target_files if info else manifest.files


@dataclass(frozen=True)
class Base:
    """What a delta is made against: the reference recorded in it, and the base's full file list."""

    ref: BaseRef
    files: tuple[FileEntry, ...]
    license: str | None


def load_base(*, since: str | os.PathLike | None = None, since_manifest: str | os.PathLike | None = None) -> Base:
    """Read what a delta is relative to: an old bundle (single-file or multi-part; its sha256 is
    recorded so the sandbox can be told exactly which bundle it needs), or a manifest JSON
    (`mirror inspect --json` output) when the old bundle itself is not at hand."""
    if (since is None) == (since_manifest is None):
        raise UsageError("give exactly one of --since OLD_BUNDLE and --since-manifest OLD.json")
    if since_manifest is not None:
        path = Path(since_manifest)
        try:
            raw = read_file(path, what="--since-manifest file", max_bytes=MAX_MANIFEST_BYTES, error=UsageError)
        except FileNotFoundError as e:
            raise UsageError(f"--since-manifest {path}: no such file; pass the JSON printed by 'mirror inspect --json OLD_BUNDLE'") from e
        m = parse(raw, bundle=str(path))
        ref = BaseRef(m.repo_id, m.repo_type, m.commit, m.revision, bundle=None, bundle_sha256=None)
        return Base(ref=ref, files=full_files(m), license=m.license)
    loc = stored.locate(since)
    m = read_manifest(since)  # the head of the stream only
    ref = BaseRef(
        m.repo_id, m.repo_type, m.commit, m.revision,
        bundle=loc.path.name, bundle_sha256=stored.stream_sha256(since),
    )  # fmt: skip
    return Base(ref=ref, files=full_files(m), license=m.license)


def plan_delta(base_files: Iterable[FileEntry], target_files: Iterable[FileEntry]) -> DeltaPlan:
    base = {f.path: f for f in base_files}
    target = {f.path: f for f in target_files}
    changed, added, unchanged = [], [], []
    for path, f in sorted(target.items()):
        old = base.get(path)
        if old is None:
            added.append(path)
        elif old.sha256 != f.sha256 or old.size != f.size:
            changed.append(path)
        else:
            unchanged.append(path)
    removed = sorted(set(base) - set(target))
    return DeltaPlan(changed=tuple(changed), added=tuple(added), removed=tuple(removed), unchanged=tuple(unchanged))


def unchanged_remote(base: FileEntry | None, *, size: int, lfs_sha256: str | None, git_oid: str | None) -> bool:
    """Whether a file listed by the Hub (tree API) equals the base's, without downloading it.
    LFS files are compared by their sha256; other files by git blob sha1 (the tree's `oid`, which
    for an LFS file is the pointer's sha1 and so is not used for them)."""
    if base is None or base.size != size:
        return False
    if lfs_sha256:
        return base.sha256 == lfs_sha256
    return git_oid is not None and base.git_sha1 == git_oid


def make_delta_manifest(target: Manifest, *, base: BaseRef, base_files: Iterable[FileEntry]) -> tuple[Manifest, DeltaPlan]:
    """The manifest of the delta bundle: payload = new and changed files; `delta` = the base and
    the complete target list. Refuses a base of another repo (a mix-up, never intended)."""
    if (base.repo_id, base.repo_type) != (target.repo_id, target.repo_type):
        raise UsageError(
            f"the base is {base.repo_type} {base.repo_id!r} but this bundle is {target.repo_type} "
            f"{target.repo_id!r}; pass an older bundle of the same repo to --since"
        )
    plan = plan_delta(base_files, target.files)
    carried = set(plan.carried)
    section = {
        "format": DELTA_FORMAT,
        "base": asdict(base),
        "target_files": [asdict(f) for f in sorted(target.files, key=lambda f: f.path)],
        "removed": list(plan.removed),
    }
    files = tuple(f for f in target.files if f.path in carried)
    return replace(target, files=files).with_extra(**{DELTA_KEY: section}), plan


# --- reading a delta ----------------------------------------------------------------------------


def delta_info(manifest: Manifest, *, bundle: str = "bundle") -> DeltaInfo | None:
    """The strictly parsed delta section, or None for a full bundle."""
    d = manifest.extra.get(DELTA_KEY)
    if d is None:
        return None
    problems: list[str] = []
    if not isinstance(d, dict) or d.get("format") != DELTA_FORMAT:
        raise ManifestError(bundle, f"unknown delta section (format must be {DELTA_FORMAT!r})", fix="upgrade mirror, or re-create the delta with this version")
    b = d.get("base")
    base = None
    if isinstance(b, dict) and set(b) == {"repo_id", "repo_type", "commit", "revision", "bundle", "bundle_sha256"}:
        ok = all(isinstance(b[k], str) for k in ("repo_id", "repo_type", "commit", "revision"))
        ok = ok and is_commit(b["commit"])
        ok = ok and (b["bundle"] is None or isinstance(b["bundle"], str))
        ok = ok and (b["bundle_sha256"] is None or is_sha256(b["bundle_sha256"]))
        if ok:
            base = BaseRef(**b)
    if base is None:
        problems.append("delta.base must name repo_id, repo_type, a 40-hex commit, revision, bundle, bundle_sha256")
    elif (base.repo_id, base.repo_type) != (manifest.repo_id, manifest.repo_type):
        problems.append("delta.base is another repo")
    targets = _parse_entries(d.get("target_files"), problems)
    removed = d.get("removed")
    if not isinstance(removed, list) or not all(isinstance(p, str) for p in removed):
        problems.append("delta.removed must be a list of paths")
        removed = []
    by_path = {f.path: f for f in targets}
    for f in manifest.files:
        if by_path.get(f.path) != f:
            problems.append(f"payload file {f.path!r} is not in delta.target_files with the same digests")
    if problems:
        raise ManifestError(bundle, "invalid delta section: " + "; ".join(problems[:6]))
    return DeltaInfo(base=base, target_files=tuple(sorted(targets, key=lambda f: f.path)), removed=tuple(removed))


def _parse_entries(raw: Any, problems: list[str]) -> list[FileEntry]:
    if not isinstance(raw, list):
        problems.append("delta.target_files must be a list")
        return []
    out, seen = [], set()
    for i, fd in enumerate(raw):
        where = f"delta.target_files[{i}]"
        if not isinstance(fd, dict) or set(fd) != _FILE_KEYS:
            problems.append(f"{where} must have exactly {sorted(_FILE_KEYS)}")
            continue
        types_ok = (
            isinstance(fd["path"], str) and isinstance(fd["size"], int) and not isinstance(fd["size"], bool)
            and fd["size"] >= 0 and isinstance(fd["lfs"], bool) and fd["kind"] in KINDS
            and is_sha256(fd["sha256"])
            and is_commit(fd["git_sha1"])
        )  # fmt: skip
        if not types_ok:
            problems.append(f"{where} has a bad size, digest, lfs flag or kind")
            continue
        bad = unsafe_path_reason(fd["path"])
        if bad or fd["path"] in seen:
            problems.append(f"{where} path {fd['path']!r} {bad or 'is listed twice'}")
            continue
        seen.add(fd["path"])
        out.append(FileEntry(**fd))
    return out


def require_full(manifest: Manifest, *, bundle: str) -> None:
    """For consumers that need a complete snapshot in the payload (e.g. a tool that unpacks a
    bundle into a plain folder): a delta is refused with what to do instead."""
    info = delta_info(manifest, bundle=bundle)
    if info is not None:
        raise BundleError(
            bundle,
            f"this is a delta bundle on top of {info.base.describe()}; it holds only "
            f"{len(manifest.files)} of the {len(info.target_files)} files",
            fix="install the base bundle, then 'mirror install' this delta on top of it",
        )


def folder_delta(spec: BundleSpec, root: Path, paths: list[str], *, since: str | os.PathLike | None, since_manifest: str | os.PathLike | None,
                 sources=None) -> tuple[BundleSpec, list[str]]:
    """The spec and the files that turn a pack of `root` into a delta against a base.

    Every file is hashed first (in parallel across cores) to know what changed; only changed and
    new files are then copied into the bundle, so unchanged files are read once and changed ones
    twice. The commit is the content id of the complete target (as a full pack would get)."""
    base = load_base(since=since, since_manifest=since_manifest)
    # `sources` (mirror.bundle.write.files.Sources, what pack walked and checked): hashed through
    # those descriptors, never reopened by name, so a file swapped for a link cannot leak its digest
    item = {p: sources[p] if sources is not None else root / p for p in paths}
    size = {p: sources[p].size if sources is not None else os.stat(root / p).st_size for p in paths}
    lfs = {item[p] for p in paths if is_lfs(p, size[p])}
    digests = hash_files([item[p] for p in paths], lfs=lfs)
    target = []
    for p in paths:
        d = digests[item[p]]
        target.append(FileEntry(path=p, size=d.size, sha256=d.sha256, git_sha1=d.git_sha1, lfs=item[p] in lfs, kind=classify(p)))
    draft = Manifest(repo_id=spec.repo_id, repo_type=spec.repo_type, revision="", commit=pack_commit(target), source="", created_at="", license=None, files=tuple(target))
    delta_m, plan = make_delta_manifest(draft, base=base.ref, base_files=base.files)
    extra = {**(spec.extra or {}), DELTA_KEY: delta_m.extra[DELTA_KEY]}
    return replace(spec, commit=delta_m.commit, expected={f.path: f for f in delta_m.files}, extra=extra), list(plan.carried)


def split_remote(files: Iterable, base: Base) -> tuple[list, dict[str, FileEntry]]:
    """For a pull: which of the Hub's files (`mirror.hub.RemoteFile`) must be downloaded, and the
    target entries of those that need not be (equal to the base's, by the Hub's own digests)."""
    old = {f.path: f for f in base.files}
    fetch, same = [], {}
    for f in files:
        b = old.get(f.path)
        if unchanged_remote(b, size=f.size, lfs_sha256=f.sha256 or None, git_oid=f.git_sha1 or None):
            # the Hub's lfs flag decides the blob name (etag) in the cache, as for a full pull
            same[f.path] = replace(b, lfs=f.lfs, kind=classify(f.path))
        else:
            fetch.append(f)
    return fetch, same


def remote_delta(spec: BundleSpec, fetched: Iterable, unchanged: dict[str, FileEntry], *, staging: Path, base: Base) -> tuple[BundleSpec, list[str]]:
    """The spec and the files of a pulled delta. The downloaded files are hashed first (in
    parallel; they are fresh in the page cache) because the delta section must list every target
    file's full digests before the bundle is written; each is checked against the Hub's digest."""
    fetched = list(fetched)
    digests = hash_files([staging / f.path for f in fetched], lfs={staging / f.path for f in fetched if f.lfs})
    target = dict(unchanged)
    for f in fetched:
        d = digests[staging / f.path]
        if diff := first_difference(f, d, skip_empty=True):
            raise HashMismatch(f.path, algorithm=diff[0], expected=diff[1], actual=diff[2], where="against the Hub's hash")
        target[f.path] = FileEntry(path=f.path, size=d.size, sha256=d.sha256, git_sha1=d.git_sha1, lfs=f.lfs, kind=classify(f.path))
    draft = Manifest(repo_id=spec.repo_id, repo_type=spec.repo_type, revision="", commit=spec.commit, source="", created_at="", license=None, files=tuple(target.values()))
    delta_m, plan = make_delta_manifest(draft, base=base.ref, base_files=base.files)
    extra = {**(spec.extra or {}), DELTA_KEY: delta_m.extra[DELTA_KEY]}
    return replace(spec, expected={f.path: f for f in delta_m.files}, extra=extra), list(plan.carried)
