"""Sentence embeddings: fine-tune a sentence-transformers model on (text_1, text_2, label?) pairs.

The loss comes from the data (`loss: auto`): pairs without labels, or only positive ones, train
with in-batch negatives (MultipleNegativesRankingLoss); pairs labelled with negatives or scores
train with CosineSimilarityLoss; `loss: contrastive` picks OnlineContrastiveLoss. The loss modules
are sentence-transformers' own, driven from this plain loop (no SentenceTransformerTrainer, so no
dependency on the `datasets` package).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from common import progress
from trainer import data
from trainer.config import Config
from trainer.errors import TrainerError
from trainer.metrics import pair_metrics, retrieval_metrics
from trainer.recipes import common
from trainer.resolve import ResolvedModel

Pair = tuple[str, str, "float | None"]


def load(path: str | Path, cfg: Config, rt: common.Runtime):
    from sentence_transformers import SentenceTransformer  # deferred: a Hugging Face import waits for offline (and takes seconds)

    model = SentenceTransformer(str(path), device=str(rt.device), trust_remote_code=cfg.trust_remote_code)
    if cfg.max_length:
        model.max_seq_length = cfg.max_length
    return model


def features(model: Any, texts: list[str], device: torch.device) -> dict[str, Any]:
    """Tokenised, padded to this batch's longest text (sentence-transformers pads per call)."""
    prep = getattr(model, "preprocess", None) or model.tokenize  # `tokenize` before ST 5.4
    return common.to_device(prep(texts), device)


def choose_loss(cfg: Config, pairs: list[Pair]) -> str:
    """The loss name for `loss: auto`, or the configured one once the data is known to fit it."""
    labelled = [p[2] for p in pairs if p[2] is not None]
    if labelled and len(labelled) != len(pairs):
        raise TrainerError(f"{len(pairs) - len(labelled)} of {len(pairs)} training pairs have no '{cfg.label_field}': label every pair or none")
    negatives = any(l < 0.5 for l in labelled)
    if cfg.loss == "auto":
        return "cosine" if negatives else "mnrl"
    if cfg.loss in ("cosine", "contrastive") and not labelled:
        raise TrainerError(f"loss {cfg.loss} needs labelled pairs and the training data has no '{cfg.label_field}': use loss: auto or mnrl")
    return cfg.loss


def build_loss(name: str, model: Any):
    from sentence_transformers.sentence_transformer import losses  # deferred: a Hugging Face import waits for offline (and takes seconds)

    return {
        "mnrl": losses.MultipleNegativesRankingLoss,
        "cosine": losses.CosineSimilarityLoss,
        "contrastive": losses.OnlineContrastiveLoss,
    }[name](model)


LOSS_NAMES = {"mnrl": "MultipleNegativesRankingLoss (in-batch negatives)", "cosine": "CosineSimilarityLoss", "contrastive": "OnlineContrastiveLoss"}


def distinct_batches(order: list[int], pairs: list[Pair], batch_size: int) -> list[list[int]]:
    """Batches in which no text repeats: with in-batch negatives, a duplicate would be scored as a
    negative of itself. Rows that clash wait for a later batch (so the last batches may be small)."""
    batches, remaining = [], list(order)
    while remaining:
        batch, seen, rest = [], set(), []
        for i in remaining:
            a, b, _ = pairs[i]
            if len(batch) < batch_size and a not in seen and b not in seen:
                batch.append(i)
                seen.update((a, b))
            else:
                rest.append(i)
        batches.append(batch)
        remaining = rest
    return batches


def epoch_batches(name: str, pairs: list[Pair], cfg: Config, epoch: int) -> list[list[int]]:
    order = common.epoch_order(len(pairs), seed=cfg.seed, epoch=epoch)
    if name == "mnrl":
        return distinct_batches(order, pairs, cfg.batch_size)
    return common.batch_indices(order, cfg.batch_size)


