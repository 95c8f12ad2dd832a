"""The `mirror` command line: parse, call one function, print.

One module per command group (bundles: pack/verify/inspect/sign/signature/keygen; hub: pull;
oci: push; cache: install/list; audit: audit/approve; serve), the options they share in
`_options`, what they print alike in `_output`. This module holds the group; its error boundary (typed
errors to `mirror: error: <one line>` and an exit code) is `common.cli.Boundary`, the trainer's too. Logic lives
in the plain modules (bundle, verify, install, pack, listing, hub); none of them imports click.

A command imports its library modules inside its function, and only for that reason: `mirror
--help`, a usage error or `mirror list` start without loading huggingface_hub, requests or
cryptography. None of these imports dodges a cycle (tests/test_layering.py counts them too).
"""

from __future__ import annotations

import click

from common import signals
from common.cli import Boundary
from mirror import __version__
from mirror.cli import audit, bundles, cache, hub, oci, serve

# What an interrupted command leaves: nothing under a bundle's or a snapshot's name; a pull keeps
# its hidden partial file so the same command resumes it.
_INTERRUPTED = "nothing half-written is left under a name anyone trusts; run the same command again to finish"


def _interrupted(ctx: click.Context | None, how: str) -> str:
    return f"interrupted{how}; {_INTERRUPTED}"


@click.group(name="mirror", cls=Boundary, tool="mirror", interrupted=_interrupted, context_settings={"help_option_names": ["-h", "--help"]})
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
