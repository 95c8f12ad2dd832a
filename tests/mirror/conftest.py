"""Fixtures shared by the mirror CLI tests: a small model folder and its packed bundle."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mirror.cli import cli
from tests.mirror.test_bundle import make_repo


@pytest.fixture
def folder(tmp_path) -> Path:
    d = tmp_path / "model"
    make_repo(d)
    return d


@pytest.fixture
def packed(folder, tmp_path) -> Path:
    r = CliRunner().invoke(cli, ["pack", str(folder), "--repo-id", "acme/m", "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    return Path(r.stdout.splitlines()[-1])
