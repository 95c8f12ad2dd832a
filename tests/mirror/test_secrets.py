"""A Hub token never lands in a manifest, a bundle, a sidecar, a log line, an error message, a
report or any file the pull leaves behind. The token is planted, then grepped for everywhere."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from mirror.cli import cli
from tests.fixtures.fake_hub import FakeHub

TOKEN = "hf_PLANTEDsecretTOKEN7f3a9c0d1e2b4a5968"  # distinctive: any occurrence is a leak
FILES = {
    "config.json": b'{"hidden_size": 4}\n',
    "model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + b"\x00" * 512,
    "README.md": b"---\nlicense: mit\n---\n",
}


def _grep_tree(root: Path, needle: bytes) -> list[str]:
    hits = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                continue
            with open(p, "rb") as f:  # small files here; chunked with an overlap to be exact anyway
                tail = b""
                while chunk := f.read(1 << 20):
                    if needle in tail + chunk:
                        hits.append(str(p))
                        break
                    tail = chunk[-len(needle):]
    return hits


@pytest.fixture
def hub():
    with FakeHub() as h:
        h.add_repo("acme/private-model", FILES, private=True, token=TOKEN)
        yield h


def test_pull_with_a_token_leaves_no_trace_of_it(hub, tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)  # every logger, huggingface_hub's included, at its most verbose
    monkeypatch.setenv("HF_HUB_VERBOSITY", "debug")
    out = tmp_path / "bundles"
    runner = CliRunner()

    anonymous = runner.invoke(cli, ["pull", "acme/private-model", "--endpoint", hub.url, "--out", str(out), "--no-progress"])
    assert anonymous.exit_code != 0  # the repo is really private: the token is what opens it

    r = runner.invoke(cli, ["pull", "acme/private-model", "--endpoint", hub.url, "--out", str(out), "--no-progress", "--token", TOKEN])
    assert r.exit_code == 0, r.output
    bundle = Path(r.stdout.strip().splitlines()[-1])
    assert any(rec.authorized for rec in hub.requests)  # the token was sent to the Hub...

    # ...and nowhere else: the same pull through $HF_TOKEN, then every report the CLI makes
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    r2 = runner.invoke(cli, ["pull", "acme/private-model", "--endpoint", hub.url, "--out", str(tmp_path / "again"), "--no-progress"])
    assert r2.exit_code == 0, r2.output
    reports = [runner.invoke(cli, args) for args in (
        ["inspect", str(bundle)], ["inspect", str(bundle), "--json"], ["verify", str(bundle), "--json"],
        ["audit", str(bundle), "--format", "json"], ["audit", str(bundle), "--format", "cyclonedx"],
        ["install", str(bundle), "--cache-dir", str(tmp_path / "cache")], ["list", str(out)],
    )]
    assert all(x.exit_code == 0 for x in reports), [x.output for x in reports]

    texts = [anonymous.output, r.output, r2.output, caplog.text] + [x.output for x in reports]
    assert not [t for t in texts if TOKEN in t]
    assert TOKEN.encode() not in bundle.read_bytes()
    assert _grep_tree(tmp_path, TOKEN.encode()) == []  # bundles, sidecars, staging, HF cache, logs


def test_error_messages_never_echo_the_token(hub, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    runner = CliRunner()
    wrong = TOKEN[:-4] + "0000"  # a near miss, also secret
    cases = {
        "wrong token": ["pull", "acme/private-model", "--token", wrong],
        "missing repo": ["pull", "acme/nope", "--token", TOKEN],
        "missing revision": ["pull", "acme/private-model", "--revision", "v9", "--token", TOKEN],
    }
    hub.fail("acme/private-model", "model.safetensors", status=500, times=50)
    cases["server error"] = ["pull", "acme/private-model", "--token", TOKEN]
    for name, args in cases.items():
        r = runner.invoke(cli, [*args, "--endpoint", hub.url, "--out", str(tmp_path / "out"), "--no-progress"])
        assert r.exit_code != 0, name
        (line,) = r.stderr.strip().splitlines()[-1:]
        assert line.startswith("mirror: error: "), (name, r.output)
        assert TOKEN not in r.output and wrong not in r.output, name
    assert TOKEN not in caplog.text and wrong not in caplog.text
    assert _grep_tree(tmp_path, TOKEN.encode()) == [] and _grep_tree(tmp_path, wrong.encode()) == []


def test_the_grep_finds_a_planted_leak(tmp_path):  # the control: the checks above can fail
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "log.txt").write_bytes(b"x" * ((1 << 20) - 5) + TOKEN.encode())  # across a chunk edge
    assert _grep_tree(tmp_path, TOKEN.encode()) == [str(tmp_path / "a" / "b" / "log.txt")]
