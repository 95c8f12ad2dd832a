"""lineage.json: the base model, data hashes, resolved config, versions, hardware and timing."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from datetime import datetime, timedelta, timezone
from pathlib import Path

import torch

from trainer import config, lineage
from trainer.recipes import run
from trainer.recipes.common import resolve_precision
from trainer.resolve import ResolvedModel


def _data(d: Path) -> dict[str, Path]:
    files = {}
    for split, n in (("train", 16), ("valid", 4)):
        rows = [{"text": f"{'eligible' if i % 2 else 'collection'} account {i}", "label": "yes" if i % 2 else "no"} for i in range(n)]
        files[split] = d / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return files


def _cfg(d: Path, files: dict[str, Path]) -> config.Config:
    return config.from_dict({
        "model_id": "acme/bert", "output_dir": str(d / "out"), "train_file": str(files["train"]),
        "valid_file": str(files["valid"]), "labels": ["no", "yes"], "epochs": 1, "batch_size": 8, "seed": 7,
    })


def test_build_records_everything(tmp_path):
    files = _data(tmp_path)
    cfg = _cfg(tmp_path, files)
    model = ResolvedModel(repo_id="acme/bert", path=tmp_path / "snap", commit="a" * 40, bundle_path=tmp_path / "b.tar", bundle_sha256="b" * 64, source="bundle",
                          bundle_id="sha256:" + "c" * 64)
    start = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    (tmp_path / "snap").mkdir()
    (tmp_path / "snap" / "README.md").write_text("---\nlicense: apache-2.0\n---\n# bert\n")
    rec = lineage.build(cfg, model, started=start, ended=start + timedelta(seconds=90), wall_time_s=89.5)
    assert rec["base_model"] == {  # names, commits and digests: no path of this machine travels
        "repo_id": "acme/bert", "commit": "a" * 40, "source": "bundle", "bundle_id": "sha256:" + "c" * 64, "signer": None,
        "bundle": "b.tar", "bundle_sha256": "b" * 64, "license": "apache-2.0", "random_init": False,
    }
    assert (rec["license"], rec["license_note"]) == ("apache-2.0", None)  # inherited from the base
    (tmp_path / "snap" / "README.md").write_text("# a card without front matter\n")
    rec = lineage.build(cfg, model, started=start, ended=start + timedelta(seconds=90), wall_time_s=89.5)
    assert rec["license"] == rec["base_model"]["license"] == "unknown" and "names no license" in rec["license_note"]  # flagged, not guessed
    assert rec["cwd"] == os.path.relpath(os.getcwd(), tmp_path / "out") and not os.path.isabs(rec["cwd"])
    assert str(tmp_path / "snap") not in json.dumps(rec)
    assert [(d["split"], d["path"]) for d in rec["data"]] == [("train", str(files["train"])), ("valid", str(files["valid"]))]
    for d in rec["data"]:
        content = Path(d["path"]).read_bytes()
        assert d["sha256"] == hashlib.sha256(content).hexdigest() and d["size"] == len(content)
    assert rec["config"] == cfg.to_dict() and rec["seed"] == 7 and rec["task"] == "classification"
    assert rec["libraries"]["torch"] == torch.__version__
    assert rec["libraries"]["python"] == platform.python_version()
    assert {"transformers", "sentence-transformers", "huggingface_hub", "peft"} <= set(rec["libraries"])
    assert rec["hardware"]["cpu_count"] >= 1 and rec["hardware"]["cpu"]
    assert rec["hardware"]["cuda"] is None or rec["hardware"]["cuda"]["device"]
    assert (rec["started"], rec["ended"], rec["wall_time_s"]) == ("2026-01-02T03:04:05+00:00", "2026-01-02T03:05:35+00:00", 89.5)
    json.dumps(rec)  # serialisable as is


def test_a_run_writes_lineage_last_and_complete(tmp_path, tiny_bert_dir):
    files = _data(tmp_path)
    cfg = _cfg(tmp_path, files)
    model = ResolvedModel(repo_id="acme/bert", path=tiny_bert_dir, commit="c" * 40, bundle_path=None, bundle_sha256=None, source="cache")
    result = run(cfg, model=model)
    rec = json.loads((result.output_dir / "lineage.json").read_text())
    assert rec["base_model"]["commit"] == "c" * 40 and rec["base_model"]["random_init"] is True
    assert rec["license"] == lineage.base_license(tiny_bert_dir) == "apache-2.0" and rec["license_note"] is None  # inherited
    assert str(tiny_bert_dir) not in json.dumps(rec)
    assert {d["sha256"] for d in rec["data"]} == {hashlib.sha256(p.read_bytes()).hexdigest() for p in files.values()}
    assert rec["config"]["labels"] == ["no", "yes"] and rec["device"] == "cpu"
    assert rec["precision"] == resolve_precision("auto", torch.device("cpu"))  # bf16 on CPUs that compute it natively
    assert rec["wall_time_s"] > 0 and rec["started"] <= rec["ended"]
    # lineage.json is the completeness marker: nothing is newer than it
    newest = max(p.stat().st_mtime_ns for p in result.output_dir.iterdir())
    assert (result.output_dir / "lineage.json").stat().st_mtime_ns == newest


def test_a_known_licence_gets_a_model_card_that_mirror_pack_reads():
    from mirror.manifest import license_from_card

    record = {"license": "apache-2.0", "task": "classification", "base_model": {"repo_id": "acme/bert", "commit": "a" * 40}}
    card = lineage.model_card(record)
    assert license_from_card(card) == "apache-2.0" and "base_model: acme/bert" in card
    assert lineage.model_card({**record, "license": "unknown"}) is None  # never claim a licence
