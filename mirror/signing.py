"""Signatures: who vouches for a bundle, in the OpenSSF model-signing format.

One signature serves two verifiers. It is a model-signing (sigstore bundle, DSSE, in-toto) signature
whose resources are every file of the snapshot with its sha256, so a security team can check an
*installed* snapshot with the upstream tool:

    model_signing verify key SNAPSHOT_DIR --signature model.sig --public_key key.pub --allow_symlinks

and its predicate also carries a `mirror` section (allowed by the v1.0 predicate: verifiers ignore
unknown fields) binding the sha256 of the bundle's manifest, hence the repo id, the commit and every
file hash, which `mirror verify --public-key` checks. The signature is built from the manifest
alone - no file is re-read - and stored as the bundle's last tar member, `_mirror/signature.json`, so
signing appends to a bundle in O(1) and never touches the manifest or the payload.

Key fingerprints are the sha256 of the DER SubjectPublicKeyInfo, the same value as
`openssl pkey -pubin -in key.pub -outform DER | sha256sum`.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from common import safejson
from mirror.errors import MissingDependency, SignatureError, UsageError
from mirror.manifest import Manifest, parse

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

# cryptography and model-signing are imported inside the functions that sign or check: a training
# image without them can still import this module, show a bundle's signature as "not checked"
# (inspect, audit without a key) and install unsigned bundles; only signing and checking need them.
SIGNING_PACKAGES = "cryptography model-signing pyopenssl"  # model-signing 1.x imports OpenSSL undeclared

SIGNATURE_MEMBER = "_mirror/signature.json"  # the model-signing JSON; always the last member
MAX_SIGNATURE_BYTES = 64 * 1024 * 1024  # the payload lists every file: ~200 bytes each
# model_signing ignores these at the top of a model directory by default, so they are left out of
# its resources (the mirror manifest still binds them through its sha256).
GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")


@dataclass(frozen=True)
class SignatureStatus:
    present: bool
    valid: bool | None  # None: present but not checked, because no public key was given
    key_fingerprint: str | None  # the checked key, or the one the signature claims when unchecked
    reason: str
    signed_by: str | None = None  # the key the signature claims, when it is not the checked one (a wrong .pub)

    def summary(self) -> str:
        if not self.present:
            return "unsigned"
        if self.valid is None:
            return f"signed, not checked (no public key given), key sha256:{self.key_fingerprint or '?'}"
        return f"{'valid' if self.valid else 'INVALID'}, key sha256:{self.key_fingerprint or '?'}" + ("" if self.valid else f" ({self.reason})")


def signing_stack_available() -> bool:
    """Whether cryptography and model-signing (and the OpenSSL it imports) are installed; asks the
    import system without importing them."""
    return all(importlib.util.find_spec(name) is not None for name in ("cryptography", "model_signing", "OpenSSL"))


def require_signing_stack(what: str) -> None:
    """Raise MissingDependency, naming the packages, unless signing_stack_available()."""
    if not signing_stack_available():
        raise MissingDependency(what, packages=SIGNING_PACKAGES)


# --- keys -----------------------------------------------------------------------------------------


class KeyPair(tuple):
    """(private, public) key paths, as callers have always unpacked `keygen`'s result, plus the
    .gitignore keygen wrote or extended to keep the private key out of git (None: not needed)."""

    def __new__(cls, private: Path, public: Path, gitignore: Path | None = None) -> "KeyPair":
        pair = super().__new__(cls, (private, public))
        pair.gitignore = gitignore
        return pair

    @property
    def private(self) -> Path:
        return self[0]

    @property
    def public(self) -> Path:
        return self[1]


def keygen(out_prefix: str | os.PathLike) -> KeyPair:
    """Write `<prefix>.pem` (EC P-256 private key, mode 0600) and `<prefix>.pub` (public key).

    Inside a git work tree the private key is kept out of `git add .` before it exists: unless
    git already ignores it, its name goes into the `.gitignore` beside it (`keep_out_of_git`)."""
    prefix = Path(out_prefix)
    private_path, public_path = Path(f"{prefix}.pem"), Path(f"{prefix}.pub")
    for p in (private_path, public_path):
        if p.exists():
            raise UsageError(f"{p} already exists; refusing to overwrite a key: choose another prefix or move it away")
    if not prefix.parent.is_dir():
        raise UsageError(f"{prefix.parent} is not a directory; create it first")
    require_signing_stack("creating a key pair")
    gitignore = keep_out_of_git(private_path)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_atomic(private_path, private_pem, mode=0o600)
    _write_atomic(public_path, public_pem, mode=0o644)
    return KeyPair(private=private_path, public=public_path, gitignore=gitignore)


def git_work_tree(path: str | os.PathLike) -> Path | None:
    """The git work tree `path` would be in (the nearest folder above it holding `.git`), or None."""
    folder = Path(path).absolute().parent
    for d in (folder, *folder.parents):
        if (d / ".git").exists():
            return d
    return None


def _git_ignores(path: Path, tree: Path) -> bool:
    """Whether git already ignores `path` (`git check-ignore`). Without git, or when git cannot
    tell, False: the caller then adds a line that costs nothing if it was not needed."""
    try:
        done = subprocess.run(["git", "-C", str(tree), "check-ignore", "-q", "--", str(path.absolute())],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def keep_out_of_git(private_path: str | os.PathLike) -> Path | None:
    """Make sure `git add .` never takes a private key: when `private_path` lies in a git work
    tree and git does not ignore it yet, append `/<name>` to the `.gitignore` in its folder
    (created if missing). Returns that `.gitignore`, or None when nothing was needed (outside a
    work tree, or already ignored). The public key is left alone: it is meant to be shared."""
    private_path = Path(private_path)
    tree = git_work_tree(private_path)
    if tree is None or _git_ignores(private_path, tree):
        return None
    gitignore = private_path.parent / ".gitignore"
    try:
        before = gitignore.read_text(encoding="utf-8") if gitignore.is_file() else ""
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{gitignore} cannot be read ({e}); the private key would be committed by 'git add .': "
                         "choose a prefix outside the git work tree") from e
    sep = "" if not before or before.endswith("\n") else "\n"
    _write_atomic(gitignore, f"{before}{sep}# private signing key (mirror keygen): never commit it\n/{private_path.name}\n", mode=0o644)
    return gitignore


def fingerprint(public_key: ec.EllipticCurvePublicKey) -> str:
    from cryptography.hazmat.primitives import serialization  # a key object exists: so does cryptography

    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def key_fingerprint(public_key_path: str | os.PathLike) -> str:
    """The fingerprint of a PEM public key file (as `mirror inspect` and `audit` show it).
    Raises UsageError for anything else (a private key, a certificate, garbage): the commands
    call it before any bundle is read, so a wrong file costs nothing."""
    return fingerprint(_load_public_key(Path(public_key_path)))


def _load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    require_signing_stack("signing")
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError as e:
        raise UsageError(f"signing key {path} does not exist; create one with 'mirror keygen PREFIX'") from e
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise UsageError(f"{path} is not an unencrypted PEM private key ({e}); use 'mirror keygen' or 'openssl ecparam -genkey'") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UsageError(f"{path} is not an elliptic-curve key; model-signing needs EC P-256/384/521 ('mirror keygen')")
    return key


def _load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    require_signing_stack("checking a signature")
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError as e:
        raise UsageError(f"public key {path} does not exist; ask the signer for their .pub file") from e
    if b"PRIVATE KEY-----" in raw:
        raise UsageError(f"{path} is a private key, not a public one; pass the .pub beside it ('mirror keygen' wrote both), "
                         "and keep the .pem on the signing host")
    try:
        key = serialization.load_pem_public_key(raw)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise UsageError(f"{path} is not a PEM public key ({e}); pass the .pub file written by 'mirror keygen'") from e
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise UsageError(f"{path} is not an elliptic-curve public key")
    return key


# The loaders other modules use (mirror.approval signs and checks approvals with the same keys).
load_private_key = _load_private_key
load_public_key = _load_public_key


# --- the model-signing payload --------------------------------------------------------------------


def _is_git_path(path: str) -> bool:
    top = path.split("/", 1)[0]
    return path in (".gitattributes", ".gitignore") or top in (".git", ".github")


def model_signing_manifest(manifest: Manifest):
    """The model_signing manifest of the snapshot the bundle installs, built from our manifest's
    sha256s: the same digests model_signing computes when it hashes the snapshot directory."""
    from model_signing import manifest as ms_manifest
    from model_signing._hashing import hashing as ms_hashing

    from mirror.delta import full_files  # a delta installs its base's files too: sign the whole snapshot

    serialization_type = ms_manifest._FileSerialization(  # noqa: SLF001 - the v1.0 'files' method
        "sha256", allow_symlinks=True, ignore_paths=[Path(p) for p in GIT_PATHS]
    )
    items = [
        ms_manifest.FileManifestItem(path=Path(f.path), digest=ms_hashing.Digest("sha256", bytes.fromhex(f.sha256)))
        for f in full_files(manifest)
        if not _is_git_path(f.path)
    ]
    return ms_manifest.Manifest(f"{manifest.repo_id}@{manifest.commit}", items, serialization_type)


def _mirror_claims(manifest: Manifest, manifest_bytes: bytes, key_fp: str) -> dict[str, str]:
    return {
        "format": manifest.format,
        "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
        "repo_id": manifest.repo_id,
        "repo_type": manifest.repo_type,
        "commit": manifest.commit,
        "signer_key_sha256": key_fp,
    }


def sign_manifest(manifest_bytes: bytes, *, key_path: str | os.PathLike, bundle: str = "bundle") -> bytes:
    """The signature file (model-signing JSON) for a bundle whose manifest is `manifest_bytes`."""
    require_signing_stack("signing")
    from model_signing._signing import sign_ec_key
    from model_signing._signing import signing as ms_signing

    manifest = parse(manifest_bytes, bundle=bundle)
    key = _load_private_key(Path(key_path))
    try:
        signer = sign_ec_key.Signer(Path(key_path))
    except ValueError as e:  # unsupported curve
        raise UsageError(f"{key_path}: {e}; use an EC P-256 key ('mirror keygen')") from e
    payload = ms_signing.Payload(model_signing_manifest(manifest))
    payload.statement.pb.predicate.update({"mirror": _mirror_claims(manifest, manifest_bytes, fingerprint(key.public_key()))})
    return signer.sign(payload).bundle.to_json().encode("utf-8")


# --- verification ---------------------------------------------------------------------------------


def _parse_signature(raw: dict):
    from model_signing._signing import sign_sigstore_pb
    from sigstore_models.bundle import v1 as bundle_pb

    raw["verificationMaterial"].setdefault("tlogEntries", [])
    return sign_sigstore_pb.Signature(bundle_pb.Bundle.from_dict(raw))


def _claims_unverified(raw: dict) -> dict:
    """The payload's `mirror` section read without checking the signature: only for display."""
    payload = safejson.loads(base64.b64decode(raw["dsseEnvelope"]["payload"]), where="signature", what="signed payload", max_bytes=MAX_SIGNATURE_BYTES, error=SignatureError)
    claims = payload.get("predicate", {}).get("mirror", {})
    return claims if isinstance(claims, dict) else {}


