"""`trainer run`: train what a config describes; and what an interrupted run tells the user."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import click

from common.cli import Command
from trainer.cli import _options as opt
from trainer.cli import _output as ui


@click.command(
    cls=Command,
    epilog="""\b
Examples:
  trainer run configs/classifier.yaml
  trainer run configs/sft.yaml --bundles /media/usb/bundles --set lora_r=8
  trainer run configs/sft.yaml --resume      # continue after Ctrl-C
  trainer run configs/sft.yaml --overwrite   # discard that checkpoint, or a finished run, and start again
  trainer run configs/classifier.yaml --set epochs=1 --set output_dir=runs/try1   # keep the finished run
  trainer run configs/sft.yaml --public-key release.pub   # install only bundles signed by it
""",
)
@click.argument("config", type=click.Path(dir_okay=False))
@opt.bundles_option
@opt.public_key_option
@opt.set_option
@click.option("--resume", is_flag=True, help="Continue from the checkpoint an interrupted run left in output_dir.")
@click.option("--overwrite", is_flag=True, help="Replace the finished run in output_dir, or discard the checkpoint an interrupted run left there, and start again.")
@opt.verbosity
@click.pass_context
def run(ctx: click.Context, config: str, bundles_dir: str, public_keys: tuple[str, ...], overrides: tuple[str, ...], resume: bool, overwrite: bool, quiet: bool, verbose: bool) -> None:
    """Train the model CONFIG describes; writes weights, metrics, report and lineage to output_dir.

    output_dir must be new, empty, or an earlier run of this trainer (see trainer/rundir.py); a
    finished run there is kept unless --overwrite is given.
    """
    # deferred: pydantic and mirror.api (huggingface_hub on first use) load once the command runs, after offline is set
    from trainer import data, rundir
    from trainer.offline import network_guard, tracker_env
    from trainer.resolve import resolve_model

    cfg = opt.load(config, overrides)
    # every refusal that needs no model comes first: seconds, not a model load, to learn of it
    data.check_files(cfg)
    # after the file check above: trainer.checks loads torch (seconds), a missing data file is refused before that
    from trainer.checks import validate_data
    from trainer.config import config_warnings

    validate_data(cfg)  # every row, as 'trainer check' reads them: file:line now, not after a model load
    for warning in config_warnings(cfg):
        ui.note(f"warning: {warning}", quiet=quiet)
    rundir.prepare(cfg.output_dir, resume=resume, overwrite=overwrite)
    if overwrite and rundir.is_finished(cfg.output_dir):
        ui.note(f"note: --overwrite: the finished run in {cfg.output_dir} is replaced when this one starts training", quiet=quiet)
    keys = opt.keys(cfg, public_keys)
    ctx.meta["trainer.output_dir"] = cfg.output_dir
    ctx.meta["trainer.resume_command"] = resume_command(config, bundles_dir=bundles_dir, public_keys=public_keys, overrides=overrides)
    tracker_env(cfg.report_to)
    model = resolve_model(cfg.model_id, bundles_dir=bundles_dir, trust_remote_code=cfg.trust_remote_code, public_keys=keys)
    ui.note(f"model: {_model_line(model)}", quiet=quiet)
    for skipped in getattr(model, "skipped", ()):
        ui.note(f"note: {skipped}", quiet=quiet)
    with network_guard(), ui.verbosity_set(quiet=quiet, verbose=verbose):
        from trainer.recipes import run as run_recipe  # torch and transformers: loaded only now, inside the network guard

        result = run_recipe(cfg, model=model, resume=resume)
    from trainer.dist import launch_env  # imports torch (the recipe loaded it): kept off the module top for --help

    if launch_env()[0] != 0:
        return  # under torchrun only rank 0 reports; it has the metrics
    click.echo(f"trained {cfg.task} model in {result.wall_time_s:.1f}s -> {result.output_dir}")
    for line in _summary(result.metrics):
        click.echo(line)


def _model_line(model: Any) -> str:
    if model.source == "bundle":
        return f"{model.repo_id}: verified bundle {model.bundle_path.name if model.bundle_path else ''} and installed it into the HF cache at {model.path}"
    if model.source == "endpoint":
        return f"{model.repo_id}@{model.commit}: downloaded from the site mirror {model.endpoint} into the HF cache at {model.path}, every file hashed against its listing"
    return f"{model.repo_id} ({'installed snapshot' if model.source == 'cache' else 'local folder'} {model.path})"



def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _summary(metrics: dict[str, Any]) -> list[str]:
    """One line per evaluated split with its scalar metrics; the rest stays in metrics.json."""
    lines = []
    final = metrics.get("final")
    if isinstance(final, dict):
        for split, values in final.items():
            if isinstance(values, dict):
                scalars = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items() if _is_number(v))
                lines.append(f"  {split}: {scalars}")
            elif _is_number(values):
                lines.append(f"  {split}: {values:.4g}")
    if metrics.get("warning"):
        lines.append(f"  note: {metrics['warning']}")
    return lines



def interrupted(ctx: click.Context | None, how: str) -> str:
    """Ctrl-C (or SIGTERM, SIGHUP) that the recipe did not turn into `Interrupted` itself: say
    whether resuming works (the error boundary's hook; ctx is None for Ctrl-C at a prompt)."""
    output_dir = ctx.meta.get("trainer.output_dir") if ctx is not None else None
    if output_dir is None:
        return f"interrupted{how}"
    state = next(iter(sorted(Path(output_dir).glob("*/state.pt"))), None)
    if state is not None:
        return f"interrupted{how}: resumable checkpoint left in {state.parent}; continue with: {ctx.meta.get('trainer.resume_command') or 'the same command and --resume'}"
    return f"interrupted{how} before a checkpoint was saved in {output_dir}; rerun the same command to start again"


def resumable(ctx: click.Context, e: BaseException) -> tuple[int, str]:
    """An `Interrupted` run (the error boundary's hook): its message, naming the command that continues it."""
    return e.exit_code, _resume_hint(str(e), ctx.meta.get("trainer.resume_command"))


def _resume_hint(message: str, resume_command: str | None) -> str:
    """The recipe's message with its placeholder replaced by the exact command to continue."""
    from trainer.recipes.common import RESUME_PLACEHOLDER  # imports torch: only an interrupted run (which loaded it) gets here

    if resume_command is None:
        return message
    if RESUME_PLACEHOLDER in message:
        return message.replace(RESUME_PLACEHOLDER, resume_command)
    return f"{message}; continue with: {resume_command}"


def resume_command(config: str, *, bundles_dir: str, public_keys: tuple[str, ...], overrides: tuple[str, ...]) -> str:
    """The exact `trainer run` that continues this run: the same config, bundles, keys and --set
    (quoted for a POSIX shell), plus --resume; never --overwrite, which would discard the checkpoint."""
    argv = ["trainer", "run", config]
    if bundles_dir != "bundles":
        argv += ["--bundles", bundles_dir]
    for key in public_keys:
        argv += ["--public-key", key]
    for item in overrides:
        argv += ["--set", item]
    return shlex.join([*argv, "--resume"])


COMMANDS = (run,)
