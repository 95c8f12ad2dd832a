"""Training recipes, one plain module per task (setup, a visible train loop, save), and the one
registry that maps a task to its recipe.

Every recipe module offers the same four names: `run(cfg, *, model, resume)` trains and returns a
`RunResult`, `load(...)` loads a saved model, `evaluate_saved(...)` and `predict_saved(...)`
measure and ask one. `recipe(task)` is the only place a task name becomes a module: `trainer run`
(through `run()`), `trainer eval` / `predict` and `trainer serve` all ask it.

The layers: the recipes stand on `trainer.recipes.common`, `trainer.metrics`, `trainer.harness`
(rules), `trainer.data` and `trainer.config`, and never import what stands on them (evaluate,
serve, the CLI). The task modules are imported when asked for: they load torch and
transformers, which must only happen after the CLI has switched the process offline.
"""

from __future__ import annotations

from types import ModuleType

from trainer.config import TASKS, Config
from trainer.resolve import ResolvedModel
from trainer.rundir import RunResult


def recipe(task: str) -> ModuleType:
    """The recipe module of `task` (one of `trainer.config.TASKS`)."""
    # deferred, each: a recipe imports torch and transformers (offline first, and seconds to load)
    if task == "classification":
        from trainer.recipes import classification as module
    elif task == "embeddings":
        from trainer.recipes import embeddings as module
    elif task == "sft":
        from trainer.recipes import sft as module
    else:  # Config validation makes this unreachable for a loaded config
        raise ValueError(f"unknown task {task!r}: one of {', '.join(TASKS)}")
    return module


def run(cfg: Config, *, model: ResolvedModel, resume: bool = False) -> RunResult:
    """Train `cfg.task` from the resolved base model; outputs land in cfg.output_dir."""
    return recipe(cfg.task).run(cfg, model=model, resume=resume)


__all__ = ["RunResult", "recipe", "run"]
