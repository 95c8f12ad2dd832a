"""Install a bundle (full or delta) into the standard Hugging Face cache, by content.

After `install_bundle`, unmodified Hugging Face code finds the model offline (layout:
`mirror.hfcache`). The promise: a snapshot installed at commit C holds exactly the bytes its
manifest names, and nothing a later bundle, a shared cache or an interruption does changes that
silently. How each part is kept:

- one manifest read: the bundle is opened once; the snapshot is built from the manifest that the
  bytes are checked against (`mirror.extract`), and the site policy (`mirror.trust`: a required
  signature by `--public-key` / $MIRROR_TRUSTED_KEYS, a required approval) is checked over exactly
  those manifest bytes; the install record names the bundle's identity and the key whose
  signature was checked, so what loads the snapshot later can enforce the same policy;
- a `.sha256` sidecar beside the bundle is checked when it is there (a manifest altered in
  transit, with the sidecar right beside it, is refused);
- an installed commit is immutable: a bundle claiming it with other content is refused, naming
  the first differing file; blobs already in the cache are trusted only after their content
  matched their name, and a damaged one is replaced (and reported);
- deltas obey the same rules over their complete target file list, and may only reuse files that
  their base snapshot holds under the same path and content;
- per-repo lock, huggingface_hub's blob locks, a journal: concurrent installs are safe, a failed
  one removes only what it created and no snapshot uses, and one killed even with SIGKILL is
  finished or undone by the next install into that repo (`hfcache.recover`);
- a cache this process cannot write (a shared cache mounted read-only) is only read: installing a
  bundle that is there already succeeds with no write tried, not even a lock file; one that would
  need a write is `CacheNotWritable` (exit 12), one line.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Sequence

from mirror import hfcache, identity, policy, trust
from mirror.bundle import stored

from common import atomic
from mirror.delta import delta_info
from mirror.errors import HashMismatch, BaseNotInstalled, BundleError, CacheNotWritable, CommitConflict, MirrorError, NotEnoughSpace, UnsafeCache, UsageError
from mirror.extract import extract
from mirror.hashing import hash_file, hash_files
from mirror.hfcache import RepoCache, cache_root, find_snapshot, link_target, list_installed  # noqa: F401 (re-exported: public API)
from mirror.ids import is_commit, is_sha256, ref_problem
from mirror.manifest import FileEntry, Manifest
from mirror.bundle.codec import BundleReader, name_collision, read_tail

default_cache_dir = cache_root


@dataclass(frozen=True)
class InstallResult:
    repo_id: str
    commit: str
    snapshot_dir: Path
    already_installed: bool
    bundle_sha256: str | None  # None when not computed (not asked for, or nothing extracted)
    refs: tuple[str, ...] = ()  # the refs that now point at this commit
    repaired: tuple[str, ...] = ()  # paths whose damaged blob in the cache was replaced
    recovered: tuple[str, ...] = ()  # what was done about earlier interrupted installs
    signer: str | None = None  # the fingerprint of the key whose signature was required and valid
    bundle_id: str | None = None  # the bundle's identity (mirror.identity), as the install record names it


@dataclass
class _Plan:
    """What one install does, decided under the repo lock before any byte is written."""

    rc: RepoCache
    target: tuple[FileEntry, ...]  # the complete snapshot (a delta's target_files)
    existing: dict[str, str | None]  # what snapshots/<commit> holds now: path -> etag
    record: dict[str, FileEntry] | None
    write: dict[str, FileEntry] = field(default_factory=dict)  # etag -> entry whose bytes the bundle must supply
    absent: set[str] = field(default_factory=set)  # etags with no blob yet
    damaged: set[str] = field(default_factory=set)  # etags whose blob does not match its name

    @property
    def complete(self) -> bool:
        return not self.write and all(self.existing.get(f.path) == f.etag for f in self.target)


def install_bundle(
    path: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    allow_pickle: bool = False,
    bundle_sha256: bool = True,
    public_keys: Sequence[str | os.PathLike] = (),
    expected_sha256: str | None = None,
    site: trust.Policy | None = None,
) -> InstallResult:
    """Verify `path` while installing it into the cache. `public_keys` (plus those in
    $MIRROR_TRUSTED_KEYS) require a valid signature by one of them; `expected_sha256` requires the
    bundle's own sha256 (a transfer ticket's). `bundle_sha256=False` skips computing the bundle's
    sha256 when nothing requires it (the files are checked either way); a `.sha256` sidecar beside
    the bundle requires it. `site` is the policy to enforce (default: `trust.policy(public_keys)`,
    which adds $MIRROR_TRUSTED_KEYS and the approvals the environment requires); an approval is
    checked before any byte of the payload is read.
    Raises CommitConflict, HashMismatch, BundleError, SignatureError, PolicyError, UnsafeCache,
    BaseNotInstalled, NotEnoughSpace or CacheNotWritable; the cache is then as it was. A cache this
    process cannot write is only read: a bundle already installed there passes (`_read_only`)."""
    keys = site if site is not None else trust.policy(public_keys)
    if expected_sha256 is not None and not is_sha256(expected_sha256.lower()):
        raise UsageError(f"--sha256 {expected_sha256!r} is not 64 hex characters; copy the bundle's sha256 from its .sha256 sidecar or transfer ticket")
    want_sha = bundle_sha256 or expected_sha256 is not None or stored.has_sidecar(path)
    with BundleReader(path, hash_all=want_sha) as reader:
        m = reader.manifest
        label = reader.label
        keys.require_approval(identity.bundle_id(reader.manifest_bytes), label=label)
        info = delta_info(m, bundle=label)
        target = _target_files(m, info, label)
        if not allow_pickle:  # decided from the names of the complete snapshot, before any byte is read
            policy.check_paths([f.path for f in target], where=label)
        if m.revision and (why := ref_problem(m.revision)):
            raise BundleError(label, f"revision {m.revision!r} {why}")
        rc = RepoCache(cache_root(cache_dir), m.repo_id, m.repo_type)
        if (why := hfcache.unwritable(rc)) is not None:
            return _read_only(reader, rc, m, info, target, label, why=why, keys=keys, expected_sha256=expected_sha256)
        made: list[Path] = []
        try:
            made = hfcache.make_dirs(rc.locks)
            return _locked(reader, rc, m, info, target, label, keys=keys, expected_sha256=expected_sha256, want_sha=want_sha, allow_pickle=allow_pickle)
        except BaseException as e:
            if made:  # a failed install into a fresh cache leaves no lock folder behind either
                hfcache.remove_locks(rc, made)
            if _write_refused(e, rc.root):  # a folder access(2) called writable refused a write anyway
                # (blobs/ on another, read-only disk; an ACL): the install was rolled back
                raise CacheNotWritable(str(rc.root), reason=f"{e.filename}: {e.strerror}", needs=f"installing {m.repo_id}@{m.commit[:12]} writes there") from e
            raise


_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def _write_refused(e: BaseException, root: Path) -> bool:
    """Whether `e` is the OS refusing a write inside the cache (not a bundle we may not read)."""
    if not isinstance(e, OSError) or isinstance(e, MirrorError) or e.errno not in _NOT_WRITABLE:
        return False
    return isinstance(e.filename, (str, os.PathLike)) and Path(os.path.abspath(e.filename)).is_relative_to(os.path.abspath(root))


def _locked(reader: BundleReader, rc: RepoCache, m: Manifest, info, target, label: str, *, keys, expected_sha256, want_sha: bool, allow_pickle: bool) -> InstallResult:
    with hfcache.repo_lock(rc):
        recovered = tuple(hfcache.recover(rc))
        plan = _plan(rc, m, info, target, label)
        if not plan.complete:
            return _install(reader, plan, m, keys=keys, expected_sha256=expected_sha256, want_sha=want_sha, allow_pickle=allow_pickle, recovered=recovered)
        return _already(reader, plan, m, keys=keys, expected_sha256=expected_sha256, write=True, recovered=recovered)


def _read_only(reader: BundleReader, rc: RepoCache, m: Manifest, info, target, label: str, *, why: str, keys, expected_sha256) -> InstallResult:
    """An install into a cache this process cannot write (a shared cache mounted read-only in a
    pod): without a lock, a recovery or a record, and with no write tried at all. It succeeds when
    the commit is there already, complete and with its refs, checked as a writable install checks
    it (links, blob hashes, signature, --sha256); anything it would have to add is CacheNotWritable.
    No lock is needed to read: a writer elsewhere makes blobs and snapshots appear by rename."""
    plan = _plan(rc, m, info, target, label)
    what = f"{m.repo_id}@{m.commit[:12]}"
    if not plan.complete:
        missing = len(plan.write) or sum(plan.existing.get(f.path) != f.etag for f in plan.target)
        raise CacheNotWritable(str(rc.root), reason=why, needs=f"{what} is not installed there ({missing} file(s) to write)")
    moved = [n for n in _ref_names(rc, m) if hfcache.read_ref(rc, n) != m.commit]
    if moved:
        raise CacheNotWritable(str(rc.root), reason=why, needs=f"{what} is installed there but refs/{moved[0]} would have to point at it")
    return _already(reader, plan, m, keys=keys, expected_sha256=expected_sha256, write=False, recovered=())


def _already(reader: BundleReader, plan: _Plan, m: Manifest, *, keys, expected_sha256, write: bool, recovered) -> InstallResult:
    """Every file is there with its content checked: still, what was asked of the bundle holds.
    With `write`, the refs are set and the install record written or completed (bookkeeping a
    read-only cache goes without: the snapshot is what loads)."""
    rc, target = plan.rc, plan.target
    signer = _signature_only(reader, keys) if keys.requires_signature else None
    sha = _sha_only(reader, expected_sha256) if expected_sha256 or stored.has_sidecar(reader.path) else None
    bundle = _bundle_record(reader, sha)
    checked = hfcache.RecordTrust(bundle_id=identity.bundle_id(reader.manifest_bytes), signer=signer)
    if not write:
        return InstallResult(m.repo_id, m.commit, rc.snapshot(m.commit), True, sha, hfcache.refs_to(rc, m.commit), signer=signer, bundle_id=checked.bundle_id)
    refs = _write_refs(rc, m)
    if plan.record is None and set(plan.existing) == {f.path for f in target}:
        hfcache.write_record(rc, m.commit, target, bundle=bundle, trust=checked)
    elif plan.record is not None and set(plan.record) == {f.path for f in target}:
        hfcache.update_record(rc, m.commit, bundle=bundle, trust=checked)
    return InstallResult(m.repo_id, m.commit, rc.snapshot(m.commit), True, sha, refs, recovered=recovered, signer=signer, bundle_id=checked.bundle_id)


def _target_files(m: Manifest, info, label: str) -> tuple[FileEntry, ...]:
    """The complete file list of the snapshot this bundle makes, checked as a full bundle's is."""
    if info is None:
        return m.files
    if info.base.commit == m.commit:
        raise BundleError(label, f"this delta's target commit {m.commit[:12]} is its own base commit", fix="a delta must make a new commit: do not use this bundle")
    if clash := name_collision(f.path for f in info.target_files):
        raise BundleError(label, f"invalid delta: {clash}", fix="a snapshot with such names cannot be installed safely everywhere: do not use this bundle")
    return info.target_files


