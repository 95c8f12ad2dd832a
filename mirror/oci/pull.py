"""`mirror pull oci://...`: rebuild the pushed bundle, byte for byte, from its layers.

The OCI manifest is checked first (ModelPack, file layers = the bundle manifest's files:
mirror.oci.modelpack.check); the bundle manifest and signature come from its OCI 1.1 referrers
(mirror.oci.referrers), or from layers of it in an artifact pushed before referrers. The bundle is then laid out exactly as the writer lays it out
(mirror.bundle.layout's member headers and padding around the manifest member as stored, each file in path
order, the signature trailer) with every layer streamed straight into place, its digest checked as
it passes and the bundle's sha256 computed alongside (two hash lanes). It is written under
`.<NAME>.tar.<digest12>.oci-partial`, which no command takes for a bundle; a pull that stops (a
dropped connection, Ctrl-C) leaves it, and the next pull of the same artifact re-hashes what is
there and goes on with HTTP Range requests.

The checks are those of `mirror verify`'s fast path, with the hashing done as the bytes arrive
instead of in a second read of the finished file: every file's sha256 and git sha1 (DualHasher,
compared with `first_difference`, as verify does; an empty file included), then the finished file
reopened by the strict reader (manifest parse, name collisions) and its every header compared
with the deterministic writer's (`writer_layout`), and the bundle's sha256 compared with the one
the push recorded. Only then is it renamed to `NAME.tar`, with its sidecar.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import requests

from mirror.bundle import parts

from common import atomic, progress
from mirror.bundle import bundle_filename
from mirror.errors import (
    ArtifactMismatch,
    HashMismatch,
    MirrorError,
    NotEnoughSpace,
    RegistryError,
    SignatureError,
    UsageError,
)
from mirror.hashing import CHUNK, DualHasher, HashLanes, first_difference
from mirror.manifest import MANIFEST_NAME, PAYLOAD_PREFIX, FileEntry, Manifest
from mirror.oci import importer, modelpack, referrers
from mirror.oci.auth import Credentials
from mirror.oci.client import Client, reason
from mirror.oci.reference import Reference
from mirror.oci.transport import iter_body
from mirror.signing import check_signature, require_valid
from mirror.bundle.codec import BundleReader
from mirror.bundle.layout import TRAILER_MEMBERS, archive_size, member_header, padding, writer_layout
from mirror.bundle.stored import Ranges, sidecar_sha256, write_sidecar
from mirror.bundle.write.sinks import refuse_overwrite

RETRIES = 2  # a dropped connection mid-layer is resumed (Range) this many times before giving up
NET_CHUNK = 256 * 1024  # a read cut by a dropped connection is lost whole: keep reads small


@dataclass(frozen=True)
class PullResult:
    path: Path
    sha256: str
    size: int
    manifest: Manifest
    digest: str  # the OCI manifest's
    resumed_bytes: int  # bytes already in the partial file from an earlier, interrupted pull
    fetched_bytes: int  # layer bytes transferred by this pull
    kept: bool = False  # the bundle was already there, byte for byte (checked): nothing fetched or rewritten


@dataclass(frozen=True)
class _Seg:
    """A stretch of the bundle: fixed bytes, or one layer's bytes."""

    offset: int
    size: int
    data: bytes | None = None
    layer: modelpack.Layer | None = None
    entry: FileEntry | None = None


def _plan(m: Manifest, member: bytes, signature: bytes | None, files: dict[str, modelpack.Layer]) -> tuple[list[_Seg], int]:
    segs: list[_Seg] = []
    pos = 0

    def fixed(data: bytes) -> None:
        nonlocal pos
        if segs and segs[-1].data is not None:  # merge neighbours: fewer, larger writes
            last = segs.pop()
            data = last.data + data
            pos = last.offset
        segs.append(_Seg(pos, len(data), data=data))
        pos += len(data)

    fixed(member_header(MANIFEST_NAME, len(member)) + member + b"\0" * padding(len(member)))
    for f in sorted(m.files, key=lambda f: f.path.encode("utf-8")):
        fixed(member_header(PAYLOAD_PREFIX + f.path, f.size))
        segs.append(_Seg(pos, f.size, layer=files[f.path], entry=f))  # empty files too: their digests are checked
        pos += f.size
        if padding(f.size):
            fixed(b"\0" * padding(f.size))
    if signature is not None:
        fixed(member_header(TRAILER_MEMBERS[0], len(signature)) + signature + b"\0" * padding(len(signature)))
    total = archive_size(pos)
    fixed(b"\0" * (total - pos))
    return segs, total


