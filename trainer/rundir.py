"""What makes a folder a trainer run, and when `trainer run` may write into one.

A run replaces what a previous run left in its `output_dir`, and a fresh run deletes the previous
run's resume checkpoint. Neither may happen to a folder the trainer did not make (someone's model,
a home directory mistyped as output_dir), nor to an interrupted run by accident. So:

A folder is **a trainer run** when it holds
- `.trainer-run`, the marker a run writes into output_dir before anything else, or
- `lineage.json` holding a lineage record (`lineage_version`): what a finished run writes last.
  Finishing removes the marker again, so `mirror pack OUTPUT_DIR` bundles only the model.

It holds **a resumable checkpoint** when `checkpoint/state.pt` exists (an interrupted run).

It is **a finished run** when it holds that lineage record and no marker: a run that published
its outputs. (A marked folder is a run in progress or one that died before it finished: an
`--overwrite` of a finished run that was killed midway has already half replaced it.)

`trainer run` calls `prepare()` before any model is loaded, and it allows:
- a missing or empty output_dir;
- a finished run only with `--overwrite`: its model and metrics are what the user ran it for
  (`make demo`'s 3-epoch classifier was replaced by a 1-epoch try without a word); the refusal
  says where it is and how to write elsewhere (`--set output_dir=...`);
- a run that did not finish and left no resumable checkpoint: its outputs are replaced;
- a trainer run with a resumable checkpoint only with `--resume` (continue it) or `--overwrite`
  (discard it and start again); `--resume` needs that checkpoint.
Anything else is refused; a non-empty folder that is not a trainer run is refused even with
`--overwrite`: the trainer never deletes files it did not make. Only reads happen here; the recipe
writes the marker (`mark()`) when it starts training.

A finished run is read back here too: `read_lineage()` (its record) and `config_of_run()` (the
config it ran with), which `trainer eval`, `predict` and `serve` start from; `RunResult` is what
`trainer.recipes.run` returns.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer import config as config_mod
from trainer.config import Config
from trainer.errors import OutputDirRefused, TrainerError, shown
from trainer.files import open_regular

MARKER = ".trainer-run"
LINEAGE_FILE = "lineage.json"
CHECKPOINT_DIR = "checkpoint"  # resume state, inside output_dir
STATE_FILE = "state.pt"  # written last by a checkpoint save: its presence makes a run resumable
MAX_LINEAGE_BYTES = 16 * 1024 * 1024  # a record lists the data files and the config: kilobytes
_MARKER_TEXT = json.dumps({"trainer_run": 1, "note": "written by 'trainer run': this folder is a training run's output_dir"}) + "\n"


def is_run(folder: str | Path) -> bool:
    """True when `folder` is a trainer run by the rules in this module's docstring."""
    folder = Path(folder)
    if (folder / MARKER).is_file():
        return True
    try:
        with open_regular(folder / LINEAGE_FILE) as f:
            record = json.loads(f.read(MAX_LINEAGE_BYTES + 1))
    except (OSError, ValueError, RecursionError):  # missing, a FIFO, too big or not JSON: not ours
        return False
    return isinstance(record, dict) and "lineage_version" in record


def is_finished(folder: str | Path) -> bool:
    """True when `folder` holds a finished run: its lineage record, and no marker of a later start."""
    folder = Path(folder)
    return not (folder / MARKER).is_file() and is_run(folder)


def checkpoint_state(folder: str | Path) -> Path:
    return Path(folder) / CHECKPOINT_DIR / STATE_FILE


def has_checkpoint(folder: str | Path) -> bool:
    return checkpoint_state(folder).is_file()


def prepare(output_dir: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse, with what to do, unless `trainer run` may write into `output_dir`. Reads only."""
    out = Path(output_dir)
    if resume and overwrite:
        raise OutputDirRefused(str(out), "was given both --resume and --overwrite", fix="pass --resume to continue the run or --overwrite to start it again, not both")
    if not os.path.lexists(out):
        if resume:
            raise _nothing_to_resume(out)
        return
    if not out.is_dir():
        raise OutputDirRefused(str(out), "exists and is not a folder", fix="set output_dir to a new or empty folder")
    if not any(out.iterdir()):
        if resume:
            raise _nothing_to_resume(out)
        return
    if not is_run(out):
        raise OutputDirRefused(
            str(out),
            f"is not empty and is not a trainer run (it has neither {MARKER} nor a {LINEAGE_FILE} record)",
            fix="trainer run never writes over files it did not make: set output_dir to a new or empty folder",
        )
    if resume and not has_checkpoint(out):
        raise _nothing_to_resume(out)
    if is_finished(out) and not overwrite:
        raise OutputDirRefused(
            str(out),
            f"holds a finished run (its {LINEAGE_FILE}): trainer run keeps it unless told otherwise",
            fix="write the new run elsewhere with --set output_dir=NEW_FOLDER, or replace this one with --overwrite",
        )
    if has_checkpoint(out) and not resume and not overwrite:
        raise OutputDirRefused(
            str(out),
            f"holds the resumable checkpoint of an interrupted run ({checkpoint_state(out)})",
            fix="continue it with --resume, or discard it and start again with --overwrite",
        )


def _nothing_to_resume(out: Path) -> OutputDirRefused:
    return OutputDirRefused(str(out), f"has nothing to resume ({checkpoint_state(out)} does not exist)", fix="run without --resume to start training")


def mark(output_dir: str | Path) -> None:
    """Create output_dir if need be and mark it as a trainer run. The marker is written in place,
    not renamed in: its name is what counts, so even a write cut short leaves the folder a run,
    where a temporary left by a kill would make it a stranger's folder for good."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / MARKER).is_file():
        (out / MARKER).write_text(_MARKER_TEXT, encoding="utf-8")


def unmark(output_dir: str | Path) -> None:
    """A finished run is recognised by its lineage.json; the marker goes, so packs hold the model only."""
    (Path(output_dir) / MARKER).unlink(missing_ok=True)


@dataclass(frozen=True)
class RunResult:
    output_dir: Path
    metrics: dict[str, Any]  # the contents of metrics.json
    wall_time_s: float


def read_lineage(output_dir: str | Path) -> dict[str, Any]:
    """The lineage record of the finished run in `output_dir` (TrainerError, one line, if none)."""
    path = Path(output_dir) / LINEAGE_FILE
    try:
        with open_regular(path) as f:
            record = json.loads(f.read(MAX_LINEAGE_BYTES + 1))
    except OSError:  # missing, or a FIFO or device (NotRegularFile): nothing a run wrote
        raise TrainerError(f"{output_dir} holds no finished run (no lineage.json): train it with 'trainer run CONFIG' first") from None
    except (ValueError, RecursionError) as e:
        raise TrainerError(f"{path} is not valid JSON ({shown(str(e))}): the run's record is damaged; train again") from e
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise TrainerError(f"{path} is not a lineage record (no 'config' mapping): the run's record is damaged; train again")
    return record


def config_of_run(output_dir: str | Path) -> Config:
    """The resolved config a run recorded; relative data paths resolve against the run's cwd."""
    lineage = read_lineage(output_dir)
    raw = dict(lineage["config"])
    cwd = Path(output_dir) / (lineage.get("cwd") or ".")  # relative to the run (an older run: absolute)
    for key in ("train_files", "valid_files", "test_files"):
        raw[key] = [p if Path(p).is_absolute() or Path(p).exists() else str(cwd / p) for p in raw.get(key) or []]
    raw["output_dir"] = str(output_dir)
    return config_mod.from_dict(raw, source=str(Path(output_dir) / LINEAGE_FILE))
