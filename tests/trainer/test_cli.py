"""The `trainer` command line: one error boundary, offline dispatch, and `check` on real data."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import trainer.evaluate
import trainer.recipes
from mirror.bundle.write.driver import write_bundle
from trainer.errors import Interrupted
from trainer.offline import guard_active
from trainer.recipes import RunResult
from tests.trainer.clitools import cli_isolated, invoke  # noqa: F401 (cli_isolated: a fixture)

SEED = Path(__file__).resolve().parents[2].parent / "shared" / "seed-data"
needs_seed = pytest.mark.requires("seed-data")  # skipped without ../shared on a user's machine, failed in CI
REPO_ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("cli_isolated")
_invoke = invoke


def _config(tmp_path: Path, **over) -> Path:
    model = tmp_path / "base-model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text('{"model_type": "bert"}')
    train = tmp_path / "train.jsonl"
    train.write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": "neg"}\n')
    raw = {"model_id": str(model), "output_dir": str(tmp_path / "out"), "train_file": str(train), "labels": ["pos", "neg"], **over}
    path = tmp_path / "cfg.yaml"
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in raw.items()))
    return path


def _interrupted_run(out: Path) -> None:
    """What an interrupted run leaves: its marker and a resumable checkpoint."""
    from trainer import rundir

    rundir.mark(out)
    (out / "checkpoint").mkdir()
    (out / "checkpoint" / "state.pt").write_bytes(b"x")


# --- help ----------------------------------------------------------------------------------------


def test_help_shows_examples_for_every_command():
    top = _invoke("--help")
    assert top.exit_code == 0
    assert "trainer run configs/classifier.yaml --set epochs=1" in top.output
    for cmd, example in (("run", "--resume"), ("check", "trainer check configs/classifier.yaml"), ("eval", "--split valid"), ("predict", "trainer predict runs/classifier")):
        r = _invoke(cmd, "--help")
        assert r.exit_code == 0 and "Examples" in r.output and example in r.output


def test_the_exit_code_table_is_in_the_top_level_help_once_and_the_commands_point_to_it():
    from common import exitcodes

    for args in ((), ("run",), ("check",), ("eval",), ("predict",)):
        r = _invoke(*args, "--help")
        assert r.exit_code == 0
        lines = r.output.rstrip().splitlines()
        if args:  # issue 22: the 13-line table is not repeated in every command's --help
            assert lines[-1].strip() == "Exit codes: see 'trainer --help' or the README."
            assert " 11  network blocked" not in r.output
        else:
            assert lines[-1].split() == ["130", *exitcodes.TABLE[-1][1].split()]
            assert "Exit codes:" in r.output and " 11  network blocked" in r.output
        assert "models/classifier" not in r.output  # the configs write to runs/
        assert "-q, --quiet" in r.output or not args  # every command has -q/-v
        assert "-v, --verbose" in r.output or not args


def test_python_dash_m_trainer_works():
    out = subprocess.run([sys.executable, "-m", "trainer", "--version"], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "trainer, version 0.1.0"


# --- the error boundary --------------------------------------------------------------------------


def test_config_problems_are_one_line_all_listed(tmp_path):
    cfg = _config(tmp_path, bogus=1, batch_size="lots")
    r = _invoke("run", str(cfg))
    assert r.exit_code == 2
    assert r.stdout == ""
    assert r.stderr == (
        f"trainer: error: {cfg}: 2 problems: unknown key 'bogus'; batch_size must be int, got 'lots'; "
        "fix the config (see configs/ for working examples)\n"
    )


def test_missing_model_exact_message_no_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _config(tmp_path, model_id="acme/not-here")
    r = _invoke("run", str(cfg))
    assert r.exit_code == 3
    assert r.stderr == (
        "trainer: error: model acme/not-here is not available offline: on a connected host run "
        "'mirror pull acme/not-here', copy the bundle into bundles/ here\n"
    )


def test_check_malformed_jsonl_lists_file_line_and_exits_nonzero(tmp_path):
    cfg = _config(tmp_path)
    train = tmp_path / "train.jsonl"
    train.write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": \n{"text": "c", "label": "nope"}\n')
    r = _invoke("check", str(cfg))
    assert r.exit_code == 2
    assert f"{train}:2: not valid JSON (Expecting value at column" in r.stdout
    assert f"{train}:3: label 'nope' is not one of the config's labels ['pos', 'neg']" in r.stdout
    assert r.stderr == "trainer: error: check found 2 error(s), listed above; fix them and run 'trainer check' again\n"
    assert "Traceback" not in r.output


def test_set_overrides_reach_check(tmp_path):
    cfg = _config(tmp_path)
    r = _invoke("check", str(cfg), "--set", "labels=[pos]")
    assert r.exit_code == 2
    assert "label 'neg' is not one of the config's labels ['pos']" in r.stdout


# --- run / eval / predict dispatch ---------------------------------------------------------------


def test_run_resolves_then_trains_behind_the_network_guard(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cfg, *, model, resume):
        seen.update(cfg=cfg, model=model, resume=resume, guarded=guard_active(), offline=os.environ["HF_HUB_OFFLINE"])
        return RunResult(output_dir=Path(cfg.output_dir), metrics={"final": {"valid": {"n": 16, "accuracy": 0.8125, "macro_f1": 0.53333, "per_class": {}}, "test": {"n": 8, "accuracy": 0.75}}, "epochs": [], "warning": "RANDOM-INITIALISED"}, wall_time_s=12.34)

    monkeypatch.setattr(trainer.recipes, "run", fake_run)
    _interrupted_run(tmp_path / "out")
    r = _invoke("run", str(_config(tmp_path)), "--set", "epochs=2", "--resume")
    assert r.exit_code == 0, r.output
    assert seen["guarded"] and seen["offline"] == "1" and seen["resume"] is True
    assert seen["cfg"].epochs == 2.0
    assert (seen["model"].source, seen["model"].path) == ("local", (tmp_path / "base-model").resolve())
    assert r.stdout.splitlines() == [
        f"trained classification model in 12.3s -> {tmp_path / 'out'}",
        "  valid: n 16  accuracy 0.8125  macro_f1 0.5333",
        "  test: n 8  accuracy 0.75",
        "  note: RANDOM-INITIALISED",
    ]
    assert not guard_active()  # lifted once the command is done


def test_recipe_interrupt_is_exit_130_with_its_message(tmp_path, monkeypatch):
    def interrupted(cfg, *, model, resume):
        raise Interrupted("interrupted at step 3; the state is saved in out/checkpoint: continue with 'trainer run CONFIG --resume'")

    monkeypatch.setattr(trainer.recipes, "run", interrupted)
    r = _invoke("run", str(_config(tmp_path)))
    assert r.exit_code == 130
    assert r.stderr.splitlines()[-1].startswith("trainer: error: interrupted at step 3;")


def test_bare_ctrl_c_says_whether_a_checkpoint_exists(tmp_path, monkeypatch):
    def ctrl_c(cfg, *, model, resume):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.recipes, "run", ctrl_c)
    cfg = _config(tmp_path)
    r = _invoke("run", str(cfg))
    assert r.exit_code == 130
    assert r.stderr.splitlines()[-1] + "\n" == f"trainer: error: interrupted before a checkpoint was saved in {tmp_path / 'out'}; rerun the same command to start again\n"
    _interrupted_run(tmp_path / "out")
    r = _invoke("run", str(cfg), "--resume")
    assert r.stderr.splitlines()[-1] + "\n" == f"trainer: error: interrupted: resumable checkpoint left in {tmp_path / 'out' / 'checkpoint'}; continue with: trainer run {cfg} --resume\n"


def test_an_os_error_is_one_line_too(tmp_path, monkeypatch):
    def read_only(cfg, *, model, resume):
        raise PermissionError(13, "Permission denied", cfg.output_dir)

    monkeypatch.setattr(trainer.recipes, "run", read_only)
    r = _invoke("run", str(_config(tmp_path)))
    assert r.exit_code == 1
    assert r.stderr.splitlines()[-1] == f"trainer: error: {tmp_path / 'out'}: Permission denied; check the path, its permissions and free space"


def test_eval_json_and_predict_print_json_and_run_guarded(tmp_path, monkeypatch):
    calls = []

    def fake_eval(target, *, split, bundles_dir):
        calls.append(("eval", target, split, bundles_dir, guard_active()))
        return {"accuracy": 0.75, "split": split}

    def fake_predict(output_dir, texts):
        calls.append(("predict", output_dir, tuple(texts), guard_active()))
        return [{"text": t, "label": "yes", "probabilities": {"yes": 0.9, "no": 0.1}} for t in texts]

    monkeypatch.setattr(trainer.evaluate, "evaluate", fake_eval)
    monkeypatch.setattr(trainer.evaluate, "predict", fake_predict)
    r = _invoke("eval", str(tmp_path), "--split", "valid", "--bundles", "b", "--json")
    assert r.exit_code == 0
    assert json.loads(r.stdout) == {"accuracy": 0.75, "split": "valid"}
    r = _invoke("predict", str(tmp_path), "first", "second")
    assert r.exit_code == 0
    assert [json.loads(line)["text"] for line in r.stdout.splitlines()] == ["first", "second"]
    assert calls == [("eval", str(tmp_path), "valid", "b", True), ("predict", str(tmp_path), ("first", "second"), True)]


# --- check on the seed data with a real tokenizer ------------------------------------------------


@pytest.fixture(scope="module")
def seed_bundles(tmp_path_factory) -> Path:
    """A tiny random DistilBERT packed as `distilbert-base-uncased`, as a sandbox would hold it."""
    from trainer.tiny import tiny_bert

    root = tmp_path_factory.mktemp("seed-model")
    corpus = [json.loads(line)["text"] for line in (SEED / "data/finetune/model2_classifier.train.jsonl").read_text().splitlines()[:200]]
    model = tiny_bert(root / "model", corpus=corpus)
    write_bundle(
        src_root=model, repo_id="distilbert-base-uncased", revision="main", commit=None, source="local:tiny",
        created_at="2026-01-01T00:00:00Z", license="apache-2.0", out_dir=root / "bundles",
    )
    return root / "bundles"


@needs_seed
def test_check_seed_classifier_with_its_model_from_a_bundle(seed_bundles, monkeypatch):
    monkeypatch.chdir(SEED)
    r = _invoke("check", "configs/model2_classifier.yaml", "--bundles", str(seed_bundles))
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "distilbert-base-uncased: verified its bundle and installed it into the HF cache at" in out
    assert "tokens of the model's tokenizer" in out
    assert "test: 17 of 150 rows (11.3%) also occur in train (leakage)" in out
    assert "valid: 19 of 150 rows (12.7%) also occur in train (leakage)" in out
    assert out.splitlines()[-1] == "result  OK, 5 warning(s)"


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@needs_seed
@pytest.mark.skipif(not _unshare_works(), reason="unshare -rn (user + network namespace) is not permitted here")
def test_check_in_a_process_with_no_network_at_all(seed_bundles, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env["HF_HUB_CACHE"] = str(tmp_path / "cache")
    cmd = ["unshare", "-rn", sys.executable, "-m", "trainer", "check", "configs/model2_classifier.yaml", "--bundles", str(seed_bundles)]
    out = subprocess.run(cmd, cwd=SEED, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert "test: 17 of 150 rows (11.3%) also occur in train (leakage)" in out.stdout
    assert (tmp_path / "cache" / "models--distilbert-base-uncased" / "refs" / "main").is_file()


@needs_seed
@pytest.mark.slow
@pytest.mark.skipif(not _unshare_works(), reason="unshare -rn (user + network namespace) is not permitted here")
def test_seed_classifier_config_runs_unchanged_with_no_network(seed_bundles, tmp_path):
    """The whole path: offline env, resolve + install from the bundle, train, save, lineage."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env["HF_HUB_CACHE"] = str(tmp_path / "cache")
    out_dir = tmp_path / "out"
    cmd = [
        "unshare", "-rn", sys.executable, "-m", "trainer", "run", "configs/model2_classifier.yaml",
        "--bundles", str(seed_bundles), "--set", f"output_dir={out_dir}", "--set", "max_steps=2", "--set", "epochs=1",
    ]
    out = subprocess.run(cmd, cwd=SEED, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[0].startswith("trained classification model in ")
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["final"]["test"]["n"] == 150
    lineage = json.loads((out_dir / "lineage.json").read_text())
    bundle = next(seed_bundles.glob("*.tar"))
    assert json.dumps(lineage).count(hashlib.sha256(bundle.read_bytes()).hexdigest()) >= 1
