"""Payments and invoicing in the Stripe emulator, through the official `stripe` SDK against the running sandbox:
PaymentIntents and charges (test cards, declines, refunds, lists, metadata, lagging Search), invoice items,
invoices (send_invoice, auto_advance=false, finalize, pay out of band, void), credit notes, the transitions Stripe
refuses, and the record of emails Stripe would send. Shapes are checked against Stripe's example objects
(tests/specs/stripe.json)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe

from clinicsync.sandbox.server import RunningServer, serve
from clinicsync.sandbox.stripe_emu import StripeEmulator

KEY = "sk_test_sandbox_clinic_a"
STRIPE_EXAMPLES = Path(__file__).resolve().parents[1] / "specs" / "stripe.json"


@pytest.fixture
def server() -> Iterator[RunningServer]:
    with serve(StripeEmulator(search_delay_s=0)) as srv:
        yield srv


@pytest.fixture
def sdk(server: RunningServer) -> stripe.StripeClient:
    return stripe.StripeClient(KEY, base_addresses={"api": server.url}, max_network_retries=0)


def admin(srv: RunningServer, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = httpx.post(f"{srv.url}/_sandbox/{action}", json=body or {}, timeout=10)
    response.raise_for_status()
    return response.json()


def raw(srv: RunningServer, path: str) -> dict[str, Any]:
    response = httpx.get(f"{srv.url}{path}", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def customer(sdk: stripe.StripeClient, email: str | None = "pat@example.com") -> str:
    params: dict[str, Any] = {"name": "Pat Example"}
    if email:
        params["email"] = email
    return sdk.v1.customers.create(params=params).id


def paid_intent(sdk: stripe.StripeClient, amount: int = 9500, **extra: Any) -> stripe.PaymentIntent:
    params = {"amount": amount, "currency": "aud", "payment_method": "pm_card_visa", "confirm": True, **extra}
    return sdk.v1.payment_intents.create(params=params)


# -- shapes ---------------------------------------------------------------------------------------------


def _fixture(name: str) -> dict[str, Any]:
    return json.loads(STRIPE_EXAMPLES.read_text(encoding="utf-8"))["resources"][name]


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}[type(value)]


def assert_same_shape(expected: dict[str, Any], actual: dict[str, Any], where: str = "") -> None:
    """Every key of Stripe's example is present with the same JSON type (null on either side passes)."""
    for key, want in expected.items():
        assert key in actual, f"missing {where}{key}"
        got = actual[key]
        if want is None or got is None:
            continue
        assert _json_type(got) == _json_type(want), f"{where}{key}: {_json_type(got)} != {_json_type(want)}"
        if isinstance(want, dict) and want and key != "metadata":
            assert_same_shape(want, got, f"{where}{key}.")


def test_every_object_has_the_fields_of_stripes_examples(server: RunningServer, sdk: stripe.StripeClient) -> None:
    cid = customer(sdk)
    intent = paid_intent(sdk, customer=cid)
    refund = sdk.v1.refunds.create(params={"payment_intent": intent.id, "amount": 500})
    invoice = mirror_invoice(sdk, cid, [])
    item = sdk.v1.invoice_items.create(
        params={"customer": cid, "invoice": invoice.id, "amount": 9500, "currency": "aud"}
    )
    sdk.v1.invoices.finalize_invoice(invoice.id, params={"auto_advance": False})
    sdk.v1.invoices.pay(invoice.id, params={"paid_out_of_band": True})
    note = sdk.v1.credit_notes.create(
        params={"invoice": invoice.id, "amount": 9500, "out_of_band_amount": 9500, "email_type": "none"}
    )
    shown_invoice = raw(server, f"/v1/invoices/{invoice.id}")
    checks = {
        "payment_intent": raw(server, f"/v1/payment_intents/{intent.id}"),
        "charge": raw(server, f"/v1/charges/{intent.latest_charge}"),
        "refund": raw(server, f"/v1/refunds/{refund.id}"),
        "invoiceitem": raw(server, f"/v1/invoiceitems/{item.id}"),
        "invoice": shown_invoice,
        "line_item": shown_invoice["lines"]["data"][0],
        "credit_note": raw(server, f"/v1/credit_notes/{note.id}"),
    }
    for name, body in checks.items():
        assert_same_shape(_fixture(name), body, f"{name}.")
        assert body["object"] == _fixture(name)["object"]
    pending = sdk.v1.invoice_items.create(params={"customer": cid, "amount": 1, "currency": "aud"})
    deleted = httpx.delete(f"{server.url}/v1/invoiceitems/{pending.id}", headers={"Authorization": f"Bearer {KEY}"})
    assert_same_shape(_fixture("deleted_invoiceitem"), deleted.json())


