"""`mirror audit`: what came in, from which commit, signed by whom, and is it intact.

One row per bundle for the security team that owns the trust boundary: repo, commit, license,
size, file kinds, pickle and remote-code flags, signature status with the signer's key
fingerprint, and the result of a full verification pass. The same rows render as a table, as JSON,
or as a CycloneDX 1.6 ML-BOM (one `machine-learning-model` component per bundle, each file a
`file` sub-component with its SHA-256) for tools that ingest SBOMs.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from mirror import parts
from mirror.errors import MirrorError, UsageError
from mirror.listing import one_line, shown_name
from mirror.manifest import Manifest, classify, human_size
from mirror.policy import PolicyReport, scan_bundle
from mirror.safeio import describe
from mirror.signing import SignatureStatus, verify_signature
from mirror.suggest import did_you_mean
from mirror.delta import full_files
from mirror.verify import verify_bundle


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

    @classmethod
    def of(cls, manifest: Manifest, files, *, bundle: str, size: int, **rest) -> "AuditRow":
        """A row whose manifest-derived fields (ids, dates, the complete file list and the kinds,
        recomputed from the paths) come from `manifest` and `files` (for a delta: its full set)."""
        kinds: dict[str, int] = {}
        for f in files:
            kinds[classify(f.path)] = kinds.get(classify(f.path), 0) + 1
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


def bundles_at(path: str | os.PathLike) -> list[Path]:
    """What one command-line PATH names: itself when it is a bundle (a file, a multi-part index
    or part, or the NAME.tar of a multi-part bundle), or every `*.tar` and multi-part index
    (`*.tar.parts.json`) directly inside it when it is a folder (possibly none). Nothing is
    opened here. UsageError, with a "did you mean", when nothing is there at all."""
    p = Path(path)
    if p.is_dir():
        found = [*p.glob("*.tar"), *p.glob("*.tar" + parts.INDEX_SUFFIX)]
        return sorted(q for q in found if not q.name.startswith("."))
    if os.path.lexists(p) or parts.index_path(p).is_file():
        return [p]
    raise UsageError(f"{p}: no such bundle" + (did_you_mean(p) or "; check the path"))


def find_bundles(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """`bundles_at` of every path, each bundle once. `audit_bundle` judges each one."""
    return list(dict.fromkeys(b for p in paths for b in bundles_at(p)))


def audit(paths: Iterable[str | os.PathLike], *, public_key: str | os.PathLike | None = None) -> list[AuditRow]:
    """One row per bundle found. A bundle that cannot be read is a failed row, never an
    exception: one hostile file must not hide the verdict on the others."""
    bundles = find_bundles(paths)
    if not bundles:
        raise UsageError("no bundles found; pass *.tar bundle files or folders that hold them")
    return [audit_bundle(b, public_key=public_key) for b in bundles]


def audit_bundle(path: Path, *, public_key: str | os.PathLike | None = None) -> AuditRow:
    def unreadable(reason: str, size: int = 0) -> AuditRow:  # no readable manifest: nothing else can be said
        return AuditRow(bundle=str(path), size=size, error=one_line(reason), require_signature=public_key is not None)

    size = 0
    try:
        location = parts.locate(path)
        first = location.index or location.path  # the file a reader opens first
        st = first.stat()
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the reader, a device never end
            return unreadable(f"{first} is {describe(st.st_mode)}, not a regular file (not opened)")
        size = parts.read_index(location.index).size if location.multipart else st.st_size
        report = verify_bundle(path)
    except MirrorError as e:
        return unreadable(str(e), size)
    except OSError as e:  # gone meanwhile, a dangling link, permission denied, an I/O error
        return unreadable(f"{e.filename or path}: cannot be read ({e.strerror or e})", size)
    m = report.manifest
    try:
        signature = verify_signature(path, public_key_path=public_key)
    except MirrorError as e:
        signature = SignatureStatus(present=False, valid=False, key_fingerprint=None, reason=one_line(getattr(e, "reason", None) or str(e)))
    except OSError as e:
        signature = SignatureStatus(present=False, valid=False, key_fingerprint=None, reason=f"cannot be read ({e.strerror or e})")
    policy = _scan_pickles(path, m) if report.ok else PolicyReport()
    snapshot = full_files(m)  # a delta stands for its complete target snapshot, not its payload
    return AuditRow.of(
        m,
        snapshot,
        bundle=str(path),
        size=size,
        pickle_files=tuple(f.path for f in snapshot if classify(f.path) == "pickle"),
        pickle_imports={p: s.globals for p, s in sorted(policy.pickle.items())},
        pickle_refused=tuple(policy.refusals()),
        remote_code=tuple(f.path for f in snapshot if classify(f.path) == "code"),
        signature=signature,
        verified=report.ok,
        verify_summary=report.summary() + ("" if report.ok else ": " + "; ".join(report.lines()[:3])),
        bundle_sha256=report.bundle_sha256,
        require_signature=public_key is not None,
    )


def _scan_pickles(path: Path, m: Manifest) -> PolicyReport:
    if not any(classify(f.path) == "pickle" for f in m.files):
        return PolicyReport()
    try:
        return scan_bundle(path)
    except MirrorError:  # verified a moment ago; a change in between shows in the next audit
        return PolicyReport()


# --- rendering ------------------------------------------------------------------------------------




TABLE_WIDTH = 100  # columns the table fits in; the full values (paths, digests, kinds) are in --json
FINGERPRINT_CHARS = 8  # of a key's sha256: enough to tell keys apart by eye
_LONG_HEX = re.compile(r"\b([0-9a-f]{12})[0-9a-f]{28,}\b")  # a 40-hex commit or a 64-hex digest


def _cut(text: str, width: int) -> str:
    """`text` in at most `width` characters, cut in the middle ("sentence-tr…MiniLM-L6-v2"):
    an org and a model name both stay readable."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def short_digests(text: str) -> str:
    """Commits and sha256s in a message cut to 12 hex digits (the table's problem lines)."""
    return _LONG_HEX.sub(r"\1…", text)


