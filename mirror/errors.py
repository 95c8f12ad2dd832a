"""Typed errors for the mirror.

Every error a user can cause (bad repo id, corrupt bundle, full disk...) is one of these. Each
inherits the builtin that matches its concern, carries its data, and its message says what
happened, why, and what to do. `mirror.cli` maps them to one line and an exit code; nothing else
in the package prints or exits.
"""

from __future__ import annotations

from common import exitcodes
from common.errors import ToolError
from common.progress import human_size


class MirrorError(ToolError):
    """Base class. `exit_code` is what the CLI exits with: one of `common.exitcodes`, the table
    both command lines share (and the README and every `--help` show)."""

    exit_code = exitcodes.FAILED


# --- Hub / pull ---------------------------------------------------------------------------------


class HubError(MirrorError, ConnectionError):
    """The Hub (or a Hub-like endpoint) could not give us what we asked for."""

    exit_code = exitcodes.UNAVAILABLE


class RepoNotFound(HubError, LookupError):
    def __init__(self, repo_id: str, *, endpoint: str, detail: str = ""):
        self.repo_id = repo_id
        self.endpoint = endpoint
        super().__init__(
            f"repository {repo_id!r} was not found on {endpoint}"
            f"{': ' + detail if detail else ''}; check the id and --repo-type, or pass --token "
            "for a private or gated repo"
        )


class RevisionNotFound(HubError, LookupError):
    def __init__(self, repo_id: str, revision: str, *, endpoint: str):
        self.repo_id = repo_id
        self.revision = revision
        super().__init__(
            f"revision {revision!r} of {repo_id!r} was not found on {endpoint}; "
            "check the branch, tag or commit name"
        )


class AuthRequired(HubError, PermissionError):
    def __init__(self, repo_id: str, *, endpoint: str):
        self.repo_id = repo_id
        super().__init__(
            f"repository {repo_id!r} on {endpoint} needs authentication (private or gated); "
            "pass --token or set HF_TOKEN to a token that can read it"
        )


class HashMismatch(MirrorError, ValueError):
    """A downloaded or unpacked file does not match the hash it must have."""

    exit_code = exitcodes.INTEGRITY

    def __init__(self, path: str, *, algorithm: str, expected: str, actual: str, where: str = ""):
        self.path = path
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{path}: {algorithm} mismatch{(' ' + where) if where else ''} "
            f"(expected {expected}, got {actual}); the file is corrupt or was altered, "
            "fetch it again from a trusted source"
        )


# --- Bundles ------------------------------------------------------------------------------------


class BundleError(MirrorError, ValueError):
    """A bundle is unreadable, malformed, or hostile."""

    exit_code = exitcodes.NOT_A_BUNDLE

    @classmethod
    def about(cls, where: str, reason: str, fix: str | None = None) -> "BundleError":
        return cls(where, reason, fix=fix or "")

    def __init__(self, bundle: str, reason: str, *, fix: str = ""):
        self.bundle = bundle
        self.reason = reason
        super().__init__(
            f"{bundle}: {reason}; "
            + (fix or "the bundle is corrupt or not a mirror bundle: get a fresh copy and run 'mirror verify' on it")
        )


class ManifestError(BundleError):
    """The manifest is missing, not JSON, of an unknown version or inconsistent."""


class VerifyFailed(BundleError):
    """Contents disagree with the manifest. Carries the full report."""

    exit_code = exitcodes.INTEGRITY

    def __init__(self, bundle: str, report):  # report: mirror.verify.VerifyReport
        self.report = report
        super().__init__(bundle, report.summary(), fix="do not install it: get a fresh copy of the bundle")


class SignatureError(BundleError):
    exit_code = exitcodes.SIGNATURE


class CommitConflict(BundleError):
    """A bundle claims a commit that is installed with other content: installed commits are
    immutable, so it is refused, naming the first file that differs."""

    exit_code = exitcodes.INTEGRITY

    def __init__(self, bundle: str, *, repo_id: str, commit: str, path: str, detail: str):
        self.repo_id = repo_id
        self.commit = commit
        self.path = path
        super().__init__(
            bundle,
            f"claims {repo_id}@{commit[:12]}, which is installed with other content: {path} {detail}",
            fix="an installed commit never changes: do not use this bundle (it is forged or from another source)",
        )


class PolicyError(BundleError):
    """The bundle holds something our policy refuses (pickle, remote code...)."""

    exit_code = exitcodes.POLICY


# --- Approvals (mirror approve; mirror.approval) ------------------------------------------------


class ApprovalError(MirrorError, PermissionError):
    """A host requires security's approval (MIRROR_APPROVALS) and this bundle has none, or was
    rejected: refused by policy, like a pickle outside the allowlist."""

    exit_code = exitcodes.POLICY


class ApprovalInvalid(ApprovalError):
    """An approval file that cannot be trusted: unreadable, malformed, tampered with, or signed by
    no key the host accepts (MIRROR_APPROVAL_KEYS). Nothing it says is used."""

    exit_code = exitcodes.SIGNATURE


# --- Local environment --------------------------------------------------------------------------


class NotEnoughSpace(MirrorError, OSError):
    exit_code = exitcodes.NO_SPACE

    def __init__(self, where: str, *, needed: int, free: int):
        self.where = where
        self.needed = needed
        self.free = free
        super().__init__(
            f"not enough disk space in {where}: need {_size(needed)}, "
            f"{_size(free)} free; free some space or choose another directory"
        )


def _size(n: int) -> str:
    return human_size(n)