@torch.no_grad()
def embed(model: Any, texts: list[str], *, batch_size: int) -> torch.Tensor:
    emb = model.encode(texts, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
    return emb.float().cpu()


def evaluate_pairs(model: Any, pairs: list[Pair], *, batch_size: int) -> dict[str, Any]:
    """Pair metrics (when labelled) and retrieval over the pairs: queries are the distinct
    text_1 of positive pairs, the corpus every distinct text_2."""
    texts = list(dict.fromkeys(t for a, b, _ in pairs for t in (a, b)))
    emb = torch.nn.functional.normalize(embed(model, texts, batch_size=batch_size), dim=-1)
    at = {t: i for i, t in enumerate(texts)}
    sims = [float(emb[at[a]] @ emb[at[b]]) for a, b, _ in pairs]
    out: dict[str, Any] = {"n": len(pairs)}
    labels = [l for _, _, l in pairs]
    binary = all(l is not None and l in (0.0, 1.0) for l in labels)
    if all(l is not None for l in labels) and len(set(labels)) > 1:
        out.update(pair_metrics(sims, labels))
    positive = [(a, b) for a, b, l in pairs if l is None or l >= 0.5]
    queries = list(dict.fromkeys(a for a, _ in positive))
    corpus = list(dict.fromkeys(b for _, b, _ in pairs))
    if queries:
        scores = emb[[at[q] for q in queries]] @ emb[[at[c] for c in corpus]].T
        ranked = scores.topk(min(10, len(corpus)), dim=-1).indices.tolist()
        where = {c: i for i, c in enumerate(corpus)}
        relevant = [{where[b] for a, b in positive if a == q} for q in queries]
        out.update(retrieval_metrics(ranked, relevant, k=10))
    # the one number best-model selection uses: AP for 0/1 labels, Spearman for scores,
    # MRR@10 when there are no negatives to separate
    if "cosine_average_precision" in out and binary:
        out["main_score_name"], out["main_score"] = "cosine_average_precision", out["cosine_average_precision"]
    elif "spearman" in out:
        out["main_score_name"], out["main_score"] = "spearman", out["spearman"]
    else:
        out["main_score_name"], out["main_score"] = "mrr@10", out.get("mrr@10", float("nan"))
    return out


def read_pairs(cfg: Config, split: str) -> list[Pair]:
    return [data.pair_example(cfg, r) for r in data.read_split(cfg, split)]


def save_model(model: Any, out: Path) -> None:
    # safetensors is sentence-transformers' default; no model card (it would describe a trainer run
    # that did not happen: report.md is this run's card)
    model.save(str(out), safe_serialization=True, create_model_card=False)


def run(cfg: Config, *, model: ResolvedModel, resume: bool = False) -> common.RunResult:
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    # --- setup -----------------------------------------------------------------------------------
    rt = common.setup_runtime(cfg)
    if rt.dist.enabled:
        raise TrainerError(
            "embeddings training runs in one process (in-batch negatives would need every rank's embeddings): "
            "run 'trainer run CONFIG' without torchrun"
        )
    net = load(model.path, cfg, rt)
    splits = {s: read_pairs(cfg, s) for s in ("train", "valid", "test") if cfg.files(s)}
    loss_name = choose_loss(cfg, splits["train"])
    train = splits["train"]
    if loss_name == "mnrl":
        dropped = sum(1 for p in train if p[2] is not None and p[2] < 0.5)
        train = [p for p in train if p[2] is None or p[2] >= 0.5]  # in-batch negatives take only positives
        if dropped:
            common.log(f"mnrl: {dropped} negative pairs left out of training (in-batch negatives replace them)")
    loss_fn = build_loss(loss_name, net)
    batches_per_epoch = len(epoch_batches(loss_name, train, cfg, 0))
    steps = common.total_steps(cfg, batches_per_epoch)
    opt, sched = common.build_optimizer(net, cfg, steps=steps, device=rt.device)
    scaler = common.grad_scaler(rt)
    state = common.start_state(cfg, net, opt, sched, resume=resume)
    common.log(f"embeddings: {len(train)} train pairs, loss {LOSS_NAMES[loss_name]}, {steps} steps, {rt.device.type} {rt.precision}")

    # --- train -----------------------------------------------------------------------------------
    accum = cfg.gradient_accumulation_steps
    step_log = progress.Steps(total=steps, done=state.step, rows_per_step=cfg.batch_size * accum)  # off a terminal
    for epoch in range(state.epoch, common.num_epochs(cfg, batches_per_epoch)):
        net.train()
        batches = epoch_batches(loss_name, train, cfg, epoch)
        running = torch.zeros((), device=rt.device)
        try:
            for i, chunk in common.bar(common.iter_epoch_batches(batches, skip=state.batches_done), total=len(batches) - state.batches_done, desc=f"epoch {epoch + 1}"):
                fa = features(net, [train[j][0] for j in chunk], rt.device)
                fb = features(net, [train[j][1] for j in chunk], rt.device)
                labels = torch.tensor([train[j][2] if train[j][2] is not None else 1.0 for j in chunk], device=rt.device)
                with rt.autocast():
                    loss = loss_fn([fa, fb], labels) / accum
                (scaler.scale(loss) if scaler else loss).backward()
                running += loss.detach()
                if (i + 1) % accum == 0 or i + 1 == len(batches):
                    common.optimizer_step(net, opt, sched, max_grad_norm=cfg.max_grad_norm, scaler=scaler)
                    state.step += 1
                    state.batches_done = i + 1
                    state.loss_curve.append([state.step, float(running) * accum / ((i % accum) + 1)])
                    step_log.step(state.step, state.loss_curve[-1][1])
                    running.zero_()
                    if state.step >= steps:
                        break
        except KeyboardInterrupt:
            raise common.interrupted(net, opt, sched, state, cfg) from None
        record: dict[str, Any] = {"epoch": epoch + 1, "step": state.step, "train_loss": common.epoch_train_loss(state)}
        if "valid" in splits:
            record["valid"] = evaluate_pairs(net, splits["valid"], batch_size=cfg.eval_bs)
            key = common.selection_key(cfg.task, record["valid"])
            if common.improved(key, state.best_key):
                state.best_key, state.best_epoch = key, epoch + 1
                common.save_best(net, cfg.output_dir, epoch=epoch + 1)
        common.log(common.epoch_line(record, ("main_score", "cosine_accuracy", "spearman", "mrr@10")))
        state.history.append(record)
        state.epoch, state.batches_done = epoch + 1, 0
        if cfg.save_every_epoch:
            save_model(net, Path(cfg.output_dir) / f"epoch-{epoch + 1}")
        common.save_checkpoint(net, opt, sched, state, cfg.output_dir)
        if state.step >= steps:
            break

    # --- save ------------------------------------------------------------------------------------
    if state.best_epoch is not None and state.best_epoch != state.epoch:
        common.load_best(net, cfg.output_dir, epoch=state.best_epoch)
    final = {s: evaluate_pairs(net, splits[s], batch_size=cfg.eval_bs) for s in ("valid", "test") if s in splits}
    stage = common.staging_dir(cfg.output_dir)
    save_model(net, stage)
    sizes = {s: len(v) for s, v in splits.items()}
    extra = {"loss_function": LOSS_NAMES[loss_name]}
    return common.finish(cfg, model, stage=stage, state=state, final=final, sizes=sizes, rt=rt, started=started, t0=t0, evaluate_saved=evaluate_saved, extra=extra)


# --- trainer eval / predict on a saved model -------------------------------------------------------


def evaluate_saved(cfg: Config, model_dir: Path, *, split: str, rt: common.Runtime, base: bool = False) -> dict[str, Any]:
    """Metrics of the model in model_dir on `split`; `base`: an untrained base model (trainer eval CONFIG)."""
    return evaluate_pairs(load(model_dir, cfg, rt), read_pairs(cfg, split), batch_size=cfg.eval_bs)


def predict_saved(cfg: Config, model_dir: Path, texts: list[str], *, rt: common.Runtime) -> list[dict[str, Any]]:
    if len(texts) < 2:
        raise TrainerError("an embeddings model compares texts: give at least two TEXT arguments")
    emb = embed(load(model_dir, cfg, rt), texts, batch_size=cfg.eval_bs)
    unit = torch.nn.functional.normalize(emb, dim=-1)
    sim = (unit @ unit.T).tolist()
    return [{"text": t, "norm": float(emb[i].norm()), "similarity": [round(s, 6) for s in sim[i]]} for i, t in enumerate(texts)]
