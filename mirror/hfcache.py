"""The Hugging Face cache, as `mirror install` writes and reads it: layout, refs, links, locks.

The layout is huggingface_hub's (`repo_folder_name`, blobs named by etag, snapshot files as
relative links into `blobs/`, `refs/<name>` holding a commit), and so is the lock convention:
`<cache>/.locks/<repo folder>/<etag>.lock` around every blob write, the lock a concurrent
`hf_hub_download` takes too. On top of it this module adds what the trust promise needs:

- a per-repo lock (`.locks/<repo folder>/mirror-repo.lock`), so two installs into one repo never
  interleave their checks and writes;
- the file list of every commit mirror installed (`<repo folder>/.mirror/<commit>.json`): a
  commit with such a record is closed, so a later bundle claiming it with other files is refused;
- a journal per install in progress (`.locks/<repo folder>/install.<pid>-<rand>.journal`) that
  lets the next command finish or undo an install killed with SIGKILL;
- checks that refuse a link planted inside a repo folder (`refs/`, `snapshots/`, a commit folder
  or a folder inside one) instead of following it. A symlinked `blobs/` folder is allowed (moving
  blobs to another disk is common), a symlinked blob is not;
- `unwritable`, asked before any lock is taken: a cache this process cannot write (a shared cache
  mounted read-only) is only read, never locked, recovered or recorded into.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

from huggingface_hub.constants import REPO_ID_SEPARATOR
from huggingface_hub.utils import WeakFileLock, scan_cache_dir

from mirror import cachedirs

from common import atomic, safejson
from mirror.errors import UnsafeCache
from mirror.identity import is_bundle_id
from mirror.ids import is_commit, is_sha256, ref_problem, unsafe_path_reason
from mirror.manifest import FileEntry

RECORD_DIR = ".mirror"
REPO_LOCK = "mirror-repo.lock"
MAX_RECORD = 256 * 1024 * 1024  # a record lists every file of a commit: as large as a manifest may be
JOURNAL_SUFFIX = ".journal"  # `.install.<pid>-<rand>.journal` in the repo's lock folder


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The HF cache every command reads and writes: `cache_dir` when given, else where
    huggingface_hub (and so transformers) looks for this environment (`mirror.cachedirs`)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return cachedirs.hub_cache()


def repo_folder_name(repo_id: str, repo_type: str = "model") -> str:
    """huggingface_hub's `file_download.repo_folder_name` (`models--org--name`), the same rule on
    its own separator constant: importing `file_download` (httpx and the whole download stack)
    costs ~0.1 s of start-up, a sixth of a 1 GB install. A test keeps the two identical."""
    return REPO_ID_SEPARATOR.join([f"{repo_type}s", *repo_id.split("/")])


def link_target(path: str, etag: str) -> str:
    """What huggingface_hub writes at snapshots/<commit>/<path>: up to the repo folder, into blobs/."""
    return "../" * (path.count("/") + 2) + "blobs/" + etag


@dataclass(frozen=True)
class RepoCache:
    """One repo's folder in one cache."""

    root: Path
    repo_id: str
    repo_type: str = "model"

    @property
    def name(self) -> str:
        return repo_folder_name(self.repo_id, self.repo_type)

    @property
    def folder(self) -> Path:
        return self.root / self.name

    @property
    def blobs(self) -> Path:
        return self.folder / "blobs"

    @property
    def snapshots(self) -> Path:
        return self.folder / "snapshots"

    @property
    def refs(self) -> Path:
        return self.folder / "refs"

    @property
    def locks(self) -> Path:
        return self.root / ".locks" / self.name

    def blob(self, etag: str) -> Path:
        return self.blobs / etag

    def snapshot(self, commit: str) -> Path:
        return self.snapshots / commit

    def record_path(self, commit: str) -> Path:
        return self.folder / RECORD_DIR / f"{commit}.json"


# --- locks ----------------------------------------------------------------------------------------


