"""Step progress of a training run where no progress bar can be drawn.

On a terminal the recipes show tqdm's bar per epoch. In a CI log, under nohup or in a Kubernetes
pod that bar is switched off, and an epoch of a real model is minutes between the "N steps" line
and the epoch line: no way to tell slow from stuck, nor when it will end. There a `Steps`
reporter prints one line at a steady interval:

    step 120/400 (30 %), loss 0.4123, 2.10 steps/s, 67.2 samples/s, ETA 2 min 13 s

The check is one clock read per optimizer step (a step is milliseconds at the least), no thread.
`configure(quiet=True)` silences it; without a call it is on.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from common.progress import duration_text

INTERVAL_ENV = "TRAINER_PROGRESS_INTERVAL"
LOG_INTERVAL = 30.0  # seconds between lines: a few per epoch of a real model, a short log still

_settings = {"quiet": False, "verbose": False}


def configure(*, quiet: bool = False, verbose: bool = False) -> None:
    """Set once by the CLI (-q / -v). Without a call, step lines show on stderr off a terminal.
    `quiet`: none. `verbose`: also on a terminal (under tqdm's bar, for a run watched live)."""
    _settings["quiet"], _settings["verbose"] = bool(quiet), bool(verbose)


def log_interval() -> float:
    """Seconds between step lines: $TRAINER_PROGRESS_INTERVAL (tests set a small one), else 30."""
    from common.progress import log_interval as interval  # no Hugging Face import behind it

    return interval(INTERVAL_ENV, LOG_INTERVAL)


def step_line(*, step: int, total: int, loss: float | None, steps_per_s: float, rows_per_step: int | None) -> str:
    """`step 120/400 (30 %), loss 0.4123, 2.10 steps/s, 67.2 samples/s, ETA 2 min 13 s`."""
    parts = [f"step {step}/{total} ({int(100 * step / total) if total else 100} %)"]
    if loss is not None:
        parts.append(f"loss {loss:.4f}")
    parts.append(f"{steps_per_s:.2f} steps/s")
    if rows_per_step:
        parts.append(f"{steps_per_s * rows_per_step:.1f} samples/s")
    parts.append("ETA " + (duration_text(max(0, total - step) / steps_per_s) if steps_per_s > 0 else "unknown"))
    return ", ".join(parts)


class Steps:
    """Call `step(n, loss)` after each optimizer step; prints when the interval has passed.

    `done`: steps already taken when this reporter starts (a resumed run), kept out of the rate.
    `rows_per_step`: training rows per optimizer step (all processes), for samples/s.
    `enabled=False` (e.g. not the main process) makes it a no-op."""

    def __init__(self, *, total: int, done: int = 0, rows_per_step: int | None = None, enabled: bool = True, stream: TextIO | None = None):
        self.total, self.rows_per_step = total, rows_per_step
        self._stream = stream if stream is not None else sys.stderr
        # a terminal has tqdm's bar already; one line per interval is for logs
        self._tty = _isatty(self._stream)
        self.enabled = enabled and not _settings["quiet"] and (_settings["verbose"] or not self._tty)
        self._every = log_interval()
        self._start_step = done
        self._start = self._last = time.monotonic()

    def step(self, step: int, loss: float | None = None) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < self._every or step >= self.total:  # the epoch line reports the end
            return
        self._last = now
        rate = (step - self._start_step) / (now - self._start) if now > self._start else 0.0
        line = step_line(step=step, total=self.total, loss=loss, steps_per_s=rate, rows_per_step=self.rows_per_step)
        if self._tty:  # verbose on a terminal: above tqdm's bar, not through it
            from tqdm.auto import tqdm

            tqdm.write(line, file=self._stream)
        else:
            print(line, file=self._stream, flush=True)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
