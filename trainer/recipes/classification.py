"""Sequence classification: fine-tune an encoder (DistilBERT, MiniLM, ...) on text -> label rows.

setup() loads the base model with a new head sized from `labels` and tokenises every split once;
train() is the loop, in plain PyTorch; the best epoch by validation macro-F1 is what gets saved.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from common import progress
from trainer import data, dist, tokencache
from trainer.config import Config
from trainer.metrics import classification_metrics
from trainer.recipes import common
from trainer.resolve import ResolvedModel

ENCODER_MAX_LENGTH = 512  # position-embedding limit of BERT-family encoders


def max_length(cfg: Config, tokenizer: Any) -> int:
    """The length inputs are truncated to: the config's, else the tokenizer's, capped at the encoder's."""
    return cfg.max_length or min(int(tokenizer.model_max_length), ENCODER_MAX_LENGTH)


def encode(cfg: Config, tokenizer: Any, rows: list[data.Row]) -> tuple[list[list[int]], list[int]]:
    """Token ids (truncated to max_length, special tokens included) and label ids."""
    texts, labels = zip(*(data.classification_example(cfg, r) for r in rows))
    limit = max_length(cfg, tokenizer)
    ids = tokenizer(list(texts), truncation=True, max_length=limit)["input_ids"]
    return ids, list(labels)


ENCODING_VERSION = "classification-1"  # bump when encode() changes: it keys the token cache


def encode_split(cfg: Config, tokenizer: Any, split: str, *, model_dir: str | Path) -> tuple[list[list[int]], list[int]]:
    """encode() of a whole split, from the token cache when the data and tokenizer are unchanged."""
    limit = max_length(cfg, tokenizer)
    settings = {"task": cfg.task, "text_field": cfg.text_field, "label_field": cfg.label_field, "labels": list(cfg.labels), "max_length": limit}
    value, _hit = tokencache.cached(
        compute=lambda: encode(cfg, tokenizer, data.read_split(cfg, split)),
        data_files=cfg.files(split), model_dir=model_dir, settings=settings, version=ENCODING_VERSION, output_dir=cfg.output_dir,
    )
    ids, labels = value
    return ids, labels


def load(path: str | Path, cfg: Config, rt: common.Runtime, *, new_head: bool):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer  # deferred: a Hugging Face import waits for offline (and takes seconds)

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    kwargs: dict[str, Any] = {}
    if new_head:
        kwargs = {
            "num_labels": len(cfg.labels),
            "id2label": dict(enumerate(cfg.labels)),
            "label2id": {name: i for i, name in enumerate(cfg.labels)},
            "ignore_mismatched_sizes": True,  # a base that already has a head of another size gets a new one
        }
    if not new_head:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), dtype=rt.param_dtype, trust_remote_code=cfg.trust_remote_code, **kwargs
        )
        return model.to(rt.device), tokenizer
    from transformers.utils import logging as hf_logging  # deferred: a Hugging Face import waits for offline (and takes seconds)

    # the head is new on purpose: transformers' "LOAD REPORT ... newly initialized ... Consider
    # training" is noise here, so it is silenced and said in one line of our own
    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), dtype=rt.param_dtype, trust_remote_code=cfg.trust_remote_code, **kwargs
        )
    finally:
        hf_logging.set_verbosity(before)
    return model.to(rt.device), tokenizer


@torch.no_grad()
def predict_ids(model: Any, ids: list[list[int]], *, pad_id: int, batch_size: int, rt: common.Runtime) -> torch.Tensor:
    """Class probabilities for every row (in input order); rows go in length order so that
    dynamic padding wastes little."""
    model.eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    probs = torch.empty((len(ids), model.config.num_labels))
    for chunk in common.batch_indices(order, batch_size):
        batch = common.to_device(common.pad_batch([ids[i] for i in chunk], pad_id=pad_id), rt.device)
        with rt.autocast():
            logits = model(**batch).logits
        probs[chunk] = torch.softmax(logits.float(), dim=-1).cpu()
    return probs


