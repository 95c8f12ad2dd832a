"""`trainer check` / `trainer run` with an installed base model read no bundle byte: the bundle's
sha256 that lineage names comes from the install record, written when the install checked it."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import pytest

from mirror.bundle.write.driver import write_bundle
from tests.trainer.clitools import cli_isolated, invoke  # noqa: F401 (cli_isolated: a fixture)

pytestmark = pytest.mark.usefixtures("cli_isolated")

# Every file opened by this process while a test watches a folder (a Python audit hook sees
# builtins.open, io.open and os.open alike). Hooks cannot be removed, so it is armed per test.
_WATCH: list[str] = []
_OPENED: list[str] = []


def _hook(event: str, args: tuple) -> None:
    if event == "open" and _WATCH and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.abspath(os.fsdecode(args[0]))
        if path.startswith(_WATCH[0]):
            _OPENED.append(path)


sys.addaudithook(_hook)


@contextlib.contextmanager
def opened_in(folder: Path):
    """The files of `folder` this process opens inside the block (the list is reused by the next block)."""
    _WATCH[:] = [os.path.abspath(folder)]
    _OPENED.clear()
    try:
        yield _OPENED
    finally:
        _WATCH.clear()


def _base_bundle(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    (src / "model.safetensors").write_bytes(os.urandom(300_000))
    return write_bundle(src_root=src, repo_id="acme/enc", revision="main", commit=None, source="local:src",
                        created_at="2026-01-01T00:00:00Z", license=None, out_dir=tmp_path / "bundles")


def _config(tmp_path: Path) -> Path:
    train = tmp_path / "train.jsonl"
    train.write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": "neg"}\n')
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f'model_id: "acme/enc"\noutput_dir: "{tmp_path / "out"}"\ntrain_file: "{train}"\nlabels: ["pos", "neg"]\n')
    return cfg


def test_trainer_check_with_an_installed_base_opens_no_bundle_and_names_the_checked_sha256(tmp_path):
    info = _base_bundle(tmp_path)
    cfg = _config(tmp_path)
    bundles = str(tmp_path / "bundles")
    first = invoke("check", str(cfg), "--bundles", bundles)
    assert "verified its bundle and installed it" in first.output and f"sha256 {info.sha256}" in first.output, first.output

    # other bytes under the bundle's name: re-hashing it (the old way) would print another sha256
    info.path.write_bytes(b"not the bundle any more" * 4096)
    with opened_in(bundles) as opened:
        second = invoke("check", str(cfg), "--bundles", bundles)
    assert "installed snapshot" in second.output and f"bundle {info.path.name} sha256 {info.sha256}" in second.output, second.output
    assert opened == []  # not one file of the bundles folder was opened, not even a manifest head

    info.path.unlink()  # gone since the install: the lineage still names what was installed
    third = invoke("check", str(cfg), "--bundles", bundles)
    assert f"bundle {info.path.name} sha256 {info.sha256}" in third.output, third.output


def test_a_base_installed_without_a_checked_sha256_is_hashed_once_then_remembered(tmp_path):
    """`mirror install` without --sha256 does not compute the bundle's sha256 (it would double the
    hashing), so nothing is recorded: the first check hashes the bundle of that commit for the
    lineage and records it; later ones read it back."""
    from mirror.install import install_bundle

    info = _base_bundle(tmp_path)
    info.path.with_name(info.path.name + ".sha256").unlink()  # no sidecar beside it: nothing makes the install hash the bundle
    install_bundle(info.path, bundle_sha256=False)
    cfg = _config(tmp_path)
    with opened_in(tmp_path / "bundles") as opened:
        r = invoke("check", str(cfg), "--bundles", str(tmp_path / "bundles"))
    assert f"bundle {info.path.name} sha256 {info.sha256}" in r.output, r.output
    assert str(info.path) in opened
    # hashed once, remembered in the install record: the next check opens nothing in bundles/
    with opened_in(tmp_path / "bundles") as opened:
        again = invoke("check", str(cfg), "--bundles", str(tmp_path / "bundles"))
    assert f"bundle {info.path.name} sha256 {info.sha256}" in again.output, again.output
    assert opened == []


def test_a_bundle_that_only_claims_the_installed_commit_is_never_named(tmp_path):
    """A shared bundles folder: the commit was installed without --sha256, and the bundle found
    there under that commit now holds other weights. The one pass that would record it verifies it
    first, so the lineage names no bundle rather than a wrong one, and nothing is remembered."""
    from mirror.install import install_bundle, installed_bundle
    from mirror.bundle.codec import BundleReader, read_manifest
    from mirror.bundle.layout import writer_layout

    info = _base_bundle(tmp_path)
    info.path.with_name(info.path.name + ".sha256").unlink()  # no sidecar beside it: nothing makes the install hash the bundle
    install_bundle(info.path, bundle_sha256=False)
    with BundleReader(info.path, hash_all=False) as rd, rd.ranges() as src:
        layout = writer_layout(src, rd.manifest, rd.offset)
    entry, off = next((f, o) for f, o in layout.files if f.path == "model.safetensors")
    with open(info.path, "r+b") as fh:  # one weight byte changed in place: same size, same manifest
        fh.seek(off + entry.size // 2)
        b = fh.read(1)
        fh.seek(off + entry.size // 2)
        fh.write(bytes([b[0] ^ 0xFF]))
    r = invoke("check", str(_config(tmp_path)), "--bundles", str(tmp_path / "bundles"))
    assert r.exit_code == 0, r.output
    assert "installed snapshot" in r.output and info.path.name not in r.output, r.output
    assert installed_bundle("acme/enc", read_manifest(info.path).commit) is None