def _plan(rc: RepoCache, m: Manifest, info, target: tuple[FileEntry, ...], label: str) -> _Plan:
    commits = [m.commit] + ([info.base.commit] if info else [])
    hfcache.check_tree(rc, commits)
    plan = _Plan(rc=rc, target=target, existing=hfcache.snapshot_links(rc, m.commit), record=hfcache.read_record(rc, m.commit))
    _refuse_conflicts(plan, m, label)
    carried = {f.path for f in m.files}
    if info is not None:
        base_links = hfcache.snapshot_links(rc, info.base.commit)
        if not rc.snapshot(info.base.commit).is_dir():
            installed = sorted(p.name for p in rc.snapshots.glob("*") if is_commit(p.name)) if rc.snapshots.is_dir() else []
            raise BaseNotInstalled(label, repo_id=info.base.repo_id, commit=info.base.commit, base_bundle=info.base.bundle, base_sha256=info.base.bundle_sha256,
                                   detail=f"{rc.root} holds {', '.join(c[:12] for c in installed) or 'no commit'} of this repo")
        for f in target:
            if f.path not in carried and base_links.get(f.path) != f.etag and plan.existing.get(f.path) != f.etag:
                raise BundleError(label, f"the delta does not carry {f.path}, and its base {info.base.commit[:12]} does not hold that file with that content",
                                  fix="a delta may only reuse its base's files: re-create it against the installed base")
    by_etag: dict[str, FileEntry] = {}
    for f in target:
        by_etag.setdefault(f.etag, f)
    present = []
    for etag, f in by_etag.items():
        state = hfcache.blob_state(rc, etag)
        if state == "unsafe":
            raise UnsafeCache(str(rc.blob(etag)), "the blob is not a regular file (a link, a folder or a device)")
        if state == "file":
            present.append(f)
        else:
            plan.absent.add(etag)
    if present:  # trusted only after their content matches their name, hashed in parallel
        digests = hash_files([rc.blob(f.etag) for f in present], lfs={rc.blob(f.etag) for f in present if f.lfs})
        for f in present:
            d = digests[rc.blob(f.etag)]
            if (d.size, d.sha256, d.git_sha1) != (f.size, f.sha256, f.git_sha1):
                plan.damaged.add(f.etag)
    payload = {f.etag for f in m.files}
    for etag in plan.absent | plan.damaged:
        f = by_etag[etag]
        if etag not in payload:
            why = "is damaged in the cache" if etag in plan.damaged else "is not in the cache"
            if info is None:  # cannot happen for a full bundle: every target file is in its payload
                raise BundleError(label, f"{f.path} {why} and not in the bundle")
            raise BaseNotInstalled(label, repo_id=info.base.repo_id, commit=info.base.commit, base_bundle=info.base.bundle, base_sha256=info.base.bundle_sha256,
                                   detail=f"its blob of {f.path} {why} (installing the base bundle again repairs it)")
        plan.write[etag] = f
    return plan


