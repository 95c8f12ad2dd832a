"""The model facts both packages judge once: the random-init marker and remote code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from common import modelfacts
from mirror.manifest import classify
from mirror.policy import scan_snapshot


def _folder(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_marker_written_is_the_marker_read(tmp_path):
    config = modelfacts.mark_random_init({"model_type": "bert"})
    assert config == {"model_type": "bert", "mirror_demo": "random-init"}
    assert modelfacts.is_random_init_config(config) and not modelfacts.is_random_init_config({"model_type": "bert"})
    assert not modelfacts.is_random_init_config(["mirror_demo", "random-init"])  # not a mapping
    _folder(tmp_path / "demo", {"config.json": json.dumps(config)})
    _folder(tmp_path / "real", {"config.json": json.dumps({"model_type": "bert"})})
    assert modelfacts.is_random_init(tmp_path / "demo") is True
    assert modelfacts.is_random_init(tmp_path / "real") is False


@pytest.mark.parametrize("content", [None, "{not json", "[1, 2]", " " * (modelfacts.MAX_CONFIG_BYTES + 1)])
def test_an_unreadable_config_is_no_demo_model(tmp_path, content):
    folder = tmp_path / "m"
    folder.mkdir()
    if content is not None:
        (folder / "config.json").write_text(content)
    assert modelfacts.is_random_init(folder) is False


def test_a_fifo_named_config_json_is_not_waited_on(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    os.mkfifo(folder / "config.json")  # no writer: a plain open() would block forever
    assert modelfacts.read_config(folder) is None and modelfacts.is_random_init(folder) is False


def test_remote_code_is_one_rule_for_mirror_and_the_trainer(tmp_path):
    """What the trainer refuses without trust_remote_code is what mirror's manifest and policy
    list as code: the same patterns, every kind of code file."""
    for name in ("modeling_x.py", "kernel.so", "setup.sh", "cache.pyc", "demo.ipynb"):
        assert modelfacts.is_code(f"sub/{name}") and classify(f"sub/{name}") == "code"
    for name in ("model.safetensors", "config.json", "README.md", "pytorch_model.bin"):
        assert not modelfacts.is_code(name) and classify(name) != "code"

    py = _folder(tmp_path / "py", {"config.json": "{}", "modeling_custom.py": "x = 1\n", ".cache/tool.py": "x = 1\n"})
    assert modelfacts.remote_code_reason(py) == "Python files in the repo: modeling_custom.py"  # a dot-folder is a tool's state
    assert scan_snapshot(py).remote_code == ("modeling_custom.py",)
    so = _folder(tmp_path / "so", {"config.json": "{}", "kernels/fast.so": "\x7fELF"})
    assert modelfacts.remote_code_reason(so) == "code files in the repo: kernels/fast.so"
    assert scan_snapshot(so).remote_code == ("kernels/fast.so",)
    mapped = _folder(tmp_path / "mapped", {"config.json": json.dumps({"auto_map": {"AutoModel": "acme/code--modeling.Model"}})})
    assert modelfacts.remote_code_reason(mapped) == "config.json has auto_map (custom model classes)"
    plain = _folder(tmp_path / "plain", {"config.json": "{}", "model.safetensors": "x"})
    assert modelfacts.remote_code_reason(plain) is None