@dataclass(frozen=True)
class Evidence:
    """What mirror needs beside the model layers to rebuild and trust the bundle: the bundle
    manifest member as stored and the signature (None: unsigned), and where they were found."""

    member: bytes
    signature: bytes | None
    found_in: str  # "layers" (pushed by mirror before referrers), "referrers API", "referrers tag"


def find_evidence(client: Client, art: modelpack.Artifact, *, digest: str, where: str) -> Evidence | None:
    """The bundle manifest and signature of the artifact whose manifest has `digest`: layers of it
    (pushed before referrers) or its referrers, each the one whose digest the model manifest names
    (mirror.oci.referrers). None when it names none: a ModelPack artifact mirror did not push."""
    want = art.bundle_manifest_digest
    if want is None:
        return None
    if art.manifest_layer is not None and art.manifest_layer.size > modelpack.MAX_BUNDLE_MANIFEST:
        raise ArtifactMismatch(where, f"the bundle manifest layer is {art.manifest_layer.size} bytes, over the {modelpack.MAX_BUNDLE_MANIFEST} byte limit")
    if art.manifest_layer is not None:
        member = client.read_blob(want, max_size=modelpack.MAX_BUNDLE_MANIFEST, what="the bundle manifest layer")
        signature = None
        if art.signature_layer is not None:
            signature = client.read_blob(art.signature_layer.digest, max_size=modelpack.MAX_SIGNATURE, what="the signature layer")
        return Evidence(member=member, signature=signature, found_in="layers")
    listed, found_in = referrers.listed(client, digest)
    member = referrers.fetch_blob(client, listed, subject=digest, artifact_type=modelpack.BUNDLE_MANIFEST_TYPE, blob_digest=want,
                                  max_size=modelpack.MAX_BUNDLE_MANIFEST, what="the bundle manifest referrer")
    if member is None:
        raise ArtifactMismatch(where, f"the artifact names its bundle manifest {want[:19]}…, but no referrer of it in the registry ({found_in}) carries it",
                               fix="push the bundle again (a copy made without its referrers lacks them: copy the referrers tag too, docs/oci.md)")
    signature = None
    if (sig_digest := art.signature_digest) is not None:
        signature = referrers.fetch_blob(client, listed, subject=digest, artifact_type=modelpack.BUNDLE_SIGNATURE_TYPE, blob_digest=sig_digest,
                                         max_size=modelpack.MAX_SIGNATURE, what="the signature referrer")
    return Evidence(member=member, signature=signature, found_in=found_in)


def fetch_artifact(client: Client, ref: Reference, *, public_key: str | Path | None = None) -> tuple[modelpack.Artifact, Manifest, bytes, bytes | None, str]:
    """The checked artifact: (artifact, bundle manifest, manifest member bytes, signature, digest).
    With `public_key`, a signature that is missing or does not verify is refused (SignatureError)
    before a layer is fetched."""
    if not ref.reference:
        raise UsageError(f"{ref}: name a tag (…:TAG) or a digest (…@sha256:…) to pull")
    raw, media, digest = client.get_manifest(ref.reference)
    where = str(ref)
    art = modelpack.parse_artifact(raw, media, where=where)
    evidence = find_evidence(client, art, digest=digest, where=where)
    if evidence is None:  # a ModelPack artifact mirror did not push: pull_bundle imports it (mirror.oci.importer)
        raise importer.ForeignArtifact(where, artifact=art, digest=digest)
    config = client.read_blob(art.config.digest, max_size=modelpack.MAX_CONFIG, what="the ModelPack config")
    m = modelpack.check(art, evidence.member, where=where, config=config)
    if public_key is not None:
        require_valid(check_signature(evidence.member, evidence.signature, public_key_path=public_key), bundle=where)
    if evidence.signature is None and art.signature_digest is not None:
        raise ArtifactMismatch(where, f"the artifact names its signature {art.signature_digest[:19]}…, but no referrer of it in the registry ({evidence.found_in}) carries it",
                               fix="push the bundle again (a copy made without its referrers lacks them: copy the referrers tag too, docs/oci.md)")
    return art, m, evidence.member, evidence.signature, digest


