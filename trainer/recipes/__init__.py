"""Training recipes, one plain module per task: setup, a visible train loop, save.

`run()` is the one entry point (`trainer run` calls it once the config is valid and the base model
is resolved). The task modules are imported on demand: they load transformers, which must only
happen after the CLI has switched the process offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer.config import Config
    from trainer.resolve import ResolvedModel


@dataclass(frozen=True)
class RunResult:
    output_dir: Path
    metrics: dict[str, Any]  # the contents of metrics.json
    wall_time_s: float


def run(cfg: Config, *, model: ResolvedModel, resume: bool = False) -> RunResult:
    """Train `cfg.task` from the resolved base model; outputs land in cfg.output_dir."""
    if cfg.task == "classification":
        from trainer.recipes import classification as recipe
    elif cfg.task == "embeddings":
        from trainer.recipes import embeddings as recipe
    elif cfg.task == "sft":
        from trainer.recipes import sft as recipe
    else:  # Config validation makes this unreachable for a loaded config
        raise ValueError(f"unknown task {cfg.task!r}")
    return recipe.run(cfg, model=model, resume=resume)
