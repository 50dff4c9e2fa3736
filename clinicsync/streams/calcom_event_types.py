"""`calcom.event_types` → Stripe products and prices: a priced event type is one Stripe product whose one active
ClinicSync price, its default, is the event type's price in Cal.com's Stripe app (`metadata.apps.stripe`: the
price in minor units and its currency; the deprecated top-level `price` is not read, docs/calcom-api.md §3).

The product and price rules are the products stream's (streams/priced_products.py). An event type that is hidden,
deleted or no longer priced is archived: its product is made inactive (its price stays, as Stripe refuses to
archive a product's default price); one that never was priced is not created.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from clinicsync.mapping.apply import MappedRecord
from clinicsync.mapping.defaults import CALCOM_EVENT_TYPES as CALCOM_EVENT_TYPES_MAPPING
from clinicsync.reconcile.compare import CompareRequest, Drift
from clinicsync.streams import calcom_common, priced_products
from clinicsync.streams.base import PlanRequest, Record, Stream, StreamSettings, WriteStep

# Cal.com says nothing about tax: the price is what the booker pays, and Stripe is not told more.
TAX_BEHAVIOR = "unspecified"


def _event_types(client: Any, cursor: datetime | None) -> Iterator[Record]:
    """Every event type, every time (Cal.com's list has no change cursor and is not paged): the key's user's own,
    then each of their teams'. Each gets `owner_email` and `team_name` for the product's metadata."""
    me = client.get_me()
    for event_type in client.list_event_types():
        owner = me.email if str(event_type.get("ownerId") or me.id) == me.id else ""
        yield {**event_type, "owner_email": owner, "team_name": ""}
    for team in client.list_teams():
        for event_type in client.list_team_event_types(team["id"]):
            yield {**event_type, "owner_email": "", "team_name": str(team.get("name") or "")}


def _event_type(client: Any, source_id: str) -> Record:
    """One event type by id; Cal.com's 404 is a deletion (the id is never reused), read as a record that says so."""
    found = client.get_event_type(source_id)
    return found if found is not None else {"id": source_id, "deleted": True}


def stripe_app(record: Record) -> Mapping[str, Any] | None:
    """The event type's enabled Stripe app settings (metadata.apps.stripe), or None when it takes no payment."""
    apps = (record.get("metadata") or {}).get("apps") or {}
    app = apps.get("stripe") if isinstance(apps, Mapping) else None
    return app if isinstance(app, Mapping) and app.get("enabled") else None


def _archived(record: Record) -> str | None:
    if record.get("deleted"):
        return "deleted in Cal.com"
    if record.get("hidden"):
        return "hidden in Cal.com"
    app = stripe_app(record)
    if app is None or not app.get("price"):
        return "free in Cal.com"
    return None


def _enrich(mapped: MappedRecord, record: Record, settings: StreamSettings) -> None:
    """The Stripe app's price (already in minor units) and currency as the product's `price.*` entries."""
    app = stripe_app(record)
    if app is None or mapped.archived:
        return  # an archived event type's product is only made inactive: its price is left as it is
    price, currency = app.get("price"), str(app.get("currency") or "").strip().lower()
    if isinstance(price, bool) or not isinstance(price, int | float) or price != int(price):
        mapped.error = f"price: Cal.com's Stripe app has {price!r} as the price, not a whole number of cents"
        return
    if len(currency) != 3 or not currency.isalpha():
        mapped.error = f"price: Cal.com's Stripe app has {currency or 'no currency'!r} as the currency"
        return
    priced_products.set_price(mapped, int(price), currency, TAX_BEHAVIOR, price)


def _compare(request: CompareRequest) -> list[Drift]:
    """The products rule; of an archived event type's product, only whether it is active (as `_plan` changes
    nothing else on it)."""
    drifts = priced_products.compare(request)
    if request.mapped.archived:
        return [drift for drift in drifts if drift.stripe_object or drift.field == "active"]
    return drifts


def _plan(request: PlanRequest) -> list[WriteStep]:
    """The products rule; an archived event type's product is only made inactive and marked (a deleted one's name
    and details are no longer known, and are not unset)."""
    if request.mapped.archived and request.op != "create":
        key = CALCOM_EVENT_TYPES_MAPPING.archived_marker
        params = {"active": False, "metadata": {key: (request.params.get("metadata") or {}).get(key, "")}}
        return [WriteStep("product", request.op, "product", params, stripe_id=request.stripe_id, note="made inactive")]
    return priced_products.plan(request)


CALCOM_EVENT_TYPES = Stream(
    name="calcom.event_types",
    source_system="calcom",
    primary_role="product",
    stripe_object="product",
    read_changed=_event_types,
    read_one=_event_type,
    archived_value=_archived,
    changed_at=lambda record: None,  # event types carry no change time
    plan=_plan,
    find_created=priced_products.find_created,
    idle_poll={"calcom": 5, "stripe": 1},
    retire_twin=priced_products.retire_twin,
    observe=priced_products.observe,
    unique_params=priced_products.UNIQUE_PARAMS,
    enrich=_enrich,
    time_zone=calcom_common.time_zone,
    compare=replace(priced_products.COMPARISON, compare=_compare),
    complete_listing=True,
)
