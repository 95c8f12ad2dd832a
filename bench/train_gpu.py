"""Training speed on one GPU: `trainer run` against the Hugging Face Trainer, SFT and classifier.

Issue 6's anchors were measured on an H100 the same way: baseline and `trainer run` on the same
random-initialised model of the real shape and the same data, in one launch of this script.

SFT (tokens/s and MFU), a Qwen2.5-1.5B-shaped model and the SFT chat records:
  1. `hf_original`: HF Trainer, the original script's recipe: batch 2 x accumulation 8, gradient
     checkpointing, bf16;
  2. `hf_tuned`: HF Trainer tuned as a competent user would: batch 32, no checkpointing, fused
     AdamW, bf16, padding to the longest row;
  3. `trainer_run` (trainer.recipes.sft): bf16 autocast over fp32 master weights, fused AdamW,
     SDPA, rows packed without cross-document attention, the memory plan choosing micro-batch and
     checkpointing; `--precision bf16-pure` is the opt-in extra;
  4. `trainer_run_compile` (with `--compile`): the same with `torch_compile: true`.
Each run takes --warmup optimizer steps, then is timed over --steps more (steady state); the slow
hf_original has its own --original-warmup / --original-steps (2 + 5 by default, ~25 s on an H100).
A run that runs out of GPU memory is repeated once at half the micro-batch with twice the
accumulation (same rows per step) and marked so; any other failure is recorded and the next run
goes on. Peak GPU memory is recorded per run.
tokens/s counts real tokens (padding excluded) per second. MFU = 6 * N * tokens/s / peak, with
N the parameter count (1.54e9; the tied embedding counted once stands for the LM head's matmul)
and peak the GPU's dense bf16 peak (H100 SXM: 989 TFLOP/s; --peak-tflops for another GPU). The
attention's own FLOPs (12 * layers * hidden * context per token) are not counted: at the records'
~200-token context they add under 2 %.

Classifier (wall-clock seconds), a DistilBERT-shaped model (6 layers, dim 768, vocabulary 30522)
with a new 4-way head, 6 epochs over the 1200 training rows:
  - `baseline`: the original script's recipe (`bench/train_cpu.py`'s worker): HF Trainer, every
    row padded to max_length, fp32, evaluation and a full checkpoint every epoch, then the test
    split; timed in-process from model load to the final test evaluation;
  - `trainer_run`: trainer.recipes.run with the same hyperparameters, timed in-process from the
    call to the outputs written (metrics, report, lineage, weights). Goal: under 8 s.
Both are random-initialised, so their test accuracies say nothing about a real model.

Data: `--data auto` takes the seed data (../shared/seed-data, or a copy in bench/work/seed-data)
when it is there, with the seed classifier config's hyperparameters; otherwise the project's
data/ files (the seed config's hyperparameters still, with configs/classifier.yaml's labels).

    python bench/train_gpu.py                          # on a CUDA machine: both parts -> bench/results/train_gpu.json
    python bench/train_gpu.py --only sft --compile     # one part; --out elsewhere
    python bench/train_gpu.py --merge A.json B.json    # parts measured in separate launches -> one result
    python bench/train_gpu.py --smoke                  # CPU: tiny shapes, few rows; checks the code, measures nothing
    bash bench/gpu_session.sh                          # what a GPU session runs (bench/README.md)

Without a CUDA device (and without --smoke) it exits with status 2 and says so. The result JSON is
rewritten after every run, so a launch killed part-way keeps the runs it finished.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULT = ROOT / "bench" / "results" / "train_gpu.json"
SMOKE_RESULT = Path(tempfile.gettempdir()) / "train_gpu.smoke.json"
H100_BF16_DENSE_TFLOPS = 989.0
# Where the seed data may be: beside the checkout, or copied into the (git-ignored) bench/work so a
# GPU session can carry it along (the device tool sends the repository only).
SEED_DIRS = (ROOT.parent / "shared" / "seed-data", ROOT / "bench" / "work" / "seed-data")

QWEN25_15B = dict(
    hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
    vocab_size=151_936, max_position_embeddings=32_768, rope_theta=1_000_000.0, tie_word_embeddings=True, rms_norm_eps=1e-6,
)
TINY_LM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               vocab_size=4096, max_position_embeddings=2048, tie_word_embeddings=True)
DISTILBERT = dict(vocab_size=30_522, dim=768, hidden_dim=3072, n_layers=6, n_heads=12, max_position_embeddings=512)  # DistilBertConfig's defaults
TINY_BERT = dict(dim=32, hidden_dim=64, n_layers=2, n_heads=2, max_position_embeddings=512)  # vocabulary: the tokenizer's

# The seed classifier config's hyperparameters (../shared/seed-data/configs/model2_classifier.yaml),
# read from the file when it is there; these are its values for when it is not.
CLASSIFIER_HYPER = dict(max_length=256, batch_size=16, eval_batch_size=32, learning_rate=2e-5, epochs=6, weight_decay=0.01, warmup_ratio=0.0, seed=42)
CLASSIFIER_GOAL_S = 8.0
# Smoke runs: a few rows and steps, so both parts run on 2 CPU cores in well under a minute.
SMOKE_SFT_RECORDS, SMOKE_SFT_BATCH = 64, 16
SMOKE_CLASSIFIER_ROWS = {"train": 48, "valid": 16, "test": 16}
SMOKE_CLASSIFIER_HYPER = dict(max_length=64, epochs=2)


# --- data ------------------------------------------------------------------------------------------


def seed_dir() -> Path | None:
    return next((d for d in SEED_DIRS if (d / "configs" / "model2_classifier.yaml").is_file()), None)


def data_set(choice: str) -> str:
    """auto -> seed when the seed data is there, else project."""
    if choice == "auto":
        return "seed" if seed_dir() else "project"
    if choice == "seed" and seed_dir() is None:
        sys.exit(f"bench: no seed data in {' or '.join(str(d) for d in SEED_DIRS)}: use --data project")
    return choice


def sft_file(data: str) -> Path:
    if data == "seed":
        return seed_dir() / "data" / "finetune" / "model1_sft.train.jsonl"
    return ROOT / "data" / "sft.train.jsonl"


def classifier_data(data: str) -> tuple[dict[str, Path], list[str], dict[str, Any]]:
    """Split files, labels and hyperparameters (the seed config's in both cases)."""
    hyper = dict(CLASSIFIER_HYPER)
    if data == "seed":
        cfg = yaml.safe_load((seed_dir() / "configs" / "model2_classifier.yaml").read_text(encoding="utf-8"))
        hyper.update({k: cfg[k] for k in CLASSIFIER_HYPER if cfg.get(k) is not None})
        hyper["learning_rate"] = float(hyper["learning_rate"])  # YAML 1.1 reads 2e-5 as a string
        files = {s: seed_dir() / "data" / "finetune" / f"model2_classifier.{s}.jsonl" for s in ("train", "valid", "test")}
        return files, list(cfg["labels"]), hyper
    cfg = yaml.safe_load((ROOT / "configs" / "classifier.yaml").read_text(encoding="utf-8"))
    return {s: ROOT / "data" / f"classifier.{s}.jsonl" for s in ("train", "valid", "test")}, list(cfg["labels"]), hyper


def lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def head_copy(src: Path, dst: Path, n: int) -> Path:
    """The first n records of src in dst (smoke runs train on a few rows)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(line + "\n" for line in lines(src)[:n]), encoding="utf-8")
    return dst


def shown(path: Path) -> str:
    """A data path for the record: relative to the repository (or beside it: ../shared/...)."""
    for base, prefix in ((ROOT, ""), (ROOT.parent, "../")):
        with contextlib.suppress(ValueError):
            return prefix + str(path.relative_to(base))
    return str(path)


# --- GPU housekeeping ------------------------------------------------------------------------------


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def release() -> None:
    """Give back what the previous run left in the CUDA caching allocator: the next run's memory
    plan reads the device's free memory, and cached blocks would look like used ones."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with contextlib.suppress(AttributeError):
        torch._dynamo.reset()  # a compiled run's graphs hold on to their inputs' memory


def peak_gib() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 1024**3, 2) if torch.cuda.is_available() else None


