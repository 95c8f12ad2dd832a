"""Site policy for signatures: which keys an install must see a valid signature from.

`--public-key PEM` (repeatable) on any command that installs asks for a signature by one of
those keys. A site makes signatures mandatory for every install on a host, whatever the command
line says, by naming its release keys in the environment:

    MIRROR_TRUSTED_KEYS=/etc/mirror/release.pub:/etc/mirror/backup.pub

(`os.pathsep`-separated). When it is set, an unsigned bundle, or one signed by any other key, is
refused by `mirror install`, the trainer's auto-install and everything else that installs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from mirror.errors import SignatureError, UsageError

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
    fix = ("sign it with 'mirror sign BUNDLE --key KEY.pem' on the publishing host" if not first.present
           else "do not install it: get a copy signed by a trusted key from the publisher")
    raise SignatureError(bundle, f"signature required and not valid: {reason}", fix=fix)
