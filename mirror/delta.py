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
import re
import shutil
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable

from mirror import parts
from mirror.bundle import is_lfs, pack_commit
from mirror.tarformat import BundleReader, read_manifest
from mirror.errors import BaseNotInstalled, BundleError, HashMismatch, ManifestError, NotEnoughSpace, UsageError
from mirror.hashing import DualHasher, hash_files
from mirror.manifest import KINDS, FileEntry, Manifest, classify, parse, unsafe_path_reason

DELTA_FORMAT = "mirror-delta/1"
DELTA_KEY = "delta"  # the manifest section (Manifest.extra) that makes a bundle a delta
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
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
            raw = path.read_bytes()
        except FileNotFoundError as e:
            raise UsageError(f"--since-manifest {path}: no such file; pass the JSON printed by 'mirror inspect --json OLD_BUNDLE'") from e
        m = parse(raw, bundle=str(path))
        ref = BaseRef(m.repo_id, m.repo_type, m.commit, m.revision, bundle=None, bundle_sha256=None)
        return Base(ref=ref, files=full_files(m), license=m.license)
    loc = parts.locate(since)
    m = read_manifest(since)  # the head of the stream only
    ref = BaseRef(
        m.repo_id, m.repo_type, m.commit, m.revision,
        bundle=loc.path.name, bundle_sha256=parts.stream_sha256(since),
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
        ok = ok and _HEX40.match(b["commit"]) is not None
        ok = ok and (b["bundle"] is None or isinstance(b["bundle"], str))
        ok = ok and (b["bundle_sha256"] is None or (isinstance(b["bundle_sha256"], str) and _HEX64.match(b["bundle_sha256"]) is not None))
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
            and isinstance(fd["sha256"], str) and _HEX64.match(fd["sha256"]) is not None
            and isinstance(fd["git_sha1"], str) and _HEX40.match(fd["git_sha1"]) is not None
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


# --- installing a delta -------------------------------------------------------------------------


@dataclass(frozen=True)
class DeltaInstall:
    snapshot: Path  # snapshots/<target commit>
    commit: str
    base_commit: str
    new_blobs: int  # blobs this delta added to the cache
    shared_blobs: int  # target files served by blobs already in the cache (the base's)
    already_installed: bool
    bundle_sha256: str | None  # of the delta bundle; None when it was already installed


def install_delta(bundle: str | os.PathLike, *, cache_dir: str | os.PathLike, allow_pickle: bool = False) -> DeltaInstall:
    """Apply a delta bundle on top of its installed base commit, atomically.

    Order: refuse early (not a delta, base commit not installed, base blobs missing) before any
    byte is written; stream the payload into new blobs, hashing as they are written; hash every
    shared blob too, so the complete target snapshot is verified; then build the snapshot under a
    temporary name and rename it into place. On any failure the blobs this call created and the
    temporary snapshot are removed, leaving the cache as it was. Refs are the caller's
    (`install.install_bundle`, which dispatches deltas here, after the policy's name check).
    With `allow_pickle`, the new blobs are scanned against the pickle allowlist before the
    snapshot exists (the base's files were scanned when the base was installed)."""
    from mirror.install import _link_target, repo_folder

    cache = Path(cache_dir)
    with BundleReader(bundle) as r:
        m = r.manifest
        info = delta_info(m, bundle=r.label)
        if info is None:
            raise UsageError(f"{r.label} is a full bundle, not a delta; install it with 'mirror install'")
        repo = cache / repo_folder(m.repo_id, m.repo_type)
        blobs = repo / "blobs"
        carried = {f.path for f in m.files}
        shared = [f for f in info.target_files if f.path not in carried]
        base = info.base

        def missing_base(detail: str = "") -> BaseNotInstalled:
            return BaseNotInstalled(r.label, repo_id=base.repo_id, commit=base.commit, base_bundle=base.bundle, base_sha256=base.bundle_sha256, detail=detail)

        if not (repo / "snapshots" / base.commit).is_dir():
            installed = sorted(p.name for p in (repo / "snapshots").glob("*") if p.is_dir() and not p.name.startswith("."))
            raise missing_base(f"{cache} holds {', '.join(c[:12] for c in installed) or 'no commit'} of this repo")
        absent = [f.path for f in shared if not (blobs / f.etag).is_file()]
        if absent:
            raise missing_base(f"{len(absent)} of its files are not in the cache (first {absent[0]!r})")
        target = repo / "snapshots" / m.commit
        if _snapshot_complete(target, info.target_files, blobs):
            return DeltaInstall(snapshot=target, commit=m.commit, base_commit=base.commit, new_blobs=0, shared_blobs=len(shared), already_installed=True, bundle_sha256=None)
        need = sum(f.size for f in m.files if not (blobs / f.etag).exists())
        blobs.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(blobs).free
        if need > free:
            raise NotEnoughSpace(str(blobs), needed=need, free=free)

        created: list[Path] = []
        staging = repo / "snapshots" / f".{m.commit}.{uuid.uuid4().hex[:12]}.incomplete"
        try:
            for member, chunks in r.payload():
                if member.problem:
                    raise BundleError(r.label, member.problem)
                if member.kind != "file":
                    continue  # directories and trailers (signatures) carry no snapshot content
                if _write_blob(member.entry, chunks, blobs, label=r.label):
                    created.append(blobs / member.entry.etag)
            if r.missing:
                raise BundleError(r.label, f"{len(r.missing)} file(s) listed in the manifest are missing, first {r.missing[0]!r}")
            _verify_shared(shared, blobs)
            if allow_pickle:
                from mirror.policy import check_files

                check_files({f.path: blobs / f.etag for f in m.files}, allow_pickle=True, where=r.label)
            for f in info.target_files:
                link = staging / f.path
                link.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(_link_target(f.path, f.etag), link)
            _swap_in(staging, target)
            sha = r.sha256
        except BaseException:
            for b in created:
                b.unlink(missing_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return DeltaInstall(snapshot=target, commit=m.commit, base_commit=base.commit, new_blobs=len(created), shared_blobs=len(shared), already_installed=False, bundle_sha256=sha)


def _snapshot_complete(snapshot: Path, files: tuple[FileEntry, ...], blobs: Path) -> bool:
    """Installed before: every file links to the blob it must be (content was hashed then)."""
    if not snapshot.is_dir():
        return False
    for f in files:
        link = snapshot / f.path
        if not link.is_symlink() or (link.parent / os.readlink(link)).resolve() != (blobs / f.etag).resolve():
            return False
    return True


def _write_blob(entry: FileEntry, chunks, blobs: Path, *, label: str) -> bool:
    """Stream one payload file into blobs/<etag>, hashing as it goes. True if the blob is new
    (False when an identical blob was already there: blobs are shared, never rewritten)."""
    final = blobs / entry.etag
    tmp = blobs / f"{entry.etag}.{uuid.uuid4().hex[:12]}.incomplete"
    h = DualHasher(entry.size, lfs=entry.lfs)
    try:
        with open(tmp, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
                h.update(chunk)
        try:
            d = h.digest()
        except ValueError as e:
            raise BundleError(label, f"{entry.path}: {e}") from e
        for algo, want, got in (("sha256", entry.sha256, d.sha256), ("git sha1", entry.git_sha1, d.git_sha1)):
            if want != got:
                raise HashMismatch(entry.path, algorithm=algo, expected=want, actual=got, where=f"in {label}")
        if final.exists():
            return False
        os.replace(tmp, final)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _verify_shared(files: list[FileEntry], blobs: Path) -> None:
    """Hash the blobs the target shares with the base, in parallel across cores."""

    digests = hash_files([blobs / f.etag for f in files], lfs={blobs / f.etag for f in files if f.lfs}) if files else {}
    for f in files:
        got = digests[blobs / f.etag]
        if got.sha256 != f.sha256:
            raise HashMismatch(f.path, algorithm="sha256", expected=f.sha256, actual=got.sha256, where="in the installed base (the cache was altered: reinstall the base bundle)")


def _swap_in(staging: Path, target: Path) -> None:
    """Rename the finished snapshot into place; an incomplete one already there is replaced."""
    if target.exists():
        old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.old")
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)


def folder_delta(root: Path, paths: list[str], *, repo_id: str, repo_type: str, since: str | os.PathLike | None, since_manifest: str | os.PathLike | None, extra: dict[str, Any] | None) -> dict[str, Any]:
    """`write_bundle` arguments that turn a pack of `root` into a delta against a base.

    Every file is hashed first (in parallel across cores) to know what changed; only changed and
    new files are then copied into the bundle, so unchanged files are read once and changed ones
    twice. The commit is the content id of the complete target (as a full pack would get)."""
    base = load_base(since=since, since_manifest=since_manifest)
    lfs = {root / p for p in paths if is_lfs(p, os.stat(root / p).st_size)}
    digests = hash_files([root / p for p in paths], lfs=lfs)
    target = []
    for p in paths:
        d = digests[root / p]
        target.append(FileEntry(path=p, size=d.size, sha256=d.sha256, git_sha1=d.git_sha1, lfs=root / p in lfs, kind=classify(p)))
    draft = Manifest(repo_id=repo_id, repo_type=repo_type, revision="", commit=pack_commit(target), source="", created_at="", license=None, files=tuple(target))
    delta_m, plan = make_delta_manifest(draft, base=base.ref, base_files=base.files)
    return {
        "commit": delta_m.commit,
        "paths": list(plan.carried),
        "expected": {f.path: f for f in delta_m.files},
        "extra": {**(extra or {}), DELTA_KEY: delta_m.extra[DELTA_KEY]},
    }


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


def remote_delta_args(fetched: Iterable, unchanged: dict[str, FileEntry], *, staging: Path, base: Base, repo_id: str, repo_type: str, commit: str) -> dict[str, Any]:
    """`write_bundle` arguments for a pulled delta. The downloaded files are hashed first (in
    parallel; they are fresh in the page cache) because the delta section must list every target
    file's full digests before the bundle is written; each is checked against the Hub's digest."""
    fetched = list(fetched)
    digests = hash_files([staging / f.path for f in fetched], lfs={staging / f.path for f in fetched if f.lfs})
    target = dict(unchanged)
    for f in fetched:
        d = digests[staging / f.path]
        for algo, want, got in (("sha256", f.sha256, d.sha256), ("git sha1", f.git_sha1, d.git_sha1), ("size", str(f.size), str(d.size))):
            if want and want != got:
                raise HashMismatch(f.path, algorithm=algo, expected=want, actual=got, where="against the Hub's hash")
        target[f.path] = FileEntry(path=f.path, size=d.size, sha256=d.sha256, git_sha1=d.git_sha1, lfs=f.lfs, kind=classify(f.path))
    draft = Manifest(repo_id=repo_id, repo_type=repo_type, revision="", commit=commit, source="", created_at="", license=None, files=tuple(target.values()))
    delta_m, plan = make_delta_manifest(draft, base=base.ref, base_files=base.files)
    return {
        "paths": list(plan.carried),
        "expected": {f.path: f for f in delta_m.files},
        "extra": {DELTA_KEY: delta_m.extra[DELTA_KEY]},
    }
