"""What every `mirror` command prints the same way: notes that -q silences, one JSON object a
line, several inputs with the worst exit code, the written-bundle summary."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import click

from common import exitcodes
from common.progress import human_size
from mirror.errors import MirrorError


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def failure(e: BaseException) -> tuple[int, str]:
    """The exit code and one-line message for an error a user can meet (the one table, common.exitcodes)."""
    if isinstance(e, MirrorError):
        return e.exit_code, one_line(str(e))
    if isinstance(e, OSError):
        if e.errno == errno.ENOSPC:
            return exitcodes.NO_SPACE, f"no space left on device{' writing ' + str(e.filename) if e.filename else ''}; free some space or choose another directory"
        return exitcodes.FAILED, one_line(e.strerror or str(e)) + (f": {e.filename}" if e.filename else "")
    raise e


def exit_table(formatter: click.HelpFormatter) -> None:
    formatter.write_paragraph()
    with formatter.indentation():
        formatter.write_text(exitcodes.help_epilog())


def exit_pointer(formatter: click.HelpFormatter) -> None:
    """One line where the table would be: it is in `mirror --help` and the README, once."""
    formatter.write_paragraph()
    with formatter.indentation():
        formatter.write_text(exitcodes.help_pointer("mirror"))


class Command(click.Command):
    """Every command's --help ends by saying where the exit-code table is (`mirror --help`)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        exit_pointer(formatter)



def quiet() -> bool:
    return bool(click.get_current_context().meta.get("mirror.quiet"))


def verbose() -> bool:
    return bool(click.get_current_context().meta.get("mirror.verbose"))


def note(text: str) -> None:
    """A line on stderr that -q silences (summaries, notes); errors and results are never silenced."""
    if not quiet():
        click.echo(text, err=True)


def emit(obj: dict) -> None:
    click.echo(json.dumps(obj, sort_keys=True, default=str))


class Inputs:
    """Several inputs: each one is processed even when an earlier one failed; the command then
    exits with the worst (highest) code and ends with "N of M failed" on stderr."""

    def __init__(self, total: int, *, as_json: bool, noun: str = "input"):
        self.total, self.as_json, self.noun = total, as_json, noun
        self.codes: list[int] = []

    def failed(self, what: str, e: BaseException, **fields) -> None:
        code, message = failure(e)
        self.codes.append(code)
        click.echo(f"mirror: error: {message}", err=True)
        if self.as_json:
            emit({"input": what, **fields, "ok": False, "error": message, "exit_code": code})

    def done(self) -> None:
        if not self.codes:
            return
        worst = max(self.codes)
        if self.total > 1:
            click.echo(f"mirror: error: {len(self.codes)} of {self.total} {self.noun}(s) failed; exit {worst} is the worst of them", err=True)
        click.get_current_context().exit(worst)



def sign_after_write(path: Path, key: Path | None) -> None:
    if key is not None:
        from mirror.signing import sign_bundle

        note(f"signed: key sha256:{sign_bundle(path, key_path=key).key_fingerprint}")



def report_written(info, sign_key) -> None:
    """Summary on stderr, optional signature, and the bundle path as the last line of stdout."""
    m = info.manifest
    note(f"{m.repo_id}@{m.commit}: {len(m.files)} files, {human_size(m.total_size)}, sha256 {info.sha256}, identity {identity(info.path)}")
    if verbose():
        for f in m.files:
            click.echo(f"  {f.size:>14,}  {f.path}", err=True)
    sign_after_write(info.path, sign_key)
    click.echo(str(info.path))



def identity(bundle: Path) -> str:
    from mirror.identity import read_bundle_id

    return read_bundle_id(bundle)
