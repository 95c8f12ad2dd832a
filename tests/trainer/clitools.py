"""Helpers for the trainer's CLI attack tests: a deadline that turns a hang into a failure, and the
one-line error a refused command must print.

Several tests hand the trainer FIFOs and devices, where the bug guarded against is a hang. `Hung`
is a BaseException, so no error boundary in the code under test can swallow it.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Any, Iterator

from click.testing import Result

CLI_DEADLINE_S = 120  # a refused file takes milliseconds; only a hang gets near this


class Hung(BaseException):
    """The command was still running at its deadline."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    def fire(signum: int, frame: Any) -> None:
        raise Hung(f"still running after {seconds}s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def error_line(result: Result) -> str:
    """The one line a failed command printed on stderr (asserting there is exactly one)."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    assert lines[0].startswith("trainer: error: ")
    return lines[0].removeprefix("trainer: error: ")
