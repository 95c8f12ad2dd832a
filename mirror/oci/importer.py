"""`mirror pull oci://REF` of a ModelPack artifact another tool wrote (modelpack-client, KitOps
`kit pack --use-model-pack`, modctl, Harbor's Hub import): no mirror bundle travels with it, so
one is built from the layers, as `mirror pack` builds one from a folder.

Why a separate path from mirror.oci.pull: that one rebuilds a pushed bundle byte for byte from
its evidence (the bundle manifest, signature); here there is none, so the files are taken from
the layers (raw, `.tar`, `.tar+gzip`, `.tar+zstd`: github.com/modelpack/model-spec docs/spec.md),
each layer's sha256 computed as its bytes stream past and compared with its descriptor before
anything is kept, and the config's `modelfs.diffIds` (the uncompressed tar's sha256) compared
too. Tar layers are read as strictly as mirror's own bundle reader reads a bundle: regular files
and folders only (no links, devices, FIFOs, sparse files, global headers), no absolute or `..`
path, no name twice, no header over 1 MiB, nothing but zeros after the end. The files land in a
private staging folder (temp name, removed whatever happens), the pickle policy runs over them
as for every other source, and the bundle is written by mirror's one writer
(`mirror.bundle.write`): its commit id is `pack_commit` of the content, the one `mirror pack`
derives for the same files, unless the artifact names a 40-hex source revision
(`org.opencontainers.image.revision`, or the config's `descriptor.revision`); its source is
`oci://REF@sha256:<manifest digest>`. A failure leaves no bundle and no staging folder.

Nothing is resumed: an interrupted import starts over (the layers of another tool's artifact
have no place in a bundle until all of them are in and checked).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import requests
import zstandard

from common import atomic, progress, safejson
from mirror.bundle import BundleInfo, BundleSpec, is_lfs
from mirror.bundle.write.driver import write
from mirror.bundle.write.sinks import FileSink
from mirror.bundle.write.sources import FolderSource
from mirror.errors import ArtifactMismatch, NotEnoughSpace, NotModelPack, RegistryError
from mirror.ids import is_commit, repo_id_problem, unsafe_path_reason
from mirror.manifest import FileEntry, classify, license_from_card
from mirror.oci import modelpack
from mirror.oci.client import Client, reason
from mirror.oci.reference import Reference
from mirror.oci.transport import iter_body
from mirror.policy import check_files, check_paths
from mirror.bundle.write.files import Sources
from mirror.bundle.codec import name_collision

# a layer's packing, from its media type's last part (specs-go/v1/mediatype.go): raw, tar, tar+gzip, tar+zstd
PACKINGS = ("raw", "tar", "tar+gzip", "tar+zstd")
REVISION = "org.opencontainers.image.revision"
CREATED = "org.opencontainers.image.created"
LICENSES = "org.opencontainers.image.licenses"
EMPTY_SHA256 = "sha256:" + hashlib.sha256(b"").hexdigest()

MAX_TAR_HEADER = 1024 * 1024  # a PAX or GNU long-name record: = mirror.bundle.codec.MAX_PAX
MAX_TAIL = 64 * 1024  # zeros after a tar's end marker (tar pads to 10 KiB records; some tools more)
MAX_MEMBERS = 1_000_000  # tar members in one layer: tarfile keeps each one's header in memory
ZSTD_WINDOW = 1 << 27  # zstd's own default limit (128 MiB): a frame may not demand more memory
NET_CHUNK = 256 * 1024
# one read through the decoders and tarfile, kept small: tarfile builds it by joining smaller reads,
# so while it is built it is in memory twice
READ = 1024 * 1024
CARD_BYTES = 64 * 1024  # the YAML header of a model card is at its very top (= pack.CARD_BYTES)
_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


@dataclass(frozen=True)
class Layer:
    index: int
    packing: str  # "raw", "tar", "tar+gzip" or "tar+zstd"
    digest: str
    size: int
    path: str | None  # org.cncf.model.filepath: a raw layer's file, a tar layer's folder

    @property
    def label(self) -> str:
        return f"layer {self.index} ({self.path!r})" if self.path else f"layer {self.index} ({self.digest[:19]})"


class ForeignArtifact(NotModelPack):
    """The artifact is ModelPack but carries no mirror evidence (another tool wrote it): raised by
    the pull of a pushed bundle, which cannot rebuild one, with the artifact it parsed, so the
    caller can import it instead (`import_artifact`)."""

    def __init__(self, where: str, *, artifact: modelpack.Artifact, digest: str):
        self.artifact, self.digest = artifact, digest
        super().__init__(where, "this ModelPack artifact names no mirror bundle manifest (no layer, no referrer), so no bundle can be rebuilt from it",
                         fix="pull it with 'mirror pull oci://...', which builds a bundle from its layers")


@dataclass(frozen=True)
class Imported:
    info: BundleInfo
    fetched_bytes: int  # layer bytes transferred


def _mismatch(where: str, why: str) -> ArtifactMismatch:
    return ArtifactMismatch(where, why, fix="do not use it: ask its publisher to push it again")


def path_problem(path: str) -> str | None:
    """Why a file path from the artifact cannot be a bundle path, or None (unsafe_path_reason,
    and UTF-8: JSON and tar names can carry lone surrogates no file system name should get)."""
    if why := unsafe_path_reason(path):
        return why
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    return None


def layers(art: modelpack.Artifact, *, where: str) -> tuple[Layer, ...]:
    """The model layers of an artifact modelpack.parse_artifact accepted, in order, refused
    (ArtifactMismatch) when a raw layer names no file, a file path that could escape, or the
    same file as another layer."""
    if art.manifest_layer is not None or art.signature_layer is not None:  # half of mirror's evidence: neither pull nor import
        raise _mismatch(where, "it carries a layer of mirror's evidence (signature) without the bundle manifest it signs")
    out = tuple(Layer(index=i, packing=x.media_type.rsplit(".v1.", 1)[-1], digest=x.digest, size=x.size, path=x.path)
                for i, x in enumerate(art.files))
    if not out:
        raise _mismatch(where, "it has no layers")
    seen: set[str] = set()
    for layer in out:
        if layer.packing not in PACKINGS:  # parse_artifact admits only the spec's types
            raise _mismatch(where, f"{layer.label} has a packing mirror does not read ({layer.packing!r})")
        if layer.packing != "raw":
            continue
        if not layer.path:
            raise _mismatch(where, f"{layer.label} is a raw file layer that names no file ({modelpack.FILEPATH})")
        if why := path_problem(layer.path):
            raise _mismatch(where, f"{layer.label} names the file {layer.path!r}, which {why}")
        if layer.path in seen:
            raise _mismatch(where, f"two layers claim the file {layer.path!r}")
        seen.add(layer.path)
    return out


def _config(client: Client, art: modelpack.Artifact, count: int, *, where: str) -> tuple[dict, list[str]]:
    raw = client.read_blob(art.config.digest, max_size=modelpack.MAX_CONFIG, what="the ModelPack config")
    doc = safejson.loads(raw, where=where, what="ModelPack config", max_bytes=modelpack.MAX_CONFIG, error=NotModelPack)
    modelfs = doc.get("modelfs") if isinstance(doc, dict) else None
    diff_ids = modelfs.get("diffIds") if isinstance(modelfs, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(x, str) for x in diff_ids):
        raise NotModelPack(where, "the ModelPack config has no modelfs.diffIds list", fix="ask its publisher for an artifact that follows the ModelPack spec")
    if len(diff_ids) != count:
        raise _mismatch(where, f"the ModelPack config lists {len(diff_ids)} diffIds for {count} layers")
    descriptor = doc.get("descriptor")
    return (descriptor if isinstance(descriptor, dict) else {}), diff_ids


# --- one layer, streamed ------------------------------------------------------------------------


class _Blob:
    """A layer's bytes as a file object (what gzip, zstd and tarfile read), hashed and counted as
    they arrive; never more than the descriptor's size. `finish` reads what is left and checks
    the size and the digest."""

    def __init__(self, client: Client, layer: Layer, meter):
        self.client, self.layer, self.meter = client, layer, meter
        self.sha = hashlib.sha256()
        self.count = 0
        self.ended = layer.size == 0 and layer.digest == EMPTY_SHA256  # registries need not serve the empty blob
        self._r = None if self.ended else client.open_blob(layer.digest, size=layer.size, what=layer.label)
        self._chunks = None if self._r is None else iter_body(self._r, NET_CHUNK)
        self._buf = memoryview(b"")

    def read(self, n: int = -1) -> bytes:
        if not self._buf and not self.ended:
            try:
                chunk = next(self._chunks, b"")
            except (requests.exceptions.RequestException, ConnectionError, OSError) as e:
                if isinstance(e, RegistryError):
                    raise
                raise RegistryError(f"{self.layer.label} from {self.client.registry}: the connection dropped after {self.count} of {self.layer.size} bytes ({reason(e)}); run the same pull again") from None
            if not chunk:
                self.ended = True
            elif self.count + len(chunk) > self.layer.size:
                raise ArtifactMismatch(str(self.client.registry), f"{self.layer.label} is longer than the {self.layer.size} bytes its descriptor says", fix="the registry's copy is damaged: ask its publisher to push it again")
            else:
                self.sha.update(chunk)
                self.count += len(chunk)
                self.client.bytes_received += len(chunk)
                self.meter.add(len(chunk))
                self._buf = memoryview(chunk)
        if n is None or n < 0:
            n = len(self._buf)
        out, self._buf = self._buf[:n], self._buf[n:]
        return bytes(out)

    @property
    def short(self) -> bool:
        return self.ended and self.count < self.layer.size

    def finish(self, *, where: str) -> None:
        while self.read(READ):
            pass
        if self.count != self.layer.size:
            raise RegistryError(f"{self.layer.label} from {self.client.registry}: the registry closed the connection after {self.count} of {self.layer.size} bytes; run the same pull again")
        got = "sha256:" + self.sha.hexdigest()
        if got != self.layer.digest:
            raise _mismatch(where, f"{self.layer.label} has sha256 {got}, not the {self.layer.digest} its descriptor names (the registry served other bytes, or the descriptor lies)")

    def close(self) -> None:
        if self._r is not None:
            self._r.close()


class _Hashed:
    """A decompressed stream, hashed as it is read: the tar's own sha256, the layer's diffId."""

    def __init__(self, raw):
        self.raw, self.sha, self.count = raw, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha.update(data)
        self.count += len(data)
        return data


class _Refused(Exception):
    """A tar member or header mirror will not read; carries the one-line reason. Not a
    tarfile.TarError, so tarfile cannot mistake it for the end of the archive."""


class _StrictInfo(tarfile.TarInfo):
    """tarfile's header parsing, with mirror's bundle reader's limits: a damaged header anywhere
    is an error (tarfile would end the archive there in silence), only POSIX (ustar/pax) and GNU
    headers, no PAX or GNU long-name record over 1 MiB (tarfile would read it whole), no global
    headers, sparse files or long link names."""

    @classmethod
    def fromtarfile(cls, tf):
        at = tf.fileobj.tell()
        buf = tf.fileobj.read(tarfile.BLOCKSIZE)
        if len(buf) == tarfile.BLOCKSIZE and buf.count(0) == tarfile.BLOCKSIZE:
            raise tarfile.EOFHeaderError("end of file header")
        if len(buf) != tarfile.BLOCKSIZE:
            raise _Refused(f"the archive ends at byte {at + len(buf)} without its end-of-archive marker")
        if buf[257:263] != b"ustar\0" and buf[257:265] != b"ustar  \0":
            raise _Refused(f"the member at byte {at} is not a POSIX (ustar/pax) or GNU tar header")
        try:
            obj = cls.frombuf(buf, tf.encoding, tf.errors)
        except tarfile.HeaderError as e:
            raise _Refused(f"corrupt tar header at byte {at} ({e})") from None
        obj.offset = at
        return obj._proc_member(tf)

    def _proc_member(self, tf):
        what = {tarfile.XGLTYPE: "a global PAX header", tarfile.GNUTYPE_SPARSE: "a sparse file", tarfile.GNUTYPE_LONGLINK: "a long link name"}
        if self.type in what:
            raise _Refused(f"the member at byte {self.offset} is {what[self.type]}, which a model layer never needs")
        if self.type in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME) and self.size > MAX_TAR_HEADER:
            raise _Refused(f"the header record at byte {self.offset} is {self.size} bytes, over the {MAX_TAR_HEADER} byte limit")
        member = super()._proc_member(tf)
        if any(k.startswith("GNU.sparse") or k == "hdrcharset" for k in member.pax_headers):
            raise _Refused(f"member {member.name!r} uses a PAX record (sparse or charset) a model layer never needs")
        return member


_TYPES = {tarfile.LNKTYPE: "a hard link", tarfile.SYMTYPE: "a symlink", tarfile.CHRTYPE: "a character device",
          tarfile.BLKTYPE: "a block device", tarfile.FIFOTYPE: "a FIFO", tarfile.CONTTYPE: "a contiguous file"}


class _Staging:
    """The private folder the files are written into, by their bundle paths: each file created
    new (never over another, never through a link), and every path judged first."""

    def __init__(self, root: Path, *, where: str, allow_pickle: bool):
        self.root, self.where, self.allow_pickle = root, where, allow_pickle
        self.files: dict[str, tuple[int, str]] = {}  # path -> (size, sha256)
        self.folders: set[str] = set()
        self.newest: str | None = None  # the newest file's mtime: created_at when the artifact names no date

    def saw(self, mtime: str | None) -> None:
        if mtime is not None:  # "%Y-%m-%dT%H:%M:%SZ" strings sort as times
            self.newest = max(self.newest or mtime, mtime)

    def judge(self, path: str, *, what: str) -> None:
        if why := path_problem(path):
            raise _mismatch(self.where, f"{what} names the file {path!r}, which {why}")
        if path in self.files:
            raise _mismatch(self.where, f"{what} names the file {path!r} a second time")
        if path in self.folders:
            raise _mismatch(self.where, f"{what} names the file {path!r}, which is also a folder of another file")
        parents = path.split("/")[:-1]
        for i in range(1, len(parents) + 1):
            if "/".join(parents[:i]) in self.files:
                raise _mismatch(self.where, f"{what} puts {path!r} under {'/'.join(parents[:i])!r}, which is a file")
        if not self.allow_pickle:  # the default policy needs only the name: refuse before a byte is written
            check_paths([path], where=self.where)

    def folder(self, path: str) -> None:
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub in self.files:
                raise _mismatch(self.where, f"the folder {path!r} is also a file")
            self.folders.add(sub)

    def write(self, path: str, size: int, chunks, *, what: str) -> str:
        """Write `size` bytes from `chunks` (callable n -> bytes) to `path`; returns its sha256."""
        self.judge(path, what=what)
        if "/" in path:
            self.folder(path.rsplit("/", 1)[0])
        free = shutil.disk_usage(self.root).free
        if size > free:
            raise NotEnoughSpace(str(self.root.parent), needed=size, free=free)
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        sha = hashlib.sha256()
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644)
        with os.fdopen(fd, "wb") as out:
            left = size
            while left:
                data = chunks(min(READ, left))
                if not data:
                    raise _Refused(f"{what}: the data of {path!r} ends {left} bytes early")
                sha.update(data)
                out.write(data)
                left -= len(data)
        self.files[path] = (size, sha.hexdigest())
        return self.files[path][1]


def _raw(layer: Layer, blob: _Blob, staging: _Staging, *, where: str) -> None:
    got = staging.write(layer.path, layer.size, blob.read, what=layer.label)
    blob.finish(where=where)
    if f"sha256:{got}" != layer.digest:  # cannot differ from the blob's sha256; kept as the file's own check
        raise _mismatch(where, f"{layer.label} has sha256 sha256:{got}, not {layer.digest}")


def _untar(layer: Layer, blob: _Blob, staging: _Staging, *, where: str) -> str:
    """Extract one tar layer (any packing) into staging; returns the tar's own sha256 (diffId)."""
    if layer.packing == "tar+gzip":
        stream = gzip.GzipFile(fileobj=blob, mode="rb")
    elif layer.packing == "tar+zstd":
        stream = zstandard.ZstdDecompressor(max_window_size=ZSTD_WINDOW).stream_reader(blob, read_across_frames=True, closefd=False)
    else:
        stream = blob
    tar_stream = _Hashed(stream)
    members = 0
    with tarfile.open(fileobj=tar_stream, mode="r|", tarinfo=_StrictInfo) as archive:
        for member in archive:
            members += 1
            if members > MAX_MEMBERS:
                raise _Refused(f"it holds over {MAX_MEMBERS} members")
            name = member.name
            while name.startswith("./"):
                name = name[2:]
            name = name.rstrip("/") if member.isdir() else name
            what = f"{layer.label}, member {member.name!r}"
            if member.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
                data = archive.extractfile(member)
                staging.write(name, member.size, data.read, what=what)
                staging.saw(_iso(member.mtime))
            elif member.isdir():
                if name in ("", "."):
                    continue
                if why := path_problem(name):
                    raise _mismatch(where, f"{what} is a folder whose name {why}")
                staging.folder(name)
            else:
                kind = _TYPES.get(member.type, f"of tar type {member.type!r}")
                raise _Refused(f"member {member.name!r} is {kind}; model layers hold only regular files and folders")
        # only zeros after the end-of-archive marker, as in a bundle, and not many of them
        tail = 0
        while data := archive.fileobj.read(READ):
            if data.count(0) != len(data):
                raise _Refused(f"there is data after the end of the archive (near byte {tar_stream.count - len(data)})")
            tail += len(data)
            if tail > MAX_TAIL:
                raise _Refused(f"more than {MAX_TAIL} bytes follow the end of the archive")
    while tar_stream.read(READ):  # a compressed stream's last frame, checked by its decoder
        pass
    blob.finish(where=where)
    return "sha256:" + tar_stream.sha.hexdigest()


