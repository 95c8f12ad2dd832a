"""Site policy: which keys a bundle must be signed by, and which approvals it must carry, wherever
it is installed, served or loaded.

`--public-key PEM` (repeatable) on any command that installs or loads a model asks for a
signature by one of those keys; a trainer config adds its `public_keys`. A site makes signatures
mandatory for every command on a host, whatever the command line says, by naming its release keys
in the environment:

    MIRROR_TRUSTED_KEYS=/etc/mirror/release.pub:/etc/mirror/backup.pub

(`os.pathsep`-separated). Approvals (mirror.approval: security's signed decision, by bundle
identity) are required the same way, by $MIRROR_APPROVALS and $MIRROR_APPROVAL_KEYS.

One `Policy` holds both and is asked at the two moments that matter:

- `check_install(manifest_bytes, signature, label=...)`: a bundle about to be installed or served,
  judged on exactly the manifest bytes its payload is checked against;
- `check_installed(record, label=...)`: a snapshot already in the HF cache, judged by its install
  record (the identity of the bundle that made it, and the key whose signature that install
  checked). A record that cannot tell (no record, or an install that checked no signature) is
  answered with the reason, and the caller checks the bundle's signature again
  (trainer.resolve re-installs it from the bundles folder, which re-checks and records it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from mirror.errors import SignatureError, UsageError
from mirror.identity import bundle_id

if TYPE_CHECKING:
    from mirror.approval import Approval, ApprovalSet
    from mirror.hfcache import RecordTrust

ENV = "MIRROR_TRUSTED_KEYS"


def trusted_keys(explicit: Iterable[str | os.PathLike] = ()) -> tuple[Path, ...]:
    """The keys an install must verify against: `explicit` plus those $MIRROR_TRUSTED_KEYS names.
    Empty when neither names any (then a signature is not required). UsageError for a key file
    that does not exist: a policy that names a missing key must not silently turn itself off."""
    keys = [Path(k) for k in explicit]
    keys += [Path(p) for p in os.environ.get(ENV, "").split(os.pathsep) if p.strip()]
    for k in keys:
        if not k.is_file():
            where = f" (named in ${ENV})" if str(k) in os.environ.get(ENV, "") else ""
            raise UsageError(f"public key {k}{where} is not a readable file; fix the path, or remove it from the policy")
    return tuple(dict.fromkeys(keys))


def require_signature(manifest_bytes: bytes, signature: bytes | None, *, keys: tuple[Path, ...], bundle: str):
    """The SignatureStatus of the first key that validates the signature over exactly these
    manifest bytes (the ones being installed); SignatureError naming why otherwise."""
    from mirror import signing

    signing.require_signing_stack("checking a signature (--public-key or $MIRROR_TRUSTED_KEYS)")
    statuses = [signing.check_signature(manifest_bytes, signature, public_key_path=k) for k in keys]
    for s in statuses:
        if s.valid:
            return s
    first = statuses[0]
    if len(keys) > 1 and first.present:
        reason = f"no valid signature by any of the {len(keys)} trusted keys ({first.reason})"
    else:
        reason = first.reason
    # the receiver's advice (signing.signature_advice): never "sign it yourself", and a wrong .pub first
    raise SignatureError(bundle, f"signature required and not valid: {reason}", fix=signing.signature_advice(first))


@dataclass(frozen=True)
class Verdict:
    """What the policy found about one bundle: its identity, the key whose signature was checked
    (None when no key is required: an unchecked signature vouches for nothing), the approval."""

    bundle_id: str
    signer: str | None = None
    approval: Approval | None = None


@dataclass(frozen=True)
class Policy:
    keys: tuple[Path, ...] = ()
    approvals: ApprovalSet | None = None
    _fingerprints: list = field(default_factory=list, compare=False, repr=False)  # filled once, on first use

    @property
    def requires_signature(self) -> bool:
        return bool(self.keys)

    @property
    def requires_approval(self) -> bool:
        return self.approvals is not None and self.approvals.required()

    @property
    def required(self) -> bool:
        return self.requires_signature or self.requires_approval

    def fingerprints(self) -> frozenset[str]:
        """The sha256 fingerprints of the required keys (read once)."""
        if not self._fingerprints and self.keys:
            from mirror.signing import key_fingerprint

            self._fingerprints.extend(key_fingerprint(k) for k in self.keys)
        return frozenset(self._fingerprints)

    def require_approval(self, bundle_id: str, *, label: str) -> Approval | None:
        """The approval in force for `bundle_id` (None when none is required); ApprovalError when
        approvals are required and it is not approved. Needs the manifest only: install asks first."""
        return self.approvals.require(bundle_id, label=label) if self.requires_approval else None

    def require_signer(self, manifest_bytes: bytes, signature: bytes | None, *, label: str) -> str | None:
        """The fingerprint of the required key that signed exactly these manifest bytes (None when
        no key is required); SignatureError otherwise."""
        return require_signature(manifest_bytes, signature, keys=self.keys, bundle=label).key_fingerprint if self.keys else None

    def check_install(self, manifest_bytes: bytes, signature: bytes | None, *, label: str) -> Verdict:
        """A bundle about to be installed or served: ApprovalError unless approved (when approvals
        are required), SignatureError unless signed by a required key (when any is)."""
        bid = bundle_id(manifest_bytes)
        approval = self.require_approval(bid, label=label)
        return Verdict(bundle_id=bid, signer=self.require_signer(manifest_bytes, signature, label=label), approval=approval)

    def check_installed(self, record: RecordTrust | None, *, label: str) -> str | None:
        """A snapshot in the cache, judged by its install record. None when the record satisfies
        the policy; SignatureError / ApprovalError when it refutes it (signed by another key, a
        bundle not approved); otherwise why the record cannot tell, for the caller to check the
        bundle itself (then `check_install` on its bytes)."""
        if not self.required:
            return None
        if record is None:
            return "it was not installed by mirror (no install record)"
        if self.keys:
            if record.signer is None:
                return "its install checked no signature"
            if record.signer not in self.fingerprints():
                raise SignatureError(label, f"signature required and not valid: installed from a bundle signed by key sha256:{record.signer}, "
                                            f"not by any of the {len(self.keys)} required key(s)",
                                     fix="install a bundle signed by a required key ('mirror install BUNDLE --public-key KEY'), or check that the key is the publisher's .pub")
        if self.requires_approval:
            if record.bundle_id is None:
                return "its install record names no bundle identity (installed by an older mirror)"
            self.require_approval(record.bundle_id, label=label)
        return None


def policy(public_keys: Sequence[str | os.PathLike] = (), *, approval_files: Sequence[str | os.PathLike] = (),
           approval_keys: Sequence[str | os.PathLike] = ()) -> Policy:
    """The policy this process enforces: `public_keys` plus $MIRROR_TRUSTED_KEYS, and the approvals
    named here plus $MIRROR_APPROVALS / $MIRROR_APPROVAL_KEYS (each approval file read and its
    signature checked now: a host told to require one must not quietly run without it)."""
    from mirror.approval import approval_policy

    return Policy(keys=trusted_keys(public_keys), approvals=approval_policy(approval_files, approval_keys))


__all__ = ["ENV", "Policy", "Verdict", "policy", "require_signature", "trusted_keys"]