def evaluate_ids(cfg: Config, model: Any, ids: list[list[int]], labels: list[int], *, pad_id: int, rt: common.Runtime) -> dict[str, Any]:
    probs = predict_ids(model, ids, pad_id=pad_id, batch_size=cfg.eval_bs, rt=rt)
    pred = probs.argmax(dim=-1).tolist()
    picked = probs[torch.arange(len(labels)), torch.tensor(labels)]
    metrics = classification_metrics(labels, pred, cfg.labels)
    metrics["eval_loss"] = float(-torch.log(picked.clamp_min(1e-12)).mean())
    return metrics


def save_model(model: Any, tokenizer: Any, out: Path) -> None:
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def run(cfg: Config, *, model: ResolvedModel, resume: bool = False) -> common.RunResult:
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    # --- setup -----------------------------------------------------------------------------------
    rt = common.setup_runtime(cfg)
    common.quiet_warnings()
    net, tokenizer = load(model.path, cfg, rt, new_head=True)
    names = f" ({', '.join(cfg.labels)})" if len(cfg.labels) <= 8 else ""
    common.log(f"classifier head: new, {len(cfg.labels)} labels{names}, randomly initialised: training learns it")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    splits = {s: encode_split(cfg, tokenizer, s, model_dir=model.path) for s in ("train", "valid", "test") if cfg.files(s)}
    train_ids, train_labels = splits["train"]
    lengths = [len(x) for x in train_ids]
    world = rt.dist.world_size
    global_batch = cfg.batch_size * world  # batch_size is per device
    batches_per_epoch = len(dist.shard_batches(common.batch_indices(range(len(train_ids)), global_batch), rt.dist))
    steps = common.total_steps(cfg, batches_per_epoch)
    train_net = dist.wrap(net, rt.dist, device=rt.device)
    opt, sched = common.build_optimizer(net, cfg, steps=steps, device=rt.device)
    scaler = common.grad_scaler(rt)
    state = common.start_state(cfg, net, opt, sched, resume=resume, rt=rt)
    if rt.is_main:
        common.log(f"classification: {len(train_ids)} train rows, {steps} steps, {rt.device.type} {rt.precision}" + (f", {world} processes ({rt.dist.mode})" if world > 1 else ""))

    # --- train -----------------------------------------------------------------------------------
    accum = cfg.gradient_accumulation_steps
    step_log = progress.Steps(total=steps, done=state.step, rows_per_step=global_batch * accum, enabled=rt.is_main)  # off a terminal
    for epoch in range(state.epoch, common.num_epochs(cfg, batches_per_epoch)):
        train_net.train()
        plan = common.length_grouped_batches(lengths, batch_size=global_batch, seed=cfg.seed, epoch=epoch)
        batches = dist.shard_batches(plan, rt.dist)
        running = torch.zeros((), device=rt.device)
        try:
            for i, chunk in common.bar(common.iter_epoch_batches(batches, skip=state.batches_done), total=len(batches) - state.batches_done, desc=f"epoch {epoch + 1}"):
                batch = common.pad_batch([train_ids[j] for j in chunk], pad_id=pad_id)
                batch["labels"] = torch.tensor([train_labels[j] for j in chunk])
                last = (i + 1) % accum == 0 or i + 1 == len(batches)
                with dist.no_sync(train_net, skip=not last):
                    with rt.autocast():
                        loss = train_net(**common.to_device(batch, rt.device)).loss / accum
                    (scaler.scale(loss) if scaler else loss).backward()
                running += loss.detach()
                if last:
                    common.optimizer_step(train_net, opt, sched, max_grad_norm=cfg.max_grad_norm, scaler=scaler)
                    state.step += 1
                    state.batches_done = i + 1
                    # a short last accumulation is scaled by 1/accum too; report its mean
                    span = (i % accum) + 1
                    state.loss_curve.append([state.step, float(dist.all_reduce_mean(running, rt.dist)) * accum / span])
                    step_log.step(state.step, state.loss_curve[-1][1])
                    running.zero_()
                    if state.step >= steps:
                        break
        except KeyboardInterrupt:
            raise common.interrupted(net, opt, sched, state, cfg, rt=rt) from None
        record: dict[str, Any] = {"epoch": epoch + 1, "step": state.step, "train_loss": common.epoch_train_loss(state)}
        if "valid" in splits and rt.is_main:  # rank 0 evaluates and selects; the others wait below
            record["valid"] = evaluate_ids(cfg, net, *splits["valid"], pad_id=pad_id, rt=rt)
            key = common.selection_key(cfg.task, record["valid"])
            if common.improved(key, state.best_key):
                state.best_key, state.best_epoch = key, epoch + 1
                if state.step < steps:  # after the last epoch the best weights are the ones in memory
                    common.save_best(net, cfg.output_dir, epoch=epoch + 1)
        if rt.is_main:
            common.log(common.epoch_line(record, ("eval_loss", "accuracy", "macro_f1")))
        state.history.append(record)
        state.epoch, state.batches_done = epoch + 1, 0
        done = state.step >= steps
        if cfg.save_every_epoch and rt.is_main:
            save_model(net, tokenizer, Path(cfg.output_dir) / f"epoch-{epoch + 1}")
        if not done and rt.is_main:  # the last epoch's resume state would be deleted a moment later
            common.save_checkpoint(net, opt, sched, state, cfg.output_dir)
        dist.barrier(rt.dist)
        if done:
            break

    # --- save ------------------------------------------------------------------------------------
    if not rt.is_main:
        dist.shutdown(rt.dist)
        return common.RunResult(output_dir=Path(cfg.output_dir), metrics={}, wall_time_s=time.perf_counter() - t0)
    if state.best_epoch is not None and state.best_epoch != state.epoch:
        common.load_best(net, cfg.output_dir, epoch=state.best_epoch)
    final: dict[str, Any] = {}
    for split in ("valid", "test"):
        if split in splits:
            final[split] = common.best_valid(state) if split == "valid" else None
            final[split] = final[split] or evaluate_ids(cfg, net, *splits[split], pad_id=pad_id, rt=rt)
    stage = common.staging_dir(cfg.output_dir)
    save_model(net, tokenizer, stage)
    sizes = {s: len(v[0]) for s, v in splits.items()}
    result = common.finish(cfg, model, stage=stage, state=state, final=final, sizes=sizes, rt=rt, started=started, t0=t0, evaluate_saved=evaluate_saved)
    dist.shutdown(rt.dist)
    return result


