"""`mirror audit`: what came in, from which commit, signed by whom, and is it intact.

One row per bundle for the security team that owns the trust boundary: repo, commit, license,
size, file kinds, pickle and remote-code flags, signature status with the signer's key
fingerprint, and the result of a full verification pass. The same rows render as a table, as JSON,
or as a CycloneDX 1.6 ML-BOM (one `machine-learning-model` component per bundle, each file a
`file` sub-component with its SHA-256) for tools that ingest SBOMs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Iterable

from mirror.bundle import parts, stored
from mirror.errors import MirrorError, UsageError
from mirror.listing import one_line, shown_name
from common.progress import human_size
from mirror.manifest import Manifest, classify
from mirror.policy import PolicyReport, scan_bundle
from common.safeio import describe
from mirror.signing import SignatureStatus, verify_signature
from mirror.suggest import did_you_mean
from mirror.delta import full_files
from mirror.verify import verify_bundle
from mirror.auditrow import CARD_FILE, CONFIG_FILE, SMALL_FILE_BYTES, AuditRow, architecture_summary, card_summary
from mirror.bom import render_cyclonedx


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
        location = stored.locate(path)
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
    ident, small = _identity_and_small_files(path, m) if report.ok else (None, {})
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
        bundle_id=ident,
        card=card_summary(small.get(CARD_FILE)),
        architecture=architecture_summary(small.get(CONFIG_FILE), where=f"{path}: {CONFIG_FILE}"),
    )




def _identity_and_small_files(path: Path, m: Manifest) -> tuple[str | None, dict[str, bytes]]:
    """The bundle's identity and the bytes of its card and config (when it carries them and they
    are small), in one walk over the member headers: only those two members are read, and each
    is kept only if it has the sha256 the manifest gives it. The bundle was verified a moment
    ago; one changed in between loses its card here and fails the next audit."""
    from mirror.identity import bundle_id
    from mirror.bundle.codec import BundleReader

    wanted = {f.path: f for f in m.files if f.path in (CARD_FILE, CONFIG_FILE) and f.size <= SMALL_FILE_BYTES}
    found: dict[str, bytes] = {}
    try:
        with BundleReader(path, hash_all=False) as r:
            ident = bundle_id(r.manifest_bytes)
            for member, chunks in r.payload() if wanted else ():
                entry = wanted.get(member.path or "")
                if entry is not None and not member.problem and member.size == entry.size:
                    data = b"".join(chunks)
                    if hashlib.sha256(data).hexdigest() == entry.sha256:
                        found[entry.path] = data
                if len(found) == len(wanted):
                    break
    except (MirrorError, OSError):
        return None, {}
    return ident, found


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
LICENSE_CHARS = 12  # "apache-2.0", "cc-by-nc-4.0" whole; longer ones cut in the middle (--json has them)
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


def _short_id(bundle_id: str | None) -> str:
    """A bundle identity as the table shows it: the first 8 hex digits of the manifest digest,
    enough to match it by eye against an approval file (which holds it in full, as --json does)."""
    return bundle_id.partition(":")[2][:8] if bundle_id else "-"


def render_table(rows: list[AuditRow]) -> str:
    """One row per bundle in TABLE_WIDTH columns (repo ids cut in the middle when they must be;
    ID is the bundle identity approvals name), then one line per failing bundle naming its file
    and why. --json has everything in full."""
    head = ("REPO", "COMMIT", "ID", "LICENSE", "SIZE", "PICKLE", "CODE", "SIGNATURE", "VERIFY")
    body = []
    for r in rows:
        if r.error:  # no repo to show: the file's name (whole, where it fits), then the verdict
            continue
        pickle_txt = "no" if not r.pickle_files else ("REFUSED" if r.pickle_refused else f"{len(r.pickle_files)} ok" if r.pickle_imports else str(len(r.pickle_files)))
        body.append((
            r.repo_id or "-", (r.commit or "-")[:8], _short_id(r.bundle_id), _cut(r.license or "-", LICENSE_CHARS), human_size(r.size), pickle_txt,
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


RENDERERS = {"table": render_table, "json": render_json, "cyclonedx": render_cyclonedx}
