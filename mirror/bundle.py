"""Writing and reading bundle tars (format: docs/bundle-format.md).

A bundle is one uncompressed POSIX tar whose first member is the manifest, so a reader learns
what a 100 GB bundle holds from its first few kilobytes, and a verifier checks everything in one
sequential pass. Both directions stream in fixed-size chunks; nothing here ever holds a whole
model file in memory.

We write and parse tar headers ourselves rather than trusting `tarfile`: the writer must be
byte-for-byte deterministic across Python versions, and the reader must refuse anything outside
the format (links, devices, sparse files, unknown extensions) instead of interpreting it.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from mirror import parts
from mirror.errors import BundleError, HashMismatch, ManifestError, NotEnoughSpace, UsageError
from mirror.hashing import CHUNK, Digest, DualHasher, HashLanes, hash_files, lfs_pointer_sha1, sha256_file
from mirror.manifest import (
    MANIFEST_NAME,
    PAYLOAD_PREFIX,
    REPO_TYPES,
    FileEntry,
    Manifest,
    classify,
    parse,
    repo_id_problem,
    unsafe_path_reason,
)

BLOCK = 512
RECORD = 20 * BLOCK  # tar's traditional record size; the archive is padded to a multiple of it
MAX_MANIFEST = 64 * 1024 * 1024  # ~200k files; a larger "manifest" is hostile, not a model repo
MAX_PAX = 1024 * 1024
PAX_NAME = b"././@PaxHeader"
_MAX_OCTAL_SIZE = 0o77777777777  # 11 octal digits: sizes above 8 GiB go into a PAX record
# `_mirror/` members other than the manifest that may follow the payload (signing appends one).
TRAILER_MEMBERS = ("_mirror/signature.json",)
PLACEHOLDER_SHA256 = "0" * 64
PLACEHOLDER_SHA1 = "0" * 40
PACK_COMMIT_DOMAIN = b"mirror-pack-commit/1\n"

# The patterns of the Hub's default .gitattributes: files matching them are stored in LFS, so a
# pulled snapshot names their cache blob by sha256. Packs use the same rule (plus the Hub's
# 10 MB limit for plain git files) so a packed model lands in the cache the way a pulled one does.
LFS_PATTERNS = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
    "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
    "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "*.tar.*", "*.tar", "*.tflite",
    "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
)
LFS_SIZE = 10 * 1024 * 1024


@dataclass(frozen=True)
class BundleInfo:
    path: Path
    sha256: str  # of the whole tar file, as in the .sha256 sidecar
    size: int
    manifest: Manifest


@dataclass(frozen=True)
class PayloadMember:
    """One tar member after the manifest, as the reader judged it."""

    name: str  # the member name stored in the tar
    kind: str  # "file" (under files/), "meta" (a known _mirror/ trailer), "dir", or "other"
    size: int  # the data size the header declares
    entry: FileEntry | None  # the manifest entry for a file member, None otherwise
    problem: str | None  # why this member breaks the format (extra, duplicate, unsafe, link...)
    offset: int = 0  # where its first header block (PAX header included) starts in the tar

    @property
    def path(self) -> str | None:
        """The repo path of a `files/` member."""
        return self.name[len(PAYLOAD_PREFIX):] if self.name.startswith(PAYLOAD_PREFIX) else None


# --- names ----------------------------------------------------------------------------------------


def bundle_stem(repo_id: str, commit: str, *, repo_type: str = "model") -> str:
    """`org--name--<commit[:12]>`, with `datasets--` / `spaces--` in front for those repo types."""
    prefix = "" if repo_type == "model" else f"{repo_type}s--"
    return f"{prefix}{repo_id.replace('/', '--')}--{commit[:12]}"


def bundle_filename(repo_id: str, commit: str, *, repo_type: str = "model") -> str:
    return bundle_stem(repo_id, commit, repo_type=repo_type) + ".tar"


def pack_commit(files: list[FileEntry] | tuple[FileEntry, ...]) -> str:
    """The commit id of a pack (a folder has no git commit): sha1 over a domain line then one
    `<sha256> <path>\\n` line per file in path order. Same content, same id; see bundle-format.md."""
    h = hashlib.sha1(PACK_COMMIT_DOMAIN)
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.sha256} {f.path}\n".encode("utf-8"))
    return h.hexdigest()


def is_lfs(path: str, size: int) -> bool:
    """How a pack decides `lfs` (the Hub's rule for a new repo): a default LFS pattern, or big."""
    name = path.rsplit("/", 1)[-1]
    return size > LFS_SIZE or any(fnmatch.fnmatch(name, p) for p in LFS_PATTERNS)


# --- tar headers ----------------------------------------------------------------------------------


def _octal(n: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, n)


def _ustar(name: bytes, size: int, typeflag: bytes) -> bytes:
    h = bytearray(BLOCK)
    h[0:100] = name[:100].ljust(100, b"\0")
    h[100:108] = _octal(0o644, 8)
    h[108:116] = _octal(0, 8)  # uid
    h[116:124] = _octal(0, 8)  # gid
    h[124:136] = _octal(size, 12)
    h[136:148] = _octal(0, 12)  # mtime: fixed, so the same snapshot gives the same bytes
    h[148:156] = b" " * 8
    h[156:157] = typeflag
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[329:337] = _octal(0, 8)  # devmajor
    h[337:345] = _octal(0, 8)  # devminor
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def _pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode("utf-8")
    n = len(body) + 1
    while len(str(n).encode()) + len(body) != n:
        n = len(str(n).encode()) + len(body)
    return str(n).encode() + body


def _pad(n: int) -> int:
    return -n % BLOCK


def member_header(name: str, size: int) -> bytes:
    """Header block(s) of a regular-file member: a PAX extended header first when the name is
    not ASCII or longer than 100 bytes, or the size needs more than 11 octal digits."""
    raw = name.encode("utf-8")
    records = b""
    if len(raw) > 100 or not raw.isascii():
        records += _pax_record("path", name)
    if size > _MAX_OCTAL_SIZE:
        records += _pax_record("size", str(size))
    head = b""
    if records:
        head = _ustar(PAX_NAME, len(records), b"x") + records + b"\0" * _pad(len(records))
    fallback = name.encode("ascii", "replace")  # readers use the PAX path; this only keeps tar(1) tidy
    return head + _ustar(fallback, 0 if size > _MAX_OCTAL_SIZE else size, b"0")


def _member_span(name: str, size: int) -> int:
    return len(member_header(name, size)) + size + _pad(size)


def _archive_size(spans: int) -> int:
    end = spans + 2 * BLOCK
    return end + (-end % RECORD)


# --- writing --------------------------------------------------------------------------------------


def write_bundle(
    *,
    src_root: Path,
    repo_id: str,
    repo_type: str = "model",
    revision: str,
    commit: str | None,
    source: str,
    created_at: str,
    license: str | None,
    out_dir: Path,
    expected: dict[str, FileEntry] | None = None,
    lfs: dict[str, bool] | None = None,
    extra: dict[str, Any] | None = None,
    paths: list[str] | None = None,
    max_part_size: int | None = None,
) -> BundleInfo:
    """Stream the files of `src_root` into `out_dir/<org>--<name>--<commit12>.tar` in two passes:
    the files are hashed first, in parallel across cores, so the manifest (member 0) is final
    before anything is written; then the tar is written front to back while a hash thread
    computes its sha256 for the sidecar. The bytes are the same as any writer's for this manifest
    (format, 1.3-1.4). `expected` (hashes the Hub published) must match or HashMismatch is raised;
    digests left empty in an expected entry are not checked, and an LFS file with an expected
    sha256 is read only once (checked while it is copied). `commit=None` (a pack) derives the id from
    the content (`pack_commit`). Nothing is left in `out_dir` when this fails. With
    `max_part_size` the stream goes into equal parts plus an index (mirror.parts) instead of one
    file, and `BundleInfo.path` is the index, NAME.tar.parts.json."""
    src_root, out_dir = Path(src_root), Path(out_dir)
    if repo_type not in REPO_TYPES:
        raise UsageError(f"repo type {repo_type!r} is not one of {', '.join(REPO_TYPES)}")
    if why := repo_id_problem(repo_id):
        raise UsageError(f"repo id {repo_id!r} {why}")
    if paths is None:
        paths = sorted(expected) if expected is not None else _walk_files(src_root)
    paths = sorted(set(paths))
    if not paths and not (extra or {}).get("delta"):  # a delta may only remove files
        raise UsageError(f"{src_root}: no files to bundle; check the folder and the include/exclude patterns")
    sizes: dict[str, int] = {}
    for p in paths:
        if why := unsafe_path_reason(p):
            raise UsageError(f"file name {p!r} {why}; it cannot be stored in a bundle")
        try:
            sizes[p] = os.stat(src_root / p).st_size
        except OSError as e:
            raise UsageError(f"{src_root / p}: cannot read ({e.strerror}); check the folder") from e
        want = (expected or {}).get(p)
        if expected is not None and want is None:
            raise UsageError(f"{p} is not among the expected files of {repo_id}; it cannot be checked")
        if want is not None and want.size != sizes[p]:
            raise HashMismatch(p, algorithm="size", expected=str(want.size), actual=str(sizes[p]), where="in the download")

    def lfs_of(p: str) -> bool:
        if expected is not None:
            return expected[p].lfs
        if lfs is not None and p in lfs:
            return lfs[p]
        return is_lfs(p, sizes[p])

    def build(files: tuple[FileEntry, ...], commit_id: str) -> Manifest:
        m = Manifest(
            repo_id=repo_id, repo_type=repo_type, revision=revision, commit=commit_id, source=source,
            created_at=created_at, license=license, files=files,
        )
        return m.with_extra(**extra) if extra else m

    draft_files = tuple(
        FileEntry(path=p, size=sizes[p], sha256=PLACEHOLDER_SHA256, git_sha1=PLACEHOLDER_SHA1, lfs=lfs_of(p), kind=classify(p))
        for p in paths
    )
    # Hex digests have fixed lengths, so the final manifest is exactly as long as this draft;
    # rounding up to a block keeps the payload block-aligned without any tar padding.
    reserved = len(build(draft_files, commit or PLACEHOLDER_SHA1).to_json())
    reserved += _pad(reserved)
    total = _archive_size(len(member_header(MANIFEST_NAME, reserved)) + reserved + sum(_member_span(PAYLOAD_PREFIX + p, sizes[p]) for p in paths))

    out_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out_dir).free
    if free < total:
        raise NotEnoughSpace(str(out_dir), needed=total, free=free)
    # Pass 1: every file's digests, files hashed in parallel across cores. The manifest, which
    # comes first in the tar, is then final before the first byte is written, so pass 2 can hash
    # the tar stream while writing it (no third read of the bundle for its sha256). A file that
    # changes between the passes (size or mtime) is refused: the manifest must describe the bytes.
    # An LFS file whose sha256 is expected (the Hub's) is not hashed here: its digests follow from
    # that sha256, and pass 2 checks it on a second lane while copying, so it is read once.
    stamps = {p: _stamp(src_root / p) for p in paths}
    promised = {d.path: _promised(d, (expected or {}).get(d.path)) for d in draft_files}
    todo = [d for d in draft_files if promised[d.path] is None]
    digests = hash_files([src_root / d.path for d in todo], lfs={src_root / d.path for d in todo if d.lfs})
    entries: list[FileEntry] = []
    for draft in draft_files:
        digest = promised[draft.path] or digests[src_root / draft.path]
        if digest.size != draft.size:
            raise UsageError(f"{src_root / draft.path} changed size while it was being bundled; make sure nothing writes to the folder and retry")
        want = (expected or {}).get(draft.path)
        if want is not None:
            for algo, exp, got in (("sha256", want.sha256, digest.sha256), ("git sha1", want.git_sha1, digest.git_sha1)):
                if exp and exp != got:
                    raise HashMismatch(draft.path, algorithm=algo, expected=exp, actual=got, where="against the Hub's hash")
        entries.append(FileEntry(path=draft.path, size=draft.size, sha256=digest.sha256, git_sha1=digest.git_sha1, lfs=draft.lfs, kind=draft.kind))
    files = tuple(entries)
    manifest = build(files, commit or pack_commit(files))
    raw = manifest.to_json()
    if len(raw) > reserved:  # cannot happen unless the manifest format changes shape
        raise RuntimeError(f"manifest grew from {reserved} to {len(raw)} bytes while writing")

    partial = out_dir / f".{repo_id.replace('/', '--')}.{uuid.uuid4().hex[:12]}.tar.partial"
    sidecar_tmp: Path | None = None
    splitter = parts.PartWriter(out_dir, max_part_size=max_part_size) if max_part_size else None
    # a multi-part writer hashes its parts and the stream itself when it commits
    stream_sha = None if splitter is not None else hashlib.sha256()
    try:
        # Pass 2: copy, the stream's sha256 on a lane thread, overlapped with reading and writing
        # lane 0: the stream's sha256; lane 1: the sha256 of a promised file, checked as it passes
        with splitter or open(partial, "wb") as out, HashLanes(2) as lanes:

            def put(data: bytes) -> None:
                out.write(data)
                if stream_sha is not None:
                    lanes.submit(0, stream_sha, data)

            put(member_header(MANIFEST_NAME, reserved) + raw + b" " * (reserved - len(raw)))
            for draft in draft_files:
                put(member_header(PAYLOAD_PREFIX + draft.path, draft.size))
                check = None if promised[draft.path] is None else DualHasher(draft.size, lfs=True, lanes=lanes, lane_ids=(1, 1))
                _copy(src_root / draft.path, draft.size, put, stamp=stamps[draft.path], check=check)
                if check is not None and (got := check.digest().sha256) != promised[draft.path].sha256:
                    raise HashMismatch(draft.path, algorithm="sha256", expected=promised[draft.path].sha256, actual=got, where="against the Hub's hash")
                put(b"\0" * _pad(draft.size))
            end = out.tell() + 2 * BLOCK
            put(b"\0" * (2 * BLOCK + (-end % RECORD)))
        final = out_dir / bundle_filename(repo_id, manifest.commit, repo_type=repo_type)
        if (extra or {}).get("delta"):  # a delta must not take the name of the full bundle of its commit
            final = final.with_name(f"{final.stem}--delta-from-{extra['delta']['base']['commit'][:12]}.tar")
        if splitter is not None:
            index = splitter.commit(final)
            return BundleInfo(path=parts.index_path(final), sha256=index.sha256, size=index.size, manifest=manifest)
        sha = stream_sha.hexdigest()  # the lanes were closed: every chunk is in
        sidecar = final.with_name(final.name + ".sha256")
        sidecar_tmp = sidecar.with_name(partial.name + ".sha256")
        sidecar_tmp.write_text(f"{sha}  {final.name}\n")
        os.replace(partial, final)
        os.replace(sidecar_tmp, sidecar)
        parts.remove_parts(final)  # a multi-part bundle of the same name is superseded
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise NotEnoughSpace(str(out_dir), needed=total, free=shutil.disk_usage(out_dir).free) from e
        raise
    finally:
        if splitter is not None:
            splitter.discard()
        for leftover in (partial, sidecar_tmp):
            if leftover is not None:
                leftover.unlink(missing_ok=True)
    return BundleInfo(path=final, sha256=sha, size=total, manifest=manifest)


