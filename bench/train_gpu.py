"""SFT throughput on one GPU: `trainer run` against the Hugging Face Trainer, tokens/s and MFU.

Three runs on the same random-initialised Qwen2.5-1.5B-shaped model and the same chat records,
in one launch (issue 6's anchors were measured the same way on an H100):
  1. HF Trainer, the original script's recipe: batch 2 x accumulation 8, gradient checkpointing, bf16;
  2. HF Trainer tuned as a competent user would: batch 32, no checkpointing, fused AdamW, bf16,
     padding to the longest row;
  3. `trainer run` (trainer.recipes.sft): bf16 autocast over fp32 master weights, fused AdamW,
     SDPA, rows packed without cross-document attention, the memory plan choosing micro-batch and
     checkpointing; `--precision bf16-pure` and `--compile` are the opt-in extras.
Each run takes --warmup optimizer steps, then is timed over --steps more (steady state).

tokens/s counts real tokens (padding excluded) per second. MFU = 6 * N * tokens/s / peak, with
N the parameter count (1.54e9; the tied embedding counted once stands for the LM head's matmul)
and peak the GPU's dense bf16 peak (H100 SXM: 989 TFLOP/s; --peak-tflops for another GPU). The
attention's own FLOPs (12 * layers * hidden * context per token) are not counted: at the records'
~200-token context they add under 2 %.

    .venv/bin/python bench/train_gpu.py                      # on a CUDA machine; bench/results/train_gpu.json
    .venv/bin/python bench/train_gpu.py --smoke              # CPU: a tiny shape, 2 steps each; checks the code, measures nothing

Without a CUDA device (and without --smoke) it exits with status 2 and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULT = ROOT / "bench" / "results" / "train_gpu.json"
H100_BF16_DENSE_TFLOPS = 989.0

QWEN25_15B = dict(
    hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
    vocab_size=151_936, max_position_embeddings=32_768, rope_theta=1_000_000.0, tie_word_embeddings=True, rms_norm_eps=1e-6,
)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=4096, max_position_embeddings=2048, tie_word_embeddings=True)


def data_file(choice: str) -> Path:
    seed = ROOT.parent / "shared" / "seed-data" / "data" / "finetune" / "model1_sft.train.jsonl"
    return seed if choice == "seed" else ROOT / "data" / "sft.train.jsonl"


def build_model(work: Path, *, shape: dict, data: Path) -> Path:
    """A random-initialised model of the shape, saved with a BPE tokenizer learnt from the data
    (no real Qwen tokenizer offline) and Qwen's chat template."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from trainer import tiny

    texts = [line for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = work / "model"
    tok = tiny.bpe_tokenizer(out, texts, vocab_size=min(8192, shape["vocab_size"]))
    torch.manual_seed(0)
    cfg = Qwen2Config(**shape, bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)  # stored bf16 (half the disk); loaded as each recipe wants
    model.save_pretrained(out, safe_serialization=True)
    return out


def encoded(model_dir: Path, data: Path, max_length: int) -> tuple[list[list[int]], list[list[int]]]:
    from transformers import AutoTokenizer

    from trainer import config
    from trainer import data as tdata
    from trainer.recipes import sft

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    cfg = config.from_dict({"task": "sft", "model_id": str(model_dir), "output_dir": "unused", "train_file": str(data), "max_length": max_length})
    ids, labels, _ = sft.encode_rows(cfg, tok, tdata.read_split(cfg, "train"))
    return ids, labels


def hf_run(model_dir: Path, ids, labels, *, batch: int, accum: int, checkpointing: bool, fused: bool, steps: int, warmup: int, work: Path, cpu: bool) -> dict[str, Any]:
    """One HF Trainer run; a callback times the optimizer steps after warm-up."""
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from trainer.recipes import common

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(ids)

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": ids[i], "labels": labels[i]}

    def collate(items: list[dict]) -> dict:  # padding to the longest row, as DataCollatorForSeq2Seq does
        return common.pad_batch([x["input_ids"] for x in items], pad_id=0, labels=[x["labels"] for x in items])

    clock: dict[str, Any] = {"tokens": 0, "t0": None, "t1": None}
    rows_per_step = batch * accum
    mean_len = sum(len(x) for x in ids) / len(ids)

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if state.global_step == warmup:
                clock["t0"] = time.perf_counter()
            elif state.global_step == warmup + steps:
                clock["t1"] = time.perf_counter()
                control.should_training_stop = True

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="sdpa")
    args = TrainingArguments(
        output_dir=str(work / "hf"), per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
        gradient_checkpointing=checkpointing, bf16=not cpu, use_cpu=cpu, optim="adamw_torch_fused" if fused else "adamw_torch",
        learning_rate=2e-5, max_steps=warmup + steps, save_strategy="no", report_to="none", disable_tqdm=True,
        logging_strategy="no", dataloader_drop_last=True, remove_unused_columns=False,
    )
    Trainer(model=model, args=args, train_dataset=Rows(), data_collator=collate, callbacks=[Timer()]).train()
    seconds = clock["t1"] - clock["t0"]
    # the sampler is random: steps see rows of the mean length on average
    return {"tokens_per_s": steps * rows_per_step * mean_len / seconds, "seconds": seconds, "steps": steps}


