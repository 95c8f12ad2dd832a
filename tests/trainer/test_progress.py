"""Step lines of a run whose output is not a terminal: a tiny classifier trained for real, and
the reporter's interval, format, resume-aware rate and silence (quiet, terminal, off the main rank)."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import pytest

from tests.trainer.test_classification import local, make_cfg, write_rows
from common import progress
from trainer.recipes import run

# `step 12/40 (30 %), loss 0.6931, 85.20 steps/s, 681.6 samples/s, ETA 0 s`
STEP = re.compile(
    r"^step (?P<step>\d+)/(?P<total>\d+) \((?P<pct>\d+) %\), loss (?P<loss>\d+\.\d{4}), "
    r"(?P<rate>\d+\.\d{2}) steps/s, (?P<rows>\d+\.\d) samples/s, ETA (?P<eta>\d+ s|\d+ min \d+ s|\d+ h \d+ min)$"
)


def test_run_prints_step_lines_off_a_terminal(tmp_path: Path, tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture) -> None:
    monkeypatch.setenv(progress.STEPS_INTERVAL_ENV, "0.001")  # a tiny model's step is milliseconds
    for split, n, seed in (("train", 64, 1), ("valid", 24, 2), ("test", 8, 3)):
        write_rows(tmp_path / f"{split}.jsonl", n, seed)
    result = run(make_cfg(tmp_path, epochs=2), model=local(tiny_bert_dir))
    err = capfd.readouterr().err
    lines = [m for m in map(STEP.match, err.splitlines()) if m]
    assert lines, err
    steps = [int(m["step"]) for m in lines]
    assert steps == sorted(set(steps)) and steps[-1] < 16  # the last step is the epoch line's
    assert {int(m["total"]) for m in lines} == {16}  # 64 rows / 8 a step x 2 epochs
    curve = {int(s): loss for s, loss in result.metrics["train_loss_curve"]}
    for m in lines:
        assert float(m["loss"]) == pytest.approx(curve[int(m["step"])], abs=1e-4)
        assert float(m["rate"]) > 0
        assert float(m["rows"]) == pytest.approx(float(m["rate"]) * 8, rel=0.02, abs=0.1)
        assert int(m["pct"]) == 100 * int(m["step"]) // 16
    # step lines come between the epoch lines, not only at their end
    order = [("step" if STEP.match(l) else "epoch") for l in err.splitlines() if STEP.match(l) or l.startswith("epoch ")]
    assert order.index("epoch") > 0 and "step" in order[order.index("epoch") :]


def test_interval_and_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(progress.STEPS_INTERVAL_ENV, "0.05")
    out = io.StringIO()
    rep = progress.Steps(total=100, done=40, rows_per_step=16, stream=out)
    rep.step(41, 1.0)  # before the interval: nothing
    assert out.getvalue() == ""
    time.sleep(0.06)
    rep.step(50, 0.5)
    line = out.getvalue().strip()
    m = STEP.match(line)
    assert m, line
    # 10 steps since this reporter started (not 50: a resumed run's earlier steps are not its rate)
    rate = float(m["rate"])
    assert 0 < rate < 10 / 0.06 + 1 and m["step"] == "50" and m["pct"] == "50"
    assert rep.step(100, 0.1) is None and out.getvalue().strip() == line  # the end: the epoch line says it


def test_step_line_format() -> None:
    assert progress.step_line(step=120, total=400, loss=0.41234, steps_per_s=2.1, rows_per_step=32) == (
        "step 120/400 (30 %), loss 0.4123, 2.10 steps/s, 67.2 samples/s, ETA 2 min 13 s"
    )
    assert progress.step_line(step=1, total=2, loss=None, steps_per_s=0.0, rows_per_step=None) == "step 1/2 (50 %), 0.00 steps/s, ETA unknown"


def test_silent_when_quiet_or_not_main(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(progress.STEPS_INTERVAL_ENV, "0.001")
    out = io.StringIO()
    other_rank = progress.Steps(total=10, enabled=False, stream=out)
    progress.configure(quiet=True)
    try:
        quiet = progress.Steps(total=10, stream=out)
    finally:
        progress.configure()
    time.sleep(0.01)
    for rep in (other_rank, quiet):
        rep.step(5, 1.0)
    assert out.getvalue() == ""
    assert progress.log_interval(progress.STEPS_INTERVAL_ENV, progress.STEPS_LOG_INTERVAL) == 0.001
    monkeypatch.delenv(progress.STEPS_INTERVAL_ENV)
    assert progress.log_interval(progress.STEPS_INTERVAL_ENV, progress.STEPS_LOG_INTERVAL) == progress.STEPS_LOG_INTERVAL
