"""Fixtures for the trainer's CLI tests: the command run in-process, offline and under a deadline,
and a small classification config written to disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import CliRunner, Result

from tests.trainer.clitools import CLI_DEADLINE_S, deadline
from trainer.cli import cli
from trainer.offline import offline_env


@pytest.fixture
def trainer_cli() -> Callable[..., Result]:
    """`trainer_cli("run", cfg, ...)`: the `trainer` command, offline, failing if it hangs."""

    def invoke(*args: Any, timeout: float = CLI_DEADLINE_S) -> Result:
        with offline_env(), deadline(timeout):
            return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture
def config_file(tmp_path: Path) -> Callable[..., Path]:
    """`config_file(**keys)`: a classification config (two good training rows, a model id that
    resolves nowhere, output_dir `out`) written as YAML; keys override it, None drops one."""

    def write(*, name: str = "cfg.yaml", **over: Any) -> Path:
        train = tmp_path / "train.jsonl"
        if not train.exists():
            train.write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": "neg"}\n')
        raw = {"model_id": "acme/not-here", "output_dir": str(tmp_path / "out"), "train_file": str(train), "labels": ["pos", "neg"], **over}
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in raw.items() if v is not None))
        return path

    return write


@pytest.fixture
def local_model(tmp_path: Path) -> Path:
    """A local model folder: it resolves at once (a check then only warns that it has no tokenizer)."""
    model = tmp_path / "base-model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "bert"}')
    return model
