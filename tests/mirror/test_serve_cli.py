"""`mirror serve` refusals: one line, the exit code of the table, before anything is served."""

from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner

from common import exitcodes
from mirror.cli import cli


def _serve(*args: str):
    return CliRunner().invoke(cli, ["serve", *args], catch_exceptions=False)


def _one_line(r) -> str:
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    assert lines[0].startswith("mirror: error: ")
    return lines[0]


def test_a_missing_folder(tmp_path):
    r = _serve(str(tmp_path / "nope"), "--state-file", str(tmp_path / "s.json"))
    assert r.exit_code == exitcodes.USAGE and "is not a directory" in _one_line(r)


def test_a_port_in_use(tmp_path):
    (tmp_path / "b").mkdir()
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        r = _serve(str(tmp_path / "b"), "--port", str(port), "--state-file", str(tmp_path / "s.json"))
    assert r.exit_code == exitcodes.USAGE and f"port {port} on 127.0.0.1 is already in use" in _one_line(r)


@pytest.mark.parametrize("content,why", [(None, "no such file"), (b"", "holds no token"), (b"short\n", "under 16"), (b"two words here-long-enough\n", "without spaces")])
def test_a_bad_token_file(tmp_path, content, why):
    (tmp_path / "b").mkdir()
    tokens = tmp_path / "tokens"
    if content is not None:
        tokens.write_bytes(content)
    r = _serve(str(tmp_path / "b"), "--token-file", str(tokens), "--state-file", str(tmp_path / "s.json"))
    assert r.exit_code == exitcodes.USAGE and why in _one_line(r)


def test_an_unreadable_token_file(tmp_path):
    import os

    if os.geteuid() == 0:
        tokens = tmp_path / "tokens"
        tokens.mkdir()  # root reads any file: a folder is the unreadable token file here
    else:
        tokens = tmp_path / "tokens"
        tokens.write_text("x" * 20)
        tokens.chmod(0)
    (tmp_path / "b").mkdir()
    r = _serve(str(tmp_path / "b"), "--token-file", str(tokens), "--state-file", str(tmp_path / "s.json"))
    assert r.exit_code == exitcodes.USAGE and "token file" in _one_line(r)


def test_a_bad_key_file(tmp_path):
    (tmp_path / "b").mkdir()
    key = tmp_path / "k.pub"
    key.write_text("not a key")
    r = _serve(str(tmp_path / "b"), "--public-key", str(key), "--state-file", str(tmp_path / "s.json"))
    assert r.exit_code == exitcodes.USAGE and "is not a PEM public key" in _one_line(r)
