"""The one YAML loader for configs: aliases, deep nesting and huge integers refused with a
position; `mirror pull --config` reads a trainer config by the same rules."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from common import yamlsafe
from mirror.cli import cli as mirror_cli
from trainer import config as trainer_config
from trainer.errors import ConfigError

ALIASES = "model_id: &m org/name\ntask: classification\nlabels: [*m, *m]\n"


def test_a_plain_config_loads():
    assert yamlsafe.loads("model_id: org/name\nepochs: 2\nlabels: [a, b]\n") == {"model_id": "org/name", "epochs": 2, "labels": ["a", "b"]}


@pytest.mark.parametrize(("text", "reason", "where"), [
    (ALIASES, "YAML aliases (*name) are not allowed", " at line 3, column 10"),
    ("a: " + "[" * (yamlsafe.MAX_YAML_DEPTH + 1) + "]" * (yamlsafe.MAX_YAML_DEPTH + 1) + "\n", "nested more than", f" at line 1, column {3 + yamlsafe.MAX_YAML_DEPTH}"),
    ("n: " + "9" * (yamlsafe.MAX_NUMBER_DIGITS + 1) + "\n", f"more than {yamlsafe.MAX_NUMBER_DIGITS} digits", " at line 1, column 4"),
])
def test_hostile_yaml_is_refused_with_its_position(text, reason, where):
    with pytest.raises(yaml.YAMLError) as e:
        yamlsafe.loads(text)
    assert reason in str(e.value) and yamlsafe.where(e.value) == where


def test_mirror_pull_reads_a_trainer_config_as_the_trainer_does(tmp_path):
    cfg = tmp_path / "aliased.yaml"
    cfg.write_text(ALIASES)
    with pytest.raises(ConfigError, match="YAML aliases"):
        trainer_config.load(cfg)
    r = CliRunner().invoke(mirror_cli, ["pull", "--config", str(cfg), "--out", str(tmp_path / "b")])
    assert r.exit_code == 2, r.output
    assert "YAML aliases (*name) are not allowed" in r.output and not (tmp_path / "b").exists()