def pull_bundle(ref: Reference, *, out_dir: str | Path, plain_http: bool = False, ca_cert: str | Path | None = None,
                credentials: Credentials | None = None, show_progress: bool = True, public_key: str | Path | None = None,
                allow_pickle: bool = False, overwrite: bool = False) -> PullResult:
    """The pushed bundle, rebuilt; or, from an artifact another tool wrote, one built from its
    layers (`allow_pickle`: the pickle policy of that build, as for a Hub pull). A bundle already
    at its name holding other bytes is replaced only with `overwrite` (as `mirror pack` and a Hub
    pull: mirror.bundle.write.sinks.refuse_overwrite); one holding exactly these bytes is kept."""
    out_dir = Path(out_dir)
    with Client(ref.registry, ref.repository, plain_http=plain_http, ca_cert=ca_cert, credentials=credentials) as client:
        try:
            art, m, member, signature, digest = fetch_artifact(client, ref, public_key=public_key)
        except importer.ForeignArtifact as foreign:  # another tool's artifact: a bundle is built from its layers
            if public_key is not None:
                raise SignatureError(str(ref), "another tool wrote this artifact: it carries no mirror signature to check against --public-key",
                                     fix="pull it without --public-key, then sign the bundle you checked ('mirror sign')") from None
            made = importer.import_artifact(client, ref, artifact=foreign.artifact, digest=foreign.digest, out_dir=out_dir,
                                            allow_pickle=allow_pickle, show_progress=show_progress, overwrite=overwrite)
            return PullResult(path=made.info.path, sha256=made.info.sha256, size=made.info.size, manifest=made.info.manifest,
                              digest=foreign.digest, resumed_bytes=0, fetched_bytes=made.fetched_bytes)
        files = {layer.path: layer for layer in art.files}
        segs, total = _plan(m, member, signature, files)
        final = out_dir / bundle_filename(m.repo_id, m.commit, repo_type=m.repo_type)
        partial = out_dir / f".{final.name}.{digest[7:19]}.oci-partial"
        if not overwrite and (here := _already_here(final, segs, total, member=member, signature=signature)) is not None:
            if here[0] == final and sidecar_sha256(final) != here[1]:  # the bundle is kept; only a missing or stale sidecar is written
                write_sidecar(final, here[1])
            return PullResult(path=here[0], sha256=here[1], size=total, manifest=m, digest=digest, resumed_bytes=0, fetched_bytes=0, kept=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            if e.errno == getattr(errno, "ELOOP", -1):
                raise UsageError(f"{partial} is a symbolic link, not a pull's partial file; remove it and pull again") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device planted under the partial's name
            os.close(fd)
            raise UsageError(f"{partial} is not a regular file, not a pull's partial file; remove it and pull again")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "r+b") as out:
            try:
                fcntl.flock(out.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UsageError(f"another mirror pull is writing {partial}; wait for it to finish") from None
            have = os.fstat(out.fileno()).st_size
            if have > total:
                out.truncate(0)
                have = 0
            free = shutil.disk_usage(out_dir).free
            if free < total - have:
                raise NotEnoughSpace(str(out_dir), needed=total - have, free=free)
            sha, resumed, fetched = _write(client, out, segs, have, total=total, label=f"pull {m.repo_id}", show=show_progress)
        recorded = art.annotations.get(modelpack.BUNDLE_SHA256)
        if isinstance(recorded, str) and recorded != sha:
            partial.unlink(missing_ok=True)
            raise ArtifactMismatch(str(ref), f"the rebuilt bundle's sha256 is {sha}, but the push recorded {recorded}", fix="do not use it: push the bundle again")
        try:
            _check_layout(partial, label=str(ref))
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, final)
        write_sidecar(final, sha)
        parts.remove_parts(final)  # a multi-part bundle of the same name is superseded, as the writer does
        return PullResult(path=final, sha256=sha, size=total, manifest=m, digest=digest, resumed_bytes=resumed, fetched_bytes=fetched)


