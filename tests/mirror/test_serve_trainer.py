"""The trainer end to end with HF_ENDPOINT pointing at `mirror serve` instead of a bundles folder:
the base model (tiny, random-initialised) is fetched from the server pinned to its commit, only
that host:port is reachable meanwhile, and the run's lineage names where it came from."""

from __future__ import annotations

import json

import pytest

from mirror.bundle.codec import read_manifest
from tests.fixtures.serve import pack, serve_bundles
from tests.trainer.clitools import cli_isolated, invoke, tiny_config  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("cli_isolated")


def test_trainer_run_fetches_its_base_model_from_the_site_mirror(tmp_path, tiny_bert_dir, monkeypatch):
    bundle = pack(tiny_bert_dir, "acme/tiny-bert", tmp_path / "served")
    commit = read_manifest(bundle).commit
    with serve_bundles(tmp_path / "served", tmp_path / "state.json") as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        cfg, _ = tiny_config(tmp_path, model_id="acme/tiny-bert", epochs=1, batch_size=2, max_length=16)
        empty = tmp_path / "no-bundles"
        empty.mkdir()
        r = invoke("run", str(cfg), "--bundles", str(empty), "-q")
        assert r.exit_code == 0, r.output
        srv.wait_for(rf'"GET /acme/tiny-bert/resolve/{commit}/model.safetensors" 200 ')
    lineage = json.loads((tmp_path / "out-cfg.yaml" / "lineage.json").read_text())
    assert (lineage["base_model"]["repo_id"], lineage["base_model"]["commit"], lineage["base_model"]["source"]) == ("acme/tiny-bert", commit, "endpoint")
    assert lineage["base_model"]["endpoint"] == srv.url
    # every file's sha256 as the trainer hashed it on arrival, equal to the source folder's bytes
    assert lineage["base_model"]["files"] == {f.path: f.sha256 for f in read_manifest(bundle).files}


def test_a_file_damaged_on_the_way_is_refused_and_removed(tmp_path, tiny_bert_dir):
    """The mirror's listing names each file's sha256; bytes that differ on arrival (a damaged proxy,
    a disk) are one line and do not stay in the cache under the commit's name."""
    from types import SimpleNamespace

    from trainer.errors import TrainerError
    from trainer.resolve import _check_fetched

    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "model.safetensors").write_bytes(b"x" * 100)
    listing = [SimpleNamespace(rfilename="model.safetensors", size=100, lfs=SimpleNamespace(sha256="0" * 64), blob_id="1" * 40)]
    with pytest.raises(TrainerError, match=r"model.safetensors arrived with sha256 [0-9a-f]{64}, the mirror lists 0{64}; the file was removed"):
        _check_fetched("acme/x", "http://127.0.0.1:1", snap, listing)
    assert not (snap / "model.safetensors").exists()


def test_the_guard_allows_exactly_the_endpoint(tmp_path):
    import socket

    from trainer.errors import NetworkBlocked
    from trainer.offline import allow_endpoint, network_guard

    with network_guard(), allow_endpoint("http://10.0.0.7:8080"):
        with pytest.raises(NetworkBlocked):
            socket.create_connection(("10.0.0.8", 8080), timeout=0.1)
        with pytest.raises(NetworkBlocked):
            socket.create_connection(("10.0.0.7", 8081), timeout=0.1)
        s = socket.socket()
        s.settimeout(0.05)
        try:  # allowed through the guard: the kernel decides (no route / timeout), not NetworkBlocked
            s.connect_ex(("10.0.0.7", 8080))
        finally:
            s.close()
    with network_guard(), pytest.raises(NetworkBlocked):
        socket.create_connection(("10.0.0.7", 8080), timeout=0.1)


def test_a_model_the_mirror_does_not_serve_is_one_line_exit_3(tmp_path, monkeypatch):
    (tmp_path / "served").mkdir()
    with serve_bundles(tmp_path / "served", tmp_path / "state.json") as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        cfg, _ = tiny_config(tmp_path, model_id="acme/absent")
        empty = tmp_path / "no-bundles"
        empty.mkdir()
        r = invoke("run", str(cfg), "--bundles", str(empty))
    assert r.exit_code == 3
    from tests.trainer.clitools import error_line

    line = error_line(r)
    assert "acme/absent" in line and srv.url in line and "serves no such model" in line
