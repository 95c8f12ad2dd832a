"""The token cache: hits only when nothing that decides the encoding changed; the recipes use it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer import tokencache


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    model = tmp_path / "model"
    model.mkdir()
    (model / "tokenizer.json").write_text('{"vocab": 1}')
    (model / "model.safetensors").write_bytes(b"weights are not part of the key")
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "a", "label": "x"}\n')
    return model, data


def _cached(model: Path, data: Path, out: Path, calls: list[int], **over):
    kw = {"data_files": [data], "model_dir": model, "settings": {"max_length": 32}, "version": "v1", "output_dir": out / "run", **over}

    def compute():
        calls.append(1)
        return [[[101, 7, 102]], [0]]

    return tokencache.cached(compute=compute, **kw)


def test_second_call_is_a_hit_with_the_same_value(tmp_path: Path, files, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(tokencache.ENV, raising=False)
    model, data = files
    calls: list[int] = []
    first = _cached(model, data, tmp_path, calls)
    second = _cached(model, data, tmp_path, calls)
    assert first == ([[[101, 7, 102]], [0]], False) and second == ([[[101, 7, 102]], [0]], True)
    assert calls == [1]
    # beside the run, not inside it: `mirror pack OUTPUT_DIR` must not carry it
    entries = list((tmp_path / ".token-cache").glob("*.json"))
    assert len(entries) == 1 and json.loads(entries[0].read_text())["value"] == [[[101, 7, 102]], [0]]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("change", ["data", "tokenizer", "settings", "version"])
def test_any_input_change_misses(tmp_path: Path, files, change: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tokencache.ENV, str(tmp_path / "cache"))
    model, data = files
    calls: list[int] = []
    _cached(model, data, tmp_path, calls)
    over = {}
    if change == "data":
        data.write_text('{"text": "b", "label": "x"}\n')
    elif change == "tokenizer":
        (model / "tokenizer.json").write_text('{"vocab": 2}')
    elif change == "settings":
        over = {"settings": {"max_length": 64}}
    else:
        over = {"version": "v2"}
    _, hit = _cached(model, data, tmp_path, calls, **over)
    assert hit is False and calls == [1, 1]
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2


def test_weights_do_not_change_the_key(tmp_path: Path, files) -> None:
    model, data = files
    key = tokencache.cache_key(data_files=[data], model_dir=model, settings={}, version="v")
    (model / "model.safetensors").write_bytes(b"fine-tuned weights, same tokenizer")
    assert tokencache.cache_key(data_files=[data], model_dir=model, settings={}, version="v") == key


def test_a_corrupt_entry_is_recomputed_and_replaced(tmp_path: Path, files, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tokencache.ENV, str(tmp_path / "cache"))
    model, data = files
    calls: list[int] = []
    _cached(model, data, tmp_path, calls)
    entry = next((tmp_path / "cache").glob("*.json"))
    entry.write_text('{"key": "trunc')  # a crash mid-write cannot leave this (temp + rename), a disk error can
    value, hit = _cached(model, data, tmp_path, calls)
    assert hit is False and calls == [1, 1] and value == [[[101, 7, 102]], [0]]
    assert json.loads(entry.read_text())["value"] == value


def test_classification_recipe_reads_its_tokens_from_the_cache(tmp_path: Path, tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.trainer.test_classification import make_cfg, write_rows
    from trainer.recipes import classification, common

    monkeypatch.setenv(tokencache.ENV, str(tmp_path / "cache"))
    for split, n, seed in (("train", 16, 1), ("valid", 8, 2), ("test", 8, 3)):
        write_rows(tmp_path / f"{split}.jsonl", n, seed)
    cfg = make_cfg(tmp_path, epochs=1)
    rt = common.setup_runtime(cfg)
    net, tok = classification.load(tiny_bert_dir, cfg, rt, new_head=True)
    first = classification.encode_split(cfg, tok, "train", model_dir=tiny_bert_dir)
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1

    def boom(*a, **k):
        raise AssertionError("tokenised again despite a cache entry")

    monkeypatch.setattr(classification, "encode", boom)
    again = classification.encode_split(cfg, tok, "train", model_dir=tiny_bert_dir)
    assert [list(x) for x in again] == [list(x) for x in first] and len(again[0]) == 16
