"""`cliniko.products` → Stripe products and prices.

A product is one Stripe product with one active ClinicSync price, its default. Prices are immutable in Stripe: a
new amount is a new price, made the default, and the old one deactivated (never deleted); going back to an
earlier amount reactivates the earlier price instead of making another. A price ClinicSync did not make (a hand-
made product's own, which a clinic's Payment Links may use) is never edited or deactivated.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from clinicsync import money, stripe_limits
from clinicsync.mapping.apply import MappedRecord
from clinicsync.reconcile.compare import CompareRequest, Comparison, Drift, Related, compare_fields, same
from clinicsync.reconcile.findings import FixKind, Severity
from clinicsync.streams import cliniko_common
from clinicsync.streams.base import (
    DUPLICATE_OF_KEY,
    FindRequest,
    PlanRequest,
    Record,
    RoleLinkInfo,
    RoleRecord,
    Stream,
    StreamSettings,
    WriteStep,
    oldest_naming,
)

log = logging.getLogger(__name__)

PRICE_ROLE = "price"
# The setting `cliniko.products.price_basis`: which Cliniko price becomes the Stripe price, and how Stripe is told
# whether tax is in it.
PRICE_BASIS = {"including_tax": ("price_including_tax", "inclusive"), "ex_tax": ("price_ex_tax", "exclusive")}


def _products_changed(client: Any, cursor: datetime | None) -> Iterator[Record]:
    # The archived pass, as for patients; and products whose stock moved, which Cliniko may not mark as updated.
    return itertools.chain(
        client.iter_changed("/products", cursor),
        client.iter_changed("/products", cursor, archived=True),
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
    if units < 0:
        mapped.error = f"price: {amount} is negative; Stripe prices cannot be"
        return
    if units > stripe_limits.PRICE_MAX_UNIT_AMOUNT:
        mapped.error = f"price: {amount} is more than Stripe takes for one price"
        return
    mapped.payload["price.unit_amount"] = units
    mapped.payload["price.currency"] = settings.currency
    mapped.payload["price.tax_behavior"] = tax_behavior


def fingerprint(unit_amount: int, currency: str, tax_behavior: str) -> str:
    """What a price holds that cannot change: the same three values mean the same price."""
    return f"{unit_amount}:{currency}:{tax_behavior}"


def _price_of(params: dict[str, Any]) -> tuple[dict[str, Any], str]:
    price = params.pop("price", None) or {}
    spec = {key: price[key] for key in ("unit_amount", "currency", "tax_behavior")}
    return spec, fingerprint(spec["unit_amount"], spec["currency"], spec["tax_behavior"])


def _describe(spec: dict[str, Any]) -> str:
    tax = "incl. tax" if spec["tax_behavior"] == "inclusive" else "excl. tax"
    return f"{money.display(spec['unit_amount'], spec['currency'])} {tax}"


# --- the plan ----------------------------------------------------------------------------------------------
def _plan(request: PlanRequest) -> list[WriteStep]:
    params = dict(request.params)
    spec, wanted = _price_of(params)
    params["active"] = not request.mapped.archived
    if request.op == "create":
        params["default_price_data"] = spec  # the product and its price in one request
        made = RoleRecord(PRICE_ROLE, field="default_price", fingerprint=wanted, current=True, active=True)
        note = f"price {_describe(spec)}"
        return [WriteStep("product", "create", "product", params, records=(made,), note=note)]
    prices = [role for role in request.roles if role.role == PRICE_ROLE]
    current = next((price for price in prices if price.current), None)
    if current is not None and current.fingerprint == wanted and current.active:
        return [WriteStep("product", request.op, "product", params, stripe_id=request.stripe_id)]
    return _reprice(request, params, spec, wanted, prices, current)


def _reprice(
    request: PlanRequest,
    params: dict[str, Any],
    spec: dict[str, Any],
    wanted: str,
    prices: list[RoleLinkInfo],
    current: RoleLinkInfo | None,
) -> list[WriteStep]:
    """New default price (an earlier one of ours with the same amount, reactivated, or a new one), then the old
    one of ours deactivated: in that order, as Stripe refuses to archive a product's default price."""
    earlier = next((price for price in prices if price.fingerprint == wanted and price is not current), None)
    steps: list[WriteStep] = []
    refs: dict[str, int] = {}
    if earlier is not None:
        steps.append(
            WriteStep(
                PRICE_ROLE,
                "update",
                "price",
                {"active": True},
                stripe_id=earlier.stripe_id,
                records=(RoleRecord(PRICE_ROLE, active=True),),
                note=f"earlier price {_describe(spec)} used again",
            )
        )
        params["default_price"] = earlier.stripe_id
    else:
        price_params = {
            **spec,
            "product": request.stripe_id,
            "metadata": {request.cross_ref_key: request.mapped.source_id},
        }
        steps.append(
            WriteStep(
                PRICE_ROLE,
                "create",
                "price",
                price_params,
                records=(RoleRecord(PRICE_ROLE, fingerprint=wanted, current=False, active=True),),
                note=f"new price {_describe(spec)}",
            )
        )
        refs["default_price"] = 0
    steps.append(
        WriteStep(
            "product",
            request.op,
            "product",
            params,
            stripe_id=request.stripe_id,
            refs=refs,
            records=(RoleRecord(PRICE_ROLE, field="default_price", current=True),),
        )
    )
    if current is not None and current.active and current.fingerprint != wanted:
        steps.append(
            WriteStep(
                PRICE_ROLE,
                "update",
                "price",
                {"active": False},
                stripe_id=current.stripe_id,
                records=(RoleRecord(PRICE_ROLE, current=False, active=False),),
                note="previous price deactivated",
            )
        )
    return steps


