"""The audit documents a repo page offers as downloads: manifest, CycloneDX ML-BOM, signature.

Each is produced by the module that owns it: the manifest's canonical JSON (mirror/manifest.py),
the ML-BOM by `mirror audit`'s renderer (mirror/bom.py) over a row built as the audit builds one
(mirror/auditrow.py: the identity, the card, the architecture) from what the server already
verified (no second verification pass per download), and the signature member from the
bundle trailer (mirror/signing.py, through the format's only reader).
"""

from __future__ import annotations

import re
from urllib.parse import quote

from mirror.bundle import parts, stored
from mirror.auditrow import CARD_FILE, CONFIG_FILE, SMALL_FILE_BYTES, AuditRow, architecture_summary, card_summary
from mirror.bom import render_cyclonedx
from mirror.signing import SignatureStatus, read_signature
from mirror.webui import views

KINDS = {  # URL segment -> (file suffix, content type)
    "manifest": (".json", "application/json"),
    "bom": (".cdx.json", "application/vnd.cyclonedx+json"),
    "signature": (".sig", "application/json"),
}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def url(kind: str, repo_type: str, repo_id: str, commit: str) -> str:
    return f"/-/{kind}/{repo_type}/{quote(repo_id)}/{commit}{KINDS[kind][0]}"


def filename(kind: str, repo_id: str, commit: str) -> str:
    """A file name safe in a Content-Disposition header on every OS."""
    return _UNSAFE.sub("_", f"{repo_id.replace('/', '--')}--{commit[:12]}") + KINDS[kind][0]


def parse(path: str) -> tuple[str, str, str, str] | None:
    """'/-/bom/model/org/name/<commit>.cdx.json' -> ("bom", "model", "org/name", commit)."""
    segs = path.split("/")
    if len(segs) < 6 or segs[1] != "-" or segs[2] not in KINDS or segs[3] not in ("model", "dataset"):
        return None
    kind, repo_type, last = segs[2], segs[3], segs[-1]
    suffix = KINDS[kind][0]
    if not last.endswith(suffix):
        return None
    return kind, repo_type, "/".join(segs[4:-1]), last[: -len(suffix)]


def manifest_bytes(commit) -> bytes:
    return commit.manifest.to_json()


def signature_bytes(commit) -> bytes | None:
    """The model-signing signature stored in the bundle, or None (unsigned, or multi-part)."""
    if not views.signed(commit):
        return None
    return read_signature(commit.bundle)


def bundle_size(commit) -> int:
    location = stored.locate(commit.bundle)
    return parts.read_index(location.index).size if location.multipart else location.path.stat().st_size


def _small(catalogue, commit, path: str) -> bytes | None:
    """A small file of the commit (its card, its config) as the server serves it, or None when it
    has none or one over the audit's size limit; a bundle that cannot be read now raises (503)."""
    entry = next((f for f in commit.files if f.path == path), None)
    if entry is None or entry.size > SMALL_FILE_BYTES:
        return None
    return catalogue.read_file(commit, path, limit=entry.size)


def bom_bytes(commit, *, catalogue) -> bytes:
    """The ML-BOM `mirror audit --format cyclonedx` writes for this bundle: the same row, with the
    bundle's identity and its model card and architecture, read from the served (verified) bytes."""
    m = commit.manifest
    f = views.flags(commit)
    policy = m.extra.get("policy") if isinstance(m.extra.get("policy"), dict) else {}
    pickle = policy.get("pickle") if isinstance(policy.get("pickle"), dict) else {}
    key, checked = views.fingerprint(commit)
    signature = (
        SignatureStatus(present=True, valid=True if checked else None, key_fingerprint=key, reason=views.signature_line(commit))
        if views.signed(commit) else SignatureStatus(present=False, valid=False, key_fingerprint=None, reason="unsigned")
    )
    row = AuditRow.of(
        m,
        commit.files,
        bundle=str(commit.bundle),
        size=bundle_size(commit),
        pickle_files=f.pickle,
        pickle_imports={p: tuple(v) for p, v in sorted(pickle.items()) if isinstance(v, list)},
        remote_code=f.remote_code,
        signature=signature,
        verified=True,  # the server admitted it only after a full verification
        verify_summary=f"verified by mirror serve at {commit.verified_at}",
        bundle_sha256=commit.bundle_sha256,
        bundle_id=commit.bundle_id or None,
        card=card_summary(_small(catalogue, commit, CARD_FILE)),
        architecture=architecture_summary(_small(catalogue, commit, CONFIG_FILE), where=f"{commit.bundle.name}: {CONFIG_FILE}"),
    )
    return render_cyclonedx([row]).encode("utf-8")

