"""Install a bundle into the standard Hugging Face cache layout, atomically.

After `install_bundle`, unmodified Hugging Face code finds the model offline:

    <cache>/models--org--name/blobs/<etag>                  file contents (sha256 for LFS files,
                                                            git blob sha1 otherwise)
    <cache>/models--org--name/snapshots/<commit>/<path>     relative symlinks to ../../blobs/<etag>
    <cache>/models--org--name/refs/<revision>               the commit, for branch and tag names

The bundle is verified while it is extracted into a temporary folder inside the cache (same
filesystem, so the final moves are renames). Only when every byte has matched the manifest are
blobs moved in and the snapshot folder renamed into place; any failure, including Ctrl-C, rolls
back, so the cache is left exactly as it was.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mirror import policy
from mirror.tarformat import BundleReader, read_manifest
from mirror.delta import delta_info, install_delta
from mirror.errors import BundleError, HashMismatch, NotEnoughSpace
from mirror.hashing import DualHasher, HashLanes
from mirror.manifest import FileEntry, Manifest, unsafe_path_reason
from mirror.parts import Ranges
from mirror.tarformat import writer_layout
from mirror.verify import RANGE_CHUNK, deal

_HEX40 = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class InstallResult:
    repo_id: str
    commit: str
    snapshot_dir: Path
    already_installed: bool
    bundle_sha256: str | None  # None when the snapshot was already there, or not asked for
    refs: tuple[str, ...] = ()  # the refs that now point at this commit


@dataclass(frozen=True)
class InstalledSnapshot:
    repo_id: str
    repo_type: str
    commit: str
    refs: tuple[str, ...]
    path: Path
    files: int
    size: int


def default_cache_dir() -> Path:
    """Where huggingface_hub looks: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def repo_folder(repo_id: str, repo_type: str = "model") -> str:
    return f"{repo_type}s--" + repo_id.replace("/", "--")


def _link_target(path: str, etag: str) -> str:
    # from snapshots/<commit>/<a/b/file> back up to the repo folder, then into blobs/
    return "../" * (path.count("/") + 2) + "blobs/" + etag


def _is_commit(rev: str) -> bool:
    return len(rev) == 40 and set(rev) <= _HEX40


def _snapshot_complete(snap: Path, m: Manifest) -> bool:
    try:
        return all((snap / f.path).stat().st_size == f.size for f in m.files)
    except OSError:
        return False