def _refuse_conflicts(plan: _Plan, m: Manifest, label: str) -> None:
    """An installed commit is immutable: every file it holds must be the bundle's, and a commit
    mirror completed (it has a record) gains no file. A bundle holding only some of its files
    (pulled with --include) changes nothing, so it is not a conflict: it is already installed."""

    def conflict(path: str, detail: str) -> CommitConflict:
        return CommitConflict(label, repo_id=m.repo_id, commit=m.commit, path=path, detail=detail)

    want = {f.path: f for f in plan.target}
    for path in sorted(set(plan.existing) & set(want)):
        have = plan.existing[path]
        if have is None and _same_plain_file(plan.rc.snapshot(m.commit) / path, want[path]):
            plan.existing[path] = have = want[path].etag  # a copy, not a link (no-symlink caches): same bytes
        if have != want[path].etag:
            raise conflict(path, f"is blob {have or '(not a cache link)'} there, {want[path].etag} in the bundle")
    if plan.record is not None:
        for path in sorted(want):
            if path not in plan.record:
                raise conflict(path, "is in the bundle, not in the installed commit")
            if plan.record[path] != want[path]:
                raise conflict(path, f"has sha256 {plan.record[path].sha256} there, {want[path].sha256} in the bundle")


def _same_plain_file(p: Path, f: FileEntry) -> bool:
    if p.is_symlink() or not p.is_file() or p.stat().st_size != f.size:
        return False
    d = hash_file(p, lfs=f.lfs)
    return (d.sha256, d.git_sha1) == (f.sha256, f.git_sha1)