# -- PaymentIntents and charges ---------------------------------------------------------------------------


def test_a_test_card_pays_with_and_without_a_customer(sdk: stripe.StripeClient) -> None:
    cid = customer(sdk)
    with_customer = paid_intent(sdk, customer=cid, metadata={"source": "terminal"})
    assert with_customer.status == "succeeded" and with_customer.amount_received == 9500
    charge = sdk.v1.charges.retrieve(with_customer.latest_charge)  # type: ignore[arg-type]
    assert charge.paid and charge.status == "succeeded" and charge.customer == cid
    assert charge.payment_intent == with_customer.id and charge.amount_refunded == 0
    # Stripe copies metadata between a PaymentIntent and its charge in neither direction.
    assert charge.metadata.to_dict() == {}
    walk_in = paid_intent(sdk, amount=6550)
    assert walk_in.customer is None and walk_in.status == "succeeded"

    two_step = sdk.v1.payment_intents.create(params={"amount": 5000, "currency": "aud"})
    assert two_step.status == "requires_payment_method" and two_step.latest_charge is None
    confirmed = sdk.v1.payment_intents.confirm(two_step.id, params={"payment_method": "pm_card_mastercard"})
    assert confirmed.status == "succeeded"
    with pytest.raises(stripe.InvalidRequestError) as again:
        sdk.v1.payment_intents.confirm(two_step.id)
    assert again.value.code == "payment_intent_unexpected_state"


def test_a_declined_card_fails_with_a_card_error_and_a_failed_charge(
    server: RunningServer, sdk: stripe.StripeClient
) -> None:
    intent = sdk.v1.payment_intents.create(params={"amount": 9500, "currency": "aud"})
    with pytest.raises(stripe.CardError) as declined:
        sdk.v1.payment_intents.confirm(
            intent.id, params={"payment_method": "pm_card_chargeDeclined"}, options={"idempotency_key": "decline-1"}
        )
    assert declined.value.http_status == 402 and declined.value.code == "card_declined"
    assert declined.value.error is not None and declined.value.error.decline_code == "generic_decline"
    after = sdk.v1.payment_intents.retrieve(intent.id)
    assert after.status == "requires_payment_method" and after.last_payment_error is not None
    failed = sdk.v1.charges.retrieve(after.latest_charge)  # type: ignore[arg-type]
    assert failed.status == "failed" and not failed.paid and failed.failure_code == "card_declined"
    # The decline changed state, so a retry with the same key replays it rather than charging again.
    with pytest.raises(stripe.CardError) as replayed:
        sdk.v1.payment_intents.confirm(
            intent.id, params={"payment_method": "pm_card_chargeDeclined"}, options={"idempotency_key": "decline-1"}
        )
    assert replayed.value.headers is not None and replayed.value.headers.get("Idempotent-Replayed") == "true"
    assert len(sdk.v1.charges.list(params={"payment_intent": intent.id}).data) == 1
    retried = sdk.v1.payment_intents.confirm(intent.id, params={"payment_method": "pm_card_visa"})
    assert retried.status == "succeeded"
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        sdk.v1.payment_intents.create(params={"amount": 900, "currency": "aud", "payment_method": "pm_nope"})
    assert unknown.value.code == "resource_missing"
    with pytest.raises(stripe.InvalidRequestError) as small:
        sdk.v1.payment_intents.create(params={"amount": 10, "currency": "aud"})
    assert small.value.code == "amount_too_small"


