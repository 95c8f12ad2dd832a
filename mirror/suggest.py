""""Did you mean ...?" for a mistyped path, from the names that do exist beside it.

A path given on the command line that does not exist is most often one typo away from one that
does (`bundels/`, `minilm.tra`); naming the near miss saves a `ls`. Only names in the folder
where the path first goes wrong are compared (difflib, as trainer's `--set` does for keys):
nothing is searched recursively and nothing is opened.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

MAX_NAMES = 10_000  # a folder with more entries than this is not worth comparing against


def did_you_mean(path: str | os.PathLike) -> str:
    """"; did you mean X?" when a sibling name is close to the first missing part of `path` and
    the corrected path exists, else ""; ready to append to an error's "what" part."""
    p = Path(path)
    base = Path(p.anchor) if p.is_absolute() else Path(".")
    rest = p.parts[1:] if p.is_absolute() else p.parts
    for i, name in enumerate(rest):
        here = base / name
        if os.path.lexists(here):
            base = here
            continue
        try:
            with os.scandir(base) as it:
                names = [e.name for _, e in zip(range(MAX_NAMES), it) if name.startswith(".") or not e.name.startswith(".")]
        except OSError:
            return ""
        for close in difflib.get_close_matches(name, names, n=3, cutoff=0.6):
            guess = (base / close).joinpath(*rest[i + 1:])
            if os.path.lexists(guess):
                return f"; did you mean {guess}?"
        return ""
    return ""
