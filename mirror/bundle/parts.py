"""Multi-part bundles: one bundle stream cut into equal, size-capped parts, read back as one stream.

Why: transfer portals, DVDs and FAT32 sticks cap file sizes, and a 100 GB bundle that fails a
check should not have to travel again whole. The tar stream is cut at exact byte offsets (not at
member boundaries), so every part but the last is exactly `max_part_size` bytes and the parts,
concatenated, are byte-identical to the single-file bundle (same sha256). An index next to the
parts records the size and sha256 of every part and of the whole stream, so a missing or
truncated part is named before any work starts and a damaged one is named as soon as the stream
passes its end.

Layout for a bundle called NAME.tar (docs/bundle-format.md, "Multi-part bundles"):

    NAME.tar.part0001 ... NAME.tar.partNNNN   the stream, cut every max_part_size bytes
    NAME.tar.parts.json                       the index (written last: it is the commit point)
    NAME.tar.parts.sha256                     the part digests in `sha256sum -c` format

Readers never join the parts on disk: `mirror.bundle.stored` reads them as one stream.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from common import safejson
from common import atomic
from mirror.errors import BundleError, UsageError
from mirror.hashing import CHUNK, HashLanes, sha256sum_line
from mirror.ids import is_sha256

PARTS_FORMAT = "mirror-parts/1"
INDEX_SUFFIX = ".parts.json"
SUMS_SUFFIX = ".parts.sha256"
PARTIAL_SUFFIX = ".partial"
# Below this a part count explodes and the value is almost surely a typo ("4" meant "4G").
MIN_PART_SIZE = 1024
MAX_INDEX_BYTES = 16 * 1024 * 1024  # ~100 bytes a part: 160k parts; larger is not an index of ours
PART_RE = re.compile(r"^(?P<bundle>.+)\.part(?P<no>\d{4,})$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Same convention as coreutils `split`: K/M/G/T are powers of 1024, KB/MB/GB/TB powers of 1000.
_UNITS = {
    "": 1, "B": 1,
    "K": 1 << 10, "KIB": 1 << 10, "KB": 10**3,
    "M": 1 << 20, "MIB": 1 << 20, "MB": 10**6,
    "G": 1 << 30, "GIB": 1 << 30, "GB": 10**9,
    "T": 1 << 40, "TIB": 1 << 40, "TB": 10**12,
}  # fmt: skip


def parse_size(text: str) -> int:
    """'4G' -> 4294967296, '700M', '650MB', '1.5G', '4096'. Raises UsageError with the fix."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).upper() if m else None
    if not m or unit not in _UNITS:
        raise UsageError(
            f"--max-part-size {text!r} is not a size; use a number with K, M, G or T "
            "(powers of 1024, e.g. 4G or 4095M for FAT32) or KB, MB, GB (powers of 1000)"
        )
    size = int(float(m.group(1)) * _UNITS[unit])
    if size < MIN_PART_SIZE:
        raise UsageError(
            f"--max-part-size {text!r} is {size} bytes, below the {MIN_PART_SIZE}-byte minimum; "
            "did you forget the unit (e.g. 4G)?"
        )
    return size


def part_name(bundle_name: str, number: int) -> str:
    """NAME.tar, 1 -> NAME.tar.part0001 (numbered from 1; widens past 9999 parts)."""
    return f"{bundle_name}.part{number:04d}"


# --- the index ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartInfo:
    name: str  # file name, in the index's directory
    size: int
    sha256: str


@dataclass(frozen=True)
class PartsIndex:
    bundle: str  # the logical bundle name, NAME.tar
    size: int  # bytes of the whole stream
    sha256: str  # sha256 of the whole stream: equals the single-file bundle's sha256
    max_part_size: int
    parts: tuple[PartInfo, ...]

    def to_json(self) -> bytes:
        d = {
            "format": PARTS_FORMAT,
            "bundle": self.bundle,
            "size": self.size,
            "sha256": self.sha256,
            "max_part_size": self.max_part_size,
            "parts": [{"name": p.name, "size": p.size, "sha256": p.sha256} for p in self.parts],
        }
        return (json.dumps(d, indent=2, sort_keys=True) + "\n").encode()

    def offset_of(self, number: int) -> int:
        """Stream offset where part `number` (0-based) starts; parts are equal but the last."""
        return number * self.max_part_size


