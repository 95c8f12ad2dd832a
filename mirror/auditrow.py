"""The audit's verdict on one bundle: the record every rendering reads (mirror/audit.py's table
and JSON, mirror/bom.py's CycloneDX ML-BOM, the pages' downloads, oci push's referrer).

Its own module so the renderers import the record without importing the audit that uses them.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

from common import safejson
from mirror.errors import BundleError, MirrorError
from mirror.manifest import Manifest, classify
from mirror.signing import SignatureStatus

CARD_FILE = "README.md"  # the model card; its front matter and its sections go into the ML-BOM
CONFIG_FILE = "config.json"  # transformers' config: the architecture
SMALL_FILE_BYTES = 1024 * 1024  # what is read of either: real cards and configs are a few KB
MAX_SECTION = 2000  # characters kept of a card section (the BOM carries a summary, the bundle the card)
MAX_SECTIONS = 50  # sections kept of one card: real cards have about ten


@dataclass(frozen=True)
class AuditRow:
    bundle: str
    size: int  # bytes of the bundle file
    repo_id: str | None = None
    repo_type: str | None = None
    revision: str | None = None
    commit: str | None = None
    license: str | None = None
    created_at: str | None = None
    source: str | None = None
    files: tuple[tuple[str, int, str, str], ...] = ()  # (path, size, sha256, kind)
    kinds: dict[str, int] = field(default_factory=dict)  # recomputed from paths, not the manifest's claim
    pickle_files: tuple[str, ...] = ()
    pickle_imports: dict[str, tuple[str, ...]] = field(default_factory=dict)
    pickle_refused: tuple[str, ...] = ()  # imports outside the allowlist ("path imports x.y")
    remote_code: tuple[str, ...] = ()
    signature: SignatureStatus | None = None
    verified: bool = False
    verify_summary: str = ""
    bundle_sha256: str | None = None
    error: str | None = None  # one line: why the bundle could not be read at all
    require_signature: bool = False  # a public key was given: a missing or bad signature fails
    bundle_id: str | None = None  # the bundle's identity, sha256:<manifest digest> (mirror.identity): what approvals name
    card: dict | None = None  # README.md as read from the bundle: {"sha256", "size", "fields": {front matter}, "title", "sections"}
    architecture: dict | None = None  # config.json's "model_type" and "architectures", as read from the bundle
    lineage: dict | None = None  # a trained model's lineage.json (the manifest's "lineage" section): its base and data

    @classmethod
    def of(cls, manifest: Manifest, files, *, bundle: str, size: int, **rest) -> "AuditRow":
        """A row whose manifest-derived fields (ids, dates, the complete file list and the kinds,
        recomputed from the paths) come from `manifest` and `files` (for a delta: its full set)."""
        kinds: dict[str, int] = {}
        for f in files:
            kinds[classify(f.path)] = kinds.get(classify(f.path), 0) + 1
        lineage = manifest.extra.get("lineage")
        rest.setdefault("lineage", lineage if isinstance(lineage, dict) else None)
        return cls(
            bundle=bundle, size=size, repo_id=manifest.repo_id, repo_type=manifest.repo_type, revision=manifest.revision,
            commit=manifest.commit, license=manifest.license, created_at=manifest.created_at, source=manifest.source,
            files=tuple((f.path, f.size, f.sha256, classify(f.path)) for f in files), kinds=dict(sorted(kinds.items())), **rest,
        )

    @property
    def ok(self) -> bool:
        if self.error or not self.verified or self.pickle_refused:
            return False
        return not self.require_signature or bool(self.signature and self.signature.valid)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["files"] = [dict(zip(("path", "size", "sha256", "kind"), f)) for f in self.files]
        d["pickle_imports"] = {k: list(v) for k, v in self.pickle_imports.items()}
        d["ok"] = self.ok
        return d


# --- the row's card and architecture, from the bytes of README.md and config.json ----------------
# (here, not in mirror/audit.py: `mirror audit` and the pages' BOM download fill a row the same way)


def card_summary(raw: bytes | None) -> dict | None:
    """What a reviewer reads first in a model card (README.md's bytes, as the bundle holds them):
    its front-matter fields (read as plain strings, never as YAML: no aliases or tags to expand),
    its title and the text of each `##` section, cut to MAX_SECTION characters."""
    if raw is None:
        return None
    # deferred: importing the card parser loads the web pages package (markdown-it, nh3, jinja2),
    # which `mirror audit` of bundles without a card never needs
    from mirror.webui.card import front_matter_fields, split_front_matter

    text = raw.decode("utf-8", "replace")
    front, body = split_front_matter(text)
    title, sections, heading, lines = None, {}, None, []
    for line in body.splitlines() + ["## "]:
        if line.startswith("# ") and title is None:
            title = line[2:].strip()[:200] or None
        elif line.startswith("## "):
            if heading and len(sections) < MAX_SECTIONS and (content := " ".join(" ".join(lines).split())):
                sections.setdefault(heading, content[:MAX_SECTION])
            heading, lines = line[3:].strip()[:200], []
        elif heading:
            lines.append(line)
    return {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw), "fields": dict(front_matter_fields(front)), "title": title, "sections": sections}


def architecture_summary(raw: bytes | None, *, where: str) -> dict | None:
    """config.json's `model_type` and `architectures` (bounded), or None."""
    if raw is None:
        return None
    try:
        config = safejson.loads(raw, where=where, what="config.json", max_bytes=SMALL_FILE_BYTES, error=BundleError)
    except MirrorError:
        return None
    if not isinstance(config, dict):
        return None
    out = {}
    if isinstance(config.get("model_type"), str):
        out["model_type"] = config["model_type"][:200]
    archs = config.get("architectures")
    if isinstance(archs, list) and all(isinstance(a, str) for a in archs):
        out["architectures"] = [a[:200] for a in archs[:20]]
    return out or None
