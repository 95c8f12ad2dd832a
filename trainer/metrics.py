"""The metrics: one definition of each, and which one picks a task's best epoch.

Pure functions of labels, predictions and scores (scikit-learn and SciPy do the arithmetic,
imported when a metric is computed). The recipes call them on validation and test data during a
run, and `trainer eval` runs the same recipe code on a saved model, so a number in metrics.json
and one from `trainer eval` come from the same line. Nothing here imports a recipe: the recipes
stand on this module, never the other way round.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

# The metric each task's best-model selection maximises (or minimises: eval_loss).
MAIN_METRIC = {"classification": "macro_f1", "embeddings": "main_score", "sft": "eval_loss"}
HIGHER_IS_BETTER = {"classification": True, "embeddings": True, "sft": False}


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support  # deferred: seconds to import

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
    from scipy.stats import spearmanr  # deferred: seconds to import

    if len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")  # undefined for a constant side
    return float(spearmanr(x, y).statistic)


def pair_metrics(sims: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
    """Pair classification by cosine similarity: labels are 0/1 or scores (>= 0.5 counts as similar)."""
    from sklearn.metrics import average_precision_score  # deferred: seconds to import

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