def check_signature(manifest_bytes: bytes, sig_bytes: bytes | None, *, public_key_path: str | os.PathLike | None) -> SignatureStatus:
    """Judge a signature against the manifest it claims to cover. Never raises for a bad signature:
    the status says why it is not valid (see `require_valid`)."""
    if sig_bytes is None:
        return SignatureStatus(present=False, valid=False, key_fingerprint=None, reason="the bundle is not signed")
    stack = signing_stack_available()
    try:
        raw = safejson.loads(sig_bytes, where="signature", what="signature", max_bytes=MAX_SIGNATURE_BYTES, error=SignatureError)
        # without the signing stack only the JSON is read: enough to show it, never to trust it
        signature = _parse_signature(raw) if stack else None
        claimed = _claims_unverified(raw).get("signer_key_sha256")
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # JSON, base64, pydantic errors are ValueErrors
        return SignatureStatus(present=True, valid=False, key_fingerprint=None, reason=f"signature is not a readable model-signing bundle ({type(e).__name__})")
    claimed = claimed if isinstance(claimed, str) else None
    if public_key_path is None:
        return SignatureStatus(present=True, valid=None, key_fingerprint=claimed, reason="no public key given")

    require_signing_stack("checking a signature")
    from cryptography.exceptions import InvalidSignature
    from model_signing._signing import sign_ec_key
    from model_signing._signing import signing as ms_signing

    key_fp = fingerprint(_load_public_key(Path(public_key_path)))

    def invalid(reason: str, signed_by: str | None = None) -> SignatureStatus:
        return SignatureStatus(present=True, valid=False, key_fingerprint=key_fp, reason=reason, signed_by=signed_by)

    if claimed and claimed != key_fp:  # the common case of a wrong key, said plainly
        return invalid(f"signed by key sha256:{claimed}, not by the given key sha256:{key_fp}", signed_by=claimed)

    try:
        verifier = sign_ec_key.Verifier(Path(public_key_path))
        payload_type, payload = verifier._verify_signed_content(signature)  # noqa: SLF001 - we need the payload itself
    except InvalidSignature:
        return invalid("the signature does not match its payload under this key (wrong key or altered signature)")
    except ValueError as e:
        return invalid(f"signature rejected: {' '.join(str(e).split()).rstrip('.')}")
    if payload_type != ms_signing._IN_TOTO_JSON_PAYLOAD_TYPE:  # noqa: SLF001
        return invalid(f"unexpected payload type {payload_type!r}")
    try:
        statement = safejson.loads(payload, where="signature", what="signed payload", max_bytes=MAX_SIGNATURE_BYTES, error=SignatureError)
        signed = ms_signing.dsse_payload_to_manifest(statement)
        claims = statement["predicate"].get("mirror", {})
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return invalid(f"signed payload is not a model-signing v1.0 statement ({type(e).__name__})")
    manifest = parse(manifest_bytes)
    if claims.get("manifest_sha256") != hashlib.sha256(manifest_bytes).hexdigest():
        return invalid("the signature was made for a different manifest (repo, commit or file hashes changed)")
    if signed != model_signing_manifest(manifest):
        return invalid("the signed file list differs from the manifest's")
    return SignatureStatus(present=True, valid=True, key_fingerprint=key_fp, reason="signature valid")