class _BlobSink:
    """Verified bytes of the blobs to write go to temporaries inside blobs/ (same filesystem as
    their final names, also when blobs/ is a link to another disk)."""

    def __init__(self, rc: RepoCache, write: dict[str, FileEntry]):
        self.rc = rc
        self.todo = set(write)
        self.claimed: set[str] = set()
        self.staged: dict[str, Path] = {}
        self._open: dict[int, Path] = {}
        self._lock = threading.Lock()

    def open(self, entry: FileEntry) -> BinaryIO | None:
        with self._lock:
            if entry.etag not in self.todo or entry.etag in self.claimed:
                return None
            self.claimed.add(entry.etag)
        tmp = atomic.temp_path(self.rc.blob(entry.etag), suffix="incomplete")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        f = os.fdopen(fd, "wb")
        self._open[id(f)] = tmp
        return f

    def keep(self, entry: FileEntry, out: BinaryIO) -> None:
        out.close()
        self.staged[entry.etag] = self._open.pop(id(out))

    def discard(self, entry: FileEntry, out: BinaryIO) -> None:
        out.close()
        self._open.pop(id(out)).unlink(missing_ok=True)
        with self._lock:
            self.claimed.discard(entry.etag)

    def cleanup(self) -> None:
        for tmp in list(self.staged.values()) + list(self._open.values()):
            tmp.unlink(missing_ok=True)


