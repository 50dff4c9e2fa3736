"""Client-side request budgets, so ClinicSync stays under an API's rate limit instead of bouncing off it.

Cliniko allows 200 requests a minute per user and Stripe a number per second per account; going over costs a
429 and, for Cliniko, possibly a block for "unfair use". One RequestBudget is shared by every thread (and
every client) that spends the same allowance, and a 429 pauses all of them at once via `pause_until`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from clinicsync.rate_limits import window_burst

Clock = Callable[[], float]
Sleep = Callable[[float], object]

_EPSILON = 1e-9
_MIN_WAIT_S = 1e-6


class RequestBudget:
    """A thread-safe token bucket: `limit` requests per `per_seconds`, with a small burst.

    Build it as `RequestBudget(150)` (150 a minute) or `RequestBudget(limit=25, per_seconds=1)`.
    `None` or 0 means unlimited (pauses from `pause_until` still apply). The bucket starts full and holds
    `burst` tokens (default `rate_limits.window_burst(limit)`, a tenth), so over any window of `per_seconds` up to
    `limit + burst` requests can go out: keep `limit` a little under the server's own limit.
    """

    def __init__(
        self,
        requests_per_minute: float | None = None,
        *,
        limit: float | None = None,
        per_seconds: float = 60.0,
        burst: int | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
        wall_clock: Clock = time.time,
    ) -> None:
        if requests_per_minute is not None and limit is not None:
            raise ValueError("give either requests_per_minute or limit/per_seconds, not both")
        if requests_per_minute is not None:
            if per_seconds != 60.0:
                raise ValueError("requests_per_minute is per 60 seconds; use limit= with per_seconds=")
            limit = requests_per_minute
        if per_seconds <= 0:
            raise ValueError("per_seconds must be positive")
        if limit is not None and limit < 0:
            raise ValueError("the request limit must not be negative")
        self._clock = clock
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self.limit = float(limit) if limit else None
        self.per_seconds = float(per_seconds)
        if self.limit is None:
            self._rate = math.inf
            self.capacity = math.inf
        else:
            self._rate = self.limit / self.per_seconds
            self.capacity = float(burst) if burst is not None else float(window_burst(self.limit))
            if self.capacity < 1:
                raise ValueError("burst must be at least 1")
        self._tokens = self.capacity
        self._updated = clock()
        self._paused_until = -math.inf  # on the monotonic clock

    @property
    def unlimited(self) -> bool:
        return self.limit is None

    def acquire(self) -> None:
        """Block until one request may be sent, then spend it.

        Waiting threads re-check after every sleep, so a pause set meanwhile holds them back too.
        """
        while True:
            wait = self._try_take()
            if wait <= 0:
                return
            self._sleep(wait)

    def _try_take(self) -> float:
        """Take a token and return 0, or return how long to wait before trying again."""
        with self._lock:
            now = self._clock()
            if now < self._paused_until:
                return max(self._paused_until - now, _MIN_WAIT_S)
            if self._rate == math.inf:
                return 0.0
            self._refill(now)
            if self._tokens >= 1.0 - _EPSILON:  # tolerate float drift, or a waiter could spin forever
                self._tokens = max(0.0, self._tokens - 1.0)
                return 0.0
            return max((1.0 - self._tokens) / self._rate, _MIN_WAIT_S)

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self.capacity, self._tokens + elapsed * self._rate)
        self._updated = now

    def pause_for(self, seconds: float) -> None:
        """Hold every user of this budget back for `seconds` from now (a pause never shortens another)."""
        if seconds <= 0:
            return
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    def pause_until(self, epoch_seconds: float) -> None:
        """Hold every user back until a wall-clock time (UNIX seconds), e.g. Cliniko's X-RateLimit-Reset."""
        self.pause_for(epoch_seconds - self._wall_clock())

    def paused_for(self) -> float:
        """Seconds until the current pause ends (0 when not paused); for status displays."""
        with self._lock:
            return max(0.0, self._paused_until - self._clock())
