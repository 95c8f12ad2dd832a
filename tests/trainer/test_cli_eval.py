"""Issue 22: `trainer eval` prints a table a person reads (four decimals, per-class scores, the
confusion matrix), and `--json` the full-precision object scripts parse. The model is replaced by
a fixed metrics dict (the recipes' own tests run real models); what is tested is the output."""

from __future__ import annotations

import json

import pytest

import trainer.evaluate
from tests.trainer.clitools import cli_isolated, invoke  # noqa: F401 (cli_isolated: a fixture)
from trainer.demo import json_block

pytestmark = pytest.mark.usefixtures("cli_isolated")

CLASSIFIER = {
    "split": "test", "n": 10, "eval_loss": 0.55123456789012345, "accuracy": 0.9, "macro_f1": 0.87499999999999989,
    "per_class": {"eligible": {"precision": 0.9, "recall": 0.8181818181818182, "f1": 0.8571428571428571, "support": 11},
                  "not_eligible": {"precision": 0.6666666666666666, "recall": 1.0, "f1": 0.8, "support": 2}},
    "confusion_matrix": [[9, 2], [0, 2]],
}


@pytest.fixture
def fake_eval(monkeypatch):
    def run(metrics):
        monkeypatch.setattr(trainer.evaluate, "evaluate", lambda target, *, split, bundles_dir: metrics)

    return run


def test_eval_prints_a_table_with_rounded_metrics_per_class_scores_and_the_confusion_matrix(fake_eval, tmp_path):
    fake_eval(CLASSIFIER)
    r = invoke("eval", str(tmp_path), "--split", "test")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == "test split, 10 rows"
    assert lines[1].split() == ["metric", "value"]
    assert lines[2].split() == ["eval_loss", "0.5512"] and lines[4].split() == ["macro_f1", "0.8750"]
    assert "0.55123456789" not in r.stdout and "{" not in r.stdout  # no raw JSON, no 17-digit floats
    per_class = lines[lines.index(next(x for x in lines if x.split()[:1] == ["class"])):]
    assert per_class[0].split() == ["class", "precision", "recall", "f1", "support"]
    assert per_class[1].split() == ["eligible", "0.9000", "0.8182", "0.8571", "11"]
    cm = lines.index("  confusion matrix (rows: true label, columns: predicted label)")
    assert [x.split() for x in lines[cm + 1: cm + 4]] == [["eligible", "not_eligible"], ["eligible", "9", "2"], ["not_eligible", "0", "2"]]


def test_eval_json_keeps_every_float_in_full_and_is_the_block_the_demo_reads(fake_eval, tmp_path):
    fake_eval(CLASSIFIER)
    r = invoke("eval", str(tmp_path), "--json")
    assert r.exit_code == 0
    assert json.loads(r.stdout) == CLASSIFIER  # exact: the values metrics.json holds
    assert json_block("model: x\n" + r.stdout) == CLASSIFIER


def test_eval_table_for_embeddings_and_a_chat_model_with_its_harness(fake_eval, tmp_path):
    fake_eval({"split": "valid", "mrr@10": 0.51234567, "recall@1": 0.4, "queries": 30, "spearman": float("nan")})
    r = invoke("eval", str(tmp_path), "--split", "valid")
    lines = r.stdout.splitlines()
    assert lines[0] == "valid split, 30 queries"
    assert ["mrr@10", "0.5123"] in [x.split() for x in lines] and ["spearman", "n/a"] in [x.split() for x in lines]
    fake_eval({"split": "valid", "n": 3, "eval_loss": 2.0, "perplexity": 7.38905609893065,
               "harness": {"prompts": 3, "compliant": 1, "compliance_rate": 1 / 3, "warning": "RANDOM-INITIALISED demo model"}})
    r = invoke("eval", str(tmp_path), "--split", "valid", "-q")
    assert ["perplexity", "7.3891"] in [x.split() for x in r.stdout.splitlines()]
    assert "harness: 1 of 3 generated answers compliant (rate 0.3333); RANDOM-INITIALISED demo model" in r.stdout
