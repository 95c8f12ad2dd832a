"""What every `mirror` command prints the same way: notes that -q silences, one JSON object a
line, several inputs with the worst exit code, the written-bundle summary."""

from __future__ import annotations

from pathlib import Path

import click

from common.cli import Command, emit, failure, one_line, record
from common.progress import human_size

__all__ = ["Command", "Inputs", "emit", "failure", "identity", "note", "one_line", "quiet", "record", "report_written", "sign_after_write", "verbose"]


def quiet() -> bool:
    return bool(click.get_current_context().meta.get("mirror.quiet"))


def verbose() -> bool:
    return bool(click.get_current_context().meta.get("mirror.verbose"))


def note(text: str) -> None:
    """A line on stderr that -q silences (summaries, notes); errors and results are never silenced."""
    if not quiet():
        click.echo(text, err=True)


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
            emit(e, input=what, **fields)

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
