"""report.md and its plots, from metrics and lineage records."""

from __future__ import annotations

import copy
from pathlib import Path

from trainer import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

LINEAGE = {
    "base_model": {"repo_id": "acme/bert", "commit": "f" * 40, "source": "bundle", "bundle": "bundles/acme.tar", "bundle_sha256": "e" * 64,
                   "bundle_id": "sha256:" + "b" * 64, "random_init": False},
    "config": {"output_dir": "models/clf", "learning_rate": 2e-5, "batch_size": 16, "epochs": 2.0, "seed": 42, "lora_r": None},
    "data": [{"split": "train", "path": "data/train.jsonl", "sha256": "d" * 64}],
    "libraries": {"python": "3.11.7", "torch": "2.13.0", "peft": None},
}


def _per_class(f1s):
    return {c: {"precision": f, "recall": f, "f1": f, "support": 5} for c, f in f1s.items()}


METRICS = {
    "task": "classification", "main_metric": "macro_f1", "higher_is_better": True, "best_epoch": 2,
    "epochs": [
        {"epoch": 1, "step": 4, "train_loss": 0.9, "valid": {"eval_loss": 0.8, "accuracy": 0.5, "macro_f1": 0.4}},
        {"epoch": 2, "step": 8, "train_loss": 0.5, "valid": {"eval_loss": 0.6, "accuracy": 0.9, "macro_f1": 0.875}},
    ],
    "final": {"test": {"eval_loss": 0.55, "accuracy": 0.9, "macro_f1": 0.875, "per_class": _per_class({"yes": 0.9, "no": 0.85}), "confusion_matrix": [[4, 1], [0, 5]]}},
    "train_loss_curve": [[1, 1.0], [2, 0.9], [3, 0.7], [4, 0.6], [5, 0.55], [6, 0.5], [7, 0.45], [8, 0.4]],
    "steps": 8, "rows": {"train": 64, "test": 10}, "device": "cpu", "precision": "fp32", "wall_time_s": 12.5,
}


def test_classifier_report_with_plots(tmp_path: Path):
    path = report.write(tmp_path, metrics=METRICS, lineage=LINEAGE)
    text = path.read_text()
    assert (tmp_path / "loss_curve.png").read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:8] == PNG_MAGIC
    assert "![loss curve](loss_curve.png)" in text and "![confusion matrix](confusion_matrix.png)" in text
    assert "`acme/bert` at commit `" + "f" * 40 in text and "e" * 64 in text
    assert "| 2 | 8 | 0.5000 | 0.6000 | 0.9000 | 0.8750 |" in text  # the per-epoch table
    assert "| test | 0.5500 | 0.9000 | 0.8750 |" in text
    assert "| yes | 0.9000 | 0.9000 | 0.9000 | 5 |" in text
    assert "| learning_rate | 2e-05 |" in text and "lora_r" not in text  # unset keys are left out
    assert "train 64 rows, test 10 rows" in text
    assert "RANDOM-INITIALISED" not in text


def test_the_base_bundle_is_cited_by_its_identity_then_its_file():
    text = report.render(METRICS, LINEAGE, loss_png=None, confusion_png=None)
    line = next(x for x in text.splitlines() if x.startswith("- base bundle:"))
    assert line == f"- base bundle: identity `sha256:{'b' * 64}` (file `acme.tar`, sha256 `{'e' * 64}`)"
    old = copy.deepcopy(LINEAGE)  # a lineage written before identities were recorded
    del old["base_model"]["bundle_id"]
    assert "- base bundle: identity `n/a` (file `acme.tar`" in report.render(METRICS, old, loss_png=None, confusion_png=None)


def test_random_init_base_is_labelled_prominently(tmp_path: Path):
    lineage = copy.deepcopy(LINEAGE)
    lineage["base_model"]["random_init"] = True
    text = report.render(METRICS, lineage, loss_png=None, confusion_png=None)
    first_lines = "\n".join(text.splitlines()[:4])
    assert "RANDOM-INITIALISED DEMO MODEL" in first_lines