def test_refunds_partial_then_full_and_the_refusals(sdk: stripe.StripeClient) -> None:
    intent = paid_intent(sdk, amount=12000)
    first = sdk.v1.refunds.create(params={"payment_intent": intent.id, "amount": 2000})
    assert first.status == "succeeded" and first.amount == 2000 and first.charge == intent.latest_charge
    charge = sdk.v1.charges.retrieve(intent.latest_charge)  # type: ignore[arg-type]
    assert charge.amount_refunded == 2000 and charge.refunded is False
    with pytest.raises(stripe.InvalidRequestError) as too_much:
        sdk.v1.refunds.create(params={"charge": charge.id, "amount": 10001})
    assert "greater than unrefunded amount" in str(too_much.value)
    rest = sdk.v1.refunds.create(params={"charge": charge.id})
    assert rest.amount == 10000
    charge = sdk.v1.charges.retrieve(charge.id)
    assert charge.refunded is True and charge.amount_refunded == 12000 and len(charge.refunds.data) == 2  # type: ignore[union-attr]
    with pytest.raises(stripe.InvalidRequestError) as done:
        sdk.v1.refunds.create(params={"charge": charge.id})
    assert done.value.code == "charge_already_refunded"
    unpaid = sdk.v1.payment_intents.create(params={"amount": 5000, "currency": "aud"})
    with pytest.raises(stripe.InvalidRequestError):
        sdk.v1.refunds.create(params={"payment_intent": unpaid.id})
    assert {r.id for r in sdk.v1.refunds.list(params={"charge": charge.id}).data} == {first.id, rest.id}


def test_lists_by_customer_and_created_range_and_metadata_updates(
    server: RunningServer, sdk: stripe.StripeClient
) -> None:
    seeded = admin(
        server,
        "seed",
        {
            "customers": [{"email": "a@example.com", "ref": "A"}, {"email": "b@example.com", "ref": "B"}],
            "payments": [
                {"customer_ref": "A", "amount": 9500, "created": 1_775_000_000},
                {"customer_ref": "A", "amount": 8000, "created": 1_775_100_000},
                {"customer_ref": "B", "amount": 8000, "created": 1_775_200_000},
                {"amount": 6550, "created": 1_775_300_000, "billing_details": {"email": "a@example.com"}},
                {"amount": 4000, "created": 1_775_400_000, "without_intent": True, "metadata": {"till": "2"}},
            ],
        },
    )
    cus_a = seeded["refs"]["A"]
    of_a = sdk.v1.payment_intents.list(params={"customer": cus_a, "limit": 100})
    assert [p.amount for p in of_a.data] == [8000, 9500]  # newest first
    window = sdk.v1.payment_intents.list(params={"created": {"gte": 1_775_100_000, "lt": 1_775_300_000}})
    assert [p.amount for p in window.data] == [8000, 8000]
    charges = sdk.v1.charges.list(params={"limit": 2})
    assert charges.has_more and len(charges.data) == 2
    bare = charges.data[0]
    assert bare.payment_intent is None and bare.metadata.to_dict() == {"till": "2"}
    no_customer = charges.data[1]
    assert no_customer.customer is None and no_customer.billing_details.email == "a@example.com"
    everything = list(sdk.v1.charges.list(params={"limit": 2}).auto_paging_iter())
    assert len(everything) == 5

    intent = of_a.data[0]
    updated = sdk.v1.payment_intents.update(
        intent.id, params={"metadata": {"cliniko_invoice_id": "123", "cliniko_invoice_status": "Paid"}}
    )
    assert updated.metadata.to_dict() == {"cliniko_invoice_id": "123", "cliniko_invoice_status": "Paid"}
    cleared = sdk.v1.payment_intents.update(intent.id, params={"metadata": {"cliniko_invoice_status": ""}})
    assert cleared.metadata.to_dict() == {"cliniko_invoice_id": "123"}
    with pytest.raises(stripe.InvalidRequestError) as fixed:
        sdk.v1.payment_intents.update(intent.id, params={"amount": 100})
    assert fixed.value.code == "payment_intent_unexpected_state"
    charge = sdk.v1.charges.update(bare.id, params={"metadata": {"cliniko_invoice_id": "9"}})
    assert charge.metadata.to_dict() == {"till": "2", "cliniko_invoice_id": "9"}
    assert admin(server, "emails")["count"] == 0