def _install(reader: BundleReader, plan: _Plan, m: Manifest, *, keys, expected_sha256, want_sha: bool, allow_pickle: bool, recovered) -> InstallResult:
    rc, label = plan.rc, reader.label
    need = sum(f.size for f in plan.write.values())
    made = hfcache.make_dirs(rc.blobs) + hfcache.make_dirs(rc.snapshots)
    free = shutil.disk_usage(rc.blobs).free
    if free < need:
        _remove_empty(made)
        raise NotEnoughSpace(str(rc.blobs), needed=need, free=free)
    sink = _BlobSink(rc, plan.write)
    journal_path: Path | None = None
    journal = None
    staging: Path | None = None
    try:
        ex = extract(reader, sink=sink, bundle_sha256=want_sha)
        if sink.todo - set(sink.staged):
            raise BundleError(label, f"{len(sink.todo - set(sink.staged))} file(s) to install were not in the bundle's payload")
        signer = keys.require_signer(reader.manifest_bytes, ex.signature, label=label)
        checked = hfcache.RecordTrust(bundle_id=identity.bundle_id(reader.manifest_bytes), signer=signer)
        if expected_sha256 is not None and ex.sha256 != expected_sha256.lower():
            raise _not_the_ticketed(label, expected_sha256, ex.sha256)
        bundle = _bundle_record(reader, ex.sha256)
        if allow_pickle:  # scan the verified bytes before anything is moved into the cache
            policy.check_files({f.path: sink.staged.get(f.etag, rc.blob(f.etag)) for f in plan.target}, allow_pickle=True, where=label)
        snap = rc.snapshot(m.commit)
        new_snapshot = not snap.is_dir()
        added = tuple(f.path for f in plan.target if f.path not in plan.existing) if not new_snapshot else ()
        journal = hfcache.Journal(commit=m.commit, refs=_ref_names(rc, m), created_blobs=tuple(sorted(plan.absent & set(sink.staged))),
                                  added_links=added, new_snapshot=new_snapshot,
                                  new_record=plan.record is None and set(plan.existing) <= {f.path for f in plan.target})
        journal_path = journal.save(rc)
        # commit point 1: blobs (content-addressed: putting verified bytes under their name is always right)
        for etag, tmp in sorted(sink.staged.items()):
            with hfcache.blob_lock(rc, etag):
                os.replace(tmp, rc.blob(etag))
        sink.staged.clear()
        if journal.new_record:
            hfcache.write_record(rc, m.commit, plan.target, bundle=bundle, trust=checked)
        # commit point 2: the snapshot (a new one appears whole, by one rename)
        if new_snapshot:
            staging = atomic.temp_path(snap, suffix="staging")
            _link_all(staging, plan.target)
            os.rename(staging, snap)
        else:  # a partial snapshot (a filtered snapshot_download): add the links it lacks
            for f in plan.target:
                if f.path in added:
                    p = snap / f.path
                    hfcache.make_dirs(p.parent)
                    tmp = atomic.temp_path(p, suffix="tmp")
                    os.symlink(link_target(f.path, f.etag), tmp)
                    os.replace(tmp, p)
        refs = _write_refs(rc, m)
        if not journal.new_record and plan.record is not None and set(plan.record) == {f.path for f in plan.target}:
            hfcache.update_record(rc, m.commit, bundle=bundle, trust=checked)
    except BaseException as e:
        sink.cleanup()
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if journal is not None:
            hfcache.rollback(rc, journal)
        _remove_empty(made)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise NotEnoughSpace(str(rc.blobs), needed=need, free=shutil.disk_usage(rc.root).free) from e
        raise
    finally:
        if journal_path is not None:
            journal_path.unlink(missing_ok=True)
    repaired = tuple(sorted(plan.write[e].path for e in plan.damaged))
    return InstallResult(m.repo_id, m.commit, snap, False, ex.sha256, refs, repaired=repaired, recovered=recovered, signer=signer, bundle_id=checked.bundle_id)


