"""The classification recipe end to end on a tiny DistilBERT: learning, outputs, eval, resume."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer import config
from trainer.errors import Interrupted, TrainerError
from trainer.evaluate import evaluate, predict
from trainer.recipes import RunResult, common, run
from trainer.resolve import ResolvedModel

LABELS = ["eligible", "collection"]
FILLER = "credit report account balance status bureau the of and for with".split()


def write_rows(path: Path, n: int, seed: int) -> None:
    """A learnable toy task: the label is which of two keywords the text contains."""
    rnd = random.Random(seed)
    lines = []
    for _ in range(n):
        label = rnd.choice(LABELS)
        words = rnd.sample(FILLER, 4)
        words.insert(rnd.randrange(5), label)
        lines.append(json.dumps({"text": " ".join(words), "label": label}) + "\n")
    path.write_text("".join(lines))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    for split, n, seed in (("train", 64, 1), ("valid", 24, 2), ("test", 24, 3)):
        write_rows(tmp_path / f"{split}.jsonl", n, seed)
    return tmp_path


def make_cfg(data_dir: Path, out: str = "out", **over) -> config.Config:
    raw = {
        "model_id": "tiny/bert",
        "output_dir": str(data_dir / out),
        "train_file": str(data_dir / "train.jsonl"),
        "valid_file": str(data_dir / "valid.jsonl"),
        "test_file": str(data_dir / "test.jsonl"),
        "labels": LABELS,
        "learning_rate": 1e-2,  # a tiny random encoder needs a far higher rate than a pretrained one
        "epochs": 5,
        "batch_size": 8,
        "max_length": 32,
        **over,
    }
    return config.from_dict(raw)


def local(path: Path) -> ResolvedModel:
    return ResolvedModel(repo_id="tiny/bert", path=path, commit=None, bundle_path=None, bundle_sha256=None, source="local")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> tuple[RunResult, Path]:
    d = tmp_path_factory.mktemp("cls")
    for split, n, seed in (("train", 64, 1), ("valid", 24, 2), ("test", 24, 3)):
        write_rows(d / f"{split}.jsonl", n, seed)
    return run(make_cfg(d), model=local(tiny_bert_dir)), d


def test_learns_the_toy_task(trained):
    result, _ = trained
    test = result.metrics["final"]["test"]
    assert test["accuracy"] >= 0.9 and test["macro_f1"] >= 0.9
    curve = result.metrics["train_loss_curve"]
    assert curve[0][0] == 1 and curve[-1][0] == result.metrics["steps"] == 40  # 64 rows / 8 x 5 epochs
    assert curve[-1][1] < curve[0][1] - 0.3
    assert test["n"] == 24 and sum(map(sum, test["confusion_matrix"])) == 24
    assert set(test["per_class"]) == set(LABELS)
    assert sum(c["support"] for c in test["per_class"].values()) == 24


def test_metrics_json_and_history(trained):
    result, _ = trained
    m = json.loads((result.output_dir / "metrics.json").read_text())
    assert m == json.loads(json.dumps(result.metrics))
    assert [e["epoch"] for e in m["epochs"]] == [1, 2, 3, 4, 5]
    assert m["main_metric"] == "macro_f1" and m["higher_is_better"] is True
    best = m["epochs"][m["best_epoch"] - 1]["valid"]
    assert best["macro_f1"] == max(e["valid"]["macro_f1"] for e in m["epochs"])
    # the saved model is the best epoch's: its valid metrics are that epoch's
    assert m["final"]["valid"]["macro_f1"] == pytest.approx(best["macro_f1"])
    assert m["final"]["valid"]["eval_loss"] == pytest.approx(best["eval_loss"], abs=1e-5)
    assert "RANDOM-INITIALISED DEMO MODEL" in m["warning"]
    assert m["rows"] == {"train": 64, "valid": 24, "test": 24}


def test_outputs_are_safetensors_and_complete(trained):
    result, _ = trained
    names = {p.name for p in result.output_dir.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "metrics.json", "report.md", "lineage.json", "loss_curve.png", "confusion_matrix.png"} <= names
    assert not list(result.output_dir.rglob("*.bin")) and not list(result.output_dir.rglob("*.pt"))
    assert not any(n.startswith(".partial-") for n in names) and "checkpoint" not in names
    cfg = json.loads((result.output_dir / "config.json").read_text())
    assert cfg["id2label"] == {"0": "eligible", "1": "collection"}
    assert "classifier.weight" in load_file(str(result.output_dir / "model.safetensors"))


def test_evaluate_reproduces_test_metrics(trained):
    result, _ = trained
    again = evaluate(str(result.output_dir), split="test")
    want = result.metrics["final"]["test"]
    assert again["confusion_matrix"] == want["confusion_matrix"]
    assert again["accuracy"] == want["accuracy"] and again["macro_f1"] == pytest.approx(want["macro_f1"])
    assert again["eval_loss"] == pytest.approx(want["eval_loss"], abs=1e-5)


def test_predict_gives_label_and_probabilities(trained):
    result, _ = trained
    out = predict(str(result.output_dir), ["the eligible account", "collection status of the bureau"])
    assert [o["label"] for o in out] == ["eligible", "collection"]
    for o in out:
        assert set(o["probabilities"]) == set(LABELS)
        assert sum(o["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert o["probabilities"][o["label"]] > 0.5


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """Raise Ctrl-C when the `call`-th training batch is about to be padded."""
    real, calls = common.pad_batch, {"n": 0}

    def pad(seqs, **kw):
        if "labels" not in kw and len(seqs) == 8:  # training batches (eval batches are 24 rows)
            calls["n"] += 1
            if calls["n"] == call:
                raise KeyboardInterrupt
        return real(seqs, **kw)

    monkeypatch.setattr(common, "pad_batch", pad)


@pytest.mark.parametrize("stop_at", [9, 12], ids=["epoch-boundary", "mid-epoch"])
def test_resume_after_interrupt_matches_straight_run(data_dir, tiny_bert_dir, monkeypatch, stop_at):
    """Ctrl-C leaves a checkpoint; --resume then ends with the same weights and metrics."""
    straight = run(make_cfg(data_dir, "straight", epochs=2, eval_batch_size=24), model=local(tiny_bert_dir))
    cfg = make_cfg(data_dir, "resumed", epochs=2, eval_batch_size=24)
    _interrupt_at(monkeypatch, stop_at)  # 8 batches an epoch
    with pytest.raises(Interrupted) as exc:
        run(cfg, model=local(tiny_bert_dir))
    ckpt = Path(cfg.output_dir) / "checkpoint"
    assert exc.value.checkpoint == ckpt and "--resume" in str(exc.value)
    assert (ckpt / "model.safetensors").is_file() and not (Path(cfg.output_dir) / "lineage.json").exists()
    monkeypatch.undo()
    resumed = run(cfg, model=local(tiny_bert_dir), resume=True)
    a = load_file(str(straight.output_dir / "model.safetensors"))
    b = load_file(str(resumed.output_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert resumed.metrics["final"]["test"]["eval_loss"] == pytest.approx(straight.metrics["final"]["test"]["eval_loss"], abs=1e-5)
    assert [e["step"] for e in resumed.metrics["epochs"]] == [8, 16]
    assert len(resumed.metrics["train_loss_curve"]) == 16


def test_resume_refuses_a_changed_config_or_missing_checkpoint(data_dir, tiny_bert_dir, monkeypatch):
    cfg = make_cfg(data_dir, epochs=2)
    with pytest.raises(TrainerError, match="nothing to resume"):
        run(cfg, model=local(tiny_bert_dir), resume=True)
    _interrupt_at(monkeypatch, 3)
    with pytest.raises(Interrupted):
        run(cfg, model=local(tiny_bert_dir))
    monkeypatch.undo()
    with pytest.raises(TrainerError, match="config changed.*learning_rate"):
        run(config.replace(cfg, learning_rate=1e-3), model=local(tiny_bert_dir), resume=True)


def test_max_steps_and_accumulation(data_dir, tiny_bert_dir):
    result = run(make_cfg(data_dir, epochs=3, max_steps=5, gradient_accumulation_steps=3), model=local(tiny_bert_dir))
    # 8 batches an epoch at accumulation 3 -> 3 optimizer steps per epoch; 5 steps end in epoch 2
    assert result.metrics["steps"] == 5
    assert [e["step"] for e in result.metrics["epochs"]] == [3, 5]


def test_no_valid_split_keeps_the_last_epoch(data_dir, tiny_bert_dir):
    cfg = config.replace(make_cfg(data_dir, epochs=1), valid_files=(), test_files=())
    result = run(cfg, model=local(tiny_bert_dir))
    assert result.metrics["final"] == {} and result.metrics["best_epoch"] == 1
    assert "valid" not in result.metrics["epochs"][0]
    assert (result.output_dir / "model.safetensors").is_file()
    assert not (result.output_dir / "confusion_matrix.png").exists()
