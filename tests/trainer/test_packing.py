"""Packing is exact: packed and padded batches give the same loss and the same per-record logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer import packing, tiny
from trainer.recipes import common


def test_plan_rows_first_fit_decreasing() -> None:
    rows = packing.plan_rows([5, 3, 8, 2, 6], max_length=10)
    # 8 -> row0 (room 2), 6 -> row1 (room 4), 5 -> row2 (room 5), 3 -> row1 (room 1), 2 -> row0 (room 0)
    assert rows == [[2, 3], [1, 4], [0]]
    assert sorted(i for r in rows for i in r) == [0, 1, 2, 3, 4]


def test_plan_rows_refuses_a_record_longer_than_a_row() -> None:
    with pytest.raises(ValueError, match="record 1 has 11 tokens, more than max_length 10"):
        packing.plan_rows([4, 11], max_length=10)


def test_block_causal_mask_values() -> None:
    docs = packing.document_ids([[2, 3]], width=6)
    assert docs.tolist() == [[0, 0, 1, 1, 1, -1]]
    mask = packing.block_causal_mask(docs)[0, 0].int().tolist()
    assert mask == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],  # padding sees only itself: no all-blocked softmax row
    ]
    additive = packing.block_causal_mask(docs, dtype=torch.float32)[0, 0]
    assert additive[1, 0] == 0 and additive[2, 1] == torch.finfo(torch.float32).min


def test_pack_batch_layout() -> None:
    seqs = [[11, 12, 13], [21, 22], [31, 32, 33, 34]]
    labels = [[-100, 12, 13], [21, 22], [-100, -100, 33, 34]]
    batch = packing.pack_batch(seqs, labels, max_length=6, pad_id=0)
    # FFD: [31..34] + [21,22] fill row 0 exactly; [11,12,13] goes to row 1, padded to 6
    assert batch["input_ids"].tolist() == [[21, 22, 31, 32, 33, 34], [11, 12, 13, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2, 3], [0, 1, 2, 0, 0, 0]]
    # the first token of each record is never a target, padding never is
    assert batch["labels"].tolist() == [[-100, 22, -100, -100, 33, 34], [-100, 12, 13, -100, -100, -100]]
    assert batch["attention_mask"].shape == (2, 1, 6, 6) and batch["attention_mask"].dtype == torch.bool
    flash = packing.pack_batch(seqs, labels, max_length=6, pad_id=0, attn_implementation="flash_attention_2")
    assert "attention_mask" not in flash  # varlen kernels read the boundaries from position_ids


def test_padding_share() -> None:
    padded, packed = packing.padding_share([[1] * 6, [1] * 2, [1] * 4], max_length=6)
    assert padded == pytest.approx(1 - 12 / 18)
    assert packed == pytest.approx(0.0)  # 6 | 4+2


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.tiny_causal_lm(tmp_path_factory.mktemp("lm") / "m", hidden=32, layers=2, vocab_size=300)


def _records(vocab: int) -> tuple[list[list[int]], list[list[int]]]:
    g = torch.Generator().manual_seed(0)
    seqs, labels = [], []
    for n in (9, 23, 5, 17, 12, 30):
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        lab = [-100] * (n // 3) + ids[n // 3 :]  # context first, then "assistant" targets
        seqs.append(ids)
        labels.append(lab)
    return seqs, labels


def _load(path: Path, attn: str):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation=attn).eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_and_logits_equal_unpacked(lm: Path, attn: str) -> None:
    model = _load(lm, attn)
    seqs, labels = _records(model.config.vocab_size)
    padded = common.pad_batch(seqs, pad_id=0, labels=labels)
    packed = packing.pack_batch(seqs, labels, max_length=40, pad_id=0, attn_implementation=attn)
    assert packed["input_ids"].shape[0] < len(seqs)  # it really packed several records per row
    with torch.no_grad():
        ref = model(**padded)
        out = model(**packed)
    # same loss: mean over the same target tokens
    assert torch.allclose(out.loss, ref.loss, rtol=1e-5, atol=1e-6), (out.loss, ref.loss)
    # every record's logits in its packed row equal its own logits in the padded batch
    rows = packing.plan_rows([len(s) for s in seqs], max_length=40)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            n = len(seqs[i])
            got = out.logits[r, start : start + n]
            want = ref.logits[i, :n]
            assert torch.allclose(got, want, atol=1e-5), (i, (got - want).abs().max())
            start += n


def test_packed_gradients_equal_unpacked(lm: Path) -> None:
    """What training uses: one backward pass gives the same gradient either way."""
    grads = []
    for pack in (False, True):
        model = _load(lm, "sdpa").train()
        seqs, labels = _records(model.config.vocab_size)
        batch = packing.pack_batch(seqs, labels, max_length=40, pad_id=0) if pack else common.pad_batch(seqs, pad_id=0, labels=labels)
        model(**batch).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6), (grads[0] - grads[1]).abs().max()


def test_packed_loss_equal_unpacked_under_bf16_autocast(lm: Path) -> None:
    model = _load(lm, "sdpa")
    seqs, labels = _records(model.config.vocab_size)
    padded = common.pad_batch(seqs, pad_id=0, labels=labels)
    packed = packing.pack_batch(seqs, labels, max_length=40, pad_id=0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = model(**padded).loss.float()
        out = model(**packed).loss.float()
    # bf16 has an 8-bit mantissa: the two orders of summation agree to about 1%
    assert torch.allclose(out, ref, rtol=2e-2), (out, ref)


# --- wired into the SFT recipe ---------------------------------------------------------------------


def _sft_cfg(d: Path, name: str, **over):
    from trainer import config
    from tests.trainer.test_sft import records, write

    rows = records()
    write(d / "train.jsonl", rows[:12])
    write(d / "valid.jsonl", rows[12:])
    raw = {"task": "sft", "model_id": "tiny/lm", "output_dir": str(d / name), "train_file": str(d / "train.jsonl"),
           "valid_file": str(d / "valid.jsonl"), "learning_rate": 3e-3, "epochs": 2, "batch_size": 4, "max_length": 256, **over}
    return config.from_dict(raw)


def test_sft_recipe_trains_the_same_packed_or_padded(tmp_path: Path, tiny_lm_dir: Path) -> None:
    """The same steps on the same records: packing only removes padding, so the runs agree."""
    from trainer.recipes import run
    from trainer.resolve import ResolvedModel

    model = ResolvedModel(repo_id="tiny/lm", path=tiny_lm_dir, commit=None, bundle_path=None, bundle_sha256=None, source="local")
    # fp32 on any CPU: this checks packing, not rounding (the bf16 check is the test above)
    padded = run(_sft_cfg(tmp_path, "padded", packing=False, precision="fp32"), model=model).metrics
    packed = run(_sft_cfg(tmp_path, "packed", packing=True, precision="fp32"), model=model).metrics
    assert packed["packing"] is True and padded["packing"] is False
    assert packed["attention"] == "sdpa" and packed["precision"] == "fp32"
    assert [s for s, _ in packed["train_loss_curve"]] == [s for s, _ in padded["train_loss_curve"]]
    for (_, a), (_, b) in zip(packed["train_loss_curve"], padded["train_loss_curve"]):
        assert a == pytest.approx(b, rel=1e-3), (a, b)
    assert packed["final"]["valid"]["eval_loss"] == pytest.approx(padded["final"]["valid"]["eval_loss"], rel=1e-3)
    assert packed["final"]["valid"]["target_tokens"] == padded["final"]["valid"]["target_tokens"]


def test_torch_compile_flag_compiles_the_training_module(tmp_path: Path, tiny_lm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inductor needs a C++ toolchain and minutes on 2 cores; what is checked here is the wiring:
    with torch_compile the module trained is torch.compile's (run eagerly by a stand-in)."""
    from trainer.recipes import run
    from trainer.resolve import ResolvedModel

    calls = []

    def fake_compile(module, **kwargs):
        calls.append((type(module).__name__, kwargs))
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = ResolvedModel(repo_id="tiny/lm", path=tiny_lm_dir, commit=None, bundle_path=None, bundle_sha256=None, source="local")
    metrics = run(_sft_cfg(tmp_path, "c", torch_compile=True, max_steps=1, epochs=1), model=model).metrics
    assert calls == [("Qwen2ForCausalLM", {"dynamic": True})]
    assert metrics["torch_compile"] is True and metrics["steps"] == 1
