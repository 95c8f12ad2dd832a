"""The `trainer` scripting contract (issue 14): the shared exit codes, `check --json` with one
object per config, worst status and "N of M failed", one error style for click's usage errors,
messages that name the real source, and the exact command that continues an interrupted run."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

import trainer.evaluate
import trainer.recipes
from common import exitcodes, signals
from trainer.cli import resume_command
from trainer.errors import Interrupted, NetworkBlocked
from trainer.recipes.common import RESUME_PLACEHOLDER
from tests.trainer.clitools import cli_isolated, invoke, tiny_config  # noqa: F401 (cli_isolated: a fixture)


pytestmark = pytest.mark.usefixtures("cli_isolated")
_invoke = invoke


def _config(tmp_path: Path, name: str = "cfg.yaml", *, rows: str | None = None, **over) -> Path:
    return tiny_config(tmp_path, rows=rows, name=name, **over)[0]


def _one_line(r) -> str:
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.output
    return lines[0]


# --- exit codes ----------------------------------------------------------------------------------


def test_trainer_errors_use_the_shared_table():
    assert NetworkBlocked("h:1").exit_code == exitcodes.NETWORK_BLOCKED == 11  # no longer mirror's 4 (hash mismatch)
    assert Interrupted("x").exit_code == exitcodes.INTERRUPTED == 130


def test_a_usage_error_is_one_trainer_error_line_and_exit_2():
    r = _invoke("run", "--no-such-flag")
    assert r.exit_code == exitcodes.USAGE
    assert _one_line(r) == "trainer: error: No such option '--no-such-flag' (see 'cli run --help')"
    r = _invoke("check")
    assert r.exit_code == 2
    assert _one_line(r) == "trainer: error: Missing argument 'CONFIGS...' (see 'cli check --help')"
    r = _invoke("eval", "x", "--split", "dev")
    assert r.exit_code == 2
    assert _one_line(r).startswith("trainer: error: Invalid value for '--split': 'dev' is not one of")
    r = _invoke("frobnicate")
    assert r.exit_code == 2 and _one_line(r).startswith("trainer: error: No such command 'frobnicate'")


# --- messages that name the real source ----------------------------------------------------------


def test_a_bad_set_is_reported_as_the_set_option_with_did_you_mean(tmp_path):
    r = _invoke("run", str(_config(tmp_path)), "--set", "epoch=1")
    assert r.exit_code == 2
    assert _one_line(r) == "trainer: error: --set epoch: unknown key; did you mean epochs?; fix the --set option (see 'trainer run --help')"
    r = _invoke("check", str(_config(tmp_path)), "--set", "epochs=many")
    assert r.exit_code == 2
    assert _one_line(r) == "trainer: error: --set epochs: epochs must be float, got 'many'; fix the --set option (see 'trainer run --help')"


def test_an_unknown_key_in_the_file_gets_did_you_mean(tmp_path):
    cfg = _config(tmp_path, lerning_rate=1e-4)
    r = _invoke("run", str(cfg))
    assert r.exit_code == 2
    assert _one_line(r) == f"trainer: error: {cfg}: unknown key 'lerning_rate'; did you mean learning_rate?; fix the config (see configs/ for working examples)"


# --- check: --json, several configs, -q, -v --------------------------------------------------------


def test_check_json_one_object_per_config_failing_ones_too_worst_status_and_count(tmp_path):
    good = _config(tmp_path, "good.yaml")
    bad_data = _config(tmp_path, "bad.yaml", rows='{"text": "a", "label": "nope"}\n')
    missing_model = _config(tmp_path, "gone.yaml", model_id="acme/not-here")
    r = _invoke("check", str(good), str(bad_data), str(missing_model), str(tmp_path / "absent.yaml"), "--json", "--bundles", str(tmp_path / "b"))
    objects = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(o["config"], o["ok"], o["exit_code"]) for o in objects] == [
        (str(good), True, 0), (str(bad_data), False, 2), (str(missing_model), False, 3), (str(tmp_path / "absent.yaml"), False, 2),
    ]
    assert objects[0]["errors"] == [] and objects[0]["splits"]["train"]["rows"] == 2
    assert objects[0]["splits"]["train"]["labels"] == {"pos": 1, "neg": 1}
    assert objects[1]["error_count"] == 1 and "label 'nope' is not one of" in objects[1]["errors"][0]
    assert objects[2]["model"] == "acme/not-here: NOT AVAILABLE"
    assert objects[3]["error"] == f"{tmp_path / 'absent.yaml'}: file not found; fix the config (see configs/ for working examples)"
    assert r.exit_code == 3  # the worst status, not the last config's 2
    assert _one_line(r) == "trainer: error: 3 of 4 configs failed the check"


def test_check_quiet_prints_one_verdict_per_config(tmp_path):
    good = _config(tmp_path, "good.yaml")
    r = _invoke("check", str(good), "-q")
    assert r.exit_code == 0 and r.stderr == ""
    assert r.stdout.splitlines() == [f"{good}: OK, 1 warning(s)"]  # the warning: no validation data


def test_check_counts_every_data_error_and_verbose_lists_them_all(tmp_path):
    rows = "".join(json.dumps({"text": f"t{i}", "label": "nope"}) + "\n" for i in range(25))
    cfg = _config(tmp_path, rows=rows)
    r = _invoke("check", str(cfg))
    assert r.exit_code == 2
    assert "errors (25)" in r.stdout and "unknown label (25 rows, e.g. rows 1, 2, 3)" in r.stdout  # one line per kind
    assert "result  FAILED: 25 error(s)" in r.stdout
    assert _one_line(r) == "trainer: error: check found 25 error(s), listed above; fix them and run 'trainer check' again"
    r = _invoke("check", str(cfg), "-v")
    assert r.stdout.count("is not one of the config's labels") == 25 and "more data errors" not in r.stdout


# --- interrupted: the exact command to continue ---------------------------------------------------


def test_resume_command_keeps_every_option_quoted_for_the_shell():
    cmd = resume_command("my configs/c.yaml", bundles_dir="/media/usb", public_keys=("k.pub",), overrides=("epochs=1", "labels=[a, b]"))
    assert cmd == "trainer run 'my configs/c.yaml' --bundles /media/usb --public-key k.pub --set epochs=1 --set 'labels=[a, b]' --resume"


def test_an_interrupted_run_prints_the_exact_command_to_continue(tmp_path, monkeypatch):
    def stopped(cfg, *, model, resume):
        raise Interrupted(f"interrupted at step 3; the state is saved in out/checkpoint: continue with {RESUME_PLACEHOLDER}")

    monkeypatch.setattr(trainer.recipes, "run", stopped)
    cfg = _config(tmp_path)
    r = _invoke("run", str(cfg), "--set", "epochs=2", "--set", "batch_size=4", "-q")
    assert r.exit_code == 130
    assert _one_line(r) == (
        f"trainer: error: interrupted at step 3; the state is saved in out/checkpoint: "
        f"continue with trainer run {cfg} --set epochs=2 --set batch_size=4 --resume"
    )


def test_sigterm_exits_128_plus_its_number(tmp_path, monkeypatch):
    def terminated(cfg, *, model, resume):
        raise signals.Terminated(signal.SIGTERM)

    monkeypatch.setattr(trainer.recipes, "run", terminated)
    r = _invoke("run", str(_config(tmp_path)), "-q")
    assert r.exit_code == 128 + signal.SIGTERM == 143


# --- eval: the best split the run has ------------------------------------------------------------


def test_eval_without_split_says_which_split_it_used(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer.evaluate, "evaluate", lambda target, *, split, bundles_dir: {"split": split or "valid", "accuracy": 0.5})
    r = _invoke("eval", str(tmp_path), "--json")
    assert r.exit_code == 0
    assert json.loads(r.stdout) == {"split": "valid", "accuracy": 0.5}
    assert r.stderr == "evaluated on the valid split (the best one this run has; --split picks another)\n"
    assert _invoke("eval", str(tmp_path), "-q").stderr == ""


def test_best_split_prefers_test_then_valid(tmp_path):
    from trainer.config import from_dict
    from trainer.evaluate import best_split

    base = {"model_id": "m", "output_dir": "o", "train_file": "t.jsonl", "labels": ["a", "b"]}
    assert best_split(from_dict({**base, "valid_file": "v.jsonl", "test_file": "x.jsonl"})) == "test"
    assert best_split(from_dict({**base, "valid_file": "v.jsonl"})) == "valid"
    assert best_split(from_dict(base)) == "train"


def test_run_quiet_silences_progress_for_that_command_only(tmp_path, monkeypatch):
    from trainer.recipes import RunResult, common

    def noisy(cfg, *, model, resume):
        common.log("epoch 1/1 ...")
        return RunResult(output_dir=Path(cfg.output_dir), metrics={"final": {}}, wall_time_s=1.0)

    monkeypatch.setattr(trainer.recipes, "run", noisy)
    r = _invoke("run", str(_config(tmp_path)), "-q")
    assert r.exit_code == 0 and r.stderr == ""
    assert r.stdout.startswith("trained classification model in 1.0s")  # the result still prints
    r = _invoke("run", str(_config(tmp_path)), "--overwrite")
    assert r.exit_code == 0 and "epoch 1/1 ..." in r.stderr and "model: " in r.stderr  # -q did not stick