def warm_up_device() -> None:
    """CUDA context, cuBLAS handles and the first kernels' loading, before anything is timed (the
    first timed run would otherwise pay them for both)."""
    import torch

    if not torch.cuda.is_available():
        return
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(256, 256, device="cuda", dtype=dtype)
        (x @ x).sum().item()
    torch.cuda.synchronize()


def guarded(name: str, fn: Callable[[], dict[str, Any]], *, strict: bool) -> dict[str, Any]:
    """One run. On a GPU a run that fails (out of memory, a compile error, the memory plan
    refusing) is recorded and the next one still runs; --smoke (strict) lets the error through."""
    from trainer.errors import TrainerError

    release()
    try:
        out = fn()
    except (RuntimeError, TrainerError) as e:  # torch.cuda.OutOfMemoryError and dynamo's errors are RuntimeErrors
        if strict:
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"bench: {name} failed: {type(e).__name__}: {first[:300]}", flush=True)
        out = {"error": f"{type(e).__name__}: {first[:300]}"}
    out["peak_memory_gib"] = peak_gib()
    release()
    if cuda():  # what the run left allocated (a leak would shrink the next run's memory plan)
        import torch

        out["memory_left_gib"] = round(torch.cuda.memory_allocated() / 1024**3, 2)
    return out