def _promised(draft: FileEntry, want: FileEntry | None) -> Digest | None:
    """The digests of an LFS file whose expected sha256 is given (its git sha1 is the pointer's),
    or None when the file must be hashed. An expected git sha1 that is not that pointer's is a
    contradiction in what the Hub published: HashMismatch before anything is written."""
    if not draft.lfs or want is None or not want.sha256:
        return None
    sha1 = lfs_pointer_sha1(want.sha256, draft.size)
    if want.git_sha1 and want.git_sha1 != sha1:
        raise HashMismatch(draft.path, algorithm="git sha1", expected=want.git_sha1, actual=sha1, where="against the Hub's hash (the oid is not its LFS pointer's)")
    return Digest(size=draft.size, sha256=want.sha256, git_sha1=sha1)


def _stamp(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _copy(src: Path, size: int, put, *, stamp: tuple[int, int], check: DualHasher | None = None) -> None:
    """Stream `src` into `put` (and `check`) in chunks, each a fresh `bytes` since a hash lane
    may still hold the previous one; refuses a file whose size or mtime differs from when it was
    first looked at."""
    with open(src, "rb", buffering=0) as f:
        left = size
        while left:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                break
            put(chunk)
            if check is not None:
                check.update(chunk)
            left -= len(chunk)
        if left or f.read(1) or _stamp(src) != stamp:
            raise UsageError(f"{src} changed while it was being bundled; make sure nothing writes to the folder and retry")


def _walk_files(root: Path) -> list[str]:
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory")
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = Path(dirpath).relative_to(root)
        out += [(rel / n).as_posix() for n in filenames]
    return sorted(out)


# --- reading --------------------------------------------------------------------------------------


def _number(field: bytes, *, bundle: str, what: str) -> int:
    if field and field[0] & 0x80:  # GNU base-256: unambiguous, so accepted
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise BundleError(bundle, f"corrupt tar header: {what} field {field!r} is not a number") from None


class BundleReader:
    """A one-pass reader: the manifest on open, then `payload()` yields every later member with
    a chunk iterator over its data. Everything read is fed to the bundle's sha256, so after the
    pass `sha256` is the hash of the whole file. Structural corruption (bad header, truncation,
    garbage after the end) raises BundleError; per-member problems are reported on the member."""

    def __init__(self, path: str | os.PathLike, *, lanes: HashLanes | None = None, hash_all: bool = True):
        self.path = Path(path)
        self.label = str(path)
        location = parts.locate(self.path)
        try:
            # a multi-part bundle reads as one stream; its parts are checked as they pass
            self._f = parts.PartsReader(location.index) if location.multipart else open(self.path, "rb")
        except FileNotFoundError:
            raise UsageError(f"{path}: no such bundle; check the path") from None
        except IsADirectoryError:
            raise UsageError(f"{path} is a directory, not a bundle file") from None
        self.parts = self._f if location.multipart else None
        # parts are hashed by PartsReader as they pass; their index holds the whole-stream sha256
        self._sha = hashlib.sha256() if hash_all and not location.multipart else None
        self._lanes = lanes
        self.offset = 0
        self._left = 0  # unread data bytes of the current member
        self._after = 0  # padding after it
        self._done = False
        self._member_start = 0
        self.end_offset = 0  # where the end-of-archive marker starts, after a payload() pass
        self.missing: tuple[str, ...] = ()
        self.bad_name = False  # the last header's name was not UTF-8
        try:
            self.manifest_bytes = self._read_manifest_member()
            self.manifest = parse(self.manifest_bytes, bundle=self.label)
            if clash := name_collision(f.path for f in self.manifest.files):
                raise ManifestError(self.label, f"invalid manifest: {clash}", fix="a snapshot with such names cannot be installed safely everywhere: do not use this bundle")
        except BaseException:
            self._f.close()
            raise

    # context manager -------------------------------------------------------------------------
    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "BundleReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def sha256(self) -> str:
        if self._done and self.parts is not None:
            self.parts.require_all_checked()
            return self.parts.index.sha256  # every part matched its digest: the stream is the indexed one
        if not self._done or self._sha is None:
            raise RuntimeError("the bundle sha256 is known only after a full payload() pass")
        if self._lanes is not None:
            self._lanes.drain(0)
        return self._sha.hexdigest()

    # raw reads -------------------------------------------------------------------------------
    def _read(self, n: int) -> bytes:
        data = self._f.read(n)
        self.offset += len(data)
        if self._sha is not None and data:
            if self._lanes is not None:
                self._lanes.submit(0, self._sha, data)
            else:
                self._sha.update(data)
        return data

    def _exact(self, n: int, what: str) -> bytes:
        data = self._read(n)
        if len(data) != n:
            raise BundleError(self.label, f"truncated: the file ends at byte {self.offset} inside {what}", fix="the copy is incomplete: transfer the bundle again")
        return data

    def _skip(self, n: int, what: str) -> None:
        while n:
            n -= len(self._exact(min(n, CHUNK), what))

    def _header(self) -> tuple[str, int, bytes, int] | None:
        """(name, size, typeflag, offset) of the next member, PAX records applied; None at the end."""
        pax: dict[str, str] = {}
        self._member_start = self.offset
        while True:
            at = self.offset
            block = self._read(BLOCK)
            if not block:
                raise BundleError(self.label, f"truncated: no end-of-archive marker (file ends at byte {at})", fix="the copy is incomplete: transfer the bundle again")
            if len(block) != BLOCK:
                raise BundleError(self.label, f"truncated: the file ends at byte {self.offset} inside a tar header", fix="the copy is incomplete: transfer the bundle again")
            if block == b"\0" * BLOCK:
                if pax:
                    raise BundleError(self.label, f"a PAX header at byte {at} is not followed by a member")
                return None
            stored = _number(block[148:156], bundle=self.label, what="checksum")
            if stored != sum(block[:148]) + 256 + sum(block[156:]):
                raise BundleError(self.label, f"corrupt tar header at byte {at} (checksum mismatch)")
            if block[257:263] != b"ustar\0" or block[263:265] != b"00":
                raise BundleError(self.label, f"the member at byte {at} is not a POSIX (ustar/pax) tar header")
            size = _number(block[124:136], bundle=self.label, what="size")
            typeflag = block[156:157]
            if typeflag == b"x":
                if size > MAX_PAX:
                    raise BundleError(self.label, f"a PAX header at byte {at} is {size} bytes, larger than any this format writes")
                pax.update(self._pax(self._exact(size, "a PAX header"), at))
                self._skip(_pad(size), "tar padding")
                continue
            name = block[0:100].split(b"\0", 1)[0]
            prefix = block[345:500].split(b"\0", 1)[0]
            if prefix:
                name = prefix + b"/" + name
            self.bad_name = False
            try:
                text = pax.get("path") or name.decode("utf-8")
            except UnicodeDecodeError:
                text = name.decode("utf-8", "backslashreplace")
                self.bad_name = True  # judged in payload(): the member is refused, the pass goes on
            if "size" in pax:
                try:
                    size = int(pax["size"])
                except ValueError:
                    raise BundleError(self.label, f"a PAX size record at byte {at} is not a number") from None
            return text, size, typeflag, at

    def _pax(self, data: bytes, at: int) -> dict[str, str]:
        out: dict[str, str] = {}
        pos = 0
        while pos < len(data):
            sp = data.find(b" ", pos)
            try:
                n = int(data[pos:sp])
                key, _, value = data[sp + 1 : pos + n - 1].decode("utf-8").partition("=")
            except (ValueError, UnicodeDecodeError):
                raise BundleError(self.label, f"malformed PAX header at byte {at}") from None
            if n <= 0 or data[pos + n - 1 : pos + n] != b"\n":
                raise BundleError(self.label, f"malformed PAX header at byte {at}")
            if key.startswith("GNU.sparse") or key == "hdrcharset":
                raise BundleError(self.label, f"the PAX header at byte {at} uses {key!r}, which bundles never use")
            out[key] = value
            pos += n
        return out

    def _read_manifest_member(self) -> bytes:
        try:
            head = self._header()
        except BundleError as e:
            raise ManifestError(self.label, f"not a mirror bundle: {e.reason}") from e
        if head is None:
            raise ManifestError(self.label, "not a mirror bundle: the tar is empty")
        name, size, typeflag, _ = head
        if name != MANIFEST_NAME or typeflag not in (b"0", b"\0"):
            raise ManifestError(self.label, f"not a mirror bundle: the first member is {name!r}, not {MANIFEST_NAME}")
        if size > MAX_MANIFEST:
            raise ManifestError(self.label, f"the manifest is {size} bytes, over the {MAX_MANIFEST} byte limit")
        raw = self._exact(size, "the manifest")
        self._skip(_pad(size), "tar padding")
        return raw

    # the payload pass ------------------------------------------------------------------------
    def _data(self) -> Iterator[bytes]:
        while self._left:
            chunk = self._exact(min(self._left, CHUNK), "a member's data")
            self._left -= len(chunk)
            yield chunk

    def payload(self) -> Iterator[tuple[PayloadMember, Iterator[bytes]]]:
        """Yield (member, chunks) for every member after the manifest. Data a consumer leaves
        unread is read (and hashed) before the next member. Sets `missing` at the end."""
        expected = self.manifest.by_path()
        seen: set[str] = {MANIFEST_NAME}
        in_trailer = False
        while True:
            head = self._header()
            if head is None:
                self.end_offset = self.offset - BLOCK
                break
            name, size, typeflag, at = head
            member = replace(self._judge(name, size, typeflag, expected, seen, in_trailer), offset=self._member_start)
            if self.bad_name:
                member = replace(member, kind="other", entry=None, problem=f"member name {name!r} is not valid UTF-8")
            if member.kind == "meta":
                in_trailer = True
            seen.add(name)
            self._left, self._after = size, _pad(size)
            yield member, self._data()
            self._skip(self._left, "a member's data")
            self._left = 0
            self._skip(self._after, "tar padding")
        # the second end-of-archive block, then only zero padding to the end of the file
        if self._exact(BLOCK, "the end-of-archive marker") != b"\0" * BLOCK:
            raise BundleError(self.label, f"corrupt end-of-archive marker at byte {self.offset - BLOCK}")
        while chunk := self._read(CHUNK):
            if chunk.count(0) != len(chunk):
                raise BundleError(self.label, f"unexpected data after the end of the archive (near byte {self.offset - len(chunk)})", fix="the file was altered: get a fresh copy")
        self.missing = tuple(sorted(p for p in expected if PAYLOAD_PREFIX + p not in seen))
        self._done = True

    def _judge(self, name: str, size: int, typeflag: bytes, expected: dict[str, FileEntry], seen: set[str], in_trailer: bool) -> PayloadMember:
        def bad(kind: str, why: str, entry: FileEntry | None = None) -> PayloadMember:
            return PayloadMember(name=name, kind=kind, size=size, entry=entry, problem=why)

        if typeflag == b"5":
            path = name.rstrip("/")
            if why := unsafe_path_reason(path):
                return bad("dir", f"directory member {name!r} {why}")
            return PayloadMember(name=name, kind="dir", size=size, entry=None, problem=None if size == 0 else "directory member with data")
        if typeflag not in (b"0", b"\0"):
            what = {b"1": "a hard link", b"2": "a symlink", b"3": "a character device", b"4": "a block device", b"6": "a FIFO"}.get(typeflag, f"of tar type {typeflag!r}")
            return bad("other", f"member {name!r} is {what}; bundles hold only regular files")
        if why := unsafe_path_reason(name):
            return bad("other", f"member name {name!r} {why}")
        if name in seen:
            return bad("other", f"member {name!r} appears twice")
        if name.startswith("_mirror/"):
            if name not in TRAILER_MEMBERS:
                return bad("other", f"unknown mirror member {name!r} (a newer format, or tampering)")
            return PayloadMember(name=name, kind="meta", size=size, entry=None, problem=None)
        if not name.startswith(PAYLOAD_PREFIX):
            return bad("other", f"member {name!r} is outside files/ and _mirror/")
        entry = expected.get(name[len(PAYLOAD_PREFIX):])
        if entry is None:
            return bad("file", f"extra member {name!r} is not in the manifest")
        if in_trailer:
            return bad("file", f"payload member {name!r} comes after the trailer", entry)
        return PayloadMember(name=name, kind="file", size=size, entry=entry, problem=None)


def name_collision(paths) -> str | None:
    """Two paths that would be one file on a case-insensitive or normalising filesystem (macOS,
    Windows), or a path that is also another's folder: either way one file would silently
    replace another. Returns a description of the first clash, or None."""
    import unicodedata

    seen: dict[str, str] = {}
    files: set[str] = set()
    folders: dict[str, str] = {}
    for p in sorted(paths):
        key = unicodedata.normalize("NFC", p).casefold()
        if key in seen:
            return f"paths {seen[key]!r} and {p!r} collide on a case-insensitive filesystem"
        seen[key] = p
        files.add(key)
        parts = key.split("/")
        for i in range(1, len(parts)):
            folders.setdefault("/".join(parts[:i]), p)
    for key in sorted(files & set(folders)):
        return f"path {seen[key]!r} is a file and also the folder of {folders[key]!r}"
    return None


def read_manifest(path: str | os.PathLike) -> Manifest:
    """The manifest alone: reads only the first member, however large the bundle."""
    with BundleReader(path, hash_all=False) as r:
        return r.manifest


def iter_payload(path: str | os.PathLike) -> Iterator[tuple[str, FileEntry | None, Iterator[bytes]]]:
    """Strict convenience: yields (member name, manifest entry or None, chunks) and raises
    BundleError on the first problem (unexpected member, size mismatch, missing file). Hashes are
    the caller's to check: use `verify.verify_bundle` for a full report."""
    with BundleReader(path, hash_all=False) as r:
        for m, chunks in r.payload():
            if m.problem:
                raise BundleError(r.label, m.problem)
            if m.entry is not None and m.size != m.entry.size:
                raise BundleError(r.label, f"{m.path}: size {m.size} in the tar, {m.entry.size} in the manifest")
            if m.kind == "dir":
                continue
            yield m.name, m.entry, chunks
        if r.missing:
            raise BundleError(r.label, f"{len(r.missing)} file(s) listed in the manifest are missing, first {r.missing[0]!r}")


def append_trailer(path: str | os.PathLike, name: str, data: bytes) -> str:
    """Append a known `_mirror/` trailer member (a signature) as the last member, replacing a
    member of that name if it is already last. Only the end of the file is rewritten (a 100 GB
    bundle is not copied), then the sidecar is rewritten; returns the bundle's new sha256."""
    if name not in TRAILER_MEMBERS:
        raise ValueError(f"{name!r} is not a known trailer member")
    if parts.locate(path).multipart:
        raise UsageError(f"{path} is a multi-part bundle, and a signature is appended to the bundle itself; write it as a single file (without --max-part-size) to sign it")
    path = Path(path)
    last: PayloadMember | None = None
    with BundleReader(path, hash_all=False) as r:
        for m, _ in r.payload():
            if m.problem:
                raise BundleError(r.label, m.problem)
            if last is not None and last.name == name:
                raise BundleError(r.label, f"{name} is not the last member")
            last = m
        cut = last.offset if last is not None and last.name == name else r.end_offset
    with open(path, "r+b") as f:
        f.seek(cut)
        f.write(member_header(name, len(data)) + data + b"\0" * _pad(len(data)))
        end = f.tell() + 2 * BLOCK
        f.write(b"\0" * (2 * BLOCK + (-end % RECORD)))
        f.truncate()
    sha = sha256_file(path)
    sidecar = path.with_name(path.name + ".sha256")
    tmp = sidecar.with_name(f".{sidecar.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(f"{sha}  {path.name}\n")
    os.replace(tmp, sidecar)
    return sha
