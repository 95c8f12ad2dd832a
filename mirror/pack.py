"""Bundle a local folder: a model shipped inside a Python package, or a trained output.

A folder has no Hub commit, so the bundle's commit id is derived from the content
(`bundle.pack_commit`); the same files always give the same id, and with a fixed
`created_at` the same bytes. `created_at` is $SOURCE_DATE_EPOCH when set (the reproducible-builds
convention), else the newest file's mtime, so re-packing an untouched folder is byte-identical.
"""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime, timezone
from pathlib import Path

from mirror.bundle import BundleInfo, write_bundle
from mirror.delta import folder_delta
from mirror.errors import UsageError
from mirror.manifest import license_from_card, repo_id_problem, unsafe_path_reason
from mirror.policy import check_snapshot

SKIP_DIRS = frozenset({".git", ".cache", "__pycache__", ".ipynb_checkpoints"})  # tool state, not the model
LINEAGE_FILE = "lineage.json"  # written by the trainer next to a trained model's weights
CARD_BYTES = 64 * 1024  # the YAML header of a model card is at its very top


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
) -> BundleInfo:
    """Bundle every file of `folder` (minus SKIP_DIRS) as `repo_id` at `revision`. `max_part_size`
    splits the bundle into parts (mirror.parts); `since` / `since_manifest` make it a delta
    holding only what changed since that bundle or manifest (mirror.delta). Pickle files are
    refused unless `allow_pickle`, and then scanned against the allowlist (mirror.policy)."""
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"{folder} is not a directory; pass the folder that holds the model files")
    if why := repo_id_problem(repo_id):
        raise UsageError(f"--repo-id {repo_id!r} {why}")
    if not revision or unsafe_path_reason(revision):
        raise UsageError(f"--revision {revision!r} is not usable as a ref name; use something like 'local' or 'v1'")
    paths, newest = _collect(root)
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
    extra = {"policy": check_snapshot(root, paths=paths, allow_pickle=allow_pickle, where=str(folder)).to_manifest()}
    if LINEAGE_FILE in paths:
        try:
            with open(root / LINEAGE_FILE, encoding="utf-8") as f:
                extra["lineage"] = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UsageError(f"{root / LINEAGE_FILE} is not valid JSON ({e}); fix or remove it") from e
    args = {"commit": None, "paths": paths, "extra": extra or None}
    if since is not None or since_manifest is not None:
        args = folder_delta(root, paths, repo_id=repo_id, repo_type=repo_type, since=since, since_manifest=since_manifest, extra=extra)
    return write_bundle(
        src_root=root,
        repo_id=repo_id,
        repo_type=repo_type,
        revision=revision,
        source=f"local:{root.resolve().name}",
        created_at=created,
        license=_license(root),
        out_dir=Path(out_dir),
        max_part_size=max_part_size,
        **args,
    )


def _license(root: Path) -> str | None:
    card = root / "README.md"
    if not card.is_file():
        return None
    with open(card, "rb") as f:
        return license_from_card(f.read(CARD_BYTES).decode("utf-8", "replace"))


def _collect(root: Path) -> tuple[list[str], float]:
    """Repo-relative paths of the regular files to pack, and the newest mtime among them.
    Symlinks are followed only when they stay inside the folder (or, for a folder that is an HF
    cache snapshot, inside that repo's blobs/); anything else is refused, never silently copied."""
    real_root = root.resolve()
    allowed = [real_root]
    if root.parent.name == "snapshots" and (root.parent.parent / "blobs").is_dir():
        allowed.append((root.parent.parent / "blobs").resolve())
    paths: list[str] = []
    newest = 0.0
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            if d in SKIP_DIRS:
                continue
            if (here / d).is_symlink():
                raise UsageError(f"{here / d} is a symlinked folder; copy the files in instead of linking them")
            keep.append(d)
        dirnames[:] = keep
        for name in filenames:
            p = here / name
            rel = p.relative_to(root).as_posix()
            if why := unsafe_path_reason(rel):
                raise UsageError(f"{p}: the file name {why}; rename it")
            if p.is_symlink():
                target = p.resolve()
                if not any(target == a or a in target.parents for a in allowed):
                    raise UsageError(f"{p} is a symlink to {target}, outside {root}; copy the file in instead")
            try:
                st = p.stat()
            except OSError as e:
                raise UsageError(f"{p}: cannot read ({e.strerror})") from e
            if not stat.S_ISREG(st.st_mode):
                raise UsageError(f"{p} is not a regular file (a socket, FIFO or device); remove it from the folder")
            paths.append(rel)
            newest = max(newest, st.st_mtime)
    return sorted(paths), newest
