"""The sandbox server's rate limiter: fixed windows, and the block a bucket gets for going over (Cal.com's 60 s)."""

from __future__ import annotations

import pytest

from clinicsync.sandbox.http import RateLimit
from clinicsync.sandbox.server import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_a_window_refuses_until_it_turns():
    clock = Clock()
    limiter = RateLimiter(clock)
    bucket = RateLimit("k", limit=2, per_seconds=10)
    first, second = limiter.check(bucket), limiter.check(bucket)
    assert (first.admitted, first.remaining, first.reset_epoch) == (True, 1, 1010.0)
    assert (second.admitted, second.remaining) == (True, 0)
    refused = limiter.check(bucket)
    assert not refused.admitted and refused.reset_epoch == 1011.0  # whole seconds, rounded up
    clock.now = 1010.0
    assert limiter.check(bucket).admitted
    assert limiter.admit("other", 1, 10) is None and limiter.admit("other", 1, 10) == 1021.0


def test_going_over_blocks_the_bucket_for_the_block_duration():
    clock = Clock()
    limiter = RateLimiter(clock)
    bucket = RateLimit("cal", limit=2, per_seconds=5, block_seconds=60)
    assert limiter.check(bucket).admitted and limiter.check(bucket).admitted
    refused = limiter.check(bucket)
    assert not refused.admitted and refused.reset_epoch == pytest.approx(1060.0)
    clock.now = 1030.0  # the window has turned, but the block has not ended
    still = limiter.check(bucket)
    assert not still.admitted and still.reset_epoch == pytest.approx(1060.0)  # refusals do not extend it
    clock.now = 1060.0  # the block's end starts a fresh window
    admitted = limiter.check(bucket)
    assert admitted.admitted and admitted.remaining == 1 and admitted.reset_epoch == pytest.approx(1065.0)