# --- SFT -------------------------------------------------------------------------------------------


def build_lm(work: Path, *, shape: dict, data: Path) -> Path:
    """A random-initialised model of the shape, saved with a BPE tokenizer learnt from the data
    (no real Qwen tokenizer offline) and Qwen's chat template."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from trainer import tiny

    out = work / "lm"
    tok = tiny.bpe_tokenizer(out, lines(data), vocab_size=min(8192, shape["vocab_size"]))
    torch.manual_seed(0)
    cfg = Qwen2Config(**shape, bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)  # stored bf16 (half the disk); loaded as each recipe wants
    model.save_pretrained(out, safe_serialization=True)
    del model
    mark_random_init(out)
    return out


def mark_random_init(model_dir: Path) -> None:
    """The flag trainer.tiny's models carry: `trainer run` then labels its metrics as random-init."""
    path = model_dir / "config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg["mirror_demo"] = "random-init"
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def parameter_count(model_dir: Path) -> int:
    """From the safetensors headers: no tensor is read."""
    from safetensors import safe_open

    total = 0
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            total += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
    return total


def encoded(model_dir: Path, data: Path, max_length: int) -> tuple[list[list[int]], list[list[int]]]:
    from transformers import AutoTokenizer

    from trainer import config
    from trainer import data as tdata
    from trainer.recipes import sft

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    cfg = config.from_dict({"task": "sft", "model_id": str(model_dir), "output_dir": "unused", "train_file": str(data), "max_length": max_length})
    ids, labels, _ = sft.encode_rows(cfg, tok, tdata.read_split(cfg, "train"))
    return ids, labels


def hf_sft(model_dir: Path, ids, labels, *, batch: int, accum: int, checkpointing: bool, fused: bool, steps: int, warmup: int, work: Path) -> dict[str, Any]:
    """One HF Trainer run; a callback times the optimizer steps after warm-up."""
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from trainer.recipes import common

    gpu = torch.cuda.is_available()

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(ids)

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": ids[i], "labels": labels[i]}

    def collate(items: list[dict]) -> dict:  # padding to the longest row, as DataCollatorForSeq2Seq does
        return common.pad_batch([x["input_ids"] for x in items], pad_id=0, labels=[x["labels"] for x in items])

    clock: dict[str, Any] = {"t0": None, "t1": None}
    rows_per_step = batch * accum
    mean_len = sum(len(x) for x in ids) / len(ids)

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            if gpu:
                torch.cuda.synchronize()
            if state.global_step == warmup:
                clock["t0"] = time.perf_counter()
            elif state.global_step == warmup + steps:
                clock["t1"] = time.perf_counter()
                control.should_training_stop = True

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="sdpa")
    args = TrainingArguments(
        output_dir=str(work / "hf"), per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
        gradient_checkpointing=checkpointing, bf16=gpu, use_cpu=not gpu, optim="adamw_torch_fused" if fused else "adamw_torch",
        learning_rate=2e-5, max_steps=warmup + steps, save_strategy="no", report_to="none", disable_tqdm=True,
        logging_strategy="no", dataloader_drop_last=True, remove_unused_columns=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Rows(), data_collator=collate, callbacks=[Timer()])
    trainer.train()
    del trainer, model
    if clock["t0"] is None or clock["t1"] is None:
        raise RuntimeError(f"the HF Trainer stopped before step {warmup + steps}: {len(ids)} records are too few for {rows_per_step} rows a step")
    seconds = clock["t1"] - clock["t0"]
    # the sampler is random: steps see rows of the mean length on average
    return {"tokens_per_s": steps * rows_per_step * mean_len / seconds, "seconds": round(seconds, 4), "steps": steps,
            "rows_per_step": rows_per_step, "gradient_checkpointing": checkpointing}


