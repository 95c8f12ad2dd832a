"""Tokenise once: encoded splits cached by the content of everything that decides them.

A rerun, a `--resume`, a `--set epochs=...` experiment or `trainer eval` reads the token ids back
instead of tokenising again. The key is the sha256 of: the cache format, the recipe's encoding
version, the task and the config fields the encoding reads (fields, labels, max_length), every
tokenizer file of the model, the data file's bytes and the tokenizers/transformers versions. Any
change to any of them is a different key, so a stale entry can never be read; nothing is ever
invalidated by time.

Where: `$TRAINER_CACHE` if set, else `.token-cache` next to output_dir (`runs/classifier` ->
`runs/.token-cache`): beside the run rather than inside it, so `mirror pack OUTPUT_DIR` never
ships it, and shared by the runs that write next to each other. Entries are JSON (no pickle: a cache file is data,
never code), written under a temporary name and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from mirror import api
from trainer import files

FORMAT = 1
ENV = "TRAINER_CACHE"
# Files that decide how a model's tokenizer splits text (whatever subset the model ships).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
    "tokenizer.model", "chat_template.jinja", "chat_template.json",
)

T = TypeVar("T")


def cache_dir(output_dir: str | Path) -> Path:
    env = os.environ.get(ENV)
    return Path(env) if env else Path(output_dir).resolve().parent / ".token-cache"


def tokenizer_fingerprint(model_dir: str | Path) -> dict[str, str]:
    """sha256 of each tokenizer file present in model_dir."""
    d = Path(model_dir)
    return {name: api.sha256_file(d / name) for name in TOKENIZER_FILES if (d / name).is_file()}


def _library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("tokenizers", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def cache_key(*, data_files: Sequence[str | Path], model_dir: str | Path, settings: dict[str, Any], version: str) -> str:
    """The key of one encoded split. `settings`: every config value the encoding reads."""
    parts = {
        "format": FORMAT,
        "version": version,
        "settings": settings,
        "tokenizer": tokenizer_fingerprint(model_dir),
        "data": [files.sha256(f) for f in data_files],  # in order: the rows' order is part of the value
        "libraries": _library_versions(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def load(directory: Path, key: str) -> Any | None:
    path = directory / f"{key}.json"
    try:
        with open(path, encoding="utf-8") as f:
            entry = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # unreadable or cut short by a crash: recompute, and the save replaces it
    return entry.get("value") if isinstance(entry, dict) and entry.get("key") == key else None


def save(directory: Path, key: str, value: Any) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{key}.json"
    tmp = directory / f".{key}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"key": key, "value": value}, f, separators=(",", ":"))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def cached(
    *,
    compute: Callable[[], T],
    data_files: Sequence[str | Path],
    model_dir: str | Path,
    settings: dict[str, Any],
    version: str,
    output_dir: str | Path,
) -> tuple[T, bool]:
    """`compute()` (the encoding of data_files), or its cached value; and whether it was cached.
    The value must be JSON-shaped (lists, dicts, numbers, strings) and is returned as JSON gives it
    back: tuples become lists."""
    directory = cache_dir(output_dir)
    key = cache_key(data_files=data_files, model_dir=model_dir, settings=settings, version=version)
    value = load(directory, key)
    if value is not None:
        return value, True
    value = compute()
    save(directory, key, value)
    return value, False
