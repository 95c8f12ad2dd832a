"""The SFT recipe on a tiny Qwen2-shaped LM: the assistant-only mask, training, LoRA, eval, predict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from trainer import config, data
from trainer.errors import TrainerError
from trainer.evaluate import evaluate, predict
from trainer.recipes import run, sft
from trainer.resolve import ResolvedModel

SYSTEM = "You are Credit AI. Follow compliance rules."
QUESTIONS = [
    ("What does a charge-off mean?", "SUMMARY:\nA charge-off is a debt the lender wrote off.\n\nNEXT STEPS:\n1. Check the balance"),
    ("Can I remove a hard inquiry?", "SUMMARY:\nOnly an unauthorised inquiry can be disputed.\n\nNEXT STEPS:\n1. Request validation"),
    ("Is a paid medical collection eligible?", "SUMMARY:\nPaid medical collections under the threshold are eligible.\n\nNEXT STEPS:\n1. Dispute with the bureau"),
    ("What is Metro 2 format?", "SUMMARY:\nMetro 2 is the bureau reporting format.\n\nNEXT STEPS:\n1. Compare the account status"),
]


def records() -> list[dict]:
    """The seed's shape: system + structured input + output."""
    out = []
    for i, (q, a) in enumerate(QUESTIONS * 4):
        out.append({"system": SYSTEM, "input": {"context": f"case {i}", "user_question": q}, "output": a})
    return out


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_cfg(d: Path, **over) -> config.Config:
    rows = records()
    write(d / "train.jsonl", rows[:12])
    write(d / "valid.jsonl", rows[12:])
    raw = {
        "task": "sft",
        "model_id": "tiny/lm",
        "output_dir": str(d / "out"),
        "train_file": str(d / "train.jsonl"),
        "valid_file": str(d / "valid.jsonl"),
        "learning_rate": 3e-3,
        "epochs": 3,
        "batch_size": 4,
        "max_length": 256,
        "max_new_tokens": 8,
        **over,
    }
    return config.from_dict(raw)


def local(path: Path) -> ResolvedModel:
    return ResolvedModel(repo_id="tiny/lm", path=path, commit=None, bundle_path=None, bundle_sha256=None, source="local")


@pytest.fixture(scope="module")
def tokenizer(tiny_lm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_lm_dir))


def unmasked_segments(tokenizer, ids: list[int], labels: list[int]) -> list[str]:
    segments, cur = [], []
    for tok, lab in zip(ids, labels):
        if lab != sft.IGNORE:
            assert lab == tok
            cur.append(tok)
        elif cur:
            segments.append(tokenizer.decode(cur))
            cur = []
    if cur:
        segments.append(tokenizer.decode(cur))
    return segments


def test_mask_keeps_only_the_assistant_reply_on_a_seed_shaped_record(tokenizer):
    row = data.Row("x.jsonl", 1, records()[0])
    messages = data.sft_messages(row)
    ids, labels = sft.encode_chat(tokenizer, messages, max_length=4096)
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(messages, tokenize=False)
    assert unmasked_segments(tokenizer, ids, labels) == [QUESTIONS[0][1] + "<|im_end|>"]
    # the system prompt and the user turn are context only
    masked_text = tokenizer.decode([t for t, l in zip(ids, labels) if l == sft.IGNORE])
    assert SYSTEM in masked_text and "User question: What does a charge-off mean?" in masked_text


def test_mask_covers_every_assistant_turn_of_a_conversation(tokenizer):
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello, how can I help?"},
        {"role": "user", "content": "what is a charge-off"},
        {"role": "assistant", "content": "a debt the lender wrote off"},
    ]
    ids, labels = sft.encode_chat(tokenizer, messages, max_length=4096)
    assert unmasked_segments(tokenizer, ids, labels) == ["hello, how can I help?<|im_end|>", "a debt the lender wrote off<|im_end|>"]
    short_ids, short_labels = sft.encode_chat(tokenizer, messages, max_length=10)
    assert len(short_ids) == len(short_labels) == 10 and short_ids == ids[:10]