def _write(client: Client, out, segs: list[_Seg], have: int, *, total: int, label: str, show: bool) -> tuple[str, int, int]:
    """Fill `out` front to back: bytes already there (an interrupted pull's) are re-hashed and
    kept while they are right, the rest is written (fixed bytes) or fetched (layers, resumed
    with Range). Returns (bundle sha256, bytes kept, layer bytes fetched)."""
    stream = hashlib.sha256()
    resumed = fetched = 0
    # lane 0: the bundle's sha256; lanes 1 and 2: the current file's sha256 and git sha1
    with HashLanes(3) as lanes, progress.meter(label, total, tty=show) as meter:
        for seg in segs:
            present = max(0, min(seg.size, have - seg.offset))
            if seg.data is not None:
                if present and os.pread(out.fileno(), present, seg.offset) != seg.data[:present]:
                    present = 0
                if present < seg.size:
                    out.seek(seg.offset)
                    out.truncate()
                    out.write(seg.data)
                    have = seg.offset + seg.size
                else:
                    resumed += seg.size
                lanes.submit(0, stream, seg.data)
                meter.add(seg.size)
                continue
            layer_sha = DualHasher(seg.size, lfs=seg.entry.lfs, lanes=lanes, lane_ids=(1, 2))
            # what an earlier pull left of this layer: hashed again, never trusted unread
            pos = 0
            while pos < present:
                chunk = os.pread(out.fileno(), min(CHUNK, present - pos), seg.offset + pos)
                lanes.submit(0, stream, chunk)
                layer_sha.update(chunk)
                pos += len(chunk)
            resumed += present
            meter.add(present)
            if present < seg.size:
                out.seek(seg.offset + present)
                out.truncate()
                got = _fetch(client, seg, present, out, lanes, stream, layer_sha, meter)
                fetched += got
            have = seg.offset + seg.size
            if diff := first_difference(seg.entry, layer_sha.digest()):
                out.truncate(seg.offset)  # keep the checked prefix; this layer is fetched afresh next time
                algorithm, expected, actual = diff
                if algorithm == "sha256":
                    raise HashMismatch(seg.layer.path, algorithm=algorithm, expected=expected, actual=actual,
                                       where=f"in the layer the registry {client.registry} served (nothing was kept; the registry's copy is damaged: push the bundle again)")
                raise HashMismatch(seg.layer.path, algorithm=algorithm, expected=expected, actual=actual,
                                   where="against the bundle manifest inside the artifact (it contradicts itself: push a bundle that passes mirror verify)")
        out.flush()
        lanes.drain(0)
    return stream.hexdigest(), resumed, fetched


def _fetch(client: Client, seg: _Seg, start: int, out, lanes: HashLanes, stream, layer_sha, meter) -> int:
    """Stream one layer from byte `start` into `out` at its place, resuming after a dropped
    connection; RegistryError after RETRIES drops (what arrived stays for the next pull)."""
    pos, tries = start, 0
    what = f"layer {seg.layer.path!r}"
    while True:
        r = client.open_blob(seg.layer.digest, start=pos, size=seg.size - pos, what=what)
        try:
            if pos and r.status_code == 200:  # Range ignored: the whole blob again; skip what we have
                skip = pos
            else:
                skip = 0
            for chunk in iter_body(r, NET_CHUNK):  # under the request's deadline (mirror.oci.transport)
                if skip:
                    cut = min(skip, len(chunk))
                    chunk, skip = chunk[cut:], skip - cut
                    if not chunk:
                        continue
                if pos + len(chunk) > seg.size:
                    raise ArtifactMismatch(str(client.registry), f"{what} is longer than the {seg.size} bytes its descriptor says", fix="the registry's copy is damaged: push the bundle again")
                out.write(chunk)
                lanes.submit(0, stream, chunk)
                layer_sha.update(chunk)
                pos += len(chunk)
                client.bytes_received += len(chunk)
                meter.add(len(chunk))
            if pos == seg.size:
                return pos - start
            err = f"the registry closed the connection after {pos} of {seg.size} bytes"
        except (requests.exceptions.RequestException, ConnectionError, OSError) as e:
            if isinstance(e, RegistryError):
                raise
            err = f"the connection dropped after {pos} of {seg.size} bytes ({reason(e)})"
        finally:
            r.close()
        out.flush()
        tries += 1
        if tries > RETRIES:
            raise RegistryError(f"{what} from {client.registry}: {err}, {tries} times; run the same pull again: it resumes where it stopped")