def unwritable(rc: RepoCache) -> str | None:
    """Why this process cannot write the cache folders an install of `rc` writes (its repo folder
    and its lock folder), or None. Judged on the nearest folder that exists (the one a `mkdir`
    would write into) with `access(2)`, which reports a read-only mount even to root; decided
    before any lock is taken, so an install into a read-only cache tries no write at all."""
    for target in (rc.locks, rc.folder):
        d = target
        while not d.exists() and d != d.parent:
            d = d.parent
        if not os.access(d, os.W_OK):
            why = "a read-only file system" if _read_only_mount(d) else "no write permission for this user"
            return why if d == rc.root else f"{d}: {why}"
    return None


def _read_only_mount(d: Path) -> bool:
    try:
        return bool(os.statvfs(d).f_flag & os.ST_RDONLY)
    except OSError:
        return False


@contextmanager
def repo_lock(rc: RepoCache) -> Iterator[None]:
    """Held for a whole install: checks, writes and refs of one repo never interleave."""
    make_dirs(rc.locks)
    with WeakFileLock(rc.locks / REPO_LOCK):
        yield


@contextmanager
def blob_lock(rc: RepoCache, etag: str) -> Iterator[None]:
    """huggingface_hub's own per-blob lock, so a concurrent hf_hub_download waits for us."""
    with WeakFileLock(rc.locks / f"{etag}.lock"):
        yield


def make_dirs(d: Path) -> list[Path]:
    """mkdir -p, returning the folders it created (outermost first)."""
    missing = []
    while not d.exists() and not d.is_symlink():
        missing.append(d)
        d = d.parent
    made = []
    for x in reversed(missing):
        try:
            x.mkdir()
            made.append(x)
        except FileExistsError:  # another process made it meanwhile: not ours to remove
            pass
    return made


def remove_locks(rc: RepoCache, made: list[Path]) -> None:
    """Undo `make_dirs(rc.locks)` after a failed install: its lock files, then the folders."""
    for p in rc.locks.glob("*.lock"):
        p.unlink(missing_ok=True)
    for d in reversed(made):
        try:
            d.rmdir()
        except OSError:
            pass


# --- links planted in the cache ---------------------------------------------------------------------


def _refuse_link(p: Path, what: str) -> None:
    if p.is_symlink():
        raise UnsafeCache(str(p), f"{what} is a symbolic link (to {os.readlink(p)!r}), which mirror never makes")


def check_tree(rc: RepoCache, commits: Iterable[str] = ()) -> None:
    """Refuse links planted where mirror writes or reads: `refs/` and everything under it,
    `snapshots/`, the commit folders in `commits` and every folder inside them, `.mirror/`.
    The repo folder and `blobs/` may be links (relocated storage)."""
    for d, what in ((rc.snapshots, "snapshots/"), (rc.refs, "refs/"), (rc.folder / RECORD_DIR, f"{RECORD_DIR}/")):
        _refuse_link(d, what)
    if rc.refs.is_dir():
        for dirpath, dirnames, filenames in os.walk(rc.refs):
            for n in dirnames + filenames:
                _refuse_link(Path(dirpath) / n, "a ref")
    for commit in commits:
        snap = rc.snapshot(commit)
        _refuse_link(snap, f"snapshot folder {commit[:12]}")
        if snap.is_dir():
            for dirpath, dirnames, _ in os.walk(snap):
                for n in dirnames:
                    _refuse_link(Path(dirpath) / n, "a folder inside a snapshot")


# --- what a snapshot holds -----------------------------------------------------------------------


def snapshot_links(rc: RepoCache, commit: str) -> dict[str, str | None]:
    """path -> the etag its entry links to, for every file of snapshots/<commit>; None for an entry
    that is not exactly the link huggingface_hub would write (a plain file, a link elsewhere)."""
    snap = rc.snapshot(commit)
    out: dict[str, str | None] = {}
    if not snap.is_dir() or snap.is_symlink():
        return out
    for dirpath, dirnames, filenames in os.walk(snap):
        rel = Path(dirpath).relative_to(snap)
        for n in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            path = (rel / n).as_posix()
            p = Path(dirpath) / n
            etag = None
            if p.is_symlink():
                target = os.readlink(p)
                prefix = link_target(path, "")
                if target.startswith(prefix) and "/" not in target[len(prefix):]:
                    etag = target[len(prefix):]
            out[path] = etag
    return out


