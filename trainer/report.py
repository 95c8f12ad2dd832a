"""`report.md`: a run's results for a human, with a loss curve and (classifiers) a confusion matrix.

Everything in it comes from metrics.json and lineage.json, written by the same run; the report
adds nothing that is not in those two files, it only lays them out for reading.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from common.atomic import write_atomic
from common.modelfacts import RANDOM_INIT_BANNER

LOSS_PNG = "loss_curve.png"
CONFUSION_PNG = "confusion_matrix.png"

# Config keys worth a line in the hyperparameter table (the full config is in lineage.json).
_HYPER = (
    "max_length", "batch_size", "eval_batch_size", "gradient_accumulation_steps", "learning_rate", "epochs",
    "max_steps", "weight_decay", "warmup_ratio", "max_grad_norm", "seed", "loss", "lora_r", "lora_alpha", "precision",
)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}"
    return "" if v is None else str(v)


SMOOTHING = 0.9  # EMA weight of the train loss curve: per-step loss is too noisy to read a trend


def smooth(values: list[float], *, weight: float = SMOOTHING) -> list[float]:
    """Exponential moving average with bias correction (as TensorBoard draws it), so the first
    points are not dragged towards zero."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


_LOSS_NAME = {"classification": "cross-entropy", "sft": "token cross-entropy", "embeddings": "training objective"}


