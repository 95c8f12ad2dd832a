"""Helpers for the trainer's CLI attack tests: a deadline that turns a hang into a failure, and the
one-line error a refused command must print.

Several tests hand the trainer FIFOs and devices, where the bug guarded against is a hang. `Hung`
is a BaseException, so no error boundary in the code under test can swallow it.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Any, Iterator

import pytest
from click.testing import Result

CLI_DEADLINE_S = 120  # a refused file takes milliseconds; only a hang gets near this


class Hung(BaseException):
    """The command was still running at its deadline."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    def fire(signum: int, frame: Any) -> None:
        raise Hung(f"still running after {seconds}s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def error_line(result: Result) -> str:
    """The one line a failed command printed on stderr (asserting there is exactly one)."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    assert lines[0].startswith("trainer: error: ")
    return lines[0].removeprefix("trainer: error: ")


def tiny_config(tmp_path, *, rows: str | None = None, name: str = "cfg.yaml", **over):
    """(config path, train file): a classification config over a fake local model folder and a
    two-row train file (or `rows`), with keys in `over` added or replaced."""
    import json

    model = tmp_path / "base-model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text('{"model_type": "bert"}')
    train = tmp_path / f"{name}.train.jsonl"
    train.write_text(rows if rows is not None else '{"text": "a", "label": "pos"}\n{"text": "b", "label": "neg"}\n')
    raw = {"model_id": str(model), "output_dir": str(tmp_path / f"out-{name}"), "train_file": str(train), "labels": ["pos", "neg"], **over}
    path = tmp_path / name
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in raw.items()))
    return path, train


@pytest.fixture
def cli_isolated(tmp_path, monkeypatch):
    """The CLI switches the process offline; put the switches back so other tests are unaffected.
    CLI test modules make it autouse with `pytestmark = pytest.mark.usefixtures("cli_isolated")`."""
    from trainer.offline import offline_env

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    with offline_env():
        yield


def invoke(*args: str):
    """`trainer ARGS` in-process, exceptions not caught (a traceback fails the test)."""
    from click.testing import CliRunner

    from trainer.cli import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)
