"""The one error boundary and the one JSON serialiser of both command lines (`mirror`, `trainer`).

huggingface_hub's `cli/_errors.py` shape: a click group whose `main` and `invoke` turn every error
a user can meet into one line on stderr (`TOOL: error: what, why, what to do`) and an exit code
from the one table (`common.exitcodes`), never a traceback. Typed errors (`ToolError`) carry
their code; an `OSError` is the environment (a full disk is 7); click's usage errors are 2;
Ctrl-C, SIGTERM and SIGHUP unwind as `KeyboardInterrupt` (`common.signals`) and exit 128 + the
signal. What differs between the tools is passed in as small callables: the trainer's resume hint
for an interrupted run, its YAML errors, what each says an interruption left behind.

`record` and `json_line` are how every `--json` object is made: a result (a dataclass, an object
with `to_dict`, a mapping) or an error becomes one JSON object on one line, keys sorted.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import signal
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import click

from common import exitcodes, signals
from common.errors import ToolError

# (ctx, error) -> (exit code, one-line message): a package's own rendering of one error type
Explain = Callable[[click.Context, BaseException], "tuple[int, str]"]
# (ctx or None, " by SIGTERM" or "") -> the message for an interruption: what it left behind
Interrupted = Callable[["click.Context | None", str], str]


def one_line(text: object) -> str:
    """`text` with every run of whitespace (newlines included) made one space."""
    return " ".join(str(text).split())


def failure(e: BaseException) -> tuple[int, str]:
    """The exit code and one-line message for an error a user can meet; anything else (a bug)
    is raised again, so it keeps its traceback."""
    if isinstance(e, ToolError):
        return e.exit_code, one_line(e) or type(e).__name__
    if isinstance(e, OSError):  # a full disk, a read-only folder: the environment, not a bug
        if e.errno == errno.ENOSPC:
            return exitcodes.NO_SPACE, f"no space left on device{' writing ' + str(e.filename) if e.filename else ''}; free some space or choose another directory"
        where = f"{e.filename}: " if e.filename else ""
        return exitcodes.FAILED, f"{where}{one_line(e.strerror or e)}; check the path, its permissions and free space"
    raise e


class Command(click.Command):
    """A command whose --help ends by saying where the exit-code table is (the tool's --help)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        self.format_exit_pointer(ctx, formatter)

    def format_exit_pointer(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        root = ctx.find_root().command
        formatter.write_paragraph()
        with formatter.indentation():
            formatter.write_text(exitcodes.help_pointer(getattr(root, "tool", root.name)))


class Boundary(click.Group):
    """The group every command of a tool runs in: typed errors (in `invoke`) and click's own usage
    errors (in `main`) become `TOOL: error: <one line>` on stderr and the error's exit code.

    `explain` maps a package's own error types to their message, checked before the shared
    mapping (`failure`); `interrupted` words an interruption (Ctrl-C at a prompt gets ctx None).
    Both arrive as keywords of `@click.group(cls=Boundary, ...)`."""

    command_class = Command

    def __init__(self, *args: Any, tool: str, explain: Mapping[type[BaseException], Explain] | None = None,
                 interrupted: Interrupted | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tool = tool
        self.explain = dict(explain or {})
        self.interrupted = interrupted or (lambda ctx, how: f"interrupted{how}")

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        formatter.write_paragraph()
        with formatter.indentation():
            formatter.write_text(exitcodes.help_epilog())

    def error(self, message: str) -> None:
        click.echo(f"{self.tool}: error: {message}", err=True)

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(args=argv, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except click.exceptions.UsageError as e:  # missing argument, bad option, no such file...
            code = e.exit_code
            if isinstance(e, getattr(click.exceptions, "NoArgsIsHelpError", ())):  # the bare tool: its help
                click.echo(e.ctx.get_help(), err=True)
            else:
                if e.ctx is not None and ("-v" in argv or "--verbose" in argv):
                    click.echo(e.ctx.get_usage(), err=True)
                hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
                self.error(f"{one_line(e.format_message()).rstrip('.')}{hint}")
        except click.exceptions.Abort:  # Ctrl-C at a prompt
            self.error(self.interrupted(None, ""))
            code = exitcodes.INTERRUPTED
        except click.ClickException as e:  # e.g. a bad file given to a click.Path argument
            self.error(one_line(e.format_message()))
            code = e.exit_code
        if standalone_mode:
            sys.exit(code)
        return code

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ToolError, OSError, *self.explain) as e:
            code, message = self.describe(ctx, e)
            self.error(message)
            ctx.exit(code)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP made to unwind (common.signals)
            how = f" by {signal.Signals(e.signum).name}" if isinstance(e, signals.Terminated) else ""
            self.error(self.interrupted(ctx, how))
            ctx.exit(signals.exit_code(e))

    def describe(self, ctx: click.Context, e: BaseException) -> tuple[int, str]:
        for kind, explain in self.explain.items():
            if isinstance(e, kind):
                return explain(ctx, e)
        return failure(e)


# --- --json: one serialiser ---------------------------------------------------------------------------


def record(value: Any = None, *, only: Iterable[str] | None = None, names: Mapping[str, str] | None = None, **fields: Any) -> dict[str, Any]:
    """One --json object: `value`'s fields (an object with `to_dict()`, a dataclass, a mapping;
    an error gives {"ok": false, "error", "exit_code"}), only those in `only` when given, some
    renamed by `names` ({field: key}), then `fields` on top."""
    if value is None:
        data: dict[str, Any] = {}
    elif isinstance(value, BaseException):
        code, message = failure(value)
        data = {"ok": False, "error": message, "exit_code": code}
    elif hasattr(value, "to_dict"):  # the result's own JSON form wins over its fields
        data = dict(value.to_dict())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    else:
        data = dict(value)
    if only is not None:
        data = {k: data[k] for k in only}
    if names:
        data = {names.get(k, k): v for k, v in data.items()}
    return {**data, **fields}


def json_line(obj: Any) -> str:
    """`obj` as one line of JSON, keys sorted; paths and other values JSON has no type for as text."""
    return json.dumps(obj, sort_keys=True, default=str)


def emit(value: Any = None, **kwargs: Any) -> None:
    """Print `record(value, **kwargs)` as one JSON line on stdout."""
    click.echo(json_line(record(value, **kwargs)))


__all__ = ["Boundary", "Command", "emit", "failure", "json_line", "one_line", "record"]
