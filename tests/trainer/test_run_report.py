"""A tiny classifier trained for real: the head we add is said in one line of ours (no
transformers "newly initialized ... TRAIN this model" noise), report.md compares the base model
with the fine-tuned one on the test split, and the lineage carries no path of this machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.trainer.test_classification import local, make_cfg, write_rows
from trainer.recipes import run


def test_a_run_reports_base_vs_fine_tuned_and_its_head_in_one_line(tmp_path: Path, tiny_bert_dir: Path, capfd: pytest.CaptureFixture) -> None:
    for split, n, seed in (("train", 32, 1), ("valid", 16, 2), ("test", 8, 3)):
        write_rows(tmp_path / f"{split}.jsonl", n, seed)
    result = run(make_cfg(tmp_path, epochs=1), model=local(tiny_bert_dir))
    err = capfd.readouterr().err
    assert "newly initialized" not in err and "LOAD REPORT" not in err and "TRAIN this model" not in err
    assert err.count("classifier head: new, ") == 1
    assert "evaluating the base model on test for the report" in err
    baseline = result.metrics["baseline"]
    assert baseline["split"] == "test" and baseline["metrics"]["n"] == 8
    assert 0.0 <= baseline["metrics"]["accuracy"] <= 1.0
    text = (result.output_dir / "report.md").read_text()
    assert "## Base model vs fine-tuned (test split, 8 rows)" in text
    assert f"| accuracy | {baseline['metrics']['accuracy']:.4f} | {result.metrics['final']['test']['accuracy']:.4f} |" in text
    assert (result.output_dir / "confusion_matrix.png").is_file() and (result.output_dir / "loss_curve.png").is_file()
    lineage = (result.output_dir / "lineage.json").read_text()
    record = json.loads(lineage)
    assert str(tiny_bert_dir) not in lineage, [(k, v) for k, v in record.items() if str(tiny_bert_dir) in json.dumps(v)]
    assert record["license"] == record["base_model"]["license"]
