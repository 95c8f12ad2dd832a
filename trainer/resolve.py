"""Model resolution: `model_id` -> a local snapshot directory, without any network.

Order: a local directory path; an installed snapshot in the HF cache; a bundle for that repo in
`--bundles DIR`, verified and installed automatically; otherwise `ModelNotAvailable` with the exact
`mirror pull` command to run on a connected host. Every step reads local files only, so a missing
model fails in well under a second rather than after a network timeout.

Models whose repo carries Python files (or a config `auto_map`) would run that code on load; they
are refused unless the config sets `trust_remote_code: true`.

Trust: one site policy (`mirror.api.trust_policy`: `public_keys` from `--public-key` and the config,
$MIRROR_TRUSTED_KEYS, and the approvals $MIRROR_APPROVALS / $MIRROR_APPROVAL_KEYS require) is
enforced on every model this returns, wherever it comes from:
- a bundle is installed only if the policy accepts it (`mirror.install` checks it over the
  manifest bytes it installs, and records the identity and the checked signer);
- a snapshot already in the cache is judged by its install record: signed by another key or not
  approved is refused; a record that cannot tell (installed with no key required, by an older
  mirror, by other tools) is settled by installing the bundle of that commit from the bundles
  folder again, which checks its signature and records it; with no such bundle it is refused;
- a plain folder or a download from a site mirror carries no signature: refused while the policy
  requires one.
Every snapshot with an install record must still match it (links, sizes, contents; large files by
stamp): one rewritten since is refused (SnapshotChanged).

The bundles folder is shared and may hold anything: the scan opens only regular files, and a
bundle it cannot read is skipped, never fatal, unless it is the only one named for the model.
Of several bundles of the repo the newest is installed; one that fails (truncated, corrupt,
refused by the key policy) gives way to the next newest under the same keys, and the resolved
model's `skipped` says which failed. Only when none installs is the newest one's error raised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence
from urllib.parse import urlsplit

from common.modelfacts import remote_code_reason
from mirror import api
from mirror.api import ApprovalError, CacheNotWritable, MirrorError, SignatureError
from trainer.errors import (
    BundleRejected,
    BundleUntrusted,
    KeyFileError,
    ModelNotAvailable,
    NotRegularFile,
    RemoteCodeRefused,
    TrainerError,
)
from trainer.files import check_regular
from trainer.offline import allow_endpoint, hub_online, network_guard


@dataclass(frozen=True)
class ResolvedModel:
    repo_id: str
    path: Path  # the snapshot directory transformers / sentence-transformers load from
    commit: str | None  # the pinned commit (None for a plain local folder)
    bundle_path: Path | None  # the bundle it came from, when known
    bundle_sha256: str | None
    source: str  # "local" | "cache" | "bundle" | "endpoint"
    skipped: tuple[str, ...] = ()  # one line per bundle of the repo that failed to install before this one
    endpoint: str | None = None  # the site mirror ($HF_ENDPOINT) it was downloaded from
    fetched: tuple[tuple[str, str], ...] = ()  # (path, sha256) of every file downloaded from the endpoint
    bundle_id: str | None = None  # the identity of the bundle that installed it (mirror.identity), when recorded
    signer: str | None = None  # the key whose signature was checked for it (a required key), when one was


@dataclass(frozen=True)
class _Candidate:
    path: Path  # NAME.tar, or NAME.tar.parts.json for a multi-part bundle
    repo_id: str
    commit: str
    created_at: str
    delta_base: str | None  # the commit a delta bundle applies on top of; None for a full bundle


@dataclass(frozen=True)
class _Skipped:
    path: Path
    cause: Exception  # why it could not be read: a mirror error, an OSError, a parser's error


MAX_DELTA_CHAIN = 16  # deltas stack on deltas; a longer chain than this is a loop or a mistake
# What reading a hostile manifest can raise: mirror's own errors, I/O errors, and the parsers'
# (a 5000-digit integer is a ValueError, deep nesting a RecursionError) should a limit be missed.
_UNREADABLE = (MirrorError, OSError, ValueError, RecursionError)


def check_public_keys(keys: Sequence[str | Path]) -> tuple[str, ...]:
    """The keys as strings, each checked to be a regular file now: a typo must not wait until
    a bundle happens to need installing."""
    for key in keys:
        try:
            check_regular(key)
        except FileNotFoundError:
            raise KeyFileError(f"public key {key}: file not found; pass the path of a PEM public key (--public-key or public_keys)") from None
        except NotRegularFile as e:
            raise KeyFileError(f"public key {key} {e.reason}; pass the path of a PEM public key file") from None
    return tuple(str(k) for k in keys)


def resolve_model(
    model_id: str,
    *,
    bundles_dir: str | Path = "bundles",
    cache_dir: str | Path | None = None,
    trust_remote_code: bool = False,
    public_keys: Sequence[str | Path] = (),
) -> ResolvedModel:
    """Find `model_id` locally, installing its newest bundle from `bundles_dir` if need be, under
    the site policy (`public_keys` plus the environment's keys and approvals; module docstring)."""
    site = api.trust_policy(public_keys)
    local = Path(model_id).expanduser()
    if local.is_dir():
        refuse_plain_folder(model_id, site=site)
        _refuse_remote_code(model_id, local, trust_remote_code)
        return ResolvedModel(repo_id=model_id, path=local.resolve(), commit=None, bundle_path=None, bundle_sha256=None, source="local")

    bundles = Path(bundles_dir)
    snapshot = api.find_snapshot(model_id, cache_dir=cache_dir)
    if snapshot is not None:
        snapshot = Path(snapshot)
        commit = snapshot.name
        label = f"model {model_id}@{commit[:12]} in the HF cache"
        api.check_snapshot(model_id, commit, cache_dir=cache_dir, label=label)
        checked = _enforce_installed(site, model_id, commit, bundles=bundles, cache_dir=cache_dir, label=label)
        _refuse_remote_code(model_id, snapshot, trust_remote_code)
        # the bundle and sha256 its install checked, from the install record: no bundle byte is read
        recorded = api.installed_bundle(model_id, commit, cache_dir=cache_dir)
        if recorded is not None:
            return ResolvedModel(repo_id=model_id, path=snapshot, commit=commit, bundle_path=Path(recorded.path), bundle_sha256=recorded.sha256, source="cache",
                                 bundle_id=checked.bundle_id if checked else None, signer=checked.signer if checked else None)
        # installed without a checked sha256 (`mirror install` without --sha256, an older mirror):
        # the bundle of that commit in the bundles folder, hashed once and remembered in the
        # install record, so the next run reads no bundle byte either
        # (verified in that pass: a bundle in a shared folder that merely claims the commit, with
        # other or damaged files, is not named in the lineage)
        origin = next((c for c in _candidates(bundles, model_id)[0] if c.commit == commit), None)
        try:
            recorded = api.remember_bundle(model_id, commit, origin.path, cache_dir=cache_dir) if origin else None
        except OSError:  # a read-only cache: nothing remembered, nothing named
            recorded = None
        checked = api.installed_trust(model_id, commit, cache_dir=cache_dir) if recorded else checked
        return ResolvedModel(repo_id=model_id, path=snapshot, commit=commit, bundle_path=Path(recorded.path) if recorded else None,
                             bundle_sha256=recorded.sha256 if recorded else None, source="cache",
                             bundle_id=checked.bundle_id if checked else None, signer=checked.signer if checked else None)

    candidates, unreadable = _candidates(bundles, model_id)
    if not candidates:
        endpoint = site_endpoint()
        if endpoint is not None:  # a site mirror (`mirror serve`): fetched into the cache, pinned to its commit
            return _from_endpoint(model_id, endpoint, cache_dir=cache_dir, trust_remote_code=trust_remote_code, site=site)
        raise _not_available(model_id, bundles_dir=str(bundles_dir).rstrip("/"), unreadable=unreadable)
    # newest first; one that fails to install (truncated, corrupt) gives way to the next of the
    # same repo. Each try is under the same key policy, so a signature refusal never falls back
    # to an unsigned bundle: only to another that the same keys accept. Every skip is said.
    order = sorted(candidates, key=lambda c: (c.created_at, c.path.name), reverse=True)
    failures: list[TrainerError] = []
    for newest in order:
        try:
            installed, sha256 = _install_chain(newest, candidates, model_id, cache_dir, site)
        except (BundleRejected, BundleUntrusted) as e:
            failures.append(e)
            continue
        break
    else:
        raise failures[0]
    snapshot = Path(installed.snapshot_dir)
    _refuse_remote_code(model_id, snapshot, trust_remote_code)
    return ResolvedModel(
        repo_id=model_id,
        path=snapshot,
        commit=newest.commit,
        bundle_path=newest.path,
        bundle_sha256=sha256 or _bundle_sha256(newest.path),
        source="bundle",
        skipped=tuple(_skip_line(e, newest) for e in failures),
        bundle_id=installed.bundle_id,
        signer=installed.signer,
    )


def refuse_plain_folder(model_id: str, *, public_keys: Sequence[str | Path] = (), site=None) -> None:
    """A model folder named by path (not installed from a bundle) carries no signature and no
    bundle identity: refused while the site policy requires either (`trainer serve RUN_DIR` asks
    this too)."""
    site = site if site is not None else api.trust_policy(public_keys)
    if site.required:
        raise _policy_refusal(site, f"{model_id}: a plain folder carries no signature or bundle identity",
                              fix="pack it ('mirror pack'), sign it, install it, and name it by its repo id")


def _enforce_installed(site, model_id: str, commit: str, *, bundles: Path, cache_dir: str | Path | None, label: str):
    """The site policy on a snapshot already in the cache, by its install record (what it says,
    or None without one). A record that cannot tell is settled by installing the bundle of that
    commit again (from the record's own path, else the bundles folder): the install checks the
    signature and approval over its manifest and records them. Raises what the policy raises."""
    record = api.installed_trust(model_id, commit, cache_dir=cache_dir)
    try:
        why = site.check_installed(record, label=label)
    except (SignatureError, ApprovalError) as e:
        raise _untrusted(label, e) from None
    if why is None:
        return record
    recorded = api.installed_bundle(model_id, commit, cache_dir=cache_dir)
    paths = [Path(recorded.path)] if recorded is not None and Path(recorded.path).is_file() else []
    paths += [c.path for c in _candidates(bundles, model_id)[0] if c.commit == commit and c.delta_base is None]
    if not paths:
        raise _policy_refusal(site, f"{label}: {why}, and no bundle of commit {commit[:12]} is in {bundles}/ to check it against",
                              fix=f"put its signed bundle in {bundles}/ (or 'mirror install BUNDLE --public-key KEY'), then run the command again")
    try:
        api.install_bundle(paths[0], cache_dir=cache_dir, site=site, bundle_sha256=False)
    except (SignatureError, ApprovalError) as e:
        raise _untrusted(label, e) from None
    except CacheNotWritable:
        raise
    except MirrorError as e:
        raise BundleRejected(str(paths[0]), e) from e
    record = api.installed_trust(model_id, commit, cache_dir=cache_dir)
    try:
        still = site.check_installed(record, label=label)
    except (SignatureError, ApprovalError) as e:
        raise _untrusted(label, e) from None
    if still is not None:  # the bundle checked out but the snapshot is not its (extra files): cannot vouch
        raise _policy_refusal(site, f"{label}: {still}", fix="delete that snapshot folder and install the signed bundle again")
    return record


def _untrusted(label: str, e: MirrorError) -> TrainerError:
    """A model the policy refused, as one line with the mirror error's exit code (5 signature, 6 approval)."""
    return BundleRejected(label, e, note="refused by the site policy: --public-key, the config's public_keys, $MIRROR_TRUSTED_KEYS, $MIRROR_APPROVALS")


def _policy_refusal(site, text: str, *, fix: str) -> TrainerError:
    """A model whose origin the policy cannot check: exit 5 when a signature is required, else 6."""
    err = SignatureError(text, "signature required", fix=fix) if site.requires_signature else ApprovalError(f"{text}; an approval is required here; {fix}")
    return BundleRejected(text, err)


def _skip_line(e: TrainerError, used: _Candidate) -> str:
    what = "refused (signature)" if isinstance(e, BundleUntrusted) else "broken"
    return f"skipped {what} bundle: {str(e).splitlines()[0]}; used {used.path.name} instead"


def _install_chain(newest: _Candidate, candidates: list[_Candidate], model_id: str, cache_dir: str | Path | None, site):
    sha256 = None
    installed = None
    for bundle in _install_order(newest, candidates, model_id, cache_dir):
        try:
            installed = api.install_bundle(bundle.path, cache_dir=cache_dir, public_keys=[str(k) for k in site.keys])  # the same policy, rebuilt there
        except CacheNotWritable:
            raise  # the cache's fault, not the bundle's: no other bundle would fare better
        except (SignatureError, ApprovalError) as e:
            raise BundleUntrusted(str(bundle.path), e) from e
        except MirrorError as e:
            raise BundleRejected(str(bundle.path), e) from e
        sha256 = installed.bundle_sha256
    return installed, sha256


def _install_order(newest: _Candidate, candidates: list[_Candidate], repo_id: str, cache_dir: str | Path | None) -> list[_Candidate]:
    """`newest`, preceded by the bundles its delta chain needs that are not installed yet.

    A base that is neither installed nor in the folder is left for `install_bundle` to report:
    its error names the missing base commit and bundle."""
    by_commit = {c.commit: c for c in sorted(candidates, key=lambda c: (c.delta_base is not None, c.created_at))}
    chain = [newest]
    while chain[0].delta_base and len(chain) <= MAX_DELTA_CHAIN:
        base = chain[0].delta_base
        if api.find_snapshot(repo_id, cache_dir=cache_dir, revision=base) is not None or base not in by_commit:
            break
        chain.insert(0, by_commit[base])
    return chain


def _not_available(model_id: str, *, bundles_dir: str, unreadable: list[_Skipped]) -> TrainerError:
    """No readable bundle holds the model. An unreadable one named for it (mirror names bundles
    ORG--NAME--COMMIT12.tar) is reported with why; any others are counted and named."""
    prefix = api.bundle_stem(model_id, "")
    named = [s for s in unreadable if s.path.name.startswith(prefix)]
    if named:
        return BundleRejected(str(named[0].path), named[0].cause, note=f"it is named as a bundle of {model_id}; replace it with a good copy")
    detail = ""
    if unreadable:  # say so: the user may believe one of them is the model's bundle
        detail = f"{len(unreadable)} unreadable bundle(s) in {bundles_dir}/ skipped: {', '.join(s.path.name for s in unreadable[:3])}"
    return ModelNotAvailable(model_id, bundles_dir=bundles_dir, detail=detail)


def _candidates(bundles: Path, repo_id: str) -> tuple[list[_Candidate], list[_Skipped]]:
    """Bundles in `bundles` holding `repo_id`, judged by their manifest (the tar's head only),
    and those skipped because they are not regular files or cannot be read.

    Single-file bundles are NAME.tar; multi-part ones are NAME.tar.part0001... with an index
    NAME.tar.parts.json, which mirror reads as the one stream the parts stand for; which of the
    folder's entries are bundles is mirror's one rule (`scan_folder`: a single NAME.tar wins)."""
    found: list[_Candidate] = []
    unreadable: list[_Skipped] = []
    if not bundles.is_dir():
        return found, unreadable
    for path in api.scan_folder(bundles):
        try:
            check_regular(path)  # a FIFO would block the read forever, a device never end it
            m = api.read_manifest(path)
            delta = api.delta_info(m, bundle=str(path))
        except _UNREADABLE as e:
            unreadable.append(_Skipped(path=path, cause=e))
            continue
        if m.repo_id == repo_id and m.repo_type == "model":
            found.append(_Candidate(
                path=path, repo_id=m.repo_id, commit=m.commit, created_at=m.created_at,
                delta_base=delta.base.commit if delta else None,
            ))
    return found, unreadable


def _bundle_sha256(path: Path) -> str:
    """The bundle's own sha256 (what lineage records): one streaming pass, or free from a
    multi-part bundle's index."""
    return api.stream_sha256(path)


def _refuse_remote_code(model_id: str, snapshot: Path, trust_remote_code: bool) -> None:
    if trust_remote_code:
        return
    reason = remote_code_reason(snapshot)  # the one judge, shared with mirror's manifest and policy
    if reason:
        raise RemoteCodeRefused(model_id, reason=reason)


# --- a site mirror: $HF_ENDPOINT --------------------------------------------------------------------


def site_endpoint() -> str | None:
    """$HF_ENDPOINT when it names an http(s) site mirror other than the public Hub, else None."""
    url = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    split = urlsplit(url)
    if split.scheme not in ("http", "https") or not split.hostname or split.hostname in ("huggingface.co", "hf.co"):
        return None
    return url


class EndpointUnavailable(ModelNotAvailable):
    """The model is not in the cache and the site mirror ($HF_ENDPOINT) could not provide it.
    (Kept next to its one raiser; exit 3 like every model that is not available.)"""

    def __init__(self, model_id: str, endpoint: str, reason: str, *, fix: str):
        self.model_id = model_id
        self.endpoint = endpoint
        TrainerError.__init__(self, f"model {model_id} is not in the HF cache and the site mirror {endpoint} ($HF_ENDPOINT) cannot provide it: {reason}; {fix}")


def _from_endpoint(model_id: str, endpoint: str, *, cache_dir: str | Path | None, trust_remote_code: bool, site) -> ResolvedModel:
    """Download `model_id` from the site mirror with huggingface_hub, pinned to the commit `main`
    resolves to there, into the HF cache. Only that host:port is reachable meanwhile (the
    network guard); the trainer stays offline for everything else."""
    if site.requires_signature:
        raise EndpointUnavailable(model_id, endpoint, "a signature is required (--public-key, public_keys or $MIRROR_TRUSTED_KEYS), and a download over HTTP carries none the trainer can check",
                                  fix="run the server with 'mirror serve --public-key KEY' (it then serves only bundles signed by it) and drop the key here, or use --bundles DIR")
    if site.requires_approval:
        raise EndpointUnavailable(model_id, endpoint, "an approval is required ($MIRROR_APPROVALS), and a download over HTTP carries no bundle identity the trainer can check it against",
                                  fix="put the approved bundle in --bundles DIR (the trainer installs it and checks its approval)")
    from huggingface_hub import HfApi, snapshot_download  # deferred: a Hugging Face import waits for offline
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError  # deferred: a Hugging Face import waits for offline (and takes seconds)

    try:
        with network_guard(), allow_endpoint(endpoint), hub_online():
            info = HfApi(endpoint=endpoint).model_info(model_id, files_metadata=True)
            commit = info.sha
            path = Path(snapshot_download(model_id, revision=commit, endpoint=endpoint, cache_dir=api.cache_root(cache_dir)))  # where every other step looks, not huggingface_hub's import-time constant
    except RepositoryNotFoundError:
        raise EndpointUnavailable(model_id, endpoint, "the mirror serves no such model", fix=f"check the id, or ask the mirror's operators to add a bundle of it ('mirror pull {model_id}' on a connected host)") from None
    except RevisionNotFoundError:
        raise EndpointUnavailable(model_id, endpoint, "the mirror serves no 'main' revision of it", fix="ask the mirror's operators which revisions it serves") from None
    except (HfHubHTTPError, OSError) as e:
        raise EndpointUnavailable(model_id, endpoint, " ".join(str(e).split())[:300], fix="check HF_ENDPOINT and that the mirror is up (GET /health)") from None
    fetched = _check_fetched(model_id, endpoint, path, info.siblings or ())
    _refuse_remote_code(model_id, path, trust_remote_code)
    return ResolvedModel(repo_id=model_id, path=path, commit=commit, bundle_path=None, bundle_sha256=None, source="endpoint", endpoint=endpoint, fetched=fetched)


def _check_fetched(model_id: str, endpoint: str, snapshot: Path, siblings) -> tuple[tuple[str, str], ...]:
    """Hash every downloaded file once (in parallel) against the mirror's own listing: size, LFS
    sha256, git blob sha1. A file that differs is removed from the cache (link and blob), so no
    wrong bytes stay under the commit's name. Returns (path, sha256) of every file, as hashed."""
    want = {s.rfilename: SimpleNamespace(size=s.size, sha256=s.lfs.sha256 if s.lfs else "", git_sha1=s.blob_id or "") for s in siblings}
    files = {name: snapshot / name for name in want}
    missing = sorted(name for name, p in files.items() if not p.is_file())
    if missing:
        raise EndpointUnavailable(model_id, endpoint, f"{missing[0]} was listed but not downloaded", fix="run the command again; if it persists, check the mirror's logs")
    lfs = {p for name, p in files.items() if want[name].sha256}
    got = api.hash_files(list(files.values()), lfs=lfs)
    for name, p in sorted(files.items()):
        diff = api.first_difference(want[name], got[p], skip_empty=True)
        if diff is not None:
            algo, exp, act = diff
            blob = p.resolve()
            p.unlink(missing_ok=True)
            blob.unlink(missing_ok=True)
            raise EndpointUnavailable(model_id, endpoint, f"{name} arrived with {algo} {act}, the mirror lists {exp}; the file was removed from the cache",
                                      fix="run the command again; if it persists, the mirror's bundle or the network path is damaged")
    return tuple(sorted((name, got[p].sha256) for name, p in files.items()))

