"""The Stripe emulator behind the real sandbox server, driven by the official `stripe` SDK (16.x).

These tests pin down both the emulator and what the app's gateway relies on in the SDK: how a successful
response's headers are read (`obj.last_response.headers`) and how an error exposes them (`exc.headers`,
`exc.http_status`, `exc.error.type` / `exc.error.code`). See docs/sandbox-stripe.md.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import stripe

from clinicsync.sandbox.faults import FaultPlan
from clinicsync.sandbox.server import RunningServer, serve
from clinicsync.sandbox.stripe_emu import ACCOUNT_A, StripeEmulator

KEY_A = "sk_test_sandbox_clinic_a"
KEY_B = "sk_test_sandbox_clinic_b"


@pytest.fixture
def server() -> Iterator[RunningServer]:
    with serve(StripeEmulator(search_delay_s=0)) as srv:
        yield srv


def client(srv: RunningServer, key: str = KEY_A, retries: int = 0) -> stripe.StripeClient:
    return stripe.StripeClient(key, base_addresses={"api": srv.url}, max_network_retries=retries)


def admin(srv: RunningServer, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = httpx.post(f"{srv.url}/_sandbox/{action}", json=body or {}, timeout=10)
    response.raise_for_status()
    return response.json()


def stats(srv: RunningServer) -> dict[str, Any]:
    return httpx.get(f"{srv.url}/_sandbox/stats", timeout=10).json()


def test_create_retrieve_update_list_search_delete(server: RunningServer) -> None:
    sdk = client(server)
    created = sdk.v1.customers.create(
        params={
            "name": "Ada Example",
            "email": "ada@example.com",
            "phone": "+61 2 5550 0000",
            "address": {"line1": "1 Sample St", "city": "Sydney", "country": "AU"},
            "metadata": {"cliniko_patient_id": "42", "source": "cliniko"},
            "preferred_locales": ["en-AU"],
        }
    )
    assert created.id.startswith("cus_") and created.address is not None and created.address.city == "Sydney"
    assert created.last_response is not None and created.last_response.headers["Request-Id"].startswith("req_")

    fetched = sdk.v1.customers.retrieve(created.id)
    assert fetched.email == "ada@example.com" and fetched.metadata.to_dict() == created.metadata.to_dict()

    updated = sdk.v1.customers.update(created.id, params={"email": "", "metadata": {"source": ""}})
    assert updated.email is None and updated.metadata.to_dict() == {"cliniko_patient_id": "42"}

    listed = sdk.v1.customers.list(params={"limit": 10})
    assert [c.id for c in listed.data] == [created.id] and listed.has_more is False

    found = sdk.v1.customers.search(params={"query": "metadata['cliniko_patient_id']:'42'"})
    assert [c.id for c in found.data] == [created.id]

    deleted = sdk.v1.customers.delete(created.id)
    assert deleted.deleted is True
    again = sdk.v1.customers.retrieve(created.id)
    assert again.to_dict() == {"id": created.id, "object": "customer", "deleted": True}
    with pytest.raises(stripe.InvalidRequestError) as missing:
        sdk.v1.customers.update(created.id, params={"name": "Back"})
    assert missing.value.http_status == 404 and missing.value.code == "resource_missing"
    assert missing.value.param == "id"


def test_account_through_the_sdk(server: RunningServer) -> None:
    account = client(server).v1.accounts.retrieve_current()
    assert account.id == ACCOUNT_A and account.country == "AU" and account.default_currency == "aud"
    assert account.settings is not None and account.settings.dashboard.display_name


def test_idempotent_replay_and_its_header(server: RunningServer) -> None:
    sdk = client(server)
    params: dict[str, Any] = {"name": "Once", "email": "once@example.com"}
    first = sdk.v1.customers.create(params=params, options={"idempotency_key": "outbox-1"})
    second = sdk.v1.customers.create(params=params, options={"idempotency_key": "outbox-1"})
    assert first.id == second.id
    assert first.last_response is not None and second.last_response is not None
    assert first.last_response.headers.get("Idempotent-Replayed") is None
    # requests' CaseInsensitiveDict: any spelling of the header name works.
    assert second.last_response.headers["idempotent-replayed"] == "true"
    assert second.last_response.idempotency_key == "outbox-1"

    with pytest.raises(stripe.IdempotencyError) as conflict:
        sdk.v1.customers.create(params={"name": "Other"}, options={"idempotency_key": "outbox-1"})
    assert conflict.value.http_status == 400 and conflict.value.error is not None
    assert conflict.value.error.type == "idempotency_error"

    snapshot = stats(server)
    assert snapshot["mutations_total"] == 1 and snapshot["replays_total"] == 1
    assert len(admin(server, "dump")["data"]) == 1


def test_a_key_on_a_delete_has_no_effect_as_on_stripe(server: RunningServer) -> None:
    """Stripe saves idempotent results for POST only: a second DELETE is a new request, not a replay."""
    sdk = client(server)
    customer = sdk.v1.customers.create(params={"name": "Gone soon"})
    sdk.v1.customers.delete(customer.id, options={"idempotency_key": "del-1"})
    with pytest.raises(stripe.InvalidRequestError) as again:
        sdk.v1.customers.delete(customer.id, options={"idempotency_key": "del-1"})
    assert again.value.http_status == 404
    assert stats(server)["replays_total"] == 0


def test_stored_500_is_committed_then_replayed(server: RunningServer) -> None:
    sdk = client(server)
    server.set_faults(FaultPlan.parse("stored500=1,max=1"))
    with pytest.raises(stripe.APIError) as first:
        sdk.v1.customers.create(params={"name": "Stored"}, options={"idempotency_key": "k500"})
    assert first.value.http_status == 500 and first.value.headers.get("Idempotent-Replayed") is None
    with pytest.raises(stripe.APIError) as replay:
        sdk.v1.customers.create(params={"name": "Stored"}, options={"idempotency_key": "k500"})
    assert replay.value.http_status == 500 and replay.value.headers["Idempotent-Replayed"] == "true"
    # The change itself was kept: the object exists although every answer said 500.
    assert [c["name"] for c in admin(server, "dump")["data"]] == ["Stored"]
    assert stats(server)["mutations_total"] == 1


def test_rate_limit_429_carries_retry_headers() -> None:
    with serve(StripeEmulator(search_delay_s=0), rate_limits=True) as srv:
        sdk = client(srv)
        with pytest.raises(stripe.RateLimitError) as limited:
            for _ in range(200):
                sdk.v1.customers.list()
        exc = limited.value
        assert exc.http_status == 429 and exc.error is not None and exc.error.code == "rate_limit"
        assert exc.headers["Stripe-Should-Retry"] == "true" and exc.headers["Retry-After"] == "1"


def test_before_faults_are_not_executed_and_say_retry(server: RunningServer) -> None:
    sdk = client(server)
    server.set_faults(FaultPlan.parse("before:503=1"))
    with pytest.raises(stripe.APIError) as unavailable:
        sdk.v1.customers.create(params={"name": "Never"}, options={"idempotency_key": "k"})
    assert unavailable.value.http_status == 503 and unavailable.value.headers["stripe-should-retry"] == "true"
    server.set_faults(FaultPlan.parse("before:429=1"))
    with pytest.raises(stripe.RateLimitError) as lock:
        sdk.v1.customers.create(params={"name": "Never"}, options={"idempotency_key": "k"})
    assert lock.value.error is not None and lock.value.error.code == "lock_timeout"
    server.set_faults(FaultPlan())
    assert admin(server, "dump")["data"] == []
    # Nothing was saved under the key, so the same request now executes.
    done = sdk.v1.customers.create(params={"name": "Never"}, options={"idempotency_key": "k"})
    assert done.last_response is not None and "Idempotent-Replayed" not in done.last_response.headers


def test_sdk_retry_after_a_dropped_connection_replays_instead_of_duplicating(server: RunningServer) -> None:
    # The SDK puts one generated Idempotency-Key on a POST and reuses it for its own retries.
    sdk = client(server, retries=2)
    server.set_faults(FaultPlan.parse("after:reset=1,max=1"))
    customer = sdk.v1.customers.create(params={"name": "Exactly once"})
    assert customer.last_response is not None and customer.last_response.headers["Idempotent-Replayed"] == "true"
    assert [c["id"] for c in admin(server, "dump")["data"]] == [customer.id]


def test_keys_restricted_and_revoked(server: RunningServer) -> None:
    with pytest.raises(stripe.AuthenticationError) as unknown:
        client(server, "sk_test_unknown_key_9876").v1.customers.list()
    assert unknown.value.http_status == 401 and "sk_test_unknown_key_9876" not in str(unknown.value)

    readonly = client(server, "rk_test_sandbox_readonly_a")
    assert readonly.v1.customers.list().data == []
    with pytest.raises(stripe.PermissionError) as denied:
        readonly.v1.customers.create(params={"name": "x"})
    assert denied.value.http_status == 403 and "rak_customer_write" in str(denied.value)

    with pytest.raises(stripe.PermissionError):
        client(server, "rk_test_sandbox_noaccount_a").v1.accounts.retrieve_current()

    admin(server, "revoke", {"key": KEY_B})
    with pytest.raises(stripe.AuthenticationError) as revoked:
        client(server, KEY_B).v1.customers.list()
    assert "revoked" in str(revoked.value)


def test_seeded_customers_page_through_auto_pagination(server: RunningServer) -> None:
    seeded = admin(
        server, "seed", {"customers": [{"name": f"Patient {i}", "email": f"p{i}@example.com"} for i in range(250)]}
    )
    assert len(seeded["ids"]) == 250 and stats(server)["mutations_total"] == 0
    sdk = client(server)
    ids = [c.id for c in sdk.v1.customers.list(params={"limit": 100}).auto_paging_iter()]
    assert ids == list(reversed(seeded["ids"]))
    by_email = sdk.v1.customers.list(params={"email": "p7@example.com"})
    assert [c.id for c in by_email.data] == [seeded["ids"][7]]
    found = sdk.v1.customers.search(params={"query": "name~'Patient 1'", "limit": 20})
    assert len(list(found.auto_paging_iter())) == 111  # Patient 1, 10-19 and 100-199


def test_search_lags_until_the_delay_is_lowered() -> None:
    with serve(StripeEmulator(search_delay_s=3600)) as srv:
        sdk = client(srv)
        customer = sdk.v1.customers.create(params={"email": "late@example.com"})
        assert sdk.v1.customers.search(params={"query": "email:'late@example.com'"}).data == []
        # List by email is consistent at once: the way the app matches right after a write.
        assert [c.id for c in sdk.v1.customers.list(params={"email": "late@example.com"}).data] == [customer.id]
        admin(srv, "set_search_delay", {"seconds": 0})
        assert [c.id for c in sdk.v1.customers.search(params={"query": "email:'late@example.com'"}).data] == [
            customer.id
        ]


def test_validation_errors_through_the_sdk(server: RunningServer) -> None:
    sdk = client(server)
    with pytest.raises(stripe.InvalidRequestError) as bad_email:
        sdk.v1.customers.create(params={"email": "not an email"})
    assert bad_email.value.param == "email" and bad_email.value.http_status == 400
    with pytest.raises(stripe.InvalidRequestError) as too_many:
        sdk.v1.customers.create(params={"metadata": {f"k{i}": "v" for i in range(51)}})
    assert too_many.value.param == "metadata"
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        sdk.v1.customers.create(params={"nickname": "x"})  # type: ignore[typeddict-unknown-key]
    assert unknown.value.param == "nickname"
    assert stats(server)["mutations_total"] == 0


def test_client_timeout_surfaces_as_a_retryable_connection_error(server: RunningServer) -> None:
    # The SDK's default timeout is 80 s; the app passes its own RequestsClient with a short one.
    sdk = stripe.StripeClient(
        KEY_A,
        base_addresses={"api": server.url},
        max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=0.3),
    )
    server.set_faults(FaultPlan.parse("before:timeout=1,timeout_s=1"))
    with pytest.raises(stripe.APIConnectionError) as timed_out:
        sdk.v1.customers.create(params={"name": "Slow"}, options={"idempotency_key": "t1"})
    assert timed_out.value.http_status is None and timed_out.value.should_retry is True
    server.set_faults(FaultPlan())
    assert admin(server, "dump")["data"] == []


def test_a_client_dying_mid_body_creates_nothing(server: RunningServer) -> None:
    body = b"name=Half&email=half%40example.com&metadata[cliniko_patient_id]=7"
    head = (
        f"POST /v1/customers HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY_A}\r\n"
        f"Idempotency-Key: cut-1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head + body[:10])  # then the process "dies": the socket closes
    time.sleep(0.3)
    assert admin(server, "dump")["data"] == []


# -- products and prices through the SDK --------------------------------------------------------------


def test_product_with_default_price_then_a_new_price_replaces_it(server: RunningServer) -> None:
    """The price-change sequence Stripe allows: a new price, made the default, then the old one deactivated."""
    sdk = client(server)
    product = sdk.v1.products.create(
        params={
            "name": "Foam roller 90 cm",
            "metadata": {"cliniko_product_id": "700"},
            "default_price_data": {"currency": "aud", "unit_amount": 4500, "tax_behavior": "inclusive"},
        }
    )
    assert product.id.startswith("prod_") and isinstance(product.default_price, str)
    old = sdk.v1.prices.retrieve(product.default_price)
    assert (old.unit_amount, old.currency, old.tax_behavior, old.product) == (4500, "aud", "inclusive", product.id)

    with pytest.raises(stripe.InvalidRequestError) as archived_default:
        sdk.v1.prices.update(old.id, params={"active": False})
    assert archived_default.value.http_status == 400
    assert "default price of its product" in str(archived_default.value)

    new = sdk.v1.prices.create(
        params={"product": product.id, "currency": "aud", "unit_amount": 4950, "tax_behavior": "inclusive"}
    )
    switched = sdk.v1.products.update(product.id, params={"default_price": new.id})
    assert switched.default_price == new.id
    retired = sdk.v1.prices.update(old.id, params={"active": False})
    assert retired.active is False
    active = sdk.v1.prices.list(params={"product": product.id, "active": True})
    assert [p.id for p in active.data] == [new.id]
    expanded = sdk.v1.products.retrieve(product.id, params={"expand": ["default_price"]})
    assert expanded.default_price is not None and expanded.default_price.unit_amount == 4950  # type: ignore[union-attr]
    found = sdk.v1.products.search(params={"query": "metadata['cliniko_product_id']:'700'"})
    assert [p.id for p in found.data] == [product.id]


def test_a_price_amount_change_is_refused_with_the_param_named(server: RunningServer) -> None:
    sdk = client(server)
    product = sdk.v1.products.create(
        params={"name": "Heat pack", "default_price_data": {"currency": "aud", "unit_amount": 1995}}
    )
    assert isinstance(product.default_price, str)
    with pytest.raises(stripe.InvalidRequestError) as refused:
        sdk.v1.prices.update(product.default_price, params={"unit_amount": 2500})  # type: ignore[typeddict-unknown-key]
    exc = refused.value
    assert exc.http_status == 400 and exc.code == "parameter_unknown" and exc.param == "unit_amount"
    assert exc.error is not None and exc.error.type == "invalid_request_error"
    assert sdk.v1.prices.retrieve(product.default_price).unit_amount == 1995
    assert stats(server)["rejected"] == {"POST /v1/prices/{id}": 1}


def test_product_create_replays_under_its_idempotency_key(server: RunningServer) -> None:
    sdk = client(server)
    params: dict[str, Any] = {"name": "Once only", "default_price_data": {"currency": "aud", "unit_amount": 800}}
    first = sdk.v1.products.create(params=params, options={"idempotency_key": "product-row-1"})
    second = sdk.v1.products.create(params=params, options={"idempotency_key": "product-row-1"})
    assert first.id == second.id and first.default_price == second.default_price
    assert second.last_response is not None and second.last_response.headers["Idempotent-Replayed"] == "true"
    with pytest.raises(stripe.IdempotencyError):
        sdk.v1.products.create(params={**params, "name": "Other"}, options={"idempotency_key": "product-row-1"})
    dump = admin(server, "dump")
    assert len(dump["products"]) == 1 and len(dump["prices"]) == 1
    snapshot = stats(server)
    assert snapshot["mutations"] == {"POST /v1/products": 1} and snapshot["replays"] == {"POST /v1/products": 1}


def test_hand_made_products_page_through_the_sdk(server: RunningServer) -> None:
    entries = [
        {"name": f"Brace size {i}", "prices": [{"currency": "aud", "unit_amount": 1000 + i, "default": True}]}
        for i in range(120)
    ]
    seeded = admin(server, "seed", {"products": entries})["products"]
    sdk = client(server)
    listed = [p.id for p in sdk.v1.products.list(params={"limit": 50}).auto_paging_iter()]
    assert listed == [made["id"] for made in reversed(seeded)]
    prices = list(sdk.v1.prices.list(params={"limit": 100}).auto_paging_iter())
    assert len(prices) == 120 and {p.unit_amount for p in prices} == set(range(1000, 1120))
    assert stats(server)["mutations_total"] == 0