def require_valid(status: SignatureStatus, *, bundle: str) -> SignatureStatus:
    """`status` if valid, else SignatureError with the advice that fits the receiver: who checks
    a signature must never be told to sign the bundle itself (it cannot vouch for bytes it did
    not make), and a signature by another key is far likelier a wrong .pub than a forgery."""
    if status.valid:
        return status
    raise SignatureError(bundle, f"signature check failed: {status.reason}", fix=signature_advice(status))


def signature_advice(status: SignatureStatus) -> str:
    """What a receiver should do about a signature that did not check out."""
    if not status.present:
        return "ask the sender for a signed bundle (they sign it with 'mirror sign'); do not sign it yourself: you cannot vouch for bytes you did not produce"
    if status.signed_by:
        return ("check that --public-key is the publisher's .pub, the one with the signing key's fingerprint above "
                "('openssl pkey -pubin -in KEY.pub -outform DER | sha256sum' prints a .pub's)")
    return "check that --public-key is the publisher's .pub; if it is, do not trust this bundle: get a freshly signed copy from the publisher"


# --- the bundle member ----------------------------------------------------------------------------


def _read_tail(bundle: Path):
    """Manifest bytes and the signature member: a header walk by the format's only reader
    (`bundle.codec.read_tail`), so `inspect` stays instant on a 100 GB bundle."""
    from mirror.bundle.codec import read_tail

    return read_tail(bundle)


