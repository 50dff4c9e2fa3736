"""Reconciliation's rules on plain dicts (no database, no network): what one record's two sides produce, for the
patients stream's customers and the products stream's products and prices."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from clinicsync.mapping.apply import map_record
from clinicsync.mapping.defaults import CLINIKO_PATIENTS as PATIENT_MAPPING
from clinicsync.mapping.defaults import CLINIKO_PRODUCTS as PRODUCT_MAPPING
from clinicsync.reconcile.compare import Owned
from clinicsync.reconcile.findings import Finding, FindingType, FixKind, Reason, Severity
from clinicsync.reconcile.judge import Decision, SourceSide, StripeSide, judge_match_group, judge_record
from clinicsync.streams import CLINIKO_PATIENTS, CLINIKO_PRODUCTS, StreamSettings
from clinicsync.streams.base import DUPLICATE_OF_KEY

PATIENT = {
    "id": "101",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "email": "ada@example.com",
    "patient_phone_numbers": [{"number": "0491 570 156", "phone_type": "Mobile"}],
    "address_1": "1 Analytical St",
    "address_2": None,
    "address_3": None,
    "city": "Melbourne",
    "state": "VIC",
    "post_code": "3000",
    "country_code": "AU",
}


def customer(cid: str = "cus_A", created: int = 100, **changes: Any) -> dict[str, Any]:
    base = {
        "id": cid,
        "created": created,
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "phone": "0491 570 156",
        "address": {
            "line1": "1 Analytical St",
            "line2": None,
            "city": "Melbourne",
            "state": "VIC",
            "postal_code": "3000",
            "country": "AU",
        },
        "metadata": {"cliniko_patient_id": "101"},
    }
    metadata = changes.pop("metadata", None)
    base.update(changes)
    if metadata is not None:
        base["metadata"] = metadata
    return base


def side(record: dict[str, Any] | None = PATIENT, **values: Any) -> SourceSide:
    archived = CLINIKO_PATIENTS.archived_value(record) if record else None
    mapped = map_record(PATIENT_MAPPING, record, archived_value=archived) if record else None
    values.setdefault("linked_id", "cus_A")
    return SourceSide(source_id=values.pop("source_id", "101"), mapped=mapped, **values)


def judge(source: SourceSide, *objects: dict[str, Any], candidates: tuple[str, ...] = ()) -> list[Finding]:
    assert CLINIKO_PATIENTS.compare is not None
    return judge_record(CLINIKO_PATIENTS.compare, PATIENT_MAPPING, source, StripeSide(objects, {}, candidates))


def kinds(findings: list[Finding]) -> list[tuple[str, str, str | None, str]]:
    return [(f.type.value, f.reason.value, f.stripe_id, f.field) for f in findings]


# --- customers -------------------------------------------------------------------------------------------------
def test_a_customer_that_agrees_is_not_reported():
    assert judge(side(), customer()) == []


@pytest.mark.parametrize(
    ("changes", "target", "stripe_value"),
    [
        ({"name": "Ada King"}, "name", "Ada King"),
        ({"email": "ada@other.example"}, "email", "ada@other.example"),
        ({"phone": None}, "phone", None),
        ({"address": {"line1": "1 Analytical St", "city": "Sydney", "state": "VIC", "postal_code": "3000",
                      "country": "AU"}}, "address.city", "Sydney"),
    ],
)  # fmt: skip
def test_an_edited_mapped_field_is_drift_naming_the_field_and_both_values(changes, target, stripe_value):
    (finding,) = judge(side(synced_hash=None), customer(**changes))
    assert (finding.type, finding.field, finding.stripe_value) == (FindingType.FIELD_DRIFT, target, stripe_value)
    assert finding.source_value == side().mapped.payload[target]  # type: ignore[union-attr]
    assert finding.suggested_fix == FixKind.REPUSH and FixKind.MARK_INTENDED in finding.fixes
    assert "changed in Stripe" in finding.explanation


def test_drift_that_the_next_sync_will_send_says_so_and_is_low():
    (finding,) = judge(side(synced_hash="an older payload"), customer(name="Ada King"))
    assert finding.severity == Severity.LOW and "next time" in finding.explanation


def test_a_removed_cross_reference_is_high_drift():
    (finding,) = judge(side(), customer(metadata={}))
    assert (finding.field, finding.severity) == ("metadata.cliniko_patient_id", Severity.HIGH)


def test_an_archived_patient_whose_customer_is_marked_is_intended():
    archived = {**PATIENT, "archived_at": "2025-01-02T03:04:05Z"}
    marked = customer(metadata={"cliniko_patient_id": "101", "cliniko_archived": "archived 2025-01-02T03:04:05Z"})
    assert judge(side(archived), marked) == []


def test_an_archived_patient_whose_customer_does_not_say_so_is_one_orphan():
    archived = {**PATIENT, "archived_at": "2025-01-02T03:04:05Z"}
    (finding,) = judge(side(archived), customer())
    assert (finding.type, finding.reason) == (FindingType.ORPHANED_IN_STRIPE, Reason.SOURCE_ARCHIVED)
    assert finding.suggested_fix == FixKind.ARCHIVE and finding.source_value == "archived 2025-01-02T03:04:05Z"


def test_a_live_patient_whose_customer_is_marked_archived_is_drift_on_the_marker():
    marked = customer(metadata={"cliniko_patient_id": "101", "cliniko_archived": "archived 2024"})
    assert kinds(judge(side(), marked)) == [("field_drift", "value_changed", "cus_A", "metadata.cliniko_archived")]


def test_an_archived_patient_never_synced_is_not_missing():
    archived = {**PATIENT, "archived_at": "2025-01-02T03:04:05Z"}
    assert judge(side(archived, linked_id=None)) == []


@pytest.mark.parametrize(
    ("values", "reason", "suggested"),
    [
        ({"linked_id": None}, Reason.NEVER_SYNCED, FixKind.REPUSH),
        ({"linked_id": "cus_gone"}, Reason.DELETED_IN_STRIPE, FixKind.REPUSH),
        ({"linked_id": None, "decision": Decision.REVIEW}, Reason.WAITING_FOR_REVIEW, FixKind.REPUSH),
    ],
)
def test_a_patient_without_a_customer_is_missing(values, reason, suggested):
    (finding,) = judge(side(**values))
    assert (finding.type, finding.reason, finding.suggested_fix) == (FindingType.MISSING_IN_STRIPE, reason, suggested)
    assert finding.source_id == "101" and finding.display_name == "Ada Lovelace"
    assert finding.stripe_id == values["linked_id"]


def test_a_missing_patient_with_one_same_email_customer_suggests_linking_it():
    (finding,) = judge(side(linked_id=None), candidates=("cus_hand",))
    assert finding.suggested_fix == FixKind.LINK and finding.related == ("cus_hand",)


def test_a_patient_the_mapping_cannot_send_is_missing_with_the_reason():
    (finding,) = judge(side({**PATIENT, "email": "not-an-email"}, linked_id=None))
    assert finding.reason == Reason.CANNOT_MAP and finding.suggested_fix == FixKind.CORRECT_SOURCE
    assert "not a valid email" in finding.explanation


@pytest.mark.parametrize("values", [{"in_scope": False}, {"decision": Decision.IGNORED}, {"decision": Decision.QUEUED}])
def test_records_the_sync_leaves_alone_on_purpose_are_not_reported(values):
    assert judge(side(linked_id=None, **values)) == []
    assert judge(side(**values), customer(name="Someone Else")) == []


def test_a_customer_naming_a_patient_the_source_does_not_have_is_orphaned():
    (finding,) = judge(side(None, linked_id=None), customer())
    assert (finding.type, finding.reason, finding.stripe_id) == ("orphaned_in_stripe", Reason.SOURCE_ABSENT, "cus_A")
    assert finding.fixes[:2] == (FixKind.ARCHIVE, FixKind.DELETE)


def test_a_retired_customer_naming_a_vanished_patient_is_not_reported():
    marked = customer(metadata={"cliniko_patient_id": "101", "cliniko_archived": "deleted"})
    twin = customer("cus_B", metadata={"cliniko_patient_id": "101", DUPLICATE_OF_KEY: "cus_A"})
    assert judge(side(None, linked_id="cus_A"), marked, twin) == []


def test_a_twin_beside_the_linked_customer_is_a_duplicate_keeping_the_linked_one():
    twin = customer("cus_T", created=50)  # older, but the linked one is kept
    (finding,) = judge(side(), customer(), twin)
    assert (finding.type, finding.reason, finding.stripe_id) == (FindingType.DUPLICATE, Reason.SAME_REFERENCE, "cus_T")
    assert finding.kept_id == "cus_A" and finding.suggested_fix == FixKind.ARCHIVE
    assert FixKind.DELETE in finding.fixes


def test_twins_never_linked_keep_the_oldest_and_compare_it():
    older, newer = customer("cus_1", created=10, name="Ada K"), customer("cus_2", created=20)
    found = judge(side(linked_id=None), newer, older)
    assert kinds(found) == [
        ("duplicate", "same_reference", "cus_2", ""),
        ("field_drift", "value_changed", "cus_1", "name"),
    ]


def test_a_customer_naming_a_patient_linked_to_a_deleted_one_suggests_linking_it():
    (finding,) = judge(side(linked_id="cus_gone"), customer("cus_new"))
    assert (finding.type, finding.reason) == (FindingType.ORPHANED_IN_STRIPE, Reason.LINKED_ELSEWHERE)
    assert finding.suggested_fix == FixKind.LINK and finding.related == ("cus_gone",)


def test_a_customer_naming_a_patient_linked_to_another_that_does_not_name_it_is_orphaned():
    linked = customer("cus_L", metadata={})
    other = customer("cus_O")
    found = judge(side(linked_id="cus_L"), linked, other)
    assert kinds(found) == [
        ("orphaned_in_stripe", "linked_elsewhere", "cus_O", ""),
        ("field_drift", "value_changed", "cus_L", "metadata.cliniko_patient_id"),
    ]


def test_family_members_sharing_an_email_each_with_a_cross_reference_are_not_duplicates():
    for pid, cid in (("101", "cus_A"), ("102", "cus_B")):
        record = {**PATIENT, "id": pid}
        obj = customer(cid, metadata={"cliniko_patient_id": pid})
        assert judge(side(record, source_id=pid, linked_id=cid), obj) == []


def test_customers_without_a_cross_reference_sharing_an_email_are_duplicates_of_the_oldest():
    assert CLINIKO_PATIENTS.compare is not None
    objects = [
        customer(cid, created=created, metadata={}) for cid, created in (("cus_c", 3), ("cus_a", 1), ("cus_b", 1))
    ]
    found = judge_match_group(CLINIKO_PATIENTS.compare, PATIENT_MAPPING, objects)
    assert [(f.type, f.reason, f.stripe_id, f.kept_id) for f in found] == [
        (FindingType.DUPLICATE, Reason.SAME_EMAIL, "cus_b", "cus_a"),
        (FindingType.DUPLICATE, Reason.SAME_EMAIL, "cus_c", "cus_a"),
    ]
    assert all(f.source_id is None for f in found)
    marked = [customer("cus_a", metadata={}), customer("cus_b", metadata={DUPLICATE_OF_KEY: "cus_a"})]
    assert judge_match_group(CLINIKO_PATIENTS.compare, PATIENT_MAPPING, marked) == []


def test_fingerprints_follow_the_compared_values():
    first = judge(side(), customer(name="Ada King"))[0]
    again = judge(side(), customer(name="Ada King"))[0]
    changed = judge(side(), customer(name="Ada Queen"))[0]
    source_changed = judge(side({**PATIENT, "first_name": "Augusta"}), customer(name="Ada King"))[0]
    assert first.fingerprint == again.fingerprint and first.key == changed.key
    assert len({first.fingerprint, changed.fingerprint, source_changed.fingerprint}) == 3


# --- products (compared on plain dicts: the sandbox's product endpoints come with another branch) ----------------
PRODUCT = {"id": "501", "name": "Foam roller", "item_code": "FR-1", "product_supplier_name": "Acme",
           "stock_level": 7, "price_including_tax": "45.00", "price_ex_tax": "40.91"}  # fmt: skip


def product_side(record: dict[str, Any] = PRODUCT, owned: tuple[Owned, ...] = ()) -> SourceSide:
    archived = CLINIKO_PRODUCTS.archived_value(record)
    mapped = map_record(PRODUCT_MAPPING, record, archived_value=archived)
    assert CLINIKO_PRODUCTS.enrich is not None
    CLINIKO_PRODUCTS.enrich(mapped, record, StreamSettings(time_zone="Australia/Melbourne", currency="aud"))
    return SourceSide(source_id="501", mapped=mapped, linked_id="prod_A", owned=owned)


def product(**changes: Any) -> dict[str, Any]:
    metadata = {"cliniko_product_id": "501", "cliniko_item_code": "FR-1", "cliniko_supplier": "Acme",
                "cliniko_stock_level": "7", **changes.pop("metadata", {})}  # fmt: skip
    return {"id": "prod_A", "created": 1, "name": "Foam roller", "active": True, "default_price": "price_1",
            "metadata": metadata, **changes}  # fmt: skip


def price(pid: str = "price_1", **changes: Any) -> dict[str, Any]:
    return {"id": pid, "product": "prod_A", "unit_amount": 4500, "currency": "aud", "tax_behavior": "inclusive",
            "active": True, **changes}  # fmt: skip


def judge_product(source: SourceSide, obj: dict[str, Any], *prices: dict[str, Any]) -> list[Finding]:
    assert CLINIKO_PRODUCTS.compare is not None
    return judge_record(CLINIKO_PRODUCTS.compare, PRODUCT_MAPPING, source, StripeSide((obj,), {"prod_A": prices}))


def test_a_product_and_price_that_agree_are_not_reported():
    assert judge_product(product_side(), product(), price()) == []


def test_product_fields_and_the_default_price_drift():
    found = judge_product(
        product_side(), product(name="Roller", metadata={"cliniko_stock_level": "3"}), price(unit_amount=4000)
    )
    assert [(f.field, f.stripe_object, f.stripe_id, f.source_value, f.stripe_value) for f in found] == [
        ("name", "product", "prod_A", "Foam roller", "Roller"),
        ("metadata.cliniko_stock_level", "product", "prod_A", "7", "3"),
        ("price.unit_amount", "price", "price_1", "4500", "4000"),
    ]
    assert found[2].severity == Severity.HIGH


def test_a_product_without_its_default_price_or_made_inactive_drifts():
    found = judge_product(product_side(), product(active=False, default_price=None))
    assert [(f.field, f.stripe_value) for f in found] == [("active", "false"), ("default_price", None)]
    (inactive_price,) = judge_product(product_side(), product(), price(active=False))
    assert (inactive_price.field, inactive_price.stripe_id) == ("price.active", "price_1")


def test_an_old_price_of_ours_left_active_is_drift_to_deactivate():
    owned = (Owned("price", "price_old", False, False), Owned("price", "price_1", True, True))
    (finding,) = judge_product(product_side(owned=owned), product(), price(), price("price_old", unit_amount=3000))
    assert (finding.field, finding.stripe_object, finding.stripe_id) == ("active", "price", "price_old")
    assert finding.suggested_fix == FixKind.DEACTIVATE
    # A price someone made by hand on the product is theirs: left alone.
    assert judge_product(product_side(), product(), price(), price("price_hand", unit_amount=3000)) == []


def test_our_price_is_not_deactivated_when_a_person_made_another_the_default():
    owned = (Owned("price", "price_1", True, True),)
    hand_set = product(default_price="price_hand")
    (finding,) = judge_product(product_side(owned=owned), hand_set, price(), price("price_hand", unit_amount=123))
    assert (finding.field, finding.stripe_id, finding.suggested_fix) == ("price.unit_amount", "price_hand", "repush")


def test_an_archived_product_is_reported_once_and_retired_products_never():
    archived = {**PRODUCT, "archived_at": "2025-02-03T04:05:06Z"}
    (finding,) = judge_product(product_side(archived), product(), price())
    assert (finding.reason, finding.suggested_fix) == (Reason.SOURCE_ARCHIVED, FixKind.DEACTIVATE)
    retired = product(active=False, metadata={"cliniko_archived": "archived 2025-02-03T04:05:06Z"})
    assert judge_product(product_side(archived), retired, price()) == []
    still_active = product(metadata={"cliniko_archived": "archived 2025-02-03T04:05:06Z"})
    (active,) = judge_product(product_side(archived), still_active, price())
    assert (active.field, active.suggested_fix) == ("active", FixKind.DEACTIVATE)
    # An inactive product naming a product Cliniko does not have is retired already.
    gone = SourceSide(source_id="501", mapped=None)
    assert judge_product(gone, product(active=False)) == []
    assert [f.suggested_fix for f in judge_product(gone, product())] == [FixKind.DEACTIVATE]
    assert FixKind.DELETE not in judge_product(gone, product())[0].fixes  # Stripe keeps products with prices


# --- Cal.com attendees: a customer shared with a Cliniko patient -------------------------------------------------
def test_an_attendee_compares_only_its_metadata_on_a_customer_cliniko_owns():
    from clinicsync.mapping.defaults import CALCOM_ATTENDEES
    from clinicsync.streams import CALCOM_BOOKINGS
    from clinicsync.streams.calcom_bookings import attendee_ref

    ref = attendee_ref("ann@example.org")
    record = {"id": ref, "email": "ann@example.org", "name": "Ann (as booked)", "phoneNumber": None,
              "last_booking_uid": "b1", "last_booking_start": "2026-03-04T00:30:00Z", "booking_count": 2}  # fmt: skip
    mapped = map_record(CALCOM_ATTENDEES, record)
    assert CALCOM_BOOKINGS.enrich is not None and CALCOM_BOOKINGS.compare is not None
    CALCOM_BOOKINGS.enrich(mapped, record, StreamSettings(time_zone="Australia/Melbourne", currency="aud"))
    metadata = {"calcom_attendee_ref": ref, "calcom_last_booking_uid": "b1", "calcom_booking_count": "3",
                "calcom_last_booking_start": "2026-03-04T11:30+11:00", "cliniko_patient_id": "7"}  # fmt: skip
    obj = {"id": "cus_A", "created": 1, "email": "ann@example.org", "name": "Ann Patient", "metadata": metadata}
    assert mapped.error is None, mapped.error
    side = SourceSide(source_id=ref, mapped=mapped, linked_id="cus_A")

    def judged(shared: frozenset[str]) -> list[tuple[str, str | None]]:
        stripe = StripeSide((obj,), identity_elsewhere=shared)
        return [
            (f.field, f.stripe_value) for f in judge_record(CALCOM_BOOKINGS.compare, CALCOM_ATTENDEES, side, stripe)
        ]

    assert judged(frozenset({"cus_A"})) == [("metadata.calcom_booking_count", "3")], "the name is Cliniko's"
    assert judged(frozenset()) == [("name", "Ann Patient"), ("metadata.calcom_booking_count", "3")]


def test_reconcile_imports_no_database_network_or_qt():
    code = (
        "import sys, clinicsync.reconcile.judge, clinicsync.reconcile.export, clinicsync.reconcile.findings\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('peewee', 'httpx', 'stripe', 'sqlite3', 'PySide6')]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