def _fetch(client: Client, todo: tuple[Layer, ...], diff_ids: list[str], staging: _Staging, *, where: str, show: bool) -> int:
    total = sum(layer.size for layer in todo)
    fetched = 0
    with progress.meter(f"pull {where}", total, tty=show) as meter:
        for layer, diff_id in zip(todo, diff_ids):
            blob = _Blob(client, layer, meter)
            try:
                if layer.packing == "raw":
                    _raw(layer, blob, staging, where=where)
                    tar_sha = layer.digest
                else:
                    tar_sha = _untar(layer, blob, staging, where=where)
            except (_Refused, tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError, zstandard.ZstdError) as e:
                if blob.short:  # the connection ended early: not the layer's fault
                    raise RegistryError(f"{layer.label} from {client.registry}: the registry closed the connection after {blob.count} of {layer.size} bytes; run the same pull again") from None
                why = str(e) if isinstance(e, _Refused) else f"it is not a valid {layer.packing} archive ({' '.join(str(e).split())[:200] or type(e).__name__})"
                raise _mismatch(where, f"{layer.label}: {why}") from None
            finally:
                blob.close()
            fetched += blob.count
            if diff_id != tar_sha:
                raise _mismatch(where, f"the config's diffId for {layer.label} is {diff_id[:80]}, but its {'bytes' if layer.packing in ('raw', 'tar') else 'uncompressed tar'} have {tar_sha}")
    return fetched