def read_signature(bundle_path: str | os.PathLike) -> bytes | None:
    """The model-signing signature file stored in the bundle, or None if it is unsigned."""
    return _read_tail(Path(bundle_path)).signature


def verify_signature(bundle_path: str | os.PathLike, *, public_key_path: str | os.PathLike | None = None) -> SignatureStatus:
    tail = _read_tail(Path(bundle_path))
    return check_signature(tail.manifest_bytes, tail.signature, public_key_path=public_key_path)


@dataclass(frozen=True)
class SignedBundle:
    """What `sign_bundle` changed: the file's bytes (its new sha256, also in the sidecar), never
    its identity (the manifest is untouched), and the signature it replaced, if any."""

    status: SignatureStatus  # the new signature, as read back (its claimed key)
    new_sha256: str
    bundle_id: str  # the same before and after: mirror.identity
    replaced_signer: str | None = None  # the key the replaced signature claimed ("" when unreadable); None: it was unsigned

    @property
    def key_fingerprint(self) -> str | None:
        return self.status.key_fingerprint


def sign_bundle(bundle_path: str | os.PathLike, *, key_path: str | os.PathLike) -> SignedBundle:
    """Sign a bundle in place: (re)write its signature as the last member, then its sidecar.
    The manifest and payload bytes are untouched, so the bundle's identity is too; its file
    sha256 changes, and the result says from what to what. Checking that the payload matches the
    manifest is `mirror verify`'s job; `mirror sign` runs it first."""
    from mirror.identity import bundle_id
    from mirror.bundle.codec import append_trailer

    bundle = Path(bundle_path)
    tail = _read_tail(bundle)
    replaced = None
    if tail.signature is not None:
        replaced = check_signature(tail.manifest_bytes, tail.signature, public_key_path=None).key_fingerprint or ""
    sig = sign_manifest(tail.manifest_bytes, key_path=key_path, bundle=str(bundle))
    new_sha = append_trailer(bundle, SIGNATURE_MEMBER, sig)
    return SignedBundle(status=check_signature(tail.manifest_bytes, sig, public_key_path=None), new_sha256=new_sha,
                        bundle_id=bundle_id(tail.manifest_bytes), replaced_signer=replaced)