def _find_created(gateway: Any, request: FindRequest) -> dict[str, Any] | None:
    """Listings are read-after-write safe (Search is not): products made since the write was first queued that
    name the record; for a price, the product's prices with the same amount, currency and tax behaviour."""
    if request.stripe_object == "price":
        same = ("unit_amount", "currency", "tax_behavior")
        found = [
            price
            for price in gateway.iter_objects("price", request.created_after, {"product": request.params["product"]})
            if all(price.get(key) == request.params.get(key) for key in same)
        ]
        return oldest_naming(found, request)
    return oldest_naming(list(gateway.iter_objects(request.stripe_object, request.created_after)), request)


def _retire_twin(gateway: Any, twin_id: str, survivor_id: str) -> str:
    """A product with prices cannot be deleted: the twin is made inactive and marked."""
    params = {"active": False, "metadata": {DUPLICATE_OF_KEY: survivor_id}}
    gateway.write("update", "product", twin_id, params, f"twin:{twin_id}")
    return f"made inactive and marked as a duplicate of {survivor_id}"


# --- reconciliation ----------------------------------------------------------------------------------------
PRICE_FIELDS = ("unit_amount", "currency", "tax_behavior")


def _compare(request: CompareRequest) -> list[Drift]:
    """The mapped fields; whether the product is active as the record says; its default price against the one the
    record's price makes; and no other price of ours left active (an old one the plan did not deactivate)."""
    drifts = compare_fields(request)
    product = request.obj
    archived = request.mapped.archived
    active = product.get("active", True) is not False
    marked = bool((product.get("metadata") or {}).get(request.mapping.archived_marker))
    # An archived product not marked at all is reported once, as not saying it is archived (judge.py).
    if active == archived and (not archived or marked):
        fix = FixKind.DEACTIVATE if archived else FixKind.REPUSH
        drifts.append(Drift("active", not archived, active, fix=fix))
    default = product.get("default_price")
    default_id = default.get("id") if isinstance(default, dict) else default
    wanted = {key: request.mapped.payload.get(f"price.{key}") for key in PRICE_FIELDS}
    prices = {str(price["id"]): price for price in request.related}
    if wanted["unit_amount"] is not None:
        price = prices.get(str(default_id)) if default_id else None
        if price is None:
            shown = f"{wanted['unit_amount']} {wanted['currency']} ({wanted['tax_behavior']})"
            drifts.append(Drift("default_price", shown, default_id, severity=Severity.HIGH))
        else:
            drifts += [
                Drift(f"price.{key}", value, price.get(key), "price", str(price["id"]), Severity.HIGH)
                for key, value in wanted.items()
                if not same(value, price.get(key))
            ]
            if price.get("active") is False and not archived:
                drifts.append(Drift("price.active", True, False, "price", str(price["id"]), Severity.HIGH))
    ours = {owned.stripe_id for owned in request.owned if owned.role == PRICE_ROLE}
    for price_id, price in prices.items():
        if price_id in ours and price_id != default_id and price.get("active") is True:
            drifts.append(Drift("active", False, True, "price", price_id, Severity.LOW, FixKind.DEACTIVATE))
    return drifts


CLINIKO_PRODUCTS = Stream(
    name="cliniko.products",
    source_system="cliniko",
    primary_role="product",
    stripe_object="product",
    read_changed=_products_changed,
    read_one=lambda client, source_id: client.get_record("/products", source_id, "product"),
    archived_value=_product_archived,
    changed_at=lambda record: record.get("updated_at"),
    plan=_plan,
    find_created=_find_created,
    retire_twin=_retire_twin,
    enrich=_enrich,
    source_settings=cliniko_common.settings,
    time_zone=cliniko_common.time_zone,
    country=cliniko_common.country,
    # A product is retired by making it inactive (Stripe keeps products that have prices, so never deleted).
    compare=Comparison(
        compare=_compare,
        archive_fix=FixKind.DEACTIVATE,
        related=(Related("price", "product"),),
        retired=lambda product: product.get("active") is False,
    ),
)