def install_bundle(path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None, allow_pickle: bool = False, bundle_sha256: bool = True) -> InstallResult:
    """Verify `path` while extracting it into the cache; a no-op when that commit is already
    there. Raises HashMismatch / BundleError (the cache is then unchanged) or NotEnoughSpace.
    `bundle_sha256=False` skips the bundle's own sha256 (one more serial hash of every byte, for
    lineage records; every file is checked against the manifest either way): `mirror install`
    does, and `InstallResult.bundle_sha256` is then None for a single-file bundle.
    PolicyError: pickle files without `allow_pickle` (decided from the names, before any byte is
    extracted), or with it, a pickle importing something outside the allowlist (mirror.policy)."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    m = read_manifest(path)
    if not allow_pickle:
        policy.check_paths([f.path for f in m.files], where=str(path))
    if m.revision and not _is_commit(m.revision) and unsafe_path_reason(m.revision):
        raise BundleError(str(path), f"revision {m.revision!r} cannot be a ref name")
    repo_dir = cache / repo_folder(m.repo_id, m.repo_type)
    if delta_info(m, bundle=str(path)) is not None:
        # a delta holds only changed files: it goes on top of its installed base (mirror.delta)
        d = install_delta(path, cache_dir=cache, allow_pickle=allow_pickle)
        return InstallResult(m.repo_id, m.commit, d.snapshot, d.already_installed, d.bundle_sha256, _write_refs(repo_dir, m))
    snap = repo_dir / "snapshots" / m.commit
    if _snapshot_complete(snap, m):
        refs = _write_refs(repo_dir, m)
        return InstallResult(m.repo_id, m.commit, snap, True, None, refs)

    created = _make_dirs(cache)  # removed again if we fail, so a failed install leaves no trace
    blobs = repo_dir / "blobs"
    tmp = cache / f".mirror-tmp-{uuid.uuid4().hex}"
    moved: list[Path] = []  # blobs and snapshot entries we put in place, undone on failure
    try:
        new_bytes = sum(f.size for f in {f.etag: f for f in m.files}.values() if not (blobs / f.etag).exists())
        free = shutil.disk_usage(cache).free
        if free < new_bytes:
            raise NotEnoughSpace(str(cache), needed=new_bytes, free=free)
        tmp.mkdir()
        sha = _extract_verified(path, m, tmp / "blobs", blobs, bundle_sha256=bundle_sha256)
        if allow_pickle:  # scan the verified bytes before anything is moved into the cache
            staged = {f.path: tmp / "blobs" / f.etag if (tmp / "blobs" / f.etag).exists() else blobs / f.etag for f in m.files}
            policy.check_files(staged, allow_pickle=True, where=str(path))
        # everything matched: build the snapshot tree, then move it all in
        tmp_snap = tmp / "snapshot"
        for f in m.files:
            link = tmp_snap / f.path
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(_link_target(f.path, f.etag), link)
        created += _make_dirs(blobs)
        created += _make_dirs(snap.parent)
        for staged in sorted((tmp / "blobs").iterdir()):
            dest = blobs / staged.name
            if not dest.exists():
                os.replace(staged, dest)
                moved.append(dest)
        if snap.exists():
            # a partial snapshot (e.g. a filtered snapshot_download): add what it lacks, file by file
            for f in m.files:
                target = snap / f.path
                if not (target.exists() and target.stat().st_size == f.size):
                    created += _make_dirs(target.parent)
                    if not target.is_symlink():
                        moved.append(target)
                    os.replace(tmp_snap / f.path, target)
        else:
            try:
                os.rename(tmp_snap, snap)
                created.append(snap)
            except OSError:
                if not _snapshot_complete(snap, m):
                    raise
                moved.clear()  # a concurrent install of this commit won the rename and uses these blobs
        refs = _write_refs(repo_dir, m)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)  # first, so the folders we created are empty again
        for p in moved:
            p.unlink(missing_ok=True)
        if snap in created:
            shutil.rmtree(snap, ignore_errors=True)
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError:
                pass
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise NotEnoughSpace(str(cache), needed=m.total_size, free=shutil.disk_usage(cache).free) from e
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return InstallResult(m.repo_id, m.commit, snap, False, sha, refs)


def _make_dirs(d: Path) -> list[Path]:
    """mkdir -p, returning the folders it created (outermost first)."""
    missing = []
    while not d.exists():
        missing.append(d)
        d = d.parent
    made = []
    for x in reversed(missing):
        try:
            x.mkdir()
            made.append(x)
        except FileExistsError:  # another install made it meanwhile: not ours to remove
            pass
    return made


def _extract_verified(path, m: Manifest, staging: Path, blobs: Path, *, bundle_sha256: bool) -> str | None:
    """Stream the payload into `staging/<etag>`, checking every file; returns the bundle sha256
    (None if not asked for). Blobs already in the cache are hashed but not written again."""
    staging.mkdir()
    if not bundle_sha256:
        # the writer's own layout: files are extracted by position, one thread per core
        layout = writer_layout(path)
        if layout is not None and layout[0] == m:
            _extract_parallel(path, layout[1], staging, blobs)
            return None
    with HashLanes(3) as lanes, BundleReader(path, lanes=lanes, hash_all=bundle_sha256) as reader:
        for member, chunks in reader.payload():
            if member.problem:
                raise BundleError(reader.label, member.problem)
            entry = member.entry
            if entry is None:
                continue
            if member.size != entry.size:
                raise HashMismatch(entry.path, algorithm="size", expected=str(entry.size), actual=str(member.size), where="in the bundle")
            dest = staging / entry.etag
            keep = not dest.exists() and not (blobs / entry.etag).exists()
            h = DualHasher(entry.size, lfs=entry.lfs, lanes=lanes, lane_ids=(1, 2))
            part = staging / (entry.etag + ".part")
            with open(part, "wb") if keep else _Discard() as out:
                for chunk in chunks:
                    out.write(chunk)
                    h.update(chunk)
            d = h.digest()
            for algo, want, got in (("sha256", entry.sha256, d.sha256), ("git sha1", entry.git_sha1, d.git_sha1)):
                if want != got:
                    if reader.parts is not None:
                        reader.parts.check_current_part()  # name the damaged part, if it is one
                    raise HashMismatch(entry.path, algorithm=algo, expected=want, actual=got, where="in the bundle")
            if keep:
                os.replace(part, dest)
        if reader.missing:
            raise BundleError(reader.label, f"{len(reader.missing)} file(s) listed in the manifest are missing from the tar, first {reader.missing[0]!r}")
        # a multi-part bundle's sha256 is free (its index), and asking for it checks every part
        return reader.sha256 if bundle_sha256 or reader.parts is not None else None


def _extract_parallel(path, jobs: list[tuple[FileEntry, int]], staging: Path, blobs: Path) -> None:
    """`_extract_verified` for a bundle in the writer's layout (`verify.writer_layout`): each
    thread copies its files by positioned reads into `staging/<etag>`, hashing on its own lanes,
    so the copy and the hashing of different files use every core. Raises HashMismatch."""
    workers, shares = deal(jobs)

    def run(i: int) -> None:
        for f, start in shares[i]:
            keep = not (blobs / f.etag).exists()
            h = DualHasher(f.size, lfs=f.lfs, lanes=lanes, lane_ids=(2 * i, 2 * i + 1))
            part = staging / f"{f.etag}.{i}.part"  # per thread: two paths may share one blob
            with open(part, "wb") if keep else _Discard() as out:
                for off in range(start, start + f.size, RANGE_CHUNK):
                    chunk = src.read(off, min(RANGE_CHUNK, start + f.size - off))
                    out.write(chunk)
                    h.update(chunk)
            d = h.digest()
            for algo, want, got in (("sha256", f.sha256, d.sha256), ("git sha1", f.git_sha1, d.git_sha1)):
                if want != got:
                    raise HashMismatch(f.path, algorithm=algo, expected=want, actual=got, where="in the bundle")
            if keep:
                os.replace(part, staging / f.etag)

    with Ranges(path) as src, HashLanes(2 * workers) as lanes, ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(run, i) for i in range(workers)]:
            future.result()


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)

    def __enter__(self) -> "_Discard":
        return self

    def __exit__(self, *exc) -> None:
        pass


def _write_refs(repo_dir: Path, m: Manifest) -> tuple[str, ...]:
    """refs/<revision> for a branch or tag name; refs/main as well when none exists yet, so that
    `from_pretrained(repo_id)` with no revision finds the model offline. An existing refs/main
    is moved only by a bundle whose revision is `main`."""
    names = []
    if m.revision and not _is_commit(m.revision):
        names.append(m.revision)
    if "main" not in names and not (repo_dir / "refs" / "main").exists():
        names.append("main")
    for name in names:
        ref = repo_dir / "refs" / name
        ref.parent.mkdir(parents=True, exist_ok=True)
        try:
            if ref.read_text() == m.commit:
                continue
        except FileNotFoundError:
            pass
        tmp = ref.with_name(f".{ref.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(m.commit)  # no newline, as huggingface_hub writes it
        os.replace(tmp, ref)
    refs_dir = repo_dir / "refs"
    return tuple(sorted(str(p.relative_to(refs_dir)) for p in refs_dir.rglob("*") if p.is_file() and p.read_text().strip() == m.commit)) if refs_dir.is_dir() else ()


def find_snapshot(repo_id: str, *, cache_dir: str | os.PathLike | None = None, revision: str | None = None, repo_type: str = "model") -> Path | None:
    """The installed snapshot folder for `repo_id` at `revision` (a commit, or a ref name; default
    `main`, or the only snapshot when there is no refs/main), or None."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    repo_dir = cache / repo_folder(repo_id, repo_type)
    snaps = repo_dir / "snapshots"
    if revision and _is_commit(revision):
        return snaps / revision if (snaps / revision).is_dir() else None
    rev = revision or "main"
    if unsafe_path_reason(rev):
        return None
    try:
        commit = (repo_dir / "refs" / rev).read_text().strip()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        if revision is None and snaps.is_dir():
            only = [p for p in snaps.iterdir() if p.is_dir()]
            return only[0] if len(only) == 1 else None
        return None
    return snaps / commit if _is_commit(commit) and (snaps / commit).is_dir() else None


def list_installed(cache_dir: str | os.PathLike | None = None) -> list[InstalledSnapshot]:
    """Every snapshot in a cache, with the refs pointing at it, its file count and size."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    out: list[InstalledSnapshot] = []
    if not cache.is_dir():
        return out
    for repo_dir in sorted(cache.iterdir()):
        kind, sep, rest = repo_dir.name.partition("s--")
        if not sep or kind not in ("model", "dataset", "space") or not (repo_dir / "snapshots").is_dir():
            continue
        repo_id = rest.replace("--", "/", 1)
        refs: dict[str, list[str]] = {}
        if (repo_dir / "refs").is_dir():
            for ref in sorted((repo_dir / "refs").rglob("*")):
                if ref.is_file():
                    refs.setdefault(ref.read_text().strip(), []).append(str(ref.relative_to(repo_dir / "refs")))
        for snap in sorted((repo_dir / "snapshots").iterdir()):
            files = [p for p in snap.rglob("*") if not p.is_dir()]
            size = sum(p.stat().st_size for p in files if p.exists())
            out.append(InstalledSnapshot(repo_id, kind, snap.name, tuple(refs.get(snap.name, ())), snap, len(files), size))
    return out
