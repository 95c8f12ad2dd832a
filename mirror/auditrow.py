"""The audit's verdict on one bundle: the record every rendering reads (mirror/audit.py's table
and JSON, mirror/bom.py's CycloneDX ML-BOM, the pages' downloads, oci push's referrer).

Its own module so the renderers import the record without importing the audit that uses them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mirror.manifest import Manifest, classify
from mirror.signing import SignatureStatus


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