def ours_run(model_dir: Path, data: Path, *, batch: int, steps: int, warmup: int, work: Path, precision: str, compile_: bool, max_length: int) -> dict[str, Any]:
    from trainer import config
    from trainer.recipes import run
    from trainer.resolve import ResolvedModel

    cfg = config.from_dict({
        "task": "sft", "model_id": str(model_dir), "output_dir": str(work / "ours"), "train_file": str(data),
        "batch_size": batch, "max_steps": warmup + steps, "epochs": 100, "max_length": max_length, "learning_rate": 2e-5,
        "precision": precision, "torch_compile": compile_, "packing": True,
    })
    model = ResolvedModel(repo_id="bench/qwen2.5-1.5b-shape", path=model_dir, commit=None, bundle_path=None, bundle_sha256=None, source="local")
    metrics = run(cfg, model=model).metrics
    timed = [t for t in metrics["step_throughput"] if t[0] > warmup]
    tokens, seconds = sum(t[1] for t in timed), sum(t[2] for t in timed)
    return {"tokens_per_s": tokens / seconds, "seconds": seconds, "steps": len(timed), "precision": metrics["precision"],
            "micro_batch": metrics["micro_batch"], "gradient_checkpointing": metrics["gradient_checkpointing"],
            "packing": metrics["packing"], "attention": metrics["attention"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=["project", "seed"], default="project")
    ap.add_argument("--steps", type=int, default=10, help="timed optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=5, help="untimed optimizer steps first")
    ap.add_argument("--batch", type=int, default=32, help="rows per optimizer step for the tuned runs")
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "bf16-pure"], help="trainer run's precision")
    ap.add_argument("--compile", action="store_true", help="trainer run with torch_compile")
    ap.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS)
    ap.add_argument("--smoke", action="store_true", help="tiny shape on whatever device there is; checks the code only")
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args()

    from trainer.offline import enforce_offline

    enforce_offline()
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        sys.exit("bench: no CUDA device here: train_gpu.py measures GPU throughput and needs one (--smoke checks the code on CPU)")
    shape = TINY if args.smoke else QWEN25_15B
    steps, warmup = (2, 1) if args.smoke else (args.steps, args.warmup)
    data = data_file(args.data)
    with tempfile.TemporaryDirectory(prefix="bench-train-gpu-") as tmp:
        work = Path(tmp)
        model_dir = build_model(work, shape=shape, data=data)
        ids, labels = encoded(model_dir, data, args.max_length)
        n_params = sum(v.numel() for v in __import__("safetensors.torch", fromlist=["load_file"]).load_file(str(model_dir / "model.safetensors")).values())
        runs: dict[str, dict] = {}
        print(f"model: Qwen2.5-1.5B shape{' (TINY smoke)' if args.smoke else ''}, {n_params / 1e9:.3f}B parameters, {len(ids)} records", flush=True)
        runs["hf_original"] = hf_run(model_dir, ids, labels, batch=2, accum=8, checkpointing=True, fused=False, steps=steps, warmup=warmup, work=work, cpu=not cuda)
        runs["hf_tuned"] = hf_run(model_dir, ids, labels, batch=args.batch, accum=1, checkpointing=False, fused=True, steps=steps, warmup=warmup, work=work, cpu=not cuda)
        runs["trainer_run"] = ours_run(model_dir, data, batch=args.batch, steps=steps, warmup=warmup, work=work, precision=args.precision if cuda else "fp32", compile_=args.compile, max_length=args.max_length)
    peak = args.peak_tflops * 1e12
    for r in runs.values():
        r["mfu"] = 6 * n_params * r["tokens_per_s"] / peak
    device = torch.cuda.get_device_name(0) if cuda else "cpu (smoke: not a measurement)"
    result = {
        "bench": "train_gpu", "device": device, "peak_tflops": args.peak_tflops, "parameters": n_params,
        "shape": shape, "data": str(data.relative_to(ROOT.parent)), "records": len(ids), "steps": steps, "warmup": warmup,
        "mfu_formula": "6 * parameters * tokens_per_s / peak (attention FLOPs not counted)",
        "runs": runs, "speedup_vs_hf_tuned": runs["trainer_run"]["tokens_per_s"] / runs["hf_tuned"]["tokens_per_s"],
        "speedup_vs_hf_original": runs["trainer_run"]["tokens_per_s"] / runs["hf_original"]["tokens_per_s"],
        "torch": torch.__version__,
    }
    print("\n| run | tokens/s | MFU |\n| --- | ---: | ---: |")
    for name, r in runs.items():
        print(f"| {name} | {r['tokens_per_s']:,.0f} | {r['mfu'] * 100:.1f} % |")
    print(f"\ntrainer run vs tuned HF Trainer: {result['speedup_vs_hf_tuned']:.2f}x; device {device}")
    out = args.out if not args.smoke or args.out != RESULT else Path(tempfile.gettempdir()) / "train_gpu.smoke.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp_out, out)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
