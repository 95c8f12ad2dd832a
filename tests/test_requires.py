"""`make test`'s set-up of the tools the tests start (tests/fixtures/requires.py): installs with
apt-get when this user may, else one line with the command; a missing tool skips a test on a
user's machine and fails it in CI, never a collection error."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.fixtures import requires


_PRESENT = requires._present  # the real check, before any test patches it


def _missing(monkeypatch, *names: str) -> None:
    monkeypatch.setattr(requires, "_present", lambda n: n not in names and _PRESENT(n))


def test_a_user_who_may_not_install_gets_one_line_with_the_command(monkeypatch, capsys):
    monkeypatch.delenv("CI", raising=False)
    _missing(monkeypatch, "skopeo", "chromedriver")
    monkeypatch.setattr(requires.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(requires.shutil, "which", lambda name: None)  # no sudo
    ran = []
    monkeypatch.setattr(requires.subprocess, "run", lambda *a, **k: ran.append(a))
    assert requires.install() == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "chromium-driver, skopeo missing" in err[0]
    assert "sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium-driver skopeo" in err[0]
    assert ran == []  # nothing tried


@pytest.mark.parametrize("ci", ["", "true"])
def test_root_installs_the_missing_packages_with_apt_get(monkeypatch, capsys, ci):
    monkeypatch.setenv("CI", ci)
    _missing(monkeypatch, "nginx")
    monkeypatch.setattr(requires.os, "geteuid", lambda: 0)
    calls = []

    def run(cmd, **kw):
        calls.append(cmd)
        if cmd[:2] == ["apt-get", "install"]:
            _missing(monkeypatch)  # installed now
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(requires.subprocess, "run", run)
    assert requires.install() == 0
    assert calls == [["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "--no-install-recommends", "nginx-light"]]
    assert "installing nginx-light with apt-get" in capsys.readouterr().err


def test_nothing_missing_runs_nothing(monkeypatch):
    _missing(monkeypatch)
    monkeypatch.setattr(requires, "_present", lambda n: True)
    monkeypatch.setattr(requires.subprocess, "run", lambda *a, **k: pytest.fail("ran a command"))
    assert requires.install() == 0


@pytest.mark.parametrize("ci, outcome", [("", "skipped"), ("true", "error")])
def test_a_missing_tool_skips_here_and_fails_in_ci(tmp_path, ci, outcome):
    """A real pytest run of a test that needs a tool nobody has: one skip with the fix (or one
    error in CI), and the test beside it still runs."""
    (tmp_path / "conftest.py").write_text(
        "import pytest\nfrom tests.fixtures import requires\n"
        "requires.TOOLS['no-such-tool'] = ('/nonexistent/no-such-tool', 'no-such-package')\n"
        "def pytest_runtest_setup(item):\n"
        "    for m in item.iter_markers('requires'):\n"
        "        requires.require(*m.args)\n"
    )
    (tmp_path / "test_x.py").write_text(
        "import pytest\n"
        "@pytest.mark.requires('no-such-tool')\ndef test_needs_it():\n    pass\n"
        "def test_other():\n    pass\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(requires.ROOT), "CI": ci}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestUnknownMarkWarning", str(tmp_path)],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert f"1 passed, 1 {outcome}" in r.stdout, r.stdout
    assert "no-such-tool not installed: sudo apt-get update && sudo apt-get install -y --no-install-recommends no-such-package" in r.stdout


def test_seed_data_is_named_when_absent(monkeypatch, tmp_path):
    monkeypatch.setattr(requires, "SEED", tmp_path / "missing")
    assert "the seed-data compatibility tests need ../shared/seed-data" in requires.problem("seed-data")
    monkeypatch.setattr(requires, "SEED", tmp_path)
    assert requires.problem("seed-data") is None
