"""`trainer`: the command line. Thin: parse, call one function, print.

This module must not import any Hugging Face library at its top: `main()` switches the process to
offline first (`trainer.offline.enforce_offline`), and only then do the commands import the
modules that load transformers. It is also the one error boundary: a `TrainerError` (or a mirror
error, or a YAML error) becomes `trainer: error: <one line>` on stderr and that error's exit
code, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import yaml

from common import exitcodes
from mirror.errors import MirrorError
from trainer import __version__
from trainer.errors import Interrupted, TrainerError
from trainer.offline import enforce_offline

EXIT_INTERRUPTED = exitcodes.INTERRUPTED  # 128 + SIGINT; a SIGTERM/SIGHUP gives 128 + its number


def _fail(message: str, code: int) -> None:
    click.echo(f"trainer: error: {message}", err=True)
    sys.exit(code)


class _Boundary(click.Group):
    """Every command runs inside this: typed errors become one line and an exit code, and so do
    click's own usage errors (`trainer: error: No such option: --foo (see 'trainer run --help')`)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.UsageError as e:
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            _fail(" ".join(e.format_message().split()).rstrip(".") + hint, exitcodes.USAGE)
        except click.ClickException as e:  # e.g. a bad file given to a click.Path argument
            _fail(" ".join(e.format_message().split()), e.exit_code)
        except click.Abort:
            _fail("interrupted", EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Interrupted as e:
            _fail(_resume_hint(str(e), ctx.meta.get("trainer.resume_command")), e.exit_code)
        except (TrainerError, MirrorError) as e:
            _fail(str(e).splitlines()[0] if str(e) else type(e).__name__, getattr(e, "exit_code", 1))
        except yaml.YAMLError as e:
            _fail(f"not valid YAML: {str(e).splitlines()[0]}; fix the file", 2)
        except OSError as e:  # a full disk, a read-only output_dir: the environment, not a bug
            where = f"{e.filename}: " if e.filename else ""
            _fail(f"{where}{e.strerror or e}; check the path, its permissions and free space", 1)
        except KeyboardInterrupt as e:
            from common import signals

            _fail(_interrupted_message(ctx.meta.get("trainer.output_dir"), ctx.meta.get("trainer.resume_command")), signals.exit_code(e))


def _interrupted_message(output_dir: str | None, resume_command: str | None = None) -> str:
    """Ctrl-C that the recipe did not turn into `Interrupted` itself: say whether resuming works."""
    if output_dir is None:
        return "interrupted"
    state = next(iter(sorted(Path(output_dir).glob("*/state.pt"))), None)
    if state is not None:
        return f"interrupted: resumable checkpoint left in {state.parent}; continue with: {resume_command or 'the same command and --resume'}"
    return f"interrupted before a checkpoint was saved in {output_dir}; rerun the same command to start again"


def _resume_hint(message: str, resume_command: str | None) -> str:
    """The recipe's message with its placeholder replaced by the exact command to continue."""
    from trainer.recipes.common import RESUME_PLACEHOLDER

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


def _verbosity(f: Any) -> Any:
    """-q/--quiet and -v/--verbose, defined once for every command."""
    f = click.option("-v", "--verbose", is_flag=True, help="Say more: every problem found, and the libraries' own messages.")(f)
    return click.option("-q", "--quiet", is_flag=True, help="Print only results and errors, no progress or notes.")(f)


def _note(message: str, *, quiet: bool) -> None:
    """A progress line or note on stderr: what the tool is doing, never a result."""
    if not quiet:
        click.echo(message, err=True)


_bundles_option = click.option(
    "--bundles",
    "bundles_dir",
    default="bundles",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder of mirror bundles; a model not yet installed is verified and installed from here.",
)
_public_key_option = click.option(
    "--public-key",
    "public_keys",
    multiple=True,
    metavar="PEM",
    help="Install a bundle only if it is signed by this key (repeatable; adds to the config's public_keys).",
)
_set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key (repeatable); VALUE is YAML: --set epochs=1 --set labels=[a,b].",
)


def _load(config: str, overrides: tuple[str, ...]):
    from trainer.config import load, parse_overrides

    return load(config, overrides=parse_overrides(overrides))


def _keys(cfg: Any, given: tuple[str, ...]) -> tuple[str, ...]:
    from trainer.resolve import check_public_keys

    return check_public_keys([*given, *cfg.public_keys])


@click.group(
    cls=_Boundary,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="""\b
Examples (paths in a config are relative to the working directory):
  trainer check configs/*.yaml --json
  trainer run configs/classifier.yaml --set epochs=1
  trainer run configs/classifier.yaml --resume
  trainer eval runs/classifier                  # on its test split, else validation
  trainer predict runs/classifier "Account Type: Credit Card | Status: Closed"
""",
)
@click.version_option(__version__, prog_name="trainer")
def cli() -> None:
    """Fine-tune classifiers, embedding models and chat models fully offline, from mirror bundles.

    Hugging Face libraries run in offline mode and any attempt to reach the network fails at once.
    """
    enforce_offline()  # idempotent; also covers CliRunner and `python -m trainer`


