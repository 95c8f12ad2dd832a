"""The `mirror` command line: parse, call one function, print.

One module per command group (bundles: pack/verify/inspect/sign/signature/keygen; hub: pull;
oci: push; cache: install/list; audit: audit/approve; serve), the options they share in
`_options`, what they print alike in `_output`. This module holds the group and the one place
where typed errors become a one-line message (`mirror: error: ...`) and an exit code. Logic lives
in the plain modules (bundle, verify, install, pack, listing, hub); none of them imports click.
"""

from __future__ import annotations

import signal
import sys

import click

from common import exitcodes, signals
from mirror import __version__
from mirror.cli import audit, bundles, cache, hub, oci, serve
from mirror.cli._output import Command, exit_table, failure, one_line
from mirror.errors import MirrorError

# What an interrupted command leaves: nothing under a bundle's or a snapshot's name; a pull keeps
# its hidden partial file so the same command resumes it.
_INTERRUPTED = "nothing half-written is left under a name anyone trusts; run the same command again to finish"


class _Boundary(click.Group):
    """Maps errors to `mirror: error: <message>` on stderr and the error's exit code: our typed
    errors (in `invoke`) and click's own usage errors (in `main`) alike."""

    command_class = Command

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        exit_table(formatter)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(args=argv, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except click.exceptions.UsageError as e:  # missing argument, bad option, no such file...
            code = e.exit_code
            if isinstance(e, getattr(click.exceptions, "NoArgsIsHelpError", ())):  # bare `mirror`: the help
                click.echo(e.ctx.get_help(), err=True)
            else:
                if e.ctx is not None and ("-v" in argv or "--verbose" in argv):
                    click.echo(e.ctx.get_usage(), err=True)
                where = e.ctx.command_path if e.ctx is not None else "mirror"
                click.echo(f"mirror: error: {one_line(e.format_message()).rstrip('.')}; see '{where} --help'", err=True)
        except click.exceptions.Abort:  # Ctrl-C at a prompt
            click.echo(f"mirror: error: interrupted; {_INTERRUPTED}", err=True)
            code = exitcodes.INTERRUPTED
        except click.ClickException as e:
            click.echo(f"mirror: error: {one_line(e.format_message())}", err=True)
            code = e.exit_code
        if standalone_mode:
            sys.exit(code)
        return code

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (MirrorError, OSError) as e:
            code, message = failure(e)
            click.echo(f"mirror: error: {message}", err=True)
            ctx.exit(code)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP made to unwind (common.signals)
            how = f" by {signal.Signals(e.signum).name}" if isinstance(e, signals.Terminated) else ""
            click.echo(f"mirror: error: interrupted{how}; {_INTERRUPTED}", err=True)
            ctx.exit(signals.exit_code(e))


@click.group(name="mirror", cls=_Boundary, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mirror")
def cli() -> None:
    """Pin Hugging Face repos into verifiable bundles for air-gapped sandboxes.

    \b
    Connected host:  mirror pull sentence-transformers/all-MiniLM-L6-v2
    Sandbox:         mirror verify bundles/X.tar && mirror install bundles/X.tar

    Commands given several inputs process them all and exit with the worst (highest) code of
    the table below; --json prints one object per input, failed ones included
    ("ok": false, "error", "exit_code").
    """


for _module in (bundles, hub, oci, cache, audit, serve):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    signals.install()
    cli.main(args=argv, prog_name="mirror")
