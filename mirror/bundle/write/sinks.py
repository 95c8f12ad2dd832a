"""Where a bundle's bytes go: one file (`FileSink`), equal parts plus an index (`PartsSink`,
mirror.bundle.parts), or a partial written in place that a rerun resumes (`InPlaceSink`,
mirror.bundle.write.inplace). Each writes the same bytes for the same manifest; each publishes
only a finished bundle, under its final name, with its sha256 beside it, and leaves nothing
behind when it fails.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

from common import progress
from common.atomic import sweep, temp_path
from mirror.bundle import BundleInfo
from mirror.bundle import parts
from mirror.bundle.codec import read_tail
from mirror.bundle.layout import BLOCK, RECORD, Draft, member_header, padding
from mirror.bundle.write import inplace
from mirror.bundle.write.files import copy_source
from mirror.bundle.write.sources import FolderSource
from mirror.errors import HashMismatch, MirrorError, NotEnoughSpace, UsageError
from mirror.hashing import DualHasher, HashLanes, sha256sum_line
from mirror.identity import bundle_id, read_bundle_id
from mirror.manifest import MANIFEST_NAME, PAYLOAD_PREFIX, Manifest

# what `finalize()` gives a sink once pass 1 is done: the manifest, its JSON, the bundle's final path
Finalize = Callable[[], "tuple[Manifest, bytes, Path]"]


class FileSink:
    """A single-file bundle in `out_dir`, written under a temporary name and renamed when whole.
    A bundle already at the final name holding other bytes is replaced only with `overwrite`."""

    def __init__(self, out_dir: str | Path, *, overwrite: bool = False):
        self.out_dir = Path(out_dir)
        self.overwrite = overwrite

    def prepare(self, total: int) -> None:
        """The folder exists, a killed writer's temporaries are gone, and `total` bytes fit."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        sweep(self.out_dir)  # temporaries of a writer that was SIGKILLed (its pid is gone): before the space check
        free = shutil.disk_usage(self.out_dir).free
        if free < total:
            raise NotEnoughSpace(str(self.out_dir), needed=total, free=free)

    def write(self, draft: Draft, source: FolderSource, finalize: Finalize, *, verb: str) -> BundleInfo:
        """Pass 2: the tar front to back, the stream's sha256 on a lane thread, then published."""
        manifest, raw, final = finalize()
        # `.<final>.<pid>-<random>.partial` (common.atomic): never taken for a bundle, removed in the
        # `finally` below on any error, Ctrl-C or SIGTERM, and by `sweep` after a SIGKILL
        partial = temp_path(final)
        stream_sha = self._stream_hash()
        out = None
        try:
            out = self._open(partial)
            # lane 0: the stream's sha256; lane 1: the sha256 of a promised file, checked as it passes.
            # A file hashed in pass 1 is copied from the same descriptor and must still have the
            # stamp it had when checked (files.Stamp: inode, size, mtime, ctime). It is not hashed
            # a second time: that is one more sha256 over every byte, +30% on a 2-core pack.
            with out, HashLanes(2) as lanes, progress.meter(f"{verb} (writing)", draft.total) as meter:

                def put(data: bytes) -> None:
                    out.write(data)
                    meter.add(len(data))
                    if stream_sha is not None:
                        lanes.submit(0, stream_sha, data)

                put(draft.manifest_member(raw))
                for d, entry in zip(draft.files, manifest.files):
                    put(member_header(PAYLOAD_PREFIX + d.path, d.size))
                    check = None if draft.promised[d.path] is None else DualHasher(d.size, lfs=True, lanes=lanes, lane_ids=(1, 1))
                    copy_source(source.file(d.path), put, check=check)  # a file still arriving: waited for, opened, checked once
                    if check is not None and (got := check.digest().sha256) != entry.sha256:
                        raise HashMismatch(d.path, algorithm="sha256", expected=entry.sha256, actual=got, where="against the Hub's hash")
                    put(b"\0" * padding(d.size))
                end = out.tell() + 2 * BLOCK
                put(b"\0" * (2 * BLOCK + (-end % RECORD)))
            return self._commit(out, partial, final, stream_sha, draft.total, manifest)
        except OSError as e:
            space_error(e, self.out_dir, draft.total)
            raise
        finally:
            if out is not None:
                self._discard(out)
            partial.unlink(missing_ok=True)

    # the hooks PartsSink changes
    def _open(self, partial: Path):
        return open(partial, "xb")

    def _stream_hash(self):
        return hashlib.sha256()

    def _commit(self, out, partial: Path, final: Path, stream_sha, total: int, manifest: Manifest) -> BundleInfo:
        sha = stream_sha.hexdigest()  # the lanes were closed: every chunk is in
        publish(final, sha, lambda: os.replace(partial, final))
        return BundleInfo(path=final, sha256=sha, size=total, manifest=manifest)

    def _discard(self, out) -> None:
        pass


class PartsSink(FileSink):
    """A multi-part bundle: the same stream cut into parts of `max_part_size` bytes, plus its
    index (NAME.tar.parts.json, `BundleInfo.path`); the part writer hashes each part and the
    whole stream as it writes them."""

    def __init__(self, out_dir: str | Path, *, max_part_size: int, overwrite: bool = False):
        super().__init__(out_dir, overwrite=overwrite)
        self.max_part_size = max_part_size

    def _open(self, partial: Path):
        return parts.PartWriter(self.out_dir, max_part_size=self.max_part_size)

    def _stream_hash(self):
        return None

    def _commit(self, out, partial: Path, final: Path, stream_sha, total: int, manifest: Manifest) -> BundleInfo:
        index = out.commit(final)
        return BundleInfo(path=parts.index_path(final), sha256=index.sha256, size=index.size, manifest=manifest)

    def _discard(self, out) -> None:
        out.discard()