def blob_state(rc: RepoCache, etag: str) -> str:
    """"absent", "file" (a regular file: trust it only after hashing) or "unsafe" (a link, a folder)."""
    try:
        st = os.lstat(rc.blob(etag))
    except FileNotFoundError:
        return "absent"
    return "file" if stat.S_ISREG(st.st_mode) else "unsafe"


def etags_in_use(rc: RepoCache) -> set[str]:
    """Every blob some snapshot of the repo links to (installed by anyone)."""
    used: set[str] = set()
    if rc.snapshots.is_dir():
        for snap in rc.snapshots.iterdir():
            if is_commit(snap.name):
                used.update(e for e in snapshot_links(rc, snap.name).values() if e)
    return used


# --- the record of a commit mirror installed ------------------------------------------------------------


def _load_record(p: Path):
    """The parsed record file at `p`, within the readers' limits (UnsafeCache past them)."""
    return safejson.loads(safejson.read_file(p, what="install record", max_bytes=MAX_RECORD, error=UnsafeCache),
                          where=str(p), what="install record", max_bytes=MAX_RECORD, error=UnsafeCache)


def read_record(rc: RepoCache, commit: str) -> dict[str, FileEntry] | None:
    """The file list mirror installed for `commit`, or None if mirror never completed it."""
    p = rc.record_path(commit)
    try:
        d = _load_record(p)
        files = [FileEntry(**f) for f in d["files"]]
        if d.get("commit") != commit:
            raise ValueError("commit differs")
    except FileNotFoundError:
        return None
    except UnsafeCache:
        raise
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise UnsafeCache(str(p), f"the install record is unreadable ({e.__class__.__name__})", fix="delete that file and the snapshot folder of that commit, then install again") from None
    return {f.path: f for f in files}


@dataclass(frozen=True)
class BundleRecord:
    """Which bundle installed a commit, as the install checked it: its file name (the index's for
    a multi-part bundle), where it was, its size and its own sha256. `sha256` is recorded only
    when the install checked it against the bytes it read (computed in its pass, or a multi-part
    index whose every part matched); it is what lineage reads instead of re-hashing the bundle."""

    name: str
    path: str
    size: int
    sha256: str

    def problem(self) -> str | None:
        if not (isinstance(self.name, str) and self.name and "/" not in self.name):
            return "bundle name"
        if not isinstance(self.path, str) or not isinstance(self.size, int) or self.size < 0:
            return "bundle path or size"
        if not (isinstance(self.sha256, str) and is_sha256(self.sha256)):
            return "bundle sha256"
        return None


@dataclass(frozen=True)
class RecordTrust:
    """What the install record says about trust in a commit: the identity of the bundle that made
    it (mirror.identity; None in a record of an older mirror) and the fingerprint of the key whose
    signature that install checked (None when it checked none: no key was required)."""

    bundle_id: str | None
    signer: str | None


def write_record(rc: RepoCache, commit: str, files: Iterable[FileEntry], *, bundle: BundleRecord | None = None,
                 trust: RecordTrust | None = None) -> None:
    """The record of a commit mirror installed: its files, and with them the stamp of each blob as
    it is now (right after the install checked it), so a later check of the snapshot needs to hash
    only a blob whose stamp changed (`snapshot_problem`)."""
    make_dirs(rc.folder / RECORD_DIR)
    files = sorted(files, key=lambda f: f.path)
    body: dict = {"commit": commit, "files": [asdict(f) for f in files], "stamps": _stamps(rc, files)}
    if bundle is not None:
        body["bundle"] = asdict(bundle)
    if trust is not None:
        body["bundle_id"], body["signer"] = trust.bundle_id, trust.signer
    atomic.write_atomic(rc.record_path(commit), json.dumps(body, sort_keys=True, indent=1) + "\n")