def test_records_without_an_assistant_token_in_reach_are_dropped(tmp_path, tokenizer):
    cfg = make_cfg(tmp_path, max_length=16)  # the system prompt alone is longer
    rows = data.read_split(cfg, "train")
    ids, labels, dropped = sft.encode_rows(cfg, tokenizer, rows)
    assert (ids, dropped) == ([], 12)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_lm_dir):
    d = tmp_path_factory.mktemp("sft")
    return run(make_cfg(d), model=local(tiny_lm_dir))


def test_full_fine_tune_lowers_the_loss(trained):
    m = trained.metrics
    losses = [e["valid"]["eval_loss"] for e in m["epochs"]]
    assert losses[-1] < losses[0] - 0.5
    assert m["final"]["valid"]["perplexity"] == pytest.approx(2.718281828 ** m["final"]["valid"]["eval_loss"], rel=1e-6)
    assert m["main_metric"] == "eval_loss" and m["higher_is_better"] is False
    assert m["best_epoch"] == 1 + losses.index(min(losses))
    assert m["system_prompt"] == SYSTEM and m["lora"] is False


def test_outputs_and_eval_reproduce(trained):
    out = trained.output_dir
    assert (out / "model.safetensors").is_file() and not list(out.rglob("*.bin"))
    assert (out / "tokenizer.json").is_file()
    again = evaluate(str(out), split="valid")
    assert again["target_tokens"] == trained.metrics["final"]["valid"]["target_tokens"]
    assert again["eval_loss"] == pytest.approx(trained.metrics["final"]["valid"]["eval_loss"], abs=1e-5)
    report = (out / "report.md").read_text()
    assert "RANDOM-INITIALISED DEMO MODEL" in report and "perplexity" in report


def test_predict_generates_with_the_training_system_prompt(trained, monkeypatch):
    seen = []
    real = sft.read_lineage

    def spy(path):
        record = real(path)
        seen.append(record["task_info"]["system_prompt"])
        return record

    monkeypatch.setattr(sft, "read_lineage", spy)
    out = predict(str(trained.output_dir), ["What does a charge-off mean?", "Is it eligible?"])
    assert seen == [SYSTEM]
    assert [o["text"] for o in out] == ["What does a charge-off mean?", "Is it eligible?"]
    for o in out:
        assert isinstance(o["generated"], str) and 1 <= o["new_tokens"] <= 8


def test_lora_trains_adapters_and_saves_merged_weights(tmp_path, tiny_lm_dir, capsys):
    cfg = make_cfg(tmp_path, lora_r=4, epochs=1, use_8bit=True)
    result = run(cfg, model=local(tiny_lm_dir))
    assert "use_8bit: ignored" in capsys.readouterr().err
    out = result.output_dir
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    targets = {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in adapter}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= targets
    merged = load_file(str(out / "model.safetensors"))
    assert not any("lora" in k for k in merged)
    assert result.metrics["trainable_parameters"] == sum(t.numel() for t in adapter.values())
    # the merged model evaluates like the adapter-wrapped one did
    again = evaluate(str(out), split="valid")
    assert again["eval_loss"] == pytest.approx(result.metrics["final"]["valid"]["eval_loss"], abs=1e-4)


def test_tokenizer_without_chat_template_is_refused(tmp_path, tiny_lm_dir):
    import shutil

    base = shutil.copytree(tiny_lm_dir, tmp_path / "lm")
    (base / "chat_template.jinja").unlink(missing_ok=True)
    tok_cfg = json.loads((base / "tokenizer_config.json").read_text())
    tok_cfg.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    with pytest.raises(TrainerError, match="no chat template"):
        run(make_cfg(tmp_path), model=local(base))


def test_bf16_pure_is_opt_in_and_stated_in_metrics_and_lineage(tmp_path, tiny_lm_dir):
    """bf16 weights and optimizer state: the run says so in every record it leaves."""
    result = run(make_cfg(tmp_path, precision="bf16-pure", epochs=1, max_steps=2), model=local(tiny_lm_dir))
    assert result.metrics["precision"] == "bf16-pure" and result.metrics["steps"] == 2
    lineage = json.loads((result.output_dir / "lineage.json").read_text())
    assert lineage["precision"] == "bf16-pure" and lineage["config"]["precision"] == "bf16-pure"
    weights = load_file(str(result.output_dir / "model.safetensors"))
    assert {str(t.dtype) for t in weights.values()} == {"torch.bfloat16"}
