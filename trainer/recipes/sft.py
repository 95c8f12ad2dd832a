"""Supervised fine-tuning of a causal LM on chat records, with loss only on the assistant's tokens.

Each record (messages, system+input+output, or prompt+response; see `trainer.data`) is rendered
with the tokenizer's own chat template. The assistant spans are found by rendering the
conversation's prefixes: the text that turn i adds after the generation prompt is the assistant
content plus its end-of-turn token. That works for templates without `{% generation %}` markers
(Qwen's, Llama's). Labels are -100 everywhere else, so the system prompt, the user turn and the
template's scaffolding are context, never targets.

With `lora_r` set, LoRA adapters (peft) are trained on every linear projection; the saved model
has the adapters merged into its weights, so eval, predict and `mirror pack` treat it like any
other model, and the adapter alone is kept in `adapter/` for whoever wants to ship just that.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from common import progress
from trainer import data, dist, memory, packing, tokencache
from trainer.config import Config
from trainer.errors import TrainerError
from trainer.metrics import perplexity
from trainer.recipes import common
from trainer.resolve import ResolvedModel
from trainer.rundir import read_lineage

DEFAULT_MAX_LENGTH = 2048  # when the config leaves it open: instruct models ship 32k+ limits nobody trains at
IGNORE = -100  # the label value the loss skips


# --- the assistant-only mask -----------------------------------------------------------------------


def assistant_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of each assistant turn's content plus
    its end-of-turn token (trailing whitespace after that token is template layout, not target)."""
    render = lambda msgs, gen=False: tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)  # noqa: E731
    full = render(messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix, upto = render(messages[:i], True), render(messages[: i + 1])
        if not (upto.startswith(prefix) and full.startswith(upto)):
            raise TrainerError(
                "the tokenizer's chat template renders a conversation differently from its prefixes, "
                "so the assistant turns cannot be located for the loss mask: use a model whose template is prefix-stable"
            )
        turn = upto[len(prefix):].rstrip()
        spans.append((len(prefix), len(prefix) + len(turn)))
    return full, spans


def encode_chat(tokenizer: Any, messages: list[dict[str, str]], *, max_length: int) -> tuple[list[int], list[int]]:
    """input_ids and labels (assistant tokens only, others -100), right-truncated to max_length."""
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)  # the template adds BOS itself
    ids = list(enc["input_ids"])
    labels = [tok if any(a <= start < b for a, b in spans) else IGNORE for tok, (start, _) in zip(ids, enc["offset_mapping"])]
    return ids[:max_length], labels[:max_length]


def encode_rows(cfg: Config, tokenizer: Any, rows: list[data.Row]) -> tuple[list[list[int]], list[list[int]], int]:
    """Encoded records; records whose assistant turns fall entirely past max_length are dropped
    (they would train nothing) and counted."""
    limit = max_length(cfg, tokenizer)
    ids, labels, dropped = [], [], 0
    for row in rows:
        i, l = encode_chat(tokenizer, data.sft_messages(row), max_length=limit)
        if all(x == IGNORE for x in l[1:]):  # the first label is never predicted
            dropped += 1
            continue
        ids.append(i)
        labels.append(l)
    return ids, labels, dropped


def max_length(cfg: Config, tokenizer: Any) -> int:
    return cfg.max_length or min(int(tokenizer.model_max_length), DEFAULT_MAX_LENGTH)


ENCODING_VERSION = "sft-1"  # bump when encode_chat() changes: it keys the token cache


def encode_split(cfg: Config, tokenizer: Any, split: str, *, model_dir: str | Path) -> tuple[list[list[int]], list[list[int]], int, int]:
    """encode_rows() of a whole split, from the token cache when nothing it reads changed; also
    the split's record count."""
    def compute() -> list[Any]:
        rows = data.read_split(cfg, split)
        return [*encode_rows(cfg, tokenizer, rows), len(rows)]

    settings = {"task": cfg.task, "max_length": max_length(cfg, tokenizer)}
    value, _hit = tokencache.cached(compute=compute, data_files=cfg.files(split), model_dir=model_dir, settings=settings, version=ENCODING_VERSION, output_dir=cfg.output_dir)
    ids, labels, dropped, n = value
    return ids, labels, dropped, n