def update_record(rc: RepoCache, commit: str, *, bundle: BundleRecord | None = None, trust: RecordTrust | None = None) -> bool:
    """Under the repo lock: complete the record of an installed commit. `bundle` is added only when
    the record names none yet (the first checked bundle stays: its bytes made the snapshot);
    `trust` replaces what the record says when this install checked a signature (or the record
    names no identity yet). Returns whether the record changed."""
    files = read_record(rc, commit)
    if files is None:
        return False
    body = _load_record(rc.record_path(commit))
    changed = False
    if bundle is not None and body.get("bundle") is None:
        body["bundle"] = asdict(bundle)
        changed = True
    if trust is not None and (trust.signer is not None or body.get("bundle_id") is None):
        if (body.get("bundle_id"), body.get("signer")) != (trust.bundle_id, trust.signer):
            body["bundle_id"], body["signer"] = trust.bundle_id, trust.signer
            changed = True
    if changed:
        atomic.write_atomic(rc.record_path(commit), json.dumps(body, sort_keys=True, indent=1) + "\n")
    return changed


def read_trust(rc: RepoCache, commit: str) -> RecordTrust | None:
    """The identity and checked signer the install record names, or None without a record."""
    p = rc.record_path(commit)
    try:
        d = _load_record(p)
    except FileNotFoundError:
        return None
    if not isinstance(d, dict) or d.get("commit") != commit:
        raise UnsafeCache(str(p), "the install record is not one of this commit", fix="delete that file and the snapshot folder of that commit, then install again")
    bid, signer = d.get("bundle_id"), d.get("signer")
    if not (bid is None or is_bundle_id(bid)) or not (signer is None or (isinstance(signer, str) and is_sha256(signer))):
        raise UnsafeCache(str(p), "the install record's bundle identity or signer is not a sha256", fix="delete that file and the snapshot folder of that commit, then install again")
    return RecordTrust(bundle_id=bid, signer=signer)


# --- a snapshot against its record -------------------------------------------------------------------

SMALL_BLOB = 16 * 1024 * 1024  # configs, tokenizers, cards: always hashed (milliseconds); larger ones by stamp


def _stamp(p: Path) -> list[int] | None:
    """(inode, size, mtime_ns, ctime_ns) of a regular file, or None. ctime is set by the kernel on
    every write, truncate, rename or utime, to its own clock: a blob changed in place has another."""
    try:
        st = os.lstat(p)
    except OSError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns] if stat.S_ISREG(st.st_mode) else None


def _stamps(rc: RepoCache, files: Iterable[FileEntry]) -> dict[str, list[int]]:
    out = {}
    for f in files:
        if (s := _stamp(rc.blob(f.etag))) is not None:
            out[f.etag] = s
    return out