class InPlaceSink(FileSink):
    """A pull's single-file bundle written in place (mirror.bundle.write.inplace) in `fill_dir`,
    where a rerun resumes it. Every offset follows from the draft, so the source's filler starts
    downloading into the regions at once; pass 1 then hashes the small files as they arrive, the
    manifest and every other byte are written, and a lane hashes the bundle front to back for the
    sidecar. Published (renamed, sidecar) only once all of it is in and matched."""

    def __init__(self, out_dir: str | Path, *, fill_dir: str | Path, overwrite: bool = False):
        super().__init__(out_dir, overwrite=overwrite)
        self.fill_dir = Path(fill_dir)

    def prepare(self, total: int) -> None:
        # the space check is the in-place writer's: what a resumed partial already holds is subtracted there
        self.out_dir.mkdir(parents=True, exist_ok=True)
        sweep(self.out_dir)

    def write(self, draft: Draft, source: FolderSource, finalize: Finalize, *, verb: str) -> BundleInfo:
        fill = getattr(source, "filler", None)
        if fill is None:
            raise ValueError("an in-place bundle is written from a FillSource")
        spec, total, reserved = draft.spec, draft.total, draft.reserved

        def members() -> list:
            # a promised file (the Hub's sha256, not hashed in pass 1) is checked as it is written
            files = source.files
            return [
                (d.path, member_header(PAYLOAD_PREFIX + d.path, d.size), d.size, files[d.path] if d.path in files else None,
                 draft.promised[d.path].sha256 if draft.promised[d.path] is not None else None)
                for d in draft.files
            ]  # fmt: skip

        head_size = len(member_header(MANIFEST_NAME, reserved)) + reserved
        _, slots = inplace.layout(b"\0" * head_size, members(), total=total, slots=source.filled)
        # what the regions hold follows from this: same key, same bytes (a journal of another layout is void)
        identity = f"{spec.repo_type}:{spec.repo_id}@{spec.commit}"
        key = hashlib.sha256(json.dumps([identity, reserved, total, [(s.path, s.offset, s.size, s.sha256) for s in slots]]).encode()).hexdigest()
        try:
            with inplace.InPlaceWriter(self.fill_dir, key=key, total=total, slots=slots, where=str(self.out_dir)) as w:
                regions = w.regions()
                run = fill.start(regions)
                try:
                    try:
                        manifest, raw, final = finalize()  # the small files, as they arrive
                    except Exception:
                        run.wait(quiet=True)  # the downloads finish, so a rerun fetches only what failed
                        raise
                    fixed, _ = inplace.layout(draft.manifest_member(raw), members(), total=total, slots=source.filled)
                    w.write_fixed(fixed)
                    run.wait()
                finally:
                    run.stop()  # nothing new starts; after an interrupt, running downloads stop at their next chunk
                if missing := [r.path for r in regions if not r.complete]:
                    raise RuntimeError(f"the in-place fill returned with {', '.join(missing)} unfinished")
                sha = w.stream_sha256()
                publish(final, sha, lambda: w.publish(final))
        except OSError as e:
            space_error(e, self.out_dir, total)
            raise
        return BundleInfo(path=final, sha256=sha, size=total, manifest=manifest)


def sink_for(out_dir: str | Path, *, max_part_size: int | None = None, overwrite: bool = False) -> FileSink:
    """The sink for `--out DIR [--max-part-size S]`: one file, or parts."""
    if max_part_size:
        return PartsSink(out_dir, max_part_size=max_part_size, overwrite=overwrite)
    return FileSink(out_dir, overwrite=overwrite)


def publish(final: Path, sha: str, move: Callable[[], None]) -> None:
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


def refuse_overwrite(final: Path, *, manifest_bytes: bytes, size: int, signature: bytes | None = None) -> None:
    """UsageError when a bundle is already at `final` (a file, or a multi-part index) and holds
    other bytes than the one about to be written there (`manifest_bytes`, `size`, its signature
    trailer `signature`: None for an unsigned one): another manifest (packed again with another
    revision label, another pull) or this one with another signature or none. Each would silently
    end a bundle whose sha256 someone wrote down. The same identity, size and signature is the
    same bundle: writing it again changes no byte anyone relies on."""
    index = parts.index_path(final)
    where = final if (final.exists() or final.is_symlink()) else index if index.exists() else None
    if where is None:
        return
    new = bundle_id(manifest_bytes)
    try:
        old = read_bundle_id(where)
        old_size = parts.read_index(index).size if where == index else os.stat(where).st_size
        # a signature often fits in the tar's end padding: same size, other bytes
        old_sig = read_tail(where).signature if old == new and where != index else None
    except (MirrorError, OSError) as e:
        why = f"it is not a readable bundle ({' '.join(str(e).split())[:120]})"
    else:
        if old == new and old_size == size and old_sig == signature:
            return
        why = (f"it holds bundle {old}, this one is {new}" if old != new
               else f"it holds this bundle signed: keep it, it is the same identity {new}" if old_sig is not None and signature is None
               else f"it holds this bundle {'unsigned' if old_sig is None else 'with another signature'} (identity {new})" if old_sig != signature
               else f"it holds this bundle in {old_size} bytes, not {size}")
    raise UsageError(f"{where} already exists and {why}; nothing was written: pass --overwrite to replace it, or --out another folder")


def space_error(e: OSError, out_dir: Path, total: int) -> None:
    """A full disk while writing a bundle: NotEnoughSpace with the figures (else returns)."""
    if e.errno == errno.ENOSPC and not isinstance(e, NotEnoughSpace):
        raise NotEnoughSpace(str(out_dir), needed=total, free=shutil.disk_usage(out_dir).free) from e
