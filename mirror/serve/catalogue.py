"""What `mirror serve` serves: every bundle of a folder that verifies, as repos, commits and refs.

The bundle stays the single source of truth: nothing is extracted or copied. Admitting a bundle
means verifying every byte of it once (`mirror.verify`, bundles in parallel), remembering the
verdict by the bundle's identity (`mirror.serve.state`), and learning where each file's data
starts in the tar stream (`bundle.layout.writer_layout`, else one header walk). A request is then
answered from those offsets (`mirror.serve.spans`), after checking on the open file that it is
still the one that was verified (its identity, ctime included: a write with the mtime put back
still shows), and for a small file after hashing the very bytes to be sent. A file found changed
at request time is answered 503 and wakes the watcher, which stops serving the bundle and
verifies it again.

A rescan (`watch`) is a cheap stat of the folder: new bundles are verified and served without a
restart; a bundle whose file changed stops being served at once and is verified again; one that
no longer verifies is logged and left out, the others unaffected. Deltas are served on top of
their base when the base is served too; a bundle naming a commit another bundle serves with other
content is refused (a commit never changes).

The view handed to the web pages (`CatalogueView`) is immutable and swapped whole, so a reader
never sees half a rescan.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Sequence

from mirror import trust
from mirror.bundle.stored import scan_folder
from mirror.delta import delta_info
from mirror.errors import ApprovalError, BundleError, MirrorError, SignatureError, UsageError
from mirror.ids import is_commit, ref_problem
from mirror.listing import one_line
from mirror.manifest import FileEntry, Manifest
from mirror.serve import spans
from mirror.serve.state import Identity, StateFile, Verdict, identity
from mirror.bundle.codec import BundleReader
from mirror.bundle.layout import MAX_TRAILER, TRAILER_MEMBERS, writer_layout
from mirror.identity import bundle_id
from mirror.verify import transfer_problem, verify_bundle

log = logging.getLogger("mirror.serve")
SERVED_TYPES = ("model", "dataset")
_SIGNATURE = TRAILER_MEMBERS[0]
_MAX_VERIFY_THREADS = 4  # each verification hashes on its own lanes: more would only contend for the disk


@dataclass(frozen=True)
class ServedCommit:
    manifest: Manifest  # the bundle's manifest (for a delta: its own manifest)
    files: tuple[FileEntry, ...]  # the complete file set served at this commit (a delta resolved on its base)
    bundle: Path  # the bundle file (or multi-part index) the bytes come from
    bundle_sha256: str
    signer: str | None  # fingerprint of the key whose signature was checked valid; None = not checked or unsigned
    verified_at: str  # ISO-8601 UTC of the verification that admitted it
    revisions: tuple[str, ...]  # revision names resolving to this commit now ("main", tags); may be empty
    signature: str = "unsigned"  # one line: "unsigned", "signed, not checked ...", "valid, key sha256:..."
    sources: Mapping[str, spans.FileSource] = field(default_factory=dict, compare=False, repr=False)  # path -> where its bytes are
    bundle_id: str = ""  # the bundle's identity (mirror.identity): what approvals, lineage and audits cite

    @property
    def commit(self) -> str:
        return self.manifest.commit

    @property
    def by_path(self) -> Mapping[str, FileEntry]:
        return {f.path: f for f in self.files}


@dataclass(frozen=True)
class ServedRepo:
    repo_type: str  # "model" | "dataset"
    repo_id: str
    commits: tuple[ServedCommit, ...]  # newest first
    refs: Mapping[str, str]  # revision name -> commit


# FailedBundle.kind: which rule keeps a bundle from being served, decided where the rule is applied
# (so the web pages and the logs never read it back out of the reason's words)
FAILED = "failed"  # it did not verify, or could not be read as a bundle
UNSIGNED = "unsigned"  # it verified, but this server serves only bundles signed by a trusted key
UNTRUSTED_SIGNATURE = "untrusted-signature"  # it verified and is signed, but not by a key this server trusts
UNAPPROVED = "unapproved"  # it verified, but the approvals this host requires do not approve it
CONFLICT = "conflict"  # it claims a commit another bundle here serves with other content
NO_BASE = "no-base"  # a delta whose base is not served from this folder
KINDS = (FAILED, UNSIGNED, UNTRUSTED_SIGNATURE, UNAPPROVED, CONFLICT, NO_BASE)


@dataclass(frozen=True)
class FailedBundle:
    path: Path
    reason: str  # one line, why it is not served
    kind: str = FAILED  # one of KINDS


class _NotServed(BundleError):
    """A bundle that verified but that a rule of this server refuses; `kind` names the rule."""

    def __init__(self, bundle: str, reason: str, *, fix: str, kind: str):
        super().__init__(bundle, reason, fix=fix)
        self.kind = kind


@dataclass(frozen=True)
class CatalogueView:
    repos: tuple[ServedRepo, ...]  # sorted by (repo_type, repo_id)
    failed: tuple[FailedBundle, ...]

    def repo(self, repo_type: str, repo_id: str) -> ServedRepo | None:
        return next((r for r in self.repos if (r.repo_type, r.repo_id) == (repo_type, repo_id)), None)


@dataclass(frozen=True)
class _Loaded:
    """One admitted bundle: its verdict, manifest, where its files are, its signature."""

    path: Path
    identity: Identity
    verdict: Verdict
    manifest: Manifest
    stream: spans.Stream
    offsets: Mapping[str, int]
    signature: str
    signer: str | None


class _Stale(Exception):
    """The remembered verdict is about other manifest bytes: verify again."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Catalogue:
    """The served repos of one bundles folder. `refresh()` scans, verifies what is new or changed
    and publishes a new view; `watch(interval)` does that in a background thread."""

    def __init__(self, bundles_dir: str | os.PathLike, *, public_keys: Sequence[str | os.PathLike] = (), state_file: Path | None = None):
        if not Path(bundles_dir).is_dir():
            raise UsageError(f"{bundles_dir} is not a directory; pass the folder that holds the bundles")
        self.folder = Path(bundles_dir).resolve()
        self.site = trust.policy(public_keys)  # keys and the approvals the environment requires, read once
        self.keys = self.site.keys
        if self.keys:
            from mirror.signing import key_fingerprint

            self.key_fingerprints = tuple(key_fingerprint(k) for k in self.keys)  # a bad key file fails now, not per bundle
        self.state = StateFile(state_file)
        self._view = CatalogueView(repos=(), failed=())
        self._index: dict[tuple[str, str], ServedRepo] = {}
        self._loaded: dict[Path, _Loaded] = {}
        self._refresh_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the contract with the web pages -------------------------------------------------------

    def view(self) -> CatalogueView:
        """A consistent snapshot (no I/O)."""
        return self._view

    def read_file(self, commit: ServedCommit, path: str, *, limit: int) -> bytes:
        """The first `limit` bytes of one served file, from the bundle."""
        src = commit.sources[path]
        with spans.open_range(src, 0, min(limit, src.entry.size)) as body:
            return b"".join(body.chunks())

    # --- lookups for the API --------------------------------------------------------------------

    def repo(self, repo_type: str, repo_id: str) -> ServedRepo | None:
        return self._index.get((repo_type, repo_id))

    @staticmethod
    def resolve(repo: ServedRepo, revision: str) -> ServedCommit | None:
        """A 40-hex commit, or a revision name the bundles carry, as the Hub resolves them."""
        sha = repo.refs.get(revision) or (revision if is_commit(revision) else None)
        return next((c for c in repo.commits if c.commit == sha), None)

    @staticmethod
    def cache_control(commit: ServedCommit, path: str, revision: str) -> str:
        """The Cache-Control of a file's bytes. A year and `immutable` only where it is true: the
        URL names the commit itself (a revision name moves) and the bytes behind it are still the
        verified ones (every served commit was verified, and under --public-key signed, when it
        was admitted). Anything else is `no-cache`: a cache asks again each time."""
        src = commit.sources.get(path)
        if revision == commit.commit and src is not None and src.stream.unchanged():
            return "public, max-age=31536000, immutable"
        return "no-cache"

    # --- scanning -------------------------------------------------------------------------------

    def refresh(self) -> CatalogueView:
        with self._refresh_lock:
            return self._refresh()

    def _refresh(self) -> CatalogueView:
        failed: dict[Path, tuple[str, str]] = {}  # path -> (reason, kind)
        current: dict[Path, Identity] = {}
        try:
            entries = scan_folder(self.folder)
        except OSError as e:
            log.error("cannot list %s (%s); serving what was verified before", self.folder, e.strerror or e)
            return self._view
        for p in entries:
            try:
                current[p] = identity(p)
            except (MirrorError, OSError) as e:
                failed[p] = _reason(e), FAILED
        kept = {p: ld for p, ld in self._loaded.items() if current.get(p) == ld.identity}
        if set(kept) != set(self._loaded):  # changed or removed: stop serving them before re-verifying
            for p in sorted(set(self._loaded) - set(kept)):
                log.warning("%s changed or was removed: no longer served%s", p.name, "; verifying it again" if p in current else "")
            self._publish(kept, {})
        todo = [p for p in current if p not in kept]
        verdicts = {p: self.state.get(p, current[p]) for p in todo}
        need = [p for p in todo if verdicts[p] is None]
        if need:
            log.info("verifying %d bundle(s): %s", len(need), ", ".join(p.name for p in need[:5]) + (" ..." if len(need) > 5 else ""))
            for p, v in zip(need, self._verify_all(need, current)):
                verdicts[p] = v
        for p in todo:
            v = verdicts[p]
            if v is None:  # changed while it was being verified: the next scan takes it
                continue
            if not v.ok:
                failed[p] = v.reason or "does not verify", FAILED
                continue
            try:
                try:
                    kept[p] = self._load(p, current[p], v)
                except _Stale:
                    v = verdicts[p] = self._verify(p, current[p])
                    if v is None or not v.ok:
                        failed[p] = (v.reason if v else None) or "changed while it was verified", FAILED
                        continue
                    kept[p] = self._load(p, current[p], v)
            except (MirrorError, OSError, _Stale) as e:
                failed[p] = _reason(e), getattr(e, "kind", FAILED)
        for p, v in verdicts.items():
            if v is not None:
                self.state.put(p, v)
        self.state.keep_only({str(p) for p in current})
        if todo or len(self.state.verdicts) != len(current):
            self.state.save()
        return self._publish(kept, failed)

    def _verify_all(self, paths: list[Path], idents: dict[Path, Identity]) -> list[Verdict | None]:
        workers = max(1, min(len(paths), os.cpu_count() or 1, _MAX_VERIFY_THREADS))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
            return list(pool.map(lambda p: self._verify(p, idents[p]), paths))

    def _verify(self, path: Path, ident: Identity) -> Verdict | None:
        """Every byte of the bundle against its manifest (and the bundle's own sha256), or None
        when the file changed meanwhile."""
        started = _now()
        try:
            with BundleReader(path, hash_all=False) as r:
                manifest_sha = hashlib.sha256(r.manifest_bytes).hexdigest()
            report = verify_bundle(path, bundle_sha256=True)
        except (MirrorError, OSError) as e:
            return Verdict(identity=ident, ok=False, reason=_reason(e), bundle_sha256=None, manifest_sha256=None, verified_at=started)
        try:
            if identity(path) != ident:
                return None
        except (MirrorError, OSError):
            return None
        reason = None if report.ok else one_line(f"{report.summary()} ({report.lines()[0]})")
        if report.ok and (mismatch := transfer_problem(report)) is not None:  # the .sha256 sidecar beside it, as install checks it
            return Verdict(identity=ident, ok=False, reason=_reason(mismatch), bundle_sha256=None, manifest_sha256=None, verified_at=started)
        return Verdict(identity=ident, ok=report.ok, reason=reason, bundle_sha256=report.bundle_sha256 if report.ok else None, manifest_sha256=manifest_sha, verified_at=started)

    def _load(self, path: Path, ident: Identity, verdict: Verdict) -> _Loaded:
        """Admit a verified bundle: its manifest (the one the verdict is about), the offsets of its
        files, and its signature judged under the keys this server requires."""
        sig = None
        with BundleReader(path, hash_all=False) as r:
            if hashlib.sha256(r.manifest_bytes).hexdigest() != verdict.manifest_sha256:
                raise _Stale()
            m, manifest_bytes = r.manifest, r.manifest_bytes
            with r.ranges() as src:
                layout = writer_layout(src, m, r.offset)
                if layout is not None:
                    offsets = {f.path: off for f, off in layout.files}
                    if _SIGNATURE in layout.trailer:
                        sig = src.read(*layout.trailer[_SIGNATURE])
            if layout is None:  # another writer's layout: one walk of the headers finds the data
                offsets = {}
                for member, chunks in r.payload():
                    if member.problem:
                        raise BundleError(r.label, member.problem)
                    if member.entry is not None:
                        offsets[member.entry.path] = r.offset
                    elif member.name == _SIGNATURE and member.size <= MAX_TRAILER:
                        sig = b"".join(chunks)
        if m.repo_type not in SERVED_TYPES:
            raise BundleError(str(path), f"a {m.repo_type} repo; mirror serve serves model and dataset repos", fix="serve it another way, or move it out of the folder")
        if m.revision and (why := ref_problem(m.revision)):
            raise BundleError(str(path), f"revision {m.revision!r} {why}")
        delta_info(m, bundle=str(path))  # a malformed delta section is refused here, not per request
        try:  # an approval the environment requires ($MIRROR_APPROVALS): judged on the manifest the verdict is about
            self.site.require_approval(bundle_id(manifest_bytes), label=path.name)
        except ApprovalError as e:
            raise _NotServed(str(path), f"not served: {' '.join(str(e).split())}", fix="only bundles the security team approved are served here",
                             kind=UNAPPROVED) from None
        signer = None
        if self.keys:
            try:
                signer = trust.require_signature(manifest_bytes, sig, keys=self.keys, bundle=path.name).key_fingerprint
            except SignatureError as e:
                raise _NotServed(str(path), f"not served: {e.reason}", fix="only bundles signed by a --public-key (or $MIRROR_TRUSTED_KEYS) key are served",
                                 kind=UNSIGNED if sig is None else UNTRUSTED_SIGNATURE) from None
            signature = f"valid, key sha256:{signer}"
        elif sig is None:
            signature = "unsigned"
        else:
            from mirror.signing import check_signature

            signature = check_signature(manifest_bytes, sig, public_key_path=None).summary()
        return _Loaded(path=path, identity=ident, verdict=verdict, manifest=m, stream=spans.stream_of(path, ident, on_change=self._changed),
                       offsets=MappingProxyType(offsets), signature=signature, signer=signer)

    # --- building the view ------------------------------------------------------------------------

    def _publish(self, loaded: dict[Path, _Loaded], failed: dict[Path, tuple[str, str]]) -> CatalogueView:
        commits, more_failed = build_commits(list(loaded.values()))
        failed = {**failed, **more_failed}
        repos = build_repos(commits)
        view = CatalogueView(repos=repos, failed=tuple(FailedBundle(p, r, k) for p, (r, k) in sorted(failed.items())))
        before = {c.bundle for r in self._view.repos for c in r.commits}
        after = {c.bundle for r in repos for c in r.commits}
        for b in sorted(after - before):
            log.info("serving %s", b.name)
        old_failed = {f.path: f.reason for f in self._view.failed}
        for p, (why, _) in sorted(failed.items()):
            if old_failed.get(p) != why:
                log.error("not serving %s: %s", p.name, why)
        self._loaded = {p: ld for p, ld in loaded.items() if p not in more_failed}
        self._index = {(r.repo_type, r.repo_id): r for r in repos}
        self._view = view
        return view

    # --- the watcher --------------------------------------------------------------------------------

    def watch(self, interval: float) -> None:
        """Rescan every `interval` seconds (or at once after `wake()`) in a daemon thread."""
        if self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.is_set():
                self._wake.wait(interval)
                self._wake.clear()
                if self._stop.is_set():
                    return
                try:
                    self.refresh()
                except (MirrorError, OSError) as e:
                    log.error("rescan of %s failed: %s", self.folder, _reason(e))

        self._thread = threading.Thread(target=loop, name="mirror-serve-rescan", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Rescan now (a served file was found changed)."""
        self._wake.set()

    def _changed(self, path: Path) -> None:
        """A request found `path` changed since it was verified (spans refuses to send from it):
        the rescan drops the bundle and verifies it again."""
        self.wake()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _reason(e: BaseException) -> str:
    return one_line(getattr(e, "reason", None) or str(e) or type(e).__name__)


def build_commits(loaded: list[_Loaded]) -> tuple[dict[tuple[str, str, str], ServedCommit], dict[Path, tuple[str, str]]]:
    """ServedCommits keyed by (repo_type, repo_id, commit): full bundles first, then deltas on top
    of a served base (chains included). Returns them and the bundles refused, with why and the kind."""
    commits: dict[tuple[str, str, str], ServedCommit] = {}
    failed: dict[Path, tuple[str, str]] = {}
    deltas = []

    def admit(ld: _Loaded, files: tuple[FileEntry, ...], sources: dict[str, spans.FileSource]) -> None:
        m = ld.manifest
        key = (m.repo_type, m.repo_id, m.commit)
        other = commits.get(key)
        if other is not None:
            if {f.path: (f.sha256, f.size) for f in other.files} != {f.path: (f.sha256, f.size) for f in files}:
                failed[ld.path] = f"claims {m.repo_id}@{m.commit[:12]}, which {other.bundle.name} serves with other content; a commit never changes: remove the forged or mistaken one", CONFLICT
            return  # the same commit twice (a re-signed copy, parts and a single file): served once
        commits[key] = ServedCommit(manifest=m, files=files, bundle=ld.path, bundle_sha256=ld.verdict.bundle_sha256 or "",
                                    signer=ld.signer, verified_at=ld.verdict.verified_at, revisions=(), signature=ld.signature,
                                    sources=MappingProxyType(sources), bundle_id=f"sha256:{ld.verdict.manifest_sha256}")

    for ld in sorted(loaded, key=lambda ld: ld.path.name):
        info = delta_info(ld.manifest, bundle=str(ld.path))
        if info is None:
            admit(ld, ld.manifest.files, {f.path: spans.FileSource(f, ld.stream, ld.offsets[f.path]) for f in ld.manifest.files})
        else:
            deltas.append((ld, info))
    while deltas:
        left = []
        for ld, info in deltas:
            m = ld.manifest
            base = commits.get((m.repo_type, m.repo_id, info.base.commit))
            if base is None:
                left.append((ld, info))
                continue
            sources: dict[str, spans.FileSource] = {}
            carried = {f.path for f in m.files}
            for f in info.target_files:
                if f.path in carried:
                    sources[f.path] = spans.FileSource(f, ld.stream, ld.offsets[f.path])
                    continue
                b = base.sources.get(f.path)
                if b is None or (b.entry.sha256, b.entry.size) != (f.sha256, f.size):
                    failed[ld.path] = f"delta does not carry {f.path}, and its base {info.base.commit[:12]} does not hold that file with that content", FAILED
                    break
                sources[f.path] = spans.FileSource(f, b.stream, b.offset)
            else:
                admit(ld, info.target_files, sources)
        if len(left) == len(deltas):
            for ld, info in left:
                failed[ld.path] = f"delta on top of {info.base.describe()}, which is not served from this folder; add the base bundle", NO_BASE
            break
        deltas = left
    return commits, failed


def build_repos(commits: dict[tuple[str, str, str], ServedCommit]) -> tuple[ServedRepo, ...]:
    """Repos with their commits newest first and their refs: each revision name the bundles carry
    points at the newest commit carrying it; `main` at the newest bundle whose revision is main,
    else (no bundle says main: packs are labelled `local`) at the newest commit, as `mirror
    install` writes refs/main for a repo that has none."""
    grouped: dict[tuple[str, str], list[ServedCommit]] = {}
    for (rtype, rid, _), c in commits.items():
        grouped.setdefault((rtype, rid), []).append(c)
    repos = []
    for (rtype, rid), cs in sorted(grouped.items()):
        cs.sort(key=lambda c: (c.manifest.created_at, _mtime(c), c.commit), reverse=True)
        refs: dict[str, str] = {}
        for c in cs:
            rev = c.manifest.revision
            if rev and not is_commit(rev) and ref_problem(rev) is None:
                refs.setdefault(rev, c.commit)
        refs.setdefault("main", cs[0].commit)
        named = tuple(replace(c, revisions=tuple(sorted(n for n, sha in refs.items() if sha == c.commit))) for c in cs)
        repos.append(ServedRepo(repo_type=rtype, repo_id=rid, commits=named, refs=MappingProxyType(dict(sorted(refs.items())))))
    return tuple(repos)


def _mtime(c: ServedCommit) -> int:
    try:
        return os.stat(c.bundle).st_mtime_ns
    except OSError:
        return 0
