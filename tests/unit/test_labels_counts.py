"""A run's counters in words (clinicsync.labels): a record held back because an earlier change to it is still
queued for Stripe is "waiting for an earlier change to reach Stripe" in every stream, on the command line, in the
window and in the plan, and never what a stream calls the records it skipped ("not paid through Stripe")."""

from __future__ import annotations

import pytest

from clinicsync import labels
from clinicsync.outcomes import ACTIONS, Action

STREAMS = tuple(labels.STREAM_TITLES)


def test_waiting_is_a_counter_of_every_run() -> None:
    assert Action.WAITING in ACTIONS and Action.SKIPPED in ACTIONS


@pytest.mark.parametrize("stream", STREAMS)
def test_a_held_back_record_is_waiting_in_every_stream_never_not_paid(stream: str) -> None:
    for gui in (False, True):
        assert labels.count_name("waiting", stream, gui=gui) == labels.WAITING_FOR_EARLIER_CHANGE
    assert labels.plan_action_label("waiting", "payment_intent", stream) == (
        "Waiting for an earlier change to reach Stripe (checked again once it has)"
    )
    words = labels.counts_words({"linked": 2, "skipped": 0, "waiting": 1}, stream)
    assert words.endswith(", 1 waiting for an earlier change to reach Stripe"), words
    assert labels.NOT_PAID_THROUGH_STRIPE not in labels.count_name("waiting", stream)


def test_invoices_skipped_are_still_not_paid_through_stripe() -> None:
    counts = {"linked": 4, "skipped": 3, "waiting": 2}
    assert labels.counts_words(counts, "cliniko.invoices") == (
        "4 linked, 3 not paid through Stripe, 2 waiting for an earlier change to reach Stripe"
    )
    assert labels.count_name("skipped", "calcom.booking_payments") == "skipped"
