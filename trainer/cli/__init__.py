"""`trainer`: the command line. Thin: parse, call one function, print.

One module per command group (run, check, evaluate: eval/predict, serve), the options they share
in `_options`, what they print alike in `_output`. No module here imports a Hugging Face library at
its top: `main()` switches the process to offline first (`trainer.offline.enforce_offline`), and
only then do the commands import the modules that load transformers (their function-level imports
are for that, and for start-up time). Its error boundary is `common.cli.Boundary`
(mirror's too): a `TrainerError` (or a mirror error, or a YAML error) becomes `trainer: error: <one
line>` on stderr and that error's exit code, never a traceback; an interrupted run says how to resume.
"""

from __future__ import annotations

import click
import yaml

from common import exitcodes
from common.cli import Boundary
from trainer import __version__
from trainer.cli import check, evaluate, run, serve
from trainer.cli.run import resume_command
from trainer.errors import Interrupted
from trainer.offline import enforce_offline

__all__ = ["cli", "main", "resume_command"]



def _yaml_error(ctx: click.Context, e: BaseException) -> tuple[int, str]:
    return exitcodes.USAGE, f"not valid YAML: {str(e).splitlines()[0]}; fix the file"


@click.group(
    cls=Boundary,
    tool="trainer",
    explain={Interrupted: run.resumable, yaml.YAMLError: _yaml_error},
    interrupted=run.interrupted,
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


for _module in (run, check, evaluate, serve):
    for _command in _module.COMMANDS:
        cli.add_command(_command)

def main() -> None:
    """Console entry point: offline first, then anything that may import Hugging Face code."""
    enforce_offline()
    from common import signals  # no Hugging Face import: SIGTERM/SIGHUP unwind like Ctrl-C (checkpoint kept, staging removed)

    signals.install()
    cli(prog_name="trainer")
