"""`mirror audit --installed`: what is in an HF cache, checked against what mirror installed there.

`mirror install` writes a record per commit (`.mirror/<commit>.json`: every file's size and
sha256, and the bundle that made it). Whatever happens to a cache afterwards (a hand edit, a
tool that rewrote a blob, a disk error, a snapshot copied in by another tool), the record says
what should be there. Each snapshot is reported as:

  ok         every recorded file is there with its recorded sha256, and nothing else is
  modified   a file's bytes or size differ, a file is there that the record does not list, or
             an entry is not a regular file (a FIFO, a link that leaves the cache's blobs)
  missing    a recorded file is gone (and maybe others modified)
  no record  mirror did not install it (huggingface_hub did, or another tool): nothing to check against
  unsafe     the cache holds a link mirror never makes where it reads (check_tree's refusal)

Every byte is hashed (in chunks, on every core), never trusted from a name or a size.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path

from mirror import hfcache
from mirror.approval import ApprovalSet
from mirror.errors import ApprovalError, UnsafeCache
from mirror.hashing import hash_files
from common.safeio import NotRegularFile, open_regular

BATCH = 256  # files open at once while hashing one snapshot: far below any descriptor limit


@dataclass(frozen=True)
class FileProblem:
    path: str
    state: str  # "modified" | "missing" | "extra" | "not a regular file"
    detail: str = ""


@dataclass(frozen=True)
class InstalledRow:
    snapshot: hfcache.InstalledSnapshot  # repo, commit, refs, folder, file count and size, as `mirror list --installed` has them
    state: str  # "ok" | "modified" | "missing" | "no record" | "unsafe"
    problems: tuple[FileProblem, ...] = ()
    checked: int = 0  # files hashed
    checked_bytes: int = 0
    bundle: dict | None = None  # the install record's bundle entry: name, sha256, and the identity and checked signer when recorded
    error: str | None = None  # one line, for "unsafe"
    approval: str | None = None  # where the host requires approvals: "approved", "rejected" or "not approved"
    approval_detail: str = ""  # why not, in one line

    @property
    def ok(self) -> bool:
        return self.state == "ok" and self.approval in (None, "approved")

    def to_dict(self) -> dict:
        s = self.snapshot
        return {
            "repo_id": s.repo_id, "repo_type": s.repo_type, "commit": s.commit, "refs": list(s.refs), "path": str(s.path),
            "files": s.files, "size": s.size, "state": self.state, "ok": self.ok, "checked": self.checked,
            "checked_bytes": self.checked_bytes, "bundle": self.bundle, "error": self.error, "approval": self.approval, "approval_detail": self.approval_detail,
            "problems": [{"path": p.path, "state": p.state, "detail": p.detail} for p in self.problems],
        }

    def summary(self) -> str:
        """Why it is not ok, in one line (the first few problems)."""
        if self.error:
            return self.error
        if self.state == "ok" and self.approval not in (None, "approved"):
            return self.approval_detail
        if self.state == "no record":
            return "not installed by mirror: no install record to check it against"
        from mirror.audit import short_digests

        shown = "; ".join(f"{p.state}: {p.path}" + (f" ({p.detail})" if p.detail else "") for p in self.problems[:3])
        more = f"; and {len(self.problems) - 3} more" if len(self.problems) > 3 else ""
        return short_digests(shown + more)


def audit_installed(cache_dir: str | os.PathLike | None = None, *, approvals: ApprovalSet | None = None) -> list[InstalledRow]:
    """One row per snapshot in the cache (hfcache.list_installed), each checked against its record
    and, where `approvals` are required, against them by the identity its record names."""
    root = hfcache.cache_root(cache_dir)
    rows = [check_snapshot(hfcache.RepoCache(root, s.repo_id, s.repo_type), s) for s in hfcache.list_installed(root)]
    if approvals is None or not approvals.required():
        return rows
    return [replace(r, **_approval(r, approvals)) for r in rows]


def _approval(row: InstalledRow, approvals: ApprovalSet) -> dict[str, str]:
    """The decision in force for the bundle that installed the snapshot, and why it does not
    count when it does not (ApprovalSet.require's line, less the label the row already shows)."""
    bundle_id = (row.bundle or {}).get("id")
    if not bundle_id:
        return {"approval": "not approved", "approval_detail": "its install record names no bundle identity (installed by another tool or an older mirror)"}
    try:
        approvals.require(bundle_id, label=f"{row.snapshot.repo_id}@{row.snapshot.commit[:12]}")
    except ApprovalError as e:
        found = approvals.find(bundle_id)
        return {"approval": "rejected" if found is not None else "not approved", "approval_detail": " ".join(str(e).split(": ", 1)[1].split())}
    return {"approval": "approved"}


def check_snapshot(rc: hfcache.RepoCache, snap: hfcache.InstalledSnapshot) -> InstalledRow:
    try:
        hfcache.check_tree(rc, [snap.commit])
        record = hfcache.read_record(rc, snap.commit)
        bundle = _bundle_entry(rc, snap.commit)
        links = hfcache.snapshot_links(rc, snap.commit)
    except UnsafeCache as e:
        return InstalledRow(snap, state="unsafe", error=" ".join(str(e).split()))
    if record is None:
        return InstalledRow(snap, state="no record")
    problems: list[FileProblem] = [FileProblem(p, "extra", "not in the install record") for p in sorted(set(links) - set(record))]
    to_hash: list[tuple[str, int]] = []
    for path, entry in sorted(record.items()):
        p = snap.path / path
        try:
            st = os.stat(p)
        except FileNotFoundError:
            problems.append(FileProblem(path, "missing", "a dangling link" if os.path.islink(p) else ""))
            continue
        except OSError as e:
            problems.append(FileProblem(path, "missing", f"cannot be read: {e.strerror or e}"))
            continue
        if path in links and links[path] is None and os.path.islink(p):
            problems.append(FileProblem(path, "not a regular file", f"a link to {os.readlink(p)!r}, not into the repo's blobs/"))
        elif not stat.S_ISREG(st.st_mode):
            problems.append(FileProblem(path, "not a regular file", "a folder or a special file"))
        elif st.st_size != entry.size:
            problems.append(FileProblem(path, "modified", f"{st.st_size} bytes, recorded {entry.size}"))
        else:
            to_hash.append((path, entry.size))
    checked, checked_bytes = 0, 0
    for i in range(0, len(to_hash), BATCH):
        batch = to_hash[i:i + BATCH]
        digests, unreadable = _hash(snap.path, [p for p, _ in batch])
        problems += unreadable
        for path, size in batch:
            if path in digests:
                checked, checked_bytes = checked + 1, checked_bytes + size
                if digests[path] != record[path].sha256:
                    problems.append(FileProblem(path, "modified", f"sha256 {digests[path]}, recorded {record[path].sha256}"))
    problems.sort(key=lambda p: (p.path, p.state))
    state = "missing" if any(p.state == "missing" for p in problems) else "modified" if problems else "ok"
    return InstalledRow(snap, state=state, problems=tuple(problems), checked=checked, checked_bytes=checked_bytes, bundle=bundle)


def _bundle_entry(rc: hfcache.RepoCache, commit: str) -> dict | None:
    """What the record says of the bundle that installed the commit: its file (name, sha256), its
    identity and the key whose signature the install checked (records of older mirrors lack some)."""
    b, trust = hfcache.read_bundle_record(rc, commit), hfcache.read_trust(rc, commit)
    out = {"name": b.name, "sha256": b.sha256} if b is not None else {}
    if trust is not None:
        out.update({k: v for k, v in (("id", trust.bundle_id), ("signer", trust.signer)) if v})
    return out or None


def _hash(folder: Path, paths: list[str]) -> tuple[dict[str, str], list[FileProblem]]:
    """sha256 of each file, opened once as a regular file (a FIFO swapped in meanwhile is
    reported, never waited on) and hashed in chunks on every core."""
    opened, problems = {}, []
    try:
        for path in paths:
            try:
                opened[path] = open_regular(folder / path)
            except NotRegularFile as e:
                problems.append(FileProblem(path, "not a regular file", e.what))
            except FileNotFoundError:
                problems.append(FileProblem(path, "missing", "removed while the audit ran"))
            except OSError as e:
                problems.append(FileProblem(path, "missing", f"cannot be read: {e.strerror or e}"))
        digests = hash_files(list(opened.values()))
        return {path: digests[f].sha256 for path, f in opened.items()}, problems
    finally:
        for f in opened.values():
            f.close()


# --- rendering ------------------------------------------------------------------------------------


def render_table(rows: list[InstalledRow]) -> str:
    """One line per snapshot, then one line per snapshot that is not ok, saying why."""
    from common.progress import human_size

    approvals = any(r.approval is not None for r in rows)
    head = ("REPO", "COMMIT", "BUNDLE", "SIZE", "FILES", "STATE") + (("APPROVAL",) if approvals else ())
    body = [(r.snapshot.repo_id, r.snapshot.commit[:8], ((r.bundle or {}).get("id") or "-").partition(":")[2][:8] or "-", human_size(r.snapshot.size),
             str(r.snapshot.files), r.state) + ((r.approval or "-",) if approvals else ()) for r in rows]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *body]]
    problems = [f"{r.snapshot.repo_id}@{r.snapshot.commit[:12]}: {r.summary()}" for r in rows if not r.ok]
    return "\n".join(lines + ([""] + problems if problems else []))
