"""Writing a bundle: one short loop over a source and a sink (format: docs/bundle-format.md).

Two passes. The files are hashed first, in parallel across cores, so the manifest (member 0) is
final before anything is written; then the sink writes the tar front to back while a hash
thread computes its sha256 for the sidecar. The bytes are the same as any writer's for this
manifest (format, 1.3-1.4), whichever source the files come from (`sources`: a folder, a
staging folder they still arrive in, shards filled in place) and whichever sink takes them
(`sinks`: one file, parts, in place). Nothing here ever holds a whole model file in memory, and
nothing is left in the output folder when a write fails.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from common import progress
from mirror.bundle import BundleInfo, BundleSpec, pack_commit
from mirror.bundle.layout import plan
from mirror.bundle.write.sinks import FileSink, InPlaceSink, refuse_overwrite, sink_for
from mirror.bundle.write.sources import FolderSource
from mirror.errors import HashMismatch
from mirror.hashing import first_difference, hash_files
from mirror.manifest import FileEntry, Manifest


def write(spec: BundleSpec, source: FolderSource, sink: FileSink) -> BundleInfo:
    """Write the bundle `spec` describes from `source` into `sink`; returns what was written.

    `expected` digests (the Hub's) must match or HashMismatch is raised before the bundle takes
    its name; an LFS file with an expected sha256 is not hashed in pass 1, it is checked while it
    is copied, so it is read once. A bundle already at the final name holding other bytes
    (another manifest, or this one signed) is never replaced unless the sink says `overwrite`:
    UsageError before pass 2 writes anything. The same bundle again is simply written again."""
    spec.check()
    if source.filled and not isinstance(sink, InPlaceSink):
        raise ValueError("a fill writes a single-file bundle in place (InPlaceSink)")
    verb = f"{'pack' if spec.commit is None else 'bundle'} {spec.repo_id}"
    with ExitStack() as stack:
        draft = plan(spec, source.open(spec, stack))
        sink.prepare(draft.total)

        def finalize() -> tuple[Manifest, bytes, Path]:
            """Pass 1 and the final manifest, its bytes and the bundle's name."""
            source.before_hashing()
            files = source.files
            todo = [files[d.path] for d in draft.files if draft.promised[d.path] is None]
            with progress.ReadMeter(f"{verb} (hashing)", sum(f.size for f in todo)):
                digests = hash_files(todo, lfs={files[d.path] for d in draft.files if d.lfs and draft.promised[d.path] is None})
            entries: list[FileEntry] = []
            for d in draft.files:
                digest = draft.promised[d.path] or digests[files[d.path]]
                want = (spec.expected or {}).get(d.path)
                if want is not None and (diff := first_difference(want, digest, skip_empty=True)):
                    raise HashMismatch(d.path, algorithm=diff[0], expected=diff[1], actual=diff[2], where="against the Hub's hash")
                entries.append(FileEntry(path=d.path, size=d.size, sha256=digest.sha256, git_sha1=digest.git_sha1, lfs=d.lfs, kind=d.kind))
            manifest = spec.manifest(tuple(entries), spec.commit or pack_commit(entries))
            raw = manifest.to_json()
            if len(raw) > draft.reserved:  # cannot happen unless the manifest format changes shape
                raise RuntimeError(f"manifest grew from {draft.reserved} to {len(raw)} bytes while writing")
            final = sink.out_dir / spec.filename(manifest.commit)
            if not sink.overwrite:
                refuse_overwrite(final, manifest_bytes=raw + b" " * (draft.reserved - len(raw)), size=draft.total)  # the member as written
            return manifest, raw, final

        return sink.write(draft, source, finalize, verb=verb)


def write_bundle(*, src_root: str | Path, out_dir: str | Path, max_part_size: int | None = None, overwrite: bool = False,
                 paths: list[str] | None = None, **spec: object) -> BundleInfo:
    """A folder into a bundle, for scripts and tests: `spec` holds `BundleSpec`'s fields; the
    files of `src_root` (or `paths`) go into one file in `out_dir`, or parts of `max_part_size`."""
    return write(BundleSpec(**spec), FolderSource(src_root, paths=paths), sink_for(out_dir, max_part_size=max_part_size, overwrite=overwrite))