def _already_here(final: Path, segs: list[_Seg], total: int, *, member: bytes, signature: bytes | None) -> tuple[Path, str] | None:
    """(its path, its sha256) when a bundle at `final` (a file, or parts) already holds exactly the
    bytes this pull would write, None when there is none. Read once, as a resumed partial is:
    every fixed stretch byte for byte, every file's stretch hashed against the manifest entry its
    layer is checked against, so a damaged copy is never taken for the artifact. A bundle holding
    other bytes is refused (UsageError) before anything is fetched: nothing silently ends a bundle
    whose sha256 someone wrote down (issue 24); `--overwrite` replaces it."""
    index = parts.index_path(final)
    where = final if (final.exists() or final.is_symlink()) else index if index.exists() else None
    if where is None:
        return None
    refuse_overwrite(final, manifest_bytes=member, size=total, signature=signature)  # another identity, size or signature
    why = _differs(where, segs, total)
    if isinstance(why, tuple):
        return why
    raise UsageError(f"{where} already exists and holds this bundle with other bytes ({why}); nothing was fetched: "
                     "pass --overwrite to replace it, or --out another folder")


def _differs(where: Path, segs: list[_Seg], total: int) -> tuple[Path, str] | str:
    """(where, stream sha256) when the bundle at `where` holds exactly the bytes `segs` describe,
    else why not, in a few words."""
    stream = hashlib.sha256()
    try:
        with Ranges(where) as src, HashLanes(3) as lanes:  # lane 0: the stream; 1 and 2: a file's sha256 and git sha1
            if src.size != total:
                return f"{src.size} bytes, not {total}"
            for seg in segs:
                if seg.data is not None:
                    if src.read(seg.offset, seg.size) != seg.data:
                        return f"its tar structure differs near byte {seg.offset}"
                    lanes.submit(0, stream, seg.data)
                    continue
                layer_sha = DualHasher(seg.size, lfs=seg.entry.lfs, lanes=lanes, lane_ids=(1, 2))
                for pos in range(seg.offset, seg.offset + seg.size, CHUNK):
                    chunk = src.read(pos, min(CHUNK, seg.offset + seg.size - pos))
                    lanes.submit(0, stream, chunk)
                    layer_sha.update(chunk)
                if diff := first_difference(seg.entry, layer_sha.digest()):
                    return f"{seg.entry.path}: {diff[0]} {diff[2][:16]}…, the manifest says {diff[1][:16]}…: damaged"
            lanes.drain(0)
    except (MirrorError, OSError) as e:
        return f"it cannot be read: {' '.join(str(e).split())[:120]}"
    return where, stream.hexdigest()


def _check_layout(path: Path, *, label: str) -> None:
    """The finished file, reopened: the strict reader's manifest checks, then every header and
    the zeros after the last member exactly as the deterministic writer makes them."""
    with BundleReader(path, hash_all=False) as reader, reader.ranges() as src:
        head = member_header(MANIFEST_NAME, len(reader.manifest_bytes))
        if src.read(0, len(head)) != head or writer_layout(src, reader.manifest, reader.offset) is None:
            raise ArtifactMismatch(label, "the rebuilt bundle is not in the writer's layout", fix="do not use it: push the bundle again")


def install_from_registry(ref: Reference, *, install, plain_http: bool = False, ca_cert: str | Path | None = None,
                          credentials: Credentials | None = None, show_progress: bool = True, tmp_dir: str | Path | None = None):
    """Pull into a private temporary folder, then `install(bundle_path)` (mirror.install's
    verified core, as for any bundle), then remove the folder, whatever happened."""
    root = Path(tmp_dir or tempfile.gettempdir())
    for name in os.listdir(root):  # what a SIGKILLed install left: its owner's pid is in the name
        if name.startswith(".mirror-oci.") and atomic.is_stale(name):
            shutil.rmtree(root / name, ignore_errors=True)
    tmp = atomic.temp_path(root / "mirror-oci", suffix="staging")
    tmp.mkdir(mode=0o700)
    try:
        pulled = pull_bundle(ref, out_dir=tmp, plain_http=plain_http, ca_cert=ca_cert, credentials=credentials, show_progress=show_progress)
        return pulled, install(pulled.path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