def test_search_lags_behind_writes(server: RunningServer, sdk: stripe.StripeClient) -> None:
    admin(server, "seed", {"payments": [{"amount": 9500, "metadata": {"cliniko_invoice_id": "7"}}]})
    found = sdk.v1.payment_intents.search(params={"query": "metadata['cliniko_invoice_id']:'7'"})
    assert len(found.data) == 1  # seeded long ago: indexed
    admin(server, "set_search_delay", {"seconds": 600})
    fresh = paid_intent(sdk, amount=4321, metadata={"cliniko_invoice_id": "8"})
    assert sdk.v1.payment_intents.search(params={"query": "metadata['cliniko_invoice_id']:'8'"}).data == []
    assert sdk.v1.payment_intents.retrieve(fresh.id).metadata["cliniko_invoice_id"] == "8"
    admin(server, "set_search_delay", {"seconds": 0})
    hits = sdk.v1.payment_intents.search(params={"query": "amount:4321 AND status:'succeeded'"})
    assert [p.id for p in hits.data] == [fresh.id]
    assert len(sdk.v1.charges.search(params={"query": "amount>=4321 AND refunded:'false'"}).data) == 2


# -- invoices -------------------------------------------------------------------------------------------


def mirror_invoice(sdk: stripe.StripeClient, cid: str, amounts: list[int]) -> stripe.Invoice:
    invoice = sdk.v1.invoices.create(
        params={
            "customer": cid,
            "collection_method": "send_invoice",
            "days_until_due": 30,
            "auto_advance": False,
            "metadata": {"cliniko_invoice_id": "55"},
        }
    )
    for amount in amounts:
        sdk.v1.invoice_items.create(
            params={"customer": cid, "invoice": invoice.id, "amount": amount, "currency": "aud", "description": "x"}
        )
    return sdk.v1.invoices.retrieve(invoice.id)


