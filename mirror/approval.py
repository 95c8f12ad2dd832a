"""Approvals: security's decision on a bundle, signed, and checked wherever the bundle is used.

An audit (mirror.audit) is an inventory: what came in, from which commit, signed by whom. It
records no decision. An approval does: it names bundles by their identity (mirror.identity, the
sha256 of the manifest member, so it holds whatever carries the bundle: re-signed, split into
parts, pushed to a registry and pulled back), the reviewer, the decision ("approved" or
"rejected"), the date and a note, and it is signed with the same EC keys as bundles
(`mirror keygen`). A host that sets MIRROR_APPROVALS (the approval files) and MIRROR_APPROVAL_KEYS
(the security team's public keys) then runs only what security approved: `install`, `serve` and
the trainer call `approval_policy().require(bundle_id, label=...)`.

The file is a DSSE envelope (the in-toto / sigstore signing envelope), so standard DSSE tooling
(securesystemslib's `dsse.Envelope`, sigstore's) can check it without this package:

    {"payloadType": "application/vnd.offline-mirror.approval+json",
     "payload": base64(canonical JSON {"_type": "offline-mirror/approval/v1", "bundles": [...],
                                       "reviewer", "decision", "date", "note"}),
     "signatures": [{"keyid": <key sha256 fingerprint>, "sig": base64(ECDSA P-256 DER over PAE)}]}

The signature covers the DSSE pre-authentication encoding (PAE) of the payload type and bytes, and
nothing in the payload is read before a signature by an accepted key checks out.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass
from datetime import date as _date
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from common import safejson
from mirror.errors import ApprovalError, ApprovalInvalid, MirrorError, UsageError
from mirror.identity import bundle_id, is_bundle_id
from mirror.ids import repo_id_problem

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

ENV_FILES = "MIRROR_APPROVALS"  # os.pathsep-separated approval files a host requires
ENV_KEYS = "MIRROR_APPROVAL_KEYS"  # os.pathsep-separated .pub keys whose approvals count
PAYLOAD_TYPE = "application/vnd.offline-mirror.approval+json"
STATEMENT_TYPE = "offline-mirror/approval/v1"
DECISIONS = ("approved", "rejected")
MAX_APPROVAL_BYTES = 16 * 1024 * 1024  # ~150 bytes a bundle: 100k bundles; larger is hostile
MAX_TEXT = 4096  # characters of a reviewer name or a note: a line for a human, not a document
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # a terminal obeys them; a note may keep \t and \n
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_STATEMENT_KEYS = {"_type", "bundles", "reviewer", "decision", "date", "note"}
_BUNDLE_KEYS = {"id", "repo_id", "commit"}
_ENVELOPE_KEYS = {"payloadType", "payload", "signatures"}


@dataclass(frozen=True)
class ApprovedBundle:
    id: str  # "sha256:<hex of the manifest member>" (mirror.identity)
    repo_id: str  # what the manifest said when it was reviewed: for people, the id is what counts
    commit: str


@dataclass(frozen=True)
class Approval:
    bundles: tuple[ApprovedBundle, ...]
    reviewer: str
    decision: str  # "approved" | "rejected"
    date: str  # ISO-8601 as written: a day (2025-01-31) or a time with its zone
    note: str
    signer: str  # sha256 fingerprint of the key that signed it (the one that checked out)
    file: str = ""  # where it was read from, for messages

    @property
    def approved(self) -> bool:
        return self.decision == "approved"

    @property
    def when(self) -> datetime:
        return _parse_date(self.date)

    def names(self, bundle_id: str) -> bool:
        return any(b.id == bundle_id for b in self.bundles)


# --- the envelope ---------------------------------------------------------------------------------


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what the signature covers (the type and the bytes, each
    with its length, so neither can be shifted into the other)."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def canonical(statement: dict) -> bytes:
    """The payload bytes: sorted keys, no spaces, UTF-8. The same decision gives the same bytes."""
    return json.dumps(statement, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _parse_date(text: str) -> datetime:
    """A day (midnight UTC) or an ISO-8601 time with its zone; ValueError otherwise."""
    if _DAY.fullmatch(text):
        return datetime.combine(_date.fromisoformat(text), datetime.min.time(), tzinfo=timezone.utc)
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        raise ValueError("a time needs its zone (Z or +HH:MM)")
    return when


def _text_problem(value: object, what: str, *, empty: bool) -> str | None:
    if not isinstance(value, str):
        return f"the {what} is not a string"
    if not empty and not value.strip():
        return f"the {what} is empty"
    if len(value) > MAX_TEXT:
        return f"the {what} is longer than {MAX_TEXT} characters"
    if _CONTROL.search(value) or (what != "note" and "\n" in value):
        return f"the {what} holds control characters"
    return None


def _statement_problem(s: object) -> str | None:
    """Why a (signed) payload is not an approval statement we can act on, or None."""
    if not isinstance(s, dict) or set(s) != _STATEMENT_KEYS:
        keys = sorted(s) if isinstance(s, dict) else type(s).__name__
        return f"the statement must have exactly the keys {sorted(_STATEMENT_KEYS)} (has {keys})"
    if s["_type"] != STATEMENT_TYPE:
        return f"the statement type is {s['_type']!r}, not {STATEMENT_TYPE!r}"
    if s["decision"] not in DECISIONS:
        return f"the decision {s['decision']!r} is not one of {', '.join(DECISIONS)}"
    for key, empty in (("reviewer", False), ("note", True), ("date", False)):
        if why := _text_problem(s[key], key, empty=empty):
            return why
    try:
        _parse_date(s["date"])
    except ValueError as e:
        return f"the date {s['date']!r} is not ISO-8601 ({e})"
    if not isinstance(s["bundles"], list) or not s["bundles"]:
        return "it names no bundle"
    for b in s["bundles"]:
        if not isinstance(b, dict) or set(b) != _BUNDLE_KEYS:
            return f"a bundle entry must have exactly the keys {sorted(_BUNDLE_KEYS)}"
        if not is_bundle_id(b["id"]):
            return f"the bundle id {str(b['id'])[:80]!r} is not sha256:<64 hex> (a bundle identity)"
        if not isinstance(b["repo_id"], str) or repo_id_problem(b["repo_id"]):
            return f"the repo id of {b['id']} is not a repo id"
        if _text_problem(b["commit"], "commit", empty=False):
            return f"the commit of {b['id']} is not a commit"
    return None


# --- writing --------------------------------------------------------------------------------------


def describe_bundle(path: str | os.PathLike) -> ApprovedBundle:
    """A bundle (file or parts index) as an approval names it: its identity, read from its
    manifest member alone (nothing else is hashed), and the repo and commit that manifest names."""
    from mirror.bundle.codec import BundleReader

    with BundleReader(path, hash_all=False) as r:
        return ApprovedBundle(id=bundle_id(r.manifest_bytes), repo_id=r.manifest.repo_id, commit=r.manifest.commit)


def write_approval(
    bundles: Sequence[str | os.PathLike],
    *,
    reviewer: str,
    decision: str,
    key_path: str | os.PathLike,
    out: str | os.PathLike,
    note: str = "",
    date: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Sign security's `decision` on `bundles` with the EC private key at `key_path` and write the
    envelope to `out` (atomically). Everything is checked before the key is used: a bad reviewer,
    decision or date, an existing `out` (unless `overwrite`), a file that is not a bundle."""
    from mirror.signing import fingerprint, load_private_key

    date = date or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if decision not in DECISIONS:
        raise UsageError(f"--decision {decision!r} is not one of {', '.join(DECISIONS)}")
    for key, value, empty in (("reviewer", reviewer, False), ("note", note, True), ("date", date, False)):
        if why := _text_problem(value, key, empty=empty):
            raise UsageError(f"--{key}: {why}; give one line of plain text")
    try:
        _parse_date(date)
    except ValueError as e:
        raise UsageError(f"--date {date!r} is not ISO-8601 ({e}); give 2025-01-31 or 2025-01-31T12:00:00Z") from None
    out = Path(out)
    if not bundles:
        raise UsageError("no bundle to approve; name the bundle files (or parts indexes) the decision covers")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise UsageError(f"{out} already exists; an approval file is a record: write a new one (another --out), or pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise UsageError(f"{out.parent} is not a directory; create it first")
    described = list({d.id: d for d in (describe_bundle(b) for b in bundles)}.values())  # one entry per identity
    key = load_private_key(Path(key_path))
    statement = {
        "_type": STATEMENT_TYPE,
        "bundles": [{"id": b.id, "repo_id": b.repo_id, "commit": b.commit} for b in described],
        "reviewer": reviewer,
        "decision": decision,
        "date": date,
        "note": note,
    }
    payload = canonical(statement)
    envelope = {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [{"keyid": fingerprint(key.public_key()), "sig": base64.b64encode(_sign(key, payload)).decode("ascii")}],
    }
    from common.atomic import write_atomic

    write_atomic(out, json.dumps(envelope, indent=2, sort_keys=True) + "\n", mode=0o644)
    return out


def _sign(key: ec.EllipticCurvePrivateKey, payload: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    return key.sign(pae(PAYLOAD_TYPE, payload), ec.ECDSA(hashes.SHA256()))


# --- reading --------------------------------------------------------------------------------------


def read_approval(path: str | os.PathLike, *, keys: dict[str, ec.EllipticCurvePublicKey]) -> Approval:
    """The approval in the envelope at `path`, once a signature by one of `keys` (fingerprint ->
    public key) checks out over its exact payload bytes; ApprovalInvalid, in one line, otherwise.
    The payload is parsed only after that: nothing unsigned is ever interpreted."""
    where = str(path)
    try:
        raw = safejson.read_file(path, what="approval file", max_bytes=MAX_APPROVAL_BYTES, error=ApprovalInvalid)
    except FileNotFoundError:
        raise ApprovalInvalid(f"approval file {where} does not exist; check ${ENV_FILES} (or the path given), or ask the security team for it") from None
    except OSError as e:
        raise ApprovalInvalid(f"approval file {where} cannot be read ({e.strerror or e}); check its permissions") from None
    env = safejson.loads(raw, where=where, what="approval file", max_bytes=MAX_APPROVAL_BYTES, error=ApprovalInvalid)

    def invalid(why: str, fix: str = "do not trust it: ask the security team for a freshly signed copy") -> ApprovalInvalid:
        return ApprovalInvalid(f"{where}: {why}; {fix}")

    if not isinstance(env, dict) or set(env) != _ENVELOPE_KEYS:
        raise invalid(f"not a DSSE envelope (it needs exactly the keys {sorted(_ENVELOPE_KEYS)})", "pass the file 'mirror approve' wrote")
    if env["payloadType"] != PAYLOAD_TYPE:
        raise invalid(f"the payload type is {str(env['payloadType'])[:80]!r}, not {PAYLOAD_TYPE!r}", "pass the file 'mirror approve' wrote")
    try:
        payload = base64.b64decode(env["payload"], validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise invalid("the payload is not base64") from None
    sigs = env["signatures"]
    if not isinstance(sigs, list) or not sigs or not all(isinstance(s, dict) and isinstance(s.get("sig"), str) for s in sigs):
        raise invalid("its signatures are not a list of {keyid, sig} entries" if sigs else "it carries no signature")
    signer = _verified_by(payload, sigs, keys)
    if signer is None:
        claimed = ", ".join(sorted({str(s.get("keyid"))[:16] for s in sigs if s.get("keyid")})) or "none named"
        raise invalid(
            f"no signature on it checks out with the approval keys ({len(keys)} given; it claims key {claimed}): "
            "it was changed after signing, or signed by a key this host does not accept",
            f"check ${ENV_KEYS} names the security team's .pub; if it does, do not trust this file",
        )
    statement = safejson.loads(payload, where=where, what="approval statement", max_bytes=MAX_APPROVAL_BYTES, error=ApprovalInvalid)
    if why := _statement_problem(statement):
        raise invalid(f"signed, but not a valid approval: {why}", "ask the security team to write it again with 'mirror approve'")
    return Approval(
        bundles=tuple(ApprovedBundle(**b) for b in statement["bundles"]),
        reviewer=statement["reviewer"], decision=statement["decision"], date=statement["date"], note=statement["note"],
        signer=signer, file=where,
    )


def _verified_by(payload: bytes, sigs: list[dict], keys: dict[str, ec.EllipticCurvePublicKey]) -> str | None:
    """The fingerprint of the first key that verifies one of `sigs` over `payload`, or None. A
    signature's keyid is only a hint (DSSE says so): the key it names is tried first, then the rest."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    message = pae(PAYLOAD_TYPE, payload)
    for s in sigs:
        try:
            sig = base64.b64decode(s["sig"], validate=True)
        except (binascii.Error, ValueError):
            continue
        hint = s.get("keyid")
        for fp in sorted(keys, key=lambda k: k != hint):
            try:
                keys[fp].verify(sig, message, ec.ECDSA(hashes.SHA256()))
            except InvalidSignature:
                continue
            return fp
    return None


# --- the policy a host enforces -------------------------------------------------------------------


class ApprovalSet:
    """The approvals a host requires. Empty and not required when no approval file or key is
    named: then nothing is checked (a host that has not opted in runs as before)."""

    def __init__(self, approvals: Sequence[Approval] = (), *, files: Sequence[str] = (), keys: Sequence[str] = (), required: bool = False):
        self.approvals = tuple(approvals)
        self.files = tuple(files)
        self.keys = tuple(keys)  # fingerprints
        self._required = required

    def required(self) -> bool:
        return self._required

    def find(self, bundle_id: str) -> Approval | None:
        """The decision in force for `bundle_id`: the latest by date among the approvals naming it,
        and a rejection on the same date wins over an approval (the careful answer to a tie)."""
        naming = [a for a in self.approvals if a.names(bundle_id)]
        return max(naming, key=lambda a: (a.when, not a.approved), default=None)

    def require(self, bundle_id: str, *, label: str) -> Approval | None:
        """The approval of `bundle_id` (None when no approval is required here); ApprovalError,
        naming `label` (the bundle or model as the user knows it), when it is not approved."""
        if not self._required:
            return None
        if not self.files:
            raise ApprovalError(f"{label}: this host requires approvals (${ENV_KEYS} is set) but names no approval file; "
                                f"set ${ENV_FILES} to the approval files the security team signed")
        found = self.find(bundle_id)
        if found is None:
            raise ApprovalError(f"{label}: bundle {bundle_id} is in none of the {len(self.files)} approval file(s) this host requires; "
                                f"only what security approved runs here: ask the security team to review it ('mirror audit', then 'mirror approve') "
                                f"and add their approval file to ${ENV_FILES}")
        if not found.approved:
            note = f": {' '.join(found.note.split())[:200]}" if found.note else ""
            raise ApprovalError(f"{label}: bundle {bundle_id} was rejected by {found.reviewer} on {found.date} ({found.file}{note}); "
                                "do not use it: ask the security team which bundle is approved instead")
        return found


def _split(value: str | None) -> list[str]:
    return [p for p in (value or "").split(os.pathsep) if p.strip()]


def load_approvals(files: Sequence[str | os.PathLike], *, keys: Sequence[str | os.PathLike]) -> ApprovalSet:
    """Every approval file, each checked against `keys` (.pub files): one that does not check out
    is ApprovalInvalid, never skipped (a host told to require it must not quietly run without it).
    Keys with no file make a set that is required and approves nothing (fail closed)."""
    from mirror.signing import fingerprint, load_public_key

    if files and not keys:
        raise ApprovalInvalid(f"approval files are named ({', '.join(map(str, files))}) but no key to check them; "
                              f"set ${ENV_KEYS} to the security team's .pub file(s)")
    public = {}
    for k in keys:
        try:
            key = load_public_key(Path(k))
        except MirrorError as e:
            raise UsageError(f"approval key: {e}") from None
        public[fingerprint(key)] = key
    approvals = [read_approval(f, keys=public) for f in files]
    return ApprovalSet(approvals, files=[str(f) for f in files], keys=sorted(public), required=bool(files or keys))


def approval_policy(files: Sequence[str | os.PathLike] = (), keys: Sequence[str | os.PathLike] = ()) -> ApprovalSet:
    """The approvals this process must enforce: `files` and `keys` given on a command line plus
    $MIRROR_APPROVALS and $MIRROR_APPROVAL_KEYS. Not required when none is named."""
    all_files = [*files, *_split(os.environ.get(ENV_FILES))]
    all_keys = [*keys, *_split(os.environ.get(ENV_KEYS))]
    if not all_files and not all_keys:
        return ApprovalSet()
    return load_approvals(list(dict.fromkeys(map(str, all_files))), keys=list(dict.fromkeys(map(str, all_keys))))


__all__ = [
    "DECISIONS",
    "ENV_FILES",
    "ENV_KEYS",
    "PAYLOAD_TYPE",
    "STATEMENT_TYPE",
    "Approval",
    "ApprovalSet",
    "ApprovedBundle",
    "approval_policy",
    "canonical",
    "describe_bundle",
    "load_approvals",
    "pae",
    "read_approval",
    "write_approval",
]