def plot_loss(curve: list[list[float]], epochs: list[dict[str, Any]], path: Path, *, task: str = "", title: str = "") -> None:
    import matplotlib  # deferred: seconds to import, and only a plot needs it

    matplotlib.use("Agg")  # no display in a sandbox
    import matplotlib.pyplot as plt  # deferred: seconds to import, and only a plot needs it

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if curve:
        steps, losses = [s for s, _ in curve], [l for _, l in curve]
        ax.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=1, label="train loss (each step)")
        ax.plot(steps, smooth(losses), color="tab:blue", linewidth=2, label=f"train loss (smoothed, EMA {SMOOTHING})")
    points = [(e["step"], e["valid"]["eval_loss"], e["epoch"]) for e in epochs if isinstance((e.get("valid") or {}).get("eval_loss"), float)]
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color="tab:orange", linewidth=2, markersize=7, label="validation loss (end of each epoch)")
    for e in epochs:  # where each epoch ends, so a reader can tell steps from epochs
        ax.axvline(e["step"], color="grey", alpha=0.3, linestyle=":", linewidth=1)
        ax.annotate(f"epoch {e['epoch']}", (e["step"], 1.0), xycoords=("data", "axes fraction"), ha="right", va="top", fontsize=8, color="grey", rotation=90)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"loss ({_LOSS_NAME.get(task, 'lower is better')})")
    ax.set_title(title or "Training and validation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def confusion_figure(matrix: list[list[int]], labels: list[str], *, title: str):
    """The confusion matrix as a matplotlib figure: true labels down the side, predicted along
    the bottom, both axes named. The layout engine is matplotlib's constrained one, which makes
    room for long class names and the colour bar; the old tight_layout pushed the y-axis name
    off the canvas once the names were long."""
    import matplotlib  # deferred: seconds to import, and only a plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: seconds to import, and only a plot needs it

    n = len(labels)
    longest = max((len(str(x)) for x in labels), default=1)
    side = 1.0 * n + 2
    fig, ax = plt.subplots(figsize=(side + 0.09 * longest + 1.5, side + 0.07 * longest), dpi=100, layout="constrained")
    im = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="rows (examples)")
    ax.set_xticks(range(n), labels, rotation=35, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title(title)
    top = max((max(r) for r in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    return fig


def plot_confusion(matrix: list[list[int]], labels: list[str], path: Path, *, title: str) -> None:
    import matplotlib.pyplot as plt  # deferred: seconds to import, and only a plot needs it

    fig = confusion_figure(matrix, labels, title=title)
    fig.savefig(path)
    plt.close(fig)


def _metric_keys(task: str) -> list[str]:
    return {
        "classification": ["eval_loss", "accuracy", "macro_f1"],
        "embeddings": ["main_score", "cosine_accuracy", "cosine_average_precision", "spearman", "mrr@10", "recall@1"],
        "sft": ["eval_loss", "perplexity"],
    }[task]


_TASK_TITLE = {"classification": "Text classifier", "embeddings": "Embedding model", "sft": "Chat model"}


def _comparison(metrics: dict[str, Any], keys: list[str]) -> list[str]:
    """Base model vs fine-tuned on one split: what the run changed, the first thing to read."""
    baseline = metrics.get("baseline")
    if not baseline:
        return []
    split, before = baseline["split"], baseline["metrics"]
    after = metrics["final"].get(split) or {}
    rows = [k for k in keys if isinstance(before.get(k), (int, float)) and isinstance(after.get(k), (int, float))]
    if not rows:
        return []
    lines = ["", f"## Base model vs fine-tuned ({split} split, {after.get('n', before.get('n', '?'))} rows)", ""]
    if metrics["task"] == "classification":
        lines += ["The base model has no classifier head for these labels: it gets a new, untrained one, so its numbers are chance level.", ""]
    lines += ["| metric | base model | fine-tuned | change |", "| --- | --- | --- | --- |"]
    for k in rows:
        lines.append(f"| {k} | {_fmt(float(before[k]))} | {_fmt(float(after[k]))} | {float(after[k]) - float(before[k]):+.4f} |")
    return lines


def _harness(h: dict[str, Any] | None) -> list[str]:
    """The evaluation harness's verdict on the generated answers (`trainer eval` of an SFT run)."""
    if not h:
        return []
    g = h["generation"]
    mode = f"sampling at temperature {g['temperature']:g}" if g.get("do_sample") else "greedy decoding"
    lines = ["", f"## Compliance of generated answers ({h['split']} split, {h['prompts']} prompts)", ""]
    if h.get("warning"):
        lines += [f"> **{RANDOM_INIT_BANNER}.** These answers come from random weights: the rates below show the harness works, not how a real model behaves.", ""]
    rate = h["compliance_rate"]
    lines += [
        (f"Compliance rate: **{_fmt(float(rate))}** ({h['compliant']} of {h['prompts']} answers break no rule). "
         f"Generated with {mode}, at most {g['max_new_tokens']} new tokens, the tokenizer's chat template; "
         f"every answer and its violations are in `{g.get('prompts_file', 'harness.jsonl')}`."),
        "",
        "| rule | violations | prompts |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {rule} | {n} | {h['prompts_by_rule'].get(rule, 0)} |" for rule, n in h["violations_by_rule"].items()]
    overridden = (h.get("rules") or {}).get("overridden") or []
    lines += ["", "Rules: the credit-dispute defaults of trainer/harness.py" + (f", with {', '.join(overridden)} from the config's harness block." if overridden else ".")]
    return lines


def _base_bundle_line(base: dict[str, Any]) -> str:
    """The base bundle by its identity first (`sha256:` of its manifest: what signing, parts and
    registries keep, and what approvals and install records cite), then the file this run saw and
    that file's sha256 (which a re-signed copy changes)."""
    name = Path(base["bundle"]).name if base.get("bundle") else "n/a"
    return (f"- base bundle: identity `{base.get('bundle_id') or 'n/a'}`"
            f" (file `{name}`, sha256 `{base.get('bundle_sha256') or 'n/a'}`)")


def render(metrics: dict[str, Any], lineage: dict[str, Any], *, loss_png: str | None, confusion_png: str | None) -> str:
    task = metrics["task"]
    base = lineage["base_model"]
    cfg = lineage["config"]
    keys = _metric_keys(task)
    main = metrics["main_metric"]
    named = (metrics["final"].get("valid") or {}).get("main_score_name")  # embeddings: which metric main_score is
    lines = [f"# {_TASK_TITLE[task]} fine-tuned from `{base['repo_id']}`", ""]
    if base.get("random_init"):
        lines += [f"> **{RANDOM_INIT_BANNER}.** The base model has random weights (a demo stand-in, no real model "
                  "could be fetched here): the numbers below show the pipeline works, not how a real model performs.", ""]
    lines += [
        f"- run folder: `{Path(cfg['output_dir']).name}`",
        f"- base model: `{base['repo_id']}` at commit `{base.get('commit') or 'n/a'}` ({base['source']})",
        _base_bundle_line(base),
        f"- license: {lineage.get('license') or 'unknown'} (inherited from the base model)" + (f"; {lineage['license_note']}" if lineage.get("license_note") else ""),
        "- data: " + ", ".join(f"{split} {n} rows" for split, n in metrics["rows"].items()),
        f"- device: {metrics['device']}, precision {metrics['precision']}, wall time {metrics['wall_time_s']:.1f} s, "
        f"{metrics['steps']} optimizer steps",
        f"- best epoch: {metrics['best_epoch']} by validation `{main}`{f' ({named})' if named else ''} "
        f"({'higher' if metrics['higher_is_better'] else 'lower'} is better)",
        "",
        "## Hyperparameters",
        "",
        "| key | value |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {cfg[k]:g} |" if isinstance(cfg[k], float) else f"| {k} | {cfg[k]} |" for k in _HYPER if cfg.get(k) is not None]
    if metrics.get("loss_function"):
        lines.append(f"| loss function | {metrics['loss_function']} |")
    lines += ["", "## Per epoch", "", "| epoch | step | train loss | " + " | ".join(keys) + " |", "|" + " --- |" * (3 + len(keys))]
    for e in metrics["epochs"]:
        v = e.get("valid") or {}
        lines.append(f"| {e['epoch']} | {e['step']} | {_fmt(e.get('train_loss'))} | " + " | ".join(_fmt(v.get(k)) for k in keys) + " |")
    lines += _comparison(metrics, keys)
    lines += ["", "## Final metrics (saved model)", ""]
    if metrics["final"]:
        lines += ["| split | " + " | ".join(keys) + " |", "|" + " --- |" * (1 + len(keys))]
        for split, m in metrics["final"].items():
            lines.append(f"| {split} | " + " | ".join(_fmt(m.get(k)) for k in keys) + " |")
    else:
        lines.append("No validation or test data: no held-out metrics.")
    if task == "classification":
        for split, m in metrics["final"].items():
            lines += ["", f"### Per class ({split})", "", "| class | precision | recall | F1 | support |", "| --- | --- | --- | --- | --- |"]
            lines += [f"| {c} | {_fmt(x['precision'])} | {_fmt(x['recall'])} | {_fmt(x['f1'])} | {x['support']} |" for c, x in m["per_class"].items()]
    lines += _harness(metrics.get("harness"))
    if loss_png:
        lines += ["", "## Loss", "", f"![loss curve]({loss_png})"]
    if confusion_png:
        lines += ["", "## Confusion matrix", "", f"![confusion matrix]({confusion_png})"]
    lines += ["", "## Lineage", "", "Data files (sha256):", ""]
    lines += [f"- {d['split']}: `{d['path']}` `{d['sha256']}`" for d in lineage["data"]]
    libs = ", ".join(f"{k} {v}" for k, v in lineage["libraries"].items() if v)
    lines += ["", f"Libraries: {libs}.", "", "The full resolved config and hardware are in `lineage.json`.", ""]
    return "\n".join(lines)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _grid(rows: list[list[str]], *, right: set[int] = frozenset()) -> list[str]:
    """Rows of cells as aligned text columns (numbers right-aligned), indented two spaces."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]


def eval_table(metrics: dict[str, Any]) -> list[str]:
    """`trainer eval`'s result for a person, as `trainer run` prints its own: the scalar metrics
    with four decimals, a classifier's per-class table and confusion matrix, the harness verdict.
    Everything here is in `trainer eval --json` too, there with full precision."""
    split = metrics.get("split", "?")
    n_key = "n" if "n" in metrics else "queries"
    n = metrics.get(n_key)
    lines = [f"{split} split" + (f", {n} {'rows' if n_key == 'n' else 'queries'}" if _is_number(n) else "")]
    scalars = [[k, _fmt(v) if isinstance(v, float) else str(v)] for k, v in metrics.items()
               if k not in ("split", n_key) and (_is_number(v) or isinstance(v, str))]
    if scalars:
        lines += _grid([["metric", "value"], *scalars], right={1})
    per_class = metrics.get("per_class")
    if isinstance(per_class, dict) and per_class:
        cells = [[str(c), _fmt(x.get("precision")), _fmt(x.get("recall")), _fmt(x.get("f1")), str(x.get("support", ""))]
                 for c, x in per_class.items() if isinstance(x, dict)]
        lines += ["", *_grid([["class", "precision", "recall", "f1", "support"], *cells], right={1, 2, 3, 4})]
        matrix = metrics.get("confusion_matrix")
        if isinstance(matrix, list) and len(matrix) == len(per_class):
            names = [str(c) for c in per_class]
            lines += ["", "  confusion matrix (rows: true label, columns: predicted label)"]
            lines += _grid([["", *names], *[[names[i], *map(str, row)] for i, row in enumerate(matrix)]], right=set(range(1, len(names) + 1)))
    h = metrics.get("harness")
    if isinstance(h, dict) and _is_number(h.get("compliance_rate")):
        lines += ["", f"harness: {h.get('compliant')} of {h.get('prompts')} generated answers compliant (rate {_fmt(float(h['compliance_rate']))})"
                  + (f"; {h['warning']}" if h.get("warning") else "")]
    return lines


def write(out_dir: Path, *, metrics: dict[str, Any], lineage: dict[str, Any]) -> Path:
    """Write report.md and its PNGs into `out_dir`."""
    loss_png = None
    if metrics["train_loss_curve"]:
        plot_loss(metrics["train_loss_curve"], metrics["epochs"], out_dir / LOSS_PNG, task=metrics["task"],
                  title=f"{_TASK_TITLE[metrics['task']]} fine-tune: loss per optimizer step")
        loss_png = LOSS_PNG
    confusion_png = None
    if metrics["task"] == "classification" and metrics["final"]:
        split = "test" if "test" in metrics["final"] else next(iter(metrics["final"]))
        labels = list(metrics["final"][split]["per_class"])
        n = metrics["final"][split].get("n")
        plot_confusion(metrics["final"][split]["confusion_matrix"], labels, out_dir / CONFUSION_PNG,
                       title=f"Confusion matrix, {split} split" + (f" ({n} rows)" if n else ""))
        confusion_png = CONFUSION_PNG
    path = out_dir / "report.md"
    write_atomic(path, render(metrics, lineage, loss_png=loss_png, confusion_png=confusion_png))
    return path
