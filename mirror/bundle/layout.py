"""The bundle's layout, pure: tar header bytes, where every member and the trailer sit, and the
record padding at the end (docs/bundle-format.md 1.3-1.4).

The writer is deterministic: a manifest fixes every byte of the tar. So the offsets of every
member follow from the manifest alone (`member_span`, `archive_size`), the in-place writer knows
each shard's region before a byte is downloaded, and a reader can check that a bundle is laid
out exactly so (`writer_layout`) and then read each file by position, in parallel. Nothing here
opens a file: `writer_layout` reads through whatever `read(offset, n)` it is given.
"""

from __future__ import annotations

from dataclasses import dataclass

from mirror.bundle import BundleSpec
from mirror.errors import BundleError, HashMismatch, UsageError
from mirror.hashing import Digest, lfs_pointer_sha1
from mirror.manifest import MANIFEST_NAME, PAYLOAD_PREFIX, FileEntry, Manifest, classify

BLOCK = 512
RECORD = 20 * BLOCK  # tar's traditional record size; the archive is padded to a multiple of it
PAX_NAME = b"././@PaxHeader"
_MAX_OCTAL_SIZE = 0o77777777777  # 11 octal digits: sizes above 8 GiB go into a PAX record
# `_mirror/` members other than the manifest that may follow the payload (signing appends one).
TRAILER_MEMBERS = ("_mirror/signature.json",)
MAX_TRAILER = 1024 * 1024  # a signature is a few KB
PLACEHOLDER_SHA256 = "0" * 64
PLACEHOLDER_SHA1 = "0" * 40


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


def padding(n: int) -> int:
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
        head = _ustar(PAX_NAME, len(records), b"x") + records + b"\0" * padding(len(records))
    fallback = name.encode("ascii", "replace")  # readers use the PAX path; this only keeps tar(1) tidy
    return head + _ustar(fallback, 0 if size > _MAX_OCTAL_SIZE else size, b"0")


def member_span(name: str, size: int) -> int:
    return len(member_header(name, size)) + size + padding(size)


def archive_size(spans: int) -> int:
    end = spans + 2 * BLOCK
    return end + (-end % RECORD)


def header_number(field: bytes, *, bundle: str, what: str) -> int:
    """A numeric header field (octal, or GNU base-256); BundleError naming the field otherwise."""
    if field and field[0] & 0x80:  # GNU base-256: unambiguous, so accepted
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        # never echo the field's bytes: a file that is not a bundle may be anything (a planted link to a secret)
        raise BundleError(bundle, f"corrupt tar header: the {what} field is not an octal number") from None


# --- where everything sits ------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where everything sits in a bundle laid out exactly as the deterministic writer lays out its
    manifest: `files` are (entry, offset of its data) in path order; `trailer` maps a known
    trailer member (a signature) to (offset of its data, size)."""

    files: tuple[tuple[FileEntry, int], ...]
    trailer: dict[str, tuple[int, int]]


def writer_layout(src, manifest: Manifest, at: int) -> Layout | None:
    """The Layout of the bytes behind `src` (anything with `read(offset, n)` and `size`, e.g. an
    open BundleReader's `ranges()`) whose manifest member ends at `at`, when every header is
    byte-identical to `member_header`, the files come in path order, at most the known trailer
    members follow, then only zeros. Each file's bytes can then be read by position, in parallel,
    with nothing else in the tar to judge. None for any other layout (another writer, damage):
    callers then use the one-pass reader, which names what is off."""
    jobs = []
    for f in sorted(manifest.files, key=lambda f: f.path.encode("utf-8")):
        header = member_header(PAYLOAD_PREFIX + f.path, f.size)
        if src.read(at, len(header)) != header:
            return None
        jobs.append((f, at + len(header)))
        at += len(header) + f.size + padding(f.size)
    trailer: dict[str, tuple[int, int]] = {}
    for name in TRAILER_MEMBERS:
        block = src.read(at, BLOCK)
        if len(block) < BLOCK or block == b"\0" * BLOCK:
            break
        try:
            size = header_number(block[124:136], bundle="", what="size")
        except BundleError:
            return None
        header = member_header(name, size)
        if size > MAX_TRAILER or src.read(at, len(header)) != header:
            return None
        trailer[name] = (at + len(header), size)
        at += len(header) + size + padding(size)
        if src.read(at - padding(size), padding(size)).count(0) != padding(size):
            return None
    if src.size - at < 2 * BLOCK:
        return None
    pos = at
    while pos < src.size:  # end-of-archive blocks and record padding: zeros to the end
        chunk = src.read(pos, 1 << 20)
        if chunk.count(0) != len(chunk):
            return None
        pos += len(chunk)
    return Layout(files=tuple(jobs), trailer=trailer)


@dataclass(frozen=True)
class Draft:
    """A bundle's layout before any file is hashed. Hex digests have fixed lengths, so the final
    manifest is exactly as long as one with placeholder digests: `reserved` (rounded up to a
    block, which keeps the payload block-aligned without tar padding) and the tar's `total` size
    are final before pass 1. `files` are in bundle order with placeholder digests; `promised` is
    each file's digests where they follow from the spec's expected sha256 (an LFS file the Hub
    listed: not hashed in pass 1, checked while it is copied), else None."""

    spec: BundleSpec
    files: tuple[FileEntry, ...]
    promised: dict[str, Digest | None]
    reserved: int
    total: int

    def manifest_member(self, raw: bytes) -> bytes:
        """Member 0 as written: header, the manifest, spaces up to the reserved size."""
        return member_header(MANIFEST_NAME, self.reserved) + raw + b" " * (self.reserved - len(raw))


def plan(spec: BundleSpec, sizes: dict[str, int]) -> Draft:
    """The Draft of a bundle of files with these sizes (path -> bytes, in bundle order); checked
    against `spec.expected` first (a file it does not list, or of another size: refused)."""
    expected = spec.expected
    for p, size in sizes.items():
        want = (expected or {}).get(p)
        if expected is not None and want is None:
            raise UsageError(f"{p} is not among the expected files of {spec.repo_id}; it cannot be checked")
        if want is not None and want.size != size:
            raise HashMismatch(p, algorithm="size", expected=str(want.size), actual=str(size), where="in the download")
    files = tuple(
        FileEntry(path=p, size=size, sha256=PLACEHOLDER_SHA256, git_sha1=PLACEHOLDER_SHA1, lfs=spec.lfs_of(p, size), kind=classify(p))
        for p, size in sizes.items()
    )
    reserved = len(spec.manifest(files, spec.commit or PLACEHOLDER_SHA1).to_json())
    reserved += padding(reserved)
    total = archive_size(len(member_header(MANIFEST_NAME, reserved)) + reserved + sum(member_span(PAYLOAD_PREFIX + f.path, f.size) for f in files))
    promised = {f.path: _promised(f, (expected or {}).get(f.path)) for f in files}
    return Draft(spec=spec, files=files, promised=promised, reserved=reserved, total=total)


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
