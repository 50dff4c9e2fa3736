"""clinicsync/readahead.py: a listing read on its own thread, taken whole and in order by every reader; its error
reaches each reader where the listing stopped; a cancelled run stops a reader that waits for it."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator

import pytest

from clinicsync.readahead import ReadAhead
from clinicsync.retry import Cancelled, CancelToken


def test_every_reader_gets_every_item_in_order_as_it_arrives() -> None:
    released = threading.Event()

    def listing() -> Iterator[int]:
        yield 1
        released.wait(10)  # the reader below takes the first item while the rest is not read yet
        yield from (2, 3)

    ahead = ReadAhead(listing, name="test")
    reader = iter(ahead)
    assert next(reader) == 1
    assert not ahead.complete
    released.set()
    assert list(reader) == [2, 3]
    assert list(ahead) == [1, 2, 3], "a second reader gets it all again, without a second read"
    assert ahead.complete


def test_the_listings_error_reaches_each_reader_after_what_was_read() -> None:
    def listing() -> Iterator[int]:
        yield 1
        raise ValueError("page 2 refused")

    ahead = ReadAhead(listing, name="test")
    for _ in range(2):
        got: list[int] = []
        with pytest.raises(ValueError, match="page 2 refused"):
            for item in ahead:
                got.append(item)
        assert got == [1]
    assert not ahead.complete


def test_a_cancelled_run_stops_a_reader_waiting_for_the_listing() -> None:
    token, never = CancelToken(), threading.Event()

    def listing() -> Iterator[int]:
        yield 1
        never.wait(10)  # a page that does not come

    ahead = ReadAhead(listing, name="test", check=lambda: token.sleep(0))
    reader = iter(ahead)
    assert next(reader) == 1
    token.cancel()
    with pytest.raises(Cancelled):
        next(reader)
    never.set()


def test_a_stopped_listing_is_never_taken_for_a_whole_one() -> None:
    gate = threading.Event()

    def listing() -> Iterator[int]:
        yield 1
        gate.wait(10)
        yield 2

    ahead = ReadAhead(listing, name="test")
    next(iter(ahead))
    gate.set()
    ahead.stop()
    assert not ahead.complete
    with pytest.raises(RuntimeError):  # a reader is told, never handed what was read as if it were all
        list(ahead)


def test_stopping_lets_go_of_what_was_read_and_then_runs_once_the_thread_has_ended() -> None:
    gate, ended = threading.Event(), threading.Event()

    def listing() -> Iterator[int]:
        yield 1
        gate.wait(10)  # a request in flight when the run stops
        yield 2

    ahead = ReadAhead(listing, name="test")
    assert next(iter(ahead)) == 1
    assert not ahead.stop(0), "the thread is still in its request"
    ahead.then(ended.set)
    assert not ended.is_set(), "nothing is closed under the request"
    gate.set()
    assert ended.wait(10)
    assert ahead.stopped and ahead.error is None
    with pytest.raises(RuntimeError):
        list(ahead)
    called: list[bool] = []
    ahead.then(lambda: called.append(True))
    assert called == [True], "once ended, at once"


def test_a_stopped_listing_that_failed_lets_go_of_what_it_read_from() -> None:
    """The error's traceback holds the listing's frames, and they the gateway it read from: a stopped listing that
    kept its error kept a finished run's gateway (and its listing) for as long as the listing was referred to."""

    class Gateway:
        def pages(self) -> Iterator[int]:
            yield 1
            raise OSError("Stripe is unreachable")

    gateway = Gateway()
    freed = weakref.ref(gateway)
    ahead = ReadAhead(gateway.pages, name="test")
    del gateway
    assert ahead.stop(10) and ahead.error is None
    gc.collect()
    assert freed() is None, "the stopped listing still holds what it read from"


def test_stopping_ends_a_pause_of_the_listing_on_its_thread_alone() -> None:
    """A listing waiting out a long pause (a rate limit's, with its client sleeping on the run's token, as in a sync)
    ends as soon as it is stopped: the run that stops it does not wait the pause out. The run's token is not
    cancelled by it: the same client's waits on the run's own thread go on. Shown by the pause being cut short (the
    sleep raised), not by the time it took; stop's wait is only a bound for a run that does wait it out."""
    run, pausing, cut = CancelToken(), threading.Event(), []

    def listing() -> Iterator[int]:
        yield 1
        pausing.set()
        try:
            run.sleep(60)  # e.g. Cal.com's block of a key that went over its limit
        except Cancelled:
            cut.append(threading.current_thread().name)
            raise
        yield 2

    ahead = ReadAhead(listing, name="test", check=lambda: run.sleep(0))
    assert next(iter(ahead)) == 1 and pausing.wait(10)
    assert ahead.stop(5), "the thread ended"
    assert cut == ["read-ahead test"], "its pause was cut short"
    assert ahead.error is None, "the stop's own doing, not an error of the listing"
    assert not run.cancelled
    run.sleep(0)  # a wait on another thread is not stopped by it