def ours_sft(model_dir: Path, data: Path, *, batch: int, accum: int = 1, steps: int, warmup: int, work: Path, precision: str, compile_: bool, max_length: int) -> dict[str, Any]:
    from trainer import config
    from trainer.recipes import run
    from trainer.resolve import ResolvedModel

    cfg = config.from_dict({
        "task": "sft", "model_id": str(model_dir), "output_dir": str(work / ("ours-compile" if compile_ else "ours")), "train_file": str(data),
        "batch_size": batch, "gradient_accumulation_steps": accum, "max_steps": warmup + steps, "epochs": 100, "max_length": max_length, "learning_rate": 2e-5,
        "precision": precision, "torch_compile": compile_, "packing": True,
    })
    model = ResolvedModel(repo_id="bench/qwen2.5-1.5b-shape", path=model_dir, commit=None, bundle_path=None, bundle_sha256=None, source="local")
    metrics = run(cfg, model=model).metrics
    timed = [t for t in metrics["step_throughput"] if t[0] > warmup]
    if not timed:
        raise RuntimeError(f"trainer run stopped after {metrics['steps']} steps, none past the {warmup} warm-up steps")
    tokens, seconds = sum(t[1] for t in timed), sum(t[2] for t in timed)
    return {"tokens_per_s": tokens / seconds, "seconds": round(seconds, 4), "steps": len(timed), "rows_per_step": batch * accum,
            "precision": metrics["precision"], "micro_batch": metrics["micro_batch"],
            "gradient_accumulation_steps": metrics["gradient_accumulation_steps"], "gradient_checkpointing": metrics["gradient_checkpointing"],
            "packing": metrics["packing"], "attention": metrics["attention"], "torch_compile": metrics["torch_compile"]}