# --- names, dates, the bundle -------------------------------------------------------------------


def _iso(ts) -> str | None:
    try:
        return datetime.fromtimestamp(int(ts), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _rfc3339(text) -> str | None:
    """An RFC 3339 time (Go writes nanoseconds and offsets) as the manifest's UTC seconds."""
    m = _RFC3339.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        return None
    date, time, zone = m.groups()
    try:
        stamp = datetime.fromisoformat(f"{date}T{time}{'+00:00' if zone in 'Zz' else zone}")
    except ValueError:
        return None
    return stamp.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def repo_id_for(ref: Reference) -> str:
    """The bundle's repo id: the last two components of the repository (`models/minilm`), made a
    valid Hub id (the registry's grammar allows '--', which the Hub does not)."""
    parts = [re.sub(r"-{2,}", "-", p) for p in ref.repository.split("/")[-2:]]
    repo_id = "/".join(p.removesuffix(".git") or "model" for p in parts)
    return repo_id if repo_id_problem(repo_id) is None else "oci/model"


def revision_for(ref: Reference) -> str:
    return ref.tag or ref.digest.replace(":", "-")[:19]


def import_artifact(client: Client, ref: Reference, *, artifact: modelpack.Artifact, digest: str, out_dir: Path,
                    allow_pickle: bool = False, show_progress: bool = True, overwrite: bool = False) -> Imported:
    """Build a bundle in `out_dir` from the artifact (parsed by modelpack.parse_artifact; its
    manifest has `digest`) whose layers carry no mirror evidence; see the module docstring for
    every check on the way. A bundle already at its name holding other bytes is replaced only
    with `overwrite` (the writer's rule, mirror.bundle.write.sinks.refuse_overwrite)."""
    where = str(ref)
    todo = layers(artifact, where=where)
    descriptor, diff_ids = _config(client, artifact, len(todo), where=where)
    if not allow_pickle:  # the names the manifest gives: refused before anything is downloaded
        check_paths([layer.path for layer in todo if layer.packing == "raw"], where=where)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic.sweep(out_dir)  # a staging folder a SIGKILLed import left (its pid is gone)
    total = sum(layer.size for layer in todo)
    free = shutil.disk_usage(out_dir).free
    if free < 2 * total:  # the files, then the bundle holding them (compressed layers need more)
        raise NotEnoughSpace(str(out_dir), needed=2 * total, free=free)
    root = atomic.temp_path(out_dir / f"oci-import-{digest[7:19]}", suffix="staging")
    root.mkdir(mode=0o700)
    try:
        staging = _Staging(root, where=where, allow_pickle=allow_pickle)
        fetched = _fetch(client, todo, diff_ids, staging, where=where, show=show_progress)
        if not staging.files:
            raise _mismatch(where, "its layers hold no files")
        if clash := name_collision(staging.files):
            raise _mismatch(where, clash)
        commit = next((c for c in (artifact.annotations.get(REVISION), descriptor.get("revision")) if is_commit(c)), None)
        created = _rfc3339(descriptor.get("createdAt")) or _rfc3339(artifact.annotations.get(CREATED)) or staging.newest or _iso(0)
        paths = sorted(staging.files)
        expected = {p: FileEntry(path=p, size=size, sha256=sha, git_sha1="", lfs=is_lfs(p, size), kind=classify(p))
                    for p, (size, sha) in staging.files.items()}
        with Sources([root]) as src:
            for p in paths:
                src.add(p)
            # the pickle policy as for every source: scanned through the descriptors that are bundled
            report = check_files({p: src[p] for p in paths}, allow_pickle=allow_pickle, where=where)
            spec = BundleSpec(repo_id=repo_id_for(ref), repo_type="model", revision=revision_for(ref), commit=commit,
                              source=str(Reference(ref.registry, ref.repository, ref.tag, digest)), created_at=created,
                              license=_license(src, descriptor, artifact.annotations), expected=expected, extra={"policy": report.to_manifest()})
            info = write(spec, FolderSource(root, paths=paths, files=src), FileSink(out_dir, overwrite=overwrite))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return Imported(info=info, fetched_bytes=fetched)


def _license(src: Sources, descriptor: dict, annotations: dict) -> str | None:
    """The model card's `license:` (as `mirror pack` reads it), else what the artifact names."""
    if "README.md" in src:
        if found := license_from_card(src["README.md"].read(CARD_BYTES).decode("utf-8", "replace")):
            return found
    named = descriptor.get("licenses")
    for value in ([named[0]] if isinstance(named, list) and named else []) + [annotations.get(LICENSES)]:
        if isinstance(value, str) and 0 < len(value) <= 200 and value.isprintable():
            return value
    return None
