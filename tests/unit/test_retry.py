"""RetryPolicy and call_with_retries: backoff shape, server hints, caps, and when errors are re-raised."""

from __future__ import annotations

import random
import threading
import time

import pytest

from clinicsync.retry import (
    PERMANENT,
    Cancelled,
    CancelToken,
    RetryDecision,
    RetryPolicy,
    call_with_retries,
)


class Transient(Exception):
    pass


class Permanent(Exception):
    pass


def classify(exc: BaseException) -> RetryDecision:
    if isinstance(exc, Transient):
        return RetryDecision(retry=True, hint_s=getattr(exc, "hint", None))
    return PERMANENT


def failing_then(result, failures: list[BaseException]):
    calls = []

    def fn():
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return result

    return fn, calls


def test_delays_grow_exponentially_without_jitter():
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=60, jitter=0)
    assert [policy.delay_for(n, None) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]


def test_delay_is_capped_at_max_delay():
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=3.0, jitter=0)
    assert policy.delay_for(10, None) == 3.0
    assert policy.delay_for(10_000, None) == 3.0  # huge attempt numbers do not overflow


def test_jitter_stays_within_its_band_and_uses_the_injected_rng():
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=100, jitter=0.5, rng=random.Random(7))
    delays = [policy.delay_for(3, None) for _ in range(200)]  # ceiling 4 s
    assert all(2.0 <= d <= 4.0 for d in delays)
    assert len(set(delays)) > 100  # actually jittered
    again = RetryPolicy(base_delay_s=1.0, max_delay_s=100, jitter=0.5, rng=random.Random(7))
    assert [again.delay_for(3, None) for _ in range(200)] == delays


def test_full_jitter_can_go_near_zero():
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=100, jitter=1.0, rng=random.Random(1))
    assert min(policy.delay_for(1, None) for _ in range(500)) < 0.05


def test_server_hint_is_a_minimum():
    policy = RetryPolicy(base_delay_s=0.001, max_delay_s=0.01)
    assert policy.delay_for(1, 7.5) >= 7.5
    # A hint shorter than the backoff does not shorten it.
    slow = RetryPolicy(base_delay_s=10, max_delay_s=60, jitter=0)
    assert slow.delay_for(1, 0.2) == 10


def test_hint_is_trusted_only_up_to_max_hint():
    policy = RetryPolicy(base_delay_s=0.001, max_delay_s=0.01, max_hint_s=120)
    assert policy.delay_for(1, 86_400) == 120


def test_tiny_delays_are_allowed_for_tests():
    policy = RetryPolicy(base_delay_s=0.001, max_delay_s=0.002)
    assert policy.delay_for(1, None) <= 0.001


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 0}, {"base_delay_s": -1}, {"base_delay_s": 5, "max_delay_s": 1}, {"jitter": 1.5}],
)
def test_nonsense_policies_are_refused(kwargs):
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_retries_transient_errors_then_returns():
    fn, calls = failing_then("ok", [Transient(), Transient()])
    sleeps: list[float] = []
    seen: list[tuple[int, str]] = []
    result = call_with_retries(
        fn,
        policy=RetryPolicy(base_delay_s=0.001, max_delay_s=0.01),
        classify=classify,
        sleep=sleeps.append,
        on_retry=lambda attempt, exc, delay: seen.append((attempt, type(exc).__name__)),
    )
    assert result == "ok"
    assert len(calls) == 3
    assert len(sleeps) == 2
    assert seen == [(1, "Transient"), (2, "Transient")]


def test_permanent_error_is_raised_at_once():
    error = Permanent("no")
    fn, calls = failing_then("ok", [error])
    sleeps: list[float] = []
    with pytest.raises(Permanent) as raised:
        call_with_retries(fn, policy=RetryPolicy(base_delay_s=0.001), classify=classify, sleep=sleeps.append)
    assert raised.value is error
    assert len(calls) == 1 and sleeps == []


def test_last_error_is_reraised_when_attempts_run_out():
    errors = [Transient(str(n)) for n in range(10)]
    fn, calls = failing_then("ok", list(errors))
    with pytest.raises(Transient) as raised:
        call_with_retries(
            fn, policy=RetryPolicy(max_attempts=4, base_delay_s=0.001), classify=classify, sleep=lambda s: None
        )
    assert len(calls) == 4
    assert raised.value is errors[3]


def test_hint_from_classify_reaches_the_sleep():
    error = Transient()
    error.hint = 2.5
    fn, _ = failing_then("ok", [error])
    sleeps: list[float] = []
    call_with_retries(fn, policy=RetryPolicy(base_delay_s=0.001), classify=classify, sleep=sleeps.append)
    assert len(sleeps) == 1 and sleeps[0] >= 2.5


def test_cancel_token_stops_a_retry_wait():
    token = CancelToken()
    token.cancel()
    fn, calls = failing_then("ok", [Transient()])
    with pytest.raises(Cancelled):
        call_with_retries(fn, policy=RetryPolicy(base_delay_s=0.001), classify=classify, sleep=token.sleep)
    assert len(calls) == 1


def test_cancel_token_wakes_a_sleeper_early():
    token = CancelToken()
    threading.Timer(0.05, token.cancel).start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        token.sleep(10)
    assert time.monotonic() - started < 5


def test_cancelled_raised_by_fn_is_not_retried():
    calls = []

    def fn():
        calls.append(1)
        raise Cancelled()

    with pytest.raises(Cancelled):
        call_with_retries(fn, policy=RetryPolicy(), classify=lambda e: RetryDecision(True), sleep=lambda s: None)
    assert len(calls) == 1