def parse_index(raw: bytes, *, where: str) -> PartsIndex:
    """Strict: an index that would let a reader step outside its folder, or that describes
    uneven parts, is refused rather than half-trusted. Hostile JSON is refused by safejson."""
    d = safejson.loads(raw, where=where, what="parts index", max_bytes=MAX_INDEX_BYTES, error=BundleError)
    if not isinstance(d, dict) or d.get("format") != PARTS_FORMAT:
        raise BundleError(where, f"not a parts index (format must be {PARTS_FORMAT!r})")
    problems: list[str] = []
    bundle, size, sha, mps, raw_parts = (d.get(k) for k in ("bundle", "size", "sha256", "max_part_size", "parts"))
    if not isinstance(bundle, str) or not bundle or "/" in bundle or "\\" in bundle or bundle in (".", "..") or _CONTROL.search(bundle):
        problems.append("bundle must be a plain file name (no '/', '\\' or control characters)")
    if not _is_int(size) or size < 0:
        problems.append("size must be a non-negative integer")
    if not is_sha256(sha):
        problems.append("sha256 must be 64 lowercase hex characters")
    if not _is_int(mps) or mps < 1:
        problems.append("max_part_size must be a positive integer")
    if not isinstance(raw_parts, list):
        problems.append("parts must be a list")
        raw_parts = []
    parts: list[PartInfo] = []
    for i, p in enumerate(raw_parts, start=1):
        if not isinstance(p, dict) or set(p) != {"name", "size", "sha256"}:
            problems.append(f"parts[{i - 1}] must have exactly name, size, sha256")
            continue
        if isinstance(bundle, str) and p["name"] != part_name(bundle, i):
            problems.append(f"parts[{i - 1}] must be named {part_name(bundle, i)!r}")
        if not _is_int(p["size"]) or not is_sha256(p["sha256"]):
            problems.append(f"parts[{i - 1}] has a bad size or sha256")
            continue
        parts.append(PartInfo(name=p["name"], size=p["size"], sha256=p["sha256"]))
    if not problems:
        # equal parts but the last, which is non-empty: the fix for Zarf's uneven parts (#2313)
        if any(p.size != mps for p in parts[:-1]) or (parts and not 0 < parts[-1].size <= mps):
            problems.append("parts are not all max_part_size bytes except a non-empty last one")
        if sum(p.size for p in parts) != size:
            problems.append("part sizes do not add up to size")
    if problems:
        raise BundleError(where, "invalid parts index: " + "; ".join(problems[:6]))
    return PartsIndex(bundle=bundle, size=size, sha256=sha, max_part_size=mps, parts=tuple(parts))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def index_path(bundle: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(bundle)}{INDEX_SUFFIX}")


def read_index(index: str | os.PathLike) -> PartsIndex:
    """The index, opened only if it is a regular file and read only up to its size limit."""
    index = Path(index)
    try:
        raw = safejson.read_file(index, what="parts index", max_bytes=MAX_INDEX_BYTES, error=BundleError)
    except FileNotFoundError as e:
        raise BundleError(str(index), "the parts index does not exist", fix="give the path of a bundle or of its NAME.tar.parts.json") from e
    return parse_index(raw, where=str(index))


# --- writing ------------------------------------------------------------------------------------


