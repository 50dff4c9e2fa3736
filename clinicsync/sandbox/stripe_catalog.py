"""Stripe products and prices for the sandbox: their objects, and the parameters that create and change them.

Prices are immutable where Stripe says so: after creation only `active`, `metadata`, `nickname`, `lookup_key`
and (while it is `unspecified`) `tax_behavior` change; any other parameter on an update is refused as unknown,
which is what Stripe answers ("Received unknown parameter: unit_amount"). The emulator's handlers live in
`stripe_emu.py`; limits come from `clinicsync/stripe_limits.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from clinicsync import stripe_limits as limits
from clinicsync.sandbox.stripe_forms import (
    FieldParser,
    as_boolean,
    as_integer,
    as_string,
    expand_fields,
    invalid,
    metadata_update,
    missing_param,
    nested,
    one_of,
    optional_string,
    parse_fields,
    reject_unknown,
    required_string,
)

TAX_BEHAVIORS = ("exclusive", "inclusive", "unspecified")
INTERVALS = ("day", "week", "month", "year")
# A subset of the currencies Stripe takes (https://stripe.com/docs/currencies): enough for invented clinics, and
# an unknown code is refused as on Stripe.
CURRENCIES = frozenset(
    {"aud", "cad", "chf", "cny", "dkk", "eur", "gbp", "hkd", "inr", "jpy", "krw", "nok", "nzd", "sek", "sgd", "usd"}
)
PRODUCT_EXPANDABLE = frozenset({"default_price"})
PRICE_EXPANDABLE = frozenset({"product"})
_DECIMAL = re.compile(r"\d+(?:\.\d{1,12})?")


# -- the objects --------------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Product:
    """One version of a product (immutable, so the lagging Search index can keep old ones)."""

    id: str
    livemode: bool
    created: int
    updated: int
    changed_at: float  # when this version became current (drives Search visibility)
    name: str
    active: bool = True
    description: str | None = None
    default_price: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    statement_descriptor: str | None = None
    unit_label: str | None = None
    url: str | None = None
    deleted: bool = False

    def render(self) -> dict[str, Any]:
        """The product object, keyed like Stripe's fixture (fields the sandbox never sets are null or empty)."""
        return {
            "id": self.id,
            "object": "product",
            "active": self.active,
            "created": self.created,
            "default_price": self.default_price,
            "description": self.description,
            "images": [],
            "livemode": self.livemode,
            "marketing_features": [],
            "metadata": dict(self.metadata),
            "name": self.name,
            "package_dimensions": None,
            "shippable": None,
            "statement_descriptor": self.statement_descriptor,
            "tax_code": None,
            "type": "service",  # what Stripe gives a product created without a type
            "unit_label": self.unit_label,
            "updated": self.updated,
            "url": self.url,
        }

    def render_deleted(self) -> dict[str, Any]:
        return {"id": self.id, "object": "product", "deleted": True}


@dataclass(slots=True, frozen=True)
class Price:
    """One version of a price. The amount, currency, product and recurrence never change after creation."""

    id: str
    livemode: bool
    created: int
    changed_at: float
    product: str
    currency: str
    amount: Decimal  # unit_amount_decimal: minor units, possibly fractional
    active: bool = True
    nickname: str | None = None
    lookup_key: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    tax_behavior: str = "unspecified"
    recurring: dict[str, Any] | None = None
    deleted: bool = False  # prices are never deleted; the search index reads the flag on every object

    @property
    def type(self) -> str:
        return "one_time" if self.recurring is None else "recurring"

    def render(self) -> dict[str, Any]:
        whole = self.amount == self.amount.to_integral_value()
        return {
            "id": self.id,
            "object": "price",
            "active": self.active,
            "billing_scheme": "per_unit",
            "created": self.created,
            "currency": self.currency,
            "custom_unit_amount": None,
            "livemode": self.livemode,
            "lookup_key": self.lookup_key,
            "metadata": dict(self.metadata),
            "nickname": self.nickname,
            "product": self.product,
            "recurring": _render_recurring(self.recurring),
            "tax_behavior": self.tax_behavior,
            "tiers_mode": None,
            "transform_quantity": None,
            "type": self.type,
            # A sub-cent amount exists only as the decimal; `unit_amount` is then null.
            "unit_amount": int(self.amount) if whole else None,
            "unit_amount_decimal": format(self.amount.normalize(), "f"),
        }


def _render_recurring(recurring: dict[str, Any] | None) -> dict[str, Any] | None:
    if recurring is None:
        return None
    return {**recurring, "meter": None, "trial_period_days": None, "usage_type": "licensed"}


# -- parameters ---------------------------------------------------------------------------------------


def _product_text(name: str, *, unsettable: bool) -> FieldParser:
    cap = limits.PRODUCT_FIELD_MAX_CHARS.get(name)
    if unsettable:
        return lambda value, param: optional_string(value, param, cap)
    return lambda value, param: required_string(value, param, cap)


# The product parameters both create and update take. Per Stripe's API, description, unit_label and url can be
# unset with ""; name and statement_descriptor cannot.
_PRODUCT_FIELDS: dict[str, FieldParser] = {
    "active": as_boolean,
    "description": _product_text("description", unsettable=True),
    "metadata": metadata_update,
    "name": _product_text("name", unsettable=False),
    "statement_descriptor": _product_text("statement_descriptor", unsettable=False),
    "unit_label": _product_text("unit_label", unsettable=True),
    "url": _product_text("url", unsettable=True),
}