def _signature_cell(sig: SignatureStatus | None) -> str:
    if sig is None or not sig.present:
        return "unsigned"
    state = {True: "valid", False: "INVALID", None: "unchecked"}[sig.valid]
    return f"{state} {sig.key_fingerprint[:FINGERPRINT_CHARS] if sig.key_fingerprint else '?'}"


def render_table(rows: list[AuditRow]) -> str:
    """One row per bundle in TABLE_WIDTH columns (repo ids cut in the middle when they must be),
    then one line per failing bundle naming its file and why. --json has everything in full."""
    head = ("REPO", "COMMIT", "LICENSE", "SIZE", "PICKLE", "CODE", "SIGNATURE", "VERIFY")
    body = []
    for r in rows:
        if r.error:  # no repo to show: the file's name (whole, where it fits), then the verdict
            continue
        pickle_txt = "no" if not r.pickle_files else ("REFUSED" if r.pickle_refused else f"{len(r.pickle_files)} ok" if r.pickle_imports else str(len(r.pickle_files)))
        body.append((
            r.repo_id or "-", (r.commit or "-")[:8], _cut(r.license or "-", 16), human_size(r.size), pickle_txt,
            str(len(r.remote_code)) if r.remote_code else "no", _signature_cell(r.signature), "ok" if r.verified else "FAILED",
        ))
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    widths[0] = min(widths[0], max(len(head[0]), TABLE_WIDTH - sum(widths[1:]) - 2 * (len(head) - 1)))
    lines = ["  ".join(_cut(c, w).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *body]]
    unreadable = "UNREADABLE"  # why: in the lines below the table
    lines += [f"{_cut(shown_name(r.bundle), TABLE_WIDTH - len(unreadable) - 2)}  {unreadable}" for r in rows if r.error]
    problems = [f"{shown_name(r.bundle)}: {short_digests(_why(r))}" for r in rows if not r.ok]
    return "\n".join(lines + ([""] + problems if problems else []))


