"""Stripe payments and invoicing for the sandbox: PaymentIntents, charges, refunds, invoice items, invoices and
credit notes, their parameters, the state transitions Stripe allows, and a record of every email Stripe would
send a customer.

Objects are immutable versions (`BillingObject`) kept in the scope's tables like customers and products, so the
lagging Search index and a whole-store snapshot cover them. `BillingRoutes` holds the request handlers;
`StripeEmulator` (stripe_emu.py) inherits it. Messages are Stripe's where its docs or SDK tests show them; the
others are marked "our wording" (docs/sandbox-stripe.md lists the choices).

Emails (docs/sandbox-stripe.md): Stripe emails a customer (who has an email address) when
- a `send_invoice` invoice is finalized with `auto_advance=true` ("invoice"), or sent with `/send` ("invoice");
- a credit note is created without `email_type=none` (the default is `credit_note`) ("credit_note");
- a payment with a `receipt_email` succeeds, or a charge's `receipt_email` is set ("receipt"), and such a payment
  is refunded ("refund_receipt").
Finalizing with `auto_advance=false`, paying out of band, voiding and deleting send nothing. In test mode Stripe
delivers only to the account's own team addresses; the record holds what live mode would send.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from clinicsync.sandbox.http import Response
from clinicsync.sandbox.stripe_forms import (
    FieldParser,
    StripeApiError,
    apply_metadata,
    as_boolean,
    as_integer,
    as_list,
    as_string,
    created_filter,
    expand_fields,
    invalid,
    metadata_update,
    missing_param,
    one_of,
    optional_string,
    parse_fields,
    reject_unknown,
)

# Stripe's test payment methods (https://docs.stripe.com/testing): brand, last4, and the decline they cause.
TEST_PAYMENT_METHODS: dict[str, tuple[str, str, str | None]] = {
    "pm_card_visa": ("visa", "4242", None),
    "pm_card_visa_debit": ("visa", "5556", None),
    "pm_card_mastercard": ("mastercard", "4444", None),
    "pm_card_amex": ("amex", "8431", None),
    "pm_card_au": ("visa", "0000", None),
    "pm_card_chargeDeclined": ("visa", "0002", "generic_decline"),
    "pm_card_chargeDeclinedInsufficientFunds": ("visa", "9995", "insufficient_funds"),
    "pm_card_chargeDeclinedExpiredCard": ("visa", "0069", "expired_card"),
}
_DECLINE_MESSAGES = {
    "generic_decline": "Your card was declined.",
    "insufficient_funds": "Your card has insufficient funds.",
    "expired_card": "Your card has expired.",
}
# Stripe's minimum charge amounts in minor units (https://docs.stripe.com/currencies#minimum-and-maximum-charge-amounts).
MINIMUM_CHARGE = {"aud": 50, "usd": 50, "nzd": 50, "eur": 50, "gbp": 30, "cad": 50, "sgd": 50}
PAYMENT_INTENT_STATUSES = (
    "requires_payment_method",
    "requires_confirmation",
    "requires_action",
    "processing",
    "requires_capture",
    "canceled",
    "succeeded",
)
_EDITABLE_INTENT = ("requires_payment_method", "requires_confirmation", "requires_action")
REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")
CANCELLATION_REASONS = ("duplicate", "fraudulent", "requested_by_customer", "abandoned")
INVOICE_STATUSES = ("draft", "open", "paid", "uncollectible", "void")
COLLECTION_METHODS = ("charge_automatically", "send_invoice")
CREDIT_NOTE_REASONS = ("duplicate", "fraudulent", "order_change", "product_unsatisfactory")
EMAIL_TYPES = ("credit_note", "none")
_UNEXPECTED_STATE = "payment_intent_unexpected_state"
# Search fields per resource, beside `created` and `metadata['key']` (stripe_emu.SEARCH_FIELDS takes these).
BILLING_SEARCH_FIELDS: dict[str, dict[str, str]] = {
    "payment_intent": {"amount": "number", "currency": "string", "customer": "string", "status": "string"},
    "charge": {
        "amount": "number",
        "currency": "string",
        "customer": "string",
        "disputed": "boolean",
        "payment_intent": "string",
        "refunded": "boolean",
        "status": "string",
    },
    "invoice": {"currency": "string", "customer": "string", "number": "string", "status": "string", "total": "number"},
}
PAYMENT_INTENT_EXPANDABLE = frozenset({"customer", "latest_charge"})
CHARGE_EXPANDABLE = frozenset({"customer", "payment_intent"})
INVOICE_EXPANDABLE = frozenset({"customer"})


@dataclass(slots=True, frozen=True)
class BillingObject:
    """One version of a payment or invoicing object. `fields` holds its own fields (ids of related objects, not
    the objects); it is replaced, never mutated, so older versions stay what Search saw."""

    id: str
    kind: str  # "payment_intent", "charge", "refund", "invoiceitem", "invoice", "credit_note"
    livemode: bool
    created: int
    changed_at: float
    fields: Mapping[str, Any]
    metadata: dict[str, str] = field(default_factory=dict)
    deleted: bool = False

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)

    def search_value(self, name: str) -> Any:
        """A field as Search sees it: stored, or derived as rendered (a charge's `refunded`)."""
        return self.fields[name] if name in self.fields else self.render().get(name)

    def render(self) -> dict[str, Any]:
        """The object alone; an invoice's lines and a charge's refunds need the scope (BillingRoutes renders those)."""
        return _RENDERERS[self.kind](self, [])

    def render_deleted(self) -> dict[str, Any]:
        return {"id": self.id, "object": self.kind, "deleted": True}


def money(cents: int, currency: str) -> str:
    """An amount in a two-decimal currency as Stripe's messages write it: "A$12.50" for Australian dollars."""
    symbol = {"aud": "A$", "usd": "$", "nzd": "NZ$", "eur": "€", "gbp": "£"}.get(currency, "")
    sign = "-" if cents < 0 else ""
    return f"{sign}{symbol}{abs(cents) // 100}.{abs(cents) % 100:02d}" + ("" if symbol else f" {currency}")


def _unexpected(message: str, param: str | None = None) -> StripeApiError:
    return invalid(message, param=param, code=_UNEXPECTED_STATE)


# -- rendering ----------------------------------------------------------------------------------------


def _render_payment_intent(obj: BillingObject, _: list[dict[str, Any]]) -> dict[str, Any]:
    f = obj.fields
    return {
        "id": obj.id,
        "object": "payment_intent",
        "amount": f["amount"],
        "amount_capturable": 0,
        "amount_details": {"tip": {}},
        "amount_received": f["amount"] if f["status"] == "succeeded" else 0,
        "application": None,
        "application_fee_amount": None,
        "automatic_payment_methods": None,
        "canceled_at": f.get("canceled_at"),
        "cancellation_reason": f.get("cancellation_reason"),
        "capture_method": "automatic",
        "client_secret": f"{obj.id}_secret_{f['secret']}",
        "confirmation_method": "automatic",
        "created": obj.created,
        "currency": f["currency"],
        "customer": f.get("customer"),
        "customer_account": None,
        "description": f.get("description"),
        "excluded_payment_method_types": None,
        "last_payment_error": f.get("last_payment_error"),
        "latest_charge": f.get("latest_charge"),
        "livemode": obj.livemode,
        "managed_payments": None,
        "metadata": dict(obj.metadata),
        "next_action": None,
        "on_behalf_of": None,
        "payment_method": f.get("payment_method"),
        "payment_method_configuration_details": None,
        "payment_method_options": {},
        "payment_method_types": ["card"],
        "processing": None,
        "receipt_email": f.get("receipt_email"),
        "review": None,
        "setup_future_usage": None,
        "shipping": None,
        "source": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": f["status"],
        "transfer_data": None,
        "transfer_group": None,
    }


def _billing_details(details: Mapping[str, Any] | None) -> dict[str, Any]:
    details = details or {}
    address = details.get("address") or {}
    return {
        "address": {k: address.get(k) for k in ("city", "country", "line1", "line2", "postal_code", "state")},
        "email": details.get("email"),
        "name": details.get("name"),
        "phone": details.get("phone"),
        "tax_id": None,
    }


def _render_charge(obj: BillingObject, refunds: list[dict[str, Any]]) -> dict[str, Any]:
    f = obj.fields
    succeeded = f["status"] == "succeeded"
    brand, last4 = f["card"]
    decline = f.get("failure_code")
    return {
        "id": obj.id,
        "object": "charge",
        "amount": f["amount"],
        "amount_captured": f["amount"] if succeeded else 0,
        "amount_refunded": f.get("amount_refunded", 0),
        "application": None,
        "application_fee": None,
        "application_fee_amount": None,
        "balance_transaction": "txn_" + obj.id[3:] if succeeded else None,
        "billing_details": _billing_details(f.get("billing_details")),
        "calculated_statement_descriptor": "SANDBOX CLINIC",
        "captured": succeeded,
        "created": obj.created,
        "currency": f["currency"],
        "customer": f.get("customer"),
        "description": f.get("description"),
        "disputed": False,
        "failure_balance_transaction": None,
        "failure_code": decline,
        "failure_message": _DECLINE_MESSAGES.get(decline or "") if decline else None,
        "fraud_details": {},
        "livemode": obj.livemode,
        "metadata": dict(obj.metadata),
        "on_behalf_of": None,
        "outcome": {
            "advice_code": None,
            "network_advice_code": None,
            "network_decline_code": None,
            "network_status": "approved_by_network" if succeeded else "declined_by_network",
            "reason": f.get("decline_code"),
            "risk_level": "normal",
            "seller_message": "Payment complete." if succeeded else "The bank did not return any further details.",
            "type": "authorized" if succeeded else "issuer_declined",
        },
        "paid": succeeded,
        "payment_intent": f.get("payment_intent"),
        "payment_method": f.get("payment_method"),
        "payment_method_details": {
            "card": {
                "amount_authorized": f["amount"] if succeeded else None,
                "authorization_code": None,
                "brand": brand,
                "checks": {"address_line1_check": None, "address_postal_code_check": None, "cvc_check": "pass"},
                "country": "AU",
                "exp_month": 12,
                "exp_year": 2034,
                "extended_authorization": {"status": "disabled"},
                "fingerprint": f"sandbox{last4}",
                "funding": "credit",
                "incremental_authorization": {"status": "unavailable"},
                "installments": None,
                "last4": last4,
                "mandate": None,
                "multicapture": {"status": "unavailable"},
                "network": brand,
                "network_token": {"used": False},
                "network_transaction_id": None,
                "overcapture": {"maximum_amount_capturable": f["amount"], "status": "unavailable"},
                "regulated_status": None,
                "three_d_secure": None,
                "transaction_link_id": None,
                "wallet": None,
            },
            "type": "card",
        },
        "receipt_email": f.get("receipt_email"),
        "receipt_number": None,
        "receipt_url": f"https://pay.stripe.com/receipts/sandbox/{obj.id}",
        "refunded": f.get("amount_refunded", 0) >= f["amount"] and succeeded,
        "refunds": {"object": "list", "data": refunds, "has_more": False, "url": f"/v1/charges/{obj.id}/refunds"},
        "review": None,
        "shipping": None,
        "source": None,
        "source_transfer": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": f["status"],
        "transfer_data": None,
        "transfer_group": None,
    }


def _render_refund(obj: BillingObject, _: list[dict[str, Any]]) -> dict[str, Any]:
    f = obj.fields
    return {
        "id": obj.id,
        "object": "refund",
        "amount": f["amount"],
        "balance_transaction": "txn_" + obj.id[3:],
        "charge": f["charge"],
        "created": obj.created,
        "currency": f["currency"],
        "customer": f.get("customer"),
        "customer_account": None,
        "destination_details": None,
        "metadata": dict(obj.metadata),
        "payment_intent": f.get("payment_intent"),
        "payment_method": f.get("payment_method"),
        "reason": f.get("reason"),
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": "succeeded",
        "transfer_reversal": None,
    }


def _pricing(f: Mapping[str, Any]) -> dict[str, Any]:
    price = f.get("price")
    return {
        "price_details": {"price": price, "product": f.get("product")} if price else None,
        "type": "price_details",
        "unit_amount_decimal": f["unit_amount_decimal"],
    }


def _render_invoiceitem(obj: BillingObject, _: list[dict[str, Any]]) -> dict[str, Any]:
    f = obj.fields
    return {
        "id": obj.id,
        "object": "invoiceitem",
        "amount": f["amount"],
        "currency": f["currency"],
        "customer": f["customer"],
        "customer_account": None,
        "date": obj.created,
        "description": f.get("description"),
        "discountable": True,
        "discounts": [],
        "invoice": f.get("invoice"),
        "livemode": obj.livemode,
        "metadata": dict(obj.metadata),
        "net_amount": f["amount"],
        "parent": None,
        "period": {"end": obj.created, "start": obj.created},
        "pricing": _pricing(f),
        "proration": False,
        "quantity": int(f["quantity"]),  # Stripe truncates a decimal quantity here
        "quantity_decimal": _quantity_text(f["quantity"]),
        "tax_rates": [],
        "test_clock": None,
    }


def render_line(item: BillingObject) -> dict[str, Any]:
    """An invoice item as a line of its invoice ("object": "line_item")."""
    f = item.fields
    return {
        "id": "il_" + item.id[3:],
        "object": "line_item",
        "amount": f["amount"],
        "currency": f["currency"],
        "description": f.get("description"),
        "discount_amounts": [],
        "discountable": True,
        "discounts": [],
        "invoice": f.get("invoice"),
        "livemode": item.livemode,
        "metadata": dict(item.metadata),
        "parent": {
            "invoice_item_details": {
                "invoice_item": item.id,
                "proration": False,
                "proration_details": {"credited_items": None},
                "subscription": None,
            },
            "subscription_item_details": None,
            "type": "invoice_item_details",
        },
        "period": {"end": item.created, "start": item.created},
        "pretax_credit_amounts": [],
        "pricing": _pricing(f),
        "quantity": int(f["quantity"]),
        "quantity_decimal": _quantity_text(f["quantity"]),
        "subscription": None,
        "subtotal": f["amount"],
        "taxes": [],
    }


def _render_invoice(obj: BillingObject, lines: list[dict[str, Any]]) -> dict[str, Any]:
    f = obj.fields
    transitions = f.get("transitions") or {}
    return {
        "id": obj.id,
        "object": "invoice",
        "account_country": "AU",
        "account_name": f.get("account_name"),
        "account_tax_ids": None,
        "amount_due": f["amount_due"],
        "amount_overpaid": 0,
        "amount_paid": f["amount_paid"],
        "amount_remaining": f["amount_remaining"],
        "amount_shipping": 0,
        "application": None,
        "attempt_count": 0,
        "attempted": f["status"] not in ("draft",),
        "auto_advance": f["auto_advance"],
        "automatic_tax": {
            "disabled_reason": None,
            "enabled": False,
            "liability": None,
            "provider": None,
            "status": None,
        },
        "automatically_finalizes_at": None,
        "billing_reason": "manual",
        "collection_method": f["collection_method"],
        "created": obj.created,
        "currency": f["currency"],
        "custom_fields": None,
        "customer": f["customer"],
        "customer_account": None,
        "customer_address": None,
        "customer_email": f.get("customer_email"),
        "customer_name": f.get("customer_name"),
        "customer_phone": None,
        "customer_shipping": None,
        "customer_tax_exempt": "none",
        "customer_tax_ids": [],
        "default_payment_method": None,
        "default_source": None,
        "default_tax_rates": [],
        "description": f.get("description"),
        "discounts": [],
        "due_date": f.get("due_date"),
        "effective_at": transitions.get("finalized_at"),
        "ending_balance": None if f["status"] == "draft" else 0,
        "footer": f.get("footer"),
        "from_invoice": None,
        "hosted_invoice_url": f.get("hosted_invoice_url"),
        "invoice_pdf": f.get("invoice_pdf"),
        "issuer": {"type": "self"},
        "last_finalization_error": None,
        "latest_revision": None,
        "lines": {"object": "list", "data": lines, "has_more": False, "url": f"/v1/invoices/{obj.id}/lines"},
        "livemode": obj.livemode,
        "metadata": dict(obj.metadata),
        "next_payment_attempt": None,
        "number": f.get("number"),
        "on_behalf_of": None,
        "parent": None,
        "payment_settings": {"default_mandate": None, "payment_method_options": None, "payment_method_types": None},
        "period_end": obj.created,
        "period_start": obj.created,
        "post_payment_credit_notes_amount": f.get("post_payment_credit_notes_amount", 0),
        "pre_payment_credit_notes_amount": f.get("pre_payment_credit_notes_amount", 0),
        "receipt_number": None,
        "rendering": None,
        "shipping_cost": None,
        "shipping_details": None,
        "starting_balance": 0,
        "statement_descriptor": None,
        "status": f["status"],
        "status_transitions": {
            "finalized_at": transitions.get("finalized_at"),
            "marked_uncollectible_at": transitions.get("marked_uncollectible_at"),
            "paid_at": transitions.get("paid_at"),
            "voided_at": transitions.get("voided_at"),
        },
        "subscription": None,
        "subtotal": f["total"],
        "subtotal_excluding_tax": f["total"],
        "test_clock": None,
        "total": f["total"],
        "total_discount_amounts": [],
        "total_excluding_tax": f["total"],
        "total_pretax_credit_amounts": [],
        "total_taxes": [],
        "webhooks_delivered_at": obj.created,
    }


def _render_credit_note(obj: BillingObject, _: list[dict[str, Any]]) -> dict[str, Any]:
    f = obj.fields
    line = {
        "id": "cnli_" + obj.id[3:],
        "object": "credit_note_line_item",
        "amount": f["amount"],
        "description": f.get("memo") or "Credit",
        "discount_amount": 0,
        "discount_amounts": [],
        "livemode": obj.livemode,
        "quantity": 1,
        "type": "custom_line_item",
        "unit_amount": f["amount"],
        "unit_amount_decimal": str(f["amount"]),
    }
    return {
        "id": obj.id,
        "object": "credit_note",
        "amount": f["amount"],
        "amount_shipping": 0,
        "created": obj.created,
        "currency": f["currency"],
        "customer": f["customer"],
        "customer_account": None,
        "customer_balance_transaction": f.get("customer_balance_transaction"),
        "discount_amount": 0,
        "discount_amounts": [],
        "effective_at": obj.created,
        "invoice": f["invoice"],
        "lines": {"object": "list", "data": [line], "has_more": False, "url": f"/v1/credit_notes/{obj.id}/lines"},
        "livemode": obj.livemode,
        "memo": f.get("memo"),
        "metadata": dict(obj.metadata),
        "number": f["number"],
        "out_of_band_amount": f.get("out_of_band_amount"),
        "pdf": f"https://pay.stripe.com/credit_notes/sandbox/{obj.id}/pdf",
        "post_payment_amount": f["post_payment_amount"],
        "pre_payment_amount": f["pre_payment_amount"],
        "pretax_credit_amounts": [],
        "reason": f.get("reason"),
        "refunds": [{"amount_refunded": f["amount"], "refund": r} for r in f.get("refunds", [])],
        "shipping_cost": None,
        "status": f["status"],
        "subtotal": f["amount"],
        "subtotal_excluding_tax": f["amount"],
        "total": f["amount"],
        "total_excluding_tax": f["amount"],
        "total_taxes": [],
        "type": "post_payment" if f["post_payment_amount"] else "pre_payment",
        "voided_at": f.get("voided_at"),
    }


_RENDERERS: dict[str, Callable[[BillingObject, list[dict[str, Any]]], dict[str, Any]]] = {
    "payment_intent": _render_payment_intent,
    "charge": _render_charge,
    "refund": _render_refund,
    "invoiceitem": _render_invoiceitem,
    "invoice": _render_invoice,
    "credit_note": _render_credit_note,
}


# -- parameters ---------------------------------------------------------------------------------------


def _currency(value: Any, param: str) -> str:
    from clinicsync.sandbox.stripe_catalog import CURRENCIES

    code = as_string(value, param).lower()
    if code not in CURRENCIES:
        raise invalid(f"Invalid currency: {code}.", param=param)
    return code


def _amount(value: Any, param: str) -> int:
    return as_integer(value, param, minimum=0, maximum=99_999_999)


def _signed_amount(value: Any, param: str) -> int:
    return as_integer(value, param, minimum=-99_999_999, maximum=99_999_999)


def _text(cap: int) -> FieldParser:
    return lambda value, param: optional_string(value, param, cap)


_INTENT_COMMON: dict[str, FieldParser] = {
    "amount": _amount,
    "currency": _currency,
    "customer": lambda v, p: optional_string(v, p),
    "description": _text(1000),
    "metadata": metadata_update,
    "payment_method": lambda v, p: optional_string(v, p),
    "receipt_email": _text(800),
}
_INTENT_CREATE = {**_INTENT_COMMON, "confirm": as_boolean}


def intent_changes(params: dict[str, Any], *, creating: bool) -> dict[str, Any]:
    allowed = _INTENT_CREATE if creating else _INTENT_COMMON
    extra = ("expand", "payment_method_types") if creating else ("expand",)
    reject_unknown(params, [*allowed, *extra])
    if creating:
        for name in ("amount", "currency"):
            if name not in params:
                raise missing_param(name)
    if "payment_method_types" in params:
        kinds = [as_string(k, "payment_method_types") for k in as_list(params["payment_method_types"], "p")]
        if kinds != ["card"]:
            raise invalid("The sandbox takes card payments only (payment_method_types[]=card).", "payment_method_types")
    return parse_fields(params, allowed)


def _check_minimum(amount: int, currency: str) -> None:
    minimum = MINIMUM_CHARGE.get(currency, 50)
    if amount < minimum:
        raise invalid(
            f"Amount must be at least {money(minimum, currency)} {currency}", param="amount", code="amount_too_small"
        )


_INVOICE_FIELDS: dict[str, FieldParser] = {
    "auto_advance": as_boolean,
    "collection_method": lambda v, p: one_of(v, p, COLLECTION_METHODS),
    "currency": _currency,
    "days_until_due": lambda v, p: as_integer(v, p, minimum=0, maximum=1825),
    "description": _text(1500),
    "due_date": lambda v, p: as_integer(v, p, minimum=0),
    "footer": _text(5000),
    "metadata": metadata_update,
}
_ITEM_FIELDS: dict[str, FieldParser] = {
    "amount": _signed_amount,
    "currency": _currency,
    "description": _text(5000),
    "metadata": metadata_update,
    "quantity": lambda v, p: Decimal(as_integer(v, p, minimum=1)),
    "quantity_decimal": lambda v, p: _positive_decimal(v, p),
    "unit_amount_decimal": lambda v, p: as_string(v, p),
}


# -- the handlers -------------------------------------------------------------------------------------


class BillingRoutes:
    """Request handlers for the payment and invoicing resources; mixed into StripeEmulator, whose helpers
    (`_find`, `_live`, `_list`, `_search`, `_new_id`, `clock`, ...) they use."""

    # Provided by StripeEmulator.
    clock: Callable[[], float]
    search_delay_s: float
    _find: Callable[..., Any]
    _live: Callable[..., Any]
    _list: Callable[..., Response]
    _search: Callable[..., Response]
    _new_id: Callable[..., str]
    _random: Callable[..., str]
    _change_customer: Callable[..., Any]

    # -- versions and rendering ------------------------------------------------------------------------

    def _billing_new(self, scope: Any, kind: str, prefix: str, fields: dict[str, Any], **kw: Any) -> BillingObject:
        metadata = apply_metadata({}, kw.pop("metadata", None) or {})
        changed_at = kw.pop("changed_at", self.clock())
        created = kw.pop("created", None)
        obj = BillingObject(
            id=kw.pop("object_id", None) or self._new_id(scope.table(kind), prefix, 24),
            kind=kind,
            livemode=scope.livemode,
            created=int(self.clock()) if created is None else int(created),
            changed_at=changed_at,
            fields=fields,
            metadata=metadata,
        )
        scope.table(kind).insert(obj)
        return obj

    def _billing_change(
        self,
        scope: Any,
        obj: BillingObject,
        fields: Mapping[str, Any] | None = None,
        metadata: Any = ...,
        changed_at: float | None = None,
    ) -> BillingObject:
        """A new current version of `obj` with `fields` changed and, when given, a metadata update applied."""
        now = self.clock() if changed_at is None else changed_at
        replace: dict[str, Any] = {"changed_at": now, "fields": {**obj.fields, **(fields or {})}}
        if metadata is not ...:
            replace["metadata"] = apply_metadata(obj.metadata, metadata)
        updated = dataclasses.replace(obj, **replace)
        scope.table(obj.kind).records[obj.id].push(updated, now - self.search_delay_s)
        return updated

    def _current(self, scope: Any, kind: str, object_id: str) -> BillingObject:
        found: BillingObject = scope.table(kind).records[object_id].current
        return found

    def render_billing(self, scope: Any, obj: BillingObject, expand: Any = ()) -> dict[str, Any]:
        wanted = {name.removeprefix("data.") for name in expand}
        if obj.kind == "invoice":
            items = [self._current(scope, "invoiceitem", i) for i in obj.fields.get("items", ())]
            body = _render_invoice(obj, [render_line(i) for i in items if not i.deleted])
        elif obj.kind == "charge":
            refunds = [_render_refund(self._current(scope, "refund", r), []) for r in obj.fields.get("refunds", ())]
            body = _render_charge(obj, list(reversed(refunds)))
        else:
            body = obj.render()
        for name in wanted:
            target = body.get(name)
            if isinstance(target, str) and name == "customer":
                body[name] = scope.customers.records[target].current.render()
            elif isinstance(target, str) and name in ("latest_charge", "payment_intent"):
                kind = "charge" if name == "latest_charge" else "payment_intent"
                body[name] = self.render_billing(scope, self._current(scope, kind, target))
        return body

    def _answer(self, call: Any, obj: BillingObject, expandable: frozenset[str], mutated: bool = True) -> Response:
        expand = expand_fields(call.params, expandable)
        return Response(200, self.render_billing(call.scope, obj, expand), mutated=mutated)

    def _billing_retrieve(self, call: Any, kind: str, expandable: frozenset[str] = frozenset()) -> Response:
        reject_unknown(call.params, ["expand"])
        obj = self._live(call.scope, kind, call.ident or "")
        return self._answer(call, obj, expandable, mutated=False)

    def _billing_list(
        self,
        call: Any,
        kind: str,
        url: str,
        filters: Mapping[str, Callable[[Any, str], Callable[[BillingObject], bool]]],
        expandable: frozenset[str] = frozenset(),
    ) -> Response:
        """One page of `kind`, newest first; each parameter in `filters` turns its value into a test."""
        params = call.params
        reject_unknown(params, ["limit", "starting_after", "ending_before", "expand", "created", *filters])
        expand = expand_fields(params, frozenset(f"data.{name}" for name in expandable))
        created = created_filter(params.get("created"))
        tests = [make(params[name], name) for name, make in filters.items() if name in params]
        table = call.scope.table(kind)

        def keep(obj: BillingObject) -> bool:
            return created(obj.created) and all(test(obj) for test in tests)

        response = self._list(call, table, table.order, keep, [], url)
        page = [table.records[item["id"]].current for item in response.body["data"]]
        response.body["data"] = [self.render_billing(call.scope, obj, expand) for obj in page]
        return response

    def _customer_of(self, scope: Any, customer_id: str | None, param: str = "customer") -> Any:
        if customer_id is None:
            return None
        return self._live(scope, "customer", customer_id, param=param, status=400)

    def _email(self, scope: Any, kind: str, to: str | None, obj: BillingObject, customer: str | None) -> None:
        """Record an email Stripe would send (nothing is recorded without an address to send it to)."""
        if to:
            scope.emails.append(
                {
                    "type": kind,
                    "to": to,
                    "object": obj.kind,
                    "object_id": obj.id,
                    "customer": customer,
                    "livemode": scope.livemode,
                    "at": int(self.clock()),
                }
            )

    # -- PaymentIntents ---------------------------------------------------------------------------------

    def _create_payment_intent(self, call: Any) -> Response:
        changes = intent_changes(call.params, creating=True)
        scope = call.scope
        _check_minimum(changes["amount"], changes["currency"])
        customer = self._customer_of(scope, changes.get("customer"))
        metadata = changes.pop("metadata", None)
        confirm = changes.pop("confirm", False)
        payment_method = changes.pop("payment_method", None)
        if payment_method is not None:
            payment_method = self._attach_payment_method(payment_method)
        elif confirm:  # refused before anything is made, so a retry cannot leave a stray intent
            raise _unexpected(
                "You cannot confirm this PaymentIntent because it's missing a payment method. You can either update"
                " the PaymentIntent with a payment method and then confirm it again, or confirm it again directly"
                " with a payment method.",
                param="payment_method",
            )
        fields = {
            **changes,
            "customer": customer.id if customer else None,
            "payment_method": payment_method,
            "status": "requires_confirmation" if payment_method else "requires_payment_method",
            "secret": self._random(24),
        }
        intent = self._billing_new(scope, "payment_intent", "pi_", fields, metadata=metadata)
        if confirm:
            intent = self._confirm_intent(call, intent, {})
        return self._answer(call, intent, PAYMENT_INTENT_EXPANDABLE)

    def _attach_payment_method(self, name: str) -> str:
        """A test payment method such as pm_card_visa. Stripe would clone it into a new `pm_…` id; the sandbox keeps
        the test name as the intent's and charge's `payment_method`, so a confirm knows the card."""
        if name in TEST_PAYMENT_METHODS:
            return name
        raise invalid(f"No such PaymentMethod: '{name}'", param="payment_method", code="resource_missing")

    def _retrieve_payment_intent(self, call: Any) -> Response:
        return self._billing_retrieve(call, "payment_intent", PAYMENT_INTENT_EXPANDABLE)

    def _update_payment_intent(self, call: Any) -> Response:
        changes = intent_changes(call.params, creating=False)
        scope = call.scope
        intent = self._live(scope, "payment_intent", call.ident or "")
        fixed = sorted(k for k in changes if k in ("amount", "currency", "customer", "payment_method"))
        if fixed and intent.get("status") not in _EDITABLE_INTENT:
            raise _unexpected(
                f"You cannot update this PaymentIntent's {fixed[0]} because it has a status of {intent.get('status')}."
                " Updates to amount, currency, customer and payment_method are only allowed while it has a status of"
                " requires_payment_method, requires_confirmation or requires_action.",  # our wording
                param=fixed[0],
            )
        if "customer" in changes:
            customer = self._customer_of(scope, changes["customer"])
            changes["customer"] = customer.id if customer else None
        if changes.get("payment_method"):
            changes["payment_method"] = self._attach_payment_method(changes["payment_method"])
            changes["status"] = "requires_confirmation"
        if "amount" in changes:
            _check_minimum(changes["amount"], changes.get("currency", intent.get("currency")))
        metadata = changes.pop("metadata", ...)
        updated = self._billing_change(scope, intent, changes, metadata)
        if "receipt_email" in changes and changes["receipt_email"] and updated.get("latest_charge"):
            charge = self._current(scope, "charge", updated.get("latest_charge"))
            if charge.get("status") == "succeeded":
                charge = self._billing_change(scope, charge, {"receipt_email": changes["receipt_email"]})
                self._email(scope, "receipt", changes["receipt_email"], charge, charge.get("customer"))
        return self._answer(call, updated, PAYMENT_INTENT_EXPANDABLE)

    def _confirm_payment_intent(self, call: Any) -> Response:
        reject_unknown(call.params, ["payment_method", "receipt_email", "expand", "return_url"])
        intent = self._live(call.scope, "payment_intent", call.ident or "")
        extra = parse_fields(call.params, {"payment_method": lambda v, p: as_string(v, p), "receipt_email": _text(800)})
        return self._answer(call, self._confirm_intent(call, intent, extra), PAYMENT_INTENT_EXPANDABLE)

    def _confirm_intent(self, call: Any, intent: BillingObject, extra: dict[str, Any]) -> BillingObject:
        scope = call.scope
        status = intent.get("status")
        if status == "succeeded":
            raise _unexpected(
                "You cannot confirm this PaymentIntent because it has already succeeded after being previously"
                " confirmed."
            )
        if status == "canceled":
            raise _unexpected(
                "You cannot confirm this PaymentIntent because it has a status of canceled. Only a PaymentIntent with"
                " one of the following statuses may be confirmed: requires_confirmation, requires_action,"
                " requires_payment_method."
            )
        payment_method = intent.get("payment_method")
        if extra.get("payment_method"):
            payment_method = self._attach_payment_method(extra["payment_method"])
        if payment_method is None:
            raise _unexpected(
                "You cannot confirm this PaymentIntent because it's missing a payment method. You can either update"
                " the PaymentIntent with a payment method and then confirm it again, or confirm it again directly"
                " with a payment method."
            )
        receipt_email = extra.get("receipt_email") or intent.get("receipt_email")
        brand, last4, decline = TEST_PAYMENT_METHODS[payment_method]
        charge = self._billing_new(
            scope,
            "charge",
            "ch_",
            {
                "amount": intent.get("amount"),
                "currency": intent.get("currency"),
                "customer": intent.get("customer"),
                "description": intent.get("description"),
                "payment_intent": intent.id,
                "payment_method": payment_method,
                "card": (brand, last4),
                "status": "failed" if decline else "succeeded",
                "failure_code": ("expired_card" if decline == "expired_card" else "card_declined") if decline else None,
                "decline_code": decline,
                "receipt_email": receipt_email,
                "billing_details": {},
                "amount_refunded": 0,
                "refunds": (),
            },
        )
        if decline:
            error = {
                "charge": charge.id,
                "code": charge.get("failure_code"),
                "decline_code": decline,
                "message": _DECLINE_MESSAGES[decline],
                "type": "card_error",
            }
            failed = self._billing_change(
                scope,
                intent,
                {
                    "status": "requires_payment_method",
                    "payment_method": None,
                    "latest_charge": charge.id,
                    "last_payment_error": error,
                },
            )
            raise StripeApiError(
                402,
                "card_error",
                _DECLINE_MESSAGES[decline],
                code=charge.get("failure_code"),
                extra={
                    "charge": charge.id,
                    "decline_code": decline,
                    "payment_intent": self.render_billing(scope, failed),
                },
                committed=True,
            )
        done = self._billing_change(
            scope,
            intent,
            {
                "status": "succeeded",
                "payment_method": payment_method,
                "latest_charge": charge.id,
                "last_payment_error": None,
                "receipt_email": receipt_email,
            },
        )
        self._email(scope, "receipt", receipt_email, charge, charge.get("customer"))
        return done

    def _cancel_payment_intent(self, call: Any) -> Response:
        reject_unknown(call.params, ["cancellation_reason", "expand"])
        intent = self._live(call.scope, "payment_intent", call.ident or "")
        if intent.get("status") not in (*_EDITABLE_INTENT, "requires_capture", "processing"):
            raise _unexpected(
                f"You cannot cancel this PaymentIntent because it has a status of {intent.get('status')}. Only a"
                " PaymentIntent with one of the following statuses may be canceled: requires_payment_method,"
                " requires_capture, requires_confirmation, requires_action, processing."
            )
        reason = call.params.get("cancellation_reason")
        if reason is not None:
            reason = one_of(reason, "cancellation_reason", CANCELLATION_REASONS)
        fields = {"status": "canceled", "canceled_at": int(self.clock()), "cancellation_reason": reason}
        return self._answer(call, self._billing_change(call.scope, intent, fields), PAYMENT_INTENT_EXPANDABLE)

    def _list_payment_intents(self, call: Any) -> Response:
        return self._billing_list(
            call, "payment_intent", "/v1/payment_intents", {"customer": _equals("customer")}, PAYMENT_INTENT_EXPANDABLE
        )

    def _search_payment_intents(self, call: Any) -> Response:
        return self._search(call, "payment_intent", PAYMENT_INTENT_EXPANDABLE)

    # -- charges ----------------------------------------------------------------------------------------

    def _retrieve_charge(self, call: Any) -> Response:
        return self._billing_retrieve(call, "charge", CHARGE_EXPANDABLE)

    def _update_charge(self, call: Any) -> Response:
        reject_unknown(call.params, ["description", "metadata", "receipt_email", "expand"])
        changes = parse_fields(
            call.params, {"description": _text(1000), "metadata": metadata_update, "receipt_email": _text(800)}
        )
        charge = self._live(call.scope, "charge", call.ident or "")
        metadata = changes.pop("metadata", ...)
        updated = self._billing_change(call.scope, charge, changes, metadata)
        if changes.get("receipt_email") and updated.get("status") == "succeeded":
            # Stripe: setting receipt_email on a charge sends a receipt to that address.
            self._email(call.scope, "receipt", changes["receipt_email"], updated, updated.get("customer"))
        return self._answer(call, updated, CHARGE_EXPANDABLE)

    def _list_charges(self, call: Any) -> Response:
        filters = {"customer": _equals("customer"), "payment_intent": _equals("payment_intent")}
        return self._billing_list(call, "charge", "/v1/charges", filters, CHARGE_EXPANDABLE)

    def _search_charges(self, call: Any) -> Response:
        return self._search(call, "charge", CHARGE_EXPANDABLE)

    # -- refunds ----------------------------------------------------------------------------------------

    def _create_refund(self, call: Any) -> Response:
        params = call.params
        reject_unknown(params, ["amount", "charge", "payment_intent", "metadata", "reason", "expand"])
        fields = parse_fields(
            params,
            {
                "amount": lambda v, p: as_integer(v, p, minimum=1),
                "charge": lambda v, p: as_string(v, p),
                "payment_intent": lambda v, p: as_string(v, p),
                "metadata": metadata_update,
                "reason": lambda v, p: one_of(v, p, REFUND_REASONS),
            },
        )
        scope = call.scope
        charge = self._refundable_charge(scope, fields)
        left = charge.get("amount") - charge.get("amount_refunded")
        if left <= 0:
            raise invalid(f"Charge {charge.id} has already been refunded.", code="charge_already_refunded")
        amount = fields.get("amount", left)
        if amount > left:
            currency = charge.get("currency")
            raise invalid(
                f"Refund amount ({money(amount, currency)}) is greater than unrefunded amount on charge "
                f"({money(left, currency)})",
                param="amount",
            )
        refund = self._refund(scope, charge, amount, fields.get("reason"), fields.get("metadata"))
        return self._answer(call, refund, frozenset())

    def _refundable_charge(self, scope: Any, fields: dict[str, Any]) -> BillingObject:
        if "charge" in fields and "payment_intent" in fields:
            raise invalid("You may only specify one of these parameters: charge, payment_intent.", param="charge")
        if "payment_intent" in fields:
            intent = self._live(scope, "payment_intent", fields["payment_intent"], param="payment_intent", status=400)
            if intent.get("status") != "succeeded":
                raise invalid(
                    f"This PaymentIntent ({intent.id}) does not have a successful charge to refund.",
                    param="payment_intent",
                )
            return self._current(scope, "charge", intent.get("latest_charge"))
        if "charge" not in fields:
            raise invalid(
                "One of the following parameters is required: charge, payment_intent.", code="parameter_missing"
            )
        charge: BillingObject = self._live(scope, "charge", fields["charge"], param="charge", status=400)
        if charge.get("status") != "succeeded":
            raise invalid(f"Charge {charge.id} has not succeeded, so it cannot be refunded.", param="charge")
        return charge

    def _refund(
        self, scope: Any, charge: BillingObject, amount: int, reason: str | None, metadata: Any, **kw: Any
    ) -> BillingObject:
        refund = self._billing_new(
            scope,
            "refund",
            "re_",
            {
                "amount": amount,
                "charge": charge.id,
                "currency": charge.get("currency"),
                "customer": charge.get("customer"),
                "payment_intent": charge.get("payment_intent"),
                "payment_method": charge.get("payment_method"),
                "reason": reason,
            },
            metadata=metadata,
            **kw,
        )
        changed_at = kw.get("changed_at")
        updated = self._billing_change(
            scope,
            charge,
            {"amount_refunded": charge.get("amount_refunded") + amount, "refunds": (*charge.get("refunds"), refund.id)},
            changed_at=changed_at,
        )
        self._email(scope, "refund_receipt", updated.get("receipt_email"), refund, charge.get("customer"))
        return refund

    def _retrieve_refund(self, call: Any) -> Response:
        return self._billing_retrieve(call, "refund")

    def _update_refund(self, call: Any) -> Response:
        reject_unknown(call.params, ["metadata", "expand"])
        refund = self._live(call.scope, "refund", call.ident or "")
        changes = parse_fields(call.params, {"metadata": metadata_update})
        updated = self._billing_change(call.scope, refund, {}, changes.get("metadata", ...))
        return self._answer(call, updated, frozenset())

    def _list_refunds(self, call: Any) -> Response:
        filters = {"charge": _equals("charge"), "payment_intent": _equals("payment_intent")}
        return self._billing_list(call, "refund", "/v1/refunds", filters)

    # -- invoice items ----------------------------------------------------------------------------------

    def _create_invoiceitem(self, call: Any) -> Response:
        params = call.params
        reject_unknown(params, [*_ITEM_FIELDS, "customer", "invoice", "pricing", "expand"])
        if "customer" not in params:
            raise missing_param("customer")
        scope = call.scope
        customer = self._customer_of(scope, as_string(params["customer"], "customer"))
        fields = self._item_fields(scope, params, None)
        metadata = fields.pop("metadata", None)
        invoice = None
        if "invoice" in params:
            invoice = self._live(scope, "invoice", as_string(params["invoice"], "invoice"), param="invoice", status=400)
            self._check_draft_for_items(invoice)
            if invoice.get("customer") != customer.id:
                raise invalid(  # our wording
                    f"The invoice item's customer ({customer.id}) must be the invoice's customer "
                    f"({invoice.get('customer')}).",
                    param="invoice",
                )
            if fields["currency"] != invoice.get("currency"):
                raise invalid(
                    f"The currency of the invoice item ({fields['currency']}) must match the invoice's currency "
                    f"({invoice.get('currency')}).",  # our wording
                    param="currency",
                )
        fields.update(customer=customer.id, invoice=invoice.id if invoice else None)
        item = self._billing_new(scope, "invoiceitem", "ii_", fields, metadata=metadata)
        if invoice is not None:
            self._set_invoice_items(scope, invoice, [*invoice.get("items"), item.id])
        return self._answer(call, item, frozenset())

    def _item_fields(self, scope: Any, params: dict[str, Any], current: BillingObject | None) -> dict[str, Any]:
        """amount, or a price (`pricing[price]`), or unit_amount_decimal × quantity; currency from the price."""
        fields = parse_fields(params, _ITEM_FIELDS)
        price_id = None
        if "pricing" in params:
            pricing = params["pricing"]
            if not isinstance(pricing, dict):
                raise invalid("Invalid hash: pricing", param="pricing")
            reject_unknown(pricing, ["price"], "pricing")
            price_id = as_string(pricing.get("price", ""), "pricing[price]")
        given = [n for n in ("amount", "unit_amount_decimal") if n in fields] + (["pricing"] if price_id else [])
        if len(given) > 1:
            raise invalid(f"You may only specify one of these parameters: {', '.join(given)}.", param=given[1])
        if current is None and not given:
            raise invalid(
                "You must specify either `amount`, `pricing[price]` or `unit_amount_decimal`.", param="amount"
            )
        if "quantity" in fields and "quantity_decimal" in fields:
            raise invalid("You may only specify one of these parameters: quantity, quantity_decimal.", "quantity")
        quantity = fields.pop("quantity_decimal", fields.get("quantity"))
        if quantity is None:
            quantity = current.get("quantity") if current else Decimal(1)
        out = {k: v for k, v in fields.items() if k != "unit_amount_decimal"}
        out["quantity"] = quantity
        if price_id:
            price = self._live(scope, "price", price_id, param="pricing[price]", status=400)
            if not price.active:
                raise invalid(f"The price specified ({price.id}) is inactive.", param="pricing[price]")
            unit = price.amount
            out.update(price=price.id, product=price.product, currency=price.currency)
        elif "unit_amount_decimal" in fields:
            try:
                unit = Decimal(fields["unit_amount_decimal"])
            except InvalidOperation:
                raise invalid(f"Invalid decimal: {fields['unit_amount_decimal']}", "unit_amount_decimal") from None
            out.update(price=None, product=None)
        elif "amount" in fields:
            # `amount` is the line's total (it may be negative: a discount or rounding line); quantity is then 1.
            unit = None
            out.update(price=None, product=None, quantity=Decimal(1), unit_amount_decimal=str(fields["amount"]))
        else:
            unit = None
        if unit is not None:
            total = unit * quantity
            if total != total.to_integral_value():
                # A fractional line is rounded to the minor unit; Stripe does not document how, so half to even.
                total = total.quantize(1, ROUND_HALF_EVEN)
            out["amount"] = int(total)
            out["unit_amount_decimal"] = format(unit.normalize(), "f")
        if current is None and "currency" not in out:
            raise missing_param("currency")
        return out

    def _check_draft_for_items(self, invoice: BillingObject) -> None:
        if invoice.get("status") != "draft":
            raise invalid(  # our wording; Stripe refuses edits to a finalized invoice's lines
                f"Invoice {invoice.id} is no longer editable: invoice items can only be added to, changed on or "
                f"removed from a draft invoice, and this one is {invoice.get('status')}.",
                param="invoice",
                code="invoice_not_editable",
            )

    def _retrieve_invoiceitem(self, call: Any) -> Response:
        return self._billing_retrieve(call, "invoiceitem")

    def _update_invoiceitem(self, call: Any) -> Response:
        params = call.params
        reject_unknown(params, [*_ITEM_FIELDS, "pricing", "expand"])
        scope = call.scope
        item = self._live(scope, "invoiceitem", call.ident or "")
        if item.get("invoice") and set(params) - {"metadata", "expand"}:
            self._check_draft_for_items(self._current(scope, "invoice", item.get("invoice")))
        fields = self._item_fields(scope, params, item)
        metadata = fields.pop("metadata", ...)
        updated = self._billing_change(scope, item, fields, metadata)
        if updated.get("invoice"):
            invoice = self._current(scope, "invoice", updated.get("invoice"))
            self._set_invoice_items(scope, invoice, list(invoice.get("items")))
        return self._answer(call, updated, frozenset())

    def _delete_invoiceitem(self, call: Any) -> Response:
        reject_unknown(call.params, [])
        scope = call.scope
        item = self._live(scope, "invoiceitem", call.ident or "")
        if item.get("invoice"):
            invoice = self._current(scope, "invoice", item.get("invoice"))
            self._check_draft_for_items(invoice)
            self._set_invoice_items(scope, invoice, [i for i in invoice.get("items") if i != item.id])
        gone = dataclasses.replace(item, changed_at=self.clock(), deleted=True)
        scope.table("invoiceitem").records[item.id].push(gone, self.clock() - self.search_delay_s)
        return Response(200, item.render_deleted(), mutated=True)

    def _list_invoiceitems(self, call: Any) -> Response:
        def pending(value: Any, param: str) -> Callable[[BillingObject], bool]:
            wanted = as_boolean(value, param)
            return lambda obj: (obj.get("invoice") is None) == wanted

        filters = {"customer": _equals("customer"), "invoice": _equals("invoice"), "pending": pending}
        return self._billing_list(call, "invoiceitem", "/v1/invoiceitems", filters)

    # -- invoices ---------------------------------------------------------------------------------------

    def _create_invoice(self, call: Any) -> Response:
        params = call.params
        reject_unknown(params, [*_INVOICE_FIELDS, "customer", "pending_invoice_items_behavior", "number", "expand"])
        if "customer" not in params:
            raise missing_param("customer")
        scope = call.scope
        customer = self._customer_of(scope, as_string(params["customer"], "customer"))
        fields = parse_fields(params, _INVOICE_FIELDS)
        metadata = fields.pop("metadata", None)
        method = fields.setdefault("collection_method", "charge_automatically")
        self._check_due(method, fields)
        behavior = "exclude"
        if "pending_invoice_items_behavior" in params:
            name = "pending_invoice_items_behavior"
            behavior = one_of(params[name], name, ("exclude", "include"))
        fields.setdefault("currency", "aud")
        fields.setdefault("auto_advance", False)  # API-made invoices do not advance unless asked (Stripe's docs)
        fields.update(
            customer=customer.id,
            customer_email=customer.email,
            customer_name=customer.name,
            status="draft",
            items=(),
            total=0,
            amount_due=0,
            amount_paid=0,
            amount_remaining=0,
            custom_number=optional_string(params["number"], "number", 26) if "number" in params else None,
            credit_notes=0,
        )
        invoice = self._billing_new(scope, "invoice", "in_", fields, metadata=metadata)
        if behavior == "include":
            pending = [
                oid
                for oid in scope.invoiceitems.order
                if not (item := self._current(scope, "invoiceitem", oid)).deleted
                and item.get("invoice") is None
                and item.get("customer") == customer.id
                and item.get("currency") == fields["currency"]
            ]
            for oid in pending:
                self._billing_change(scope, self._current(scope, "invoiceitem", oid), {"invoice": invoice.id})
            invoice = self._set_invoice_items(scope, invoice, pending)
        return self._answer(call, invoice, INVOICE_EXPANDABLE)

    @staticmethod
    def _check_due(method: str, fields: Mapping[str, Any]) -> None:
        has_due = fields.get("days_until_due") is not None or fields.get("due_date") is not None
        if method == "send_invoice" and not has_due:
            raise invalid(  # our wording
                "Invoices with collection_method=send_invoice need days_until_due or due_date.",
                param="days_until_due",
            )
        if method == "charge_automatically" and has_due:
            name = "days_until_due" if fields.get("days_until_due") is not None else "due_date"
            raise invalid(
                f"You can only set {name} when collection_method is send_invoice.",
                param=name,  # our wording
            )

    def _set_invoice_items(self, scope: Any, invoice: BillingObject, items: list[str]) -> BillingObject:
        total = sum(self._current(scope, "invoiceitem", i).get("amount") for i in items)
        return self._billing_change(
            scope, invoice, {"items": tuple(items), "total": total, "amount_due": total, "amount_remaining": total}
        )

    def _retrieve_invoice(self, call: Any) -> Response:
        return self._billing_retrieve(call, "invoice", INVOICE_EXPANDABLE)

    def _update_invoice(self, call: Any) -> Response:
        params = call.params
        reject_unknown(params, [*_INVOICE_FIELDS, "expand"])
        scope = call.scope
        invoice = self._live(scope, "invoice", call.ident or "")
        fields = parse_fields(params, _INVOICE_FIELDS)
        status = invoice.get("status")
        allowed = {"metadata", "description", "footer", "auto_advance"} if status == "open" else {"metadata"}
        if status != "draft" and set(fields) - allowed:
            name = sorted(set(fields) - allowed)[0]
            raise invalid(  # our wording
                f"You can't change {name} on an invoice whose status is {status}; finalized invoices take only "
                f"{', '.join(sorted(allowed))}.",
                param=name,
            )
        if status in ("paid", "void", "uncollectible") and "auto_advance" in fields:
            fields.pop("auto_advance")
        metadata = fields.pop("metadata", ...)
        merged = {**invoice.fields, **fields}
        if status == "draft":
            self._check_due(merged["collection_method"], merged)
        return self._answer(call, self._billing_change(scope, invoice, fields, metadata), INVOICE_EXPANDABLE)

    def _delete_invoice(self, call: Any) -> Response:
        reject_unknown(call.params, [])
        scope = call.scope
        invoice = self._live(scope, "invoice", call.ident or "")
        if invoice.get("status") != "draft":
            raise invalid(
                "You can only delete draft invoices. Finalized invoices can be voided instead."  # our wording
            )
        for item_id in invoice.get("items"):  # its items go back to pending, as on Stripe
            self._billing_change(scope, self._current(scope, "invoiceitem", item_id), {"invoice": None})
        gone = dataclasses.replace(invoice, changed_at=self.clock(), deleted=True)
        scope.table("invoice").records[invoice.id].push(gone, self.clock() - self.search_delay_s)
        return Response(200, invoice.render_deleted(), mutated=True)

    def _finalize_invoice(self, call: Any) -> Response:
        reject_unknown(call.params, ["auto_advance", "expand"])
        scope = call.scope
        invoice = self._live(scope, "invoice", call.ident or "")
        if "auto_advance" in call.params:
            invoice = self._billing_change(
                scope, invoice, {"auto_advance": as_boolean(call.params["auto_advance"], "auto_advance")}
            )
        return self._answer(call, self._finalize(scope, invoice), INVOICE_EXPANDABLE)

    def _finalize(self, scope: Any, invoice: BillingObject) -> BillingObject:
        if invoice.get("status") != "draft":
            raise invalid("This invoice is already finalized, you can't re-finalize a non-draft invoice.")
        customer = self._live(scope, "customer", invoice.get("customer"), param="customer", status=400)
        number = invoice.get("custom_number")
        if number is None:
            number = f"{customer.invoice_prefix}-{customer.next_invoice_sequence:04d}"
            self._change_customer(
                scope, customer, {"next_invoice_sequence": customer.next_invoice_sequence + 1}, self.clock()
            )
        now = int(self.clock())
        fields: dict[str, Any] = {
            "status": "open",
            "number": number,
            "transitions": {"finalized_at": now},
            "hosted_invoice_url": f"https://invoice.stripe.com/i/sandbox/{invoice.id}",
            "invoice_pdf": f"https://pay.stripe.com/invoice/sandbox/{invoice.id}/pdf",
            "customer_email": customer.email,
            "customer_name": customer.name,
        }
        if invoice.get("days_until_due") is not None and invoice.get("collection_method") == "send_invoice":
            fields["due_date"] = now + invoice.get("days_until_due") * 86400
        if invoice.get("total") <= 0:
            # Stripe marks an invoice with nothing to pay as paid when it is finalized.
            fields.update(status="paid", auto_advance=False, transitions={"finalized_at": now, "paid_at": now})
            fields.update(amount_due=0, amount_remaining=0)
        finalized = self._billing_change(scope, invoice, fields)
        if (
            finalized.get("collection_method") == "send_invoice"
            and finalized.get("auto_advance")
            and finalized.get("status") == "open"
        ):
            self._email(scope, "invoice", customer.email, finalized, customer.id)
        return finalized

    def _pay_invoice(self, call: Any) -> Response:
        params = call.params
        reject_unknown(params, ["paid_out_of_band", "payment_method", "forgive", "expand"])
        scope = call.scope
        invoice = self._live(scope, "invoice", call.ident or "")
        out_of_band = "paid_out_of_band" in params and as_boolean(params["paid_out_of_band"], "paid_out_of_band")
        status = invoice.get("status")
        if status == "paid":
            raise invalid("Invoice is already paid")
        if status == "void":
            raise invalid("This invoice can no longer be paid because it is void.")  # our wording
        if not out_of_band:
            raise invalid(
                "This customer has no attached payment source or default payment method. Please consider adding a"
                " default payment method."
            )
        if status == "draft":
            invoice = self._finalize(scope, invoice)
            if invoice.get("status") == "paid":
                return self._answer(call, invoice, INVOICE_EXPANDABLE)
        now = int(self.clock())
        fields = {
            "status": "paid",
            "auto_advance": False,
            "paid_out_of_band": True,
            "amount_paid": invoice.get("amount_remaining"),
            "amount_remaining": 0,
            "transitions": {**invoice.get("transitions"), "paid_at": now},
        }
        return self._answer(call, self._billing_change(scope, invoice, fields), INVOICE_EXPANDABLE)

    def _void_invoice(self, call: Any) -> Response:
        reject_unknown(call.params, ["expand"])
        scope = call.scope
        invoice = self._live(scope, "invoice", call.ident or "")
        status = invoice.get("status")
        if status not in ("open", "uncollectible"):
            raise invalid(  # our wording
                f"You can only void an invoice that is open or uncollectible; this invoice is {status}."
                + (" Delete a draft invoice instead." if status == "draft" else "")
            )
        fields = {
            "status": "void",
            "auto_advance": False,
            "transitions": {**invoice.get("transitions"), "voided_at": int(self.clock())},
        }
        return self._answer(call, self._billing_change(scope, invoice, fields), INVOICE_EXPANDABLE)

    def _mark_uncollectible(self, call: Any) -> Response:
        reject_unknown(call.params, ["expand"])
        scope = call.scope
        invoice = self._live(scope, "invoice", call.ident or "")
        if invoice.get("status") != "open":
            raise invalid(  # our wording
                f"You can only mark an open invoice as uncollectible; this invoice is {invoice.get('status')}."
            )
        fields = {
            "status": "uncollectible",
            "auto_advance": False,
            "transitions": {**invoice.get("transitions"), "marked_uncollectible_at": int(self.clock())},
        }
        return self._answer(call, self._billing_change(scope, invoice, fields), INVOICE_EXPANDABLE)

    def _send_invoice(self, call: Any) -> Response:
        reject_unknown(call.params, ["expand"])
        scope = call.scope
        invoice = self._live(scope, "invoice", call.ident or "")
        if invoice.get("collection_method") != "send_invoice":
            raise invalid("You can only manually send an invoice if its collection method is 'send_invoice'.")
        if invoice.get("status") != "open":
            raise invalid(f"You can only send an invoice that is open; this invoice is {invoice.get('status')}.")
        customer = self._find(scope, "customer", invoice.get("customer"))
        if not customer.email:
            raise invalid("The customer has no email address, so the invoice cannot be sent.")  # our wording
        self._email(scope, "invoice", customer.email, invoice, customer.id)
        return self._answer(call, invoice, INVOICE_EXPANDABLE)

    def _list_invoices(self, call: Any) -> Response:
        filters = {
            "customer": _equals("customer"),
            "status": lambda v, p: _equals("status")(one_of(v, p, INVOICE_STATUSES), p),
            "collection_method": lambda v, p: _equals("collection_method")(one_of(v, p, COLLECTION_METHODS), p),
        }
        return self._billing_list(call, "invoice", "/v1/invoices", filters, INVOICE_EXPANDABLE)

    def _list_invoice_lines(self, call: Any) -> Response:
        reject_unknown(call.params, ["limit", "starting_after", "ending_before", "expand"])
        invoice = self._live(call.scope, "invoice", call.ident or "")
        body = self.render_billing(call.scope, invoice)["lines"]
        return Response(200, body)

    def _search_invoices(self, call: Any) -> Response:
        return self._search(call, "invoice", INVOICE_EXPANDABLE)

    # -- credit notes -----------------------------------------------------------------------------------

    def _create_credit_note(self, call: Any) -> Response:
        params = call.params
        amounts = ("amount", "credit_amount", "refund_amount", "out_of_band_amount")
        reject_unknown(params, [*amounts, "invoice", "email_type", "memo", "metadata", "reason", "expand"])
        if "invoice" not in params:
            raise missing_param("invoice")
        values = {name: as_integer(params[name], name, minimum=0) for name in amounts if name in params}
        other = parse_fields(
            params,
            {
                "email_type": lambda v, p: one_of(v, p, EMAIL_TYPES),
                "memo": _text(5000),
                "metadata": metadata_update,
                "reason": lambda v, p: one_of(v, p, CREDIT_NOTE_REASONS),
            },
        )
        scope = call.scope
        invoice = self._live(scope, "invoice", as_string(params["invoice"], "invoice"), param="invoice", status=400)
        status = invoice.get("status")
        if status not in ("open", "paid"):
            raise invalid(  # our wording
                f"Credit notes can only be issued for open or paid invoices; invoice {invoice.id} is {status}.",
                param="invoice",
            )
        if "amount" not in values:
            raise missing_param("amount")  # the sandbox takes `amount` (no `lines`)
        amount = values["amount"]
        credited = invoice.get("pre_payment_credit_notes_amount", 0)
        credited += invoice.get("post_payment_credit_notes_amount", 0)
        if amount <= 0 or amount > invoice.get("total") - credited:
            raise invalid(  # our wording
                f"The credit note amount must be more than 0 and at most the invoice's uncredited total "
                f"({invoice.get('total') - credited}).",
                param="amount",
            )
        pre = min(amount, invoice.get("amount_remaining")) if status == "open" else 0
        post = amount - pre
        split = sum(values.get(n, 0) for n in ("credit_amount", "refund_amount", "out_of_band_amount"))
        if split != post:
            # Stripe's rule: refunds, balance credits and outside-Stripe credits make up the post-payment part.
            raise invalid(
                f"The sum of credit_amount, refund_amount and out_of_band_amount ({split}) must equal the credit "
                f"note's post-payment amount ({post}).",
                param="amount",
            )
        refund_ids: list[str] = []
        if values.get("refund_amount"):
            refund_ids = self._refund_for_credit_note(scope, invoice, values["refund_amount"])
        customer = self._find(scope, "customer", invoice.get("customer"))
        balance_txn = None
        if values.get("credit_amount"):
            balance_txn = f"cbtxn_{self._random(24)}"
            balance = {"balance": customer.balance - values["credit_amount"]}
            self._change_customer(scope, customer, balance, self.clock())
            scope.balance_transactions.append(
                {
                    "id": balance_txn,
                    "customer": customer.id,
                    "amount": -values["credit_amount"],
                    "type": "credit_note",
                    "invoice": invoice.id,
                    "created": int(self.clock()),
                }
            )
        count = invoice.get("credit_notes", 0) + 1
        note = self._billing_new(
            scope,
            "credit_note",
            "cn_",
            {
                "amount": amount,
                "currency": invoice.get("currency"),
                "customer": customer.id,
                "invoice": invoice.id,
                "number": f"{invoice.get('number')}-CN-{count:02d}",
                "memo": other.get("memo"),
                "reason": other.get("reason"),
                "out_of_band_amount": values.get("out_of_band_amount") or None,
                "pre_payment_amount": pre,
                "post_payment_amount": post,
                "refunds": tuple(refund_ids),
                "customer_balance_transaction": balance_txn,
                "status": "issued",
                "voided_at": None,
            },
            metadata=other.get("metadata"),
        )
        changes: dict[str, Any] = {
            "credit_notes": count,
            "pre_payment_credit_notes_amount": invoice.get("pre_payment_credit_notes_amount", 0) + pre,
            "post_payment_credit_notes_amount": invoice.get("post_payment_credit_notes_amount", 0) + post,
        }
        if pre:
            remaining = invoice.get("amount_remaining") - pre
            changes.update(amount_remaining=remaining, amount_due=invoice.get("amount_due") - pre)
            if remaining == 0:
                now = int(self.clock())
                transitions = {**invoice.get("transitions"), "paid_at": now}
                changes.update(status="paid", auto_advance=False, transitions=transitions)
        self._billing_change(scope, invoice, changes)
        if other.get("email_type", "credit_note") == "credit_note":
            self._email(scope, "credit_note", customer.email, note, customer.id)
        return self._answer(call, note, frozenset())

    def _refund_for_credit_note(self, scope: Any, invoice: BillingObject, amount: int) -> list[str]:
        charge_id = invoice.get("charge")
        if charge_id is None:
            raise invalid(  # our wording
                f"Invoice {invoice.id} was not paid with a charge (it was paid out of band), so there is nothing to "
                "refund: use out_of_band_amount or credit_amount.",
                param="refund_amount",
            )
        charge = self._current(scope, "charge", charge_id)
        return [self._refund(scope, charge, amount, None, None).id]

    def _retrieve_credit_note(self, call: Any) -> Response:
        return self._billing_retrieve(call, "credit_note")

    def _void_credit_note(self, call: Any) -> Response:
        reject_unknown(call.params, ["expand"])
        scope = call.scope
        note = self._live(scope, "credit_note", call.ident or "")
        if note.get("status") != "issued":
            raise invalid("This credit note has already been voided.")  # our wording
        invoice = self._current(scope, "invoice", note.get("invoice"))
        pre, post = note.get("pre_payment_amount"), note.get("post_payment_amount")
        changes: dict[str, Any] = {
            "pre_payment_credit_notes_amount": invoice.get("pre_payment_credit_notes_amount", 0) - pre,
            "post_payment_credit_notes_amount": invoice.get("post_payment_credit_notes_amount", 0) - post,
        }
        if pre and invoice.get("status") == "open":
            changes.update(
                amount_remaining=invoice.get("amount_remaining") + pre, amount_due=invoice.get("amount_due") + pre
            )
        self._billing_change(scope, invoice, changes)
        voided = self._billing_change(scope, note, {"status": "void", "voided_at": int(self.clock())})
        return self._answer(call, voided, frozenset())

    def _update_credit_note(self, call: Any) -> Response:
        reject_unknown(call.params, ["memo", "metadata", "expand"])
        note = self._live(call.scope, "credit_note", call.ident or "")
        changes = parse_fields(call.params, {"memo": _text(5000), "metadata": metadata_update})
        metadata = changes.pop("metadata", ...)
        return self._answer(call, self._billing_change(call.scope, note, changes, metadata), frozenset())

    def _list_credit_notes(self, call: Any) -> Response:
        filters = {"customer": _equals("customer"), "invoice": _equals("invoice")}
        return self._billing_list(call, "credit_note", "/v1/credit_notes", filters)

    # -- admin: payments made elsewhere ------------------------------------------------------------------

    def seed_payment(
        self, scope: Any, entry: Mapping[str, Any], customer_id: str | None, changed_at: float
    ) -> dict[str, Any]:
        """A card payment made outside ClinicSync (terminal, Payment Link, Cal.com's Stripe app): a succeeded
        PaymentIntent and its charge, optionally refunded (`refunded`: cents), with `billing_details` (email, name),
        `metadata` on the PaymentIntent, `charge_metadata`, `receipt_email`, `created` (epoch), `description`, and
        `without_intent: true` for a bare charge (an old Charges API payment)."""
        amount = int(entry["amount"])
        currency = str(entry.get("currency", "aud"))
        created = int(entry["created"]) if entry.get("created") is not None else None
        metadata = metadata_update(_strings(entry.get("metadata") or {}))
        card = str(entry.get("payment_method", "pm_card_visa"))
        brand, last4, _ = TEST_PAYMENT_METHODS[card]
        if customer_id is not None:
            self._customer_of(scope, customer_id)
        intent = None
        if not entry.get("without_intent"):
            intent = self._billing_new(
                scope,
                "payment_intent",
                "pi_",
                {
                    "amount": amount,
                    "currency": currency,
                    "customer": customer_id,
                    "description": entry.get("description"),
                    "payment_method": card,
                    "status": "succeeded",
                    "secret": self._random(24),
                    "receipt_email": entry.get("receipt_email"),
                },
                metadata=metadata,
                created=created,
                changed_at=changed_at,
            )
        charge = self._billing_new(
            scope,
            "charge",
            "ch_",
            {
                "amount": amount,
                "currency": currency,
                "customer": customer_id,
                "description": entry.get("description"),
                "payment_intent": intent.id if intent else None,
                "payment_method": card,
                "card": (brand, last4),
                "status": "succeeded",
                "receipt_email": entry.get("receipt_email"),
                "billing_details": dict(entry.get("billing_details") or {}),
                "amount_refunded": 0,
                "refunds": (),
            },
            # A bare charge carries the entry's metadata itself; Stripe copies none between intent and charge.
            metadata=metadata_update(_strings(entry.get("charge_metadata") or ({} if intent else metadata or {}))),
            created=created,
            changed_at=changed_at,
        )
        if intent is not None:
            intent = self._billing_change(scope, intent, {"latest_charge": charge.id}, changed_at=changed_at)
        refunded = int(entry.get("refunded") or 0)
        if refunded:
            self._refund(scope, charge, min(refunded, amount), "requested_by_customer", None, changed_at=changed_at)
        return {"payment_intent": intent.id if intent else None, "charge": charge.id}


def _positive_decimal(value: Any, param: str) -> Decimal:
    text = as_string(value, param)
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise invalid(f"Invalid decimal: {text}", param=param) from None
    if not number.is_finite() or number <= 0 or -number.as_tuple().exponent > 12:  # type: ignore[operator]
        raise invalid(f"Invalid decimal: {text}; it must be positive, with at most 12 decimal places", param=param)
    return number


def _quantity_text(quantity: Decimal) -> str:
    return format(Decimal(quantity).normalize(), "f")


def _equals(name: str) -> Callable[[Any, str], Callable[[BillingObject], bool]]:
    def make(value: Any, param: str) -> Callable[[BillingObject], bool]:
        wanted = as_string(value, param)
        return lambda obj: obj.get(name) == wanted

    return make


def _strings(values: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in values.items() if v is not None}
