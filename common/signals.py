"""SIGTERM and SIGHUP unwind like Ctrl-C, so every `finally` runs and nothing is left behind.

`timeout`, docker, systemd and Kubernetes stop a process with SIGTERM; a closed terminal sends
SIGHUP. Python's default for both is to die at once, skipping the cleanup that removes staging
folders and `.partial` files. Both CLIs call `install()` first thing.
"""

from __future__ import annotations

import signal
import threading


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM/SIGHUP; a KeyboardInterrupt so the same cleanup runs."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def _raise(signum, frame) -> None:
    # once unwinding has started, a second signal must not interrupt the cleanup itself
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    raise Terminated(signum)


def install() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for s in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(s) in (signal.SIG_DFL, None):
            signal.signal(s, _raise)


def exit_code(e: KeyboardInterrupt) -> int:
    """128 + the signal number, as a shell reports a process ended by it."""
    return 128 + (e.signum if isinstance(e, Terminated) else signal.SIGINT)
