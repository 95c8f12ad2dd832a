"""Bundle a local folder: a model shipped inside a Python package, or a trained output.

A folder has no Hub commit, so the bundle's commit id is derived from the content
(`mirror.bundle.pack_commit`); the same files always give the same id, and with a fixed
`created_at` the same bytes. `created_at` is $SOURCE_DATE_EPOCH when set (the reproducible-builds
convention), else the newest file's mtime, so re-packing an untouched folder is byte-identical.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from datetime import datetime, timezone
from pathlib import Path

from common import safejson
from mirror.bundle import BundleInfo, BundleSpec
from mirror.bundle.write.driver import write
from mirror.bundle.write.sinks import sink_for
from mirror.bundle.write.sources import FolderSource
from mirror.delta import folder_delta
from mirror.errors import UsageError
from mirror.manifest import license_from_card, repo_id_problem, unsafe_path_reason
from mirror.policy import check_files
from mirror.bundle.write.files import Sources, walk

SKIP_DIRS = frozenset({".git", ".cache", "__pycache__", ".ipynb_checkpoints"})  # tool state, not the model
LINEAGE_FILE = "lineage.json"  # written by the trainer next to a trained model's weights
CARD_BYTES = 64 * 1024  # the YAML header of a model card is at its very top
LINEAGE_BYTES = 16 * 1024 * 1024  # copied into the manifest, which readers cap at 64 MiB


def iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(int(ts), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def pack_folder(
    folder: str | os.PathLike,
    *,
    repo_id: str,
    revision: str = "local",
    out_dir: str | os.PathLike,
    repo_type: str = "model",
    max_part_size: int | None = None,
    since: str | os.PathLike | None = None,
    since_manifest: str | os.PathLike | None = None,
    allow_pickle: bool = False,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    overwrite: bool = False,
) -> BundleInfo:
    """Bundle every file of `folder` (minus SKIP_DIRS) as `repo_id` at `revision`. `max_part_size`
    splits the bundle into parts (mirror.bundle.parts); `since` / `since_manifest` make it a delta
    holding only what changed since that bundle or manifest (mirror.delta). Pickle files are
    refused unless `allow_pickle`, and then scanned against the allowlist (mirror.policy).
    `include` / `exclude` are globs on the folder-relative paths, as `mirror pull` takes them:
    with `include`, only matching files are packed; files matching `exclude` are left out.
    A bundle already at the name holding other bytes (packed before with another revision label,
    or signed since) is replaced only with `overwrite`; the same bytes again are fine."""
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"{folder} is not a directory; pass the folder that holds the model files")
    if why := repo_id_problem(repo_id):
        raise UsageError(f"--repo-id {repo_id!r} {why}")
    if not revision or unsafe_path_reason(revision):
        raise UsageError(f"--revision {revision!r} is not usable as a ref name; use something like 'local' or 'v1'")
    blobs = root.parent.parent / "blobs"
    in_cache = root.parent.name == "snapshots" and blobs.is_dir()  # an HF cache snapshot: links into blobs/
    # Every file is opened here, once, without following links, and the same descriptors are read
    # for the lineage, the licence and both passes of the writer (mirror.bundle.write.files).
    with Sources([root, blobs] if in_cache else [root]) as src:
        newest = _collect(root, src, include=tuple(include), exclude=tuple(exclude))
        paths = src.paths
        if not paths and (include or exclude):
            raise UsageError(f"no file of {folder} is left after --include/--exclude; check the patterns")
        if not paths:
            raise UsageError(f"{folder} holds no files to pack; point at the folder with config.json and the weights")
        env_epoch = os.environ.get("SOURCE_DATE_EPOCH")
        if env_epoch:
            try:
                created = iso_utc(int(env_epoch))
            except ValueError:
                raise UsageError(f"SOURCE_DATE_EPOCH={env_epoch!r} is not an integer number of seconds") from None
        else:
            created = iso_utc(newest)
        # pickles are scanned through the checked descriptors, so the bytes scanned are the bytes bundled
        extra = {"policy": check_files({p: src[p] for p in paths}, allow_pickle=allow_pickle, where=str(folder)).to_manifest()}
        if LINEAGE_FILE in paths:
            lineage = src[LINEAGE_FILE]
            if lineage.size > LINEAGE_BYTES:
                raise UsageError(f"{root / LINEAGE_FILE} is {lineage.size} bytes, over {LINEAGE_BYTES} (it is copied into the manifest); trim it")
            # the limits of every manifest reader (NaN, huge numbers, deep nesting): a lineage that
            # would make the bundle unreadable is refused here, before anything is written
            extra["lineage"] = safejson.loads(lineage.read(LINEAGE_BYTES), where=str(root / LINEAGE_FILE), what="lineage.json", max_bytes=LINEAGE_BYTES, error=UsageError)
        spec = BundleSpec(repo_id=repo_id, repo_type=repo_type, revision=revision, commit=None, source=f"local:{root.resolve().name}",
                          created_at=created, license=_license(src), extra=extra)
        if since is not None or since_manifest is not None:
            spec, paths = folder_delta(spec, root, paths, since=since, since_manifest=since_manifest, sources=src)
        return write(spec, FolderSource(root, paths=paths, files=src), sink_for(out_dir, max_part_size=max_part_size, overwrite=overwrite))


def _license(src: Sources) -> str | None:
    if "README.md" not in src:
        return None
    return license_from_card(src["README.md"].read(CARD_BYTES).decode("utf-8", "replace"))


def _matches(path: str, patterns: tuple[str, ...]) -> bool:
    # as `mirror pull` (mirror.hub): fnmatch on the whole path (`*` crosses `/`); "dir/" is all under it
    return any(fnmatch.fnmatchcase(path, p + "*" if p.endswith("/") else p) for p in patterns)


def _collect(root: Path, src: Sources, *, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> int:
    """Register in `src` the regular files to pack (repo-relative paths); returns the newest
    mtime among them, in seconds. The folder is walked without following links. A symlink inside
    is resolved here, and packed only when its target stays inside the folder (or, for a folder
    that is an HF cache snapshot, inside that repo's blobs/): then the target itself is opened
    below that folder, again without following links, so a link swapped after this check
    changes nothing. Anything else is refused, naming it, never silently copied."""
    allowed = [Path(os.path.realpath(r)) for r in src.roots]
    newest = 0
    for rel, st in walk(src, skip=SKIP_DIRS):
        p = root / rel
        if (include and not _matches(rel, include)) or _matches(rel, exclude):
            continue
        if why := unsafe_path_reason(rel):
            raise UsageError(f"{p}: the file name {why}; rename it")
        if stat.S_ISLNK(st.st_mode):
            target = Path(os.path.realpath(p))  # realpath: a link loop resolves to a link, refused below
            if target.is_dir():
                if p.name in SKIP_DIRS:
                    continue
                raise UsageError(f"{p} is a symlinked folder; copy the files in instead of linking them")
            where = next((i for i, a in enumerate(allowed) if target == a or a in target.parents), None)
            if where is None:
                raise UsageError(f"{p} is a symlink to {target}, outside {root}; copy the file in instead")
            f = src.add(rel, root=where, target=target.relative_to(allowed[where]).as_posix())
        else:
            f = src.add(rel)  # refuses a FIFO, socket or device, naming it
        newest = max(newest, f.stamp.mtime_ns // 1_000_000_000)
    return newest
