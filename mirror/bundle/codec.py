"""The bundle's tar codec: the strict one-pass reader, and the few writes after a bundle exists
(a signature trailer). With `layout` the only code that reads or writes tar headers.

A bundle is one uncompressed POSIX tar whose first member is the manifest (docs/bundle-format.md),
so a reader learns what a 100 GB bundle holds from its first few kilobytes, and a verifier checks
everything in one sequential pass. Headers are written and parsed here rather than by `tarfile`:
the writer must be byte-for-byte deterministic across Python versions, and the reader must refuse
anything outside the format (links, devices, sparse files, unknown extensions) instead of
interpreting it. The bytes come from `stored` (one file, or the parts read as one stream).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from mirror.bundle import stored
from mirror.bundle.layout import BLOCK, MAX_TRAILER, RECORD, TRAILER_MEMBERS, header_number, member_header, padding
from mirror.errors import BundleError, ManifestError, UsageError
from mirror.hashing import CHUNK, HashLanes, sha256_file
from common.safeio import NotRegularFile, open_regular
from mirror.manifest import MANIFEST_NAME, PAYLOAD_PREFIX, FileEntry, Manifest, parse, unsafe_path_reason

MAX_MANIFEST = 64 * 1024 * 1024  # ~200k files; a larger "manifest" is hostile, not a model repo
MAX_PAX = 1024 * 1024


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


# --- reading --------------------------------------------------------------------------------------


class BundleReader:
    """A one-pass reader: the manifest on open, then `payload()` yields every later member with
    a chunk iterator over its data. Everything read is fed to the bundle's sha256, so after the
    pass `sha256` is the hash of the whole file. Structural corruption (bad header, truncation,
    garbage after the end) raises BundleError; per-member problems are reported on the member."""

    def __init__(self, path: str | os.PathLike, *, lanes: HashLanes | None = None, hash_all: bool = True):
        self.path = Path(path)
        self.label = str(path)
        location = stored.locate(self.path)
        try:
            # a multi-part bundle reads as one stream; its parts are checked as they pass
            self._f = stored.PartsReader(location.index) if location.multipart else open_regular(self.path)
        except FileNotFoundError:
            raise UsageError(f"{path}: no such bundle; check the path") from None
        except (IsADirectoryError, NotRegularFile) as e:  # never opened as a bundle: not one (exit 10)
            raise BundleError(str(path), f"{path} is {getattr(e, 'what', 'a directory')}, not a bundle file", fix="give the path of a .tar bundle (or its .parts.json index)") from None
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

    def attach_lanes(self, lanes: HashLanes) -> None:
        """Hash the rest of the stream on lane 0 of `lanes` (overlapped with reading)."""
        self._lanes = lanes

    @property
    def hashing(self) -> bool:
        """Whether `sha256` will be known after the payload pass."""
        return self._sha is not None or self.parts is not None

    def ranges(self):
        """Positioned reads over the same bytes, safe from many threads: over this reader's own
        descriptor for a single file (no second open: the manifest already read and the payload
        read by position come from one file), over the parts for a multi-part bundle."""
        if self.parts is not None:
            return stored.Ranges(self.parts.index_path)
        return stored.Ranges.over_fd(self._f.fileno(), self.label)

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
        if self._sha is None and self.parts is None and n > BLOCK:
            # nothing hashes the stream: jump over the data (a header walk of 100 GB is instant)
            size = os.fstat(self._f.fileno()).st_size
            if self.offset + n > size:
                raise BundleError(self.label, f"truncated: the file ends at byte {size} inside {what}", fix="the copy is incomplete: transfer the bundle again")
            self._f.seek(n, os.SEEK_CUR)
            self.offset += n
            return
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
            checksum = header_number(block[148:156], bundle=self.label, what="checksum")
            if checksum != sum(block[:148]) + 256 + sum(block[156:]):
                raise BundleError(self.label, f"corrupt tar header at byte {at} (checksum mismatch)")
            if block[257:263] != b"ustar\0" or block[263:265] != b"00":
                raise BundleError(self.label, f"the member at byte {at} is not a POSIX (ustar/pax) tar header")
            size = header_number(block[124:136], bundle=self.label, what="size")
            typeflag = block[156:157]
            if typeflag == b"x":
                if size > MAX_PAX:
                    raise BundleError(self.label, f"a PAX header at byte {at} is {size} bytes, larger than any this format writes")
                pax.update(self._pax(self._exact(size, "a PAX header"), at))
                self._skip(padding(size), "tar padding")
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
        self._skip(padding(size), "tar padding")
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
            self._left, self._after = size, padding(size)
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


@dataclass(frozen=True)
class Tail:
    manifest_bytes: bytes
    signature: bytes | None


def read_tail(path: str | os.PathLike) -> Tail:
    """The manifest bytes and the signature trailer member, if any, by walking the member headers
    (data is skipped by seeking, not read). Members are judged as in any pass: a bundle whose
    structure is broken raises BundleError. A multi-part bundle carries no signature."""
    with BundleReader(path, hash_all=False) as r:
        sig = None
        if r.parts is None:
            for member, chunks in r.payload():
                if member.problem and member.kind == "meta":
                    raise BundleError(r.label, member.problem)
                if member.kind == "meta" and member.name == TRAILER_MEMBERS[0] and not member.problem:
                    if member.size > MAX_TRAILER:
                        raise BundleError(r.label, f"{member.name} is {member.size} bytes, larger than any signature")
                    sig = b"".join(chunks)
        return Tail(manifest_bytes=r.manifest_bytes, signature=sig)


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
    if stored.locate(path).multipart:
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
        f.write(member_header(name, len(data)) + data + b"\0" * padding(len(data)))
        end = f.tell() + 2 * BLOCK
        f.write(b"\0" * (2 * BLOCK + (-end % RECORD)))
        f.truncate()
    sha = sha256_file(path)
    stored.write_sidecar(path, sha)
    return sha