def halved_on_oom(fn: Callable[..., dict[str, Any]], *, batch: int) -> dict[str, Any]:
    """fn(batch=, accum=) at the full micro-batch; if that runs out of GPU memory, once more at half
    the micro-batch with twice the accumulation (the same rows per optimizer step), as a user
    would, and say so in the result: one out-of-memory must not cost a GPU session its figure."""
    import torch

    try:
        return fn(batch=batch, accum=1)
    except torch.cuda.OutOfMemoryError as e:
        first = (str(e).strip().splitlines() or ["out of memory"])[0][:200]
    release()
    print(f"bench: out of memory at micro-batch {batch}; again at {batch // 2} x accumulation 2", flush=True)
    out = fn(batch=batch // 2, accum=2)
    out["retried_after_oom"] = f"micro-batch {batch} ran out of memory ({first}); measured at {batch // 2} x accumulation 2"
    return out


def sft_part(args: argparse.Namespace, work: Path, *, save: Callable[[dict], None]) -> dict[str, Any]:
    """The SFT runs; `save(part)` is called after each so a killed launch keeps what finished."""
    gpu = cuda()
    shape = TINY_LM if args.smoke else QWEN25_15B
    steps, warmup = (2, 1) if args.smoke else (args.steps, args.warmup)
    # the original recipe runs ~3.5 s a step on an H100 (~900 tokens/s): fewer steps, still 15 s+ timed
    original_steps, original_warmup = (steps, warmup) if args.smoke else (args.original_steps, args.original_warmup)
    batch = SMOKE_SFT_BATCH if args.smoke else args.batch
    source = sft_file(args.data_set)
    data = head_copy(source, work / "sft.train.jsonl", SMOKE_SFT_RECORDS) if args.smoke else source
    model_dir = build_lm(work, shape=shape, data=data)
    ids, labels = encoded(model_dir, data, args.max_length)
    n_params = parameter_count(model_dir)
    print(f"sft: Qwen2.5-1.5B shape{' (TINY smoke)' if args.smoke else ''}, {n_params / 1e9:.3f}B parameters, {len(ids)} records, "
          f"{warmup} warm-up + {steps} timed steps per run (hf_original: {original_warmup} + {original_steps})", flush=True)
    part: dict[str, Any] = {
        "model": "Qwen2.5-1.5B shape, random-initialised" + (" (TINY smoke shape)" if args.smoke else ""), "parameters": n_params,
        "shape": shape, "data": shown(source), "data_set": args.data_set, "records": len(ids),
        "mean_record_tokens": round(sum(len(x) for x in ids) / len(ids), 1), "max_length": args.max_length,
        "steps": steps, "warmup": warmup, "hf_original_steps": original_steps, "hf_original_warmup": original_warmup, "peak_tflops": args.peak_tflops,
        "mfu_formula": "6 * parameters * tokens_per_s / (peak_tflops * 1e12); attention FLOPs not counted", "runs": {},
    }
    plan: list[tuple[str, Callable[[], dict]]] = [
        ("hf_original", lambda: hf_sft(model_dir, ids, labels, batch=2, accum=8, checkpointing=True, fused=False, steps=original_steps, warmup=original_warmup, work=work)),
        ("hf_tuned", lambda: halved_on_oom(lambda **mb: hf_sft(model_dir, ids, labels, **mb, checkpointing=False, fused=True, steps=steps, warmup=warmup, work=work), batch=batch)),
    ]
    precision = args.precision if gpu else "fp32"
    for compile_ in (False, True) if args.compile else (False,):
        name = "trainer_run_compile" if compile_ else "trainer_run"
        plan.append((name, lambda c=compile_: halved_on_oom(
            lambda **mb: ours_sft(model_dir, data, **mb, steps=steps, warmup=warmup, work=work, precision=precision, compile_=c, max_length=args.max_length), batch=batch)))
    for name, fn in plan:
        print(f"sft: {name} ...", flush=True)
        run = guarded(name, fn, strict=args.smoke)
        if "tokens_per_s" in run:
            run["mfu"] = 6 * n_params * run["tokens_per_s"] / (args.peak_tflops * 1e12)
            print(f"sft: {name}: {run['tokens_per_s']:,.0f} tokens/s, MFU {run['mfu'] * 100:.1f} %", flush=True)
        part["runs"][name] = run
        part.update(sft_speedups(part["runs"]))
        save(part)
    part["complete"] = True  # absent when the launch was stopped part-way
    save(part)
    return part


def sft_speedups(runs: dict[str, dict]) -> dict[str, float]:
    """trainer run's tokens/s over each HF Trainer run's: speedup_vs_hf_tuned, speedup_compile_vs_hf_tuned, ..."""
    rate = {k: r["tokens_per_s"] for k, r in runs.items() if "tokens_per_s" in r}
    out = {}
    for ours, label in (("trainer_run", "speedup"), ("trainer_run_compile", "speedup_compile")):
        for base in ("hf_tuned", "hf_original"):
            if ours in rate and base in rate:
                out[f"{label}_vs_{base}"] = round(rate[ours] / rate[base], 3)
    return out


# --- classifier ------------------------------------------------------------------------------------


def build_encoder(work: Path, *, shape: dict, texts: list[str], smoke: bool) -> Path:
    """A random-initialised DistilBERT of the shape (base model: the recipes add the head) with a
    WordPiece tokenizer of the data's words (no real DistilBERT tokenizer offline)."""
    import torch
    from transformers import DistilBertConfig, DistilBertModel

    from trainer import tiny

    out = work / "encoder"
    tok = tiny.wordpiece_tokenizer(out, texts)
    torch.manual_seed(0)
    sizes = dict(shape)
    if smoke:
        sizes["vocab_size"] = len(tok)
    DistilBertModel(DistilBertConfig(**sizes, pad_token_id=tok.pad_token_id)).save_pretrained(out, safe_serialization=True)
    mark_random_init(out)
    return out


def hf_classifier(model_dir: Path, files: dict[str, Path], labels: list[str], hyper: dict, work: Path) -> dict[str, Any]:
    """The original script's recipe, exactly as the CPU bench runs it, timed around the call."""
    from train_cpu import baseline_worker  # bench/ is this script's own folder, first on sys.path

    spec = {**hyper, "labels": labels, "model": str(model_dir), "files": {k: str(v) for k, v in files.items()}, "output_dir": str(work / "hf-classifier")}
    t0 = time.perf_counter()
    out = baseline_worker(spec)
    wall = time.perf_counter() - t0
    return {"wall_s": round(wall, 3), "test_accuracy": out["test_accuracy"],
            "recipe": "transformers Trainer, padding=max_length, fp32, eval_strategy=epoch, save_strategy=epoch, then the test split"}


def ours_classifier(model_dir: Path, files: dict[str, Path], labels: list[str], hyper: dict, work: Path) -> dict[str, Any]:
    from trainer import config
    from trainer.recipes import run
    from trainer.resolve import ResolvedModel

    cfg = config.from_dict({
        "task": "classification", "model_id": str(model_dir), "output_dir": str(work / "ours-classifier"),
        "train_file": str(files["train"]), "valid_file": str(files["valid"]), "test_file": str(files["test"]),
        "text_field": "text", "label_field": "label", "labels": labels, **hyper,
    })
    model = ResolvedModel(repo_id="bench/distilbert-shape", path=model_dir, commit=None, bundle_path=None, bundle_sha256=None, source="local")
    t0 = time.perf_counter()
    result = run(cfg, model=model)
    wall = time.perf_counter() - t0
    m = result.metrics
    return {"wall_s": round(wall, 3), "test_accuracy": m["final"]["test"]["accuracy"], "in_run_wall_s": m["wall_time_s"],
            "precision": m["precision"], "steps": m["steps"], "best_epoch": m["best_epoch"],
            "recipe": "trainer run: dynamic padding, length-grouped batches, bf16 autocast on GPU, fused AdamW, eval every epoch, resume state instead of full checkpoints (token cache cold)"}


def classifier_part(args: argparse.Namespace, work: Path, *, save: Callable[[dict], None]) -> dict[str, Any]:
    os.environ.pop("TRAINER_CACHE", None)  # a cold token cache, as on a first run: tokenise like the baseline
    files, labels, hyper = classifier_data(args.data_set)
    source = dict(files)
    if args.smoke:
        files = {s: head_copy(p, work / "classifier" / f"{s}.jsonl", SMOKE_CLASSIFIER_ROWS[s]) for s, p in files.items()}
        hyper.update(SMOKE_CLASSIFIER_HYPER)
    texts = [json.loads(line)["text"] for p in files.values() for line in lines(p)]
    model_dir = build_encoder(work, shape=TINY_BERT if args.smoke else DISTILBERT, texts=texts, smoke=args.smoke)
    n_params = parameter_count(model_dir)
    rows = {s: len(lines(p)) for s, p in files.items()}
    print(f"classifier: DistilBERT shape{' (TINY smoke)' if args.smoke else ''}, {n_params / 1e6:.1f}M parameters (without the head), rows {rows}, "
          f"{hyper['epochs']} epochs, batch {hyper['batch_size']}, max_length {hyper['max_length']}", flush=True)
    part: dict[str, Any] = {
        "model": "DistilBERT shape, random-initialised, new 4-way head" + (" (TINY smoke shape)" if args.smoke else ""),
        "parameters_without_head": n_params, "shape": TINY_BERT if args.smoke else DISTILBERT,
        "data": {s: shown(p) for s, p in source.items()}, "data_set": args.data_set, "rows": rows, "labels": labels, "settings": hyper,
        "accuracy_note": "random-initialised model: test accuracy says nothing about a real model (4 classes: 0.25 is chance)",
        "method": "both in this one process, one after the other, after a CUDA warm-up; each wall is time.perf_counter() around the whole run",
        "goal": {"trainer_run_wall_s_max": CLASSIFIER_GOAL_S},
    }
    warm_up_device()
    for name, fn in (("baseline", lambda: hf_classifier(model_dir, files, labels, hyper, work)),
                     ("trainer_run", lambda: ours_classifier(model_dir, files, labels, hyper, work))):
        print(f"classifier: {name} ...", flush=True)
        part[name] = guarded(name, fn, strict=args.smoke)
        if "wall_s" in part[name]:
            print(f"classifier: {name}: {part[name]['wall_s']:.2f} s, test accuracy {part[name]['test_accuracy']:.4f} (random init)", flush=True)
        save(part)
    if "wall_s" in part["baseline"] and "wall_s" in part["trainer_run"]:
        part["speedup"] = round(part["baseline"]["wall_s"] / part["trainer_run"]["wall_s"], 3)
    if "wall_s" in part["trainer_run"]:
        part["goal"]["met"] = part["trainer_run"]["wall_s"] < CLASSIFIER_GOAL_S
    part["complete"] = True  # absent when the launch was stopped part-way
    save(part)
    return part


# --- results ---------------------------------------------------------------------------------------


def environment(smoke: bool) -> dict[str, Any]:
    import torch
    import transformers

    gpu = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name(0) if gpu else "cpu (smoke: not a measurement)" if smoke else "cpu",
        "smoke": smoke,
        "torch": torch.__version__, "cuda": torch.version.cuda if gpu else None, "transformers": transformers.__version__,
        "python": platform.python_version(), "cpu_count": os.cpu_count(),
    }


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out)