def test_a_mirrored_invoice_is_finalized_paid_out_of_band_and_credited_without_email(
    server: RunningServer, sdk: stripe.StripeClient
) -> None:
    cid = customer(sdk)
    pending = sdk.v1.invoice_items.create(params={"customer": cid, "amount": 700, "currency": "aud"})
    invoice = mirror_invoice(sdk, cid, [9000, 818, -1])
    assert invoice.status == "draft" and invoice.total == 9817 and len(invoice.lines.data) == 3
    assert pending.invoice is None  # never pulled in: items are attached explicitly
    open_ = sdk.v1.invoices.finalize_invoice(invoice.id, params={"auto_advance": False})
    assert open_.status == "open" and open_.number and open_.amount_remaining == 9817 and open_.due_date
    with pytest.raises(stripe.InvalidRequestError) as twice:
        sdk.v1.invoices.finalize_invoice(invoice.id)
    assert "already finalized" in str(twice.value)
    with pytest.raises(stripe.InvalidRequestError) as locked:
        sdk.v1.invoice_items.create(params={"customer": cid, "invoice": invoice.id, "amount": 5, "currency": "aud"})
    assert locked.value.code == "invoice_not_editable"
    with pytest.raises(stripe.InvalidRequestError):
        sdk.v1.invoices.delete(invoice.id)
    paid = sdk.v1.invoices.pay(invoice.id, params={"paid_out_of_band": True})
    assert paid.status == "paid" and paid.amount_paid == 9817 and paid.amount_remaining == 0
    with pytest.raises(stripe.InvalidRequestError):
        sdk.v1.invoices.void_invoice(invoice.id)
    with pytest.raises(stripe.InvalidRequestError) as repaid:
        sdk.v1.invoices.pay(invoice.id, params={"paid_out_of_band": True})
    assert "already paid" in str(repaid.value)
    with pytest.raises(stripe.InvalidRequestError):  # a post-payment credit must say where the money went
        sdk.v1.credit_notes.create(params={"invoice": invoice.id, "amount": 9817, "email_type": "none"})
    note = sdk.v1.credit_notes.create(
        params={"invoice": invoice.id, "amount": 9817, "out_of_band_amount": 9817, "email_type": "none"}
    )
    assert note.status == "issued" and note.out_of_band_amount == 9817 and note.type == "post_payment"
    assert sdk.v1.invoices.retrieve(invoice.id).post_payment_credit_notes_amount == 9817
    assert sdk.v1.customers.retrieve(cid).balance == 0
    assert admin(server, "emails")["count"] == 0
    ledger = admin(server, "ledger")
    assert ledger["refunds"] == [] and ledger["balance_transactions"] == []


def test_void_before_payment_and_the_transitions_stripe_refuses(sdk: stripe.StripeClient) -> None:
    cid = customer(sdk)
    draft = mirror_invoice(sdk, cid, [5000])
    with pytest.raises(stripe.InvalidRequestError):
        sdk.v1.invoices.void_invoice(draft.id)  # a draft is deleted, not voided
    sdk.v1.invoices.finalize_invoice(draft.id)
    voided = sdk.v1.invoices.void_invoice(draft.id)
    assert voided.status == "void" and voided.status_transitions.voided_at
    with pytest.raises(stripe.InvalidRequestError):
        sdk.v1.invoices.pay(draft.id, params={"paid_out_of_band": True})
    with pytest.raises(stripe.InvalidRequestError):
        sdk.v1.credit_notes.create(params={"invoice": draft.id, "amount": 100, "out_of_band_amount": 100})
    with pytest.raises(stripe.InvalidRequestError) as no_due:
        sdk.v1.invoices.create(params={"customer": cid, "collection_method": "send_invoice"})
    assert no_due.value.param == "days_until_due"
    zero = mirror_invoice(sdk, cid, [])
    assert sdk.v1.invoices.finalize_invoice(zero.id).status == "paid"  # nothing to pay
    removable = mirror_invoice(sdk, cid, [100])
    item_id = removable.lines.data[0].parent.invoice_item_details.invoice_item  # type: ignore[union-attr]
    assert sdk.v1.invoices.delete(removable.id).deleted is True
    assert sdk.v1.invoice_items.retrieve(item_id).invoice is None


def test_emails_follow_stripes_rules(server: RunningServer, sdk: stripe.StripeClient) -> None:
    cid = customer(sdk, "pat@example.com")
    quiet = mirror_invoice(sdk, cid, [3000])
    sdk.v1.invoices.finalize_invoice(quiet.id, params={"auto_advance": False})
    assert admin(server, "emails")["count"] == 0
    loud = mirror_invoice(sdk, cid, [3000])
    sdk.v1.invoices.finalize_invoice(loud.id, params={"auto_advance": True})
    sdk.v1.credit_notes.create(params={"invoice": loud.id, "amount": 1000})  # email_type defaults to credit_note
    sdk.v1.invoices.send_invoice(quiet.id)
    paid_intent(sdk, amount=2000, receipt_email="pat@example.com")
    emails = admin(server, "emails")["emails"]
    assert [(e["type"], e["to"]) for e in emails] == [
        ("invoice", "pat@example.com"),
        ("credit_note", "pat@example.com"),
        ("invoice", "pat@example.com"),
        ("receipt", "pat@example.com"),
    ]
    assert emails[0]["object_id"] == loud.id and emails[2]["object_id"] == quiet.id
    silent = customer(sdk, None)
    no_address = mirror_invoice(sdk, silent, [3000])
    sdk.v1.invoices.finalize_invoice(no_address.id, params={"auto_advance": True})
    assert admin(server, "emails")["count"] == 4  # nobody to send it to


