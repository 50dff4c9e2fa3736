"""The Stripe emulator's payments and invoicing called through `handle()` (no sockets): Search over number fields,
declines without an idempotency key, metadata limits, admin seeding of payments and the per-scope email record.
The SDK-level behaviour is in tests/integration/test_stripe_billing_emulator.py."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest

from clinicsync.sandbox.http import Request, Response
from clinicsync.sandbox.stripe_billing import money
from clinicsync.sandbox.stripe_emu import StripeEmulator

KEY = "sk_test_sandbox_clinic_a"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_775_000_000.0

    def __call__(self) -> float:
        return self.now


def call(emu: StripeEmulator, method: str, path: str, params: dict[str, str] | None = None) -> Response:
    pairs = list((params or {}).items())
    headers = {"authorization": f"Bearer {KEY}"}
    if method == "POST":
        return emu.handle(Request(method, path, [], headers, urlencode(pairs).encode()))
    return emu.handle(Request(method, path, pairs, headers))


def ok(response: Response) -> dict[str, Any]:
    assert response.status == 200, response.body
    return response.body


@pytest.fixture
def emu() -> StripeEmulator:
    return StripeEmulator(search_delay_s=60.0, clock=FakeClock())


@pytest.mark.parametrize("query", ["amount~'123'", "amount:'abc'", "refunded:'maybe'", "email:'a@b.c'"])
def test_bad_payment_searches_are_400(emu: StripeEmulator, query: str) -> None:
    response = call(emu, "GET", "/v1/charges/search", {"query": query})
    assert response.status == 400 and response.body["error"]["param"] == "query"


def test_number_search_compares_amounts(emu: StripeEmulator) -> None:
    emu.admin("seed", {"payments": [{"amount": a} for a in (500, 1500, 2500)]})
    found = ok(call(emu, "GET", "/v1/payment_intents/search", {"query": "amount>=1500 AND amount<2500"}))
    assert [p["amount"] for p in found["data"]] == [1500]
    negated = ok(call(emu, "GET", "/v1/payment_intents/search", {"query": "-amount:1500"}))
    assert sorted(p["amount"] for p in negated["data"]) == [500, 2500]


def test_a_decline_without_a_key_runs_each_time(emu: StripeEmulator) -> None:
    intent = ok(call(emu, "POST", "/v1/payment_intents", {"amount": "1000", "currency": "aud"}))
    for _ in range(2):
        declined = call(
            emu,
            "POST",
            f"/v1/payment_intents/{intent['id']}/confirm",
            {"payment_method": "pm_card_chargeDeclinedInsufficientFunds"},
        )
        assert declined.status == 402
        error = declined.body["error"]
        assert error["type"] == "card_error" and error["decline_code"] == "insufficient_funds"
        assert error["payment_intent"]["status"] == "requires_payment_method" and error["charge"].startswith("ch_")
    charges = ok(call(emu, "GET", "/v1/charges", {"payment_intent": intent["id"]}))
    assert [c["status"] for c in charges["data"]] == ["failed", "failed"]


def test_payment_metadata_keeps_stripes_limits(emu: StripeEmulator) -> None:
    intent = ok(call(emu, "POST", "/v1/payment_intents", {"amount": "1000", "currency": "aud"}))
    many = {f"metadata[k{i}]": "v" for i in range(51)}
    assert call(emu, "POST", f"/v1/payment_intents/{intent['id']}", many).status == 400
    assert call(emu, "POST", f"/v1/payment_intents/{intent['id']}", {"metadata[a]": "x" * 501}).status == 400
    unknown = call(emu, "POST", f"/v1/payment_intents/{intent['id']}", {"amount_to_capture": "5"})
    assert unknown.status == 400 and unknown.body["error"]["code"] == "parameter_unknown"


def test_seeded_payments_name_their_customers_by_ref(emu: StripeEmulator) -> None:
    seeded = ok(
        emu.admin(
            "seed",
            {
                "customers": [{"email": "x@example.com", "ref": "p1"}],
                "payments": [
                    {"customer_ref": "p1", "amount": 9500, "ref": "one", "refunded": 9500},
                    {"amount": 100, "without_intent": True, "metadata": {"till": "1"}},
                ],
            },
        )
    )
    first, bare = seeded["payments"]
    assert first["ref"] == "one" and first["payment_intent"].startswith("pi_") and bare["payment_intent"] is None
    charge = ok(call(emu, "GET", f"/v1/charges/{first['charge']}"))
    assert charge["customer"] == seeded["refs"]["p1"] and charge["refunded"] is True
    assert ok(call(emu, "GET", f"/v1/charges/{bare['charge']}"))["metadata"] == {"till": "1"}
    bad = emu.admin("seed", {"payments": [{"customer_ref": "nobody", "amount": 100}]})
    assert bad is not None and bad.status == 400
    assert ok(emu.admin("ledger", {}))["refunds"][0]["amount"] == 9500


def test_the_email_record_is_per_account_and_mode(emu: StripeEmulator) -> None:
    customer = ok(call(emu, "POST", "/v1/customers", {"email": "pat@example.com"}))
    invoice = ok(
        call(
            emu,
            "POST",
            "/v1/invoices",
            {
                "customer": customer["id"],
                "collection_method": "send_invoice",
                "days_until_due": "7",
                "auto_advance": "true",
            },
        )
    )
    ok(
        call(
            emu,
            "POST",
            "/v1/invoiceitems",
            {"customer": customer["id"], "invoice": invoice["id"], "amount": "700", "currency": "aud"},
        )
    )
    ok(call(emu, "POST", f"/v1/invoices/{invoice['id']}/finalize"))
    assert ok(emu.admin("emails", {}))["count"] == 1
    assert ok(emu.admin("emails", {"livemode": True}))["count"] == 0
    assert ok(emu.admin("emails", {"account": "acct_sandbox_clinic_b"}))["count"] == 0


def test_money_is_written_as_stripe_writes_it() -> None:
    assert money(1250, "aud") == "A$12.50" and money(-5, "usd") == "-$0.05"


def test_confirming_at_create_without_a_payment_method_makes_nothing(emu: StripeEmulator) -> None:
    refused = call(emu, "POST", "/v1/payment_intents", {"amount": "1000", "currency": "aud", "confirm": "true"})
    assert refused.status == 400 and refused.body["error"]["code"] == "payment_intent_unexpected_state"
    assert ok(call(emu, "GET", "/v1/payment_intents"))["data"] == []
