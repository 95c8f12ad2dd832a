"""The pickle allowlist: real torch/numpy files pass with their exact imports; hostile ones are
refused with the import named; nothing is ever unpickled."""

from __future__ import annotations

import collections
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mirror.errors import PolicyError
from mirror.policy import ALLOWED_GLOBALS, check_snapshot, scan_file, scan_pickle, scan_snapshot

TORCH_FP32 = ["collections.OrderedDict", "torch.FloatStorage", "torch._utils._rebuild_tensor_v2"]


# --- raw opcode helpers: hostile pickles are written byte by byte, as an attacker would ------------

def su(s: str) -> bytes:  # SHORT_BINUNICODE
    b = s.encode()
    return b"\x8c" + bytes([len(b)]) + b


def bu(s: str) -> bytes:  # BINUNICODE
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def glob(module: str, name: str) -> bytes:  # GLOBAL (protocol 0-2)
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


P4 = b"\x80\x04"
MEMOIZE, POP, STACK_GLOBAL, TUPLE1, TUPLE2, REDUCE, STOP, EMPTY_TUPLE = b"\x94", b"0", b"\x93", b"\x85", b"\x86", b"R", b".", b")"


def binget(i: int) -> bytes:
    return b"h" + bytes([i])


class _Inert:
    """Stands in for every imported global: calling it, or building it, does nothing."""

    def __call__(self, *args, **kwargs):
        return _Inert()

    def __setstate__(self, state):
        pass


class _Recorder(pickle.Unpickler):
    """The real unpickler, with find_class recording what it is asked for and returning an inert
    stub: the oracle our static scan must agree with."""

    def __init__(self, data: bytes):
        import io

        super().__init__(io.BytesIO(data))
        self.asked: list[str] = []

    def find_class(self, module, name):
        self.asked.append(f"{module}.{name}")
        return _Inert()


def imports_at_load(data: bytes) -> list[str]:
    r = _Recorder(data)
    r.load()
    return sorted(set(r.asked))


# --- benign files --------------------------------------------------------------------------------

def _state_dict():
    g = torch.Generator().manual_seed(0)
    return collections.OrderedDict(weight=torch.randn(4, 3, generator=g), bias=torch.zeros(4))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_checkpoint_passes_with_exact_globals(tmp_path, zip_format):
    path = tmp_path / "pytorch_model.bin"
    torch.save(_state_dict(), path, _use_new_zipfile_serialization=zip_format)
    assert zipfile.is_zipfile(path) == zip_format
    scan = scan_file(path)
    assert scan.ok, scan
    assert list(scan.globals) == TORCH_FP32


def test_torch_mixed_dtypes_and_parameters(tmp_path):
    sd = {
        "h": torch.ones(2, dtype=torch.float16),
        "b": torch.ones(2, dtype=torch.bfloat16),
        "i": torch.arange(3),
        "m": torch.tensor([True]),
        "p": torch.nn.Parameter(torch.ones(2)),
        "f8": torch.zeros(2, dtype=torch.float8_e4m3fn),
    }
    path = tmp_path / "model.pt"
    torch.save(sd, path)
    scan = scan_file(path)
    assert scan.ok, scan
    assert set(scan.globals) == {
        "torch.HalfStorage", "torch.BFloat16Storage", "torch.LongStorage", "torch.BoolStorage",
        "torch.FloatStorage", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_tensor_v3", "torch.storage.UntypedStorage", "torch.float8_e4m3fn",
        "collections.OrderedDict",  # each tensor's (empty) backward-hooks dict, even in a plain dict
    }


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_pickles(protocol):
    data = pickle.dumps({"a": np.arange(5, dtype=np.float32), "s": np.float32(2.5)}, protocol=protocol)
    scan = scan_pickle(data)
    assert scan.ok, scan
    assert list(scan.globals) == imports_at_load(data)  # the static scan sees what the loader would
    assert all(tuple(g.rsplit(".", 1)) in ALLOWED_GLOBALS for g in scan.globals)


