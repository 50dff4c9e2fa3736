"""A listing read on a thread of its own while the run does other work, taken later by whoever needs it.

A first sync spends seconds waiting for a source's rate limit (Cal.com's bookings: some twenty pages at 100 a
minute) while Stripe could be working; reading ahead lets that wait overlap the work before it. What is read is
kept in order, so every reader gets the same items from the first, as they arrive; an error the listing met is
raised to each reader where the listing stopped, as if it had read the listing itself. Stopping a listing ends its
pauses too (a rate limit's, a wait before retrying): the run that stops it does not wait them out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from clinicsync.retry import CancelToken, stopped_by

T = TypeVar("T")

POLL_S = 0.05  # how often a waiting reader checks whether it was cancelled


class ReadAhead(Generic[T]):
    """`listing` read on a daemon thread from now. `check` (e.g. a cancel token's `raise_if_cancelled`) is called
    by the thread between items and by a waiting reader: what it raises stops the listing, and reaches readers.
    Every CancelToken sleep on the thread (its client's pauses, when the client sleeps with the run's token) ends
    when the listing is stopped."""

    def __init__(self, listing: Callable[[], Iterable[T]], *, name: str, check: Callable[[], None] = lambda: None):
        self._listing: Callable[[], Iterable[T]] | None = listing
        self._check = check
        self._items: list[T] = []
        self._done = False
        self._error: BaseException | None = None
        self._stopped = False
        self._halt = CancelToken()  # cancelled by `stop`: wakes the thread from any pause (retry.stopped_by)
        self._after: list[Callable[[], None]] = []  # called by the thread once it has ended (`then`)
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, name=f"read-ahead {name}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._listing is not None
        try:
            with stopped_by(self._halt):
                for item in self._listing():
                    with self._changed:
                        if self._stopped:
                            return
                        self._items.append(item)
                        self._changed.notify_all()
                    self._check()
        except BaseException as exc:  # handed to the readers, who would have met it reading themselves
            with self._changed:
                if not self._stopped:  # a pause the stop ended: the listing's own doing, no error of it
                    self._error = exc
        finally:
            self._listing = None  # what it read from (a client, a gateway) is not kept alive by what it read
            with self._changed:
                self._done = True
                self._changed.notify_all()
                after, self._after = self._after, []
            for callback in after:
                callback()

    @property
    def complete(self) -> bool:
        """Whether the listing was read to its end without an error."""
        with self._changed:
            return self._done and self._error is None and not self._stopped

    def __iter__(self) -> Iterator[T]:
        index = 0
        while True:
            with self._changed:
                if index >= len(self._items) and not self._done:
                    self._changed.wait(POLL_S)
                ready = index < len(self._items)
                if ready:
                    item = self._items[index]
                elif self._done:
                    if self._error is not None:
                        raise self._error
                    if self._stopped:
                        raise RuntimeError("the listing read ahead was stopped before its end")
                    return
            if not ready:
                self._check()  # a reader waiting for the next item still stops when the run is cancelled
                continue
            index += 1
            yield item

    @property
    def ended(self) -> bool:
        """Whether the listing has ended: read to its end, stopped by an error, or stopped."""
        with self._changed:
            return self._done

    @property
    def error(self) -> BaseException | None:
        """What stopped the listing before its end (handed to its readers), if anything did."""
        with self._changed:
            return self._error

    @property
    def stopped(self) -> bool:
        with self._changed:
            return self._stopped

    def stop(self, timeout_s: float = 1.0) -> bool:
        """Stop reading (no request after the one in flight, no pause waited out), forget what was read (no reader
        takes a stopped listing) and wait up to `timeout_s` for the thread to end. Whether it has ended."""
        with self._changed:
            self._stopped = True
            self._items = []
            self._error = None  # its traceback holds the frames it read in, and they what it read from (a gateway)
            self._changed.notify_all()
        self._halt.cancel()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def then(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the thread has ended (now, if it has): e.g. close what it reads from, never under it."""
        with self._changed:
            if not self._done:
                self._after.append(callback)
                return
        callback()
