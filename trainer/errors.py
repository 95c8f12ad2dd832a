"""Typed errors for the trainer. `trainer.cli` maps each to one line and an exit code.

A message may quote a value from a config or a data row, and those come from users (or from an
attacker's file): `shown()` is how any such value is quoted, so no message is ever longer than a
line, however large the value.
"""

from __future__ import annotations

import reprlib
from typing import Any

from common import exitcodes
from common.errors import ToolError

SHOWN_CHARS = 80  # the most of a user's value that a message quotes
MAX_LISTED_PROBLEMS = 10  # config problems named in one message; the rest are counted
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, SHOWN_CHARS, SHOWN_CHARS, SHOWN_CHARS


def shown(value: Any) -> str:
    """`repr(value)`, cut to about SHOWN_CHARS; bounded work even for a huge or deep value."""
    try:
        text = _REPR.repr(value)
    except (ValueError, RecursionError):  # an int too long to convert, a structure too deep
        return f"<a {type(value).__name__} too large to show>"
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


class TrainerError(ToolError):
    exit_code = exitcodes.FAILED


class ConfigError(TrainerError, ValueError):
    """One or more problems in a config. All of them are listed at once."""

    exit_code = exitcodes.USAGE

    def __init__(self, source: str, problems: list[str], *, fix: str = "fix the config (see configs/ for working examples)"):
        self.source = source
        self.problems = list(problems)
        listed = [_one_line(p) for p in problems[:MAX_LISTED_PROBLEMS]]
        if len(problems) > MAX_LISTED_PROBLEMS:
            listed.append(f"and {len(problems) - MAX_LISTED_PROBLEMS} more")
        if len(problems) == 1 and source == "--set" and listed[0].startswith("--set "):
            msg = listed[0]  # "--set epoch: unknown key ...": the option already names itself
        elif len(problems) == 1:
            msg = f"{source}: {listed[0]}"
        else:
            msg = f"{source}: {len(problems)} problems: " + "; ".join(listed)
        super().__init__(f"{msg}; {fix}")


def _one_line(problem: str, limit: int = 4 * SHOWN_CHARS) -> str:
    text = " ".join(problem.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class DataError(TrainerError, ValueError):
    """A data file is missing or a row is malformed: names file:line and why."""

    exit_code = exitcodes.USAGE

    def __init__(self, path: str, reason: str, *, line: int | None = None):
        self.path = path
        self.line = line
        self.reason = reason
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {reason}; fix the data file and run 'trainer check' again")


class NotRegularFile(TrainerError, OSError):
    """A config, data or key path names a FIFO, device, directory or socket: reading one would
    block forever, never end, or fail obscurely, so it is refused before it is opened."""

    exit_code = exitcodes.USAGE

    def __init__(self, path: str, kind: str):
        self.path = path
        self.kind = kind
        self.reason = f"is {kind}, not a regular file"
        super().__init__(f"{path}: {self.reason}; name a regular file")


class KeyFileError(TrainerError, ValueError):
    """A public key named by --public-key or public_keys is missing or not a regular file."""

    exit_code = exitcodes.USAGE


class OutputDirRefused(TrainerError, FileExistsError):
    """`trainer run` will not write into this output_dir (see trainer.rundir for the rules)."""

    exit_code = exitcodes.USAGE

    def __init__(self, output_dir: str, reason: str, *, fix: str):
        self.output_dir = output_dir
        super().__init__(f"output_dir {output_dir} {reason}; {fix}")


class ModelNotAvailable(TrainerError, FileNotFoundError):
    exit_code = exitcodes.UNAVAILABLE

    def __init__(self, model_id: str, *, bundles_dir: str = "bundles", detail: str = ""):
        self.model_id = model_id
        super().__init__(
            f"model {model_id} is not available offline{(' (' + detail + ')') if detail else ''}: "
            f"on a connected host run 'mirror pull {model_id}', copy the bundle into {bundles_dir}/ here"
        )


class NetworkBlocked(TrainerError, RuntimeError):
    """Raised by the network guard the moment anything tries to leave the machine.

    Deliberately not a ConnectionError/OSError: HTTP clients wrap socket OSErrors into retryable
    connection errors and back off; this one must pass through them and stop the run at once.
    """

    exit_code = exitcodes.NETWORK_BLOCKED

    def __init__(self, target: str, *, caller: str = ""):
        self.target = target
        super().__init__(
            f"blocked a network connection to {target}{(' from ' + caller) if caller else ''}: "
            "training runs offline; make the model and data available locally (mirror bundles)"
        )


class BundleRejected(TrainerError, ValueError):
    """A bundle for the model exists but is corrupt or refused; carries the mirror error."""

    exit_code = exitcodes.INTEGRITY  # used only when the mirror error carries no code of its own

    def __init__(self, bundle: str, cause: Exception, *, note: str = ""):
        self.bundle = bundle
        self.cause = cause
        self.exit_code = getattr(cause, "exit_code", type(self).exit_code)
        text = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        text = text if bundle in text else f"{bundle}: {text}"
        super().__init__(text + (f" ({note})" if note else ""))


class BundleUntrusted(BundleRejected):
    """Auto-install refused a bundle without a valid signature by a trusted key (mirror's
    SignatureError, exit code 5): the model was not installed."""

    def __init__(self, bundle: str, cause: Exception):
        super().__init__(bundle, cause, note=(
            "the model was not installed; the trusted keys are --public-key, the config's public_keys "
            "and $MIRROR_TRUSTED_KEYS"
        ))


class RemoteCodeRefused(TrainerError, PermissionError):
    exit_code = exitcodes.POLICY

    def __init__(self, model_id: str, *, reason: str = ""):
        self.model_id = model_id
        super().__init__(
            f"model {model_id} needs remote code ({reason or 'Python files in its repo'}) to load; "
            "review the code, then set 'trust_remote_code: true' in the config to allow it"
        )


class Interrupted(TrainerError):
    exit_code = exitcodes.INTERRUPTED  # SIGINT; the CLI uses 128 + the signal actually received


class ServeError(TrainerError, ValueError):
    """`trainer serve` cannot start as asked: a MODEL that is not a model, two models for one
    task, a knowledge base without an embedding model or without Markdown files."""

    exit_code = exitcodes.USAGE


class ListenFailed(TrainerError, OSError):
    """`trainer serve` cannot listen where it was told (the port is taken, the address is not this machine's)."""

    exit_code = exitcodes.FAILED

    def __init__(self, host: str, port: int, reason: str):
        self.host, self.port = host, port
        super().__init__(f"cannot listen on {host}:{port}: {reason}; pick another --port or --host")


class TextTooLong(TrainerError, ValueError):
    """A text in a request has more tokens than the server's per-text limit (HTTP 413)."""

    exit_code = exitcodes.USAGE

    def __init__(self, *, index: int, tokens: int, limit: int):
        self.index, self.tokens, self.limit = index, tokens, limit
        super().__init__(f"text {index} has {tokens} tokens, more than the limit of {limit} per text: shorten or split it (the server's --max-tokens-per-text)")
