"""`cliniko.products` → Stripe products and prices: a product is one Stripe product with one active ClinicSync
price, its default, by the rules of streams/priced_products.py (shared with Cal.com's event types)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from clinicsync import money
from clinicsync.mapping.apply import MappedRecord
from clinicsync.streams import cliniko_common, priced_products
from clinicsync.streams.base import (
    Record,
    Stream,
    StreamSettings,
)

log = logging.getLogger(__name__)

# The setting `cliniko.products.price_basis`: which Cliniko price becomes the Stripe price, and how Stripe is told
# whether tax is in it.
PRICE_BASIS = {"including_tax": ("price_including_tax", "inclusive"), "ex_tax": ("price_ex_tax", "exclusive")}


def _products_changed(client: Any, cursor: datetime | None) -> Iterator[Record]:
    # Live and archived products, as for patients; and products whose stock moved, which Cliniko may not mark as
    # updated.
    return itertools.chain(
        client.iter_live_and_archived("/products", cursor),
        _products_with_stock_adjustments(client, cursor),
    )


def _products_with_stock_adjustments(client: Any, cursor: datetime | None) -> Iterator[Record]:
    """Products named by stock adjustments made since the cursor, read by id: a stock level reaches Stripe whether
    or not an adjustment bumps the product's `updated_at` (Cliniko does not document which)."""
    from clinicsync.sources.errors import SourceNotFound, SourcePermissionError

    if cursor is None:
        return  # a full read has every product's current stock level already
    try:
        ids = [
            pid for record in client.iter_created_since("/stock_adjustments", cursor) if (pid := _product_id(record))
        ]
    except (SourceNotFound, SourcePermissionError) as exc:
        log.info("stock adjustments not read (%s); stock levels follow product updates only", type(exc).__name__)
        return
    for product_id in dict.fromkeys(ids):
        record = client.get_record("/products", product_id, "product")
        if record is not None:
            yield record


def _product_id(adjustment: Record) -> str | None:
    from clinicsync.sources.cliniko import link_id

    return link_id(adjustment.get("product")) or (
        str(adjustment["product_id"]) if adjustment.get("product_id") else None
    )


def _product_archived(record: Record) -> str | None:
    return cliniko_common.archived_value(record, ("deleted_at", "archived_at"))


# --- the price ---------------------------------------------------------------------------------------------
def _enrich(mapped: MappedRecord, record: Record, settings: StreamSettings) -> None:
    """The product's selling price as the `price.*` entries of its payload, in the clinic's currency's minor units."""
    source_field, tax_behavior = PRICE_BASIS[settings.get("cliniko.products.price_basis", "including_tax")]
    amount = record.get(source_field)
    if amount in (None, ""):
        mapped.error = f"price: the product has no {source_field.replace('_', ' ')} in Cliniko"
        return
    try:
        units = money.to_minor_units(amount, settings.currency)
    except money.MoneyError as exc:
        mapped.error = f"price: {exc}"
        return
    priced_products.set_price(mapped, units, settings.currency, tax_behavior, amount)


CLINIKO_PRODUCTS = Stream(
    name="cliniko.products",
    source_system="cliniko",
    primary_role="product",
    stripe_object="product",
    read_changed=_products_changed,
    read_one=lambda client, source_id: client.get_record("/products", source_id, "product"),
    archived_value=_product_archived,
    changed_at=lambda record: record.get("updated_at"),
    plan=priced_products.plan,
    find_created=priced_products.find_created,
    idle_poll={"cliniko": 5, "stripe": 1},
    retire_twin=priced_products.retire_twin,
    observe=priced_products.observe,
    unique_params=priced_products.UNIQUE_PARAMS,
    enrich=_enrich,
    source_settings=cliniko_common.settings,
    time_zone=cliniko_common.time_zone,
    country=cliniko_common.country,
    compare=priced_products.COMPARISON,
)