@cli.command(
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
@_bundles_option
@_public_key_option
@_set_option
@click.option("--resume", is_flag=True, help="Continue from the checkpoint an interrupted run left in output_dir.")
@click.option("--overwrite", is_flag=True, help="Replace the finished run in output_dir, or discard the checkpoint an interrupted run left there, and start again.")
@_verbosity
@click.pass_context
def run(ctx: click.Context, config: str, bundles_dir: str, public_keys: tuple[str, ...], overrides: tuple[str, ...], resume: bool, overwrite: bool, quiet: bool, verbose: bool) -> None:
    """Train the model CONFIG describes; writes weights, metrics, report and lineage to output_dir.

    output_dir must be new, empty, or an earlier run of this trainer (see trainer/rundir.py); a
    finished run there is kept unless --overwrite is given.
    """
    from trainer import data, rundir
    from trainer.offline import network_guard, tracker_env
    from trainer.resolve import resolve_model

    cfg = _load(config, overrides)
    # every refusal that needs no model comes first: seconds, not a model load, to learn of it
    data.check_files(cfg)
    from trainer.checks import validate_data
    from trainer.config import config_warnings

    validate_data(cfg)  # every row, as 'trainer check' reads them: file:line now, not after a model load
    for warning in config_warnings(cfg):
        _note(f"warning: {warning}", quiet=quiet)
    rundir.prepare(cfg.output_dir, resume=resume, overwrite=overwrite)
    if overwrite and rundir.is_finished(cfg.output_dir):
        _note(f"note: --overwrite: the finished run in {cfg.output_dir} is replaced when this one starts training", quiet=quiet)
    keys = _keys(cfg, public_keys)
    ctx.meta["trainer.output_dir"] = cfg.output_dir
    ctx.meta["trainer.resume_command"] = resume_command(config, bundles_dir=bundles_dir, public_keys=public_keys, overrides=overrides)
    tracker_env(cfg.report_to)
    model = resolve_model(cfg.model_id, bundles_dir=bundles_dir, trust_remote_code=cfg.trust_remote_code, public_keys=keys)
    _note(f"model: {_model_line(model)}", quiet=quiet)
    for skipped in getattr(model, "skipped", ()):
        _note(f"note: {skipped}", quiet=quiet)
    with network_guard(), _verbosity_set(quiet=quiet, verbose=verbose):
        from trainer.recipes import run as run_recipe

        result = run_recipe(cfg, model=model, resume=resume)
    from trainer.dist import launch_env

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


@contextlib.contextmanager
def _verbosity_set(*, quiet: bool, verbose: bool) -> Iterator[None]:
    """-q/-v for one command: our progress and notes (trainer.progress, the recipes' log lines)
    and transformers' own messages (errors only with -q, info with -v); put back afterwards, so
    one command's -q never silences the next in the same process."""
    from transformers.utils import logging as hf_logging

    from trainer import progress
    from trainer.recipes import common

    before = hf_logging.get_verbosity()
    progress.configure(quiet=quiet, verbose=verbose)  # the step lines off a terminal
    common.set_quiet(quiet)
    if quiet or verbose:
        hf_logging.set_verbosity(hf_logging.ERROR if quiet else hf_logging.INFO)
    try:
        yield
    finally:
        progress.configure()
        common.set_quiet(False)
        hf_logging.set_verbosity(before)


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


@cli.command(
    epilog="""\b
Examples:
  trainer check configs/classifier.yaml
  trainer check configs/*.yaml --json        # one JSON object per config, for scripts and CI
  cd ../shared/seed-data && trainer check configs/model2_classifier.yaml --bundles ~/bundles
  trainer check configs/classifier.yaml --public-key release.pub
""",
)
@click.argument("configs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@_bundles_option
@_public_key_option
@_set_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per config (also for a config that fails) instead of the report.")
@_verbosity
def check(configs: tuple[str, ...], bundles_dir: str, public_keys: tuple[str, ...], overrides: tuple[str, ...], as_json: bool, quiet: bool, verbose: bool) -> None:
    """Preflight each CONFIG in seconds without training: config, data, model, and a data-quality report.

    A model not yet in the HF cache is verified from its bundle and installed into the cache (as
    'trainer run' would), and the report says so. Exits non-zero when anything would stop a run,
    with the worst status of all CONFIGs; quality findings are warnings with numbers.
    """
    from trainer.checks import check_one

    results = [check_one(c, bundles_dir=bundles_dir, public_keys=public_keys, overrides=overrides, verbose=verbose) for c in configs]
    for r in results:
        if as_json:
            click.echo(json.dumps(r.to_json(), ensure_ascii=False, default=str))
        elif quiet:
            click.echo(r.verdict())
        else:
            click.echo(r.render())
    failed = [r for r in results if r.exit_code]
    if not failed:
        return
    if len(results) > 1:
        _fail(f"{len(failed)} of {len(results)} configs failed the check", max(r.exit_code for r in failed))
    if not as_json and not quiet and failed[0].report is not None:
        _fail(f"check found {failed[0].report.error_count} error(s), listed above; fix them and run 'trainer check' again", failed[0].exit_code)
    _fail(failed[0].message, failed[0].exit_code)


@cli.command(name="eval")
@click.argument("target", type=click.Path())
@click.option("--split", default=None, type=click.Choice(["train", "valid", "test"]), help="Which data split to evaluate on.  [default: test if the run has one, else valid]")
@_bundles_option
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as one JSON object (full precision, one top-level key a line) instead of the table.")
@_verbosity
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
    from trainer.evaluate import evaluate
    from trainer.offline import network_guard

    with network_guard(), _verbosity_set(quiet=quiet, verbose=verbose):
        metrics = evaluate(target, split=split, bundles_dir=bundles_dir)
    if split is None:
        _note(f"evaluated on the {metrics['split']} split (the best one this run has; --split picks another)", quiet=quiet)
    harness = metrics.get("harness")
    if harness and Path(target).is_dir():
        _note(f"harness: {harness['compliant']} of {harness['prompts']} generated answers compliant; recorded in {Path(target) / 'metrics.json'}, report.md and harness.jsonl", quiet=quiet)
    if as_json:
        click.echo(_json_block(metrics))
        return
    from trainer.report import eval_table

    for line in eval_table(metrics):
        click.echo(line)


def _json_block(d: dict[str, Any]) -> str:
    """JSON with one top-level key per line: readable, and still parseable by scripts."""
    items = [f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False, default=str)}" for k, v in d.items()]
    return "{\n" + ",\n".join(items) + "\n}" if items else "{}"


@cli.command()
@click.argument("output_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("texts", nargs=-1, required=True)
@_verbosity
def predict(output_dir: str, texts: tuple[str, ...], quiet: bool, verbose: bool) -> None:
    """Run a trained model in OUTPUT_DIR on TEXT...; prints one JSON object per text.

    \b
    Classifiers give the label and probabilities, embedding models the similarity of each text
    to the first, chat models the generated answer.
    Examples:
      trainer predict runs/classifier "Status: Paid | Bureau: Equifax"
      trainer predict runs/embeddings "charge-off meaning" "What is a charge-off?"
    """
    from trainer.evaluate import predict as run_predict
    from trainer.offline import network_guard

    with network_guard(), _verbosity_set(quiet=quiet, verbose=verbose):
        results = run_predict(output_dir, list(texts))
    for item in results:
        click.echo(json.dumps(item, ensure_ascii=False, default=str))


@cli.command(
    epilog="""\b
Examples:
  trainer serve runs/classifier runs/embeddings runs/sft --knowledge-base data/kb
  trainer serve runs/embeddings --port 0                 # any free port; the log line names it
  trainer serve acme/eligibility-classifier --bundles /media/usb/bundles   # HF cache, else a bundle
  trainer serve runs/sft --host 0.0.0.0 --token-file tokens.txt --tls-cert cert.pem --tls-key key.pem
  curl -s localhost:8000/health
  OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=none python my_client.py
""",
)
@click.argument("models", nargs=-1, required=True)
@click.option("--knowledge-base", "knowledge_base", type=click.Path(file_okay=False), default=None, help="Folder of Markdown files for /retrieve, embedded at start-up with the served embedding model.")
@click.option("--kb-cache", type=click.Path(file_okay=False), default=None, help="Where knowledge-base embeddings are cached by content.  [default: $XDG_CACHE_HOME/trainer/kb]")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=int, help="TCP port (0: any free one).")
@_bundles_option
@_public_key_option
@click.option("--precision", default="auto", show_default=True, type=click.Choice(["auto", "fp32", "bf16"]),
              help="auto: bf16 weights on a CPU with native bf16 (AVX512-BF16/AMX; /health says bf16-pure), else fp32; bf16 autocast on a GPU with bf16. fp32: the training numerics exactly.")
@click.option("--max-body-bytes", default=1024 * 1024, show_default=True, type=click.IntRange(min=1), help="Largest request body (413 above).")
@click.option("--max-texts", default=64, show_default=True, type=click.IntRange(min=1), help="Most texts in one /embed or /v1/embeddings request (413 above).")
@click.option("--max-tokens-per-text", default=512, show_default=True, type=click.IntRange(min=1), help="Most tokens in one text or chat prompt (413 above); a model's own limit is lower when it is.")
@click.option("--max-new-tokens", default=512, show_default=True, type=click.IntRange(min=1), help="Most tokens a chat request may ask for (422 above).")
@click.option("--max-batch-texts", default=64, show_default=True, type=click.IntRange(min=1), help="Most texts one batched forward pass takes.")
@click.option("--batch-wait-ms", default=5.0, show_default=True, type=click.FloatRange(min=0), help="How long a model's worker waits for more requests to join a forward pass.")
@click.option("--graceful-timeout", default=30, show_default=True, type=click.IntRange(min=1), help="Seconds a stop (SIGTERM, Ctrl-C) waits for requests in flight.")
@click.option("--workers", default=None, type=click.IntRange(min=1), help="Worker threads per classifier or embedding model; torch threads are the cores divided by it.  [default: one per core on a CPU, 1 on a GPU]")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None, help="Require 'Authorization: Bearer TOKEN' on every route but /health; one token a line, 'name:token' (the name goes to the access log), as mirror serve.")
@click.option("--tls-cert", type=click.Path(dir_okay=False), default=None, help="Serve HTTPS with this PEM certificate (chain); needs --tls-key.")
@click.option("--tls-key", type=click.Path(dir_okay=False), default=None, help="The certificate's PEM private key (not encrypted).")
@click.option("--read-timeout", default=30.0, show_default=True, type=click.FloatRange(min=0.1), help="Seconds a client has to send a whole request (headers and body); a slower connection is closed.")
@click.option("--limit-concurrency", default=1000, show_default=True, type=click.IntRange(min=2), help="Most connections and requests in flight; more get 503.")
@_verbosity
def serve(models: tuple[str, ...], knowledge_base: str | None, kb_cache: str | None, host: str, port: int, bundles_dir: str, public_keys: tuple[str, ...],
          precision: str, max_body_bytes: int, max_texts: int, max_tokens_per_text: int, max_new_tokens: int, max_batch_texts: int, batch_wait_ms: float,
          graceful_timeout: int, workers: int | None, token_file: str | None, tls_cert: str | None, tls_key: str | None, read_timeout: float,
          limit_concurrency: int, quiet: bool, verbose: bool) -> None:
    """Serve trained MODELS over HTTP: the original service's API and the OpenAI-compatible one.

    Each MODEL is a run folder (trainer run's output_dir), a model folder, or a repo id taken
    from the HF cache or a verified bundle in --bundles; one per task (classifier, embedding
    model, chat model). Offline: nothing is fetched, and the network guard blocks any
    connection out. Routes: GET /health /metrics /v1/models; POST /classify /embed /retrieve
    /chat /v1/embeddings /v1/chat/completions (docs/serving.md).
    """
    from trainer.offline import network_guard
    from trainer.resolve import check_public_keys
    from trainer.serve import Options
    from trainer.serve import serve as run_server
    from trainer.serve.app import Limits

    limits = Limits(max_body_bytes=max_body_bytes, max_texts=max_texts, max_tokens_per_text=max_tokens_per_text, max_new_tokens=max_new_tokens,
                    default_new_tokens=min(256, max_new_tokens), max_batch_texts=max_batch_texts, batch_wait_ms=batch_wait_ms)
    opts = Options(models=models, host=host, port=port, knowledge_base=knowledge_base, kb_cache=kb_cache, bundles_dir=bundles_dir,
                   public_keys=check_public_keys(public_keys), precision=precision, limits=limits, graceful_timeout_s=graceful_timeout,
                   workers=workers, access_log=not quiet, token_file=token_file, tls_cert=tls_cert, tls_key=tls_key, read_timeout_s=read_timeout,
                   limit_concurrency=limit_concurrency)
    with network_guard(), _verbosity_set(quiet=quiet, verbose=verbose):
        stopped = run_server(opts, note=lambda line: _note(f"trainer serve: {line}", quiet=quiet),
                             listening=lambda line: click.echo(f"trainer serve: {line}", err=True), verbose=verbose)  # even with -q: it names the port
    _note(f"trainer serve: stopped{' by ' + stopped.signal if stopped.signal else ''} after answering {stopped.requests} requests", quiet=quiet)


# the exit-code table ends `trainer --help`; each command's --help points there instead of repeating it
cli.epilog = f"{cli.epilog}\n\n{exitcodes.help_epilog()}"
for _command in cli.commands.values():
    _command.epilog = f"{_command.epilog}\n\n{exitcodes.help_pointer('trainer')}" if _command.epilog else exitcodes.help_pointer("trainer")


def main() -> None:
    """Console entry point: offline first, then anything that may import Hugging Face code."""
    enforce_offline()
    from mirror import signals  # no Hugging Face import: SIGTERM/SIGHUP unwind like Ctrl-C (checkpoint kept, staging removed)

    signals.install()
    cli(prog_name="trainer")
