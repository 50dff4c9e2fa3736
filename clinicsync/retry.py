"""The app's one retry/backoff policy, used by the source clients and the Stripe writer.

Transient failures (429, 5xx, timeouts, resets) are retried with capped exponential backoff and jitter, so
many clients recovering from the same outage do not retry in lockstep. A server's own hint (Retry-After, or
the time until Cliniko's X-RateLimit-Reset) is honoured as a minimum: retrying before it is pointless.
What counts as transient is decided by the caller's `classify` function, not here.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

_DEFAULT_RNG = random.Random()


class Cancelled(Exception):
    """The work was cancelled (e.g. the user pressed Pause or quit) while waiting to retry."""

    def __init__(self, message: str = "The sync was cancelled.") -> None:
        super().__init__(message)


@dataclass(frozen=True)
class RetryDecision:
    """What `classify` says about one failure: retry it or not, and the server's wait hint in seconds."""

    retry: bool
    hint_s: float | None = None


PERMANENT = RetryDecision(retry=False)


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter.

    attempt n (1-based, the attempt that just failed) has a ceiling of `base_delay_s * 2**(n-1)`, capped at
    `max_delay_s`; the delay is drawn uniformly from `[ceiling * (1 - jitter), ceiling]` (jitter=1 is "full
    jitter", jitter=0 is plain exponential backoff). A server hint raises the delay to at least the hint; hints
    are trusted up to `max_hint_s`, so a garbage header cannot park a sync for hours.
    `max_attempts` counts every try, including the first.
    """

    max_attempts: int = 6
    base_delay_s: float = 0.5
    max_delay_s: float = 60.0
    jitter: float = 0.5
    max_hint_s: float = 300.0
    rng: random.Random | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay_s < 0 or self.max_delay_s < self.base_delay_s:
            raise ValueError("need 0 <= base_delay_s <= max_delay_s")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("jitter must be between 0 and 1")
        if self.max_hint_s < 0:
            raise ValueError("max_hint_s must not be negative")

    def delay_for(self, attempt: int, server_hint_s: float | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        exponent = min(max(attempt, 1) - 1, 62)  # 2**62 seconds is already far past any cap
        ceiling = min(self.max_delay_s, self.base_delay_s * (2.0**exponent))
        rng = self.rng or _DEFAULT_RNG
        delay = ceiling * (1.0 - self.jitter * rng.random())
        if server_hint_s is not None and server_hint_s > 0:
            delay = max(delay, min(server_hint_s, self.max_hint_s))
        return delay


class CancelToken:
    """A cancellable sleep: pass `token.sleep` as the `sleep` of call_with_retries or a RequestBudget.

    A thread that works for someone who may stop it (a listing read ahead: readahead.py) names its own token with
    `stopped_by`; every CancelToken's sleep on that thread then also ends as soon as that token is cancelled, so a
    client shared with the run (its sleep the run's token's) stops pausing on that thread alone."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._woken: set[threading.Event] = set()  # sleeps that wait on this token and a thread's own

    def cancel(self) -> None:
        self._event.set()
        with self._lock:
            woken = list(self._woken)
        for event in woken:
            event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled()

    def sleep(self, seconds: float) -> None:
        """Wait `seconds`, or raise Cancelled as soon as the token is cancelled (or this thread's own, `stopped_by`)."""
        own = getattr(_this_thread, "stop", None)
        if own is None or own is self:
            if self._event.wait(max(0.0, seconds)):
                raise Cancelled()
            return
        woken = threading.Event()
        with self._waking(woken), own._waking(woken):
            if woken.wait(max(0.0, seconds)):
                raise Cancelled()

    @contextmanager
    def _waking(self, event: threading.Event) -> Iterator[None]:
        """`event` is set when this token is cancelled (now, if it is), until the block ends."""
        with self._lock:
            self._woken.add(event)
        if self._event.is_set():
            event.set()
        try:
            yield
        finally:
            with self._lock:
                self._woken.discard(event)


_this_thread = threading.local()


@contextmanager
def stopped_by(token: CancelToken) -> Iterator[None]:
    """Within the block, every CancelToken's sleep on this thread also ends (raising Cancelled) as soon as `token` is
    cancelled: the thread's work stops when its owner stops it, whatever client it is pausing in."""
    previous = getattr(_this_thread, "stop", None)
    _this_thread.stop = token
    try:
        yield
    finally:
        _this_thread.stop = previous


OnRetry = Callable[[int, BaseException, float], None]


def call_with_retries(
    fn: Callable[[], T],
    *,
    policy: RetryPolicy,
    classify: Callable[[BaseException], RetryDecision],
    sleep: Callable[[float], object] = time.sleep,
    on_retry: OnRetry | None = None,
) -> T:
    """Call `fn` until it succeeds, retrying failures that `classify` calls transient.

    Re-raises the last error unchanged when it is permanent or the attempts run out. `on_retry(attempt,
    error, delay_s)` is called before each wait (for logging and progress). Cancelled is never retried.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Cancelled:
            raise
        except Exception as exc:
            decision = classify(exc)
            if not decision.retry or attempt >= policy.max_attempts:
                raise
            delay = policy.delay_for(attempt, decision.hint_s)
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            else:
                log.debug("attempt %d failed (%s); retrying in %.2f s", attempt, type(exc).__name__, delay)
            sleep(delay)
