"""A memory estimate before the run, and the micro-batch / checkpointing choice it implies.

Gradient checkpointing recomputes every layer's forward during backward (about a third more
compute), so it should only be on when the activations would not fit otherwise. Before an SFT run
on a GPU this module estimates the peak, compares it with the device's free memory and picks,
in order of preference: the configured micro-batch without checkpointing; a smaller micro-batch
(more accumulation steps, the same rows per optimizer step) without it; the same with
checkpointing. Nothing fits -> a one-line error that says what to change.

The estimate (bytes), for P parameters of which T are trained, B rows of S tokens, hidden size H,
L layers, vocabulary V, activation width a (2 bytes for bf16 compute, 4 for fp32):
- weights P*w (w = 4 for fp32 master weights, 2 for pure bf16), gradients T*w, AdamW moments T*2*w;
  FSDP divides these three by the number of ranks;
- activations per layer ~ 17*a*B*S*H (Korthikanti et al. 2022, 34*B*S*H bytes at 2 bytes each, with a
  fused/SDPA attention that keeps no S x S score matrix); with checkpointing only each layer's
  input a*B*S*H is kept, plus one layer's full activations during its recompute;
- the logits and their gradient: B*S*V*(a + 4 + 4) (the loss upcasts them to fp32);
- 10 % on top for the allocator's fragmentation and the CUDA workspace.
It errs on the high side; `tests/trainer/test_memory.py` checks the arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer.errors import TrainerError

GiB = 1024**3
HEADROOM = 1.10  # allocator fragmentation, cuBLAS workspace, the odd temporary


@dataclass(frozen=True)
class Shape:
    params: int
    trainable: int
    hidden: int
    layers: int
    vocab: int


@dataclass(frozen=True)
class MemoryPlan:
    micro_batch: int
    accumulation: int  # gradient_accumulation_steps to keep the configured rows per step
    gradient_checkpointing: bool
    estimate_bytes: int
    free_bytes: int

    def describe(self) -> str:
        return (
            f"memory plan: micro-batch {self.micro_batch} x accumulation {self.accumulation}, "
            f"gradient checkpointing {'on' if self.gradient_checkpointing else 'off'}, "
            f"estimated peak {self.estimate_bytes / GiB:.1f} GiB of {self.free_bytes / GiB:.1f} GiB free"
        )


def estimate_bytes(shape: Shape, *, micro_batch: int, seq_len: int, precision: str, checkpointing: bool, shards: int = 1) -> int:
    w = 2 if precision == "bf16-pure" else 4
    a = 4 if precision == "fp32" else 2
    states = (shape.params * w + shape.trainable * w + shape.trainable * 2 * w) / max(1, shards)
    tokens = micro_batch * seq_len
    layer_full = 17 * a * tokens * shape.hidden
    if checkpointing:
        activations = shape.layers * a * tokens * shape.hidden + layer_full
    else:
        activations = shape.layers * layer_full
    logits = tokens * shape.vocab * (a + 4 + 4)
    return int((states + activations + logits) * HEADROOM)


def plan(
    shape: Shape,
    *,
    free_bytes: int,
    batch_size: int,
    accumulation: int,
    seq_len: int,
    precision: str,
    checkpointing: bool | None,
    shards: int = 1,
) -> MemoryPlan:
    """The fastest setting that fits in free_bytes. `checkpointing` True/False is the config's
    explicit choice and is kept; None lets the plan decide."""
    options = [False, True] if checkpointing is None else [checkpointing]
    tried = []
    for ckpt in options:
        micro = batch_size
        while micro >= 1:
            need = estimate_bytes(shape, micro_batch=micro, seq_len=seq_len, precision=precision, checkpointing=ckpt, shards=shards)
            if need <= free_bytes:
                steps = accumulation * -(-batch_size // micro)
                return MemoryPlan(micro_batch=micro, accumulation=steps, gradient_checkpointing=ckpt, estimate_bytes=need, free_bytes=free_bytes)
            tried.append(need)
            micro //= 2
    smallest = min(tried)
    raise TrainerError(
        f"the model needs about {smallest / GiB:.1f} GiB even at micro-batch 1 and {free_bytes / GiB:.1f} GiB is free: "
        "lower max_length, set lora_r, use precision: bf16-pure, or shard it with distributed: fsdp over more GPUs"
    )


def shape_of(model) -> Shape:  # noqa: ANN001 - any transformers PreTrainedModel
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Shape(
        params=params,
        trainable=trainable,
        hidden=int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "dim", 0)),
        layers=int(getattr(cfg, "num_hidden_layers", 0) or getattr(cfg, "n_layers", 0)),
        vocab=int(getattr(cfg, "vocab_size", 0)),
    )


def cuda_free_bytes(device) -> int:  # noqa: ANN001 - torch.device
    import torch  # deferred: seconds to import; only the work that needs it pays

    free, _total = torch.cuda.mem_get_info(device)
    return int(free)
