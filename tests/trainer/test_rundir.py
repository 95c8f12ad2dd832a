"""`trainer run` and its output_dir (trainer.rundir), through the CLI: it never writes over a folder
that is not one of its runs, never discards a resumable checkpoint unasked, and says so before any
model is loaded (the configs here name a model that resolves nowhere: reaching it would be exit 3)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.trainer.clitools import error_line
from tests.trainer.test_classification import LABELS, _interrupt_at, write_rows
from trainer import rundir

NOT_A_RUN = (
    "is not empty and is not a trainer run (it has neither .trainer-run nor a lineage.json record); "
    "trainer run never writes over files it did not make: set output_dir to a new or empty folder"
)


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused_checkpoint(out: Path) -> str:
    return (
        f"output_dir {out} holds the resumable checkpoint of an interrupted run ({out / 'checkpoint' / 'state.pt'}); "
        "continue it with --resume, or discard it and start again with --overwrite"
    )


@pytest.mark.parametrize("flags", [(), ("--overwrite",), ("--resume",)], ids=["plain", "overwrite", "resume"])
def test_a_folder_that_is_not_a_run_is_never_written_to(tmp_path, trainer_cli, config_file, flags):
    out = tmp_path / "out"
    (out / "checkpoint").mkdir(parents=True)
    (out / "notes.txt").write_text("the owner's notes")
    (out / "checkpoint" / "state.pt").write_bytes(b"another tool's checkpoint")
    before = _tree(out)
    r = trainer_cli("run", config_file(), *flags)
    assert (r.exit_code, error_line(r)) == (2, f"output_dir {out} {NOT_A_RUN}")
    assert _tree(out) == before


def test_an_interrupted_run_is_not_restarted_unasked(tmp_path, trainer_cli, config_file):
    out = tmp_path / "out"
    rundir.mark(out)
    (out / "checkpoint").mkdir()
    (out / "checkpoint" / "state.pt").write_bytes(b"resume state")
    before = _tree(out)
    r = trainer_cli("run", config_file())
    assert (r.exit_code, error_line(r)) == (2, _refused_checkpoint(out))
    assert _tree(out) == before
    for flag in ("--resume", "--overwrite"):  # either flag passes the guard: then the model is looked for
        r = trainer_cli("run", config_file(), flag)
        assert r.exit_code == 3 and error_line(r).startswith("model acme/not-here is not available offline")


@pytest.mark.parametrize("setup, flags, message", [
    (lambda out: out.write_text("a file"), (), "exists and is not a folder; set output_dir to a new or empty folder"),
    (lambda out: None, ("--resume",), "has nothing to resume ({ckpt} does not exist); run without --resume to start training"),
    (lambda out: out.mkdir(), ("--resume",), "has nothing to resume ({ckpt} does not exist); run without --resume to start training"),
    (rundir.mark, ("--resume",), "has nothing to resume ({ckpt} does not exist); run without --resume to start training"),
    (rundir.mark, ("--resume", "--overwrite"), "was given both --resume and --overwrite; pass --resume to continue the run or --overwrite to start it again, not both"),
], ids=["a-file", "resume-missing", "resume-empty", "resume-no-checkpoint", "both-flags"])
def test_other_refusals_come_before_the_model_too(tmp_path, trainer_cli, config_file, setup, flags, message):
    out = tmp_path / "out"
    setup(out)
    r = trainer_cli("run", config_file(), *flags)
    assert (r.exit_code, error_line(r)) == (2, f"output_dir {out} " + message.format(ckpt=out / "checkpoint" / "state.pt"))


def _refused_finished(out: Path) -> str:
    return (
        f"output_dir {out} holds a finished run (its lineage.json): trainer run keeps it unless told otherwise; "
        "write the new run elsewhere with --set output_dir=NEW_FOLDER, or replace this one with --overwrite"
    )


def _finished(out: Path) -> None:
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"weights")
    (out / "lineage.json").write_text(json.dumps({"lineage_version": 1, "task": "classification"}))


def test_a_finished_run_is_kept_unless_overwrite_is_given(tmp_path, trainer_cli, config_file):
    out = tmp_path / "out"
    _finished(out)
    before = _tree(out)
    r = trainer_cli("run", config_file(), "--set", "epochs=1")
    # refused before the model is looked for (it resolves nowhere: that would be exit 3)
    assert (r.exit_code, error_line(r)) == (2, _refused_finished(out))
    assert _tree(out) == before
    r = trainer_cli("run", config_file(), "--overwrite")  # said: the guard lets it pass, then the model is looked for
    assert r.exit_code == 3 and f"note: --overwrite: the finished run in {out} is replaced when this one starts training" in r.stderr
    assert _tree(out) == before  # nothing is replaced before training starts
    r = trainer_cli("run", config_file(), "--set", f"output_dir={tmp_path / 'elsewhere'}")  # the way the message names
    assert r.exit_code == 3 and error_line(r).startswith("model acme/not-here is not available offline")


def test_a_run_that_did_not_finish_is_replaced_without_a_flag(tmp_path, trainer_cli, config_file):
    out = tmp_path / "out"
    _finished(out)
    rundir.mark(out)  # an --overwrite of it started (and died before its first checkpoint): it is no longer finished
    assert not rundir.is_finished(out) and rundir.is_run(out)
    r = trainer_cli("run", config_file())
    assert r.exit_code == 3 and error_line(r).startswith("model acme/not-here is not available offline")


@pytest.mark.parametrize("lineage", ["fifo", '{"not": "a lineage record"}', "not json", "[1, 2]"])
def test_a_lookalike_lineage_does_not_make_a_run(tmp_path, trainer_cli, config_file, lineage):
    out = tmp_path / "out"
    out.mkdir()
    if lineage == "fifo":
        os.mkfifo(out / "lineage.json")
    else:
        (out / "lineage.json").write_text(lineage)
    r = trainer_cli("run", config_file(), "--overwrite", timeout=30)
    assert (r.exit_code, error_line(r)) == (2, f"output_dir {out} {NOT_A_RUN}")


def test_check_reports_an_output_dir_run_would_refuse(tmp_path, trainer_cli, config_file, local_model):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = trainer_cli("check", config_file(model_id=str(local_model)))
    assert r.exit_code == 2
    assert f"  - output_dir {out} {NOT_A_RUN}\n" in r.stdout


# --- a real run's folder, from start to finish ----------------------------------------------------


def test_a_run_marks_its_folder_and_resume_or_overwrite_decide_the_checkpoint(tmp_path, trainer_cli, config_file, tiny_bert_dir, monkeypatch):
    for split, n, seed in (("train", 32, 1), ("valid", 16, 2)):
        write_rows(tmp_path / f"{split}.jsonl", n, seed)
    cfg = config_file(
        model_id=str(tiny_bert_dir), train_file=str(tmp_path / "train.jsonl"), valid_file=str(tmp_path / "valid.jsonl"),
        labels=LABELS, epochs=2, batch_size=8, max_length=32, learning_rate=1e-2,
    )
    out = tmp_path / "out"
    state = out / "checkpoint" / "state.pt"

    _interrupt_at(monkeypatch, 3)  # Ctrl-C in the third batch: the recipe saves a checkpoint
    r = trainer_cli("run", cfg)
    monkeypatch.undo()
    assert r.exit_code == 130 and state.is_file() and (out / rundir.MARKER).is_file()

    saved = state.read_bytes()
    r = trainer_cli("run", cfg)
    assert (r.exit_code, error_line(r)) == (2, _refused_checkpoint(out))
    assert state.read_bytes() == saved

    r = trainer_cli("run", cfg, "--resume")
    assert r.exit_code == 0, r.output
    assert "resuming from" in r.stderr
    assert (out / "lineage.json").is_file() and not state.exists()
    assert not (out / rundir.MARKER).exists()  # finished: lineage.json says it is a run, packs hold only the model
    assert json.loads((out / "metrics.json").read_text())["steps"] == 8

    finished = _tree(out)
    r = trainer_cli("run", cfg, "--set", "epochs=1")  # a finished run is kept: one line, nothing touched
    assert (r.exit_code, error_line(r)) == (2, _refused_finished(out))
    assert _tree(out) == finished
    r = trainer_cli("run", cfg, "--set", "epochs=1", "--set", f"output_dir={tmp_path / 'try1'}")  # elsewhere, as it says
    assert r.exit_code == 0, r.output
    assert _tree(out) == finished and json.loads((tmp_path / "try1" / "metrics.json").read_text())["steps"] == 4
    r = trainer_cli("run", cfg, "--overwrite")  # replaced when asked, and said
    assert r.exit_code == 0, r.output
    assert "resuming from" not in r.stderr and f"the finished run in {out} is replaced" in r.stderr

    _interrupt_at(monkeypatch, 5)
    assert trainer_cli("run", cfg, "--overwrite").exit_code == 130  # it is no longer finished: marked, a checkpoint
    monkeypatch.undo()
    r = trainer_cli("run", cfg, "--overwrite")
    assert r.exit_code == 0, r.output
    assert "resuming from" not in r.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 8 and len(metrics["train_loss_curve"]) == 8  # all of it trained again
