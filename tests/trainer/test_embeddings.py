"""The embeddings recipe on a tiny sentence-transformers model: loss choice, metrics, outputs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from trainer import config
from trainer.errors import TrainerError
from trainer.evaluate import evaluate, predict
from trainer.recipes import embeddings, run
from trainer.resolve import ResolvedModel

TOPICS = {
    "charge-off": "collection balance charge-off",
    "inquiry": "a hard inquiry on the score",
    "late payment": "late payment status",
    "medical": "medical collection paid",
    "student loan": "student loan installment",
    "metro 2": "metro 2 format of the bureau",
}


def write_pairs(path: Path, n: int, *, seed: int, labelled: bool) -> None:
    rnd = random.Random(seed)
    keys = list(TOPICS)
    lines = []
    for _ in range(n):
        k = rnd.choice(keys)
        if labelled and rnd.random() < 0.5:
            other = rnd.choice([x for x in keys if x != k])
            row = {"text_1": f"what does {k} mean", "text_2": TOPICS[other], "label": 0}
        else:
            row = {"text_1": f"what does {k} mean", "text_2": TOPICS[k], **({"label": 1} if labelled else {})}
        lines.append(json.dumps(row) + "\n")
    path.write_text("".join(lines))


def make_cfg(d: Path, **over) -> config.Config:
    raw = {
        "task": "embeddings",
        "model_id": "tiny/st",
        "output_dir": str(d / "out"),
        "train_file": str(d / "train.jsonl"),
        "valid_file": str(d / "valid.jsonl"),
        "test_file": str(d / "test.jsonl"),
        "learning_rate": 1e-3,
        "epochs": 3,
        "batch_size": 8,
        **over,
    }
    return config.from_dict(raw)


def local(path: Path) -> ResolvedModel:
    return ResolvedModel(repo_id="tiny/st", path=path, commit="0" * 40, bundle_path=None, bundle_sha256=None, source="local")


def dataset(d: Path, *, labelled: bool) -> Path:
    write_pairs(d / "train.jsonl", 64, seed=1, labelled=labelled)
    write_pairs(d / "valid.jsonl", 24, seed=2, labelled=labelled)
    write_pairs(d / "test.jsonl", 24, seed=3, labelled=labelled)
    return d


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory, tiny_st_dir):
    d = dataset(tmp_path_factory.mktemp("emb"), labelled=True)
    return run(make_cfg(d), model=local(tiny_st_dir)), d


def test_labelled_pairs_train_with_cosine_loss_and_improve(labelled_run):
    result, _ = labelled_run
    m = result.metrics
    assert m["loss_function"] == "CosineSimilarityLoss"
    valid = m["final"]["valid"]
    for key in ("cosine_accuracy", "cosine_average_precision", "mrr@10", "recall@1"):
        assert 0.0 <= valid[key] <= 1.0
    assert -1.0 <= valid["spearman"] <= 1.0
    assert valid["main_score_name"] == "cosine_average_precision" and valid["main_score"] == valid["cosine_average_precision"]
    assert valid["queries"] == len({json.loads(l)["text_1"] for l in open(Path(result.output_dir).parent / "valid.jsonl") if json.loads(l)["label"] == 1})
    # six topics, one right answer each: the trained model separates them
    assert valid["cosine_accuracy"] >= 0.9 and valid["mrr@10"] >= 0.9
    curve = m["train_loss_curve"]
    assert len(curve) == 24 and curve[-1][1] < curve[0][1]


def test_saved_as_sentence_transformer_with_safetensors(labelled_run):
    result, _ = labelled_run
    out = result.output_dir
    assert (out / "model.safetensors").is_file() and (out / "modules.json").is_file()
    assert (out / "1_Pooling" / "config.json").is_file()
    assert not list(out.rglob("*.bin"))
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["base_model"]["commit"] == "0" * 40
    assert lineage["task_info"]["loss_function"] == "CosineSimilarityLoss"


def test_evaluate_reproduces_and_predict_compares(labelled_run):
    result, _ = labelled_run
    again = evaluate(str(result.output_dir), split="test")
    for k, v in result.metrics["final"]["test"].items():
        assert again[k] == (pytest.approx(v, abs=1e-5) if isinstance(v, float) else v)
    texts = ["what does medical mean", "medical collection paid", "metro 2 format of the bureau"]
    out = predict(str(result.output_dir), texts)
    sim = [o["similarity"] for o in out]
    assert [round(sim[i][i], 4) for i in range(3)] == [1.0, 1.0, 1.0]
    assert sim[0][1] == pytest.approx(sim[1][0]) and sim[0][1] > sim[0][2]
    assert all(o["norm"] == pytest.approx(1.0, abs=1e-4) for o in out)  # the model ends in Normalize
    with pytest.raises(TrainerError, match="at least two"):
        predict(str(result.output_dir), ["alone"])


def test_positive_only_pairs_use_in_batch_negatives(tmp_path, tiny_st_dir):
    d = dataset(tmp_path, labelled=False)
    result = run(make_cfg(d, epochs=1), model=local(tiny_st_dir))
    assert result.metrics["loss_function"].startswith("MultipleNegativesRankingLoss")
    valid = result.metrics["final"]["valid"]
    assert "cosine_accuracy" not in valid  # nothing to separate without negatives
    assert valid["main_score_name"] == "mrr@10" and 0.0 < valid["mrr@10"] <= 1.0


def test_loss_choice_from_data_and_config(tmp_path):
    cfg = make_cfg(dataset(tmp_path, labelled=True))
    pos, neg, none = ("a", "b", 1.0), ("a", "c", 0.0), ("a", "b", None)
    assert embeddings.choose_loss(cfg, [pos, neg]) == "cosine"
    assert embeddings.choose_loss(cfg, [pos, pos]) == "mnrl"
    assert embeddings.choose_loss(cfg, [none]) == "mnrl"
    assert embeddings.choose_loss(config.replace(cfg, loss="contrastive"), [pos, neg]) == "contrastive"
    with pytest.raises(TrainerError, match="needs labelled pairs"):
        embeddings.choose_loss(config.replace(cfg, loss="cosine"), [none])
    with pytest.raises(TrainerError, match="1 of 2 training pairs have no 'label'"):
        embeddings.choose_loss(cfg, [pos, none])


def test_distinct_batches_never_repeat_a_text():
    pairs = [(f"q{i % 3}", f"d{i % 3}", None) for i in range(12)]  # 3 distinct pairs, 4 copies each
    batches = embeddings.distinct_batches(list(range(12)), pairs, batch_size=8)
    assert sorted(i for b in batches for i in b) == list(range(12))
    for b in batches:
        texts = [t for i in b for t in pairs[i][:2]]
        assert len(texts) == len(set(texts)) and len(b) <= 3


def test_contrastive_loss_runs(tmp_path, tiny_st_dir):
    d = dataset(tmp_path, labelled=True)
    result = run(make_cfg(d, epochs=1, loss="contrastive", max_steps=3), model=local(tiny_st_dir))
    assert result.metrics["loss_function"] == "OnlineContrastiveLoss" and result.metrics["steps"] == 3
