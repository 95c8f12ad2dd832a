"""Unsafe formats: what in a snapshot could run code when loaded, decided by an allowlist.

Loading a pickle runs whatever callables it names, so a `*.bin` checkpoint is a program, not data.
The default policy is safetensors-only: a snapshot holding pickle-based files is refused by pull,
pack and install. With `allow_pickle`, every pickle (also those inside torch zip checkpoints and
object-dtype numpy files) is scanned *statically* - its opcodes are walked with `pickletools`,
it is never unpickled - and every global it imports must be on `ALLOWED_GLOBALS`, a short list of
tensor/array rebuild functions. Denylists of "bad" imports are bypassed routinely (picklescan #66,
modelscan #85, #338); an allowlist fails closed: anything we cannot resolve is refused.

Python files (remote code) are not refused here but listed, so the manifest tells an auditor and
the trainer can insist on `trust_remote_code: true`.
"""

from __future__ import annotations

import base64
import binascii
import io
import lzma
import os
import pickletools
import re
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Mapping

from mirror.errors import PolicyError
from mirror.manifest import classify

POLICY_VERSION = "mirror-pickle-allowlist/1"

# torch dtypes appear as globals (`torch.float8_e4m3fn`) next to UntypedStorage in checkpoints of
# dtypes that have no legacy typed storage class; a dtype object is inert.
_TORCH_DTYPES = (
    "float16 half bfloat16 float32 float float64 double complex32 complex64 cfloat complex128 cdouble "
    "uint8 uint16 uint32 uint64 int8 int16 short int32 int int64 long bool "
    "float8_e4m3fn float8_e4m3fnuz float8_e5m2 float8_e5m2fnuz float8_e8m0fnu"
).split()
# Legacy typed storage classes: torch.save names one per tensor dtype in its persistent ids.
_TORCH_STORAGES = (
    "Float Double Half BFloat16 Long Int Short Char Byte Bool ComplexFloat ComplexDouble"
).split()

# (module, name) -> why it is safe. Each entry only rebuilds a tensor/array from bytes and shapes
# held in the same file; none calls back into arbitrary objects, imports, or touches the OS.
ALLOWED_GLOBALS: dict[tuple[str, str], str] = {
    ("collections", "OrderedDict"): "the container of every torch state_dict",
    ("torch._utils", "_rebuild_tensor"): "torch < 1.x tensor rebuild from (storage, offset, size, stride)",
    ("torch._utils", "_rebuild_tensor_v2"): "torch.save's tensor rebuild (adds requires_grad, hooks dict)",
    ("torch._utils", "_rebuild_tensor_v3"): "tensor rebuild for dtypes stored as UntypedStorage (float8...)",
    ("torch._utils", "_rebuild_parameter"): "wraps a rebuilt tensor in nn.Parameter",
    ("torch.storage", "UntypedStorage"): "byte storage named in persistent ids; bytes come from the archive",
    **{("torch", f"{s}Storage"): "typed storage named in persistent ids" for s in _TORCH_STORAGES},
    **{("torch", d): "a dtype object" for d in _TORCH_DTYPES},
    # numpy arrays and scalars, as pickled by numpy 1.x (numpy.core) and 2.x (numpy._core)
    **{(m, "_reconstruct"): "numpy array reconstruction" for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "scalar"): "numpy scalar from dtype + bytes" for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_frombuffer"): "numpy array from a pickle-5 buffer" for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): "the array type passed to _reconstruct",
    ("numpy", "dtype"): "a dtype built from its string code",
    ("_codecs", "encode"): "str -> bytes for array data in protocol-2 numpy pickles",
}
# Deliberately absent: torch._utils._rebuild_qtensor / _rebuild_parameter_with_state /
# _rebuild_from_type_v2 (they set arbitrary attributes or call a type from the stream),
# builtins.* (getattr, eval, exec, __import__), and any module a model's own code defines.

