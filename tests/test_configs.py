"""Every shipped config loads, names its run command, and points at data and models that exist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer import config as config_mod
from trainer import data as data_mod
from trainer import demo

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
EXPECTED_TASK = {
    "classifier.yaml": "classification",
    "embeddings.yaml": "embeddings",
    "sft.yaml": "sft",
    "sft-qwen.yaml": "sft",
}


def test_every_shipped_config_is_covered():
    assert sorted(p.name for p in CONFIGS) == sorted(EXPECTED_TASK)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_its_data_exists(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # config paths are relative to the working directory: the repo root
    cfg = config_mod.load(path.relative_to(ROOT))
    assert cfg.task == EXPECTED_TASK[path.name]
    assert cfg.train_files and cfg.valid_files
    for split in ("train", "valid", "test"):
        for f in cfg.files(split):
            assert not Path(f).is_absolute()
            rows = data_mod.read_split(cfg, split)  # parses every row: a bad file fails here
            assert rows, f
    assert cfg.output_dir.startswith("runs/")  # outputs stay in the git-ignored runs/


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_starts_with_its_run_command(path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith(f"# trainer run configs/{path.name}"), first


def test_classifier_labels_cover_the_data(monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = config_mod.load("configs/classifier.yaml")
    for split in ("train", "valid", "test"):
        labels = {data_mod.classification_example(cfg, r)[1] for r in data_mod.read_split(cfg, split)}
        assert labels == set(range(len(cfg.labels)))  # every class occurs, and nothing else


def test_demo_provides_the_models_the_configs_name(monkeypatch):
    monkeypatch.chdir(ROOT)
    ids = {p.name: config_mod.load(p.relative_to(ROOT)).model_id for p in CONFIGS}
    assert ids["classifier.yaml"] == ids["embeddings.yaml"] == demo.MINILM_ID
    assert ids["sft.yaml"] == demo.TINY_ID
    assert ids["sft-qwen.yaml"] == "Qwen/Qwen2.5-1.5B-Instruct"
    assert tuple(f"configs/{n}" for n in ("classifier.yaml", "embeddings.yaml", "sft.yaml")) == demo.CONFIGS


def test_max_length_fits_the_classifier_data(monkeypatch):
    """The comment in classifier.yaml promises nothing is truncated: check with the real tokenizer."""
    from transformers import AutoTokenizer

    monkeypatch.chdir(ROOT)
    cfg = config_mod.load("configs/classifier.yaml")
    tok = AutoTokenizer.from_pretrained(str(demo.minilm_dir()))
    texts = [json.loads(line)["text"] for f in cfg.train_files + cfg.valid_files + cfg.test_files for line in Path(f).read_text().splitlines()]
    longest = max(len(ids) for ids in tok(texts)["input_ids"])
    assert longest <= cfg.max_length
