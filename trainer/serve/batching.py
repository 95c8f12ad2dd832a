"""Dynamic batching: one worker thread per model, draining a queue of requests.

The per-call overhead of a forward pass (Python, tokenizer, kernel launches, thread wake-ups,
small matrix shapes) is paid per pass, not per text. So a worker takes the first waiting request, then whatever else arrives within `max_wait_s`, up to
`max_items` texts, and runs them as one pass; each request's future gets its own rows back.
While a pass runs, new requests queue up and form the next batch, so under load batches grow by
themselves and the wait rarely adds latency.

The event loop never runs a model: request handlers submit and `await` the future, so /health,
/metrics and the other models' endpoints keep answering. Generation gets a worker of its own
(max_items 1), so a long /chat never holds up /embed or /classify.

A pass that raises fails no request by itself: its requests are run again one at a time, so
only the one whose input breaks the model fails (inputs are checked before they are submitted;
this is the net under that check).

`stop()` queues a sentinel behind everything already submitted: requests accepted before a
SIGTERM are still answered, then the thread ends.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("trainer.serve")

_STOP = object()


@dataclass
class _Job:
    payload: Any
    size: int
    future: concurrent.futures.Future


class Batcher:
    """`submit(payload, size)` -> a Future of `fn([...payloads])[i]` for this payload.

    `fn` takes the payloads of one batch and returns one result per payload, in order; a result
    that is an Exception instance fails only that payload's future. An exception raised by `fn`
    for a batch of several payloads reruns each payload alone, so it fails only the payloads that
    raise again (logged with its traceback); the worker carries on.
    """

    def __init__(self, name: str, fn: Callable[[list[Any]], Sequence[Any]], *, max_items: int, max_wait_s: float, workers: int = 1,
                 on_batch: Callable[[int, int, float], None] | None = None):
        if max_items < 1 or max_wait_s < 0 or workers < 1:
            raise ValueError("max_items and workers must be >= 1, max_wait_s >= 0")
        self.name, self.fn = name, fn
        self.max_items, self.max_wait_s = max_items, max_wait_s
        self.on_batch = on_batch  # (requests, items, seconds) of each pass: metrics
        self._queue: queue.Queue = queue.Queue()
        # several workers drain one queue: on a CPU, passes side by side on one core each beat one
        # pass split over every core (no thread barrier per operation)
        self._threads = [threading.Thread(target=self._run, name=f"batch-{name}-{i}", daemon=True) for i in range(workers)]
        self._stopping = False
        self._count = threading.Lock()
        self.passes = 0  # forward passes run so far
        self.in_flight = 0  # payloads in the passes running now
        self.pending = 0  # submitted and not yet answered (waiting, batching or running)
        self.isolated = 0  # failed passes of several requests, rerun one request at a time

    def start(self) -> Batcher:
        for t in self._threads:
            t.start()
        return self

    def submit(self, payload: Any, size: int = 1) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        if self._stopping:
            fut.set_exception(RuntimeError(f"the {self.name} worker is shutting down"))
            return fut
        with self._count:
            self.pending += 1
        fut.add_done_callback(self._answered)
        self._queue.put(_Job(payload, max(1, size), fut))
        return fut

    def _answered(self, fut: concurrent.futures.Future) -> None:
        with self._count:
            self.pending -= 1

    def depth(self) -> int:
        return self._queue.qsize()

    def stop(self, *, timeout: float | None = None) -> None:
        """Answer everything already queued, then end the worker thread."""
        self._stopping = True
        for _ in self._threads:
            self._queue.put(_STOP)
        for t in self._threads:
            if t.is_alive():
                t.join(timeout)

    def _collect(self, first: _Job) -> tuple[list[_Job], bool, _Job | None]:
        batch, n, stop, carry = [first], first.size, False, None
        deadline = time.monotonic() + self.max_wait_s
        while n < self.max_items:
            try:  # whatever is already waiting joins at once; then wait out the window
                job = self._queue.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    job = self._queue.get(timeout=left)
                except queue.Empty:
                    break
            if job is _STOP:
                stop = True
                break
            if n + job.size > self.max_items:
                carry = job  # would overflow this pass: it opens this worker's next one
                break
            batch.append(job)
            n += job.size
        return batch, stop, carry

    def _run(self) -> None:
        carry: _Job | None = None
        while True:
            first, carry = (carry or self._queue.get()), None
            if first is _STOP:
                return
            batch, stop, carry = self._collect(first)
            live = [j for j in batch if j.future.set_running_or_notify_cancel()]
            if live:
                self._pass(live)
            if stop:  # a sentinel, never with a carried job: everything queued before it is answered
                return

    def _pass(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        with self._count:
            self.in_flight += len(jobs)
        t0 = time.perf_counter()
        try:
            results = list(self.fn([j.payload for j in jobs]))
            if len(results) != len(jobs):
                raise RuntimeError(f"{self.name}: {len(results)} results for {len(jobs)} requests")
        except Exception as e:  # the worker must outlive one bad batch
            failed: Exception | None = e
        else:
            failed = None
        finally:
            with self._count:
                self.passes += 1
                self.in_flight -= len(jobs)
        if failed is not None:
            if len(jobs) > 1:  # one request's input may have broken the pass: the others must not pay for it
                log.warning("%s: a pass of %d requests failed (%s); running each alone", self.name, len(jobs), type(failed).__name__)
                self.isolated += 1
                for j in jobs:
                    self._pass([j])
                return
            log.error("%s: a request failed", self.name, exc_info=failed)
            jobs[0].future.set_exception(failed)
            return
        if self.on_batch is not None:
            self.on_batch(len(jobs), sum(j.size for j in jobs), time.perf_counter() - t0)
        for j, r in zip(jobs, results):
            if isinstance(r, Exception):
                j.future.set_exception(r)
            else:
                j.future.set_result(r)