# --- model -----------------------------------------------------------------------------------------


def load(path: str | Path, cfg: Config, rt: common.Runtime):
    from transformers import AutoModelForCausalLM, AutoTokenizer  # deferred: a Hugging Face import waits for offline (and takes seconds)

    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=cfg.trust_remote_code)
    if not getattr(tokenizer, "chat_template", None):
        raise TrainerError(f"the tokenizer in {path} has no chat template: SFT needs one (use an instruct/chat model)")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padded positions are masked out of attention and loss
    # fp32 master weights: autocast gives bf16 compute where the device supports it (bf16-pure: bf16 weights)
    kwargs = {"dtype": rt.param_dtype, "trust_remote_code": cfg.trust_remote_code}
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="sdpa", **kwargs)  # fused attention kernels
    except (ValueError, ImportError):  # an architecture without an SDPA path: its default attention
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    return model.to(rt.device), tokenizer


def add_lora(model: Any, cfg: Config) -> Any:
    from peft import LoraConfig, get_peft_model  # deferred: a Hugging Face import waits for offline (and takes seconds)

    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha or 2 * cfg.lora_r,
        lora_dropout=cfg.lora_dropout,
        target_modules="all-linear",  # every linear projection (attention and MLP), not the LM head
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


@torch.no_grad()
def eval_loss(model: Any, ids: list[list[int]], labels: list[list[int]], *, pad_id: int, batch_size: int, rt: common.Runtime) -> dict[str, Any]:
    """Mean loss per target token over the whole split (not a mean of batch means), and perplexity."""
    model.eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    total, tokens = 0.0, 0
    for chunk in common.batch_indices(order, batch_size):
        batch = common.to_device(common.pad_batch([ids[i] for i in chunk], pad_id=pad_id, labels=[labels[i] for i in chunk]), rt.device)
        n = int((batch["labels"][:, 1:] != IGNORE).sum())  # the model shifts labels by one
        with rt.autocast():
            loss = model(**batch).loss
        total += float(loss) * n
        tokens += n
    loss = total / max(1, tokens)
    return {"n": len(ids), "target_tokens": tokens, "eval_loss": loss, "perplexity": perplexity(loss)}


def shared_system_prompt(rows: list[data.Row]) -> str | None:
    """The system prompt every training record uses, if there is one: predict reuses it."""
    systems = {next((m["content"] for m in data.sft_messages(r) if m["role"] == "system"), None) for r in rows}
    return systems.pop() if len(systems) == 1 else None


def save_model(model: Any, tokenizer: Any, out: Path, *, lora: bool) -> Any:
    """Save full weights as safetensors; with LoRA also the adapter, then the merged model."""
    if lora:
        model.save_pretrained(str(out / "adapter"), safe_serialization=True)
        model = model.merge_and_unload()
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return model


def runtime_plan(cfg: Config, net: Any, rt: common.Runtime, *, seq_len: int) -> memory.MemoryPlan | None:
    """On a GPU: micro-batch and gradient checkpointing from the memory estimate. On CPU the
    config is taken as it is (RAM is rarely the limit, and swapping is not an OOM to plan around)."""
    if rt.device.type != "cuda":
        return None
    shards = rt.dist.world_size if rt.dist.mode == "fsdp" else 1
    return memory.plan(
        memory.shape_of(net), free_bytes=dist.all_reduce_min(memory.cuda_free_bytes(rt.device), rt.dist, device=rt.device), batch_size=cfg.batch_size,
        accumulation=cfg.gradient_accumulation_steps, seq_len=seq_len, precision=rt.precision,
        checkpointing=cfg.gradient_checkpointing, shards=shards,
    )


