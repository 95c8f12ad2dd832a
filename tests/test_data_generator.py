"""data/generate.py: the committed datasets are its exact output and have the promised properties.

The properties checked here are the ones data/README.md quotes: counts, no duplicates within or
across splits, balanced labels, labels that follow the stated rule, test rows rendered only with
held-out templates and phrasings, validation topics absent from training.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"


def _load_generator():
    spec = importlib.util.spec_from_file_location("data_generate", DATA / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


@pytest.fixture(scope="module")
def files() -> dict[str, list[dict]]:
    return {p.name: [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()] for p in sorted(DATA.glob("*.jsonl"))}


def test_committed_files_are_the_generators_exact_output(tmp_path):
    assert gen.main(["--out", str(tmp_path)]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(p.name for p in DATA.glob("*.jsonl"))
    for name in written:
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), f"{name}: regenerate with 'python data/generate.py'"
    assert gen.main(["--out", str(tmp_path), "--check"]) == 0


def test_check_mode_reports_a_stale_file(tmp_path, capsys):
    gen.main(["--out", str(tmp_path)])
    (tmp_path / "pairs.valid.jsonl").write_text("{}\n")
    assert gen.main(["--out", str(tmp_path), "--check"]) == 1
    assert "pairs.valid.jsonl" in capsys.readouterr().err


def test_two_builds_are_identical():
    a, b = gen.build(), gen.build()
    assert {k: gen.render(v) for k, v in a.items()} == {k: gen.render(v) for k, v in b.items()}


def test_counts(files):
    assert {k: len(v) for k, v in files.items()} == {
        "classifier.train.jsonl": 1200, "classifier.valid.jsonl": 150, "classifier.test.jsonl": 150,
        "pairs.train.jsonl": 900, "pairs.valid.jsonl": 100,
        "sft.train.jsonl": 480, "sft.valid.jsonl": 100,
    }


# --- classifier -------------------------------------------------------------------------------------


def test_classifier_rows_unique_within_and_across_splits(files):
    texts = [r["text"] for s in ("train", "valid", "test") for r in files[f"classifier.{s}.jsonl"]]
    assert len(texts) == len(set(texts)) == 1500
    for s in ("train", "valid", "test"):
        assert all(set(r) == {"text", "label"} for r in files[f"classifier.{s}.jsonl"])


def test_classifier_labels_balanced(files):
    for s, n in (("train", 1200), ("valid", 150), ("test", 150)):
        counts = Counter(r["label"] for r in files[f"classifier.{s}.jsonl"])
        assert set(counts) == set(gen.LABELS)
        assert max(counts.values()) - min(counts.values()) <= 1, (s, counts)
        assert sum(counts.values()) == n


TEST_MARKERS = ("creditor=", "Hi, I pulled my credit from", "Tradeline review:")
TEST_SIGNS = ("=", "pulled my credit", "Tradeline review")  # none of these appear in train/valid formats


def test_test_split_uses_only_held_out_templates(files):
    for r in files["classifier.test.jsonl"]:
        assert r["text"].startswith(TEST_MARKERS), r["text"]
    for s in ("train", "valid"):
        for r in files[f"classifier.{s}.jsonl"]:
            assert not any(m in r["text"] for m in TEST_SIGNS), r["text"]


def _pattern(phrase: str) -> re.Pattern[str]:
    """A phrasing with {placeholders} as a regex that finds it inside a rendered row."""
    parts = re.split(r"\{[a-z_]+\}", phrase)
    return re.compile(".+?".join(re.escape(p) for p in parts))


def test_held_out_claim_phrasings_never_occur_in_train(files):
    train = [r["text"] for r in files["classifier.train.jsonl"] + files["classifier.valid.jsonl"]]
    held = [p for c in gen.CLAIMS for pool in (c.short, c.sentence) for p in gen.split_pool(list(pool))[1]]
    held += sorted(gen.HELD_OUT_DOCS)
    assert len(held) > 60
    for phrase in held:
        pat = _pattern(phrase)
        assert not any(pat.search(t) for t in train), phrase


def _claims_in(text: str, *, test: bool) -> set[str]:
    found = set()
    for c in gen.CLAIMS:
        pools = [gen.split_pool(list(p))[1 if test else 0] for p in (c.short, c.sentence)]
        if any(_pattern(p).search(text) for pool in pools for p in pool):
            found.add(c.key)
    return found


KINDS_FOR_LABEL = {
    "eligible": {"specific"},
    "conditionally_eligible": {"specific", "suspected"},
    "not_eligible": {"accurate"},
    "insufficient_information": {"none"},
}


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_labels_follow_the_stated_rule(files, split):
    """Recover the claim and the evidence from each row's text and re-derive its label."""
    claims = {c.key: c for c in gen.CLAIMS}
    for r in files[f"classifier.{split}.jsonl"]:
        found = _claims_in(r["text"], test=split == "test")
        assert len(found) == 1, (r, found)
        claim = claims[found.pop()]
        assert claim.kind in KINDS_FOR_LABEL[r["label"]], (r, claim.key)
        has_doc = any(d in r["text"] for d in claim.docs)
        if claim.kind == "specific":
            # a specific error is eligible exactly when a document is at hand
            assert has_doc == (r["label"] == "eligible"), r
        if r["label"] == "insufficient_information":
            assert re.search(r"Missing|Unknown|Not listed|unnamed|unknown amount|no account number|no creditor|blank|doesn't list|can't see", r["text"]), r


