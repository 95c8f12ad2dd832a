"""Typed errors for the trainer. `trainer.cli` maps each to one line and an exit code."""

from __future__ import annotations


class TrainerError(Exception):
    exit_code = 1


class ConfigError(TrainerError, ValueError):
    """One or more problems in a config. All of them are listed at once."""

    exit_code = 2

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        if len(problems) == 1:
            msg = f"{source}: {problems[0]}"
        else:
            msg = f"{source}: {len(problems)} problems: " + "; ".join(problems)
        super().__init__(msg + "; fix the config (see configs/ for working examples)")


class DataError(TrainerError, ValueError):
    """A data file is missing or a row is malformed: names file:line and why."""

    exit_code = 2

    def __init__(self, path: str, reason: str, *, line: int | None = None):
        self.path = path
        self.line = line
        self.reason = reason
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {reason}; fix the data file and run 'trainer check' again")


class ModelNotAvailable(TrainerError, FileNotFoundError):
    exit_code = 3

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

    exit_code = 4

    def __init__(self, target: str, *, caller: str = ""):
        self.target = target
        super().__init__(
            f"blocked a network connection to {target}{(' from ' + caller) if caller else ''}: "
            "training runs offline; make the model and data available locally (mirror bundles)"
        )


class BundleRejected(TrainerError, ValueError):
    """A bundle for the model exists but is corrupt or refused; carries the mirror error."""

    exit_code = 4

    def __init__(self, bundle: str, cause: Exception):
        self.bundle = bundle
        self.cause = cause
        self.exit_code = getattr(cause, "exit_code", type(self).exit_code)
        text = str(cause)
        super().__init__(text if bundle in text else f"{bundle}: {text}")


class RemoteCodeRefused(TrainerError, PermissionError):
    exit_code = 6

    def __init__(self, model_id: str, *, reason: str = ""):
        self.model_id = model_id
        super().__init__(
            f"model {model_id} needs remote code ({reason or 'Python files in its repo'}) to load; "
            "review the code, then set 'trust_remote_code: true' in the config to allow it"
        )


class Interrupted(TrainerError):
    exit_code = 130