def make_batch(ids: list[list[int]], labels: list[list[int]], *, pad_id: int, pack: bool, limit: int, attn: str) -> dict[str, torch.Tensor]:
    if pack:
        return packing.pack_batch(ids, labels, max_length=limit, pad_id=pad_id, attn_implementation=attn)
    return common.pad_batch(ids, pad_id=pad_id, labels=labels)


def run(cfg: Config, *, model: ResolvedModel, resume: bool = False) -> common.RunResult:
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    # --- setup -----------------------------------------------------------------------------------
    rt = common.setup_runtime(cfg)
    main, fsdp = rt.is_main, rt.dist.mode == "fsdp"
    if cfg.use_8bit and main:
        common.log("use_8bit: ignored; this trainer has no 8-bit path (it needs bitsandbytes and a GPU): training in " + rt.precision)
    if fsdp and cfg.lora_r:
        raise TrainerError("distributed: fsdp with lora_r is not supported: LoRA trains few weights, so use distributed: ddp (or drop lora_r to shard a full fine-tune)")
    net, tokenizer = load(model.path, cfg, rt)
    if cfg.lora_r:
        net = add_lora(net, cfg)
    pad_id = tokenizer.pad_token_id
    limit = max_length(cfg, tokenizer)
    splits, rows_n = {}, {}
    for s in ("train", "valid", "test"):
        if not cfg.files(s):
            continue
        ids, labels, dropped, n = encode_split(cfg, tokenizer, s, model_dir=model.path)
        if dropped and main:
            common.log(f"sft {s}: {dropped} of {n} records have no assistant token within max_length {limit}; left out")
        if not ids:
            raise TrainerError(f"no {s} record has an assistant turn within max_length {limit}: raise max_length")
        splits[s], rows_n[s] = (ids, labels), n
    train_ids, train_labels = splits["train"]
    lengths = [len(x) for x in train_ids]

    plan = runtime_plan(cfg, net, rt, seq_len=max(lengths))
    micro = plan.micro_batch if plan else cfg.batch_size
    accum = plan.accumulation if plan else cfg.gradient_accumulation_steps
    checkpointing = plan.gradient_checkpointing if plan else bool(cfg.gradient_checkpointing)
    if plan and main:
        common.log(plan.describe())
    if checkpointing:
        net.gradient_checkpointing_enable()
        if cfg.lora_r:
            net.enable_input_require_grads()  # frozen embeddings would otherwise cut the graph
    pack = cfg.packing if cfg.packing is not None else rt.device.type == "cuda"  # CPU: padding is cheap, packing's mask is not
    attn = getattr(net.config, "_attn_implementation", "sdpa")

    global_batch = micro * rt.dist.world_size
    batches_per_epoch = len(dist.shard_batches(common.batch_indices(range(len(train_ids)), global_batch), rt.dist))
    cfg_steps = common.replace_accum(cfg, accum)
    steps = common.total_steps(cfg_steps, batches_per_epoch)
    train_net = dist.wrap(net, rt.dist, device=rt.device)
    if cfg.torch_compile:
        train_net = torch.compile(train_net, dynamic=True)  # row widths vary from batch to batch
    opt, sched = common.build_optimizer(net, cfg, steps=steps, device=rt.device)
    scaler = common.grad_scaler(rt)
    if resume and fsdp:
        raise TrainerError("distributed: fsdp runs keep no resume state yet: start again without --resume")
    state = common.start_state(cfg, net, opt, sched, resume=resume, rt=rt)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    if main:
        common.log(
            f"sft: {len(train_ids)} train records, {trainable:,} trainable parameters, {steps} steps, {rt.device.type} {rt.precision}, "
            f"{'packed' if pack else 'padded'} micro-batches of {micro}" + (f", {rt.dist.world_size} processes ({rt.dist.mode})" if rt.dist.enabled else "")
        )

    # --- train -----------------------------------------------------------------------------------
    # [step, tokens, seconds] per optimizer step, what benchmarks read: tokens exclude padding and are
    # this rank's x world_size (length-grouped sharding gives every rank rows of about the same length)
    throughput: list[list[float]] = []
    step_log = progress.Steps(total=steps, done=state.step, rows_per_step=global_batch * accum, enabled=main)  # off a terminal
    for epoch in range(state.epoch, common.num_epochs(cfg_steps, batches_per_epoch)):
        train_net.train()
        step_tokens, step_start = 0, time.perf_counter()
        batches = dist.shard_batches(common.length_grouped_batches(lengths, batch_size=global_batch, seed=cfg.seed, epoch=epoch), rt.dist)
        running = torch.zeros((), device=rt.device)
        try:
            for i, chunk in common.bar(common.iter_epoch_batches(batches, skip=state.batches_done), total=len(batches) - state.batches_done, desc=f"epoch {epoch + 1}"):
                batch = make_batch([train_ids[j] for j in chunk], [train_labels[j] for j in chunk], pad_id=pad_id, pack=pack, limit=limit, attn=attn)
                step_tokens += sum(lengths[j] for j in chunk)
                last = (i + 1) % accum == 0 or i + 1 == len(batches)
                with dist.no_sync(train_net, skip=not last):
                    with rt.autocast():
                        loss = train_net(**common.to_device(batch, rt.device)).loss / accum
                    (scaler.scale(loss) if scaler else loss).backward()
                running += loss.detach().float()
                if last:
                    common.optimizer_step(train_net, opt, sched, max_grad_norm=cfg.max_grad_norm, scaler=scaler)
                    state.step += 1
                    state.batches_done = i + 1
                    state.loss_curve.append([state.step, float(dist.all_reduce_mean(running, rt.dist)) * accum / ((i % accum) + 1)])
                    step_log.step(state.step, state.loss_curve[-1][1])
                    running.zero_()
                    now = time.perf_counter()  # float() above waited for the GPU: the step is done
                    throughput.append([state.step, step_tokens * rt.dist.world_size, round(now - step_start, 6)])
                    step_tokens, step_start = 0, now
                    if state.step >= steps:
                        break
        except KeyboardInterrupt:
            if fsdp:
                raise TrainerError("interrupted: distributed: fsdp runs keep no resume state yet; start the run again") from None
            raise common.interrupted(net, opt, sched, state, cfg, rt=rt) from None
        record: dict[str, Any] = {"epoch": epoch + 1, "step": state.step, "train_loss": common.epoch_train_loss(state)}
        # FSDP: the forward pass is collective, so every rank evaluates; the best epoch is not kept
        # (the weights are sharded: saving them each epoch would mean a full gather) -> the last one is saved
        if "valid" in splits and (main or fsdp):
            record["valid"] = eval_loss(net, *splits["valid"], pad_id=pad_id, batch_size=cfg.eval_bs, rt=rt)
            key = common.selection_key(cfg.task, record["valid"])
            if not fsdp and common.improved(key, state.best_key):
                state.best_key, state.best_epoch = key, epoch + 1
                if state.step < steps:  # after the last epoch the best weights are the ones in memory
                    common.save_best(net, cfg.output_dir, epoch=epoch + 1)
        if main:
            common.log(common.epoch_line(record, ("eval_loss", "perplexity")))
        state.history.append(record)
        state.epoch, state.batches_done = epoch + 1, 0
        done = state.step >= steps
        if cfg.save_every_epoch and main and not fsdp:
            save_model(net, tokenizer, Path(cfg.output_dir) / f"epoch-{epoch + 1}", lora=False)
        if not done and main and not fsdp:  # the last epoch's resume state would be deleted a moment later
            common.save_checkpoint(net, opt, sched, state, cfg.output_dir)
        dist.barrier(rt.dist)
        if done:
            break

    # --- save ------------------------------------------------------------------------------------
    if fsdp:
        final = {s: eval_loss(net, *splits[s], pad_id=pad_id, batch_size=cfg.eval_bs, rt=rt) for s in ("valid", "test") if s in splits}
        full = dist.full_state_dict(net, rt.dist)  # collective: the unsharded weights, on CPU
    if not main:
        dist.shutdown(rt.dist)
        return common.RunResult(output_dir=Path(cfg.output_dir), metrics={}, wall_time_s=time.perf_counter() - t0)
    if fsdp:
        stage = common.staging_dir(cfg.output_dir)
        save_full(net, full, tokenizer, stage, model_path=model.path, cfg=cfg)
    else:
        if state.best_epoch is not None and state.best_epoch != state.epoch:
            common.load_best(net, cfg.output_dir, epoch=state.best_epoch)
        final = {s: (common.best_valid(state) if s == "valid" else None) or eval_loss(net, *splits[s], pad_id=pad_id, batch_size=cfg.eval_bs, rt=rt) for s in ("valid", "test") if s in splits}
        stage = common.staging_dir(cfg.output_dir)
        save_model(net, tokenizer, stage, lora=bool(cfg.lora_r))
    sizes = {s: len(v[0]) for s, v in splits.items()}
    extra = {
        "system_prompt": shared_system_prompt_of(cfg), "lora": bool(cfg.lora_r), "trainable_parameters": trainable,
        "packing": pack, "attention": attn, "gradient_checkpointing": checkpointing, "micro_batch": micro,
        "gradient_accumulation_steps": accum, "torch_compile": cfg.torch_compile,
        "step_throughput": throughput,
    }
    result = common.finish(cfg, model, stage=stage, state=state, final=final, sizes=sizes, rt=rt, started=started, t0=t0, evaluate_saved=evaluate_saved, extra=extra)
    dist.shutdown(rt.dist)
    return result


