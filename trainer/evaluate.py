"""Metrics, `trainer eval` and `trainer predict`.

The metric functions here are the only definitions of each metric: the recipes call them on
validation and test data during a run, and `evaluate()` calls the same recipe code on a saved
model, so `trainer eval OUTPUT_DIR` reproduces the test metrics a run wrote to metrics.json.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from trainer import config as config_mod
from trainer.config import Config
from trainer.errors import TrainerError, shown

# The metric each task's best-model selection maximises (or minimises: eval_loss).
MAIN_METRIC = {"classification": "macro_f1", "embeddings": "main_score", "sft": "eval_loss"}
HIGHER_IS_BETTER = {"classification": True, "embeddings": True, "sft": False}


# --- metric math ---------------------------------------------------------------------------------


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    ids = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    return {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0)),
        "per_class": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, name in enumerate(labels)
        },
        # rows: true label, columns: predicted label, both in `labels` order
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
    }


def best_threshold_accuracy(scores: Sequence[float], positive: Sequence[bool]) -> tuple[float, float]:
    """Accuracy of `score >= t -> positive` at the best threshold t, and that threshold."""
    pairs = sorted(zip(scores, positive), key=lambda x: x[0], reverse=True)
    n, n_pos = len(pairs), sum(positive)
    best_acc, best_t = (n - n_pos) / n, pairs[0][0] + 1e-6  # threshold above everything: all negative
    tp = fp = 0
    for i, (s, pos) in enumerate(pairs):
        tp += pos
        fp += not pos
        if i + 1 < n and pairs[i + 1][0] == s:
            continue  # a threshold cannot split equal scores
        acc = (tp + (n - n_pos - fp)) / n
        if acc > best_acc:
            nxt = pairs[i + 1][0] if i + 1 < n else s - 1e-6
            best_acc, best_t = acc, (s + nxt) / 2
    return float(best_acc), float(best_t)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    if len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")  # undefined for a constant side
    return float(spearmanr(x, y).statistic)


def pair_metrics(sims: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
    """Pair classification by cosine similarity: labels are 0/1 or scores (>= 0.5 counts as similar)."""
    from sklearn.metrics import average_precision_score

    positive = [l >= 0.5 for l in labels]
    acc, threshold = best_threshold_accuracy(sims, positive)
    out = {"cosine_accuracy": acc, "cosine_accuracy_threshold": threshold}
    out["cosine_average_precision"] = float(average_precision_score(positive, sims)) if any(positive) else float("nan")
    out["spearman"] = spearman(sims, labels)
    return out


def retrieval_metrics(ranked: Sequence[Sequence[int]], relevant: Sequence[set[int]], *, k: int = 10) -> dict[str, float]:
    """MRR@k and recall@1 given, per query, corpus ids by descending score and the relevant ids."""
    rr, hit1 = [], []
    for order, rel in zip(ranked, relevant):
        rank = next((i + 1 for i, doc in enumerate(order[:k]) if doc in rel), None)
        rr.append(1.0 / rank if rank else 0.0)
        hit1.append(1.0 if order and order[0] in rel else 0.0)
    n = max(1, len(rr))
    return {f"mrr@{k}": sum(rr) / n, "recall@1": sum(hit1) / n, "queries": len(rr)}


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 50 else float("inf")


# --- trainer eval / predict ------------------------------------------------------------------------


def _recipe(task: str):
    # imported here: the recipes import this module's metric functions
    from trainer.recipes import classification, embeddings, sft

    return {"classification": classification, "embeddings": embeddings, "sft": sft}[task]


def read_lineage(output_dir: str | Path) -> dict[str, Any]:
    from trainer.files import open_regular
    from trainer.rundir import MAX_LINEAGE_BYTES

    path = Path(output_dir) / "lineage.json"
    try:
        with open_regular(path) as f:
            record = json.loads(f.read(MAX_LINEAGE_BYTES + 1))
    except OSError:  # missing, or a FIFO or device (NotRegularFile): nothing a run wrote
        raise TrainerError(f"{output_dir} holds no finished run (no lineage.json): train it with 'trainer run CONFIG' first") from None
    except (ValueError, RecursionError) as e:
        raise TrainerError(f"{path} is not valid JSON ({shown(str(e))}): the run's record is damaged; train again") from e
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise TrainerError(f"{path} is not a lineage record (no 'config' mapping): the run's record is damaged; train again")
    return record


def config_of_run(output_dir: str | Path) -> Config:
    """The resolved config a run recorded; relative data paths resolve against the run's cwd."""
    lineage = read_lineage(output_dir)
    raw = dict(lineage["config"])
    cwd = Path(output_dir) / (lineage.get("cwd") or ".")  # relative to the run (an older run: absolute)
    for key in ("train_files", "valid_files", "test_files"):
        raw[key] = [p if Path(p).is_absolute() or Path(p).exists() else str(cwd / p) for p in raw.get(key) or []]
    raw["output_dir"] = str(output_dir)
    return config_mod.from_dict(raw, source=str(Path(output_dir) / "lineage.json"))


