"""The Hub's JSON shapes for a served commit: repo info, tree, paths-info, refs, commits.

Field names and forms are those `huggingface_hub` parses (`hf_api.ModelInfo`, `DatasetInfo`,
`RepoFile`, `RepoFolder`, `GitRefs`, `GitCommitInfo`): every value comes from the manifest that
was verified, so `oid` is the file's git blob sha1 (an LFS pointer's for LFS files, as git stores
them) and `lfs.oid` its sha256. There is no Xet field: clients then download over plain HTTP.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

from mirror.manifest import FileEntry

LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"


def hub_date(created_at: str) -> str:
    """`2024-01-02T03:04:05Z` -> `2024-01-02T03:04:05.000Z`, the Hub's form."""
    return created_at[:-1] + ".000Z" if created_at.endswith("Z") and "." not in created_at else created_at


def lfs_info(f: FileEntry) -> dict:
    return {"oid": f.sha256, "size": f.size, "pointerSize": len(LFS_POINTER.format(sha256=f.sha256, size=f.size).encode())}


def file_entry(f: FileEntry) -> dict:
    e = {"type": "file", "oid": f.git_sha1, "size": f.size, "path": f.path}
    if f.lfs:
        e["lfs"] = lfs_info(f)
    return e


def folder_entry(commit: str, folder: str) -> dict:
    # git would give the tree's sha1; a stable id derived from commit and path serves the same role
    return {"type": "directory", "oid": hashlib.sha1(f"{commit}:{folder}".encode()).hexdigest(), "size": 0, "path": folder}


def repo_info(*, repo_type: str, repo_id: str, commit, oldest: str, card: dict | None, blobs: bool) -> dict:
    """`GET /api/{models,datasets}/{repo}[/revision/{rev}]`."""
    m = commit.manifest
    siblings = []
    for f in commit.files:
        s = {"rfilename": f.path}
        if blobs:  # files_metadata=True: size, blob id and LFS digests, as the Hub adds them
            s.update({"size": f.size, "blobId": f.git_sha1})
            if f.lfs:
                s["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": lfs_info(f)["pointerSize"]}
        siblings.append(s)
    info = {
        "_id": hashlib.sha1(f"{repo_type}/{repo_id}".encode()).hexdigest()[:24],
        "id": repo_id,
        "author": repo_id.split("/")[0] if "/" in repo_id else None,
        "sha": m.commit,
        "lastModified": hub_date(m.created_at),
        "createdAt": hub_date(oldest),
        "private": False,
        "gated": False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": [f"license:{m.license}"] if m.license else [],
        "siblings": siblings,
        "usedStorage": sum(f.size for f in commit.files),
    }
    if card is not None:
        info["cardData"] = card
        if repo_type == "model" and isinstance(card.get("library_name"), str):
            info["library_name"] = card["library_name"]
        if repo_type == "model" and isinstance(card.get("pipeline_tag"), str):
            info["pipeline_tag"] = card["pipeline_tag"]
    if repo_type == "model":
        info["modelId"] = repo_id
    return info


def tree(commit, prefix: str, *, recursive: bool) -> list[dict] | None:
    """`GET .../tree/{rev}[/{path}]`: the entries under `prefix` (every level when recursive),
    folders included, sorted by path; None when `prefix` names no folder of this commit."""
    base = prefix.strip("/") + "/" if prefix.strip("/") else ""
    under = [f for f in commit.files if f.path.startswith(base)]
    if base and not under:
        return None
    entries: dict[str, dict] = {}
    for f in under:
        rel = f.path[len(base):].split("/")
        for depth in range(1, len(rel) if recursive else min(len(rel), 2)):
            folder = base + "/".join(rel[:depth])
            entries.setdefault(folder, folder_entry(commit.commit, folder))
        if recursive or len(rel) == 1:
            entries[f.path] = file_entry(f)
    return [entries[k] for k in sorted(entries)]


def paths_info(commit, paths: Iterable[str]) -> list[dict]:
    """`POST .../paths-info/{rev}`: one entry per path that is a file or a folder; others are
    left out, as the Hub does."""
    files = commit.by_path
    folders = {f.path.rsplit("/", 1)[0] for f in commit.files if "/" in f.path}
    folders = {"/".join(p.split("/")[:i]) for p in folders for i in range(1, p.count("/") + 2)}
    out = []
    for p in dict.fromkeys(paths):
        p = p.strip("/")
        if p in files:
            out.append(file_entry(files[p]))
        elif p in folders:
            out.append(folder_entry(commit.commit, p))
    return out


def refs(repo, *, include_prs: bool) -> dict:
    """`GET .../refs`: every revision name the bundles carry is listed as a branch (a bundle
    records the name, not whether it was a branch or a tag on the Hub)."""
    out = {
        "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": sha} for n, sha in repo.refs.items()],
        "converts": [],
        "tags": [],
    }
    if include_prs:
        out["pullRequests"] = []
    return out


def commits(repo, commit) -> list[dict]:
    """`GET .../commits/{rev}`: the served commits of the repo from `commit` back, newest first
    (bundles carry no git history; these are the commits this mirror holds)."""
    start = next(i for i, c in enumerate(repo.commits) if c.commit == commit.commit)
    out = []
    for c in repo.commits[start:]:
        title = f"{c.manifest.repo_id}@{c.commit[:12]} from bundle {c.bundle.name}"
        out.append({"id": c.commit, "title": title, "message": "", "authors": [], "date": hub_date(c.manifest.created_at),
                    "formatted": {"title": title, "message": ""}})
    return out