def tables(result: dict) -> str:
    """The Markdown tables a results section quotes."""
    text = [f"device: {result.get('device')}; torch {result.get('torch')}, transformers {result.get('transformers')}"]
    sft = result.get("sft")
    if sft:
        text += ["", f"SFT, {sft['model']}, {sft['parameters'] / 1e9:.3f}B parameters, {sft['records']} records ({sft['data']}), "
                     f"{sft['warmup']} warm-up + {sft['steps']} timed optimizer steps per run"
                     + (f" (hf_original: {sft['hf_original_warmup']} + {sft['hf_original_steps']})" if "hf_original_steps" in sft else ""), "",
                 "| run | tokens/s | MFU | peak memory GiB | note |", "| --- | ---: | ---: | ---: | --- |"]
        for name, r in sft["runs"].items():
            if "tokens_per_s" in r:
                note = ", ".join(f"{k} {r[k]}" for k in ("rows_per_step", "micro_batch", "gradient_checkpointing", "packing", "precision") if k in r)
                note += "; retried after out-of-memory" if "retried_after_oom" in r else ""
                text.append(f"| {name} | {r['tokens_per_s']:,.0f} | {r['mfu'] * 100:.1f} % | {r.get('peak_memory_gib')} | {note} |")
            else:
                text.append(f"| {name} | - | - | {r.get('peak_memory_gib')} | {r.get('error', 'not run')} |")
        if not sft.get("complete"):
            text.append("| (stopped) | | | | the launch ended before the remaining runs |")
        speedups = {k: v for k, v in sft.items() if k.startswith("speedup")}
        if speedups:
            text += ["", "; ".join(f"{k}: {v:.2f}x" for k, v in speedups.items()) + " (goal: trainer_run >= 40 % MFU and over 2x hf_tuned)"]
    clf = result.get("classifier")
    if clf:
        text += ["", f"classifier, {clf['model']}, rows {clf['rows']}, {clf['settings']['epochs']} epochs", "",
                 "| recipe | wall s | test accuracy (random init) |", "| --- | ---: | ---: |"]
        for name in ("baseline", "trainer_run"):
            r = clf.get(name, {})
            text.append(f"| {name} | {r['wall_s']:.2f} | {r['test_accuracy']:.4f} |" if "wall_s" in r else f"| {name} | - | {r.get('error', 'not run')} |")
        if not clf.get("complete"):
            text.append("| (stopped) | | the launch ended before this part finished |")
        if "speedup" in clf:
            met = clf["goal"].get("met")
            text += ["", f"speedup {clf['speedup']:.2f}x; goal trainer_run < {clf['goal']['trainer_run_wall_s_max']:.0f} s: {'met' if met else 'not met'}"]
    return "\n".join(text)


