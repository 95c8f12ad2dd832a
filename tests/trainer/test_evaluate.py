"""Metric definitions against hand-computed values, and `evaluate()`'s target handling."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from trainer.errors import TrainerError
from trainer.evaluate import evaluate
from trainer.metrics import (
    best_threshold_accuracy,
    classification_metrics,
    pair_metrics,
    perplexity,
    retrieval_metrics,
    spearman,
)
from trainer.rundir import config_of_run


def test_classification_metrics_by_hand():
    labels = ["a", "b", "c"]
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    m = classification_metrics(y_true, y_pred, labels)
    assert m["n"] == 6 and m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    # a: P 2/2 R 2/3; b: P 1/2 R 1/2; c: P 1/2 R 1/1
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "f1": pytest.approx(0.8), "support": 3}
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.5)
    assert m["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_classification_metrics_count_an_unpredicted_class_as_zero():
    m = classification_metrics([0, 1], [0, 0], ["x", "y", "z"])
    assert m["per_class"]["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["per_class"]["z"]["support"] == 0 and len(m["confusion_matrix"]) == 3


def test_best_threshold_accuracy():
    scores = [0.9, 0.8, 0.7, 0.3, 0.2]
    positive = [True, True, False, True, False]
    acc, t = best_threshold_accuracy(scores, positive)
    assert acc == pytest.approx(0.8)  # threshold between 0.8 and 0.7: one positive (0.3) is missed
    assert 0.7 < t <= 0.8
    # perfectly separable
    acc, t = best_threshold_accuracy([0.9, 0.6, 0.4, 0.1], [True, True, False, False])
    assert acc == 1.0 and 0.4 < t < 0.6
    # ties cannot be split
    acc, _ = best_threshold_accuracy([0.5, 0.5], [True, False])
    assert acc == 0.5


def test_pair_metrics():
    m = pair_metrics([0.9, 0.8, 0.7, 0.3, 0.2], [1, 1, 0, 1, 0])
    assert m["cosine_accuracy"] == pytest.approx(0.8)
    # AP: precision at each positive in rank order: 1/1, 2/2, 3/4
    assert m["cosine_average_precision"] == pytest.approx((1 + 1 + 0.75) / 3)
    assert m["spearman"] == pytest.approx(spearman([0.9, 0.8, 0.7, 0.3, 0.2], [1, 1, 0, 1, 0]))
    assert math.isnan(spearman([1, 2, 3], [1, 1, 1]))


def test_retrieval_metrics():
    ranked = [[3, 1, 2], [0, 2, 1], [2, 0, 1]]
    relevant = [{1}, {0}, {5}]
    m = retrieval_metrics(ranked, relevant, k=10)
    assert m["mrr@10"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert m["recall@1"] == pytest.approx(1 / 3) and m["queries"] == 3
    assert retrieval_metrics([[0, 1]], [{1}], k=1)["mrr@1"] == 0.0


def test_perplexity():
    assert perplexity(0.0) == 1.0 and perplexity(math.log(7)) == pytest.approx(7)
    assert perplexity(1000.0) == float("inf")


def test_evaluate_errors(tmp_path):
    with pytest.raises(TrainerError, match="no finished run"):
        evaluate(str(tmp_path))
    with pytest.raises(TrainerError, match="unknown split"):
        evaluate(str(tmp_path), split="dev")


def _pairs(path: Path) -> Path:
    rows = [("what is a charge-off", "charge-off balance collection", 1), ("what is a charge-off", "metro 2 format", 0),
            ("what is metro 2", "metro 2 format", 1), ("what is metro 2", "late payment status", 0)]
    path.write_text("".join(json.dumps({"text_1": a, "text_2": b, "label": l}) + "\n" for a, b, l in rows))
    return path


def test_evaluate_config_is_the_base_model_baseline(tmp_path, tiny_st_dir):
    data = _pairs(tmp_path / "pairs.jsonl")
    cfg = tmp_path / "emb.yaml"
    cfg.write_text(yaml.safe_dump({"model_id": str(tiny_st_dir), "output_dir": str(tmp_path / "out"), "train_file": str(data), "valid_file": str(data)}))
    m = evaluate(str(cfg), split="valid")
    assert m["n"] == 4 and m["queries"] == 2 and 0.0 <= m["cosine_average_precision"] <= 1.0
    with pytest.raises(TrainerError, match="no test files"):
        evaluate(str(cfg), split="test")


def test_config_of_run_resolves_relative_paths_against_the_run_cwd(tmp_path):
    run_dir = tmp_path / "work"
    (run_dir / "data").mkdir(parents=True)
    _pairs(run_dir / "data" / "p.jsonl")
    out = tmp_path / "model"
    out.mkdir()
    config = {"task": "embeddings", "model_id": "m", "output_dir": "models/x", "train_files": ["data/p.jsonl"], "valid_files": ["data/p.jsonl"]}
    (out / "lineage.json").write_text(json.dumps({"config": config, "cwd": str(run_dir)}))
    cfg = config_of_run(out)
    assert cfg.train_files == (str(run_dir / "data" / "p.jsonl"),)
    assert cfg.output_dir == str(out)
