"""What every stream whose record is a Stripe product with one price shares (Cliniko products, Cal.com event
types): the price as `price.*` payload entries, the plan, finding a lost create, retiring a twin, reconciliation.

A record is one Stripe product with one active ClinicSync price, its default. Prices are immutable in Stripe: a
new amount is a new price, made the default, and the old one deactivated (never deleted); going back to an
earlier amount reactivates the earlier price instead of making another. A price ClinicSync did not make (a hand-
made product's own, which a clinic's Payment Links may use) is never edited or deactivated.
"""

from __future__ import annotations

from typing import Any

from clinicsync import money, stripe_limits
from clinicsync.mapping.apply import MappedRecord
from clinicsync.reconcile.compare import CompareRequest, Comparison, Drift, Related, compare_fields, same
from clinicsync.reconcile.findings import FixKind, Severity
from clinicsync.streams.base import (
    DUPLICATE_OF_KEY,
    FindRequest,
    PlanRequest,
    RoleLinkInfo,
    RoleRecord,
    WriteStep,
    oldest_naming,
)

PRICE_ROLE = "price"
TAX_WORDS = {"inclusive": " incl. tax", "exclusive": " excl. tax", "unspecified": ""}


def set_price(mapped: MappedRecord, units: int, currency: str, tax_behavior: str, shown: object) -> None:
    """The record's price as the `price.*` entries of its payload (so a change to it is a change to the record),
    or the record's error when Stripe could not take it. `shown`: the amount as the source has it, for messages."""
    if units < 0:
        mapped.error = f"price: {shown} is negative; Stripe prices cannot be"
        return
    if units > stripe_limits.PRICE_MAX_UNIT_AMOUNT:
        mapped.error = f"price: {shown} is more than Stripe takes for one price"
        return
    mapped.payload["price.unit_amount"] = units
    mapped.payload["price.currency"] = currency
    mapped.payload["price.tax_behavior"] = tax_behavior


def fingerprint(unit_amount: int, currency: str, tax_behavior: str) -> str:
    """What a price holds that cannot change: the same three values mean the same price."""
    return f"{unit_amount}:{currency}:{tax_behavior}"


def _price_of(params: dict[str, Any]) -> tuple[dict[str, Any], str]:
    price = params.pop("price", None) or {}
    spec = {key: price[key] for key in ("unit_amount", "currency", "tax_behavior")}
    return spec, fingerprint(spec["unit_amount"], spec["currency"], spec["tax_behavior"])


def _describe(spec: dict[str, Any]) -> str:
    return f"{money.display(spec['unit_amount'], spec['currency'])}{TAX_WORDS.get(spec['tax_behavior'], '')}"


# --- the plan ----------------------------------------------------------------------------------------------
def plan(request: PlanRequest) -> list[WriteStep]:
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


def find_created(gateway: Any, request: FindRequest) -> dict[str, Any] | None:
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


def retire_twin(gateway: Any, twin_id: str, survivor_id: str) -> str:
    """A product with prices cannot be deleted: the twin is made inactive and marked."""
    params = {"active": False, "metadata": {DUPLICATE_OF_KEY: survivor_id}}
    gateway.write("update", "product", twin_id, params, f"twin:{twin_id}")
    return f"made inactive and marked as a duplicate of {survivor_id}"


# --- reconciliation ----------------------------------------------------------------------------------------
PRICE_FIELDS = ("unit_amount", "currency", "tax_behavior")


def compare(request: CompareRequest) -> list[Drift]:
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


# A product is retired by making it inactive (Stripe keeps products that have prices, so never deleted).
COMPARISON = Comparison(
    compare=compare,
    archive_fix=FixKind.DEACTIVATE,
    related=(Related("price", "product"),),
    retired=lambda product: product.get("active") is False,
)