def merge(paths: list[Path]) -> dict[str, Any]:
    """Parts measured in separate launches (gpu_session.sh runs each under its own timeout)."""
    parts = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    devices = {p.get("device") for p in parts}
    if len(devices) > 1:
        sys.exit(f"bench: the parts were measured on different devices ({sorted(map(str, devices))}): merge only one machine's parts")
    # "finished" belongs to each launch: the merged record keeps the first launch's start only
    result = {k: v for k, v in parts[0].items() if k not in ("sft", "classifier", "finished")}
    result["merged_from"] = [p.name for p in paths]
    for p in parts:
        for key in ("sft", "classifier"):
            if key in p:
                if key in result:
                    sys.exit(f"bench: two of the files hold a '{key}' part: merge one of each")
                result[key] = p[key]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["sft", "classifier"], help="run one part (default: both)")
    ap.add_argument("--data", choices=["auto", "project", "seed"], default="auto", help="auto: the seed data when it is there")
    ap.add_argument("--steps", type=int, default=10, help="SFT: timed optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=5, help="SFT: untimed optimizer steps first")
    ap.add_argument("--original-steps", type=int, default=5, help="SFT: timed steps of hf_original (16 rows each, ~3.5 s on an H100)")
    ap.add_argument("--original-warmup", type=int, default=2, help="SFT: untimed steps of hf_original first")
    ap.add_argument("--batch", type=int, default=32, help="SFT: rows per optimizer step for hf_tuned and trainer_run")
    ap.add_argument("--max-length", type=int, default=2048, help="SFT: truncation and packed-row length")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "bf16-pure"], help="SFT: trainer run's precision")
    ap.add_argument("--compile", action="store_true", help="SFT: also trainer run with torch_compile (trainer_run_compile)")
    ap.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS, help="dense bf16 peak for MFU (H100 SXM: 989)")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes and few rows on whatever device there is; checks the code only")
    ap.add_argument("--merge", type=Path, nargs="+", metavar="JSON", help="combine part results into --out and print the tables")
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args()
    # `timeout` stops a run with SIGTERM: leave through SystemExit so the temporary folders
    # (a 1.5B model is 3 GB, its trained copy 6 GB) are deleted and the JSON so far stays
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.smoke:
        # tiny shapes gain nothing from threads, and on a shared CPU OpenMP's spinning threads made
        # the smoke run 5x slower; trainer run reads the same variable (common.default_threads)
        os.environ["OMP_NUM_THREADS"] = "1"

    if args.merge:
        result = merge(args.merge)
        write(result, args.out)
        print(tables(result) + f"\n\nwritten to {args.out}")
        return

    from trainer.offline import enforce_offline

    enforce_offline()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars, redrawn per tensor, would flood the session log
    if not cuda() and not args.smoke:
        print("bench: no CUDA device here: train_gpu.py measures GPU training speed and needs one (--smoke checks the code on CPU)", file=sys.stderr)
        sys.exit(2)
    out = SMOKE_RESULT if args.smoke and args.out == RESULT else args.out  # a smoke run never overwrites the measured results
    args.data_set = data_set(args.data)
    result: dict[str, Any] = {"bench": "train_gpu", **environment(args.smoke), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def saver(key: str) -> Callable[[dict], None]:
        def save(part: dict) -> None:
            result[key] = part
            write(result, out)
        return save

    parts = [args.only] if args.only else ["sft", "classifier"]
    for key in parts:
        with tempfile.TemporaryDirectory(prefix=f"bench-train-gpu-{key}-") as tmp:
            (sft_part if key == "sft" else classifier_part)(args, Path(tmp), save=saver(key))
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write(result, out)
    print("\n" + tables(result) + f"\n\nwritten to {out}")


if __name__ == "__main__":
    main()
