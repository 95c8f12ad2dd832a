"""Clients nobody here wrote, against a real `mirror serve`: huggingface_hub, `hf download`,
transformers, sentence-transformers, datasets. Fresh HF_HOME each, HF_HUB_OFFLINE unset, and every
byte they end up with compared to the source folder. The models are tiny and random-initialised
(their cards say so), built in the test session.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mirror.bundle.codec import read_manifest
from tests.fixtures.serve import pack, serve_bundles, server_env


def _same_tree(got: Path, want: Path) -> None:
    files = sorted(p.relative_to(want).as_posix() for p in want.rglob("*") if p.is_file())
    assert sorted(p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file() and ".cache" not in p.parts) == files
    for f in files:
        assert (got / f).read_bytes() == (want / f).read_bytes(), f


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_bert_dir, tiny_st_dir):
    tmp = tmp_path_factory.mktemp("serve-clients")
    bundles = tmp / "bundles"
    bert = pack(tiny_bert_dir, "acme/tiny-bert", bundles)
    pack(tiny_st_dir, "acme/tiny-st", bundles)
    ds = tmp / "ds"
    (ds / "data").mkdir(parents=True)
    (ds / "README.md").write_text("---\nlicense: cc0-1.0\n---\n# tiny dataset\n")
    rows = [{"text": f"row {i}", "label": i % 2} for i in range(7)]
    (ds / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pack(ds, "acme/tiny-ds", bundles, repo_type="dataset")
    (tmp / "pq" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows[:3]), tmp / "pq" / "data" / "test.parquet")
    pack(tmp / "pq", "acme/tiny-pq", bundles, repo_type="dataset")
    big = tmp / "big"
    big.mkdir()
    (big / "w.safetensors").write_bytes(os.urandom(24 * 1024 * 1024))  # over huggingface_hub's 10 MB download chunk
    pack(big, "acme/big", bundles)
    with serve_bundles(bundles, tmp / "state.json") as srv:
        yield {"srv": srv, "big": big, "bert": tiny_bert_dir, "st": tiny_st_dir, "ds": ds, "rows": rows, "bert_commit": read_manifest(bert).commit, "tmp": tmp}


def test_snapshot_download_gets_every_byte(site, tmp_path):
    from huggingface_hub import snapshot_download

    path = snapshot_download("acme/tiny-bert", endpoint=site["srv"].url, cache_dir=tmp_path / "c")
    assert Path(path).name == site["bert_commit"]
    _same_tree(Path(path), site["bert"])
    ds = snapshot_download("acme/tiny-ds", repo_type="dataset", endpoint=site["srv"].url, cache_dir=tmp_path / "c")
    _same_tree(Path(ds), site["ds"])


def test_hf_hub_download_resumes_an_interrupted_download_with_range(site, tmp_path):
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    from tests.fixtures.serve import CuttingProxy

    want = (site["big"] / "w.safetensors").read_bytes()
    meta = get_hf_file_metadata(hf_hub_url("acme/big", "w.safetensors", endpoint=site["srv"].url))
    assert meta.size == len(want) and meta.etag == hashlib.sha256(want).hexdigest()
    with CuttingProxy(site["srv"].port, cut_after=12 * 1024 * 1024) as proxy:  # the connection drops mid-body, once
        path = hf_hub_download("acme/big", "w.safetensors", endpoint=proxy.url, cache_dir=tmp_path / "c")
        assert proxy.cuts == 1
    assert Path(path).read_bytes() == want
    m = site["srv"].wait_for(r'"GET /acme/big/resolve/main/w.safetensors" 206 (\d+) ')
    assert 0 < int(m.group(1)) < len(want)  # only the rest was sent again


def test_hfapi_model_info_files_refs_and_exists(site):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=site["srv"].url)
    info = api.model_info("acme/tiny-bert", files_metadata=True)
    assert info.sha == site["bert_commit"] and info.card_data["license"] == "apache-2.0"
    assert "random-init" in info.card_data["tags"]  # labelled as a random-initialised demo model
    by = {s.rfilename: s for s in info.siblings}
    w = (site["bert"] / "model.safetensors").read_bytes()
    assert by["model.safetensors"].lfs.sha256 == hashlib.sha256(w).hexdigest() and by["model.safetensors"].size == len(w)
    assert sorted(api.list_repo_files("acme/tiny-bert")) == sorted(p.relative_to(site["bert"]).as_posix() for p in site["bert"].rglob("*") if p.is_file())
    refs = api.list_repo_refs("acme/tiny-bert")
    assert [(b.name, b.target_commit) for b in refs.branches] == [("main", site["bert_commit"])]
    assert api.file_exists("acme/tiny-bert", "config.json") and not api.file_exists("acme/tiny-bert", "nope.json")
    assert not api.repo_exists("acme/nope")
    assert [p.path for p in api.get_paths_info("acme/tiny-bert", ["config.json", "nope"])] == ["config.json"]
    assert api.dataset_info("acme/tiny-ds").card_data["license"] == "cc0-1.0"


def test_get_safetensors_metadata_reads_the_header_with_ranges(site):
    from huggingface_hub import HfApi
    from safetensors import safe_open

    meta = HfApi(endpoint=site["srv"].url).get_safetensors_metadata("acme/tiny-bert")
    with safe_open(site["bert"] / "model.safetensors", "pt") as f:
        names = set(f.keys())
    assert set(meta.files_metadata["model.safetensors"].tensors) == names


def test_hf_file_system_glob_and_read(site):
    from huggingface_hub import HfFileSystem

    fs = HfFileSystem(endpoint=site["srv"].url, skip_instance_cache=True)
    assert sorted(fs.glob("acme/tiny-bert/*.json")) == sorted(f"acme/tiny-bert/{p.name}" for p in site["bert"].glob("*.json"))
    assert fs.read_bytes("acme/tiny-bert/config.json") == (site["bert"] / "config.json").read_bytes()
    with fs.open("datasets/acme/tiny-ds/data/train.jsonl", "rb") as f:
        f.seek(4)
        assert f.read(10) == (site["ds"] / "data" / "train.jsonl").read_bytes()[4:14]


def _client_env(site, tmp_path) -> dict[str, str]:
    return server_env(HF_ENDPOINT=site["srv"].url, HF_HOME=str(tmp_path / "home"), HF_HUB_CACHE=str(tmp_path / "home" / "hub"),
                      HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false")


def _run(code: str, env: dict[str, str]) -> str:
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-8000:]
    return r.stdout


def test_the_hf_download_cli(site, tmp_path):
    hf = Path(sys.executable).with_name("hf")
    r = subprocess.run([str(hf), "download", "acme/tiny-st", "--local-dir", str(tmp_path / "out")], env=_client_env(site, tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    _same_tree(tmp_path / "out", site["st"])


def test_transformers_and_sentence_transformers_load_unmodified(site, tmp_path):
    out = _run(
        "from transformers import AutoModel, AutoTokenizer\n"
        "from sentence_transformers import SentenceTransformer\n"
        "m = AutoModel.from_pretrained('acme/tiny-bert'); t = AutoTokenizer.from_pretrained('acme/tiny-bert')\n"
        "print(type(m).__name__, t('hello')['input_ids'][:1])\n"
        "print(SentenceTransformer('acme/tiny-st').encode(['hi', 'there']).shape)\n",
        _client_env(site, tmp_path),
    )
    assert "BertModel" in out and "(2, " in out
    hub = tmp_path / "home" / "hub"
    from huggingface_hub import scan_cache_dir

    repos = {r.repo_id: r for r in scan_cache_dir(hub).repos}
    for repo_id, src in (("acme/tiny-bert", site["bert"]), ("acme/tiny-st", site["st"])):
        (rev,) = repos[repo_id].revisions
        for f in rev.files:  # whatever each library chose to fetch, byte for byte the source's
            assert f.file_path.read_bytes() == (src / f.file_name if "/" not in str(f.file_path.relative_to(rev.snapshot_path)) else src / f.file_path.relative_to(rev.snapshot_path)).read_bytes()


def test_datasets_load_dataset_of_a_served_dataset(site, tmp_path):
    out = _run(
        "import json, datasets\n"
        "d = datasets.load_dataset('acme/tiny-ds'); p = datasets.load_dataset('acme/tiny-pq')\n"
        "print(json.dumps({**{k: d[k].to_list() for k in d}, **{k: p[k].to_list() for k in p}}))\n",
        _client_env(site, tmp_path),
    )
    got = json.loads(out.strip().splitlines()[-1])
    assert got == {"train": site["rows"], "test": site["rows"][:3]}
