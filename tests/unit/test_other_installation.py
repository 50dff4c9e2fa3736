"""When ClinicSync asks Stripe for a person's customer before creating one (another installation syncs these
accounts: sync/twins.py `another_installation_evident`), and which customers of a person it joins on the patient's
(sync/people.py `to_join`). Both read this profile's database only."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from clinicsync.mapping.defaults import CLINIKO_PATIENTS as PATIENTS_MAPPING
from clinicsync.store.db import open_database
from clinicsync.store.models import AccountPair, OutboxEntry, RecordLink, StripeIndexEntry, utcnow
from clinicsync.streams.calcom_bookings import CALCOM_BOOKINGS
from clinicsync.streams.cliniko_patients import CLINIKO_PATIENTS
from clinicsync.sync import people, twins

PATIENTS = "cliniko.patients"


def _pair(source: str) -> AccountPair:
    return AccountPair.create(
        uuid=source.ljust(12, "x"),
        source_system=source,
        source_account="1",
        stripe_account="acct_1",
        stripe_livemode=False,
    )


@pytest.fixture
def cliniko(tmp_path: Path) -> AccountPair:
    open_database(tmp_path / "db.sqlite3")
    return _pair("cliniko")


def _indexed(pair: AccountPair, stripe_id: str, ref: str | None, created: int) -> None:
    StripeIndexEntry.create(pair=pair, stripe_object="customer", stripe_id=stripe_id, source_ref=ref, created=created)


def _met(
    pair: AccountPair, source_id: str, stripe_id: str | None = None, stream: str = PATIENTS, key: str = ""
) -> None:
    RecordLink.create(
        pair=pair, stream=stream, source_id=source_id, stripe_object="customer", stripe_id=stripe_id, person_key=key
    )


def test_one_installation_alone_never_asks_whatever_stripe_held_before(cliniko: AccountPair) -> None:
    mapping = PATIENTS_MAPPING
    now = int(time.time())
    _indexed(cliniko, "cus_old", "41", now - 86_400 * 30)  # an earlier installation's, before these accounts met
    _indexed(cliniko, "cus_shop", None, now)  # a customer without a reference (a shop's, a booking app's)
    _indexed(cliniko, "cus_mine", "7", now)  # made here: its record was met (stored before the create was sent)
    _met(cliniko, "7", stripe_id=None)  # the create's answer not recorded yet
    assert not twins.another_installation_evident(cliniko, mapping)


def test_an_object_naming_a_record_never_met_here_shows_another_installation(cliniko: AccountPair) -> None:
    mapping = PATIENTS_MAPPING
    _indexed(cliniko, "cus_theirs", "8", int(time.time()))
    assert twins.another_installation_evident(cliniko, mapping)
    _met(cliniko, "8", stripe_id="cus_theirs")
    assert not twins.another_installation_evident(cliniko, mapping)


def test_twins_repaired_before_show_another_installation(cliniko: AccountPair) -> None:
    AccountPair.update(other_installation_at=utcnow()).where(AccountPair.id == cliniko.id).execute()
    assert twins.another_installation_evident(cliniko, PATIENTS_MAPPING)


def test_the_patients_record_joins_the_attendees_other_customer_only_when_it_is_that_persons(
    cliniko: AccountPair,
) -> None:
    calcom = _pair("calcom")
    _met(cliniko, "7", "cus_patient", key="k1")
    _met(calcom, "att_1", "cus_attendee", stream=CALCOM_BOOKINGS.name, key="k1")
    plan = people.to_join(cliniko, CLINIKO_PATIENTS, "7", "k1", "cus_patient", primary="cliniko")
    assert plan.others == ("cus_attendee",) and not plan.later
    # Cal.com is not the primary source: its record never decides; nor does a record with no person key.
    assert people.to_join(calcom, CALCOM_BOOKINGS, "att_1", "k1", "cus_attendee", primary="cliniko").others == ()
    assert people.to_join(cliniko, CLINIKO_PATIENTS, "7", None, "cus_patient", primary="cliniko").others == ()
    # A write to the attendee's customer on its way: joined on a later run.
    OutboxEntry.create(
        pair=calcom,
        stream=CALCOM_BOOKINGS.name,
        source_id="att_1",
        op="update",
        stripe_object="customer",
        payload_hash="h",
    )
    assert people.to_join(cliniko, CLINIKO_PATIENTS, "7", "k1", "cus_patient", primary="cliniko").later
    OutboxEntry.delete().execute()
    # Family members sharing the email: a person decides, nothing is joined.
    _met(cliniko, "8", "cus_sibling", key="k1")
    assert people.to_join(cliniko, CLINIKO_PATIENTS, "7", "k1", "cus_patient", primary="cliniko").others == ()


def test_another_patients_customer_is_never_joined(cliniko: AccountPair) -> None:
    calcom = _pair("calcom")
    _met(cliniko, "7", "cus_patient", key="k1")
    _met(cliniko, "9", "cus_other_patient", key="k9")  # the attendee joined another patient's customer
    _met(calcom, "att_1", "cus_other_patient", stream=CALCOM_BOOKINGS.name, key="k1")
    assert people.to_join(cliniko, CLINIKO_PATIENTS, "7", "k1", "cus_patient", primary="cliniko").others == ()


def test_a_family_sharing_an_email_is_never_joined_onto_a_booker_s_customer_when_cal_com_is_primary(
    cliniko: AccountPair,
) -> None:
    """Before: both patients' customers were retired for the booker's, then the second move broke the unique link
    (a crash every run) and the mother stayed linked to a deleted customer."""
    calcom = _pair("calcom")
    _met(cliniko, "mother", "cus_mother", key="k1")
    _met(cliniko, "child", "cus_child", key="k1")
    _met(calcom, "att_1", "cus_attendee", stream=CALCOM_BOOKINGS.name, key="k1")
    plan = people.to_join(calcom, CALCOM_BOOKINGS, "att_1", "k1", "cus_attendee", primary="calcom")
    assert plan.others == () and not plan.later


class _Customers:
    """A Stripe that answers the retire's questions about one customer."""

    def __init__(self, customer: dict, listed: set[str] = frozenset()) -> None:
        self.customer, self.listed = customer, listed
        self.deleted: list[str] = []
        self.marked: list[str] = []

    def retrieve(self, kind: str, stripe_id: str) -> dict:
        return self.customer

    def any_of(self, kind: str, filters: dict) -> bool:
        return kind in self.listed

    def delete(self, kind: str, stripe_id: str) -> bool:
        self.deleted.append(stripe_id)
        return True

    def write(self, op: str, kind: str, stripe_id: str, params: dict, key: str) -> None:
        self.marked.append(stripe_id)


@pytest.mark.parametrize(
    ("customer", "listed"),
    [
        ({"id": "cus_t"}, {"setup_intent"}),  # Cal.com's no-show fee option saved a card
        ({"id": "cus_t"}, {"payment_method"}),
        ({"id": "cus_t"}, {"subscription"}),
        ({"id": "cus_t", "balance": -500}, set()),  # credit on the account
        ({"id": "cus_t", "invoice_settings": {"default_payment_method": "pm_1"}}, set()),
    ],
)
def test_a_duplicate_customer_holding_a_card_a_plan_or_credit_is_marked_never_deleted(customer, listed) -> None:
    from clinicsync.streams.customers import retire_twin

    stripe = _Customers(customer, listed)
    assert "marked" in retire_twin(stripe, "cus_t", "cus_kept")
    assert stripe.deleted == [] and stripe.marked == ["cus_t"]


def test_a_duplicate_customer_that_nothing_refers_to_is_deleted() -> None:
    from clinicsync.streams.customers import retire_twin

    stripe = _Customers({"id": "cus_t", "balance": 0})
    assert retire_twin(stripe, "cus_t", "cus_kept").startswith("deleted")
    assert stripe.deleted == ["cus_t"]
