"""Concurrent Stripe writes, at most one in flight per record, with back-pressure.

Different records go out in parallel under one shared rate budget (the gateway's); writes for the same record
are kept in order by waiting for the earlier one. `workers=0` runs each write inline on the caller's thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

QUEUED_PER_WORKER = 256  # 3,072 for 12 workers: half a minute of writes at Stripe's live budget


class WritePool:
    def __init__(
        self, workers: int, *, max_in_flight: int | None = None, stopped: Callable[[], bool] | None = None
    ) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stripe-write") if workers else None
        self._workers = workers
        # Up to QUEUED_PER_WORKER writes a worker queued ahead. The reading thread stops now and then (an index
        # top-up lists several pages, up to a second or two), and 2 a worker (24 writes, a quarter of a second at
        # 90/s) ran out long before it came back. A matcher may also decide thousands of records at once (the
        # invoices waiting for the live pass to end): the reading thread must go on reading meanwhile, not wait
        # for Stripe to take them. A queued write is its outbox rows, stored already: a stop leaves them pending.
        self._slots = threading.BoundedSemaphore(max_in_flight or max(1, workers) * QUEUED_PER_WORKER)
        self._in_flight: dict[str, Future[None]] = {}
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        # A stop (a cancel, the service told to quit) leaves the queued writes unsent: with hundreds queued, sending
        # them first would make a stop wait for all of them. Their outbox rows stay pending for the next run.
        self._stopped = stopped or (lambda: False)

    def submit(self, key: str, work: Callable[[], None]) -> None:
        """Run `work` for record `key` after any earlier write for that record. Raises a failed write's error."""
        self.wait_for(key)
        self._raise_if_failed()
        if self._executor is None:
            work()
            return
        self._slots.acquire()
        future = self._executor.submit(self._unless_failed, work)
        with self._lock:
            self._in_flight[key] = future
        future.add_done_callback(lambda done, key=key: self._finished(key, done))

    def starving(self) -> bool:
        """Fewer writes in flight than half the workers: more work should be handed over now, not batched."""
        with self._lock:
            return len(self._in_flight) < max(1, self._workers // 2)

    def queued(self) -> int:
        """Writes submitted and not finished (running or waiting for a worker)."""
        with self._lock:
            return len(self._in_flight)

    def wait_for(self, key: str) -> None:
        with self._lock:
            future = self._in_flight.get(key)
        if future is not None:
            future.exception()  # waits; the error itself is kept by _finished

    def drain(self) -> None:
        """Wait for every write in flight, then raise the first error any of them hit."""
        while True:
            with self._lock:
                pending = list(self._in_flight.values())
            if not pending:
                break
            for future in pending:
                future.exception()
        self._raise_if_failed()

    def close(self) -> None:
        """Wait for the writes under way. After a drain nothing is queued; after a stop (an error, a cancel) the
        writes not started yet are not sent: their outbox rows stay pending for the next run."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def _unless_failed(self, work: Callable[[], None]) -> None:
        """A write queued behind one that failed, or still queued when the run was stopped, is not sent: the run
        stops, and its outbox rows stay pending for the next run (with writes queued ahead, sending them could mean
        dozens of retries against an outage, or a stop waiting for hundreds of writes)."""
        with self._lock:
            failed = self._error is not None
        if not failed and not self._stopped():
            work()

    def _finished(self, key: str, future: Future[None]) -> None:
        with self._lock:
            if self._in_flight.get(key) is future:
                del self._in_flight[key]
            error = None if future.cancelled() else future.exception()
            if error is not None and self._error is None:
                self._error = error
        self._slots.release()

    def _raise_if_failed(self) -> None:
        with self._lock:
            error = self._error
        if error is not None:
            raise error
