"""Where the HF cache is: every command puts and looks for models where huggingface_hub does.

Each case is a real environment handed to real processes: `mirror install` and `mirror list
--installed` as a user runs them, and a loader process with HF_HUB_OFFLINE=1 that only
huggingface_hub's and transformers' own rules lead to the model. HOME is a folder of the test, so
the default (~/.cache/huggingface/hub) is one too, and nothing reaches the real home.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mirror import cachedirs, hfcache
from mirror.pack import pack_folder
from mirror.serve.state import default_state_file

ROOT = Path(__file__).resolve().parents[2]
REPO = "acme/tiny-bert"
# every variable that moves the HF cache; the cases set some of them again
_MOVES_CACHE = ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", "TRANSFORMERS_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")

# (case, variables relative to the test's folder, where the cache must be)
CASES = [
    ("XDG_CACHE_HOME", {"XDG_CACHE_HOME": "xdg"}, "xdg/huggingface/hub"),
    ("HUGGINGFACE_HUB_CACHE", {"HUGGINGFACE_HUB_CACHE": "legacy"}, "legacy"),
    ("HF_HUB_CACHE", {"HF_HUB_CACHE": "hub"}, "hub"),
    ("HF_HOME", {"HF_HOME": "hf-home"}, "hf-home/hub"),
]
MORE_CASES = [
    ("nothing set", {}, "home/.cache/huggingface/hub"),
    ("HF_HOME over XDG_CACHE_HOME", {"HF_HOME": "hf-home", "XDG_CACHE_HOME": "xdg"}, "hf-home/hub"),
    ("HF_HUB_CACHE over HUGGINGFACE_HUB_CACHE", {"HF_HUB_CACHE": "hub", "HUGGINGFACE_HUB_CACHE": "legacy"}, "hub"),
    ("HUGGINGFACE_HUB_CACHE over HF_HOME", {"HUGGINGFACE_HUB_CACHE": "legacy", "HF_HOME": "hf-home"}, "legacy"),
]


def _env(tmp_path: Path, variables: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _MOVES_CACHE}
    (tmp_path / "home").mkdir(exist_ok=True)
    env.update(HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT), **{k: str(tmp_path / v) for k, v in variables.items()})
    return env


def _huggingface_hub_says(env: dict[str, str]) -> str:
    """HF_HUB_CACHE as huggingface_hub computes it when imported in a process with `env`."""
    code = "from huggingface_hub import constants; print(constants.HF_HUB_CACHE)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=60).stdout.strip()


@pytest.mark.parametrize("case, variables, expected", CASES + MORE_CASES, ids=[c[0] for c in CASES + MORE_CASES])
def test_the_cache_is_where_huggingface_hub_looks(tmp_path, monkeypatch, case, variables, expected):
    env = _env(tmp_path, variables)
    for k in _MOVES_CACHE:  # set in this process after huggingface_hub was imported: read at call time
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert hfcache.cache_root() == cachedirs.hub_cache() == tmp_path / expected
    assert str(hfcache.cache_root()) == _huggingface_hub_says(env)
    assert hfcache.cache_root(tmp_path / "given") == tmp_path / "given"  # --cache-dir wins over all of them


def test_tilde_and_variables_are_expanded_as_huggingface_hub_does(tmp_path, monkeypatch):
    env = _env(tmp_path, {})
    env.update(HF_HUB_CACHE="~/caches/$CACHE_NAME", CACHE_NAME="hub-x")
    for k in _MOVES_CACHE:
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert hfcache.cache_root() == tmp_path / "home" / "caches" / "hub-x"
    assert str(hfcache.cache_root()) == _huggingface_hub_says(env)


def test_fresh_constants_follow_the_environment_and_leave_the_imported_module_alone(monkeypatch, tmp_path):
    from huggingface_hub import constants

    imported = constants.HF_HUB_CACHE
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "one"))
    first = cachedirs.hub_constants()
    assert first.HF_HUB_CACHE == str(tmp_path / "one")
    assert cachedirs.hub_constants() is first  # the same environment: not run again
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "two"))
    assert cachedirs.hub_constants().HF_HUB_CACHE == str(tmp_path / "two")
    assert constants.HF_HUB_CACHE == imported


LOAD = r"""
import json, sys, torch
from huggingface_hub import snapshot_download
from transformers import AutoModel
repo, source = sys.argv[1:3]
loaded, original = AutoModel.from_pretrained(repo).state_dict(), AutoModel.from_pretrained(source).state_dict()
print("RESULT " + json.dumps({
    "snapshot": snapshot_download(repo),
    "equal": loaded.keys() == original.keys() and all(torch.equal(loaded[k], original[k]) for k in loaded),
}))
"""


@pytest.mark.parametrize("case, variables, expected", CASES, ids=[c[0] for c in CASES])
def test_mirror_install_lands_where_transformers_loads_it_offline(tmp_path, tiny_bert_dir, case, variables, expected):
    info = pack_folder(tiny_bert_dir, repo_id=REPO, out_dir=tmp_path / "bundles")
    env = _env(tmp_path, variables)
    cache = tmp_path / expected
    snapshot = cache / "models--acme--tiny-bert" / "snapshots" / info.manifest.commit

    p = subprocess.run([sys.executable, "-m", "mirror", "install", str(info.path)], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1] == str(snapshot)
    if case != "HF_HOME" and case != "HF_HUB_CACHE":  # the bug: it went to ~/.cache/huggingface/hub
        assert not (tmp_path / "home" / ".cache").exists()

    p = subprocess.run([sys.executable, "-m", "mirror", "list", "--installed", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert [(r["repo_id"], r["commit"], r["path"]) for r in map(json.loads, p.stdout.splitlines())] == [(REPO, info.manifest.commit, str(snapshot))]

    p = subprocess.run([sys.executable, "-c", LOAD, REPO, str(tiny_bert_dir)], env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads([x for x in p.stdout.splitlines() if x.startswith("RESULT ")][-1][len("RESULT "):])
    assert got == {"snapshot": str(snapshot), "equal": True}


def test_the_trainer_finds_an_install_under_xdg_cache_home(tmp_path, tiny_bert_dir, monkeypatch):
    from trainer.resolve import resolve_model

    info = pack_folder(tiny_bert_dir, repo_id=REPO, out_dir=tmp_path / "bundles")
    env = _env(tmp_path, {"XDG_CACHE_HOME": "xdg"})
    p = subprocess.run([sys.executable, "-m", "mirror", "install", str(info.path)], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    for k in _MOVES_CACHE:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", env["XDG_CACHE_HOME"])
    monkeypatch.setenv("HOME", env["HOME"])
    model = resolve_model(REPO, bundles_dir=tmp_path / "no-bundles")  # no bundle to install from: only the cache has it
    assert (model.source, model.path) == ("cache", tmp_path / "xdg" / "huggingface" / "hub" / "models--acme--tiny-bert" / "snapshots" / info.manifest.commit)


def test_serve_state_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    state = default_state_file(tmp_path / "bundles")
    assert state.parent == tmp_path / "xdg" / "mirror" and state.name.startswith("serve-")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the XDG rule: a relative path is ignored
    assert default_state_file(tmp_path / "bundles").parent == tmp_path / "home" / ".cache" / "mirror"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_state_file(tmp_path / "bundles") == tmp_path / "home" / ".cache" / "mirror" / state.name
