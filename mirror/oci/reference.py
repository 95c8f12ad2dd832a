"""`oci://registry[:port]/repository[:tag][@sha256:digest]`, parsed strictly (the distribution
spec's grammar), so nothing odd reaches a URL."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mirror.errors import UsageError

SCHEME = "oci://"
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Reference:
    registry: str  # host[:port]
    repository: str  # path inside the registry, e.g. models/minilm
    tag: str | None
    digest: str | None

    @property
    def reference(self) -> str | None:
        """What goes after /manifests/: the digest if pinned, else the tag."""
        return self.digest or self.tag

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.registry, self.repository, tag, self.digest)

    def __str__(self) -> str:
        out = f"{SCHEME}{self.registry}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def is_oci(text: str | object) -> bool:
    return isinstance(text, str) and text.startswith(SCHEME)


def parse(text: str) -> Reference:
    """Parse an `oci://` reference; UsageError naming the part that is wrong."""
    def bad(why: str) -> UsageError:
        return UsageError(f"{text!r} is not a valid OCI reference: {why}; write oci://REGISTRY[:PORT]/REPOSITORY:TAG, e.g. oci://registry.internal/models/minilm:45ff9bd610d3")

    if not text.startswith(SCHEME):
        raise bad("it must start with oci://")
    rest = text[len(SCHEME):]
    host, sep, path = rest.partition("/")
    if not sep or not path:
        raise bad("no repository after the registry")
    if not _HOST.fullmatch(host):
        raise bad(f"registry {host!r} is not a host name with an optional port")
    digest = None
    if "@" in path:
        path, _, digest = path.partition("@")
        if not _DIGEST.fullmatch(digest):
            raise bad(f"digest {digest!r} is not sha256: and 64 lowercase hex")
    tag = None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, _, tag = path.rpartition(":")
        if not _TAG.fullmatch(tag):
            raise bad(f"tag {tag!r} must be letters, digits, '_', '.', '-' (at most 128, not starting with '.' or '-')")
    parts = path.split("/")
    for c in parts:
        if not _COMPONENT.fullmatch(c):
            raise bad(f"repository component {c!r} must be lowercase letters and digits, separated by '.', '_', '__' or '-'")
    if len(path) > 255:
        raise bad("the repository name is longer than 255 characters")
    return Reference(registry=host, repository=path, tag=tag, digest=digest)
