"""What every `trainer` command prints the same way: errors, notes that -q silences, -q/-v for
the libraries' own messages, JSON."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import click

import sys


def fail(message: str, code: int) -> None:
    click.echo(f"trainer: error: {message}", err=True)
    sys.exit(code)



def note(message: str, *, quiet: bool) -> None:
    """A progress line or note on stderr: what the tool is doing, never a result."""
    if not quiet:
        click.echo(message, err=True)



@contextlib.contextmanager
def verbosity_set(*, quiet: bool, verbose: bool) -> Iterator[None]:
    """-q/-v for one command: our progress and notes (common.progress, the recipes' log lines)
    and transformers' own messages (errors only with -q, info with -v); put back afterwards, so
    one command's -q never silences the next in the same process."""
    # deferred: transformers (and torch, through trainer.recipes) load only after main() set offline mode, never for --help
    from transformers.utils import logging as hf_logging

    from common import progress
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



def json_block(d: dict[str, Any]) -> str:
    """JSON with one top-level key per line: readable, and still parseable by scripts."""
    items = [f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False, default=str)}" for k, v in d.items()]
    return "{\n" + ",\n".join(items) + "\n}" if items else "{}"
