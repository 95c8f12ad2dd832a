"""Facts about a model snapshot that both packages judge, each judged here only.

- **Random-initialised demo models.** `trainer.tiny` builds tiny models with random weights for
  tests and demos and marks each in its config.json (`"mirror_demo": "random-init"`). Everything
  that shows a model (the trainer's report and lineage, `trainer serve`, mirror's web pages and
  OCI annotations) must say so, so a number from random weights is never passed off as real.
  `mark_random_init` writes the marker; `is_random_init` (a folder) and `is_random_init_config`
  (an already-parsed config.json) read it.
- **Remote code.** A repo whose files include code (`*.py`, shared objects, scripts, notebooks),
  or whose config.json maps model classes to repo code (`auto_map`), runs that code when
  transformers loads it with `trust_remote_code`. mirror lists such files in the manifest and
  policy report (`is_code`), the trainer refuses to load them without `trust_remote_code: true`
  (`remote_code_reason`): the same rule on both sides.

Plain Python on local files: no Hugging Face import, nothing from mirror or the trainer.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

from common.safeio import open_regular

RANDOM_INIT_KEY, RANDOM_INIT_VALUE = "mirror_demo", "random-init"
RANDOM_INIT_BANNER = "RANDOM-INITIALISED DEMO MODEL"  # how every report and reply names one
MAX_CONFIG_BYTES = 1 << 20  # a model's config.json is a few KB; a bigger one is no demo model of ours

# Files that are programs, not weights or data: what `trust_remote_code` would import or run.
CODE_PATTERNS = ("*.py", "*.pyc", "*.so", "*.sh", "*.ipynb")


def mark_random_init(config: dict[str, Any]) -> dict[str, Any]:
    """`config` (a config.json mapping) with the random-init marker set."""
    return {**config, RANDOM_INIT_KEY: RANDOM_INIT_VALUE}


def is_random_init_config(config: Any) -> bool:
    """Whether a parsed config.json carries the random-init marker."""
    return isinstance(config, dict) and config.get(RANDOM_INIT_KEY) == RANDOM_INIT_VALUE


def read_config(snapshot: str | Path) -> Any:
    """The snapshot's config.json parsed, or None: absent, not a regular file, over
    MAX_CONFIG_BYTES or not JSON (each of which no model facts can be read from)."""
    try:
        with open_regular(Path(snapshot) / "config.json") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError:
        return None
    if len(raw) > MAX_CONFIG_BYTES:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def is_random_init(snapshot: str | Path) -> bool:
    """True for a folder holding one of `trainer.tiny`'s random-initialised demo models."""
    return is_random_init_config(read_config(snapshot))


def is_code(path: str) -> bool:
    """Whether the repo file at `path` (POSIX, relative) is code rather than weights or data."""
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(name, p) for p in CODE_PATTERNS)


def remote_code_reason(snapshot: str | Path) -> str | None:
    """Why loading the snapshot folder would execute code from the repo, or None if it would not.
    Every file counts except those under a dot-folder (.cache, .git: tools' state, not the repo)."""
    root = Path(snapshot)
    files = (p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir())
    code = sorted(p for p in files if is_code(p) and not any(part.startswith(".") for part in p.split("/")[:-1]))
    if code:
        kind = "Python" if all(p.endswith(".py") for p in code) else "code"
        return f"{kind} files in the repo: {', '.join(code[:3])}"
    config = read_config(root)
    if isinstance(config, dict) and config.get("auto_map"):
        return "config.json has auto_map (custom model classes)"
    return None
