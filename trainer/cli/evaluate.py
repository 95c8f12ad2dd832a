"""`trainer eval` and `trainer predict`: a trained model on a split, or on given texts."""

from __future__ import annotations

import json
from pathlib import Path

import click

from common.cli import Command
from trainer.cli import _options as opt
from trainer.cli import _output as ui


@click.command(name="eval", cls=Command)
@click.argument("target", type=click.Path())
@click.option("--split", default=None, type=click.Choice(["train", "valid", "test"]), help="Which data split to evaluate on.  [default: test if the run has one, else valid]")
@opt.bundles_option
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as one JSON object (full precision, one top-level key a line) instead of the table.")
@opt.verbosity
def eval_(target: str, split: str | None, bundles_dir: str, as_json: bool, quiet: bool, verbose: bool) -> None:
    """Evaluate a trained OUTPUT_DIR, or the base model of a CONFIG, on a data split.

    Prints a table (metrics to four decimals; a classifier's per-class scores and confusion
    matrix); --json prints every value in full for scripts. For a chat (SFT) model it also
    generates an answer to every prompt of the split and scores it with the compliance harness
    (forbidden phrases, required disclaimers, unrealistic guarantees, legal advice without a
    referral); for a run, the results go into its metrics.json, report.md and harness.jsonl.

    \b
    Examples:
      trainer eval runs/classifier --split valid
      trainer eval runs/classifier --json | jq .macro_f1
      trainer eval configs/classifier.yaml        # the untrained base model, as a baseline
    """
    # deferred: trainer.evaluate loads torch (transformers on use) after main() set offline mode; --help stays fast
    from trainer.evaluate import evaluate
    from trainer.offline import network_guard

    with network_guard(), ui.verbosity_set(quiet=quiet, verbose=verbose):
        metrics = evaluate(target, split=split, bundles_dir=bundles_dir)
    if split is None:
        ui.note(f"evaluated on the {metrics['split']} split (the best one this run has; --split picks another)", quiet=quiet)
    harness = metrics.get("harness")
    if harness and Path(target).is_dir():
        ui.note(f"harness: {harness['compliant']} of {harness['prompts']} generated answers compliant; recorded in {Path(target) / 'metrics.json'}, report.md and harness.jsonl", quiet=quiet)
    if as_json:
        click.echo(ui.json_block(metrics))
        return
    from trainer.report import eval_table  # only the table needs it; --json returned above

    for line in eval_table(metrics):
        click.echo(line)



@click.command(cls=Command)
@click.argument("output_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("texts", nargs=-1, required=True)
@opt.verbosity
def predict(output_dir: str, texts: tuple[str, ...], quiet: bool, verbose: bool) -> None:
    """Run a trained model in OUTPUT_DIR on TEXT...; prints one JSON object per text.

    \b
    Classifiers give the label and probabilities, embedding models the similarity of each text
    to the first, chat models the generated answer.
    Examples:
      trainer predict runs/classifier "Status: Paid | Bureau: Equifax"
      trainer predict runs/embeddings "charge-off meaning" "What is a charge-off?"
    """
    # deferred: trainer.evaluate loads torch (transformers on use) after main() set offline mode; --help stays fast
    from trainer.evaluate import predict as run_predict
    from trainer.offline import network_guard

    with network_guard(), ui.verbosity_set(quiet=quiet, verbose=verbose):
        results = run_predict(output_dir, list(texts))
    for item in results:
        # not common.cli.json_line: it sorts keys and escapes non-ASCII, and each line holds the user's text and the answer as written
        click.echo(json.dumps(item, ensure_ascii=False, default=str))


COMMANDS = (eval_, predict)
