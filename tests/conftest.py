"""Shared test fixtures: per-test Hugging Face isolation and tiny models built once per session.

Every test gets its own HF_HOME / HF_HUB_CACHE under tmp_path, no token and online mode off, so no
test reads or writes the real home-directory cache or leaks a credential. huggingface_hub reads its
environment once at import, so its `constants` are patched as well as the environment.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fixtures.requires import require

_DROP = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_ENDPOINT", "SOURCE_DATE_EPOCH", "TRANSFORMERS_CACHE", "HUGGINGFACE_HUB_CACHE")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires(*what): system tools (tests/fixtures/requires.py TOOLS) or 'seed-data' the test needs")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """`@pytest.mark.requires(...)`: skip with the fix on a user's machine, fail in CI (tests/fixtures/requires.py)."""
    for mark in item.iter_markers("requires"):
        require(*mark.args)


@pytest.fixture(autouse=True)
def hf_isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HF state for this test only. Returns the hub cache folder (`$HF_HUB_CACHE`)."""
    home = tmp_path / "hf_home"
    cache = home / "hub"
    for var in _DROP:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return cache
    for name, value in {
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HUGGINGFACE_HUB_CACHE": str(cache),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_OFFLINE": False,
    }.items():
        monkeypatch.setattr(constants, name, value, raising=False)
    return cache


@pytest.fixture
def offline_env():
    """`offline_env(cache)`: the environment for a subprocess that must load models from `cache`
    with the network off (huggingface_hub reads it at import, so loading happens in a child)."""

    def make(cache: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _DROP}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(Path(cache).parent / "offline_home"))
        return env

    return make


# Tiny random models, built once per session. They are shared: copy one before modifying it.


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trainer.tiny import tiny_bert

    return tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")


@pytest.fixture(scope="session")
def tiny_st_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trainer.tiny import tiny_sentence_transformer

    return tiny_sentence_transformer(tmp_path_factory.mktemp("tiny") / "st")


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trainer.tiny import tiny_causal_lm

    return tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "lm")
