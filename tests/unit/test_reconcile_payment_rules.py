"""The payment streams' and the notes stream's reconciliation declarations, judged by the shared rules (pure: no
database, no network): what each reports, in which words, with which fixes, and what it leaves to other streams."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from clinicsync.mapping.apply import map_record
from clinicsync.mapping.defaults import CALCOM_BOOKING_PAYMENTS as BOOKING_MAPPING
from clinicsync.mapping.defaults import CALCOM_REFERENCE as NOTES_MAPPING
from clinicsync.mapping.defaults import CLINIKO_INVOICES as INVOICE_MAPPING
from clinicsync.reconcile.findings import Finding, FindingType, FixKind, Reason, Severity
from clinicsync.reconcile.judge import Decision, SourceSide, StripeSide, judge_record
from clinicsync.streams import CALCOM_BOOKING_PAYMENTS, CALCOM_REFERENCE, CLINIKO_INVOICES, StreamSettings
from clinicsync.streams.payment_side import payments_of_charges

SETTINGS = StreamSettings(time_zone="Australia/Sydney", currency="aud")
INVOICE = {"id": "7001", "number": 5001, "status": 20, "total_amount": "95.50", "issue_date": "2026-03-02"}


def noon(day: str) -> int:
    return int(datetime.fromisoformat(f"{day}T01:00:00").replace(tzinfo=UTC).timestamp())  # 12:00 in Sydney


def payment(pid: str = "pi_A", **changes: Any) -> dict[str, Any]:
    metadata = {"cliniko_invoice_id": "7001", "cliniko_invoice_number": "5001", "cliniko_invoice_status": "paid"}
    base = {"id": pid, "object": "payment_intent", "amount": 9550, "currency": "aud", "status": "succeeded"}
    return {**base, "created": noon("2026-03-03"), "amount_refunded": 0, "refunded": False, "metadata": metadata} | (
        changes
    )


def judge_invoice(
    record: dict[str, Any], *objects: dict[str, Any], candidates: tuple[str, ...] = (), **values: Any
) -> list[Finding]:
    comparison = CLINIKO_INVOICES.compare
    assert comparison is not None and comparison.facts is not None
    mapped = map_record(INVOICE_MAPPING, record, archived_value=CLINIKO_INVOICES.archived_value(record))
    assert CLINIKO_INVOICES.enrich is not None
    CLINIKO_INVOICES.enrich(mapped, record, SETTINGS)
    source = SourceSide(record["id"], mapped, facts=comparison.facts(record, SETTINGS), **values)
    return judge_record(comparison, INVOICE_MAPPING, source, StripeSide(objects, candidates=candidates))


def kinds(findings: list[Finding]) -> list[tuple[str, str, str | None, str]]:
    return [(f.type.value, f.reason.value, f.stripe_id, f.field) for f in findings]


def test_a_paid_invoice_and_its_linked_payment_that_agree_are_not_reported():
    assert judge_invoice(INVOICE, payment(), linked_id="pi_A") == []


@pytest.mark.parametrize(
    ("record", "reported"),
    [
        (INVOICE, True),
        ({**INVOICE, "status": 40}, True),  # open credit: paid beyond its total
        ({**INVOICE, "status": 10}, False),  # open: nothing owed yet
        ({**INVOICE, "status": 30}, False),  # closed unpaid
        ({**INVOICE, "total_amount": "0.00"}, False),
        ({**INVOICE, "deleted_at": "2026-03-04T00:00:00Z"}, False),
    ],
)
def test_only_a_paid_invoice_with_no_payment_linked_is_a_payment_mismatch(record, reported):
    findings = judge_invoice(record)
    assert kinds(findings) == ([("payment_mismatch", "no_payment", None, "")] if reported else [])
    if reported:
        (finding,) = findings
        assert finding.suggested_fix == FixKind.REPUSH and FixKind.MARK_INTENDED in finding.fixes
        assert "Invoice 5001 (7001)" in finding.explanation and "95.50 AUD" in finding.explanation


def test_a_payment_naming_the_invoice_but_not_linked_is_not_its_payment_yet():
    findings = judge_invoice(INVOICE, payment(), decision=Decision.REVIEW)
    assert kinds(findings) == [("payment_mismatch", "no_payment", None, "")]
    assert "waits in Review" in findings[0].explanation


def test_a_paid_invoice_waiting_in_review_offers_its_candidates_to_link():
    (one,) = judge_invoice(INVOICE, decision=Decision.REVIEW, candidates=("pi_A",))
    assert one.fixes == (FixKind.LINK, FixKind.REPUSH, FixKind.MARK_INTENDED) and one.related == ("pi_A",)
    assert "Candidates: pi_A." in one.explanation
    (two,) = judge_invoice(INVOICE, decision=Decision.REVIEW, candidates=("pi_A", "pi_B"))
    assert two.suggested_fix == FixKind.REPUSH and two.fixes[1] == FixKind.LINK, "a person chooses which"
    assert one.fingerprint == two.fingerprint, "a mark as intended holds whatever Review offers"


@pytest.mark.parametrize(
    ("changes", "field", "expected", "actual", "suggested"),
    [
        ({"status": "requires_payment_method"}, "status", "succeeded", "requires_payment_method", FixKind.REPUSH),
        ({"refunded": True, "amount_refunded": 9550}, "amount_refunded", None, "95.50 AUD", FixKind.CORRECT_SOURCE),
        ({"amount": 10050}, "amount", "95.50 AUD", "100.50 AUD", FixKind.CORRECT_SOURCE),
        ({"created": noon("2026-02-20")}, "created", "2026-02-23 to 2026-04-01", "2026-02-20", FixKind.MARK_INTENDED),
    ],
)
def test_a_linked_payment_that_does_not_agree_names_the_field_and_both_values(
    changes, field, expected, actual, suggested
):
    (finding,) = judge_invoice(INVOICE, payment(**changes), linked_id="pi_A")
    assert kinds([finding]) == [("payment_mismatch", "payment_differs", "pi_A", field)]
    assert (finding.source_value, finding.stripe_value, finding.suggested_fix) == (expected, actual, suggested)
    assert finding.severity == (Severity.LOW if field == "created" else Severity.HIGH)


def test_an_unpaid_invoice_linked_to_a_payment_compares_only_the_metadata():
    findings = judge_invoice({**INVOICE, "status": 10}, payment(refunded=True, amount=1), linked_id="pi_A")
    assert kinds(findings) == [("field_drift", "value_changed", "pi_A", "metadata.cliniko_invoice_status")]


def test_payments_are_never_reported_orphaned_or_duplicated_by_the_invoices_stream():
    other = payment("pi_B")
    assert judge_invoice(INVOICE, payment(), other, linked_id="pi_A") == []
    comparison = CLINIKO_INVOICES.compare
    assert comparison is not None
    absent = SourceSide("7999", None)
    assert judge_record(comparison, INVOICE_MAPPING, absent, StripeSide((payment(metadata={"x": "1"}),))) == []


def test_a_payment_intent_is_one_payment_whatever_its_declined_attempts():
    intent = {"id": "pi_A", "status": "succeeded", "amount": 9550, "currency": "aud", "created": 5, "metadata": {}}
    charges = [
        {"id": "ch_2", "status": "succeeded", "amount_refunded": 100, "payment_intent": intent},
        {"id": "ch_1", "status": "failed", "amount_refunded": 0, "payment_intent": intent},
        {"id": "ch_3", "status": "succeeded", "amount": 500, "currency": "aud", "payment_intent": None},
    ]
    found = list(payments_of_charges(charges))
    assert [(p["id"], p["object"], p["charge"], p["refunded"]) for p in found] == [
        ("pi_A", "payment_intent", "ch_2", True),
        ("ch_3", "charge", "ch_3", False),
    ]


# --- Cal.com paid bookings -----------------------------------------------------------------------------------
CHAIN = {
    "id": 10001,
    "booking_id": "10001",
    "booking_uid": "uid1",
    "event_type": "Initial consultation",
    "start": "2026-03-04T00:00:00Z",
}


def chain(status: str = "accepted", option: str = "ON_BOOKING") -> dict[str, Any]:
    return {**CHAIN, "status": status, "owner_email": "owner@example.com", "payment_option": option}


def intent(status: str = "succeeded", **metadata: str) -> dict[str, Any]:
    base = {
        "bookingId": "10001",  # Cal.com's own key
        "calcom_booking_id": "10001",  # ClinicSync's cross-reference
        "calcom_booking_uid": "uid1",
        "calcom_event_type": "Initial consultation",
        "calcom_status": "accepted",
        "calcom_owner_email": "owner@example.com",
        "calcom_start_local": "2026-03-04T11:00+11:00",
    }
    return {"id": "pi_C", "status": status, "amount": 12000, "currency": "aud", "metadata": base | metadata}


def judge_booking(record: dict[str, Any], *objects: dict[str, Any], charges: tuple[Any, ...] = ()) -> list[Finding]:
    comparison = CALCOM_BOOKING_PAYMENTS.compare
    assert comparison is not None and comparison.facts is not None and CALCOM_BOOKING_PAYMENTS.enrich is not None
    mapped = map_record(BOOKING_MAPPING, record)
    CALCOM_BOOKING_PAYMENTS.enrich(mapped, record, SETTINGS)
    linked = objects[0]["id"] if objects else None
    source = SourceSide("10001", mapped, linked_id=linked, facts=comparison.facts(record, SETTINGS))
    related = {str(obj["id"]): charges for obj in objects}
    return judge_record(comparison, BOOKING_MAPPING, source, StripeSide(objects, related))


def test_a_paid_booking_and_its_payment_that_agree_are_not_reported():
    assert judge_booking(chain(), intent()) == []


@pytest.mark.parametrize(
    ("record", "reported"),
    [
        (chain(), True),
        (chain("pending"), False),  # not paid yet
        (chain("rejected"), False),
        (chain("cancelled"), False),  # nothing was taken, nothing to refund
        (chain(option="HOLD"), False),  # a card saved for a no-show fee
    ],
)
def test_only_a_paid_booking_with_no_payment_is_a_booking_payment_mismatch(record, reported):
    expected = [("booking_payment_mismatch", "no_payment", None, "")] if reported else []
    assert kinds(judge_booking(record)) == expected


def test_a_cancelled_booking_whose_payment_stands_is_reported_until_refunded():
    record, paid = chain("cancelled"), intent(calcom_status="cancelled")
    (finding,) = judge_booking(record, paid, charges=({"id": "ch_1", "amount_refunded": 0},))
    assert kinds([finding]) == [("booking_payment_mismatch", "not_refunded", "pi_C", "amount_refunded")]
    assert finding.fixes == (FixKind.MARK_INTENDED,) and finding.source_value == "120.00 AUD"
    assert judge_booking(record, paid, charges=({"id": "ch_1", "amount_refunded": 12000},)) == []


def test_a_paid_booking_whose_payment_did_not_go_through_is_reported():
    (finding,) = judge_booking(chain(), intent("requires_payment_method"))
    assert kinds([finding]) == [("booking_payment_mismatch", "payment_differs", "pi_C", "status")]
    assert judge_booking(chain(option="HOLD"), intent("requires_capture")) == []


# --- Cal.com event type notes ----------------------------------------------------------------------------------
NOTE = {"id": 4001, "title": "Initial consultation", "schedule_name": "Clinic hours", "team_id": None}


def judge_notes(record: dict[str, Any], *objects: dict[str, Any]) -> list[Finding]:
    comparison = CALCOM_REFERENCE.compare
    assert comparison is not None
    mapped = map_record(NOTES_MAPPING, record, archived_value=CALCOM_REFERENCE.archived_value(record))
    source = SourceSide("4001", mapped, linked_id="prod_A")
    return judge_record(comparison, NOTES_MAPPING, source, StripeSide(objects))


def product(**metadata: str) -> dict[str, Any]:
    return {"id": "prod_A", "name": "Renamed", "metadata": {"calcom_event_type_id": "4001"} | metadata}


def test_the_notes_stream_reports_only_its_own_keys():
    record = {**NOTE, "metadata": {"apps": {"stripe": {"enabled": True, "price": 12000}}}}
    assert judge_notes(record, product(calcom_schedule="Clinic hours")) == [], "the name is the event types'"
    (finding,) = judge_notes(record, product(calcom_schedule="Edited"))
    assert kinds([finding]) == [("field_drift", "value_changed", "prod_A", "metadata.calcom_schedule")]
    assert judge_notes(record) == [], "a missing product is the event types stream's to report"
    assert judge_notes({**NOTE}, product(calcom_schedule="Edited")) == [], "a free event type's product: not ours"


def test_finding_types_are_all_reported_by_the_streams_that_did_not_narrow_them():
    from clinicsync.streams import CLINIKO_PATIENTS

    assert CLINIKO_PATIENTS.compare is not None and CLINIKO_PATIENTS.compare.reports == frozenset(FindingType)
    assert Reason.NO_PAYMENT.value == "no_payment"