def installed_bundle(repo_id: str, commit: str, *, cache_dir: str | os.PathLike | None = None, repo_type: str = "model") -> hfcache.BundleRecord | None:
    """The bundle that installed `repo_id@commit`, with the sha256 its install checked, read from
    the install record (a few hundred bytes; the bundle itself is not opened). None when the
    commit was installed without checking its bundle's sha256 (`mirror install` without
    `--sha256`), by an older mirror, or by someone else (snapshot_download)."""
    return hfcache.read_bundle_record(RepoCache(cache_root(cache_dir), repo_id, repo_type), commit)


def installed_trust(repo_id: str, commit: str, *, cache_dir: str | os.PathLike | None = None, repo_type: str = "model") -> hfcache.RecordTrust | None:
    """What the install record of `repo_id@commit` says for the site policy (`trust.Policy.
    check_installed`): the bundle identity and the key whose signature the install checked. None
    when mirror did not install it."""
    return hfcache.read_trust(RepoCache(cache_root(cache_dir), repo_id, repo_type), commit)


def check_snapshot(repo_id: str, commit: str, *, cache_dir: str | os.PathLike | None = None, repo_type: str = "model", label: str | None = None) -> None:
    """SnapshotChanged when the installed snapshot no longer holds what its install record says
    (`hfcache.snapshot_problem`: links, sizes, small files hashed, large ones by stamp). Nothing to
    compare with (no record): returns."""
    from mirror.errors import SnapshotChanged

    rc = RepoCache(cache_root(cache_dir), repo_id, repo_type)
    hfcache.check_tree(rc, [commit])
    if (why := hfcache.snapshot_problem(rc, commit)) is not None:
        raise SnapshotChanged(label or f"{repo_id}@{commit[:12]} in {rc.root}", why)


def remember_bundle(repo_id: str, commit: str, bundle: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None, repo_type: str = "model") -> hfcache.BundleRecord | None:
    """For a commit installed without a checked bundle sha256 (`mirror install` without
    `--sha256`): verify `bundle` in one pass (every file against its manifest, and the bundle's own
    sha256) and, when it holds exactly the installed files, name it in the install record, so this
    one read is the last. None when it does not verify or holds other files: then it is not the
    bundle of that snapshot and nothing is recorded. A record that already names one is kept, and
    a cache this process cannot write is left alone (None) before the bundle is read."""
    from mirror.delta import full_files
    from mirror.verify import verify_bundle

    rc = RepoCache(cache_root(cache_dir), repo_id, repo_type)
    installed = hfcache.read_record(rc, commit)
    if installed is None or hfcache.unwritable(rc) is not None:  # nothing to name, or nowhere to: no bundle read
        return None
    try:
        report = verify_bundle(bundle, bundle_sha256=True)
    except (MirrorError, OSError):
        return None
    if not report.ok or report.manifest is None or report.manifest.commit != commit or not report.bundle_sha256:
        return None
    if {f.path: (f.size, f.sha256) for f in full_files(report.manifest)} != {p: (f.size, f.sha256) for p, f in installed.items()}:
        return None
    loc = stored.locate(bundle)
    record = hfcache.BundleRecord(name=loc.where.name, path=os.path.abspath(loc.where), size=loc.size(), sha256=report.bundle_sha256)
    with hfcache.repo_lock(rc):  # its identity too, for a record that names none yet (an older mirror's)
        hfcache.update_record(rc, commit, bundle=record, trust=hfcache.RecordTrust(bundle_id=identity.read_bundle_id(bundle), signer=None))
    return hfcache.read_bundle_record(rc, commit)