class PartWriter(io.RawIOBase):
    """A seekable, write-only file object whose bytes land in parts of at most `max_part_size`.

    It stands in for the `open(partial, "wb")` of a single-file bundle writer, including seeking
    back to patch bytes already written. Parts are written under temporary names in `folder`.
    Appended bytes are hashed as they are written (each part and the whole stream, on two hash
    lanes); after a patch those digests are void and `commit(target)` hashes the parts in one read
    pass instead. It then publishes them as TARGET.partNNNN and returns the index.
    `discard()`, or leaving the `with` block by an exception, deletes the temporary parts.

    Publishing removes the old index first and writes the new one last, so no index ever
    describes parts that are not its own; it deletes parts left by an earlier write of the same
    name (Zarf #3266) and a single-file TARGET (+ .sha256) that the parts supersede.
    """

    def __init__(self, folder: str | os.PathLike, *, max_part_size: int):
        super().__init__()
        if max_part_size < MIN_PART_SIZE:
            raise UsageError(f"max_part_size {max_part_size} is below the {MIN_PART_SIZE}-byte minimum")
        self.folder = Path(folder)
        self.max_part_size = max_part_size
        self.mode = "wb"
        # temporaries are `.tar.partNNNN.<pid>-<random>.partial` (common.atomic's pattern), so the
        # leftovers of a killed writer are recognised and swept by the next pack or pull
        self._tag = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.name = str(self.folder / f".tar.{self._tag}.partial")
        self._count = 0  # part files created so far
        self._fh: BinaryIO | None = None  # the part being appended to
        self._pos = 0
        self._size = 0
        self._committed = False
        # lane 0: the whole stream's sha256; lane 1: the current part's. Void after a patch.
        self._lanes: HashLanes | None = HashLanes(2)
        self._whole = hashlib.sha256()
        self._part_sha: list = []
        self._streamed = True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if not 0 <= base + offset <= self._size:
            raise ValueError("a PartWriter can seek only within what was written")
        self._pos = base + offset
        return self._pos

    def write(self, b) -> int:
        if self.closed:
            raise ValueError("write to a closed PartWriter")
        view = memoryview(b).cast("B")
        done = 0
        while done < len(view):
            k, off = divmod(self._pos, self.max_part_size)
            take = min(self.max_part_size - off, len(view) - done)
            chunk = view[done : done + take]
            if self._pos == self._size:
                self._tail(k).write(chunk)
                if self._streamed:
                    # a lane may still hold it after we return: never hand it a mutable buffer
                    data = chunk if isinstance(b, bytes) else bytes(chunk)
                    self._lanes.submit(0, self._whole, data)
                    self._lanes.submit(1, self._part_sha[k], data)
            else:
                self._streamed = False
                self._overwrite(k, off, chunk[: min(take, self._size - self._pos)])
                take = min(take, self._size - self._pos)
            done += take
            self._pos += take
            self._size = max(self._size, self._pos)
        return len(view)

    def close(self) -> None:
        """Finish writing (the parts stay, under their temporary names, until commit/discard)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._lanes is not None:
            self._lanes.close()  # every submitted update is applied before its thread ends
            self._lanes = None
        super().close()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
        if exc_type is not None:
            self.discard()

    def commit(self, target: str | os.PathLike) -> PartsIndex:
        """Publish the parts as `target`.partNNNN with their index; returns the index."""
        self.close()
        target = Path(target)
        if target.parent.resolve() != self.folder.resolve():
            raise ValueError("commit target must be in the folder the parts were written to")
        index = self._hash(target.name)
        idx_final = index_path(target)
        sums_final = Path(f"{target}{SUMS_SUFFIX}")
        idx_tmp, sums_tmp = atomic.temp_path(idx_final), atomic.temp_path(sums_final)
        try:
            idx_tmp.write_bytes(index.to_json())
            sums = "".join(sha256sum_line(p.sha256, p.name) for p in index.parts).encode()
            sums_tmp.write_bytes(sums)
            idx_final.unlink(missing_ok=True)  # from here until the new index lands, no index exists
            for i, p in enumerate(index.parts):
                os.replace(self._temp(i), self.folder / p.name)
            for stale in _stale_files(target, keep={p.name for p in index.parts}):
                stale.unlink(missing_ok=True)
            os.replace(sums_tmp, sums_final)
            os.replace(idx_tmp, idx_final)
        finally:
            idx_tmp.unlink(missing_ok=True)
            sums_tmp.unlink(missing_ok=True)
        self._committed = True
        return index

    def discard(self) -> None:
        """Delete the temporary parts (a no-op after commit)."""
        self.close()
        if not self._committed:
            for i in range(self._count):
                self._temp(i).unlink(missing_ok=True)

    def _temp(self, k: int) -> Path:
        return self.folder / f".tar.part{k + 1:04d}.{self._tag}{PARTIAL_SUFFIX}"

    def _tail(self, k: int) -> BinaryIO:
        if k >= self._count:
            if self._fh is not None:
                self._fh.close()
            self._fh = open(self._temp(k), "wb", buffering=1 << 20)
            self._count = k + 1
            self._part_sha.append(hashlib.sha256())
        return self._fh

    def _overwrite(self, k: int, off: int, chunk) -> None:
        if self._fh is not None and k == self._count - 1:
            self._fh.flush()  # the tail part is open for appending; patch the file behind it
        with open(self._temp(k), "r+b") as f:
            f.seek(off)
            f.write(chunk)

    def _hash(self, bundle: str) -> PartsIndex:
        """One read pass: the whole-stream sha256 and each part's, on two hash lanes so that they
        cost about one sha256 of wall time. No fsync, as for single-file bundles: a part torn by
        a crash after its rename would fail its digest and be named, never trusted."""
        if self._streamed:  # hashed while written (the lanes were closed: all updates are in)
            infos = [
                PartInfo(name=part_name(bundle, k + 1), size=min(self.max_part_size, self._size - k * self.max_part_size), sha256=h.hexdigest())
                for k, h in enumerate(self._part_sha)
            ]
            return PartsIndex(bundle=bundle, size=self._size, sha256=self._whole.hexdigest(), max_part_size=self.max_part_size, parts=tuple(infos))
        whole = hashlib.sha256()
        infos: list[PartInfo] = []
        with HashLanes(2) as lanes:
            for k in range(self._count):
                h, size = hashlib.sha256(), 0
                with open(self._temp(k), "rb", buffering=0) as f:
                    while chunk := f.read(CHUNK):
                        lanes.submit(0, whole, chunk)
                        lanes.submit(1, h, chunk)
                        size += len(chunk)
                lanes.drain(1)
                infos.append(PartInfo(name=part_name(bundle, k + 1), size=size, sha256=h.hexdigest()))
            lanes.drain(0)
        return PartsIndex(bundle=bundle, size=self._size, sha256=whole.hexdigest(), max_part_size=self.max_part_size, parts=tuple(infos))


def _stale_files(target: Path, *, keep: set[str]) -> list[Path]:
    """Leftovers of an earlier write of the same bundle name: parts beyond the new count, their
    partials, and a single-file NAME.tar (+ .sha256) that the new parts supersede."""
    out = []
    for entry in target.parent.iterdir():
        name = entry.name[: -len(PARTIAL_SUFFIX)] if entry.name.endswith(PARTIAL_SUFFIX) else entry.name
        m = PART_RE.match(name)
        if m and m.group("bundle") == target.name and entry.name not in keep:
            out.append(entry)
    for single in (target, Path(f"{target}.sha256")):
        if single.is_file():
            out.append(single)
    return out


def remove_parts(target: str | os.PathLike) -> None:
    """For a single-file writer: drop a multi-part bundle of the same name that it supersedes
    (index first, so no reader trusts a half-removed set)."""
    target = Path(target)
    for suffix in (INDEX_SUFFIX, SUMS_SUFFIX):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    for stale in _stale_files(target, keep=set()):
        if stale != target and stale.name != f"{target.name}.sha256":
            stale.unlink(missing_ok=True)