MAX_VALUE = 256 * 1024 * 1024  # one string, bytes value or line in a pickle; over it is refused, never read into memory
MAX_NESTING = 3  # zips in zips, pickles carried in pickles: deeper is refused, not followed
_CHUNK = 1024 * 1024
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of a pre-1.6 torch.save file
_TORCH_LEGACY_PICKLES = 5  # magic, protocol version, sys info, the object, storage keys; raw bytes follow
_STRING_OPS = frozenset(
    {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}
)
_DATA_OPS = _STRING_OPS | {"BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"}
_PICKLE_OPCODES = frozenset(op.code.encode("latin-1") for op in pickletools.opcodes)
_MEMO_PUT = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_MEMO_GET = frozenset({"GET", "BINGET", "LONG_BINGET"})


@dataclass(frozen=True)
class PickleScan:
    """What one file imports. `refused` names every import outside the allowlist and every
    construct we could not resolve statically; `error` says why the file is not a readable pickle."""

    globals: tuple[str, ...]
    refused: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.refused and self.error is None


@dataclass(frozen=True)
class PolicyReport:
    """The policy facts of a snapshot, as recorded in the manifest's `policy` section."""

    pickle: dict[str, PickleScan] = field(default_factory=dict)  # path -> scan (empty when not scanned)
    pickle_files: tuple[str, ...] = ()
    remote_code: tuple[str, ...] = ()

    def to_manifest(self) -> dict:
        return {
            "allowlist": POLICY_VERSION,
            "pickle": {p: list(self.pickle[p].globals) if p in self.pickle else None for p in self.pickle_files},
            "remote_code": list(self.remote_code),
        }

    def refusals(self) -> list[str]:
        out = []
        for path, scan in sorted(self.pickle.items()):
            if scan.error:
                out.append(f"{path}: {scan.error}")
            if scan.refused:
                out.append(f"{path} imports {', '.join(scan.refused)}")
        return out


# --- the opcode walk ------------------------------------------------------------------------------

_MARK = object()
_UNKNOWN = object()