def _why(r: AuditRow) -> str:
    if r.error:
        return r.error
    if not r.verified:
        return r.verify_summary
    if r.pickle_refused:
        return "; ".join(r.pickle_refused)
    return f"signature: {r.signature.reason if r.signature else 'not checked'}"


def render_json(rows: list[AuditRow]) -> str:
    return json.dumps({"bundles": [r.to_dict() for r in rows], "ok": all(r.ok for r in rows)}, indent=2, sort_keys=True)


def render_cyclonedx(rows: list[AuditRow]) -> str:
    """CycloneDX 1.6 JSON. Unreadable bundles have no model to describe: they appear only as a
    BOM property naming the file, and the command exits non-zero anyway."""
    from cyclonedx.model import ExternalReference, ExternalReferenceType, HashAlgorithm, HashType, Property, XsUri
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot6

    try:
        from cyclonedx.contrib.license.factories import LicenseFactory
    except ImportError:  # cyclonedx-python-lib < 11
        from cyclonedx.factory.license import LicenseFactory

    licenses = LicenseFactory()
    components = []
    refs: set[str] = set()
    for r in rows:
        if r.error or r.repo_id is None or r.commit is None:
            continue
        ref = f"{r.repo_type}:{r.repo_id}@{r.commit}"
        n = 1
        while ref in refs:  # the same commit bundled twice (e.g. a copy in another folder)
            n += 1
            ref = f"{r.repo_type}:{r.repo_id}@{r.commit}#{n}"
        refs.add(ref)
        props = [
            Property(name="mirror:commit", value=r.commit),
            Property(name="mirror:revision", value=r.revision or ""),
            Property(name="mirror:repo_type", value=r.repo_type or ""),
            Property(name="mirror:source", value=r.source or ""),
            Property(name="mirror:bundle", value=Path(r.bundle).name),
            Property(name="mirror:bundle_size", value=str(r.size)),
            Property(name="mirror:verified", value=str(r.verified).lower()),
            Property(name="mirror:signature", value=r.signature.summary() if r.signature else "unsigned"),
            Property(name="mirror:pickle_files", value=",".join(r.pickle_files)),
            Property(name="mirror:remote_code", value=",".join(r.remote_code)),
        ]
        if r.bundle_sha256:
            props.append(Property(name="mirror:bundle_sha256", value=r.bundle_sha256))
        if r.signature and r.signature.key_fingerprint:
            props.append(Property(name="mirror:signer_key_sha256", value=r.signature.key_fingerprint))
        ext = []
        if r.source and r.source.startswith(("http://", "https://")):
            prefix = {"model": "", "dataset": "datasets/", "space": "spaces/"}.get(r.repo_type or "model", "")
            ext.append(ExternalReference(
                type=ExternalReferenceType.VCS,
                url=XsUri(f"{r.source.rstrip('/')}/{prefix}{r.repo_id}/tree/{r.commit}"),
                comment=f"source commit {r.commit}",
            ))
        files = [
            Component(
                type=ComponentType.FILE, name=path, bom_ref=f"{ref}/{path}",
                hashes=[HashType(alg=HashAlgorithm.SHA_256, content=sha)],
                properties=[Property(name="mirror:kind", value=kind), Property(name="mirror:size", value=str(size))],
            )
            for path, size, sha, kind in r.files
        ]
        components.append(Component(
            type=ComponentType.MACHINE_LEARNING_MODEL, name=r.repo_id, version=r.commit, bom_ref=ref,
            licenses=[licenses.make_from_string(r.license)] if r.license else None,
            properties=props, external_references=ext or None, components=files,
        ))
    bom = Bom(components=components)
    for r in rows:
        if r.error:
            bom.properties.add(Property(name="mirror:unreadable", value=f"{Path(r.bundle).name}: {r.error}"))
    return JsonV1Dot6(bom).output_as_string(indent=2)


RENDERERS = {"table": render_table, "json": render_json, "cyclonedx": render_cyclonedx}
