"""The identifiers that become names on disk: commits, digests, repo ids, ref names.

One place for their patterns, each matched in full (`re.fullmatch`: `$` alone would accept a
trailing newline, and a commit with one would become a folder name). Every module that checks an
id imports it from here.
"""

from __future__ import annotations

import re

HEX40 = re.compile(r"[0-9a-f]{40}")  # a git commit or blob sha1
HEX64 = re.compile(r"[0-9a-f]{64}")  # a sha256
_REPO_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*", re.ASCII)
_DRIVE = re.compile(r"[A-Za-z]:")
_REF_CHARS = re.compile(r"[\w.@+-]+(?:/[\w.@+-]+)*", re.ASCII)


def is_commit(text: object) -> bool:
    return isinstance(text, str) and HEX40.fullmatch(text) is not None


def is_sha256(text: object) -> bool:
    return isinstance(text, str) and HEX64.fullmatch(text) is not None


def repo_id_problem(repo_id: str) -> str | None:
    """Why `repo_id` is not a Hub repo id ("org/name" or "name"), or None. The id becomes a cache
    folder name (`models--org--name`), so the Hub's own rules are enforced: no '--', no '..'."""
    if not isinstance(repo_id, str) or not _REPO_ID.fullmatch(repo_id) or len(repo_id) > 96 * 2 + 1:
        return "is not a Hub repo id like 'org/name' (letters, digits, '-', '_', '.')"
    if "--" in repo_id or ".." in repo_id or repo_id.endswith(".git"):
        return "contains '--' or '..' or ends with '.git', which the Hub does not allow"
    return None


def unsafe_path_reason(path: str) -> str | None:
    """Why a repo-relative path may not be written anywhere, or None if it is safe."""
    if not path:
        return "is empty"
    if "\\" in path or any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return "contains a backslash or a control character (NUL, newline, tab, escape...)"
    if path.startswith("/") or _DRIVE.match(path):
        return "is absolute"
    if any(p in ("", ".", "..") for p in path.split("/")):
        return "has an empty, '.' or '..' component"
    return None


def ref_problem(name: str) -> str | None:
    """Why a revision name cannot be a file under refs/ (a branch or tag name), or None."""
    if is_commit(name):
        return None
    if not isinstance(name, str) or len(name) > 255 or not _REF_CHARS.fullmatch(name):
        return "is not a branch or tag name (letters, digits, '-', '_', '.', '@', '+', '/')"
    if unsafe_path_reason(name) or name.endswith(".lock") or ".." in name:
        return "has an empty, '.' or '..' component or ends with '.lock'"
    return None
