"""mirror's public surface: what the trainer, a script or a notebook may call.

Everything else in `mirror/` is internal and may move between releases; these names stay. The
trainer imports mirror through this module only (tests/test_layering.py holds it to that), as
model-transparency's `signing` / `verifying` stand over its private `_signing/`.

    from mirror import api

    bundle = api.pack_folder("out/model", repo_id="acme/classifier", out_dir="bundles")
    report = api.verify_bundle(bundle.path)            # a diff, not a boolean: .ok, .missing, .extra, .mismatched
    installed = api.install_bundle(bundle.path, public_keys=["site.pub"])
    api.find_snapshot("acme/classifier")               # the snapshot folder transformers loads

The groups:

- make bundles: `pull` (from the Hub or a site mirror), `pack_folder` (a local folder);
- read them: `read_manifest`, `verify_bundle`, `scan_folder` (the bundles of a folder, by the
  one rule `mirror list`, `mirror serve` and the trainer use), `list_bundles` (each summarised),
  `delta_info`, `stream_sha256`, `read_bundle_id` / `bundle_id` (a bundle's identity),
  `bundle_filename` / `bundle_stem` (how bundles are named), `INDEX_SUFFIX` (a multi-part index);
- install and look up: `install_bundle`, `find_snapshot`, `check_snapshot`, and the install
  record: `installed_bundle`, `installed_trust`, `remember_bundle`;
- trust: `trust_policy` (the site policy: required keys and approvals), `sign_bundle`,
  `verify_signature`;
- helpers: `sha256_file`, `hash_files` / `first_difference` (files against their expected
  digests), `license_from_card`, `cache_root` / `hub_constants` / `user_cache_home` (where the
  HF cache and the user's cache are);
- the errors a caller catches by type (all are `MirrorError`, itself a `common.errors.ToolError`).

The errors are imported now; every function on first use. Several of these modules import
huggingface_hub, which reads its offline switches once, at import: the trainer imports this
module before it switches the process offline, and must not pull the Hub in with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mirror.errors import (
    ApprovalError,
    BundleError,
    CacheNotWritable,
    HashMismatch,
    MirrorError,
    SignatureError,
    UsageError,
)

if TYPE_CHECKING:  # the same names as _LAZY, for readers, type checkers and the layering test
    from mirror.bundle import bundle_filename, bundle_stem
    from mirror.bundle.codec import read_manifest
    from mirror.bundle.parts import INDEX_SUFFIX
    from mirror.bundle.stored import scan_folder, stream_sha256
    from mirror.cachedirs import hub_constants, user_cache_home
    from mirror.delta import delta_info
    from mirror.hashing import first_difference, hash_files, sha256_file
    from mirror.hfcache import cache_root
    from mirror.hub import pull
    from mirror.identity import bundle_id, read_bundle_id
    from mirror.install import check_snapshot, find_snapshot, install_bundle, installed_bundle, installed_trust, remember_bundle
    from mirror.listing import list_bundles
    from mirror.manifest import license_from_card
    from mirror.pack import pack_folder
    from mirror.signing import sign_bundle, verify_signature
    from mirror.trust import policy as trust_policy
    from mirror.verify import verify_bundle

# public name -> (module, its name there)
_LAZY: dict[str, tuple[str, str]] = {
    "bundle_filename": ("mirror.bundle", "bundle_filename"),
    "bundle_stem": ("mirror.bundle", "bundle_stem"),
    "read_manifest": ("mirror.bundle.codec", "read_manifest"),
    "INDEX_SUFFIX": ("mirror.bundle.parts", "INDEX_SUFFIX"),
    "scan_folder": ("mirror.bundle.stored", "scan_folder"),
    "stream_sha256": ("mirror.bundle.stored", "stream_sha256"),
    "hub_constants": ("mirror.cachedirs", "hub_constants"),
    "user_cache_home": ("mirror.cachedirs", "user_cache_home"),
    "delta_info": ("mirror.delta", "delta_info"),
    "first_difference": ("mirror.hashing", "first_difference"),
    "hash_files": ("mirror.hashing", "hash_files"),
    "sha256_file": ("mirror.hashing", "sha256_file"),
    "cache_root": ("mirror.hfcache", "cache_root"),
    "pull": ("mirror.hub", "pull"),
    "bundle_id": ("mirror.identity", "bundle_id"),
    "read_bundle_id": ("mirror.identity", "read_bundle_id"),
    "check_snapshot": ("mirror.install", "check_snapshot"),
    "find_snapshot": ("mirror.install", "find_snapshot"),
    "install_bundle": ("mirror.install", "install_bundle"),
    "installed_bundle": ("mirror.install", "installed_bundle"),
    "installed_trust": ("mirror.install", "installed_trust"),
    "remember_bundle": ("mirror.install", "remember_bundle"),
    "list_bundles": ("mirror.listing", "list_bundles"),
    "license_from_card": ("mirror.manifest", "license_from_card"),
    "pack_folder": ("mirror.pack", "pack_folder"),
    "sign_bundle": ("mirror.signing", "sign_bundle"),
    "verify_signature": ("mirror.signing", "verify_signature"),
    "trust_policy": ("mirror.trust", "policy"),
    "verify_bundle": ("mirror.verify", "verify_bundle"),
}

_ERRORS = ["ApprovalError", "BundleError", "CacheNotWritable", "HashMismatch", "MirrorError", "SignatureError", "UsageError"]
__all__ = sorted([*_ERRORS, *_LAZY])


def __getattr__(name: str) -> Any:
    """A facade name, looked up in its module at each use: never kept here, so a test's
    monkeypatch of the module (`mirror.install.install_bundle`) is what a caller gets too."""
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'mirror.api' has no attribute {name!r}: the public names are mirror.api.__all__") from None
    return getattr(importlib.import_module(module), attr)


def __dir__() -> list[str]:
    return __all__
