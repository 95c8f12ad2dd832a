"""JSONL reading (file:line errors, all problems collected) and per-task record normalisation."""

from __future__ import annotations

import pytest

from trainer.config import from_dict
from trainer.data import Row, canonical, classification_example, pair_example, read_jsonl, scan_jsonl, sft_messages
from trainer.errors import DataError

CLS = from_dict({"model_id": "m", "output_dir": "o", "train_file": "t", "labels": ["yes", "no"]})
PAIRS = from_dict({"model_id": "m", "output_dir": "o", "train_file": "t", "task": "embeddings"})


def _row(data: dict, line: int = 1) -> Row:
    return Row(file="d.jsonl", line=line, data=data)


def test_read_jsonl_skips_blank_lines_and_keeps_line_numbers(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2}\n')
    rows = read_jsonl(p)
    assert [(r.line, r.data["a"]) for r in rows] == [(1, 1), (3, 2)]


def test_malformed_row_names_file_and_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"a": 1}\n{"a": 2,}\n')
    with pytest.raises(DataError) as info:
        read_jsonl(p)
    assert info.value.line == 2
    assert str(info.value).startswith(f"{p}:2: not valid JSON (")


def test_scan_collects_every_problem(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"a": 1}\n[1, 2]\n{oops\n\xff\xfe\n{"a": 5}\n')
    rows, problems = scan_jsonl(p)
    assert [r.line for r in rows] == [1, 5]
    assert [(e.line, e.reason.split(" (")[0]) for e in problems] == [
        (2, "expected a JSON object, got list"),
        (3, "not valid JSON"),
        (4, "not UTF-8"),
    ]


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_jsonl(tmp_path / "none.jsonl")
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="file has no rows"):
        read_jsonl(tmp_path / "e.jsonl")


def test_classification_labels_by_name_or_index():
    assert classification_example(CLS, _row({"text": "t", "label": "no"})) == ("t", 1)
    assert classification_example(CLS, _row({"text": "t", "label": 0})) == ("t", 0)
    with pytest.raises(DataError, match=r"d.jsonl:7: label 'maybe' is not one of the config's labels \['yes', 'no'\]"):
        classification_example(CLS, _row({"text": "t", "label": "maybe"}, line=7))
    with pytest.raises(DataError, match="field 'text' must be a non-empty string"):
        classification_example(CLS, _row({"text": " ", "label": "yes"}))


def test_pairs_labels_and_scores():
    assert pair_example(PAIRS, _row({"text_1": "a", "text_2": "b", "label": 1})) == ("a", "b", 1.0)
    assert pair_example(PAIRS, _row({"text_1": "a", "text_2": "b"})) == ("a", "b", None)
    assert pair_example(PAIRS, _row({"text_1": "a", "text_2": "b", "label": 0.25})) == ("a", "b", 0.25)
    with pytest.raises(DataError, match=r"label 2 must be 0/1 or a score in \[0, 1\]"):
        pair_example(PAIRS, _row({"text_1": "a", "text_2": "b", "label": 2}))


def test_sft_record_shapes_normalise_to_messages():
    seed_style = {"system": "S", "input": {"user_question": "Q?", "eligibility": "Eligible"}, "output": "A"}
    assert sft_messages(_row(seed_style)) == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "User question: Q?\nEligibility: Eligible"},
        {"role": "assistant", "content": "A"},
    ]
    assert sft_messages(_row({"prompt": "P", "response": "R"})) == [
        {"role": "user", "content": "P"},
        {"role": "assistant", "content": "R"},
    ]
    msgs = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    assert sft_messages(_row({"messages": msgs})) == msgs
    with pytest.raises(DataError, match="no assistant turn"):
        sft_messages(_row({"messages": [{"role": "user", "content": "u"}]}))
    with pytest.raises(DataError, match="SFT record needs"):
        sft_messages(_row({"question": "q"}))


def test_canonical_ignores_key_order():
    assert canonical(_row({"a": 1, "b": 2})) == canonical(_row({"b": 2, "a": 1}))
