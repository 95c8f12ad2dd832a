"""`trainer`: the command line. Thin: parse, call one function, print.

One module per command group (run, check, evaluate: eval/predict, serve), the options they share
in `_options`, what they print alike in `_output`. No module here imports a Hugging Face library at
its top: `main()` switches the process to offline first (`trainer.offline.enforce_offline`), and
only then do the commands import the modules that load transformers (their function-level imports
are for that, and for start-up time). This module is also the one error boundary: a
`TrainerError` (or a mirror error, or a YAML error) becomes `trainer: error: <one line>` on stderr
and that error's exit code, never a traceback.
"""

from __future__ import annotations

import sys
from typing import Any

import click
import yaml

from common import exitcodes
from mirror.errors import MirrorError
from trainer import __version__
from trainer.cli import check, evaluate, run, serve
from trainer.cli._output import fail as _fail
from trainer.cli.run import _interrupted_message, _resume_hint, resume_command
from trainer.errors import Interrupted, TrainerError
from trainer.offline import enforce_offline

__all__ = ["cli", "main", "resume_command"]

EXIT_INTERRUPTED = exitcodes.INTERRUPTED  # 128 + SIGINT; a SIGTERM/SIGHUP gives 128 + its number


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


for _module in (run, check, evaluate, serve):
    for _command in _module.COMMANDS:
        cli.add_command(_command)

# the exit-code table ends `trainer --help`; each command's --help points there instead of repeating it
cli.epilog = f"{cli.epilog}\n\n{exitcodes.help_epilog()}"
for _command in cli.commands.values():
    _command.epilog = f"{_command.epilog}\n\n{exitcodes.help_pointer('trainer')}" if _command.epilog else exitcodes.help_pointer("trainer")


def main() -> None:
    """Console entry point: offline first, then anything that may import Hugging Face code."""
    enforce_offline()
    from common import signals  # no Hugging Face import: SIGTERM/SIGHUP unwind like Ctrl-C (checkpoint kept, staging removed)

    signals.install()
    cli(prog_name="trainer")