def test_sft_report_has_no_confusion_matrix(tmp_path: Path):
    metrics = copy.deepcopy(METRICS)
    metrics.update(task="sft", main_metric="eval_loss", higher_is_better=False)
    metrics["epochs"] = [{"epoch": 1, "step": 8, "train_loss": 2.0, "valid": {"eval_loss": 1.5, "perplexity": 4.4817}}]
    metrics["final"] = {"valid": {"eval_loss": 1.5, "perplexity": 4.4817}}
    text = report.write(tmp_path, metrics=metrics, lineage=LINEAGE).read_text()
    assert not (tmp_path / "confusion_matrix.png").exists() and (tmp_path / "loss_curve.png").exists()
    assert "| valid | 1.5000 | 4.4817 |" in text and "lower is better" in text


def test_report_compares_base_and_fine_tuned_on_one_split_with_a_title_that_says_something(tmp_path: Path):
    metrics = copy.deepcopy(METRICS)
    metrics["baseline"] = {"split": "test", "metrics": {"n": 10, "eval_loss": 0.7, "accuracy": 0.5, "macro_f1": 0.3333}}
    metrics["final"]["test"]["n"] = 10
    lineage = {**LINEAGE, "license": "apache-2.0", "license_note": None}
    text = report.write(tmp_path, metrics=metrics, lineage=lineage).read_text()
    lines = text.splitlines()
    assert lines[0] == "# Text classifier fine-tuned from `acme/bert`"  # not "# classification fine-tune: clf"
    assert "## Base model vs fine-tuned (test split, 10 rows)" in text
    assert "| accuracy | 0.5000 | 0.9000 | +0.4000 |" in text
    assert "| macro_f1 | 0.3333 | 0.8750 | +0.5417 |" in text
    assert "| eval_loss | 0.7000 | 0.5500 | -0.1500 |" in text
    assert "- license: apache-2.0 (inherited from the base model)" in text
    assert "- base bundle: identity `sha256:" + "b" * 64 + "` (file `acme.tar`" in text


def test_no_baseline_no_comparison_section():
    assert "Base model vs fine-tuned" not in report.render(METRICS, LINEAGE, loss_png=None, confusion_png=None)


def test_smoothing_is_a_bias_corrected_moving_average():
    assert report.smooth([1.0]) == [1.0]  # no drag towards zero at the start
    out = report.smooth([1.0, 0.0], weight=0.5)
    assert out == [1.0, (0.5 * 0.5 * 1.0 + 0.5 * 0.0) / (1 - 0.25)]
    assert report.smooth([2.0] * 50) == [2.0] * 50 or max(abs(v - 2.0) for v in report.smooth([2.0] * 50)) < 1e-9


def test_the_confusion_matrix_names_its_y_axis_inside_the_image_even_with_long_class_names():
    """Issue 22: with real class names the 'true label' axis name was pushed off the canvas
    (tight_layout with a colour bar); it must be drawn, and drawn inside the image."""
    labels = ["Eligible for dispute", "Not eligible - time barred", "Needs more documentation", "Refer to legal counsel"]
    for names in (labels, ["yes", "no"]):
        matrix = [[3 if i == j else 1 for j in range(len(names))] for i in range(len(names))]
        fig = report.confusion_figure(matrix, names, title="Confusion matrix, test split")
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        width, height = fig.canvas.get_width_height()
        ax = fig.axes[0]
        assert (ax.get_ylabel(), ax.get_xlabel()) == ("true label", "predicted label")
        for label in (ax.yaxis.label, ax.xaxis.label):
            box = label.get_window_extent(renderer)
            assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height, (names[0], label.get_text(), box)
        ticks = [t.get_window_extent(renderer) for t in ax.get_yticklabels()]
        assert min(b.x0 for b in ticks) > ax.yaxis.label.get_window_extent(renderer).x1  # the name does not overlap the class names
        import matplotlib.pyplot as plt

        plt.close(fig)