def snapshot_problem(rc: RepoCache, commit: str) -> str | None:
    """Why snapshots/<commit> no longer holds what its install record says, or None (also None
    when there is no record: nothing to compare with). Every entry must be the link the install
    made, to a regular blob of the recorded size, and no file may have been added; a blob up to
    SMALL_BLOB is hashed, a larger one only when its stamp differs from the one recorded at
    install (then the recorded stamp is refreshed if the hash matches and the cache is writable)."""
    from mirror.hashing import hash_files

    p = rc.record_path(commit)
    files = read_record(rc, commit)
    if files is None:
        return None
    d = _load_record(p)
    stamps = d.get("stamps") if isinstance(d.get("stamps"), dict) else {}
    links = snapshot_links(rc, commit)
    for path in sorted(set(links) - set(files)):
        return f"{path} is in the snapshot but not in its install record (added after the install)"
    to_hash: dict[Path, FileEntry] = {}
    for path, f in sorted(files.items()):
        if path not in links:
            return f"{path} is missing from the snapshot"
        where = rc.blob(f.etag)
        if links[path] is None and not (rc.snapshot(commit) / path).is_symlink():
            where = rc.snapshot(commit) / path  # a plain copy (a cache without links): judged by its bytes
        elif links[path] != f.etag:
            return f"{path} is no longer the link to blob {f.etag} the install made"
        now = _stamp(where)
        if now is None:
            return f"{path}: its blob {f.etag} is missing or not a regular file"
        if now[1] != f.size:
            return f"{path}: its blob is {now[1]} bytes, the install recorded {f.size}"
        if f.size <= SMALL_BLOB or where != rc.blob(f.etag) or stamps.get(f.etag) != now:
            to_hash[where] = f
    if not to_hash:
        return None
    digests = hash_files(list(to_hash), lfs={p for p, f in to_hash.items() if f.lfs})
    for where, f in to_hash.items():
        got = digests[where]
        if (got.sha256, got.git_sha1) != (f.sha256, f.git_sha1):
            return f"{f.path}: its sha256 is {got.sha256} now, the install recorded {f.sha256} (changed in the cache since)"
    fresh = {f.etag: _stamp(where) for where, f in to_hash.items() if f.size > SMALL_BLOB and where == rc.blob(f.etag)}
    if fresh and unwritable(rc) is None:  # hashed once: the next check needs only a stat
        try:
            with repo_lock(rc):
                body = _load_record(p)
                body["stamps"] = {**(body.get("stamps") or {}), **{k: v for k, v in fresh.items() if v is not None}}
                atomic.write_atomic(p, json.dumps(body, sort_keys=True, indent=1) + "\n")
        except OSError:
            pass  # a stamp is a shortcut, never the verdict
    return None


def read_bundle_record(rc: RepoCache, commit: str) -> BundleRecord | None:
    """The bundle recorded for an installed commit, or None (no record, a record written before
    bundles were recorded, or one whose install did not check the bundle's sha256). Reads the
    small record file only, never the bundle."""
    p = rc.record_path(commit)
    try:
        d = _load_record(p)
        raw = d.get("bundle") if isinstance(d, dict) and d.get("commit") == commit else None
        if raw is None:
            return None
        b = BundleRecord(**raw)
        if why := b.problem():
            raise ValueError(why)
    except FileNotFoundError:
        return None
    except UnsafeCache:
        raise
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise UnsafeCache(str(p), f"the install record's bundle entry is unreadable ({e.__class__.__name__}: {e})", fix="delete that file and the snapshot folder of that commit, then install again") from None
    return b


# --- refs -----------------------------------------------------------------------------------------


def read_ref(rc: RepoCache, name: str) -> str | None:
    p = rc.refs / name
    if ref_problem(name) or p.is_symlink():
        return None
    try:
        text = p.read_text()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    return text.strip() if is_commit(text.strip()) else None


def write_ref(rc: RepoCache, name: str, commit: str) -> None:
    """refs/<name> = commit (no newline, as huggingface_hub writes it), atomically."""
    p = rc.refs / name
    made = make_dirs(p.parent)
    try:
        if read_ref(rc, name) != commit:
            atomic.write_atomic(p, commit)
    except BaseException:
        for d in reversed(made):
            try:
                d.rmdir()
            except OSError:
                pass
        raise


def refs_to(rc: RepoCache, commit: str) -> tuple[str, ...]:
    if not rc.refs.is_dir():
        return ()
    out = []
    for dirpath, _, filenames in os.walk(rc.refs):
        for n in filenames:
            name = (Path(dirpath) / n).relative_to(rc.refs).as_posix()
            if atomic.temp_owner(n) is None and read_ref(rc, name) == commit:
                out.append(name)
    return tuple(sorted(out))


# --- journals: finishing or undoing an install killed midway -------------------------------------


