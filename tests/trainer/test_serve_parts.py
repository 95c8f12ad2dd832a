"""`trainer serve`'s parts in-process: the dynamic batcher, the knowledge base and its cache, and
the start-up refusals (one line, an exit code, before any model loads)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from tests.trainer.clitools import error_line
from trainer.serve import kb
from trainer.serve.batching import Batcher

# --- batching ------------------------------------------------------------------------------------


def test_requests_that_arrive_during_a_pass_share_the_next_one():
    gate, seen = threading.Event(), []

    def double(batch):
        seen.append([len(p) for p in batch])
        if len(seen) == 1:
            gate.wait(30)  # hold the first pass while more requests queue up
        return [[2 * x for x in p] for p in batch]

    b = Batcher("t", double, max_items=100, max_wait_s=0.0).start()
    first = b.submit([1], size=1)
    while b.in_flight == 0:
        time.sleep(0.001)
    later = [b.submit([i, i + 1], size=2) for i in range(5)]
    gate.set()
    assert first.result(30) == [2]
    assert [f.result(30) for f in later] == [[2 * i, 2 * i + 2] for i in range(5)]
    assert seen == [[1], [2, 2, 2, 2, 2]] and b.passes == 2
    b.stop(timeout=30)


def test_a_pass_never_takes_more_than_max_items():
    gate, sizes = threading.Event(), []

    def fn(batch):
        sizes.append(sum(batch))
        gate.wait(30)
        return batch

    b = Batcher("t", fn, max_items=5, max_wait_s=0.0).start()
    futs = [b.submit(2, size=2) for _ in range(6)]
    gate.set()
    assert [f.result(30) for f in futs] == [2] * 6
    assert all(s <= 5 for s in sizes) and sum(sizes) == 12
    b.stop(timeout=30)


def test_one_bad_request_fails_alone_and_a_failing_pass_does_not_kill_the_worker():
    def fn(batch):
        if "boom" in batch:
            raise RuntimeError("the model broke")
        return [ValueError(f"bad {p}") if p == "bad" else p.upper() for p in batch]

    b = Batcher("t", fn, max_items=10, max_wait_s=0.05).start()
    good, bad = b.submit("ok"), b.submit("bad")
    assert good.result(30) == "OK"
    with pytest.raises(ValueError, match="bad bad"):
        bad.result(30)
    with pytest.raises(RuntimeError, match="the model broke"):
        b.submit("boom").result(30)
    assert b.submit("still").result(30) == "STILL"
    b.stop(timeout=30)
    assert b.pending == 0


def test_a_pass_that_fails_is_rerun_one_request_at_a_time_so_only_the_culprit_fails():
    gate, seen = threading.Event(), []

    def fn(batch):
        seen.append(list(batch))
        gate.wait(30)
        if "poison" in batch:
            raise TypeError("the tokenizer cannot read this")
        return [p.upper() for p in batch]

    b = Batcher("t", fn, max_items=10, max_wait_s=0.0).start()
    first = b.submit("first")  # holds the worker while the next batch queues up behind it
    while b.in_flight == 0:
        time.sleep(0.001)
    futs = [b.submit(p) for p in ("a", "poison", "b")]
    gate.set()
    assert first.result(30) == "FIRST" and futs[0].result(30) == "A" and futs[2].result(30) == "B"
    with pytest.raises(TypeError, match="cannot read"):
        futs[1].result(30)
    assert seen == [["first"], ["a", "poison", "b"], ["a"], ["poison"], ["b"]] and b.isolated == 1
    b.stop(timeout=30)
    assert b.pending == 0


def test_stop_answers_what_was_queued_then_refuses():
    gate = threading.Event()
    b = Batcher("t", lambda batch: (gate.wait(30), batch)[1], max_items=1, max_wait_s=0.0).start()
    futs = [b.submit(i) for i in range(3)]
    stopper = threading.Thread(target=b.stop, kwargs={"timeout": 30})
    stopper.start()
    gate.set()
    stopper.join(30)
    assert [f.result(0) for f in futs] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="shutting down"):
        b.submit(9).result(0)


# --- knowledge base ------------------------------------------------------------------------------


def test_paragraphs_are_blank_line_blocks_with_their_heading():
    text = "# Title\n\nfirst para\nstill first\n\n\n## Sub\n### Subsub\n\nsecond\n\n  \nthird\n"
    assert kb.split_paragraphs(text) == ["# Title\nfirst para\nstill first", "## Sub\n### Subsub\nsecond", "third"]


def test_the_cache_embeds_each_paragraph_once_by_content(tmp_path, tiny_st_dir):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(tiny_st_dir), device="cpu")
    embedded: list[str] = []

    def embed(texts):
        embedded.extend(texts)
        return st.encode(texts, convert_to_tensor=True, normalize_embeddings=True)

    folder, cache = tmp_path / "kb", tmp_path / "cache"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.md").write_text("one\n\ntwo\n")
    (folder / "sub" / "b.md").write_text("three\n\none\n")  # "one" twice: embedded once
    (folder / "notes.txt").write_text("not markdown")
    first = kb.build(folder, embed=embed, model_dir=tiny_st_dir, cache_dir=cache)
    assert sorted(embedded) == ["one", "three", "two"] and first.info()["paragraphs"] == 4 and first.embedded == 3
    assert [f"{p.source}#{p.index}" for p in first.paragraphs] == ["a.md#0", "a.md#1", "sub/b.md#0", "sub/b.md#1"]
    assert list(cache.iterdir()) == [first.cache_file]

    embedded.clear()
    again = kb.build(folder, embed=embed, model_dir=tiny_st_dir, cache_dir=cache)
    assert embedded == [] and again.from_cache == 4 and again.embedded == 0
    assert (again.vectors - first.vectors).abs().max() < 1e-6

    (folder / "a.md").write_text("one\n\ntwo, edited\n")
    changed = kb.build(folder, embed=embed, model_dir=tiny_st_dir, cache_dir=cache)
    assert embedded == ["two, edited"] and changed.embedded == 1 and changed.from_cache == 3
    hit = changed.search(changed.vectors[1], 1)
    assert hit[0][0].text == "two, edited" and hit[0][1] == pytest.approx(1.0, abs=1e-5)

    first.cache_file.write_bytes(b"garbage")  # a damaged cache is rebuilt, not trusted
    embedded.clear()
    rebuilt = kb.build(folder, embed=embed, model_dir=tiny_st_dir, cache_dir=cache)
    assert sorted(embedded) == ["one", "three", "two, edited"] and (rebuilt.vectors - changed.vectors).abs().max() < 1e-6
    assert not [p for p in cache.iterdir() if p != first.cache_file]  # no temporaries left


def test_the_cache_is_per_model_weights(tmp_path, tiny_st_dir):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_st_dir, other)
    assert kb.model_key(other) == kb.model_key(tiny_st_dir)
    weights = next(other.rglob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert kb.model_key(other) != kb.model_key(tiny_st_dir)


@pytest.mark.parametrize(
    ("files", "fragment"),
    [({}, "no paragraphs in any .md file"), ({"x.md": b"\xff\xfe bad"}, "x.md is not UTF-8 text")],
)
def test_knowledge_base_problems_are_serve_errors(tmp_path, files, fragment):
    from trainer.errors import ServeError

    folder = tmp_path / "kb"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    with pytest.raises(ServeError, match=fragment):
        kb.read_folder(folder)
    with pytest.raises(ServeError, match="no such folder"):
        kb.read_folder(tmp_path / "missing")


# --- start-up refusals ---------------------------------------------------------------------------


@pytest.fixture
def st_run(tmp_path, tiny_st_dir) -> Path:
    """A folder that looks like an embeddings run to `trainer serve` (a copy of a tiny ST model)."""
    import shutil

    run = tmp_path / "emb"
    shutil.copytree(tiny_st_dir, run)
    return run


def test_startup_refusals_are_one_line_with_an_exit_code(tmp_path, st_run, trainer_cli):
    r = trainer_cli("serve", tmp_path / "nope", "--port", "0")
    assert r.exit_code == 2 and "no such folder" in error_line(r)
    r = trainer_cli("serve", str(st_run), str(st_run), "--port", "0")
    assert r.exit_code == 2 and "serve one model per task" in error_line(r)
    (tmp_path / "kb").mkdir()
    r = trainer_cli("serve", str(tmp_path), "--port", "0")
    assert r.exit_code == 2 and "not a model folder" in error_line(r)
    r = trainer_cli("serve", "acme/not-here", "--bundles", str(tmp_path / "kb"), "--port", "0")
    assert r.exit_code == 3 and "mirror pull acme/not-here" in error_line(r)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = trainer_cli("serve", str(st_run), "--port", str(port))
        assert r.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in error_line(r)
    r = trainer_cli("serve", str(st_run), "--port", "70000")
    assert r.exit_code == 2 and "not a TCP port" in error_line(r)


def test_tls_and_token_file_refusals_come_before_any_model_loads(tmp_path, st_run, trainer_cli):
    from tests.fixtures.registry import self_signed

    cert, key, _ = self_signed(tmp_path / "tls")
    r = trainer_cli("serve", str(st_run), "--port", "0", "--tls-cert", str(cert))
    assert r.exit_code == 2 and "--tls-cert needs --tls-key too" in error_line(r)
    r = trainer_cli("serve", str(st_run), "--port", "0", "--tls-cert", str(key), "--tls-key", str(key))
    assert r.exit_code == 2 and "holds no PEM certificate" in error_line(r)
    weak = tmp_path / "tokens.txt"
    weak.write_text("ci:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n")
    r = trainer_cli("serve", str(st_run), "--port", "0", "--token-file", str(weak))
    assert r.exit_code == 2 and "tokens.txt:1 (ci): the token is guessable" in error_line(r)
    r = trainer_cli("serve", str(st_run), "--port", "0", "--token-file", str(tmp_path / "missing.txt"))
    assert r.exit_code == 2 and "no such file" in error_line(r)


def test_help_says_what_auto_precision_does_on_a_cpu(trainer_cli):
    """What test_serving_precision_on_a_cpu checks serving_precision does, in the help's words."""
    text = " ".join(trainer_cli("serve", "--help").output.split())
    assert "auto: bf16 weights on a CPU with native bf16 (AVX512-BF16/AMX; /health says bf16-pure), else fp32" in text
    assert "fp32 on a CPU (measured faster" not in text  # what it said while serving bf16-pure