def test_invoice_items_take_a_price_or_a_decimal_unit_amount(sdk: stripe.StripeClient) -> None:
    cid = customer(sdk)
    price = {"currency": "aud", "unit_amount": 4995}
    product = sdk.v1.products.create(params={"name": "Foam roller", "default_price_data": price})
    invoice = mirror_invoice(sdk, cid, [])
    by_price = sdk.v1.invoice_items.create(
        params={"customer": cid, "invoice": invoice.id, "pricing": {"price": product.default_price}, "quantity": 2}
    )
    assert by_price.amount == 9990 and by_price.pricing.price_details.price == product.default_price  # type: ignore[union-attr]
    fractional = sdk.v1.invoice_items.create(
        params={"customer": cid, "invoice": invoice.id, "unit_amount_decimal": "8181.8", "currency": "aud"}
    )
    assert fractional.amount == 8182
    assert sdk.v1.invoices.retrieve(invoice.id).total == 18172
    listed = sdk.v1.invoice_items.list(params={"invoice": invoice.id})
    assert {i.id for i in listed.data} == {by_price.id, fractional.id}
    other = customer(sdk, "other@example.com")
    with pytest.raises(stripe.InvalidRequestError):
        sdk.v1.invoice_items.create(params={"customer": other, "invoice": invoice.id, "amount": 5, "currency": "aud"})
    listed_invoices = sdk.v1.invoices.list(params={"customer": cid, "status": "draft"})
    assert [i.id for i in listed_invoices.data] == [invoice.id]


# -- the knobs every resource has -----------------------------------------------------------------------


def test_a_dropped_connection_after_finalize_or_pay_replays_instead_of_repeating(server: RunningServer) -> None:
    from clinicsync.sandbox.faults import FaultPlan

    retrying = stripe.StripeClient(KEY, base_addresses={"api": server.url}, max_network_retries=2)
    cid = customer(retrying)
    invoice = mirror_invoice(retrying, cid, [4000])
    server.set_faults(FaultPlan.parse("after:reset=1,max=1"))
    item = retrying.v1.invoice_items.create(
        params={"customer": cid, "invoice": invoice.id, "amount": 500, "currency": "aud"}
    )
    assert item.last_response is not None and item.last_response.headers["Idempotent-Replayed"] == "true"
    server.set_faults(FaultPlan.parse("after:reset=1,max=1"))
    finalized = retrying.v1.invoices.finalize_invoice(invoice.id)
    assert finalized.status == "open" and finalized.total == 4500  # once, not "already finalized"
    server.set_faults(FaultPlan.parse("after:reset=1,max=1"))
    intent = paid_intent(retrying, amount=7000, customer=cid)
    server.set_faults(FaultPlan())
    assert len(retrying.v1.payment_intents.list(params={"customer": cid}).data) == 1
    assert intent.status == "succeeded"
    dump = admin(server, "dump")
    assert len(dump["invoiceitems"]) == 2 and len(dump["charges"]) == 1


def test_payment_endpoints_are_rate_limited_and_search_has_its_own_bucket() -> None:
    with serve(StripeEmulator(search_delay_s=0), rate_limits=True) as srv:
        sdk = stripe.StripeClient(KEY, base_addresses={"api": srv.url}, max_network_retries=0)
        with pytest.raises(stripe.RateLimitError) as limited:
            for _ in range(200):
                sdk.v1.payment_intents.list()
        assert limited.value.headers is not None and limited.value.headers["Stripe-Should-Retry"] == "true"
        # Search is counted apart from the listing that just ran out.
        assert sdk.v1.charges.search(params={"query": "amount>0"}).data == []