class CacheNotFound(MirrorError, FileNotFoundError):
    """The HF cache a command was pointed at does not exist."""

    exit_code = exitcodes.UNAVAILABLE

    def __init__(self, path: str, *, source: str):
        self.path = path
        self.source = source
        super().__init__(
            f"the HF cache {path} (from {source}) does not exist; nothing is installed there: "
            "check the path, or install a bundle into it with 'mirror install BUNDLE --cache-dir DIR'"
        )


class CacheNotWritable(MirrorError, PermissionError):
    """An install needs to write the HF cache and cannot (a shared cache mounted read-only, a
    folder of another user). Checking an already installed bundle never gets here: it writes nothing."""

    exit_code = exitcodes.NOT_WRITABLE

    def __init__(self, path: str, *, reason: str, needs: str):
        self.path = path
        self.reason = reason
        super().__init__(
            f"the HF cache {path} cannot be written ({reason}) and {needs}; nothing was written: "
            "install into a writable cache (--cache-dir DIR or $HF_HUB_CACHE), or where this one is mounted read-write"
        )


class UnsafeCache(MirrorError, PermissionError):
    """Something in the HF cache that mirror must not follow or trust: a planted symbolic link,
    a blob that is not a regular file, an unreadable install record."""

    exit_code = exitcodes.UNSAFE_CACHE

    @classmethod
    def about(cls, where: str, reason: str, fix: str | None = None) -> "UnsafeCache":
        return cls(where, reason, fix=fix or "")

    def __init__(self, path: str, reason: str, *, fix: str = ""):
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}; " + (fix or "nothing was written; remove it (or ask who put it there) and run the command again"))


class SnapshotChanged(MirrorError, ValueError):
    """An installed snapshot no longer holds what its install record says (a blob rewritten, a
    link swapped, a file added or removed): loading it would load bytes no install checked."""

    exit_code = exitcodes.INTEGRITY

    def __init__(self, label: str, reason: str):
        self.label = label
        self.reason = reason
        super().__init__(f"{label}: the snapshot no longer matches its install record: {reason}; refusing to load it: "
                         "install its bundle again ('mirror install BUNDLE' replaces a damaged blob), or delete that snapshot folder and install again")


class UsageError(MirrorError, ValueError):
    """Arguments that make no sense together, a folder that is not a model, and so on."""

    exit_code = exitcodes.USAGE


class MissingDependency(UsageError):
    """A package this command needs is not installed: a training image may carry the mirror
    without the signing stack (cryptography, model-signing), and only signing needs it."""

    exit_code = exitcodes.PREREQUISITE

    def __init__(self, what: str, *, packages: str):
        self.packages = packages
        super().__init__(f"{what} needs {packages}, which is not installed here; pip install {packages}, or do it on a host that has them")


class PartError(BundleError):
    """A part of a multi-part bundle is missing, the wrong size, or damaged. `parts` names them,
    so only those parts need to be sent again."""

    exit_code = exitcodes.INTEGRITY

    def __init__(self, bundle: str, reason: str, *, parts: tuple[str, ...]):
        self.parts = parts
        super().__init__(
            bundle,
            reason,
            fix="re-send " + ("that part" if len(parts) == 1 else "those parts") + " alone and run 'mirror verify' again",
        )


class BaseNotInstalled(BundleError, LookupError):
    """A delta bundle needs its base commit installed first. Names the bundle that provides it."""

    exit_code = exitcodes.PREREQUISITE

    def __init__(self, bundle: str, *, repo_id: str, commit: str, base_bundle: str | None, base_sha256: str | None, detail: str = ""):
        self.repo_id = repo_id
        self.commit = commit
        self.base_sha256 = base_sha256
        needed = f"{repo_id} at commit {commit}"
        if base_sha256:
            needed += f" (bundle {base_bundle or '?'}, sha256 {base_sha256})"
        else:  # made with --since-manifest: the commit pins the content, any bundle of it will do
            needed += " (bundle sha256 unknown: any bundle of that commit)"
        super().__init__(
            bundle,
            f"this is a delta bundle on top of {needed}, which is not installed{': ' + detail if detail else ''}",
            fix="install that base bundle first ('mirror install BASE'), then this delta",
        )


# --- OCI registries (mirror push / pull oci:// ; mirror.oci) ------------------------------------


class RegistryError(MirrorError, ConnectionError):
    """An OCI registry could not do what we asked (unreachable, TLS, an error answer). The message
    carries the registry's own answer (its status and error code), never a credential."""

    exit_code = exitcodes.UNAVAILABLE


class RegistryNotFound(RegistryError, LookupError):
    """The repository, tag or blob is not in the registry."""


class RegistryAuthError(RegistryError, PermissionError):
    """The registry (or its token service) refused the credentials, or none were given."""


class LayerRefused(RegistryError):
    """The registry refused a layer upload (too large, quota): names the file and its answer."""

    exit_code = exitcodes.FAILED


class NotModelPack(BundleError):
    """What the registry holds at that reference is not a ModelPack artifact pushed by `mirror push`."""


class ArtifactMismatch(BundleError):
    """The artifact contradicts itself: its layers disagree with the bundle manifest inside it,
    or a layer's bytes do not have the digest the OCI manifest names."""

    exit_code = exitcodes.INTEGRITY


class DeltaBaseNeeded(UsageError):
    """Pushing a delta: a file it does not carry is neither in the registry nor in --since."""

    exit_code = exitcodes.PREREQUISITE


# --- mirror serve -------------------------------------------------------------------------------


class ServeAddressError(UsageError):
    """`mirror serve` cannot listen where it was told: the port is taken, needs privileges, or
    the host is not this machine's."""


class TLSConfigError(UsageError):
    """`--tls-cert` / `--tls-key` (either server) cannot be used: one missing, unreadable, not
    PEM, expired, encrypted, or a key that is not the certificate's."""