def test_npy_and_npz(tmp_path):
    np.save(tmp_path / "plain.npy", np.arange(10))
    np.save(tmp_path / "objects.npy", np.array([1, "x"], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "both.npz", plain=np.arange(3), objects=np.array([None], dtype=object))
    assert scan_file(tmp_path / "plain.npy").globals == ()  # no pickle in a numeric .npy
    obj = scan_file(tmp_path / "objects.npy")
    assert obj.ok and "numpy.ndarray" in obj.globals
    assert scan_file(tmp_path / "both.npz").globals == obj.globals


# --- hostile pickles -----------------------------------------------------------------------------

class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_reduce_to_os_system_is_refused(protocol):
    scan = scan_pickle(pickle.dumps(_Evil(), protocol=protocol))
    name = f"{os.system.__module__}.system"  # posix.system on Linux
    assert scan.refused == (name,)
    assert not scan.ok


def test_scanning_never_unpickles(tmp_path):
    target = tmp_path / "pwned"
    data = P4 + su("builtins") + su("open") + STACK_GLOBAL + su(str(target)) + su("w") + TUPLE2 + REDUCE + STOP
    scan = scan_pickle(data)
    assert scan.refused == ("builtins.open",)
    assert not target.exists()


def test_stack_global_through_the_memo_with_decoy_strings():
    # 'posix'/'system' are memoized and popped; decoy strings are pushed last, so a scanner that
    # pairs "the last two strings seen" would report collections.OrderedDict.
    data = (
        P4 + su("posix") + MEMOIZE + su("system") + MEMOIZE + POP + POP
        + binget(0) + binget(1)
        + su("collections") + su("OrderedDict") + POP + POP
        + STACK_GLOBAL + su("echo pwned") + TUPLE1 + REDUCE + STOP
    )
    assert imports_at_load(data) == ["posix.system"]  # the oracle: what pickle.load would import
    scan = scan_pickle(data)
    assert scan.globals == ("posix.system",)
    assert scan.refused == ("posix.system",)


def test_stack_global_with_computed_operands_is_refused():
    # the module name is the result of a call: only known at load time, so it cannot be allowed
    data = P4 + su("collections") + su("OrderedDict") + STACK_GLOBAL + EMPTY_TUPLE + REDUCE + su("system") + STACK_GLOBAL + STOP
    scan = scan_pickle(data)
    assert not scan.ok
    assert any("operands computed at load time" in r for r in scan.refused)


def test_stack_global_from_an_unset_memo_slot_is_refused():
    data = P4 + binget(7) + su("system") + STACK_GLOBAL + STOP
    assert any("computed at load time" in r for r in scan_pickle(data).refused)


def test_getattr_chain_is_refused():
    # getattr(__import__('os'), 'system')('echo pwned') with protocol-2 GLOBALs
    data = (
        b"\x80\x02" + glob("builtins", "getattr") + glob("builtins", "__import__") + bu("os") + TUPLE1 + REDUCE
        + bu("system") + TUPLE2 + REDUCE + bu("echo pwned") + TUPLE1 + REDUCE + STOP
    )
    assert imports_at_load(data) == ["builtins.__import__", "builtins.getattr"]
    assert scan_pickle(data).refused == ("builtins.getattr", "builtins.__import__")


def test_inst_opcode_is_refused():
    data = b"(S'echo pwned'\nios\nsystem\n."  # protocol 0: MARK, STRING, INST os system
    assert scan_pickle(data).refused == ("os.system",)


def test_extension_registry_is_refused():
    data = b"\x80\x02\x82\x01)R."  # EXT1 1: a global known only to the loading process's copyreg
    assert any("extension code 1" in r for r in scan_pickle(data).refused)


def test_allowed_function_next_to_a_hostile_one_still_refuses():
    data = pickle.dumps([collections.OrderedDict(), _Evil()], protocol=4)
    scan = scan_pickle(data)
    assert "collections.OrderedDict" in scan.globals
    assert scan.refused == (f"{os.system.__module__}.system",)


@pytest.mark.parametrize("data", [
    b"\x80\x04\xff\xfe not a pickle",  # an unknown opcode: the loader stops at byte 2
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",  # a PNG named .pt (picklescan's bad_pytorch.pt)
    b"c\xf8\xff\xfe\nname\n",  # a GLOBAL whose module line is not UTF-8: the loader fails to decode it
    b"cos\nsys",  # a GLOBAL cut short: the loader finds no newline
], ids=["unknown-opcode", "png", "global-not-utf8", "global-cut-short"])
def test_bytes_that_break_before_any_import_are_data(data):
    # pickle.load raises at the same byte having imported and called nothing: inert, not refused
    with pytest.raises(Exception):
        imports_at_load(data)
    scan = scan_pickle(data)
    assert scan.ok and scan.globals == (), scan


def test_a_stream_that_breaks_after_an_import_is_refused():
    # picklescan's broken_model.pkl: builtins.exec is imported, then a length runs past the end
    data = glob("builtins", "exec") + b"(X" + struct.pack("<I", 10**6) + b"f = open('x', 'a')"
    scan = scan_pickle(data)
    assert scan.refused == ("builtins.exec",)
    assert "runs past the end" in scan.error


def test_a_global_that_pickletools_cannot_read_but_the_loader_can_is_refused():
    # the C unpickler decodes GLOBAL lines as UTF-8, pickletools as ASCII: never read that gap as data
    data = glob("m\u00f6dule", "run") + b")R."
    assert imports_at_load(data) == ["m\u00f6dule.run"]
    scan = scan_pickle(data)
    assert not scan.ok and "not a readable pickle" in scan.error


def test_a_value_over_the_limit_is_refused_without_reading_it(monkeypatch):
    import mirror.policy as policy

    monkeypatch.setattr(policy, "MAX_VALUE", 1024)
    data = P4 + b"B" + struct.pack("<I", 4096) + b"\0" * 4096 + b"0" + su("posix") + su("system") + STACK_GLOBAL + EMPTY_TUPLE + REDUCE + STOP
    scan = scan_pickle(data)
    assert not scan.ok and "4096 bytes in the opcode at byte 2 is over the scanner's limit of 1024" in scan.error


def test_torch_zip_with_hostile_data_pkl(tmp_path):
    good = tmp_path / "good.bin"
    torch.save(_state_dict(), good)
    evil = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                data = pickle.dumps(_Evil(), protocol=2)
            dst.writestr(info, data)
    scan = scan_file(evil)
    assert scan.refused == (f"{os.system.__module__}.system",)


def test_legacy_torch_with_hostile_object_pickle(tmp_path):
    # the legacy layout: magic, protocol, sys_info, OBJECT, storage keys, raw bytes
    path = tmp_path / "model.ckpt"
    with open(path, "wb") as f:
        for obj in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        pickle.dump(_Evil(), f, protocol=2)
        pickle.dump([], f, protocol=2)
        f.write(b"\x63" * 64)  # raw storage bytes that happen to start like a GLOBAL opcode
    scan = scan_file(path)
    assert scan.refused == (f"{os.system.__module__}.system",)
    assert scan.error is None


# --- snapshots -----------------------------------------------------------------------------------

def _snapshot(tmp_path: Path, *, evil: bool = False) -> Path:
    root = tmp_path / "snap"
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text("{}")
    (root / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    torch.save(_state_dict(), root / "pytorch_model.bin")
    (root / "modeling_custom.py").write_text("print('hi')\n")
    if evil:
        (root / "sub" / "optimizer.pt").write_bytes(pickle.dumps(_Evil(), protocol=4))
    return root


def test_default_policy_refuses_pickle_and_suggests_the_flag(tmp_path):
    root = _snapshot(tmp_path)
    with pytest.raises(PolicyError) as e:
        check_snapshot(root, allow_pickle=False, where="org/model")
    msg = str(e.value)
    assert "\n" not in msg
    assert "pytorch_model.bin" in msg and "--allow-pickle" in msg
    assert e.value.exit_code == 6


def test_allow_pickle_scans_and_reports(tmp_path):
    root = _snapshot(tmp_path)
    report = check_snapshot(root, allow_pickle=True, where="org/model")
    assert report.to_manifest() == {
        "allowlist": "mirror-pickle-allowlist/1",
        "pickle": {"pytorch_model.bin": TORCH_FP32},
        "remote_code": ["modeling_custom.py"],
    }


def test_allow_pickle_still_refuses_a_hostile_import(tmp_path):
    root = _snapshot(tmp_path, evil=True)
    with pytest.raises(PolicyError) as e:
        check_snapshot(root, allow_pickle=True, where="org/model")
    assert f"sub/optimizer.pt imports {os.system.__module__}.system" in str(e.value)


def test_scan_limited_to_manifest_paths_and_kinds_from_paths(tmp_path):
    root = _snapshot(tmp_path, evil=True)
    report = scan_snapshot(root, paths=["config.json", "model.safetensors"])
    assert report.pickle_files == () and report.remote_code == ()
    assert scan_snapshot(root).pickle_files == ("pytorch_model.bin", "sub/optimizer.pt")


# --- the hooks in pull, pack and install -----------------------------------------------------------

def _torch_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(_state_dict(), buf)
    return buf.getvalue()


def test_pull_refuses_pickle_before_downloading_and_scans_with_allow_pickle(tmp_path):
    from mirror.bundle.codec import read_manifest
    from mirror.hub import pull
    from tests.fixtures.fake_hub import FakeHub

    with FakeHub() as hub:
        hub.add_repo("org/legacy", {"config.json": b"{}\n", "pytorch_model.bin": _torch_bytes(), "modeling_x.py": b"x = 1\n"})
        hub.add_repo("org/evil", {"config.json": b"{}\n", "pytorch_model.bin": pickle.dumps(_Evil(), protocol=2)})
        out = tmp_path / "out"
        with pytest.raises(PolicyError, match="pytorch_model.bin.*--allow-pickle"):
            pull("org/legacy", out_dir=out, endpoint=hub.url, progress=False)
        assert not [r for r in hub.requests if r.kind in ("resolve", "cdn")]  # not one file fetched

        info = pull("org/legacy", out_dir=out, endpoint=hub.url, progress=False, allow_pickle=True)
        assert read_manifest(info.path).extra["policy"] == {
            "allowlist": "mirror-pickle-allowlist/1",
            "pickle": {"pytorch_model.bin": TORCH_FP32},
            "remote_code": ["modeling_x.py"],
        }
        with pytest.raises(PolicyError, match=f"pytorch_model.bin imports {os.system.__module__}.system"):
            pull("org/evil", out_dir=out, endpoint=hub.url, progress=False, allow_pickle=True)
        assert sorted(p.name for p in out.glob("*.tar")) == [info.path.name]  # no bundle for the refused one
        assert not [p for p in out.rglob("*") if p.is_file() and p.suffix not in (".tar", ".sha256")]  # nor its download


def test_pack_and_install_follow_the_same_policy(tmp_path):
    from click.testing import CliRunner

    from mirror.cli import cli

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}\n")
    (folder / "pytorch_model.bin").write_bytes(_torch_bytes())
    runner = CliRunner()
    out = tmp_path / "bundles"
    r = runner.invoke(cli, ["pack", str(folder), "--repo-id", "org/m", "--out", str(out)])
    assert r.exit_code == 6 and "--allow-pickle" in r.stderr and not list(out.glob("*.tar"))
    r = runner.invoke(cli, ["pack", str(folder), "--repo-id", "org/m", "--out", str(out), "--allow-pickle"])
    assert r.exit_code == 0, r.output
    bundle = r.stdout.strip().splitlines()[-1]

    cache = tmp_path / "cache"
    r = runner.invoke(cli, ["install", bundle, "--cache-dir", str(cache)])
    assert r.exit_code == 6 and "pytorch_model.bin" in r.stderr
    assert not cache.exists() or not any(cache.iterdir())
    r = runner.invoke(cli, ["install", bundle, "--cache-dir", str(cache), "--allow-pickle"])
    assert r.exit_code == 0, r.output
    installed = Path(r.stdout.strip().splitlines()[-1])
    assert torch.equal(torch.load(installed / "pytorch_model.bin", weights_only=True)["weight"], _state_dict()["weight"])


# --- content, not names (issue 23) -------------------------------------------------------------------

def _zip(members: dict[str, bytes]) -> bytes:
    from tests.mirror.test_policy_corpora import zipped

    return zipped(members)


def _encrypted(data: bytes) -> bytes:
    from tests.mirror.test_policy_corpora import patched_zip

    return patched_zip(data, flags=0x1)


@pytest.mark.parametrize("member", ["data.txt", "weights", "archive/data/0", "README"])
def test_a_zip_member_is_scanned_by_what_it_holds_not_its_name(tmp_path, member):
    path = tmp_path / "model.bin"
    path.write_bytes(_zip({"version": b"3\n", member: pickle.dumps(_Evil(), protocol=4)}))
    assert scan_file(path).refused == (f"{os.system.__module__}.system",)


def test_archives_inside_archives_are_opened_to_a_limit(tmp_path):
    evil = pickle.dumps(_Evil(), protocol=2)
    (tmp_path / "two.bin").write_bytes(_zip({"inner.zip": _zip({"x": evil})}))
    assert scan_file(tmp_path / "two.bin").refused == (f"{os.system.__module__}.system",)
    deep = _zip({"x": evil})
    for _ in range(3):
        deep = _zip({"inner": deep})
    (tmp_path / "deep.bin").write_bytes(deep)
    assert "nested more than 3 deep" in scan_file(tmp_path / "deep.bin").error


def test_a_torch_storage_that_starts_like_a_pickle_is_still_data(tmp_path):
    # raw tensor bytes beginning with PROTO 2 are walked, break before importing anything, and pass
    t = torch.tensor([0x80, 0x02, 0xFF, 0x00, 0x01], dtype=torch.uint8)
    path = tmp_path / "pytorch_model.bin"
    torch.save({"t": t}, path)
    with zipfile.ZipFile(path) as z:
        assert any(z.read(n).startswith(b"\x80\x02\xff") for n in z.namelist() if "/data/" in n)
    scan = scan_file(path)
    assert scan.ok, scan


@pytest.mark.parametrize(("data", "why"), [
    (b"\x1f\x8b\x08\x00" + bytes(20), "a gzip stream"),
    (b"7z\xbc\xaf\x27\x1c" + bytes(20), "a 7z archive"),
    (b"\x78\x9c" + bytes(20), "a zlib stream"),
], ids=["gzip", "7z", "zlib"])
def test_archives_the_scanner_does_not_open_are_refused(tmp_path, data, why):
    (tmp_path / "model.joblib").write_bytes(data)
    scan = scan_file(tmp_path / "model.joblib")
    assert not scan.ok and scan.error.startswith(why)


def test_torch_tar_checkpoint_is_refused(tmp_path):
    import io
    import tarfile

    path = tmp_path / "old.pt"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("pickle")
        payload = pickle.dumps(_Evil(), protocol=2)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    assert "a tar archive" in scan_file(path).error


def test_an_encrypted_zip_is_refused_naming_the_member(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(_encrypted(_zip({"archive/data.pkl": pickle.dumps({"a": 1})})))
    scan = scan_file(path)
    assert scan.error == "encrypted zip member 'archive/data.pkl': its content cannot be checked"


@pytest.mark.parametrize("how", ["raw", "hex", "base64", "latin-1 str", "protocol-0 base64"])
def test_a_pickle_carried_as_data_is_refused_next_to_allowed_imports(how):
    import base64

    inner = pickle.dumps({"harmless": True}, protocol=4)
    carried = {
        "raw": inner,
        "hex": inner.hex(),
        "base64": base64.b64encode(inner).decode(),
        "latin-1 str": inner.decode("latin-1"),
        "protocol-0 base64": base64.b64encode(b"cos\nsystem\n(S'ls'\ntR.").decode(),
    }[how]
    outer = pickle.dumps(collections.OrderedDict(blob=carried), protocol=2)
    scan = scan_pickle(outer)
    assert "collections.OrderedDict" in scan.globals
    assert len(scan.refused) == 1 and scan.refused[0].startswith("<a pickle carried as ")
    if how == "protocol-0 base64":
        assert scan.refused[0].endswith("importing os.system>")


@pytest.mark.parametrize("value", [
    "deadbeef" * 8, "80 is not a pickle", "gASV", "a sentence that ends with a dot.", "cat\ndog\n", "I1\n.",
    b"\x80\x02\xff\xfe", b"\x1f\x8b\x08\x00 fake gzip", "eyJoaWRkZW5fc2l6ZSI6IDc2OH0=",
], ids=["hex", "text-80", "b64-head", "sentence", "global-like-text", "headerless-no-import", "proto-then-junk", "gzip-bytes", "b64-json"])
def test_strings_that_are_not_pickles_are_not_mistaken_for_one(value):
    scan = scan_pickle(pickle.dumps({"v": value}, protocol=4))
    assert scan.ok, scan


def test_a_carried_pickle_is_refused_through_pack_and_audit(tmp_path):
    from click.testing import CliRunner

    from mirror.cli import cli

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}\n")
    sd = _state_dict()
    sd["_metadata"] = pickle.dumps(_Evil(), protocol=4)  # a state_dict of allowlisted imports, plus bytes
    torch.save(sd, folder / "pytorch_model.bin")
    r = CliRunner().invoke(cli, ["pack", str(folder), "--repo-id", "org/m", "--out", str(tmp_path / "b"), "--allow-pickle"])
    assert r.exit_code == 6, r.output
    line = r.stderr.strip()
    assert "\n" not in line and "pytorch_model.bin imports <a pickle carried as raw data" in line
    assert f"importing {os.system.__module__}.system" in line


@pytest.mark.parametrize("damage", ["encrypted", "truncated", "7z"])
def test_an_unreadable_weight_archive_is_one_line_exit_6(tmp_path, damage):
    from click.testing import CliRunner

    from mirror.cli import cli

    good = _torch_bytes()
    data = {"encrypted": _encrypted(good), "truncated": good[: len(good) // 2], "7z": b"7z\xbc\xaf\x27\x1c" + good}[damage]
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}\n")
    (folder / "pytorch_model.bin").write_bytes(data)
    runner = CliRunner()
    r = runner.invoke(cli, ["pack", str(folder), "--repo-id", "org/m", "--out", str(tmp_path / "b"), "--allow-pickle"])
    assert r.exit_code == 6, r.output
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.output and "pytorch_model.bin" in r.stderr
    assert not (tmp_path / "b").exists() or not list((tmp_path / "b").glob("*.tar"))
