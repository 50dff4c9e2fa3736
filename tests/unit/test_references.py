"""Streams that point at other streams' records (an invoice at its patient's customer, a line at its product's
price) resolve them through the links those streams made, in the same Stripe account only."""

from __future__ import annotations

from pathlib import Path

import pytest

from clinicsync.store.db import open_database
from clinicsync.store.models import AccountPair, RecordLink, RoleLink
from clinicsync.sync.references import AccountLinks


def _pair(source: str, account: str, stripe_account: str = "acct_1") -> AccountPair:
    return AccountPair.create(
        uuid=f"{source}{account}".ljust(12, "x"),
        source_system=source,
        source_account=account,
        stripe_account=stripe_account,
        stripe_livemode=False,
    )


@pytest.fixture
def cliniko(tmp_path: Path) -> AccountPair:
    open_database(tmp_path / "db.sqlite3")
    return _pair("cliniko", "1")


def test_a_patients_customer_is_found_and_an_unsynced_patient_has_none(cliniko: AccountPair) -> None:
    RecordLink.create(
        pair=cliniko, stream="cliniko.patients", source_id="7", stripe_object="customer", stripe_id="cus_A"
    )
    RecordLink.create(pair=cliniko, stream="cliniko.patients", source_id="8", stripe_object="customer", stripe_id=None)
    links = AccountLinks(cliniko)
    assert links.stripe_id("cliniko.patients", "7") == "cus_A"
    assert links.stripe_id("cliniko.patients", "8") is None  # met, never linked
    assert links.stripe_id("cliniko.patients", "9") is None  # never met
    assert links.stripe_id("cliniko.products", "7") is None  # another stream's record 7


def test_a_role_resolves_to_its_current_object_only(cliniko: AccountPair) -> None:
    for price, current in (("price_old", False), ("price_new", True)):
        RoleLink.create(
            pair=cliniko,
            stream="cliniko.products",
            source_id="3",
            role="price",
            stripe_object="price",
            stripe_id=price,
            current=current,
        )
    assert AccountLinks(cliniko).stripe_id("cliniko.products", "3", "price") == "price_new"


def test_links_span_the_stripe_account_and_never_another_one(cliniko: AccountPair) -> None:
    calcom = _pair("calcom", "9")
    elsewhere = _pair("cliniko", "2", stripe_account="acct_other")
    RecordLink.create(
        pair=calcom, stream="calcom.bookings", source_id="att_1", stripe_object="customer", stripe_id="cus_C"
    )
    RecordLink.create(
        pair=elsewhere, stream="cliniko.patients", source_id="5", stripe_object="customer", stripe_id="cus_X"
    )
    links = AccountLinks(cliniko)
    assert links.stripe_id("calcom.bookings", "att_1") == "cus_C"  # same Stripe account, another source
    assert links.stripe_id("cliniko.patients", "5") is None  # another Stripe account's link
