"""The strict config schema: every problem at once, string numbers, aliases, --set, seed configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config import from_dict, load, parse_overrides
from trainer.errors import ConfigError

SEED = Path(__file__).resolve().parents[2].parent / "shared" / "seed-data"

BASE = {"model_id": "m", "output_dir": "out", "train_file": "t.jsonl", "labels": ["a", "b"]}


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_unknown_key_and_wrong_type_reported_together():
    with pytest.raises(ConfigError) as info:
        from_dict({**BASE, "lerning_rate": 1e-4, "batch_size": "many", "epochs": -1})
    e = info.value
    assert e.problems == [
        "unknown key 'lerning_rate'; did you mean learning_rate?",
        "batch_size must be int, got 'many'",
        "epochs must be > 0, got -1.0",
    ]
    assert "3 problems" in str(e) and "\n" not in str(e)
    assert e.exit_code == 2


def test_numbers_written_as_strings_are_accepted(tmp_path):
    # YAML 1.1 reads 2e-5 (no dot) as a string; the original configs rely on it working
    cfg = load(_write(tmp_path, "model_id: m\noutput_dir: o\ntrain_file: t.jsonl\nlabels: [a]\nlearning_rate: 2e-5\nbatch_size: '8'\nepochs: 1.0\n"))
    assert cfg.learning_rate == pytest.approx(2e-5)
    assert isinstance(cfg.learning_rate, float)
    assert cfg.batch_size == 8
    assert cfg.epochs == 1.0


def test_set_overrides_take_precedence_and_are_yaml(tmp_path):
    path = _write(tmp_path, "model_id: m\noutput_dir: o\ntrain_file: t.jsonl\nlabels: [a]\nepochs: 3\n")
    cfg = load(path, overrides=parse_overrides(["epochs=1", "labels=[x, y]", "learning_rate=5e-5", "lora_r=8"]))
    assert cfg.epochs == 1.0
    assert cfg.labels == ("x", "y")
    assert cfg.learning_rate == pytest.approx(5e-5)
    assert cfg.lora_r == 8
    # an override spelled with the other alias replaces the config's key instead of clashing
    cfg = load(path, overrides=parse_overrides(["train_files=[u.jsonl, v.jsonl]"]))
    assert cfg.train_files == ("u.jsonl", "v.jsonl")


def test_bad_override_is_a_config_error():
    with pytest.raises(ConfigError, match="'epochs' is not key=value"):
        parse_overrides(["epochs"])


def test_train_file_and_train_files_are_aliases():
    one = from_dict({**BASE, "train_file": "a.jsonl", "valid_file": "v.jsonl"})
    many = from_dict({**{k: v for k, v in BASE.items() if k != "train_file"}, "train_files": ["a.jsonl"], "valid_files": ["v.jsonl"]})
    assert one.train_files == many.train_files == ("a.jsonl",)
    assert one.valid_files == many.valid_files == ("v.jsonl",)
    with pytest.raises(ConfigError, match="both 'train_file' and 'train_files' given"):
        from_dict({**BASE, "train_files": ["b.jsonl"]})


def test_missing_required_keys_and_uninferable_task():
    with pytest.raises(ConfigError) as info:
        from_dict({"batch_size": 4})
    assert info.value.problems == [
        "model_id is required",
        "output_dir is required",
        "train_files is required (or train_file)",
        "cannot infer the task: set 'task:' to classification, embeddings or sft",
    ]


def test_invalid_yaml_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"not valid YAML at line 2, column 10: mapping values are not allowed here"):
        load(_write(tmp_path, "model_id: m\nlabels: a: b\n"))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load(tmp_path / "nope.yaml")


def test_task_inferred_from_the_first_training_row(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("pairs.jsonl").write_text('{"text_1": "a", "text_2": "b", "label": 1}\n')
    Path("chat.jsonl").write_text('{"prompt": "hi", "response": "hello"}\n')
    assert load(_write(tmp_path, "model_id: m\noutput_dir: o\ntrain_file: pairs.jsonl\n")).task == "embeddings"
    assert load(_write(tmp_path, "model_id: m\noutput_dir: o\ntrain_file: chat.jsonl\n")).task == "sft"


SEED_TASKS = {
    "model1_sft.yaml": ("sft", 1024, 8),
    "model1_sft_minimal.yaml": ("sft", 512, 4),
    "model2_classifier.yaml": ("classification", 256, 1),
    "model3_embeddings.yaml": ("embeddings", None, 1),
}


@pytest.mark.requires("seed-data")
@pytest.mark.parametrize("name", sorted(SEED_TASKS))
def test_every_seed_config_loads_unchanged_with_its_task(name, monkeypatch):
    monkeypatch.chdir(SEED)  # the seed's paths are relative to its folder, as its scripts ran
    cfg = load(Path("configs") / name)
    task, max_length, accumulation = SEED_TASKS[name]
    assert cfg.task == task
    assert cfg.max_length == max_length
    assert cfg.gradient_accumulation_steps == accumulation
    assert cfg.learning_rate == pytest.approx(2e-5)
    assert cfg.seed == 42
    assert all(Path(f).is_file() for f in cfg.train_files + cfg.valid_files + cfg.test_files)
    if task == "classification":
        assert cfg.labels == ("eligible", "conditionally_eligible", "not_eligible", "insufficient_information")
        assert cfg.test_files == ("data/finetune/model2_classifier.test.jsonl",)


def test_a_set_value_out_of_bounds_is_refused_as_the_set_option():
    from trainer.config import check_overrides

    with pytest.raises(ConfigError) as info:
        check_overrides({"max_steps": 0, "precision": "fp8", "seed": "7"})
    assert info.value.problems == ["--set max_steps: max_steps must be > 0, got 0", "--set precision: precision must be one of ('auto', 'fp32', 'bf16', 'fp16', 'bf16-pure'), got 'fp8'"]


def test_types_first_then_the_whole_config_then_bounds_each_in_the_order_written():
    with pytest.raises(ConfigError) as info:
        from_dict({"lora_r": 0, "packing": "maybe", "batch_size": -2, "labels": ["a", "a"]})
    assert info.value.problems == [
        "packing must be bool, got 'maybe'",
        "model_id is required",
        "output_dir is required",
        "train_files is required (or train_file)",
        "lora_r must be > 0, got 0",
        "batch_size must be > 0, got -2",
        "labels has duplicates",
    ]
