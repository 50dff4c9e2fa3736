"""store/lookup.py: the per-record queries with their SQL built once answer exactly as peewee's own queries do."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from peewee import SqliteDatabase

from clinicsync.store import lookup
from clinicsync.store.db import open_database
from clinicsync.store.models import AccountPair, OutboxEntry, RecordLink, RoleLink, StripeIndexEntry


@pytest.fixture
def db(tmp_path: Path) -> Iterator[SqliteDatabase]:
    database = open_database(tmp_path / "db.sqlite3")
    yield database
    database.close()


def make_pair(uuid: str) -> AccountPair:
    return AccountPair.create(
        uuid=uuid,
        source_system="cliniko",
        source_account=f"70000000000000000{uuid}",
        source_region="au1",
        stripe_account="acct_sandbox_clinic_a",
        stripe_livemode=False,
    )


def test_get_or_none_returns_the_row_peewee_returns(db: SqliteDatabase) -> None:
    pair, other = make_pair("a"), make_pair("b")
    for number in range(5):
        RecordLink.create(pair=pair, stream="s", source_id=str(number), stripe_object="product", archived=number == 3)
    RecordLink.create(pair=other, stream="s", source_id="3", stripe_object="product", mapping_version=7)
    for _ in range(2):  # the second call runs the cached text
        for source_id in ("3", "9"):
            expected = RecordLink.get_or_none(
                (RecordLink.pair == pair) & (RecordLink.stream == "s") & (RecordLink.source_id == source_id)
            )
            found = lookup.get_or_none(RecordLink, pair=pair, stream="s", source_id=source_id)
            assert (found and found.__data__) == (expected and expected.__data__)
    found = lookup.get_or_none(RecordLink, pair=other.id, stream="s", source_id="3")
    assert found is not None and found.mapping_version == 7 and found.archived is False


def test_json_fields_and_exists(db: SqliteDatabase) -> None:
    pair = make_pair("a")
    row = OutboxEntry.create(
        pair=pair,
        stream="s",
        source_id="1",
        op="create",
        stripe_object="product",
        params={"name": "Ä"},
        payload_hash="h",
    )
    again = lookup.get_or_none(OutboxEntry, id=row.id)
    assert again is not None and again.params == {"name": "Ä"} and again.refs is None
    assert lookup.exists(OutboxEntry, pair=pair, stream="s", source_id="1", status="pending")
    assert not lookup.exists(OutboxEntry, pair=pair, stream="s", source_id="1", status="done")
    with pytest.raises(ValueError):
        lookup.exists(OutboxEntry, pair=pair, stream="s", source_id=None)


def test_column_update_and_insert(db: SqliteDatabase) -> None:
    pair = make_pair("a")
    for stripe_id, ref in (("prod_2", "x"), ("prod_1", "x"), ("prod_3", "y")):
        StripeIndexEntry.create(pair=pair, stripe_object="product", stripe_id=stripe_id, source_ref=ref)
    assert lookup.column(StripeIndexEntry, "stripe_id", pair=pair, stripe_object="product", source_ref="x") == [
        "prod_1",
        "prod_2",
    ]
    link = lookup.insert(
        RoleLink(pair=pair, stream="s", source_id="1", role="price", stripe_object="price", stripe_id="p")
    )
    stored = RoleLink.get_by_id(link.id)
    assert (stored.current, stored.active, stored.fingerprint) == (False, True, None)
    mine = {"pair": pair, "stream": "s", "role": "price"}
    assert lookup.update(RoleLink, {"current": True, "fingerprint": None}, **mine, stripe_id="p") == 1
    assert lookup.update(RoleLink, {"current": True, "fingerprint": None}, **mine, stripe_id="q") == 0
    stored = RoleLink.get_by_id(link.id)
    assert (stored.current, stored.fingerprint) == (True, None)
    with pytest.raises(ValueError):
        lookup.insert(stored)  # its id is known: not a new row


def test_each_shape_is_cached(db: SqliteDatabase) -> None:
    """Each shape's text is kept after its first call (peewee's parameters matched these, in this order): a shape
    that is not would build its SQL on every call, and save nothing."""
    pair = make_pair("a")
    lookup._sql.clear()
    lookup.insert(RoleLink(pair=pair, stream="s", source_id="1", role="price", stripe_object="price", stripe_id="p"))
    # columns given out of the model's order, as _apply_effects does
    lookup.update(
        RoleLink, {"updated_at": pair.created_at, "fingerprint": "f", "current": True}, pair=pair, stripe_id="p"
    )
    lookup.get_or_none(RoleLink, pair=pair, stream="s", stripe_id="p")
    lookup.exists(RoleLink, pair=pair, stream="s", stripe_id="p")
    lookup.column(RoleLink, "stripe_id", pair=pair, stream="s")
    assert len(lookup._sql) == 5
    stored = RoleLink.get(RoleLink.stripe_id == "p")
    assert (stored.fingerprint, stored.current) == ("f", True)


def test_save_writes_only_the_columns_named(db: SqliteDatabase) -> None:
    pair = make_pair("a")
    link = RecordLink.create(pair=pair, stream="s", source_id="1", stripe_object="product")
    RecordLink.update(display_name="changed elsewhere").where(RecordLink.id == link.id).execute()
    link.stripe_id, link.display_name = "prod_1", "stale"
    assert lookup.save(link, [RecordLink.stripe_id]) == 1
    stored = RecordLink.get_by_id(link.id)
    assert (stored.stripe_id, stored.display_name) == ("prod_1", "changed elsewhere")
