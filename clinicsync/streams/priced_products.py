"""What every stream whose record is a Stripe product with one price shares (Cliniko products, Cal.com event
types): the price as `price.*` payload entries, the plan, finding a lost create, retiring a twin, reconciliation.

A record is one Stripe product with one active ClinicSync price, its default. Prices are immutable in Stripe: a
new amount is a new price, made the default, and the old one deactivated (never deleted); going back to an
earlier amount reactivates the earlier price instead of making another. A price ClinicSync did not make (a hand-
made product's own, which a clinic's Payment Links may use) is never edited or deactivated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
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
# A product and the price of its `default_price_data` are made by one request: their `created` agree to the second.
MADE_WITH_PRODUCT_S = 1
# Create parameters Stripe keeps unique in an account: a price's lookup key (see lookup_key, Stream.unique_params).
UNIQUE_PARAMS = ("lookup_key",)
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


def lookup_key(product_id: str, fingerprint: str) -> str:
    """The lookup key of a price ClinicSync makes: one per product and content."""
    return f"clinicsync:{product_id}:{fingerprint}"


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
    ours = _our_prices(request)
    in_use = next((price for price in ours if price.current), None)
    if in_use is not None and in_use.fingerprint == wanted and in_use.active:
        if request.observed is None:  # as the record's links say, not looked at: nothing to change
            return [WriteStep("product", request.op, "product", params, stripe_id=request.stripe_id)]
        return _adopt(request, params, spec, in_use, ours)
    return _reprice(request, params, spec, wanted, ours)


def _our_prices(request: PlanRequest) -> list[RoleLinkInfo]:
    """The record's prices: its links, and, when the product was looked at, what Stripe says of them now and of
    the prices of ours another installation made (which one is in use among them is Stripe's word then)."""
    linked = {role.stripe_id: role for role in request.roles if role.role == PRICE_ROLE}
    if request.observed is None:
        return list(linked.values())
    seen = {price.stripe_id: price for price in request.observed}
    stale = [replace(role, current=False) for sid, role in linked.items() if sid not in seen]
    return [*request.observed, *stale]


def _adopt(
    request: PlanRequest, params: dict[str, Any], spec: dict[str, Any], in_use: RoleLinkInfo, ours: list[RoleLinkInfo]
) -> list[WriteStep]:
    """The product's default price is already the one wanted (another installation made it, or the product a lost
    create made, found by its cross-reference): it becomes the record's price instead of a new one; any other price
    of ours still active is deactivated after it."""
    params["default_price"] = in_use.stripe_id  # pins the price the record below describes
    adopted = RoleRecord(PRICE_ROLE, field="default_price", fingerprint=in_use.fingerprint, current=True, active=True)
    step = WriteStep(
        "product",
        request.op,
        "product",
        params,
        stripe_id=request.stripe_id,
        records=(adopted,),
        note=f"price {_describe(spec)} already on the product, kept",
    )
    return [step, *_deactivations(price for price in ours if price.stripe_id != in_use.stripe_id)]


def _deactivations(prices: Iterable[RoleLinkInfo]) -> list[WriteStep]:
    """Deactivate each active price of ours among `prices`, after the new default is set."""
    return [
        WriteStep(
            PRICE_ROLE,
            "update",
            "price",
            {"active": False},
            stripe_id=price.stripe_id,
            records=(RoleRecord(PRICE_ROLE, fingerprint=price.fingerprint, current=False, active=False),),
            note="previous price deactivated",
        )
        for price in prices
        if price.active
    ]


def _reprice(
    request: PlanRequest, params: dict[str, Any], spec: dict[str, Any], wanted: str, ours: list[RoleLinkInfo]
) -> list[WriteStep]:
    """New default price (an earlier one of ours with the same amount, reactivated, or a new one), then the
    other prices of ours deactivated: in that order, as Stripe refuses to archive a product's default price."""
    earlier = next((price for price in ours if price.fingerprint == wanted and not price.current), None)
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
                records=(RoleRecord(PRICE_ROLE, fingerprint=wanted, active=True),),
                note=f"earlier price {_describe(spec)} used again",
            )
        )
        params["default_price"] = earlier.stripe_id
    else:
        price_params = {
            **spec,
            "product": request.stripe_id,
            "metadata": {request.cross_ref_key: request.mapped.source_id},
            # Unique in the account: a second installation making the same price at the same moment is refused,
            # and takes the first one's (outbox: unique_params), so a product never holds two of one price.
            "lookup_key": lookup_key(str(request.stripe_id), wanted),
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
    kept = earlier.stripe_id if earlier is not None else None
    return steps + _deactivations(price for price in ours if price.stripe_id != kept)


def observe(gateway: Any, request: PlanRequest) -> tuple[RoleLinkInfo, ...] | None:
    """The prices of ours on the product being linked or repriced, as Stripe holds them now (which one is its
    default, which are active): those that name the record (a price change made them, here or in another
    installation) and the one made with the product (`default_price_data` carries no metadata), when the product
    names the record. A link may adopt its default; a price change reuses an earlier one and replaces the rest.
    A price a person made (or set as the default by hand) is never among them: it is not ours to deactivate.
    Two listing requests; nothing is read for other updates."""
    if request.op == "update" and not _reprices(request):
        return None
    product = next(iter(gateway.iter_objects("product", None, {"ids": [request.stripe_id]})), None)
    if product is None or (product.get("metadata") or {}).get(request.cross_ref_key) != request.mapped.source_id:
        return ()
    default = product.get("default_price")
    in_use = default.get("id") if isinstance(default, dict) else default
    return tuple(
        RoleLinkInfo(PRICE_ROLE, str(price["id"]), _held(price), current=price["id"] == in_use, active=price["active"])
        for price in gateway.iter_objects("price", None, {"product": request.stripe_id})
        if (price.get("metadata") or {}).get(request.cross_ref_key) == request.mapped.source_id
        or _made_with(price, product)
    )


def _made_with(price: Mapping[str, Any], product: Mapping[str, Any]) -> bool:
    """Whether the price was made in the request that made the product (its `default_price_data`)."""
    created, made = price.get("created"), product.get("created")
    return isinstance(created, int) and isinstance(made, int) and abs(created - made) <= MADE_WITH_PRODUCT_S


def _held(price: Mapping[str, Any]) -> str:
    return fingerprint(price["unit_amount"], price["currency"], price.get("tax_behavior") or "unspecified")


def _reprices(request: PlanRequest) -> bool:
    """Whether the record's price of ours in use is not the one its payload wants (a new price is due)."""
    price = request.params.get("price") or {}
    wanted = fingerprint(price.get("unit_amount"), price.get("currency"), price.get("tax_behavior"))
    current = next((role for role in request.roles if role.role == PRICE_ROLE and role.current), None)
    return current is None or not current.active or current.fingerprint != wanted


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
    record's price makes; and no other price of ours left active (an old one the plan did not deactivate; the
    price of ours the record wants is never among them: when a person made another price the default, it is the
    one a re-push makes the default again)."""
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
        if price_id in ours and price_id != default_id and price.get("active") is True and not _wanted(price, wanted):
            drifts.append(Drift("active", False, True, "price", price_id, Severity.LOW, FixKind.DEACTIVATE))
    return drifts


def _wanted(price: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    return wanted["unit_amount"] is not None and all(same(value, price.get(key)) for key, value in wanted.items())


# A product is retired by making it inactive (Stripe keeps products that have prices, so never deleted).
COMPARISON = Comparison(
    compare=compare,
    archive_fix=FixKind.DEACTIVATE,
    related=(Related("price", "product"),),
    retired=lambda product: product.get("active") is False,
)
