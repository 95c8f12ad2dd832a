"""The memory estimate's arithmetic and the micro-batch / checkpointing choice it drives."""

from __future__ import annotations

import pytest

from trainer import memory
from trainer.errors import TrainerError

GiB = memory.GiB
# Qwen2.5-1.5B's shape: 1.54e9 parameters, hidden 1536, 28 layers, vocabulary 151936
QWEN15 = memory.Shape(params=1_543_714_304, trainable=1_543_714_304, hidden=1536, layers=28, vocab=151_936)


def test_estimate_arithmetic_small_numbers() -> None:
    s = memory.Shape(params=100, trainable=50, hidden=8, layers=2, vocab=10)
    # fp32 master weights: 100*4 + grads 50*4 + Adam 50*8 = 1000; bf16 activations (a=2):
    # per layer 17*2*(2*4 tokens)*8 = 2176, x2 layers = 4352; logits 8*10*(2+4+4) = 800
    assert memory.estimate_bytes(s, micro_batch=2, seq_len=4, precision="bf16", checkpointing=False) == int((1000 + 4352 + 800) * 1.1)
    # checkpointing keeps only each layer's input (2*8*8 = 128 per layer) plus one full layer
    assert memory.estimate_bytes(s, micro_batch=2, seq_len=4, precision="bf16", checkpointing=True) == int((1000 + 2 * 128 + 2176 + 800) * 1.1)
    # pure bf16 halves the states; fp32 compute doubles the activations; FSDP divides the states
    assert memory.estimate_bytes(s, micro_batch=2, seq_len=4, precision="bf16-pure", checkpointing=False) == int((500 + 4352 + 800) * 1.1)
    assert memory.estimate_bytes(s, micro_batch=2, seq_len=4, precision="fp32", checkpointing=False) == int((1000 + 8704 + 8 * 10 * 12) * 1.1)
    assert memory.estimate_bytes(s, micro_batch=2, seq_len=4, precision="bf16", checkpointing=False, shards=4) == int((250 + 4352 + 800) * 1.1)


def test_qwen_1_5b_states_alone_take_about_25_gib() -> None:
    states = memory.estimate_bytes(QWEN15, micro_batch=0, seq_len=0, precision="bf16", checkpointing=False)
    assert states / GiB == pytest.approx(1_543_714_304 * 16 * 1.1 / GiB)
    assert 25 < states / GiB < 26


def test_plan_prefers_no_checkpointing_then_smaller_micro_batches_then_checkpointing() -> None:
    kw = {"batch_size": 8, "accumulation": 2, "seq_len": 2048, "precision": "bf16"}
    roomy = memory.plan(QWEN15, free_bytes=400 * GiB, checkpointing=None, **kw)
    assert (roomy.micro_batch, roomy.accumulation, roomy.gradient_checkpointing) == (8, 2, False)
    # estimates at 2048 tokens a row: 8 rows 75.3 GiB, 4 rows 50.3, 1 row 31.6; with checkpointing 1 row 28.8
    h100 = memory.plan(QWEN15, free_bytes=78 * GiB, checkpointing=None, **kw)
    assert (h100.micro_batch, h100.accumulation, h100.gradient_checkpointing) == (8, 2, False)
    half = memory.plan(QWEN15, free_bytes=60 * GiB, checkpointing=None, **kw)
    assert (half.micro_batch, half.accumulation, half.gradient_checkpointing) == (4, 4, False)
    assert half.micro_batch * half.accumulation == 8 * 2  # the same rows per optimizer step
    tight = memory.plan(QWEN15, free_bytes=30 * GiB, checkpointing=None, **kw)
    assert (tight.micro_batch, tight.accumulation, tight.gradient_checkpointing) == (1, 16, True)
    assert tight.describe() == (
        "memory plan: micro-batch 1 x accumulation 16, gradient checkpointing on, estimated peak 28.8 GiB of 30.0 GiB free"
    )


def test_plan_keeps_an_explicit_choice_and_fails_with_advice() -> None:
    forced = memory.plan(QWEN15, free_bytes=400 * GiB, checkpointing=True, batch_size=4, accumulation=1, seq_len=1024, precision="bf16")
    assert forced.gradient_checkpointing is True and forced.micro_batch == 4
    with pytest.raises(TrainerError, match="even at micro-batch 1 and 10.0 GiB is free: .*distributed: fsdp"):
        memory.plan(QWEN15, free_bytes=10 * GiB, checkpointing=None, batch_size=4, accumulation=1, seq_len=1024, precision="bf16")