# Opcodes that make the loader import something: a stream that breaks inside one is refused (the
# real unpickler may decode it differently than pickletools does), never waved through as data.
_IMPORT_CODES = frozenset({b"c", b"i", b"\x93", b"\x82", b"\x83", b"\x84"})  # GLOBAL INST STACK_GLOBAL EXT1/2/4
_PROTO_HEADS = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")  # every pickle of protocol 2+ starts so
_HEX = re.compile(rb"[0-9a-fA-F]{4,}")
_BASE64 = re.compile(rb"[A-Za-z0-9+/_-]{8,}={0,2}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _fmt(module: str, name: str) -> str:
    return f"{module}.{name}"


def _shown(text: str) -> str:
    """Member names and library messages come from the file: never let one break the one-line error."""
    return _CONTROL.sub(lambda m: ascii(m.group())[1:-1], text)


def _utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class _TooBig(ValueError):
    """A single value over MAX_VALUE: the loader would read it and go on, so what follows is unchecked."""


class _Reader:
    """The byte source pickletools.genops reads: it knows where it is and where the stream ends, so
    a length field pointing past the end fails without reading, and a single value over MAX_VALUE
    is refused instead of read into memory (the scan's memory is bounded by that, not the file).
    genops asks `tell()` right before reading each opcode, which is how we know the opcode a
    broken stream breaks in."""

    def __init__(self, raw: BinaryIO, size: int | None):
        self.raw = raw
        self.size = size
        self.pos = 0
        self.back = b""  # at most one byte, pushed back by at_end()
        self.op_start = -1
        self.op_code = b""
        self.op_lines: list[bytes] = []  # the lines the current opcode read (GLOBAL and INST read two)

    def tell(self) -> int:
        self.op_start = self.pos
        self.op_lines = []
        return self.pos

    def broke_in_import(self) -> bool:
        """Whether the opcode the stream broke in could have imported something. GLOBAL and INST
        lines that are cut short or not UTF-8 stop the real loader too (it decodes them as strict
        UTF-8), so those are inert; lines pickletools merely fails to read as ASCII are not."""
        if self.op_code in (b"c", b"i"):
            return all(line.endswith(b"\n") and _utf8(line) for line in self.op_lines)
        return self.op_code in _IMPORT_CODES

    def _take(self, data: bytes) -> bytes:
        if self.pos == self.op_start and data:
            self.op_code = data[:1]
        self.pos += len(data)
        return data

    def read(self, n: int) -> bytes:
        if self.size is not None and self.pos + n > self.size:
            raise ValueError(f"a value of {n} bytes in the opcode at byte {self.op_start} runs past the end of the stream")
        if n > MAX_VALUE:
            raise _TooBig(f"a value of {n} bytes in the opcode at byte {self.op_start} is over the scanner's limit of {MAX_VALUE}")
        data, self.back = self.back[:n], self.back[n:]
        if len(data) < n:
            data += self.raw.read(n - len(data))
        return self._take(data)

    def readline(self) -> bytes:
        line, self.back = self.back, b""
        if not line.endswith(b"\n"):
            line += self.raw.readline(MAX_VALUE + 1 - len(line))
        if len(line) > MAX_VALUE:
            raise _TooBig(f"a line of over {MAX_VALUE} bytes in the opcode at byte {self.op_start}")
        self.op_lines.append(line)
        return self._take(line)

    def at_end(self) -> bool:
        if not self.back:
            self.back = self.raw.read(1)
        return not self.back


class _Walker:
    """Walks pickle opcodes with a symbolic stack that only knows strings, so STACK_GLOBAL's
    operands resolve even when they come from the memo. Everything else is `_UNKNOWN`. Every
    string or bytes value is also checked for a pickle carried inside it (raw, hex or base64): a
    loader that calls `pickle.loads` on it later runs code this walk would otherwise never see."""

    def __init__(self, depth: int = 0) -> None:
        self.depth = depth
        self.imports: list[tuple[str, str]] = []
        self.refused: list[str] = []

    def seen(self) -> int:
        """How many imports and refusals so far: a break after one of them is not inert data."""
        return len(self.imports) + len(self.refused)

    def walk(self, stream: _Reader) -> bool:
        """Walk one pickle (up to STOP). Returns whether it was torch's legacy magic number."""
        stack: list = []
        memo: dict[int, object] = {}
        magic = False
        for op, arg, pos in pickletools.genops(stream):
            name = op.name
            magic = magic or (name in ("LONG1", "LONG4", "LONG") and arg == _TORCH_LEGACY_MAGIC)
            if name == "MARK":
                stack.append(_MARK)
                continue
            if name in _MEMO_PUT or name == "MEMOIZE":
                if not stack or stack[-1] is _MARK:
                    raise ValueError(f"memo store on an empty stack at byte {pos}")
                memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
                continue
            if name in _MEMO_GET:
                # An unknown memo slot is a malformed pickle; pushing _UNKNOWN makes any
                # STACK_GLOBAL that uses it unresolvable, hence refused.
                stack.append(memo.get(arg, _UNKNOWN))
                continue
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                self._import(module, attr)
            elif name == "STACK_GLOBAL":
                if len(stack) < 2:
                    raise ValueError(f"STACK_GLOBAL with fewer than two operands at byte {pos}")
                attr, module = stack[-1], stack[-2]
                if isinstance(module, str) and isinstance(attr, str):
                    self._import(module, attr)
                else:
                    self.refused.append(f"<STACK_GLOBAL at byte {pos} with operands computed at load time>")
            elif name.startswith("EXT"):
                # copyreg's extension registry maps a code to a global only the loading process knows
                self.refused.append(f"<extension code {arg} at byte {pos}>")
            elif name in _DATA_OPS:
                self._carried(arg, pos)
            self._apply_stack_effect(op, arg, stack, pos)
        return magic

    def _import(self, module: str, attr: str) -> None:
        self.imports.append((module, attr))
        if (module, attr) not in ALLOWED_GLOBALS:
            self.refused.append(_shown(_fmt(module, attr)))

    def _carried(self, value: str | bytes | bytearray, pos: int) -> None:
        found = _carried_pickle(value, depth=self.depth)
        if found is not None:
            how, inner = found
            what = f", importing {', '.join(inner.globals)}" if inner.globals else ""
            self.refused.append(f"<a pickle carried as {how} data at byte {pos}{_shown(what)}>")

    @staticmethod
    def _apply_stack_effect(op: pickletools.OpcodeInfo, arg, stack: list, pos: int) -> None:
        before, after = op.stack_before, op.stack_after
        if pickletools.markobject in before:
            # e.g. APPENDS: [list, mark, stackslice] -> pop down to the mark, then what sits below it
            while stack and stack[-1] is not _MARK:
                stack.pop()
            if not stack:
                raise ValueError(f"{op.name} without a MARK at byte {pos}")
            stack.pop()
            below = before.index(pickletools.markobject)
        elif op.name == "POP" and stack and stack[-1] is _MARK:
            stack.pop()
            below = 0
        else:
            below = len(before)
        if len(stack) < below:
            raise ValueError(f"{op.name} on a stack too short at byte {pos}")
        del stack[len(stack) - below:]
        for _ in after:
            stack.append(arg if op.name in _STRING_OPS and isinstance(arg, str) else _UNKNOWN)


def _decodings(value: str | bytes | bytearray) -> Iterator[tuple[str, bytes]]:
    """The byte strings a loader could turn `value` into with one obvious decode."""
    if isinstance(value, str):
        try:
            raw = value.encode("latin-1")  # also how protocol-2 numpy pickles carry bytes
        except UnicodeEncodeError:
            raw = value.encode("utf-8", "surrogatepass")
    else:
        raw = bytes(value)
    yield "raw", raw
    text = raw.strip()
    if len(text) % 2 == 0 and _HEX.fullmatch(text):
        yield "hex", bytes.fromhex(text.decode("ascii"))
    elif _BASE64.fullmatch(text):
        try:
            yield "base64", base64.b64decode(text, altchars=b"-_" if b"-" in text or b"_" in text else None, validate=True)
        except binascii.Error:
            pass


def _carried_pickle(value: str | bytes | bytearray, *, depth: int) -> tuple[str, PickleScan] | None:
    """Whether `value` is itself a pickle. One with a protocol header counts as soon as it parses
    to its STOP or imports something before it breaks; a header-less (protocol 0/1) one only when
    it parses to STOP *and* imports, since short text can parse as a harmless protocol-0 pickle."""
    for how, blob in _decodings(value):
        headed = blob[:2] in _PROTO_HEADS
        if not headed and (len(blob) < 4 or blob[:1] not in _PICKLE_OPCODES):
            continue
        if depth >= MAX_NESTING:
            if headed:
                return how, PickleScan(globals=(), error=f"nested more than {MAX_NESTING} deep")
            continue
        inner, complete = _walk_stream(_Reader(io.BytesIO(blob), len(blob)), legacy_torch_ok=False, depth=depth + 1)
        if headed and (complete or inner.globals or inner.refused or inner.error):
            return how, inner
        if not headed and complete and (inner.globals or inner.refused):
            return how, inner
    return None


def _walk_stream(reader: _Reader, *, legacy_torch_ok: bool, depth: int = 0) -> tuple[PickleScan, bool]:
    """Every pickle in `reader`, one after another (torch's legacy format writes five), and whether
    at least one parsed to its STOP. A stream that breaks before importing anything is inert: the
    loader stops at the same byte having called nothing, so it is data (a PNG named `.pt`, raw
    tensor bytes), not code. One that breaks in or after an import is refused."""
    walker = _Walker(depth)
    error = None
    count = 0
    limit = None
    while (limit is None or count < limit) and not reader.at_end():
        seen = walker.seen()
        try:
            magic = walker.walk(reader)
        except _TooBig as e:
            error = f"{e}; refusing what cannot be checked"
            break
        except ValueError as e:  # genops raises ValueError for truncated or unknown opcodes
            if walker.seen() > seen or reader.broke_in_import():
                error = f"not a readable pickle ({_shown(str(e))}); refusing what cannot be checked"
            break
        count += 1
        if count == 1 and legacy_torch_ok and magic:
            limit = _TORCH_LEGACY_PICKLES
    scan = PickleScan(
        globals=tuple(sorted({_shown(_fmt(m, a)) for m, a in walker.imports})),
        refused=tuple(dict.fromkeys(walker.refused)),
        error=error,
    )
    return scan, count > 0


def scan_pickle(source: bytes | BinaryIO, *, legacy_torch_ok: bool = True) -> PickleScan:
    """Statically list the globals a pickle stream imports (several pickles may follow each other,
    as in torch's legacy format). Never unpickles."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    return _walk_stream(_Reader(source, _remaining(source)), legacy_torch_ok=legacy_torch_ok)[0]


def _remaining(f: BinaryIO) -> int | None:
    try:
        here = f.tell()
        end = f.seek(0, os.SEEK_END)
        f.seek(here)
        return end - here
    except (OSError, AttributeError, ValueError):
        return None  # a pipe: lengths are checked by the reads themselves


# --- files and the containers that carry pickles ---------------------------------------------------

# Formats a loader could unpack to a pickle that this scanner does not open. Where a weight file is
# expected, each is refused as unreadable rather than passed as opaque bytes. joblib writes the
# compressed ones; torch.load still reads its pre-1.0 tar format.
_CLOSED_ARCHIVES = (
    (b"\x1f\x8b", "a gzip stream"),
    (b"BZh", "a bzip2 stream"),
    (b"\xfd7zXZ\x00", "an xz stream"),
    (b"\x5d\x00\x00", "an lzma stream"),
    (b"\x28\xb5\x2f\xfd", "a zstd stream"),
    (b"\x04\x22\x4d\x18", "an lz4 frame"),
    (b"7z\xbc\xaf\x27\x1c", "a 7z archive"),
    (b"Rar!\x1a\x07", "a rar archive"),
)
_HEAD = 512  # one tar header block: enough for every magic above


def _sniff(head: bytes) -> str:
    """What a stream is, from its first bytes: never from its name."""
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
        return "zip"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    for magic, what in _CLOSED_ARCHIVES:
        if head.startswith(magic):
            return what
    if head[:1] == b"\x78" and len(head) > 1 and (head[0] * 256 + head[1]) % 31 == 0:
        return "a zlib stream"
    if len(head) >= 512 and _is_tar_header(head[:512]):
        return "a tar archive (torch's pre-1.0 checkpoint format)"
    return "pickle"


def _is_tar_header(block: bytes) -> bool:
    """tarfile's own test (a valid header checksum); `ustar` alone would miss old v7 archives."""
    try:
        tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def scan_file(path) -> PickleScan:
    """Scan one pickle-kind file by what it holds, whatever its name: a zip (a torch checkpoint, an
    `.npz`, or any other: every member that holds a pickle), a numpy `.npy` (only object arrays
    carry a pickle), or a plain/legacy pickle stream; an encrypted, broken or unopenable archive
    is refused. `path` may also be a checked source (mirror.bundle.write.files.SourceFile): scanned through
    its descriptor, the bytes pack then bundles, never reopened by name."""
    if hasattr(path, "descriptor"):
        with path.descriptor() as fd:
            with os.fdopen(os.dup(fd), "rb") as f:
                f.seek(0)
                return _scan_open(f)
    with open(path, "rb") as f:
        return _scan_open(f)


def _scan_open(f: BinaryIO, *, size: int | None = None, depth: int = 0) -> PickleScan:
    head = f.read(_HEAD)
    f.seek(0)
    kind = _sniff(head)
    if kind == "zip":
        return _scan_zip(f, depth=depth)
    if kind == "npy":
        return _scan_npy(f)
    if kind != "pickle":
        return PickleScan(globals=(), error=f"{kind}, which the scanner does not open; refusing what cannot be checked")
    return _walk_stream(_Reader(f, size if size is not None else _remaining(f)), legacy_torch_ok=True, depth=depth)[0]


def _scan_npy(f: BinaryIO) -> PickleScan:
    import numpy.lib.format as npformat  # numpy parses the header with literal_eval: safe

    try:
        version = npformat.read_magic(f)
        if version == (1, 0):
            _shape, _order, dtype = npformat.read_array_header_1_0(f)
        elif version == (2, 0):
            _shape, _order, dtype = npformat.read_array_header_2_0(f)
        else:
            return PickleScan(globals=(), error=f".npy format version {version} is not supported by the scanner")
    except (ValueError, OSError, SyntaxError) as e:
        return PickleScan(globals=(), error=_shown(f"not a readable .npy file ({e})"))
    if not dtype.hasobject:
        return PickleScan(globals=())  # raw array bytes follow the header: no pickle at all
    return _walk_stream(_Reader(f, None), legacy_torch_ok=False)[0]


def _holds_pickle(name: str, head: bytes) -> bool:
    """A zip member is scanned when its content says pickle (a protocol 2+ header) or another
    container, or its name says pickle (protocol 0/1 pickles have no header). Torch's raw storages
    and text members are neither; one that starts like a pickle by chance is walked and passes as
    inert data when it breaks before importing anything."""
    return head[:2] in _PROTO_HEADS or _sniff(head) != "pickle" or name.lower().endswith((".pkl", ".pickle"))


def _scan_zip(f: BinaryIO, *, depth: int) -> PickleScan:
    if depth >= MAX_NESTING:
        return PickleScan(globals=(), error=f"archives nested more than {MAX_NESTING} deep; refusing what cannot be checked")
    globs: set[str] = set()
    refused: list[str] = []
    errors: list[str] = []
    try:
        with zipfile.ZipFile(f) as z:
            infos = z.infolist()
            locked = [i.filename for i in infos if i.flag_bits & 0x1]
            if locked:
                return PickleScan(globals=(), error=_shown(f"encrypted zip member {locked[0]!r}: its content cannot be checked"))
            for info in infos:
                if info.is_dir():
                    continue
                with z.open(info) as member:
                    head = member.read(_HEAD)
                if not _holds_pickle(info.filename, head):
                    continue
                with z.open(info) as member:  # streamed: only the opcodes / the .npy header are read
                    scan = _scan_open(member, size=info.file_size, depth=depth + 1)
                    if _sniff(head) == "pickle":
                        while member.read(_CHUNK):  # to its end, so the zip's CRC of it is checked
                            pass
                globs.update(scan.globals)
                refused.extend(scan.refused)
                if scan.error:
                    errors.append(_shown(f"{info.filename}: {scan.error}"))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError, RuntimeError, ValueError, zlib.error, lzma.LZMAError) as e:
        # RuntimeError: zipfile's "password required"; the others: broken headers, CRCs, methods
        return PickleScan(globals=(), error=_shown(f"not a readable zip archive ({e}); refusing what cannot be checked"))
    return PickleScan(globals=tuple(sorted(globs)), refused=tuple(dict.fromkeys(refused)), error="; ".join(errors) or None)


