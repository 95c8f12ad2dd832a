"""Byte progress for the long verbs (pack, verify, install, pull), on stderr.

At 1 GB/s a 140 GB model is minutes of work; without a sign of life a user (or a CI job's
timeout) cannot tell slow from stuck. Two ways to show it, chosen by where stderr goes:

- a terminal: one updating tqdm line;
- anything else (CI logs, nohup, Kubernetes): a plain line at a steady interval, e.g.
  `install org/name: 1.2 GB of 4.0 GB (30 %), 850 MB/s, ETA 3 s`, and one closing line.

Work shorter than a couple of seconds shows nothing. The hot path only adds to a counter under a
lock (once per multi-megabyte chunk); a timer thread does all reading of the clock and printing,
so a meter costs the same whether it prints or not. `configure(quiet=True)` silences every meter.

The trainer's step lines live here too (`Steps`): on a terminal the recipes show tqdm's bar per
epoch, but in a CI log, under nohup or in a Kubernetes pod that bar is off, and an epoch of a
real model is minutes between the "N steps" line and the epoch line. There `Steps` prints one
line at a steady interval ($TRAINER_PROGRESS_INTERVAL, else 30 s), one clock read per optimizer
step and no thread:

    step 120/400 (30 %), loss 0.4123, 2.10 steps/s, 67.2 samples/s, ETA 2 min 13 s

The same `configure()` (-q / -v) governs both: quiet shows neither; verbose also shows the step
lines on a terminal (above tqdm's bar) and a totals line for short byte work off one.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Self, TextIO

INTERVAL_ENV = "MIRROR_PROGRESS_INTERVAL"
LOG_INTERVAL = 10.0  # seconds between plain lines: a log stays readable, a stall is still visible
TTY_REFRESH = 0.5  # a terminal line redraws often enough to look alive, rarely enough to cost nothing
QUIET_FOR = 2.0  # work finishing within this shows nothing

_settings = {"quiet": False, "verbose": False}


def configure(*, quiet: bool = False, verbose: bool = False) -> None:
    """Set once by the CLI (-q / -v). Without a call, progress shows on stderr. `quiet`: no
    meter shows anything. `verbose`: off a terminal, also a line of totals for short work."""
    _settings["quiet"], _settings["verbose"] = bool(quiet), bool(verbose)


def quiet() -> bool:
    return _settings["quiet"]


def verbose() -> bool:
    return _settings["verbose"]


def log_interval(env: str = INTERVAL_ENV, default: float = LOG_INTERVAL) -> float:
    """Seconds between plain lines: $MIRROR_PROGRESS_INTERVAL (tests set a small one), else 10;
    the trainer's step lines read their own variable through the same rule."""
    raw = os.environ.get(env, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        return default
    return value if value > 0 else default


def human_size(n: float) -> str:
    """Decimal units, as disks and links are sold and the Hub's pages show sizes: 850 B, 1.2 GB.
    The one size formatter: messages, tables, pages and progress lines all say sizes alike."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def duration_text(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def line(label: str, *, done: int, total: int, elapsed: float) -> str:
    """`label: 1.2 GB of 4.0 GB (30 %), 850 MB/s, ETA 3 s`."""
    rate = done / elapsed if elapsed > 0 else 0.0
    pct = int(100 * done / total) if total else 100
    eta = duration_text((total - done) / rate) if rate > 0 else "unknown"
    return f"{label}: {human_size(done)} of {human_size(total)} ({pct} %), {human_size(rate)}/s, ETA {eta}"


class Meter:
    """Bytes done out of `total`; `add` from any thread. Use as a context manager, or `close()`."""

    def __init__(self, label: str, total: int, *, tty: bool = True, stream: TextIO | None = None):
        self.label, self.total = label, max(0, int(total))
        self.done = 0
        self._lock = threading.Lock()
        self._stream = stream if stream is not None else sys.stderr
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._printed = False
        self._bar = None
        self._thread: threading.Thread | None = None
        on_tty = _isatty(self._stream)
        if quiet() or self.total == 0 or (on_tty and not tty):
            return  # a silent meter: `add` still counts, nothing else runs
        self._tty = on_tty
        self._every = TTY_REFRESH if on_tty else log_interval()
        self._delay = min(QUIET_FOR, self._every) if not on_tty else QUIET_FOR
        self._thread = threading.Thread(target=self._run, name="mirror-progress", daemon=True)
        self._thread.start()

    def add(self, n: int) -> None:
        with self._lock:  # += is not atomic across the extractor's threads
            self.done += n

    def _run(self) -> None:
        if self._stop.wait(self._delay):
            return
        while True:
            self._show()
            if self._stop.wait(self._every):
                return

    def _show(self) -> None:
        self._poll()
        done, elapsed = min(self.done, self.total), time.monotonic() - self._start
        if self._tty:
            if self._bar is None:
                from tqdm.auto import tqdm  # deferred: only a terminal's bar needs it

                self._bar = tqdm(total=self.total, desc=self.label, unit="B", unit_scale=True, file=self._stream, dynamic_ncols=True)
            self._bar.update(done - self._bar.n)
            return
        print(line(self.label, done=done, total=self.total, elapsed=elapsed), file=self._stream, flush=True)
        self._printed = True

    def _poll(self) -> None:
        pass

    def close(self, *, ok: bool = True) -> None:
        """Stop the timer; a meter that printed ends with one line of totals, only once all of its
        work is done (a failure, or a fast pass that gave up for a slower one, ends silently)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        elapsed = time.monotonic() - self._start
        self._poll()
        if self._bar is not None:
            self._bar.update(min(self.done, self.total) - self._bar.n)
            self._bar.close()
        elif ok and self.done >= self.total and (self._printed or (_settings["verbose"] and not self._tty)):
            done = self.total
            rate = done / elapsed if elapsed > 0 else 0.0
            took = f"{elapsed:.1f} s" if elapsed < 10 else duration_text(elapsed)
            print(f"{self.label}: {human_size(done)} in {took}, {human_size(rate)}/s", file=self._stream, flush=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind, *exc) -> None:
        self.close(ok=kind is None)


class ReadMeter(Meter):
    """Progress of a pass whose reads happen in code that takes no callback (mirror.hashing's
    parallel `hash_files`): the bytes this process has read since the meter started, sampled by
    the timer from /proc/self/io. Where that does not exist, the meter stays silent."""

    def __init__(self, label: str, total: int, **kw):
        self._base = _bytes_read()
        super().__init__(label, total if self._base is not None else 0, **kw)

    def _poll(self) -> None:
        now = _bytes_read()
        if now is not None and self._base is not None:
            self.done = now - self._base


def _bytes_read() -> int | None:
    try:
        with open("/proc/self/io", "rb") as f:
            for row in f:
                if row.startswith(b"rchar:"):
                    return int(row.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def meter(label: str, total: int, *, tty: bool = True) -> Meter:
    """A meter for `total` bytes of work named `label` (`install org/name`). `tty=False`: show
    nothing on a terminal (the caller draws its own bar there, as pull's tqdm does)."""
    return Meter(label, total, tty=tty)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-less stream (pytest's capture)
        return False


# --- the trainer's step lines ----------------------------------------------------------------------

STEPS_INTERVAL_ENV = "TRAINER_PROGRESS_INTERVAL"
STEPS_LOG_INTERVAL = 30.0  # seconds between step lines: a few per epoch of a real model, a short log still


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
        self._every = log_interval(STEPS_INTERVAL_ENV, STEPS_LOG_INTERVAL)
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
            from tqdm.auto import tqdm  # deferred: only a verbose run watched on a terminal needs it

            tqdm.write(line, file=self._stream)
        else:
            print(line, file=self._stream, flush=True)