@dataclass(frozen=True)
class Journal:
    commit: str
    refs: tuple[str, ...]  # refs to write once the snapshot is in place
    created_blobs: tuple[str, ...]  # etags this install added (removed again on rollback, if unused)
    added_links: tuple[str, ...]  # paths added inside an existing (partial) snapshot
    new_snapshot: bool  # whether the snapshot folder is this install's
    new_record: bool

    def problem(self) -> str | None:
        """Why this journal cannot be acted on (a name that is not a commit, ref, blob or repo
        path): recovery writes refs and removes files by these names."""
        if not is_commit(self.commit):
            return "commit"
        if any(not isinstance(n, str) or ref_problem(n) for n in self.refs):
            return "ref name"
        if any(not (is_commit(e) or is_sha256(e)) for e in self.created_blobs):
            return "blob name"
        if any(not isinstance(p, str) or unsafe_path_reason(p) for p in self.added_links):
            return "path"
        if not all(isinstance(b, bool) for b in (self.new_snapshot, self.new_record)):
            return "flag"
        return None

    def save(self, rc: RepoCache) -> Path:
        p = atomic.temp_path(rc.locks / "install", suffix="journal")
        atomic.write_atomic(p, json.dumps(asdict(self)))
        return p


def _journals(rc: RepoCache) -> list[Path]:
    try:
        return [rc.locks / n for n in os.listdir(rc.locks) if n.endswith(JOURNAL_SUFFIX)]
    except OSError:
        return []


