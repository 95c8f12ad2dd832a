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
from typing import Annotated, Any, Callable

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from mirror import __version__

from common import safejson
from common.modelfacts import CODE_PATTERNS
from mirror.errors import ManifestError
from mirror.ids import HEX40, HEX64, is_commit, is_sha256, repo_id_problem, unsafe_path_reason  # noqa: F401 (re-exported)

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


def _problem(message: str) -> PydanticCustomError:
    """One problem, in the words `parse` reports (see `_problems`)."""
    return PydanticCustomError("manifest", "{problem}", {"problem": message})


def _rule(problem: Callable[[Any], str | None]) -> AfterValidator:
    """A check on a value of the right type: `problem(value)` says what is wrong with it, or None."""

    def check(value: Any) -> Any:
        if (why := problem(value)) is not None:
            raise _problem(why)
        return value

    return AfterValidator(check)


def _unless(ok: Callable[[Any], bool], says: str) -> AfterValidator:
    """`_rule` for a yes/no check; `says` is formatted with the value."""
    return _rule(lambda v: None if ok(v) else says.format(value=v))


def _no_control(name: str) -> AfterValidator:
    return _unless(lambda v: v is None or not _CONTROL.search(v), name + " {value!r} contains control characters")


class _FileIn(BaseModel):
    """One entry of `files`, as a manifest must write it: exactly these keys, JSON's own types."""

    model_config = ConfigDict(strict=True, extra="forbid")

    path: Annotated[str, _rule(lambda v: (why := unsafe_path_reason(v)) and f"path {v!r} {why}")]
    # checked by pydantic itself (no Python call per file): the words are in _CONSTRAINED
    size: Annotated[int, Field(ge=0)]
    sha256: Annotated[str, Field(pattern=f"^{HEX64.pattern}$")]  # the Rust regex's `$` is the end of the text: no trailing newline
    git_sha1: Annotated[str, Field(pattern=f"^{HEX40.pattern}$")]
    lfs: bool
    kind: Annotated[str, Field(pattern=f"^({'|'.join(KINDS)})$")]


class _ManifestIn(BaseModel):
    """The core fields of a manifest; other top-level keys are the optional sections (`extra`)."""

    model_config = ConfigDict(strict=True, extra="allow")

    repo_id: Annotated[str, _rule(lambda v: (why := repo_id_problem(v)) and f"repo_id {v!r} {why}")]
    repo_type: Annotated[str, _unless(lambda v: v in REPO_TYPES, "repo_type {value!r} is not one of " + str(REPO_TYPES))]
    revision: Annotated[str, _no_control("revision")]
    commit: Annotated[str, _unless(is_commit, "commit must be 40 lowercase hex characters")]
    source: Annotated[str, _no_control("source")]
    created_at: Annotated[str, _no_control("created_at")]
    tool: dict[str, Any]
    license: Annotated[str | None, _no_control("license")] = None
    files: list[_FileIn]
    totals: dict[str, Any]

    @model_validator(mode="after")
    def _consistent(self) -> "_ManifestIn":
        seen: set[str] = set()
        for i, f in enumerate(self.files):
            if f.path in seen:
                raise _problem(f"files[{i}].path {f.path!r} is listed twice")
            seen.add(f.path)
        if self.totals.get("files") != len(self.files) or self.totals.get("bytes") != sum(f.size for f in self.files):
            raise _problem("totals disagree with the file list")
        return self


_CORE_KEYS = {"format", *_ManifestIn.model_fields}
_CONSTRAINED = {  # what a value of the right type that fails pydantic's own check is told
    "size": "size is negative",
    "sha256": "sha256 must be 64 lowercase hex characters",
    "git_sha1": "git_sha1 must be 40 lowercase hex characters",
    "kind": "kind {value!r} is not one of " + str(KINDS),
}
_EXPECTED = {"totals": "an object", "license": "a string or null"}  # what a wrong type is told, where "must be dict" would not say it


def _problems(error: ValidationError) -> list[str]:
    """pydantic's errors as one-line problems, in the manifest's own words (`files[3].size must be int`)."""
    out: list[str] = []
    unknown: dict[str, list[str]] = {}  # per entry: listed once, where its first unknown key was met
    for e in error.errors(include_url=False):
        loc = e["loc"]
        label = f"files[{loc[1]}]" if len(loc) >= 2 and loc[0] == "files" else ""
        name = str(loc[-1]) if loc else ""
        if e["type"] == "manifest":
            out.append(f"{label}.{e['ctx']['problem']}" if label else e["ctx"]["problem"])
        elif e["type"] == "extra_forbidden":
            if label not in unknown:
                out.append(label)
            unknown.setdefault(label, []).append(name)
        elif e["type"] in ("greater_than_equal", "string_pattern_mismatch"):
            out.append(f"{label}.{_CONSTRAINED[name].format(value=e['input'])}")
        elif e["type"] == "model_type" and label:
            out.append(f"{label} must be an object")
        else:  # missing or of another type
            model = _FileIn if label else _ManifestIn
            field = model.model_fields.get(name)
            typ = getattr(field.annotation, "__name__", "") if field else ""
            expected = _EXPECTED.get(name, typ if typ in ("str", "int", "bool", "list", "dict") else "str")
            out.append(f"{label}.{name} must be {expected}" if label else f"{name} must be {expected}")
    return [f"{p} has unknown keys {sorted(unknown[p])}" if p in unknown else p for p in out]


def parse(raw: bytes, *, bundle: str = "bundle") -> Manifest:
    """Strictly parse manifest bytes. Every problem found is reported in one ManifestError.
    Hostile JSON (huge numbers, deep nesting, NaN, duplicate keys) is refused by common.safejson
    before Python's parser can turn it into a traceback; the fields are then checked by pydantic
    in strict mode (JSON's own types, no coercion)."""
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
    try:
        m = _ManifestIn.model_validate(d)
    except ValidationError as e:
        problems = _problems(e)
        raise ManifestError(bundle, "invalid manifest: " + "; ".join(problems[:10]) + (f" (+{len(problems) - 10} more)" if len(problems) > 10 else "")) from None
    return Manifest(
        repo_id=m.repo_id,
        repo_type=m.repo_type,
        revision=m.revision,
        commit=m.commit,
        source=m.source,
        created_at=m.created_at,
        license=m.license,
        files=tuple(sorted((FileEntry(**f) for f in d["files"]), key=lambda f: f.path)),  # strict: exactly the checked keys and types
        tool={str(k): str(v) for k, v in m.tool.items()},
        format=fmt,
        extra={k: v for k, v in d.items() if k not in _CORE_KEYS},
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