def test_restricted_keys_and_live_mode_keep_payments_apart(server: RunningServer, sdk: stripe.StripeClient) -> None:
    paid_intent(sdk)
    readonly = stripe.StripeClient("rk_test_sandbox_readonly_a", base_addresses={"api": server.url})
    assert len(readonly.v1.payment_intents.list().data) == 1
    with pytest.raises(stripe.PermissionError) as denied:
        readonly.v1.invoices.create(params={"customer": "cus_x"})
    assert "rak_invoice_write" in str(denied.value)
    live = stripe.StripeClient("sk_live_sandbox_clinic_a", base_addresses={"api": server.url})
    assert live.v1.payment_intents.list().data == []


def test_a_payment_taken_now_is_listed_at_once_and_searchable_after_the_delay(
    server: RunningServer, sdk: stripe.StripeClient
) -> None:
    admin(server, "set_search_delay", {"seconds": 600})
    cid = customer(sdk)
    made = admin(
        server,
        "add_payment",
        {"customer": cid, "amount": 6550, "created": 1_775_309_400, "metadata": {"terminal": "front desk"}},
    )
    listed = sdk.v1.payment_intents.list(params={"customer": cid, "created": {"gte": 1_775_309_400}})
    assert [p.id for p in listed.data] == [made["payment_intent"]] and listed.data[0].created == 1_775_309_400
    assert sdk.v1.payment_intents.search(params={"query": "metadata['terminal']:'front desk'"}).data == []
    admin(server, "set_search_delay", {"seconds": 0})
    assert len(sdk.v1.payment_intents.search(params={"query": "metadata['terminal']:'front desk'"}).data) == 1


def test_a_decimal_quantity_multiplies_the_price(sdk: stripe.StripeClient) -> None:
    cid = customer(sdk)
    invoice = mirror_invoice(sdk, cid, [])
    item = sdk.v1.invoice_items.create(
        params={
            "customer": cid,
            "invoice": invoice.id,
            "unit_amount_decimal": "1818.18",
            "quantity_decimal": "1.5",
            "currency": "aud",
        }
    )
    assert item.amount == 2727 and item.quantity == 1 and str(item.quantity_decimal) == "1.5"
    with pytest.raises(stripe.InvalidRequestError):
        sdk.v1.invoice_items.create(
            params={"customer": cid, "unit_amount_decimal": "1", "quantity_decimal": "-2", "currency": "aud"}
        )


def test_payments_invoices_and_the_email_record_survive_a_saved_sandbox(tmp_path: Path) -> None:
    from clinicsync.sandbox import persist

    emulator = StripeEmulator(search_delay_s=0)
    with serve(emulator) as srv:
        sdk = stripe.StripeClient(KEY, base_addresses={"api": srv.url}, max_network_retries=0)
        cid = customer(sdk)
        paid_intent(sdk, customer=cid, receipt_email="pat@example.com")
        invoice = mirror_invoice(sdk, cid, [1200])
        sdk.v1.invoices.finalize_invoice(invoice.id)
    path = persist.snapshot_path(tmp_path, emulator)
    persist.save(emulator, path)
    restored = StripeEmulator(search_delay_s=0)
    assert persist.load(restored, path)
    for name in ("emails", "ledger", "dump"):
        assert restored.admin(name, {}).body == emulator.admin(name, {}).body  # type: ignore[union-attr]
    with serve(restored) as srv:
        sdk = stripe.StripeClient(KEY, base_addresses={"api": srv.url}, max_network_retries=0)
        assert sdk.v1.invoices.pay(invoice.id, params={"paid_out_of_band": True}).status == "paid"