# --- pairs --------------------------------------------------------------------------------------------


def test_pairs_unique_and_valid_topics_unseen(files):
    train, valid = files["pairs.train.jsonl"], files["pairs.valid.jsonl"]
    keys = [frozenset((r["text_1"], r["text_2"])) for r in train + valid]
    assert len(keys) == len(set(keys)) == 1000
    assert all(r["text_1"] != r["text_2"] and r["label"] in (0, 1) for r in train + valid)
    train_texts = {t for r in train for t in (r["text_1"], r["text_2"])}
    valid_texts = {t for r in valid for t in (r["text_1"], r["text_2"])}
    assert not train_texts & valid_texts
    assert len(train_texts) > 500  # many topics, not a handful of repeated pairs
    assert Counter(r["label"] for r in train) == {1: 540, 0: 360}
    assert Counter(r["label"] for r in valid) == {1: 60, 0: 40}


def test_valid_pairs_make_retrieval_well_posed(files):
    """Queries (anchors) never appear in the corpus, and each corpus text is relevant to exactly
    one anchor, so MRR@10 and recall@1 over the validation pairs measure the model."""
    valid = files["pairs.valid.jsonl"]
    anchors = {r["text_1"] for r in valid}
    corpus = {r["text_2"] for r in valid}
    assert not anchors & corpus
    owner: dict[str, set[str]] = {}
    for r in valid:
        if r["label"] == 1:
            owner.setdefault(r["text_2"], set()).add(r["text_1"])
    assert set(owner) == corpus and all(len(a) == 1 for a in owner.values())
    assert len(anchors) == 21  # one per validation topic


def test_pair_negatives_are_hard(files):
    """A negative shares the concept or the intent with its anchor, so a model must read both."""
    topic_of = {}
    for key, texts in gen._topics(gen.ITEMS + gen.TOOLS).items():
        for t in texts:
            topic_of.setdefault(t, set()).add(key)
    for r in files["pairs.train.jsonl"] + files["pairs.valid.jsonl"]:
        a, b = topic_of[r["text_1"]], topic_of[r["text_2"]]
        if r["label"] == 1:
            assert a & b, r
        else:
            assert not a & b, r
            assert any(x[0] == y[0] or x[1] == y[1] for x in a for y in b), r


# --- SFT ----------------------------------------------------------------------------------------------


HEADINGS = ("SUMMARY:", "ANALYSIS:", "ELIGIBILITY STATUS:", "RECOMMENDED ACTION:", "NEXT STEPS:")


def test_sft_records_have_the_seed_shape_and_no_leakage(files):
    train, valid = files["sft.train.jsonl"], files["sft.valid.jsonl"]
    canon = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert len({canon(r) for r in train}) == 480
    assert len({canon(r) for r in valid}) == 100
    assert not {canon(r) for r in train} & {canon(r) for r in valid}
    dispute = 0
    for r in train + valid:
        assert set(r) == {"system", "input", "output"} and isinstance(r["input"], dict) and r["input"]["user_question"]
        if "eligibility" in r["input"]:
            dispute += 1
            assert set(r["input"]) == {"context", "eligibility", "user_question"}
            positions = [r["output"].index(h) for h in HEADINGS]
            assert positions == sorted(positions), r["output"]
            status = r["output"].split("ELIGIBILITY STATUS:\n", 1)[1].split("\n", 1)[0]
            assert status == r["input"]["eligibility"]
    assert dispute == 406  # 70% of the records are structured dispute cases
    outputs = Counter(r["output"] for r in train if "eligibility" in r["input"])
    assert len(outputs) > 250  # answers vary with the case, unlike the seed's four fixed ones