def shared_system_prompt_of(cfg: Config) -> str | None:
    return shared_system_prompt(data.read_split(cfg, "train"))


def save_full(net: Any, state_dict: dict[str, torch.Tensor] | None, tokenizer: Any, out: Path, *, model_path: Path, cfg: Config) -> None:
    """FSDP: the gathered full weights, saved through a fresh unsharded copy of the architecture
    (save_pretrained handles tied weights and sharded safetensors files)."""
    from transformers import AutoConfig, AutoModelForCausalLM  # deferred: a Hugging Face import waits for offline (and takes seconds)

    with torch.device("meta"):
        shell = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(model_path), trust_remote_code=cfg.trust_remote_code), trust_remote_code=cfg.trust_remote_code)
    shell.load_state_dict(state_dict or {}, assign=True)
    shell.tie_weights()  # a tied head shares the embedding tensor the state dict just assigned
    shell.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


# --- trainer eval / predict on a saved model -------------------------------------------------------


def evaluate_saved(cfg: Config, model_dir: Path, *, split: str, rt: common.Runtime, base: bool = False) -> dict[str, Any]:
    """Metrics of the model in model_dir on `split`; `base`: an untrained base model (trainer eval CONFIG)."""
    net, tokenizer = load(model_dir, cfg, rt)
    ids, labels, _ = encode_rows(cfg, tokenizer, data.read_split(cfg, split))
    return eval_loss(net, ids, labels, pad_id=tokenizer.pad_token_id, batch_size=cfg.eval_bs, rt=rt)


@torch.no_grad()
def predict_saved(cfg: Config, model_dir: Path, texts: list[str], *, rt: common.Runtime) -> list[dict[str, Any]]:
    net, tokenizer = load(model_dir, cfg, rt)
    net.eval()
    system = (read_lineage(model_dir).get("task_info") or {}).get("system_prompt")
    out = []
    for text in texts:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(rt.device)
        with rt.autocast():
            gen = net.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=cfg.max_new_tokens,
                do_sample=False,  # greedy: the same model and prompt always give the same answer
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        reply = tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
        out.append({"text": text, "generated": reply, "new_tokens": int(gen.shape[1] - ids.shape[1])})
    return out
