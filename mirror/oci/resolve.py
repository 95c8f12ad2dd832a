"""Whether what a user gave `mirror pull` or `mirror install` names a registry, decided once.

A pull's REPO_IDs are Hub repos unless one is an `oci://` reference, and then it must be the only
one and the Hub's own options do not apply (a registry pull rebuilds exactly the bundle that was
pushed); an install's BUNDLE is a file unless it is an `oci://` reference. The command line asks
here with the user's strings and gets a parsed `Reference`, or None for the Hub and for files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mirror.errors import UsageError
from mirror.oci import reference
from mirror.oci.reference import Reference


def pull_target(sources: Sequence[str], *, hub_options: Mapping[str, object], public_key: object = None) -> Reference | None:
    """The one `oci://` reference `sources` name, or None when they are Hub repo ids.

    `hub_options` maps each Hub-only option (as the user spells it) to its value; one given
    (truthy) with a reference is a UsageError, and so is `public_key` (checked against the
    artifact's signature referrer) without one, a mix of references and repo ids, or several."""
    if not any(reference.is_oci(s) for s in sources):
        if public_key is not None:
            raise UsageError("--public-key applies to oci:// pulls only; check a Hub pull's bundle with 'mirror verify --public-key'")
        return None
    given = [name for name, value in hub_options.items() if value]
    if given:
        raise UsageError(f"{', '.join(given)} apply to Hub pulls only; an oci:// pull rebuilds exactly the bundle that was pushed")
    if len(sources) != 1:
        raise UsageError("give one oci:// reference to pull from a registry (and no Hub repo ids with it)")
    return reference.parse(sources[0])


def install_target(source: str) -> Reference | None:
    """The `oci://` reference an install's BUNDLE names, or None for a bundle on disk."""
    return reference.parse(source) if reference.is_oci(source) else None


__all__ = ["install_target", "pull_target"]
