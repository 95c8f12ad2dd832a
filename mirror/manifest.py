"""The bundle manifest: what a bundle claims to hold, in a form an auditor can read.

The manifest is the contract of the bundle format (docs/bundle-format.md). It is serialised
canonically (sorted keys, fixed indentation, UTF-8) so the same snapshot always yields the same
bytes, and parsed strictly: anything unexpected is a `ManifestError`, never a KeyError deep inside
a verifier.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from mirror import __version__

from common import safejson
from common.modelfacts import CODE_PATTERNS
from mirror.errors import ManifestError
from mirror.ids import is_commit, is_sha256, repo_id_problem, unsafe_path_reason  # noqa: F401 (re-exported)

FORMAT = "mirror-bundle/1"
SUPPORTED_FORMATS = (FORMAT,)
MANIFEST_NAME = "_mirror/manifest.json"  # always the first tar member
PAYLOAD_PREFIX = "files/"  # every repo file lives under this prefix in the tar
REPO_TYPES = ("model", "dataset", "space")
KINDS = ("safetensors", "pickle", "code", "json", "text", "other")
MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # ~200k files (= bundle.codec.MAX_MANIFEST); larger is hostile
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # never in a name, a date or a URL; a terminal obeys them


# Order matters: first match wins.
_KIND_PATTERNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("safetensors", ("*.safetensors",)),
    (
        "pickle",
        ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle", "*.joblib", "*.npy", "*.npz", "*.dat"),
    ),
    ("code", CODE_PATTERNS),  # what trust_remote_code would run: one rule with the trainer's
    ("json", ("*.json", "*.jsonl")),
    ("text", ("*.txt", "*.md", "*.model", "*.yaml", "*.yml", "*.csv", "*.tsv", "*.gitattributes", ".gitattributes", "*.jinja", "*.tiktoken", "merges.txt", "LICENSE*")),
)


def classify(path: str) -> str:
    """The file kind an auditor cares about. `*.bin` is treated as pickle (torch's default format):
    we would rather over-flag than let a loadable pickle pass as 'other'."""
    name = path.rsplit("/", 1)[-1]
    for kind, patterns in _KIND_PATTERNS:
        if any(fnmatch.fnmatch(name, p) for p in patterns):
            return kind
    return "other"


@dataclass(frozen=True)
class FileEntry:
    path: str  # POSIX, relative to the repo root
    size: int
    sha256: str
    git_sha1: str  # git blob sha1 (the Hub's etag for non-LFS files)
    lfs: bool
    kind: str

    @property
    def etag(self) -> str:
        """The name of this file's blob in the HF cache, as huggingface_hub would name it."""
        return self.sha256 if self.lfs else self.git_sha1

    @property
    def member(self) -> str:
        return PAYLOAD_PREFIX + self.path


@dataclass(frozen=True)
class Manifest:
    repo_id: str
    repo_type: str
    revision: str  # what the user asked for: "main", a tag, or a commit
    commit: str  # the resolved 40-hex commit every file belongs to
    source: str  # endpoint URL for pulls, "local:<folder name>" for packs
    created_at: str  # ISO-8601 UTC; the commit date for pulls, so bundles are reproducible
    license: str | None
    files: tuple[FileEntry, ...]
    tool: dict[str, str] = field(default_factory=lambda: {"name": "mirror", "version": __version__})
    format: str = FORMAT
    # Optional sections filled by later stages (delta bundles, lineage of trained models, policy scans).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def by_path(self) -> dict[str, FileEntry]:
        return {f.path: f for f in self.files}

    def to_dict(self) -> dict[str, Any]:
        d = {
            "format": self.format,
            "repo_id": self.repo_id,
            "repo_type": self.repo_type,
            "revision": self.revision,
            "commit": self.commit,
            "source": self.source,
            "created_at": self.created_at,
            "tool": dict(self.tool),
            "license": self.license,
            "files": [asdict(f) for f in sorted(self.files, key=lambda f: f.path)],
            "totals": {
                "files": len(self.files),
                "bytes": self.total_size,
                "by_kind": _count_kinds(self.files),
            },
        }
        for k, v in self.extra.items():
            if k in d:
                raise ValueError(f"extra key {k!r} shadows a manifest field")
            d[k] = v
        return d

    def to_json(self) -> bytes:
        """Canonical bytes: the same manifest always serialises identically."""
        return (json.dumps(self.to_dict(), sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    def with_extra(self, **extra: Any) -> "Manifest":
        return replace(self, extra={**self.extra, **extra})


def _count_kinds(files) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in files:
        out[f.kind] = out.get(f.kind, 0) + 1
    return dict(sorted(out.items()))


_CORE_KEYS = {"format", "repo_id", "repo_type", "revision", "commit", "source", "created_at", "tool", "license", "files", "totals"}
_FILE_KEYS = {"path", "size", "sha256", "git_sha1", "lfs", "kind"}


def parse(raw: bytes, *, bundle: str = "bundle") -> Manifest:
    """Strictly parse manifest bytes. Every problem found is reported in one ManifestError.
    Hostile JSON (huge numbers, deep nesting, NaN, duplicate keys) is refused by common.safejson
    before Python's parser can turn it into a traceback."""
    d = safejson.loads(raw, where=bundle, what="manifest", max_bytes=MAX_MANIFEST_BYTES, error=ManifestError)
    if not isinstance(d, dict):
        raise ManifestError(bundle, "manifest is not a JSON object")
    fmt = d.get("format")
    if fmt not in SUPPORTED_FORMATS:
        raise ManifestError(
            bundle,
            f"unknown manifest format {fmt!r} (this mirror {__version__} reads {', '.join(SUPPORTED_FORMATS)})",
            fix="upgrade mirror, or re-create the bundle with this version",
        )
    problems: list[str] = []

    def need(key: str, typ, where: dict = d, label: str = "") -> Any:
        v = where.get(key)
        if not isinstance(v, typ) or isinstance(v, bool) and typ is not bool:
            problems.append(f"{label}{key} must be {getattr(typ, '__name__', typ)}")
            return None
        return v

    repo_id = need("repo_id", str)
    if repo_id is not None and (why := repo_id_problem(repo_id)):
        problems.append(f"repo_id {repo_id!r} {why}")
    repo_type = need("repo_type", str)
    if repo_type is not None and repo_type not in REPO_TYPES:
        problems.append(f"repo_type {repo_type!r} is not one of {REPO_TYPES}")
    revision = need("revision", str)
    commit = need("commit", str)
    if commit is not None and not is_commit(commit):
        problems.append("commit must be 40 lowercase hex characters")
    source = need("source", str)
    created_at = need("created_at", str)
    tool = need("tool", dict)
    lic = d.get("license")
    if lic is not None and not isinstance(lic, str):
        problems.append("license must be a string or null")
    for key, value in (("revision", revision), ("source", source), ("created_at", created_at), ("license", lic)):
        if isinstance(value, str) and _CONTROL.search(value):
            problems.append(f"{key} {value!r} contains control characters")
    raw_files = need("files", list)
    files: list[FileEntry] = []
    seen: set[str] = set()
    for i, fd in enumerate(raw_files or []):
        label = f"files[{i}]."
        if not isinstance(fd, dict):
            problems.append(f"files[{i}] must be an object")
            continue
        unknown = set(fd) - _FILE_KEYS
        if unknown:
            problems.append(f"{label} has unknown keys {sorted(unknown)}")
        path = need("path", str, fd, label)
        size = need("size", int, fd, label)
        sha = need("sha256", str, fd, label)
        sha1 = need("git_sha1", str, fd, label)
        lfs = need("lfs", bool, fd, label)
        kind = need("kind", str, fd, label)
        if size is not None and size < 0:
            problems.append(f"{label}size is negative")
        if sha is not None and not is_sha256(sha):
            problems.append(f"{label}sha256 must be 64 lowercase hex characters")
        if sha1 is not None and not is_commit(sha1):
            problems.append(f"{label}git_sha1 must be 40 lowercase hex characters")
        if kind is not None and kind not in KINDS:
            problems.append(f"{label}kind {kind!r} is not one of {KINDS}")
        if path is not None:
            bad = unsafe_path_reason(path)
            if bad:
                problems.append(f"{label}path {path!r} {bad}")
            elif path in seen:
                problems.append(f"{label}path {path!r} is listed twice")
            seen.add(path)
        if None not in (path, size, sha, sha1, lfs, kind):
            files.append(FileEntry(path=path, size=size, sha256=sha, git_sha1=sha1, lfs=lfs, kind=kind))
    totals = d.get("totals")
    if isinstance(totals, dict) and not problems:
        if totals.get("files") != len(files) or totals.get("bytes") != sum(f.size for f in files):
            problems.append("totals disagree with the file list")
    elif not isinstance(totals, dict):
        problems.append("totals must be an object")
    if problems:
        raise ManifestError(bundle, "invalid manifest: " + "; ".join(problems[:10]) + (f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""))
    extra = {k: v for k, v in d.items() if k not in _CORE_KEYS}
    return Manifest(
        repo_id=repo_id,
        repo_type=repo_type,
        revision=revision,
        commit=commit,
        source=source,
        created_at=created_at,
        license=lic,
        files=tuple(sorted(files, key=lambda f: f.path)),
        tool={str(k): str(v) for k, v in tool.items()},
        format=fmt,
        extra=extra,
    )


_LICENSE_RE = re.compile(r"^license:\s*['\"]?([^'\"\n#]+?)['\"]?\s*(?:#.*)?$", re.MULTILINE)


def license_from_card(text: str) -> str | None:
    """The `license:` field of a model card's YAML front matter, if any."""
    if not text.startswith("---"):
        return None
    end = text.find("\n---", 3)
    if end < 0:
        return None
    m = _LICENSE_RE.search(text[3:end])
    return m.group(1).strip() if m else None