def test_a_knowledge_base_needs_an_embedding_model(tmp_path, tiny_lm_dir, trainer_cli):
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "a.md").write_text("text\n")
    r = trainer_cli("serve", str(tiny_lm_dir), "--knowledge-base", str(tmp_path / "kb"), "--port", "0")
    assert r.exit_code == 2 and "--knowledge-base needs an embedding model" in error_line(r)


def test_forward_passes_cut_by_row_count_and_padding():
    import random

    from trainer.serve.models import MAX_PADDING, _chunks

    rng = random.Random(0)
    lengths = [rng.randint(3, 90) for _ in range(200)]
    order = sorted(range(200), key=lambda i: lengths[i])
    chunks = _chunks(order, lengths, limit=16)
    assert sorted(i for c in chunks for i in c) == list(range(200))
    for c in chunks:
        real, padded = sum(lengths[i] for i in c), len(c) * max(lengths[i] for i in c)
        assert len(c) <= 16 and (len(c) == 1 or padded <= (1 + MAX_PADDING) * real)
    assert _chunks([0, 1, 2], [5, 5, 5], limit=2) == [[0, 1], [2]]


def test_several_workers_run_passes_side_by_side():
    both = threading.Barrier(2, timeout=30)  # broken (BrokenBarrierError) unless two passes overlap

    def fn(batch):
        both.wait()
        return batch

    b = Batcher("t", fn, max_items=1, max_wait_s=0.0, workers=2).start()
    futs = [b.submit(i) for i in range(2)]
    assert [f.result(30) for f in futs] == [0, 1] and b.passes == 2
    b.stop(timeout=30)


def test_serving_precision_on_a_cpu():
    import torch

    from trainer.recipes.common import cpu_has_native_bf16
    from trainer.serve.server import serving_precision

    cpu = torch.device("cpu")
    assert serving_precision("fp32", cpu) == "fp32" and serving_precision("bf16", cpu) == "bf16-pure"
    assert serving_precision("auto", cpu) == ("bf16-pure" if cpu_has_native_bf16() else "fp32")
