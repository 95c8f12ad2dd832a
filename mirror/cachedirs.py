"""Where the caches are: the HF cache, as huggingface_hub finds it, and mirror's own state folder.

Every command that reads or writes the HF cache (`mirror install`, `mirror list --installed`,
`mirror pull`, the trainer's model resolution) asks `hub_cache()`, so an installed model is where
transformers, sentence-transformers and `hf_hub_download` look. The answer is huggingface_hub's
own: its `constants` module, executed again for the environment of this process as it is now. A
copy of its rules drifted (it missed `XDG_CACHE_HOME` and the legacy `HUGGINGFACE_HUB_CACHE`, so
installs landed where no loader looked), and the imported module froze them at its first import,
before a caller or a test changed the environment. This module imports no Hugging Face code at
its top: `trainer` switches itself offline before any is imported.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from types import ModuleType

_constants: tuple[tuple[tuple[str, str], ...], ModuleType] | None = None  # (environment, module)


def hub_constants() -> ModuleType:
    """huggingface_hub's `constants` module as a fresh import computes it from the environment now
    (HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_HOME, XDG_CACHE_HOME, `~` and `$VAR` expansion, the
    offline switches). The module is stdlib-only: running it again takes well under a millisecond,
    and the result is reused while the environment stays the same. The imported module is untouched."""
    global _constants
    key = tuple(sorted(os.environ.items()))
    if _constants is None or _constants[0] != key:
        spec = importlib.util.find_spec("huggingface_hub.constants")
        if spec is None or spec.loader is None:  # pragma: no cover - huggingface_hub is a dependency
            raise ImportError("huggingface_hub.constants not found; reinstall huggingface_hub")
        module = importlib.util.module_from_spec(spec)
        with warnings.catch_warnings():  # its import-time warnings were shown at its real import
            warnings.simplefilter("ignore")
            spec.loader.exec_module(module)
        _constants = (key, module)
    return _constants[1]


def hub_cache() -> Path:
    """The HF hub cache huggingface_hub uses with this environment (`constants.HF_HUB_CACHE`)."""
    return Path(hub_constants().HF_HUB_CACHE)


def user_cache_home() -> Path:
    """The user's cache folder, for mirror's own state (serve's verdicts): $XDG_CACHE_HOME when it
    is an absolute path (the XDG rule: a relative one is ignored), else ~/.cache."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