# --- snapshots ------------------------------------------------------------------------------------


def scan_files(files: Mapping[str, Path | None], *, scan_pickles: bool = True) -> PolicyReport:
    """The policy facts of a snapshot given as repo path -> where its bytes are on disk (None: not
    here, e.g. carried over from a delta's base; listed, not scanned). Kinds are recomputed from
    the path, never taken from a manifest (a hostile one could call a pickle json)."""
    paths = sorted(files)
    pickles = tuple(p for p in paths if classify(p) == "pickle")
    code = tuple(p for p in paths if classify(p) == "code")
    scans = {p: scan_file(files[p]) for p in pickles if files[p] is not None} if scan_pickles else {}
    return PolicyReport(pickle=scans, pickle_files=pickles, remote_code=code)


def scan_snapshot(root: str | os.PathLike, *, paths: Iterable[str] | None = None, scan_pickles: bool = True) -> PolicyReport:
    """`scan_files` over the folder `root` (files at `root/<path>`); `paths` limits the scan to
    the files a manifest lists, else every file not under a dot-folder (.cache, .git) is seen."""
    root = Path(root)
    if paths is None:
        paths = [
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts[:-1])
        ]
    return scan_files({p: root / p for p in paths}, scan_pickles=scan_pickles)


def scan_bundle(bundle: str | os.PathLike) -> PolicyReport:
    """Scan the pickle files inside a bundle (audit): each is spooled to a private temp folder,
    scanned, and deleted; nothing is ever loaded. Members with structural problems are skipped
    here: `verify` reports those."""
    import tempfile

    from mirror.bundle.codec import BundleReader

    with tempfile.TemporaryDirectory(prefix="mirror-scan-") as tmp, BundleReader(bundle, hash_all=False) as reader:
        paths = [f.path for f in reader.manifest.files]
        scans: dict[str, PickleScan] = {}
        for member, chunks in reader.payload():
            if member.problem or member.entry is None or classify(member.entry.path) != "pickle":
                continue
            spool = Path(tmp) / "member"
            with open(spool, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
            scans[member.entry.path] = scan_file(spool)
            spool.unlink()
    report = scan_files(dict.fromkeys(paths), scan_pickles=False)
    return PolicyReport(pickle=scans, pickle_files=report.pickle_files, remote_code=report.remote_code)


def enforce(report: PolicyReport, *, allow_pickle: bool, where: str) -> None:
    """Raise PolicyError (one line) if the snapshot breaks the policy."""
    if report.pickle_files and not allow_pickle:
        shown = ", ".join(report.pickle_files[:3]) + (f" (+{len(report.pickle_files) - 3} more)" if len(report.pickle_files) > 3 else "")
        raise PolicyError(
            where,
            f"holds pickle-based file(s) that can run code when loaded: {shown}",
            fix="prefer the safetensors files of the repo (exclude these with --exclude), or pass --allow-pickle "
            "to scan them against the allowlist (docs/security.md)",
        )
    problems = report.refusals()
    if problems:
        unreadable = any(scan.error for scan in report.pickle.values())
        raise PolicyError(
            where,
            ("pickle file(s) the scan cannot check or refuses: " if unreadable else "pickle import outside the allowlist: ")
            + "; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""),
            fix="do not load this model; "
            + ("get its weights as safetensors, or the file unencrypted and whole from its source" if unreadable else
               "if the import is a genuine tensor rebuild, extend mirror.policy.ALLOWED_GLOBALS after review"),
        )


def check_snapshot(root: str | os.PathLike, *, paths: Iterable[str] | None = None, allow_pickle: bool, where: str) -> PolicyReport:
    """scan_snapshot + enforce, the hook pull and pack call. Pickles are only scanned when they
    may be accepted, so the default policy costs no reads."""
    report = scan_snapshot(root, paths=paths, scan_pickles=allow_pickle)
    enforce(report, allow_pickle=allow_pickle, where=where)
    return report


def check_files(files: Mapping[str, Path | None], *, allow_pickle: bool, where: str) -> PolicyReport:
    """scan_files + enforce: the hook of install (over the blobs it staged before moving them in)
    and pull (over the downloaded files before the bundle is written)."""
    report = scan_files(files, scan_pickles=allow_pickle)
    enforce(report, allow_pickle=allow_pickle, where=where)
    return report


def check_paths(paths: Iterable[str], *, where: str) -> None:
    """The default (safetensors-only) policy decided from file names alone, before any byte is
    read: install refuses a pickle bundle without extracting it."""
    enforce(scan_files(dict.fromkeys(paths), scan_pickles=False), allow_pickle=False, where=where)
