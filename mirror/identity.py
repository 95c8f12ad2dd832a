"""A bundle's identity: the sha256 of its manifest member, written `sha256:<64 hex>`.

Why not the bundle file's sha256: signing appends a trailer and so changes the file's bytes, a
multi-part bundle has no one file, and an OCI registry names the same bundle by its own manifest.
The manifest names the repo, the commit and every file's sha256, and a signature binds exactly
its bytes (signing.py, `manifest_sha256`), so its digest names the snapshot a bundle installs
whatever carries it: re-signed, split into parts, pushed to a registry and pulled back. The
bundle's own sha256 stays what it was for: checking one transfer (the `.sha256` sidecar).
"""

from __future__ import annotations

import hashlib
import os

from mirror.ids import is_sha256

PREFIX = "sha256:"


def bundle_id(manifest_bytes: bytes) -> str:
    """The identity of the bundle whose manifest member holds exactly `manifest_bytes`."""
    return PREFIX + hashlib.sha256(manifest_bytes).hexdigest()


def is_bundle_id(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX) and is_sha256(value[len(PREFIX):])


def read_bundle_id(path: str | os.PathLike) -> str:
    """The identity of the bundle at `path` (file or parts index): reads only its manifest member."""
    from mirror.bundle.codec import BundleReader

    with BundleReader(path, hash_all=False) as r:
        return bundle_id(r.manifest_bytes)


__all__ = ["PREFIX", "bundle_id", "is_bundle_id", "read_bundle_id"]