# --- trainer eval / predict on a saved model -------------------------------------------------------


def evaluate_saved(cfg: Config, model_dir: Path, *, split: str, rt: common.Runtime, base: bool = False) -> dict[str, Any]:
    """Metrics of the model in model_dir on `split`; `base`: an untrained base model (trainer eval CONFIG)."""
    net, tokenizer = load(model_dir, cfg, rt, new_head=base)
    ids, labels = encode(cfg, tokenizer, data.read_split(cfg, split))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return evaluate_ids(cfg, net, ids, labels, pad_id=pad_id, rt=rt)


def predict_saved(cfg: Config, model_dir: Path, texts: list[str], *, rt: common.Runtime) -> list[dict[str, Any]]:
    net, tokenizer = load(model_dir, cfg, rt, new_head=False)
    limit = max_length(cfg, tokenizer)
    ids = tokenizer(texts, truncation=True, max_length=limit)["input_ids"]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    probs = predict_ids(net, ids, pad_id=pad_id, batch_size=cfg.eval_bs, rt=rt)
    names = [net.config.id2label[i] for i in range(net.config.num_labels)]
    return [
        {"text": t, "label": names[int(p.argmax())], "probabilities": {n: float(x) for n, x in zip(names, p)}}
        for t, p in zip(texts, probs)
    ]