def recover(rc: RepoCache) -> list[str]:
    """Under the repo lock: finish or undo the installs whose process died (SIGKILL, power), and
    remove stale temporaries in blobs/ and snapshots/. Returns one line per thing done."""
    done = []
    for p in _journals(rc):
        if not atomic.is_stale(p.name):  # its install is still running (or it is not ours)
            continue
        try:
            raw = safejson.read_file(p, what="install journal", max_bytes=MAX_RECORD, error=UnsafeCache)
            d = safejson.loads(raw, where=str(p), what="install journal", max_bytes=MAX_RECORD, error=UnsafeCache)
            j = Journal(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
            if why := j.problem():
                raise ValueError(why)
        except (OSError, ValueError, TypeError, AttributeError, UnsafeCache):
            # never act on a journal we cannot trust to be ours: its names could point anywhere
            p.unlink(missing_ok=True)
            done.append(f"ignored and removed an unreadable install journal {p.name}")
            continue
        record = read_record(rc, j.commit)
        links = snapshot_links(rc, j.commit)
        complete = record is not None and all(links.get(f.path) == f.etag for f in record.values())
        if complete:
            for name in j.refs:
                write_ref(rc, name, j.commit)
            done.append(f"finished an interrupted install of {rc.repo_id}@{j.commit[:12]}")
        else:
            rollback(rc, j)
            done.append(f"removed an interrupted install of {rc.repo_id}@{j.commit[:12]}")
        p.unlink(missing_ok=True)
    for folder in (rc.blobs, rc.snapshots, rc.refs):
        removed = atomic.sweep(folder)
        if removed:
            done.append(f"removed {len(removed)} leftover temporary file(s) in {folder}")
    return done


def needs_recovery(rc: RepoCache) -> bool:
    """Whether a killed install left a journal or temporaries in this repo (cheap: listings only)."""
    if any(atomic.is_stale(p.name) for p in _journals(rc)):
        return True
    for folder in (rc.blobs, rc.snapshots):
        try:
            if any(atomic.is_stale(n) for n in os.listdir(folder)):
                return True
        except OSError:
            pass
    return False


def rollback(rc: RepoCache, j: Journal) -> None:
    """Undo what one install created: its links, record, snapshot folder, and the blobs it added
    that no snapshot uses (a concurrent install or hf_hub_download may have linked them since)."""
    snap = rc.snapshot(j.commit)
    for path in j.added_links:
        p = snap / path
        if p.is_symlink():
            p.unlink()
    if j.new_snapshot and snap.is_dir() and not snap.is_symlink():
        shutil.rmtree(snap, ignore_errors=True)
    if j.new_record:
        rc.record_path(j.commit).unlink(missing_ok=True)
        try:
            rc.record_path(j.commit).parent.rmdir()
        except OSError:
            pass
    if j.created_blobs:
        used = etags_in_use(rc)
        for etag in j.created_blobs:
            if etag in used:
                continue
            with blob_lock(rc, etag):
                if etag not in etags_in_use(rc) and blob_state(rc, etag) == "file":
                    rc.blob(etag).unlink(missing_ok=True)


# --- listing ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstalledSnapshot:
    repo_id: str
    repo_type: str
    commit: str
    refs: tuple[str, ...]
    path: Path
    files: int
    size: int


def list_installed(cache_dir: str | os.PathLike | None = None) -> list[InstalledSnapshot]:
    """Every snapshot in a cache, as huggingface_hub's `scan_cache_dir` sees it (commit folders
    only: staging folders are not snapshots), with the refs pointing at it, its file count and
    size (every file's, as a copy would take). What a killed install left is finished or undone
    first, unless the cache cannot be written: then it is listed as it is. A repo the scan calls
    corrupted (a dangling link, a ref to a commit that is not there) is listed all the same,
    counting what is readable: `mirror audit --installed` reports its damage, not its absence."""
    cache = cache_root(cache_dir)
    if not cache.is_dir():
        return []
    repos: dict[str, RepoCache] = {}
    for repo_dir in sorted(cache.iterdir()):
        kind, sep, rest = repo_dir.name.partition("s--")
        if not sep or kind not in ("model", "dataset", "space") or not (repo_dir / "snapshots").is_dir():
            continue
        rc = repos[repo_dir.name] = RepoCache(cache, rest.replace("--", "/", 1), kind)
        if needs_recovery(rc) and unwritable(rc) is None:  # a killed install: finish or undo it before anyone reads the repo
            with repo_lock(rc):
                recover(rc)
    seen: dict[tuple[str, str], tuple[int, int]] = {}  # (repo folder, commit): the scan resolves the cache's path
    for repo in scan_cache_dir(cache).repos:
        for rev in repo.revisions:
            seen[repo.repo_path.name, rev.commit_hash] = (len(rev.files), sum(f.size_on_disk for f in rev.files))
    out: list[InstalledSnapshot] = []
    for folder, rc in repos.items():
        for snap in sorted(rc.snapshots.iterdir()):
            if not is_commit(snap.name) or not snap.is_dir() or snap.is_symlink():
                continue
            files, size = seen.get((folder, snap.name)) or _readable(snap)
            out.append(InstalledSnapshot(rc.repo_id, rc.repo_type, snap.name, refs_to(rc, snap.name), snap, files, size))
    return out


def _readable(snap: Path) -> tuple[int, int]:
    """The files of a snapshot huggingface_hub's scan refused, and the bytes of those it can reach."""
    files = [p for p in snap.rglob("*") if not p.is_dir()]
    return len(files), sum(p.stat().st_size for p in files if p.exists())


def find_snapshot(repo_id: str, *, cache_dir: str | os.PathLike | None = None, revision: str | None = None, repo_type: str = "model") -> Path | None:
    """The installed snapshot folder for `repo_id` at `revision` (a commit, or a ref name; default
    `main`, or the only snapshot when there is no refs/main), or None."""
    rc = RepoCache(cache_root(cache_dir), repo_id, repo_type)

    def usable(commit: str | None) -> Path | None:
        if commit is None:
            return None
        snap = rc.snapshot(commit)
        return snap if snap.is_dir() and not snap.is_symlink() else None

    if revision and is_commit(revision):
        return usable(revision)
    rev = revision or "main"
    if ref_problem(rev):
        return None
    commit = read_ref(rc, rev)
    if commit is None and revision is None and rc.snapshots.is_dir():
        only = [p.name for p in rc.snapshots.iterdir() if is_commit(p.name)]
        return usable(only[0]) if len(only) == 1 else None
    return usable(commit)