def _write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    from common.atomic import write_atomic

    write_atomic(path, data, mode=mode)


def verify_snapshot(snapshot_dir: str | os.PathLike, *, signature_path: str | os.PathLike, public_key_path: str | os.PathLike) -> None:
    """What `model_signing verify key SNAPSHOT --allow_symlinks` does, through its library: raises
    SignatureError if the installed snapshot does not match the signature."""
    require_signing_stack("checking a snapshot's signature")
    import model_signing
    from cryptography.exceptions import InvalidSignature

    hashing_config = model_signing.hashing.Config().set_ignored_paths(paths=[], ignore_git_paths=True).set_allow_symlinks(True)
    try:
        model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public_key_path).set_hashing_config(
            hashing_config
        ).verify(Path(snapshot_dir), Path(signature_path))
    except (ValueError, InvalidSignature) as e:
        raise SignatureError(str(snapshot_dir), f"snapshot does not match the signature ({' '.join(str(e).split())})", fix="reinstall the snapshot from a verified bundle") from e


__all__ = [
    "SIGNATURE_MEMBER",
    "KeyPair",
    "SignatureStatus",
    "SignedBundle",
    "check_signature",
    "fingerprint",
    "git_work_tree",
    "keep_out_of_git",
    "key_fingerprint",
    "keygen",
    "load_private_key",
    "load_public_key",
    "read_signature",
    "require_signing_stack",
    "require_valid",
    "signature_advice",
    "sign_bundle",
    "sign_manifest",
    "signing_stack_available",
    "verify_signature",
    "verify_snapshot",
]
