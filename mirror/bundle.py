"""Writing a bundle: names, the pack commit id, and the two-pass writer (format:
docs/bundle-format.md; the tar layer itself is `mirror.tarformat`).

The writer streams in fixed-size chunks; nothing here ever holds a whole model file in memory.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import os
import shutil
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from mirror import inplace, parts

from common import progress
from common.atomic import sweep, temp_path
from mirror.tarformat import BLOCK, RECORD, archive_size, member_header, member_span, padding, read_tail
from mirror.errors import HashMismatch, MirrorError, NotEnoughSpace, UsageError
from mirror.hashing import CHUNK, Digest, DualHasher, HashLanes, hash_files, lfs_pointer_sha1, first_difference, sha256sum_line
from mirror.sources import SourceFile, Sources, walk
from mirror.manifest import (
    MANIFEST_NAME,
    PAYLOAD_PREFIX,
    REPO_TYPES,
    FileEntry,
    Manifest,
    classify,
    repo_id_problem,
    unsafe_path_reason,
)

PLACEHOLDER_SHA256 = "0" * 64
PLACEHOLDER_SHA1 = "0" * 40
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


# --- writing --------------------------------------------------------------------------------------


def write_bundle(
    *,
    src_root: Path,
    repo_id: str,
    repo_type: str = "model",
    revision: str,
    commit: str | None,
    source: str,
    created_at: str,
    license: str | None,
    out_dir: Path,
    expected: dict[str, FileEntry] | None = None,
    lfs: dict[str, bool] | None = None,
    extra: dict[str, Any] | None = None,
    paths: list[str] | None = None,
    max_part_size: int | None = None,
    sources: Sources | None = None,
    ready: Callable[[str], None] | None = None,
    fill: "Filler | None" = None,
    fill_dir: Path | None = None,
    overwrite: bool = False,
) -> BundleInfo:
    """Stream the files of `src_root` into `out_dir/<org>--<name>--<commit12>.tar` in two passes:
    the files are hashed first, in parallel across cores, so the manifest (member 0) is final
    before anything is written; then the tar is written front to back while a hash thread
    computes its sha256 for the sidecar. The bytes are the same as any writer's for this manifest
    (format, 1.3-1.4). `expected` (hashes the Hub published) must match or HashMismatch is raised;
    digests left empty in an expected entry are not checked, and an LFS file with an expected
    sha256 is read only once (checked while it is copied). `commit=None` (a pack) derives the id from
    the content (`pack_commit`). Nothing is left in `out_dir` when this fails. With
    `max_part_size` the stream goes into equal parts plus an index (mirror.parts) instead of one
    file, and `BundleInfo.path` is the index, NAME.tar.parts.json.

    Every file is opened once below `src_root` without following links (mirror.sources), and
    hashed and copied through that descriptor; `sources` passes files a caller already opened
    and checked (pack, whose link policy resolves links inside the folder itself).

    `ready(path)` (pull, downloading while it writes) is called before a file is first opened and
    returns once it is complete in `src_root`. A file whose digests are promised by `expected`
    (an LFS file with the Hub's sha256) is then opened only when the writer reaches it: the
    manifest follows from the listing, so the bundle is written while later files still arrive.

    `fill` (pull, into a single-file bundle): the files named in `fill.paths`, each with the
    Hub's sha256 in `expected`, are never opened here; the bundle is written in place
    (mirror.inplace) in `fill_dir`, where a rerun resumes it. `fill.start(regions)` starts
    writing each of those files into its region at its final offset (downloading it, ending each
    with `finish()`) as soon as the layout is known; the other files are opened through `ready`
    in pass 1, while those downloads run.

    A bundle already at the final name holding other bytes (another manifest, or this one signed)
    is never replaced without `overwrite`: UsageError before pass 2 writes anything. The same
    bundle again (same identity and size) is simply written again."""
    src_root, out_dir = Path(src_root), Path(out_dir)
    if repo_type not in REPO_TYPES:
        raise UsageError(f"repo type {repo_type!r} is not one of {', '.join(REPO_TYPES)}")
    if why := repo_id_problem(repo_id):
        raise UsageError(f"repo id {repo_id!r} {why}")
    with ExitStack() as stack:
        if sources is None:
            sources = stack.enter_context(Sources([src_root]))
            if paths is None and expected is None:
                _walk_files(sources)
        if paths is None:
            paths = sorted(expected) if expected is not None else sources.paths
        paths = sorted(set(paths))
        if not paths and not (extra or {}).get("delta"):  # a delta may only remove files
            raise UsageError(f"{src_root}: no files to bundle; check the folder and the include/exclude patterns")
        later: dict[str, int] = {}  # promised files opened when the writer reaches them: path -> listed size
        deferred: list[str] = []  # in place: the files pass 1 waits for (`ready`) while the fill already runs
        if fill is not None and (max_part_size or fill_dir is None):
            raise ValueError("fill writes a single-file bundle in place, in fill_dir")
        for p in paths:
            if why := unsafe_path_reason(p):
                raise UsageError(f"file name {p!r} {why}; it cannot be stored in a bundle")
            if p in sources:
                continue
            want = (expected or {}).get(p)
            if fill is not None and p in fill.paths:
                if want is None or not (want.lfs and want.sha256):
                    raise ValueError(f"{p}: only a file with the Hub's sha256 can be filled in place")
                later[p] = want.size
                continue
            if fill is not None and want is not None:  # still arriving: opened in pass 1, while the fill runs
                later[p] = want.size
                deferred.append(p)
                continue
            if ready is not None and fill is None and want is not None and want.lfs and want.sha256:
                later[p] = want.size
                continue
            if ready is not None:
                ready(p)
            sources.add(p)
        return _write(
            sources, paths=paths, src_root=src_root, repo_id=repo_id, repo_type=repo_type, revision=revision, commit=commit,
            source=source, created_at=created_at, license=license, out_dir=out_dir, expected=expected, lfs=lfs,
            extra=extra, max_part_size=max_part_size, later=later, ready=ready, fill=fill, fill_dir=fill_dir, deferred=deferred,
            overwrite=overwrite,
        )


def _write(
    src: Sources, *, paths: list[str], src_root: Path, repo_id: str, repo_type: str, revision: str, commit: str | None,
    source: str, created_at: str, license: str | None, out_dir: Path, expected: dict[str, FileEntry] | None,
    lfs: dict[str, bool] | None, extra: dict[str, Any] | None, max_part_size: int | None,
    later: dict[str, int] | None = None, ready: Callable[[str], None] | None = None,
    fill: "Filler | None" = None, fill_dir: Path | None = None, deferred: list[str] | None = None, overwrite: bool = False,
) -> BundleInfo:
    """write_bundle once its files are open and checked (`later`: promised files still arriving,
    opened through `ready` when pass 2 reaches them, with the listed size until then; in place,
    `deferred`: the files pass 1 opens through `ready` once the fill has started)."""
    later = later or {}
    sizes = {p: later[p] if p in later else src[p].size for p in paths}
    for p in paths:
        want = (expected or {}).get(p)
        if expected is not None and want is None:
            raise UsageError(f"{p} is not among the expected files of {repo_id}; it cannot be checked")
        if want is not None and want.size != sizes[p]:
            raise HashMismatch(p, algorithm="size", expected=str(want.size), actual=str(sizes[p]), where="in the download")

    def lfs_of(p: str) -> bool:
        if expected is not None:
            return expected[p].lfs
        if lfs is not None and p in lfs:
            return lfs[p]
        return is_lfs(p, sizes[p])

    def build(files: tuple[FileEntry, ...], commit_id: str) -> Manifest:
        m = Manifest(
            repo_id=repo_id, repo_type=repo_type, revision=revision, commit=commit_id, source=source,
            created_at=created_at, license=license, files=files,
        )
        return m.with_extra(**extra) if extra else m

    draft_files = tuple(
        FileEntry(path=p, size=sizes[p], sha256=PLACEHOLDER_SHA256, git_sha1=PLACEHOLDER_SHA1, lfs=lfs_of(p), kind=classify(p))
        for p in paths
    )
    # Hex digests have fixed lengths, so the final manifest is exactly as long as this draft;
    # rounding up to a block keeps the payload block-aligned without any tar padding.
    reserved = len(build(draft_files, commit or PLACEHOLDER_SHA1).to_json())
    reserved += padding(reserved)
    total = archive_size(len(member_header(MANIFEST_NAME, reserved)) + reserved + sum(member_span(PAYLOAD_PREFIX + p, sizes[p]) for p in paths))

    out_dir.mkdir(parents=True, exist_ok=True)
    sweep(out_dir)  # temporaries of a writer that was SIGKILLed (its pid is gone): before the space check
    free = shutil.disk_usage(out_dir).free
    if free < total and fill is None:  # in place, what a resumed partial already holds is subtracted there
        raise NotEnoughSpace(str(out_dir), needed=total, free=free)
    # Pass 1: every file's digests, files hashed in parallel across cores. The manifest, which
    # comes first in the tar, is then final before the first byte is written, so pass 2 can hash
    # the tar stream while writing it (no third read of the bundle for its sha256).
    # An LFS file whose sha256 is expected (the Hub's) is not hashed here: its digests follow from
    # that sha256, and pass 2 checks it on a second lane while copying, so it is read once.
    promised = {d.path: _promised(d, (expected or {}).get(d.path)) for d in draft_files}
    verb = f"{'pack' if commit is None else 'bundle'} {repo_id}"

    def finalize() -> tuple[Manifest, bytes, Path]:
        """Pass 1 and the final manifest, its bytes and the bundle's name."""
        for p in deferred or ():
            ready(p)
            if (got_size := src.add(p).size) != sizes[p]:
                raise HashMismatch(p, algorithm="size", expected=str(sizes[p]), actual=str(got_size), where="in the download")
        todo = [src[d.path] for d in draft_files if promised[d.path] is None]
        with progress.ReadMeter(f"{verb} (hashing)", sum(f.size for f in todo)):
            digests = hash_files(todo, lfs={src[d.path] for d in draft_files if d.lfs and promised[d.path] is None})
        entries: list[FileEntry] = []
        for draft in draft_files:
            digest = promised[draft.path] or digests[src[draft.path]]
            want = (expected or {}).get(draft.path)
            if want is not None and (diff := first_difference(want, digest, skip_empty=True)):
                raise HashMismatch(draft.path, algorithm=diff[0], expected=diff[1], actual=diff[2], where="against the Hub's hash")
            entries.append(FileEntry(path=draft.path, size=draft.size, sha256=digest.sha256, git_sha1=digest.git_sha1, lfs=draft.lfs, kind=draft.kind))
        files = tuple(entries)
        manifest = build(files, commit or pack_commit(files))
        raw = manifest.to_json()
        if len(raw) > reserved:  # cannot happen unless the manifest format changes shape
            raise RuntimeError(f"manifest grew from {reserved} to {len(raw)} bytes while writing")
        final = out_dir / bundle_filename(repo_id, manifest.commit, repo_type=repo_type)
        if (extra or {}).get("delta"):  # a delta must not take the name of the full bundle of its commit
            final = final.with_name(f"{final.stem}--delta-from-{extra['delta']['base']['commit'][:12]}.tar")
        if not overwrite:
            refuse_overwrite(final, manifest_bytes=raw + b" " * (reserved - len(raw)), size=total)  # the manifest member as written
        return manifest, raw, final

    if fill is not None:  # the layout is known now: the downloads start before pass 1
        return _write_in_place(
            src, draft_files=draft_files, promised=promised, reserved=reserved, total=total, finalize=finalize,
            fill=fill, fill_dir=fill_dir, out_dir=out_dir, identity=f"{repo_type}:{repo_id}@{commit}",
        )
    manifest, raw, final = finalize()
    files = manifest.files

    # `.<final>.<pid>-<random>.partial` (common.atomic): never taken for a bundle, removed in the
    # `finally` below on any error, Ctrl-C or SIGTERM, and by `sweep` after a SIGKILL
    partial = temp_path(final)
    splitter = parts.PartWriter(out_dir, max_part_size=max_part_size) if max_part_size else None
    # a multi-part writer hashes its parts and the stream itself when it commits
    stream_sha = None if splitter is not None else hashlib.sha256()
    try:
        # Pass 2: copy, the stream's sha256 on a lane thread, overlapped with reading and writing
        # lane 0: the stream's sha256; lane 1: the sha256 of a promised file, checked as it passes.
        # A file hashed in pass 1 is copied from the same descriptor and must still have the
        # stamp it had when checked (mirror.sources.Stamp: inode, size, mtime, ctime). It is not
        # hashed a second time: that is one more sha256 over every byte, +30% on a 2-core pack.
        with splitter or open(partial, "xb") as out, HashLanes(2) as lanes, progress.meter(f"{verb} (writing)", total) as meter:

            def put(data: bytes) -> None:
                out.write(data)
                meter.add(len(data))
                if stream_sha is not None:
                    lanes.submit(0, stream_sha, data)

            put(member_header(MANIFEST_NAME, reserved) + raw + b" " * (reserved - len(raw)))
            for draft, entry in zip(draft_files, files):
                put(member_header(PAYLOAD_PREFIX + draft.path, draft.size))
                check = None if promised[draft.path] is None else DualHasher(draft.size, lfs=True, lanes=lanes, lane_ids=(1, 1))
                if draft.path in later:  # downloading while we write: wait for it, then open and check it once
                    ready(draft.path)
                    if (got_size := src.add(draft.path).size) != draft.size:
                        raise HashMismatch(draft.path, algorithm="size", expected=str(draft.size), actual=str(got_size), where="in the download")
                copy_source(src[draft.path], put, check=check)
                if check is not None and (got := check.digest().sha256) != entry.sha256:
                    raise HashMismatch(draft.path, algorithm="sha256", expected=entry.sha256, actual=got, where="against the Hub's hash")
                put(b"\0" * padding(draft.size))
            end = out.tell() + 2 * BLOCK
            put(b"\0" * (2 * BLOCK + (-end % RECORD)))
        if splitter is not None:
            index = splitter.commit(final)
            return BundleInfo(path=parts.index_path(final), sha256=index.sha256, size=index.size, manifest=manifest)
        sha = stream_sha.hexdigest()  # the lanes were closed: every chunk is in
        _publish(final, sha, lambda: os.replace(partial, final))
    except OSError as e:
        _space_error(e, out_dir, total)
        raise
    finally:
        if splitter is not None:
            splitter.discard()
        partial.unlink(missing_ok=True)
    return BundleInfo(path=final, sha256=sha, size=total, manifest=manifest)


def _promised(draft: FileEntry, want: FileEntry | None) -> Digest | None:
    """The digests of an LFS file whose expected sha256 is given (its git sha1 is the pointer's),
    or None when the file must be hashed. An expected git sha1 that is not that pointer's is a
    contradiction in what the Hub published: HashMismatch before anything is written."""
    if not draft.lfs or want is None or not want.sha256:
        return None
    sha1 = lfs_pointer_sha1(want.sha256, draft.size)
    if want.git_sha1 and want.git_sha1 != sha1:
        raise HashMismatch(draft.path, algorithm="git sha1", expected=want.git_sha1, actual=sha1, where="against the Hub's hash (the oid is not its LFS pointer's)")
    return Digest(size=draft.size, sha256=want.sha256, git_sha1=sha1)


def _write_in_place(
    src: Sources, *, draft_files, promised, reserved: int, total: int, finalize: Callable[[], tuple[Manifest, bytes, Path]],
    fill: "Filler", fill_dir: Path, out_dir: Path, identity: str,
) -> BundleInfo:
    """Write a pull's single-file bundle in place (mirror.inplace). Every offset follows from the
    draft (digests have fixed lengths), so the files named in `fill.paths` start downloading into
    their regions at once; pass 1 then hashes the small files as they arrive (`finalize`), the
    manifest and every other byte are written, and a lane hashes the bundle front to back for
    the sidecar. Published (renamed, sidecar) only once all of it is in and matched."""
    head_size = len(member_header(MANIFEST_NAME, reserved)) + reserved

    def members() -> list:
        # a promised file (the Hub's sha256, not hashed in pass 1) is checked as it is written
        return [
            (d.path, member_header(PAYLOAD_PREFIX + d.path, d.size), d.size, src[d.path] if d.path in src else None,
             promised[d.path].sha256 if promised[d.path] is not None else None)
            for d in draft_files
        ]  # fmt: skip

    _, slots = inplace.layout(b"\0" * head_size, members(), total=total, slots=frozenset(fill.paths))
    # what the regions hold follows from this: same key, same bytes (a journal of another layout is void)
    key = hashlib.sha256(json.dumps([identity, reserved, total, [(s.path, s.offset, s.size, s.sha256) for s in slots]]).encode()).hexdigest()
    try:
        with inplace.InPlaceWriter(fill_dir, key=key, total=total, slots=slots, where=str(out_dir)) as w:
            regions = w.regions()
            run = fill.start(regions)
            try:
                try:
                    manifest, raw, final = finalize()  # the small files, as they arrive
                except Exception:
                    run.wait(quiet=True)  # the downloads finish, so a rerun fetches only what failed
                    raise
                head = member_header(MANIFEST_NAME, reserved) + raw + b" " * (reserved - len(raw))
                fixed, _ = inplace.layout(head, members(), total=total, slots=frozenset(fill.paths))
                w.write_fixed(fixed)
                run.wait()
            finally:
                run.stop()  # nothing new starts; after an interrupt, running downloads stop at their next chunk
            if missing := [r.path for r in regions if not r.complete]:
                raise RuntimeError(f"the in-place fill returned with {', '.join(missing)} unfinished")
            sha = w.stream_sha256()
            _publish(final, sha, lambda: w.publish(final))
    except OSError as e:
        _space_error(e, out_dir, total)
        raise
    return BundleInfo(path=final, sha256=sha, size=total, manifest=manifest)


class FillRun(Protocol):
    def wait(self, *, quiet: bool = False) -> None: ...  # every file tried; the first failure raised unless quiet

    def stop(self) -> None: ...


class Filler(Protocol):
    """What fills regions of a bundle written in place (mirror.hub's downloader)."""

    paths: frozenset[str]

    def start(self, regions: "list[inplace.Region]") -> FillRun: ...


def _publish(final: Path, sha: str, move: Callable[[], None]) -> None:
    """Give a finished bundle its name: the sidecar is written under a temporary name first,
    `move()` renames the bundle onto `final`, then the sidecar lands; a multi-part bundle of the
    same name is superseded."""
    sidecar = final.with_name(final.name + ".sha256")
    sidecar_tmp = temp_path(sidecar)
    try:
        sidecar_tmp.write_text(sha256sum_line(sha, final.name))
        move()
        os.replace(sidecar_tmp, sidecar)
    finally:
        sidecar_tmp.unlink(missing_ok=True)
    parts.remove_parts(final)


def refuse_overwrite(final: Path, *, manifest_bytes: bytes, size: int) -> None:
    """UsageError when a bundle is already at `final` (a file, or a multi-part index) and holds
    other bytes than the one about to be written there (`manifest_bytes`, `size`): another manifest
    (packed again with another revision label, another pull) or this one with a signature. Each
    would silently end a bundle whose sha256 someone wrote down. The same identity and size is the
    same bundle: writing it again changes no byte anyone relies on."""
    from mirror.identity import bundle_id, read_bundle_id

    index = parts.index_path(final)
    where = final if (final.exists() or final.is_symlink()) else index if index.exists() else None
    if where is None:
        return
    new = bundle_id(manifest_bytes)
    try:
        old = read_bundle_id(where)
        old_size = parts.read_index(index).size if where == index else os.stat(where).st_size
        # a signature often fits in the tar's end padding: same size, other bytes
        signed = old == new and where != index and read_tail(where).signature is not None
    except (MirrorError, OSError) as e:
        why = f"it is not a readable bundle ({' '.join(str(e).split())[:120]})"
    else:
        if old == new and old_size == size and not signed:
            return
        why = (f"it holds this bundle signed: keep it, it is the same identity {new}" if signed
               else f"it holds bundle {old}, this one is {new}" if old != new else f"it holds this bundle in {old_size} bytes, not {size}")
    raise UsageError(f"{where} already exists and {why}; nothing was written: pass --overwrite to replace it, or --out another folder")


def _space_error(e: OSError, out_dir: Path, total: int) -> None:
    """A full disk while writing a bundle: NotEnoughSpace with the figures (else returns)."""
    if e.errno == errno.ENOSPC and not isinstance(e, NotEnoughSpace):
        raise NotEnoughSpace(str(out_dir), needed=total, free=shutil.disk_usage(out_dir).free) from e


class Filler(Protocol):
    """What fills regions of a bundle written in place (mirror.hub's downloader)."""

    paths: frozenset[str]

    def __call__(self, regions: "list[inplace.Region]") -> None: ...


def copy_source(src: SourceFile, put, *, check=None) -> None:
    """Stream `src` into `put` (and `check`) in chunks read by position from the descriptor that
    was checked (and hashed in pass 1), each a fresh `bytes` since a hash lane may still hold the
    previous one. Refuses (SourceChanged) a file that, once copied, is not the same inode with
    the same size, mtime and ctime as when it was first opened."""
    with src.descriptor() as fd:
        offset = 0
        while offset < src.size:
            chunk = os.pread(fd, min(CHUNK, src.size - offset), offset)
            if not chunk:
                raise EOFError(f"the file ended after {offset} of {src.size} bytes")
            put(chunk)
            if check is not None:
                check.update(chunk)
            offset += len(chunk)
        src.check_unchanged(fd)


def _walk_files(src: Sources) -> None:
    """Register every file below the folder, refusing (naming it) a symlink or special file
    inside: a bundle is made of the folder's own regular files, never of what a link points at."""
    for rel, _ in walk(src):
        src.add(rel)
