"""Model resolution: `model_id` -> a local snapshot directory, without any network.

Order: a local directory path; an installed snapshot in the HF cache; a bundle for that repo in
`--bundles DIR`, verified and installed automatically; otherwise `ModelNotAvailable` with the exact
`mirror pull` command to run on a connected host.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ResolvedModel:
    repo_id: str
    path: Path  # the snapshot directory transformers / sentence-transformers load from
    commit: str | None  # the pinned commit (None for a plain local folder)
    bundle_path: Path | None  # the bundle it came from, when known
    bundle_sha256: str | None
    source: str  # "local" | "cache" | "bundle"