def product_changes(params: dict[str, Any], *, creating: bool) -> dict[str, Any]:
    """Validated create/update parameters: field -> new value (metadata as an update). A create may also hold
    `id` (a chosen product id) and `default_price_data` (validated price changes); an update `default_price`."""
    extra = ("id", "default_price_data") if creating else ("default_price",)
    reject_unknown(params, [*_PRODUCT_FIELDS, "expand", *extra])
    expand_fields(params, PRODUCT_EXPANDABLE)
    if creating and "name" not in params:
        raise missing_param("name")
    changes = parse_fields(params, _PRODUCT_FIELDS)
    for name in ("id", "default_price"):
        if name in params:
            changes[name] = required_string(params[name], name)
    if "default_price_data" in params:
        changes["default_price_data"] = price_changes(
            params["default_price_data"], creating=True, within="default_price_data"
        )
    return changes


def _currency(value: Any, param: str) -> str:
    code = as_string(value, param).lower()
    if code not in CURRENCIES:
        raise invalid(
            f"Invalid currency: {code}. Stripe currently supports these currencies: {', '.join(sorted(CURRENCIES))}",
            param=param,
        )
    return code


def _amount_decimal(value: Any, param: str) -> Decimal:
    text = as_string(value, param)
    if not _DECIMAL.fullmatch(text):
        raise invalid(f"Invalid decimal: {text}", param=param)
    amount = Decimal(text)
    if amount > limits.PRICE_MAX_UNIT_AMOUNT:
        raise invalid(f"This value must be less than or equal to {limits.PRICE_MAX_UNIT_AMOUNT}.", param=param)
    return amount


def _recurring(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise invalid(f"Invalid hash: {param}", param=param)
    reject_unknown(value, ("interval", "interval_count"), param)
    if "interval" not in value:
        raise missing_param(nested(param, "interval"))
    count = value.get("interval_count", "1")
    return {
        "interval": one_of(value["interval"], nested(param, "interval"), INTERVALS),
        "interval_count": as_integer(count, nested(param, "interval_count"), minimum=1),
    }


# Price parameters an update may change too.
_PRICE_MUTABLE: dict[str, FieldParser] = {
    "active": as_boolean,
    "lookup_key": lambda value, param: required_string(value, param, limits.PRICE_FIELD_MAX_CHARS["lookup_key"]),
    "metadata": metadata_update,
    "nickname": lambda value, param: required_string(value, param, limits.PRICE_FIELD_MAX_CHARS["nickname"]),
    "tax_behavior": lambda value, param: one_of(value, param, TAX_BEHAVIORS),
    "transfer_lookup_key": as_boolean,
}
# ...and those only a create takes: what a price *is*.
_PRICE_FIXED: dict[str, FieldParser] = {
    "currency": _currency,
    "product": required_string,
    "recurring": _recurring,
    "unit_amount": lambda value, param: as_integer(value, param, minimum=0, maximum=limits.PRICE_MAX_UNIT_AMOUNT),
    "unit_amount_decimal": _amount_decimal,
}
# What an admin `seed`/`add_product` entry may give, as the API would take it.
PRODUCT_ENTRY_FIELDS = frozenset({*_PRODUCT_FIELDS, "id"})
PRICE_ENTRY_FIELDS = frozenset({*_PRICE_MUTABLE, *_PRICE_FIXED} - {"product"})
_DEFAULT_PRICE_DATA = ("currency", "metadata", "recurring", "tax_behavior", "unit_amount", "unit_amount_decimal")


def price_changes(params: Any, *, creating: bool, within: str = "") -> dict[str, Any]:
    """Validated price parameters: field -> value, the amount as `amount` (a Decimal of minor units). `within`
    names the hash they came in (`default_price_data`), which takes fewer parameters and no product."""
    if within and not isinstance(params, dict):
        raise invalid(f"Invalid hash: {within}", param=within)
    every = {**_PRICE_MUTABLE, **_PRICE_FIXED}
    if within:
        allowed: tuple[str, ...] = _DEFAULT_PRICE_DATA
    else:
        allowed = (*_PRICE_MUTABLE, *(_PRICE_FIXED if creating else ()), "expand")
    reject_unknown(params, allowed, within)
    if not within:
        expand_fields(params, PRICE_EXPANDABLE)
    changes = parse_fields(params, {name: every[name] for name in allowed if name in every}, within)
    if not creating:
        return changes
    for name in ("currency",) if within else ("currency", "product"):
        if name not in changes:
            raise missing_param(nested(within, name))
    amounts = [name for name in ("unit_amount", "unit_amount_decimal") if name in changes]
    if len(amounts) == 2:
        raise invalid(
            "You may only specify one of these parameters: unit_amount, unit_amount_decimal.",
            param=nested(within, "unit_amount"),
        )
    if not amounts:
        raise missing_param(nested(within, "unit_amount"))
    changes["amount"] = Decimal(changes.pop(amounts[0]))
    return changes
