"""Hostile configs and data files, through the CLI: each is refused in one line, at once, with no
traceback, no hang and no memory blow-up (trainer.files, trainer.config, trainer.data)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Iterator

import pytest

from tests.trainer.clitools import error_line
from trainer.files import MAX_LINE_BYTES

FIX_DATA = "; fix the data file and run 'trainer check' again"
FIX_CONFIG = "; fix the config (see configs/ for working examples)"


# --- configs ---------------------------------------------------------------------------------------

BOMB = "".join(
    [f'l0: &l0 ["{"lol" * 10}", "{"lol" * 10}", "{"lol" * 10}", "{"lol" * 10}"]\n']
    + [f"l{i}: &l{i} [*l{i - 1}, *l{i - 1}, *l{i - 1}, *l{i - 1}, *l{i - 1}, *l{i - 1}, *l{i - 1}, *l{i - 1}]\n" for i in range(1, 10)]
)  # 8**9 * 4 strings (about 4e9 values) if expanded


def test_an_alias_bomb_in_a_typed_key_is_refused_before_it_expands(tmp_path, trainer_cli, config_file):
    cfg = config_file()
    cfg.write_text(cfg.read_text() + BOMB.replace("l9:", "batch_size:"))
    r = trainer_cli("run", cfg, timeout=30)
    assert r.exit_code == 2  # at the first alias, in l1: nothing was expanded
    assert error_line(r) == f"{cfg}: not valid YAML at line 6, column 10: YAML aliases (*name) are not allowed in a config; write the value out{FIX_CONFIG}"


def test_any_alias_is_refused_even_a_harmless_one(tmp_path, trainer_cli, config_file):
    cfg = config_file(labels=None)
    cfg.write_text(cfg.read_text() + "x: &names [pos, neg]\nlabels: *names\n")
    r = trainer_cli("check", cfg)
    assert r.exit_code == 2
    assert "YAML aliases (*name) are not allowed in a config" in error_line(r)


@pytest.mark.parametrize("value, shown", [
    ("'" + "x" * 500_000 + "'", "batch_size must be int, got '" + "x" * 37 + "..." + "x" * 38 + "'" + FIX_CONFIG),
    ("[" + ", ".join(["[1, 2, 3]"] * 50_000) + "]", "batch_size must be int, got [[1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 3], ...]" + FIX_CONFIG),
    ("-" + "9" * 63, "batch_size must be > 0, got -" + "9" * 63 + FIX_CONFIG),
    ("1" * 5000, "not valid YAML at line 5, column 13: a number of more than 64 digits" + FIX_CONFIG),
    ("[" * 50_000 + "]" * 50_000, "not valid YAML at line 5, column 20: nested more than 8 levels deep" + FIX_CONFIG),
    (".nan", "batch_size must be int, got nan" + FIX_CONFIG),
])
def test_a_huge_or_hostile_value_is_quoted_short(trainer_cli, config_file, value, shown):
    cfg = config_file()
    cfg.write_text(cfg.read_text() + f"batch_size: {value}\n")
    r = trainer_cli("run", cfg)
    assert r.exit_code == 2
    assert error_line(r) == f"{cfg}: {shown}"


def test_non_finite_numbers_are_wrong_types(trainer_cli, config_file):
    cfg = config_file(learning_rate=".inf")
    cfg.write_text(cfg.read_text().replace('".inf"', ".inf") + "epochs: .nan\n")
    r = trainer_cli("run", cfg)
    assert r.exit_code == 2
    assert error_line(r) == f"{cfg}: 2 problems: learning_rate must be float, got inf; epochs must be float, got nan{FIX_CONFIG}"


def test_thousands_of_problems_are_counted_not_listed(trainer_cli, config_file):
    cfg = config_file()
    cfg.write_text(cfg.read_text() + "".join(f"k{i}: 1\n" for i in range(5000)))
    r = trainer_cli("check", cfg)
    assert r.exit_code == 2
    listed = "; ".join(f"unknown key 'k{i}'" for i in range(10))
    assert error_line(r) == f"{cfg}: 5000 problems: {listed}; and 4990 more{FIX_CONFIG}"


def test_a_config_that_is_a_fifo_a_device_or_a_huge_file_is_refused(tmp_path, trainer_cli):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    r = trainer_cli("run", fifo, timeout=30)
    assert (r.exit_code, error_line(r)) == (2, f"{fifo}: is a FIFO (named pipe), not a regular file: a config is a YAML file{FIX_CONFIG}")
    r = trainer_cli("check", "/dev/zero", timeout=30)
    assert (r.exit_code, error_line(r)) == (2, f"/dev/zero: is a character device, not a regular file: a config is a YAML file{FIX_CONFIG}")
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(1 << 30)  # sparse: 1 GiB that costs nothing to make
    r = trainer_cli("run", big, timeout=30)
    assert (r.exit_code, error_line(r)) == (2, f"{big}: is larger than 1024 KiB, so it is not a training config{FIX_CONFIG}")


# --- data files ------------------------------------------------------------------------------------


@pytest.fixture
def specials(tmp_path: Path) -> Iterator[dict[str, tuple[str, str]]]:
    """name -> (path, what the refusal calls it): every kind of file that is not a regular one."""
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    sock_path = tmp_path / "s.jsonl"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))  # bound for the test's life: the path stays a socket
        yield {
            "fifo": (str(fifo), "a FIFO (named pipe)"),
            "device": ("/dev/zero", "a character device"),
            "directory": (str(folder), "a directory"),
            "socket": (str(sock_path), "a socket"),
        }


@pytest.mark.parametrize("kind", ["fifo", "device", "directory", "socket"])
@pytest.mark.parametrize("key", ["train_file", "valid_file", "test_file"])
def test_run_refuses_a_special_data_file_before_loading_any_model(trainer_cli, config_file, specials, kind, key):
    path, what = specials[kind]
    cfg = config_file(task="classification", **{key: path})  # acme/not-here: a model load would fail with exit 3
    r = trainer_cli("run", cfg, timeout=30)
    assert (r.exit_code, error_line(r)) == (2, f"{path}: is {what}, not a regular file{FIX_DATA}")


@pytest.mark.parametrize("kind", ["fifo", "device", "socket"])
def test_task_inference_refuses_a_special_train_file(trainer_cli, config_file, specials, kind):
    path, what = specials[kind]
    cfg = config_file(train_file=path, labels=None)  # the task would be read off the first row
    r = trainer_cli("check", cfg, timeout=30)
    assert (r.exit_code, error_line(r)) == (2, f"{cfg}: train_file {path} is {what}, not a regular file{FIX_CONFIG}")


def test_check_lists_every_special_data_file_and_does_not_hang(trainer_cli, config_file, local_model, specials):
    cfg = config_file(
        model_id=str(local_model), train_file=None, train_files=[specials["fifo"][0], specials["device"][0]],
        valid_file=specials["socket"][0], test_file=specials["directory"][0],
    )
    r = trainer_cli("check", cfg, timeout=30)
    assert r.exit_code == 2
    for path, what in specials.values():
        assert f"  - {path}: is {what}, not a regular file{FIX_DATA}\n" in r.stdout
    assert error_line(r) == "check found 4 error(s), listed above; fix them and run 'trainer check' again"


def test_an_endless_line_is_an_error_not_all_the_memory(tmp_path, trainer_cli, config_file, local_model):
    train = tmp_path / "zeros.jsonl"
    with open(train, "wb") as f:
        f.write(b'{"text": "a", "label": "pos"}\n')
        f.truncate(1 << 30)  # then a 1 GiB line of NUL bytes, sparse on disk
    cfg = config_file(train_file=str(train), model_id=str(local_model))
    r = trainer_cli("check", cfg, timeout=60)
    assert r.exit_code == 2
    assert f"  - {train}:2: line is longer than {MAX_LINE_BYTES >> 20} MiB, so this is not a JSONL file of training rows{FIX_DATA}\n" in r.stdout


def test_hostile_rows_are_listed_each_in_one_short_line(tmp_path, trainer_cli, config_file, local_model):
    train = tmp_path / "hostile.jsonl"
    train.write_text("\n".join([
        json.dumps({"text": "a", "label": "pos"}),
        '{"text": "b", "label": ' + "1" * 5000 + "}",
        "[" * 100_000 + "]" * 100_000,
        json.dumps({"text": "c", "label": "n" * 100_000}),
    ]) + "\n")
    cfg = config_file(train_file=str(train), model_id=str(local_model))
    r = trainer_cli("check", cfg)
    assert r.exit_code == 2
    errors = [line for line in r.stdout.splitlines() if line.startswith(f"  - {train}:")]
    assert errors == [
        f"  - {train}:2: not usable JSON (Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits){FIX_DATA}",
        f"  - {train}:3: not usable JSON (nested too deeply){FIX_DATA}",
        f"  - {train}:4: label '{'n' * 37}...{'n' * 38}' is not one of the config's labels ['pos', 'neg']{FIX_DATA}",
    ]
