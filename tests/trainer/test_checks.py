"""`trainer check` logic: all data errors at once, quality numbers, the model's availability."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.checks import check
from trainer.config import from_dict, load, replace

SEED = Path(__file__).resolve().parents[2].parent / "shared" / "seed-data"
needs_seed = pytest.mark.requires("seed-data")  # skipped without ../shared on a user's machine, failed in CI


def _jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def _seed_report(name: str, monkeypatch):
    monkeypatch.chdir(SEED)
    return check(load(f"configs/{name}"), verify_model=False)


@needs_seed
def test_seed_classifier_leakage_and_duplicates(monkeypatch):
    r = _seed_report("model2_classifier.yaml", monkeypatch)
    assert r.ok and r.exit_code == 0
    train, valid, test = r.splits["train"], r.splits["valid"], r.splits["test"]
    assert (train.rows, train.unique, train.duplicates) == (1200, 1118, 82)
    assert (test.rows, test.in_train) == (150, 17)
    assert (valid.rows, valid.in_train) == (150, 19)
    assert train.labels == {"eligible": 302, "conditionally_eligible": 302, "not_eligible": 299, "insufficient_information": 297}
    assert "test: 17 of 150 rows (11.3%) also occur in train (leakage): test metrics partly measure memorisation" in r.warnings
    assert "valid: 19 of 150 rows (12.7%) also occur in train (leakage): valid metrics partly measure memorisation" in r.warnings
    assert "train: 1200 rows but 1118 unique texts (82 exact duplicates)" in r.warnings
    # no model was resolved, so lengths are whitespace estimates against the config's max_length
    assert train.tokens.estimated and train.tokens.max_length == 256 and train.tokens.max == 22
    assert "whitespace word estimates" in r.render()


@needs_seed
def test_seed_embeddings_pairs_collapse_to_eight(monkeypatch):
    r = _seed_report("model3_embeddings.yaml", monkeypatch)
    train, valid = r.splits["train"], r.splits["valid"]
    assert (train.rows, train.unique) == (900, 8)
    assert (valid.rows, valid.in_train) == (100, 100)
    assert train.labels == {"0": 253, "1": 647}
    assert "train: 900 rows but 8 unique pairs (892 exact duplicates)" in r.warnings
    assert train.tokens.counted == 1800  # both sides of every pair


@needs_seed
@pytest.mark.parametrize("name", ["model1_sft.yaml", "model1_sft_minimal.yaml"])
def test_seed_sft_validation_is_all_in_train(name, monkeypatch):
    r = _seed_report(name, monkeypatch)
    train, valid = r.splits["train"], r.splits["valid"]
    assert (train.rows, train.unique) == (900, 30)
    assert (valid.rows, valid.in_train) == (100, 100)
    assert "valid: 100 of 100 rows (100.0%) also occur in train (leakage): valid metrics partly measure memorisation" in r.warnings
    assert "test" not in r.splits


def test_every_bad_row_is_listed_with_file_and_line(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [
        {"text": "fine", "label": "yes"},
        '{"text": "broken",',
        {"text": "who", "label": "maybe"},
        {"label": "yes"},
        {"text": "also fine", "label": 1},
    ])
    cfg = from_dict({"model_id": "m", "output_dir": "o", "train_file": train, "valid_file": str(tmp_path / "none.jsonl"), "labels": ["yes", "no"]})
    r = check(cfg, verify_model=False)
    assert not r.ok and r.exit_code == 2
    assert [e.split(": ")[0] for e in r.errors] == [f"{train}:2", f"{train}:3", f"{train}:4", str(tmp_path / "none.jsonl")]
    assert "label 'maybe' is not one of the config's labels ['yes', 'no']" in r.errors[1]
    assert "row 4 has no 'text' field" in r.errors[2]  # a missing field is named as missing
    assert "file not found" in r.errors[3]
    assert r.splits["train"].rows == 2  # the valid rows are still counted
    assert r.render().splitlines()[-1] == "result  FAILED: 4 error(s)"


def test_classification_leakage_compares_text_and_flags_conflicting_labels(tmp_path):
    train = _jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": "yes"}, {"text": "a", "label": "no"}, {"text": "b", "label": "yes"}])
    test = _jsonl(tmp_path / "s.jsonl", [{"text": "a", "label": "no"}, {"text": "c", "label": "no"}])
    cfg = from_dict({"model_id": "m", "output_dir": "o", "train_file": train, "test_file": test, "labels": ["yes", "no", "other"]})
    r = check(cfg, verify_model=False)
    assert r.splits["test"].in_train == 1
    assert r.splits["train"].labels == {"yes": 2, "no": 1, "other": 0}
    assert "train: 1 texts appear with more than one label" in r.warnings
    assert "train: no rows for label(s) other" in r.warnings
    assert any(w.startswith("no validation data") for w in r.warnings)


def test_pair_loss_that_needs_labels_is_an_error(tmp_path):
    train = _jsonl(tmp_path / "p.jsonl", [{"text_1": "a", "text_2": "b"}, {"text_1": "c", "text_2": "d", "label": 1}])
    cfg = from_dict({"model_id": "m", "output_dir": "o", "train_file": train, "task": "embeddings", "loss": "cosine"})
    r = check(cfg, verify_model=False)
    assert r.errors == ["loss 'cosine' needs a label on every pair, but 1 training rows have none; use loss: mnrl or label them"]
    assert r.splits["train"].labels == {"(no label)": 1, "1": 1}


def test_missing_model_is_an_error_with_the_exact_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    train = _jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": "yes"}])
    cfg = from_dict({"model_id": "acme/missing-model", "output_dir": "o", "train_file": train, "labels": ["yes"]})
    r = check(cfg, bundles_dir=tmp_path / "bundles", cache_dir=tmp_path / "cache")
    assert r.exit_code == 3
    assert r.errors[0].startswith("model acme/missing-model is not available offline")
    assert r.errors[0].endswith(f"on a connected host run 'mirror pull acme/missing-model', copy the bundle into {tmp_path / 'bundles'}/ here")
    assert r.model == "acme/missing-model: NOT AVAILABLE"


def test_token_lengths_use_the_model_tokenizer(tmp_path, tiny_bert_dir):
    model = tiny_bert_dir  # trainer.tiny's default vocabulary holds every word used below
    train = _jsonl(tmp_path / "t.jsonl", [
        {"text": "credit report", "label": "yes"},  # [CLS] credit report [SEP]: 4 tokens
        {"text": "credit report dispute", "label": "yes"},  # 5
        {"text": "credit report dispute eligible account", "label": "no"},  # 7
    ])
    cfg = from_dict({"model_id": str(model), "output_dir": "o", "train_file": train, "labels": ["yes", "no"], "max_length": 5})
    r = check(cfg, bundles_dir=tmp_path / "bundles")
    assert r.ok, r.errors
    t = r.splits["train"].tokens
    assert (t.counted, t.p50, t.p95, t.max, t.max_length, t.truncated, t.estimated) == (3, 5, 7, 7, 5, 1, False)
    assert "train: 1 of 3 texts (33.3%) exceed max_length 5 tokens and will be truncated" in r.warnings
    assert r.model.startswith(f"{model}: local folder {model.resolve()}")
    assert r.model.endswith("RANDOM-INITIALISED demo model (its metrics say nothing about a real model)")
    assert "lengths are tokens of the model's tokenizer" in r.render()


def test_sft_lengths_are_measured_on_the_chat_template(tmp_path, tiny_lm_dir):
    from transformers import AutoTokenizer

    model = tiny_lm_dir
    record = {"system": "You are Credit AI.", "input": {"user_question": "what does charge-off mean"}, "output": "a charge-off is a closed account"}
    train = _jsonl(tmp_path / "chat.jsonl", [record])
    cfg = from_dict({"model_id": str(model), "output_dir": "o", "train_file": train, "task": "sft"})
    r = check(cfg, bundles_dir=tmp_path / "bundles")
    tok = AutoTokenizer.from_pretrained(str(model))
    rendered = "<|im_start|>system\nYou are Credit AI.<|im_end|>\n<|im_start|>user\nUser question: what does charge-off mean<|im_end|>\n<|im_start|>assistant\na charge-off is a closed account<|im_end|>\n"
    t = r.splits["train"].tokens
    assert (t.max, t.estimated) == (len(tok(rendered)["input_ids"]), False)
    assert t.max_length == 2048  # no max_length in the config: the tokenizer's own limit
    assert t.no_answer == 0

    # a limit that ends inside the prompt leaves no answer token to learn from
    prompt = "<|im_start|>system\nYou are Credit AI.<|im_end|>\n<|im_start|>user\nUser question: what does charge-off mean<|im_end|>\n<|im_start|>assistant\n"
    prompt_len = len(tok(prompt)["input_ids"])
    lost_warning = "train: 1 of 1 records (100.0%) lose their whole answer to truncation at max_length {}: they train nothing; raise max_length or shorten the prompts"
    for limit, lost in ((prompt_len, 1), (prompt_len + 1, 0)):
        r = check(replace(cfg, max_length=limit), bundles_dir=tmp_path / "bundles")
        assert (r.splits["train"].tokens.truncated, r.splits["train"].tokens.no_answer) == (1, lost)
        assert (lost_warning.format(limit) in r.warnings) == bool(lost)


def test_a_corrupt_bundle_is_a_check_error_naming_it(tmp_path):
    from mirror.bundle.write.driver import write_bundle

    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text('{"model_type": "bert", "hidden_size": 8}')
    info = write_bundle(src_root=src, repo_id="acme/enc", revision="main", commit=None, source="local:src", created_at="2026-01-01T00:00:00Z", license=None, out_dir=tmp_path / "bundles")
    raw = info.path.read_bytes()
    info.path.write_bytes(raw.replace(b'"hidden_size": 8}', b'"hidden_size": 9}'))
    train = _jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": "yes"}])
    cfg = from_dict({"model_id": "acme/enc", "output_dir": "o", "train_file": train, "labels": ["yes"]})
    r = check(cfg, bundles_dir=tmp_path / "bundles", cache_dir=tmp_path / "cache")
    assert r.exit_code == 4
    assert str(info.path) in r.errors[0] and "config.json: sha256 mismatch" in r.errors[0]  # one line naming both
    assert "\n" not in r.errors[0]
    assert r.model == "acme/enc: NOT AVAILABLE"
