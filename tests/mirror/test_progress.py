"""Byte progress of pack / verify / install when stderr is not a terminal (a CI log), and the
meter itself: line format, thread-safe counting, silence for short work and under quiet."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from common import progress

ROOT = Path(__file__).resolve().parents[2]
BIG = 200 * 1000 * 1000  # a few tenths of a second per pass: several lines at a 0.05 s interval
# `install org/big: 1.2 GB of 4.0 GB (30 %), 850 MB/s, ETA 3 s`
LINE = re.compile(
    r"^(?P<verb>pack|verify|install) org/(?P<name>\w+)(?: \((?:hashing|writing)\))?: "
    r"(?P<done>[\d.]+ [kMGT]?B) of (?P<total>[\d.]+ [kMGT]?B) \((?P<pct>\d+) %\), "
    r"(?P<rate>[\d.]+ [kMGT]?B)/s, ETA (?P<eta>\d+ s|\d+ min \d+ s|\d+ h \d+ min|unknown)$"
)


def mirror(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`python -m mirror ...` with stderr a pipe, as under CI or nohup."""
    return subprocess.run([sys.executable, "-m", "mirror", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("MIRROR_", "HF_"))}
    return {**e, progress.INTERVAL_ENV: "0.05", "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}


def make_model(folder: Path, weights: int) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    with open(folder / "model.safetensors", "wb") as f:
        f.truncate(weights)  # sparse: instant to create, read at memory speed
    return folder


def progress_lines(stderr: str) -> list[re.Match]:
    return [m for m in map(LINE.match, stderr.splitlines()) if m]


def test_pack_verify_install_log_lines(tmp_path: Path, env: dict[str, str]) -> None:
    model = make_model(tmp_path / "big", BIG)
    out = tmp_path / "bundles"
    packed = mirror("pack", str(model), "--repo-id", "org/big", "--out", str(out), env=env)
    assert packed.returncode == 0, packed.stderr
    bundle = Path(packed.stdout.strip().splitlines()[-1])
    verified = mirror("verify", str(bundle), env=env)
    assert verified.returncode == 0, verified.stderr
    installed = mirror("install", str(bundle), env=env)
    assert installed.returncode == 0, installed.stderr

    for verb, run in (("pack", packed), ("verify", verified), ("install", installed)):
        lines = progress_lines(run.stderr)
        assert lines, f"no progress line from {verb}:\n{run.stderr}"
        assert {m["verb"] for m in lines} == {verb}
        for m in lines:
            assert m["name"] == "big"
            assert 0 <= int(m["pct"]) <= 100
            assert m["total"] == "200.0 MB"
        pcts = [int(m["pct"]) for m in lines]
        assert pcts == sorted(pcts) or verb == "pack"  # pack has two passes, each from 0
        # a closing line of totals after the last progress line
        assert re.search(rf"^{verb} org/big(?: \(writing\))?: [\d.]+ MB in [\d.]+ s, [\d.]+ [kMG]?B/s$", run.stderr, re.MULTILINE), run.stderr
    pack_passes = {re.search(r"\((\w+)\)", l.group(0))[1] for l in progress_lines(packed.stderr)}
    assert "writing" in pack_passes


def test_tiny_work_prints_nothing(tmp_path: Path, env: dict[str, str]) -> None:
    model = make_model(tmp_path / "tiny", 4096)
    out = tmp_path / "bundles"
    packed = mirror("pack", str(model), "--repo-id", "org/tiny", "--out", str(out), env=env)
    assert packed.returncode == 0, packed.stderr
    bundle = packed.stdout.strip().splitlines()[-1]
    runs = [packed, mirror("verify", bundle, env=env), mirror("install", bundle, env=env)]
    for run in runs:
        assert run.returncode == 0, run.stderr
        assert " of " not in run.stderr and "/s" not in run.stderr, run.stderr


def test_line_format() -> None:
    assert progress.line("install org/name", done=1_200_000_000, total=4_000_000_000, elapsed=1.2 / 0.85) == (
        "install org/name: 1.2 GB of 4.0 GB (30 %), 850.0 MB/s, ETA 3 s"
    )
    assert progress.line("verify a/b", done=0, total=10, elapsed=1.0).endswith("(0 %), 0 B/s, ETA unknown")
    assert progress.duration_text(3725) == "1 h 2 min"
    assert progress.duration_text(125) == "2 min 5 s"


def test_meter_counts_across_threads_and_prints_steadily(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(progress.INTERVAL_ENV, "0.02")
    out = io.StringIO()
    total = 8 * 1000 * 1000
    m = progress.Meter("verify org/x", total, stream=out)

    def feed() -> None:
        for _ in range(1000):
            m.add(1000)
            time.sleep(0.0001)

    threads = [threading.Thread(target=feed) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    m.close()
    assert m.done == total  # no update lost between threads
    lines = out.getvalue().splitlines()
    assert any(LINE.match(l) for l in lines), lines
    assert lines[-1].startswith("verify org/x: 8.0 MB in ")


def test_quiet_silences(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(progress.INTERVAL_ENV, "0.01")
    out = io.StringIO()
    progress.configure(quiet=True)
    try:
        with progress.Meter("install org/x", 100, stream=out) as m:
            time.sleep(0.1)
            m.add(100)
    finally:
        progress.configure()
    assert out.getvalue() == ""


def test_short_work_is_silent_and_interval_env_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(progress.INTERVAL_ENV, raising=False)
    assert progress.log_interval() == progress.LOG_INTERVAL
    monkeypatch.setenv(progress.INTERVAL_ENV, "nonsense")
    assert progress.log_interval() == progress.LOG_INTERVAL
    out = io.StringIO()
    with progress.Meter("pack org/x", 100, stream=out) as m:  # default: first line after 2 s
        m.add(100)
    assert out.getvalue() == ""


def test_pull_prints_steady_lines_off_a_terminal(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """huggingface_hub's bars draw only on a terminal; in a log, pull's byte counter prints lines."""
    from mirror.hub import _Progress

    monkeypatch.setenv(progress.INTERVAL_ENV, "0.02")
    bar = _Progress(total=3_000_000, files=2, desc="pull org/x", enabled=False)  # the CLI's choice off a terminal
    file_bar, finish = bar.for_file(2_000_000)
    for _ in range(10):
        file_bar().update(100_000)
        time.sleep(0.01)
    finish()  # tops the file up to its size
    bar.for_file(1_000_000)[1]()  # a file that was already staged reports nothing, then finishes
    bar.close()
    err = capsys.readouterr().err.splitlines()
    pulled = [m for m in (re.match(r"^pull org/x: ([\d.]+ [kMG]?B) of 3.0 MB \((\d+) %\), [\d.]+ [kMG]?B/s, ETA ", l) for l in err) if m]
    assert pulled, err
    assert err[-1].startswith("pull org/x: 3.0 MB in ")