def _bundle_record(reader: BundleReader, sha256: str | None) -> hfcache.BundleRecord | None:
    """What the install record says about the bundle: only a sha256 this install checked (computed
    over the bytes it read, or a multi-part index whose every part matched). A `.sha256` sidecar
    next to the bundle must agree with it: one that does not is a stale or altered copy, and the
    install is refused before anything is moved into the cache (HashMismatch, exit 4)."""
    if sha256 is None:
        return None
    loc = stored.locate(reader.path)
    claimed = loc.sidecar_sha256()  # a multi-part bundle has none: its index holds the sha256
    if claimed is not None and claimed != sha256:
        raise HashMismatch(str(loc.path), algorithm="bundle sha256", expected=claimed, actual=sha256, where=f"against its sidecar {loc.sidecar.name} (a stale or altered copy: fetch both again)")
    return hfcache.BundleRecord(name=loc.where.name, path=os.path.abspath(loc.where), size=loc.size(), sha256=sha256)


def _link_all(staging: Path, files: tuple[FileEntry, ...]) -> None:
    staging.mkdir()
    for f in files:
        link = staging / f.path
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(link_target(f.path, f.etag), link)


def _remove_empty(folders: list[Path]) -> None:
    for d in reversed(folders):
        try:
            d.rmdir()
        except OSError:
            pass


def _signature_only(reader: BundleReader, keys) -> str | None:
    """For an already installed commit: the required signature, checked over the manifest bytes
    this install read. Only the trailer is needed (nothing is extracted), so the member headers are
    walked, seeking over the data; whatever file the trailer comes from, it must sign these bytes."""
    signature = read_tail(reader.path).signature
    return keys.require_signer(reader.manifest_bytes, signature, label=reader.label)


def _sha_only(reader: BundleReader, expected: str | None) -> str:
    ex = extract(reader, sink=None, bundle_sha256=True)
    if expected is not None and ex.sha256 != expected.lower():
        raise _not_the_ticketed(reader.label, expected, ex.sha256)
    return ex.sha256


def _not_the_ticketed(label: str, expected: str, actual: str | None) -> HashMismatch:
    """--sha256 names the bundle a transfer ticket promised; this file is another (exit 4)."""
    return HashMismatch(label, algorithm="bundle sha256", expected=expected.lower(), actual=str(actual), where="against --sha256 (the transfer ticket)")


def _ref_names(rc: RepoCache, m: Manifest) -> tuple[str, ...]:
    """refs/<revision> for a branch or tag name; refs/main as well when none exists yet, so that
    `from_pretrained(repo_id)` with no revision finds the model offline. An existing refs/main
    is moved only by a bundle whose revision is `main` (decided under the repo lock)."""
    names = [m.revision] if m.revision and not is_commit(m.revision) else []
    if "main" not in names and hfcache.read_ref(rc, "main") is None:
        names.append("main")
    return tuple(names)


def _write_refs(rc: RepoCache, m: Manifest) -> tuple[str, ...]:
    for name in _ref_names(rc, m):
        hfcache.write_ref(rc, name, m.commit)
    return hfcache.refs_to(rc, m.commit)
