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

import io
import os
import pickletools
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable, Mapping

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

_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of a pre-1.6 torch.save file
_TORCH_LEGACY_PICKLES = 5  # magic, protocol version, sys info, the object, storage keys; raw bytes follow
_STRING_OPS = frozenset(
    {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}
)
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


def _fmt(module: str, name: str) -> str:
    return f"{module}.{name}"


class _Walker:
    """Walks pickle opcodes with a symbolic stack that only knows strings, so STACK_GLOBAL's
    operands resolve even when they come from the memo. Everything else is `_UNKNOWN`."""

    def __init__(self) -> None:
        self.imports: list[tuple[str, str]] = []
        self.refused: list[str] = []

    def walk(self, stream: BinaryIO) -> bool:
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
            self._apply_stack_effect(op, arg, stack, pos)
        return magic

    def _import(self, module: str, attr: str) -> None:
        self.imports.append((module, attr))
        if (module, attr) not in ALLOWED_GLOBALS:
            self.refused.append(_fmt(module, attr))

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


def scan_pickle(source: bytes | BinaryIO, *, legacy_torch_ok: bool = True) -> PickleScan:
    """Statically list the globals a pickle stream imports (several pickles may follow each other,
    as in torch's legacy format). Never unpickles."""
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    walker = _Walker()
    error = None
    count = 0
    limit = None
    while limit is None or count < limit:
        start = stream.tell() if stream.seekable() else None
        if start is not None and not stream.read(1):
            break  # clean end of stream
        if start is not None:
            stream.seek(start)
        try:
            magic = walker.walk(stream)
        except ValueError as e:  # genops raises ValueError for truncated or unknown opcodes
            if count == 0:
                error = f"not a readable pickle ({e}); refusing what cannot be checked"
            # after the first pickle, trailing bytes are data (numpy/torch payloads), not code
            break
        count += 1
        if count == 1 and legacy_torch_ok and magic:
            limit = _TORCH_LEGACY_PICKLES
        if start is None:
            break  # a pipe: read exactly one pickle, as pickle.load would
    if count == 0 and error is None and stream.seekable() and stream.tell() > 0:
        error = "not a readable pickle; refusing what cannot be checked"
    return PickleScan(
        globals=tuple(sorted({_fmt(m, a) for m, a in walker.imports})),
        refused=tuple(dict.fromkeys(walker.refused)),
        error=error,
    )


# --- files ----------------------------------------------------------------------------------------


def scan_file(path) -> PickleScan:
    """Scan one pickle-kind file: a torch zip checkpoint (every `.pkl`/`.npy` member), a numpy
    `.npy`/`.npz` (only object arrays carry a pickle), or a plain/legacy pickle stream. `path` may
    also be a checked source (mirror.sources.SourceFile): scanned through its descriptor, the
    bytes pack then bundles, never reopened by name."""
    if hasattr(path, "descriptor"):
        with path.descriptor() as fd:
            with os.fdopen(os.dup(fd), "rb") as f:
                f.seek(0)
                return _scan_open(f)
    with open(path, "rb") as f:
        return _scan_open(f)


def _scan_open(f: BinaryIO) -> PickleScan:
    head = f.read(6)
    f.seek(0)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return _scan_zip(f)
    if head.startswith(b"\x93NUMPY"):
        return _scan_npy(f)
    if not head:
        return PickleScan(globals=())  # empty: nothing to load, nothing to run
    return scan_pickle(f)


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
        return PickleScan(globals=(), error=f"not a readable .npy file ({e})")
    if not dtype.hasobject:
        return PickleScan(globals=())  # raw array bytes follow the header: no pickle at all
    return scan_pickle(f, legacy_torch_ok=False)


def _scan_zip(f: BinaryIO) -> PickleScan:
    globs: set[str] = set()
    refused: list[str] = []
    errors: list[str] = []
    try:
        with zipfile.ZipFile(f) as z:
            for info in z.infolist():
                lower = info.filename.lower()
                if not lower.endswith((".pkl", ".npy")):
                    continue
                with z.open(info) as member:  # streamed: only the opcodes / the .npy header are read
                    scan = _scan_npy(member) if lower.endswith(".npy") else scan_pickle(member)
                globs.update(scan.globals)
                refused.extend(scan.refused)
                if scan.error:
                    errors.append(f"{info.filename}: {scan.error}")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as e:
        return PickleScan(globals=(), error=f"not a readable zip checkpoint ({e})")
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

    from mirror.tarformat import BundleReader

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
        raise PolicyError(
            where,
            "pickle import outside the allowlist: " + "; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""),
            fix="do not load this model; if the import is a genuine tensor rebuild, extend mirror.policy.ALLOWED_GLOBALS after review",
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