def _target(target: str | Path, bundles_dir: str) -> tuple[Config, Path, bool]:
    """(config, model folder, is_base): a run's output_dir is its trained model; a config means
    its base model, resolved offline like `trainer run` does (a baseline before training)."""
    p = Path(target)
    if p.is_dir():
        return config_of_run(p), p, False
    cfg = config_mod.load(p)
    from trainer.resolve import check_public_keys, resolve_model

    base = resolve_model(cfg.model_id, bundles_dir=bundles_dir, trust_remote_code=cfg.trust_remote_code, public_keys=check_public_keys(cfg.public_keys))
    return cfg, Path(base.path), True


def best_split(cfg: Config) -> str:
    """The split a number is most worth reading on: test (never used to pick the best epoch),
    else validation, else train (then the number only says the model learnt the data)."""
    return next((s for s in ("test", "valid") if cfg.files(s)), "train")


def evaluate(target: str | Path, *, split: str | None = None, bundles_dir: str = "bundles") -> dict[str, Any]:
    """Metrics of a model on one split of its data, with `"split"` first. `target` is a run's
    output_dir (the trained model and the data it recorded in lineage.json) or a config (its base
    model, untrained, on the config's data: the baseline a fine-tune should beat; a classifier's
    new head is random). `split` None: `best_split` of the run's data."""
    if split is not None and split not in ("train", "valid", "test"):
        raise TrainerError(f"unknown split {split!r}: use train, valid or test")
    cfg, model_dir, is_base = _target(target, bundles_dir)
    split = split or best_split(cfg)
    if not cfg.files(split):
        raise TrainerError(f"the config has no {split} files: add {split}_file to it or pick another --split")
    from trainer.recipes.common import setup_runtime

    rt = setup_runtime(cfg)
    metrics = {"split": split, **_recipe(cfg.task).evaluate_saved(cfg, model_dir, split=split, rt=rt, base=is_base)}
    if cfg.task == "sft" and (cfg.harness or {}).get("enabled", True):
        metrics["harness"] = run_harness(cfg, model_dir, split=split, rt=rt, record=not is_base)
    return metrics


def run_harness(cfg: Config, model_dir: Path, *, split: str, rt: Any, record: bool) -> dict[str, Any]:
    """The evaluation harness on an SFT model (trainer/harness.py). `record`: a run folder's
    own model, so the results go into its metrics.json, report.md and harness.jsonl (each
    replaced whole, atomically); a base model's are only returned."""
    from trainer import harness
    from trainer.recipes.common import is_random_init

    summary, results = harness.evaluate_run(cfg, model_dir, split=split, rt=rt, random_init=is_random_init(model_dir))
    if record:
        write_harness(Path(model_dir), summary, results)
    return summary


def write_harness(run_dir: Path, summary: dict[str, Any], results: list[dict[str, Any]]) -> None:
    from common.atomic import write_atomic
    from trainer import harness, report
    from trainer.files import open_regular

    try:
        with open_regular(run_dir / "metrics.json") as f:
            metrics = json.loads(f.read(64 * 1024 * 1024))
    except (OSError, ValueError) as e:
        raise TrainerError(f"{run_dir / 'metrics.json'} cannot be read ({shown(str(e))}): the run's record is damaged; train again") from e
    metrics["harness"] = summary
    write_atomic(run_dir / harness.RESULTS_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results))
    write_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2, default=str) + "\n")
    report.write(run_dir, metrics=metrics, lineage=read_lineage(run_dir))


def predict(output_dir: str | Path, texts: list[str]) -> list[dict[str, Any]]:
    """Classifier: label + probabilities; embeddings: norms and pairwise cosine similarities
    (at least two texts); SFT: the generated reply to each text as a user turn."""
    if not texts:
        raise TrainerError("no texts given: pass at least one TEXT to predict")
    cfg = config_of_run(output_dir)
    from trainer.recipes.common import setup_runtime

    rt = setup_runtime(cfg)
    return _recipe(cfg.task).predict_saved(cfg, Path(output_dir), list(texts), rt=rt)
