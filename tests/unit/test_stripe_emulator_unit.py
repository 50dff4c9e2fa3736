"""The Stripe emulator called directly through `handle()` (no sockets): shapes, validation, idempotency,
search lag, keys and the server hooks. Integration tests through the real SDK live in tests/integration."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from clinicsync import stripe_limits as limits
from clinicsync.sandbox.faults import FaultPlan
from clinicsync.sandbox.http import Request, Response
from clinicsync.sandbox.stripe_emu import ACCOUNT_A, ACCOUNT_B, StripeEmulator, mask_key, parse_search_query

# Stripe's example objects, trimmed to the types the emulator serves (tests/specs/derive.py writes it).
STRIPE_EXAMPLES = Path(__file__).resolve().parents[1] / "specs" / "stripe.json"
KEY_A = "sk_test_sandbox_clinic_a"
KEY_B = "sk_test_sandbox_clinic_b"
LIVE_A = "sk_live_sandbox_clinic_a"
READONLY = "rk_test_sandbox_readonly_a"
NOACCOUNT = "rk_test_sandbox_noaccount_a"
Params = list[tuple[str, str]] | dict[str, str]


class FakeClock:
    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def req(
    method: str,
    path: str,
    params: Params = (),  # type: ignore[assignment]
    *,
    key: str | None = KEY_A,
    idem: str | None = None,
    headers: dict[str, str] | None = None,
) -> Request:
    pairs = list(params.items()) if isinstance(params, dict) else list(params)
    all_headers = {"authorization": f"Bearer {key}"} if key is not None else {}
    if idem is not None:
        all_headers["idempotency-key"] = idem
    all_headers.update(headers or {})
    if method == "POST":
        return Request(method, path, [], all_headers, urlencode(pairs).encode())
    return Request(method, path, pairs, all_headers)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def emu(clock: FakeClock) -> StripeEmulator:
    return StripeEmulator(search_delay_s=60.0, clock=clock)


def create(emu: StripeEmulator, params: Params = (), **kw: Any) -> dict[str, Any]:
    response = emu.handle(req("POST", "/v1/customers", params, **kw))
    assert response.status == 200, response.body
    return response.body


def error_of(response: Response, status: int) -> dict[str, Any]:
    assert response.status == status, response.body
    return response.body["error"]


# -- shape against Stripe's own fixtures --------------------------------------------------------------


def _fixture(name: str) -> dict[str, Any]:
    return json.loads(STRIPE_EXAMPLES.read_text(encoding="utf-8"))["resources"][name]


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}[type(value)]


def _assert_same_shape(expected: dict[str, Any], actual: dict[str, Any], where: str = "") -> None:
    for key, want in expected.items():
        assert key in actual, f"missing {where}{key}"
        got = actual[key]
        if want is None or got is None:
            continue
        assert _json_type(got) == _json_type(want), f"{where}{key}: {_json_type(got)} != {_json_type(want)}"
        if isinstance(want, dict) and want:
            _assert_same_shape(want, got, f"{where}{key}.")


def test_customer_has_every_fixture_key_with_the_same_json_type(emu: StripeEmulator) -> None:
    body = create(
        emu,
        [
            ("name", "Ada Example"),
            ("email", "ada@example.com"),
            ("phone", "+61 2 5550 1234"),
            ("address[line1]", "1 Sample St"),
            ("address[city]", "Sydney"),
            ("address[country]", "AU"),
            ("metadata[cliniko_patient_id]", "123"),
            ("preferred_locales[0]", "en-AU"),
        ],
    )
    _assert_same_shape(_fixture("customer"), body)
    assert re.fullmatch(r"cus_[A-Za-z0-9]{14,}", body["id"])
    assert (
        body["object"] == "customer" and body["livemode"] is False and body["metadata"] == {"cliniko_patient_id": "123"}
    )


def test_deleted_customer_and_account_match_fixture_shapes(emu: StripeEmulator) -> None:
    cid = create(emu, {"name": "X"})["id"]
    deleted = emu.handle(req("DELETE", f"/v1/customers/{cid}")).body
    _assert_same_shape(_fixture("deleted_customer"), deleted)
    assert deleted == {"id": cid, "object": "customer", "deleted": True}
    account = emu.handle(req("GET", "/v1/account")).body
    assert set(_fixture("account")) <= set(account)
    assert account["id"] == ACCOUNT_A and account["country"] == "AU" and account["default_currency"] == "aud"
    assert account["settings"]["dashboard"]["display_name"] and account["business_profile"]["name"]


# -- form encoding and empty-string semantics ---------------------------------------------------------


def test_nested_form_fields_and_expand_are_understood(emu: StripeEmulator) -> None:
    body = create(
        emu,
        [
            ("address[line1]", "1 Sample St"),
            ("address[postal_code]", "2000"),
            ("metadata[a]", "1"),
            ("metadata[b]", "2"),
            ("preferred_locales[0]", "en"),
            ("preferred_locales[1]", "fr"),
            ("expand[0]", "default_source"),
            ("balance", "-250"),
        ],
    )
    assert body["address"]["line1"] == "1 Sample St" and body["address"]["city"] is None
    assert body["metadata"] == {"a": "1", "b": "2"}
    assert body["preferred_locales"] == ["en", "fr"]
    assert body["balance"] == -250


def test_empty_strings_unset_fields_and_metadata(emu: StripeEmulator) -> None:
    cid = create(
        emu,
        [
            ("name", "N"),
            ("email", "n@example.com"),
            ("phone", "123"),
            ("address[city]", "Perth"),
            ("metadata[keep]", "1"),
            ("metadata[drop]", "2"),
        ],
    )["id"]
    path = f"/v1/customers/{cid}"
    body = emu.handle(
        req("POST", path, [("name", ""), ("email", ""), ("phone", ""), ("address", ""), ("metadata[drop]", "")])
    ).body
    assert (body["name"], body["email"], body["phone"], body["address"]) == (None, None, None, None)
    assert body["metadata"] == {"keep": "1"}
    body = emu.handle(req("POST", path, {"metadata": ""})).body
    assert body["metadata"] == {}


def test_metadata_update_merges_and_values_stay_strings(emu: StripeEmulator) -> None:
    cid = create(emu, {"metadata[a]": "1"})["id"]
    body = emu.handle(req("POST", f"/v1/customers/{cid}", {"metadata[b]": "true"})).body
    assert body["metadata"] == {"a": "1", "b": "true"}


@pytest.mark.parametrize("name", ["nickname", "address[planet]", "shipping[colour]"])
def test_unknown_parameter_is_rejected_with_its_name(emu: StripeEmulator, name: str) -> None:
    params = {name: "x"} if not name.startswith("shipping") else {name: "x", "shipping[name]": "n"}
    error = error_of(emu.handle(req("POST", "/v1/customers", params)), 400)
    assert error["type"] == "invalid_request_error"
    assert error["message"] == f"Received unknown parameter: {name}" and error["param"] == name


# -- validation ---------------------------------------------------------------------------------------


def test_metadata_limits(emu: StripeEmulator) -> None:
    too_many = [(f"metadata[k{i}]", "v") for i in range(limits.METADATA_MAX_KEYS + 1)]
    assert error_of(emu.handle(req("POST", "/v1/customers", too_many)), 400)["param"] == "metadata"
    assert create(emu, too_many[:-1])["metadata"]  # exactly the maximum is fine

    long_key = "k" * (limits.METADATA_KEY_MAX_CHARS + 1)
    assert error_of(emu.handle(req("POST", "/v1/customers", {f"metadata[{long_key}]": "v"})), 400)["param"] == (
        f"metadata[{long_key}]"
    )
    assert create(emu, {f"metadata[{long_key[:-1]}]": "v"})

    error = error_of(emu.handle(req("POST", "/v1/customers", {"metadata[a[b]]": "v"})), 400)
    assert "square brackets" in error["message"]

    long_value = "v" * (limits.METADATA_VALUE_MAX_CHARS + 1)
    assert (
        error_of(emu.handle(req("POST", "/v1/customers", {"metadata[k]": long_value})), 400)["param"] == "metadata[k]"
    )
    assert create(emu, {"metadata[k]": long_value[:-1]})


def test_metadata_key_count_applies_to_the_merged_result(emu: StripeEmulator) -> None:
    cid = create(emu, [(f"metadata[k{i}]", "v") for i in range(limits.METADATA_MAX_KEYS)])["id"]
    path = f"/v1/customers/{cid}"
    assert error_of(emu.handle(req("POST", path, {"metadata[extra]": "v"})), 400)["param"] == "metadata"
    # Deleting one key in the same request makes room.
    assert emu.handle(req("POST", path, {"metadata[extra]": "v", "metadata[k0]": ""})).status == 200


@pytest.mark.parametrize(
    ("field", "param"),
    [
        ("name", "name"),
        ("email", "email"),
        ("phone", "phone"),
        ("description", "description"),
        ("address.line1", "address[line1]"),
        ("address.postal_code", "address[postal_code]"),
        ("address.country", "address[country]"),
    ],
)
def test_field_length_caps_come_from_stripe_limits(emu: StripeEmulator, field: str, param: str) -> None:
    cap = limits.CUSTOMER_FIELD_MAX_CHARS[field]
    value = "a" * (cap + 1)
    if field == "email":
        value = "a" * (cap + 1 - len("@example.com")) + "@example.com"
    error = error_of(emu.handle(req("POST", "/v1/customers", {param: value})), 400)
    assert error["param"] == param and f"at most {cap} characters" in error["message"]
    ok = value[1:]
    assert emu.handle(req("POST", "/v1/customers", {param: ok})).status == 200


@pytest.mark.parametrize("email", ["plain", "a b@example.com", "a@b", "@example.com", "a@example.", "a@@example.com"])
def test_invalid_email_is_rejected(emu: StripeEmulator, email: str) -> None:
    error = error_of(emu.handle(req("POST", "/v1/customers", {"email": email})), 400)
    assert error["message"] == f"Invalid email address: {email}" and error["param"] == "email"


def test_nul_characters_are_rejected_anywhere(emu: StripeEmulator) -> None:
    for params in ({"name": "a\x00b"}, {"metadata[k]": "\x00"}, {"metadata[\x00]": "v"}):
        error = error_of(emu.handle(req("POST", "/v1/customers", params)), 400)
        assert error["message"].startswith("Invalid string:")
    assert error_of(emu.handle(req("GET", "/v1/customers", {"email": "a\x00@b.com"})), 400)["param"] == "email"


def test_other_enums_and_integers_are_validated(emu: StripeEmulator) -> None:
    assert error_of(emu.handle(req("POST", "/v1/customers", {"tax_exempt": "maybe"})), 400)["param"] == "tax_exempt"
    assert error_of(emu.handle(req("POST", "/v1/customers", {"balance": "1.5"})), 400)["param"] == "balance"
    assert create(emu, {"tax_exempt": "exempt"})["tax_exempt"] == "exempt"


# -- idempotency --------------------------------------------------------------------------------------


def test_same_key_and_params_replays_the_saved_response(emu: StripeEmulator) -> None:
    first = emu.handle(req("POST", "/v1/customers", {"name": "A", "email": "a@example.com"}, idem="k1"))
    # Parameter order does not matter: Stripe compares parameters, not bytes.
    again = emu.handle(req("POST", "/v1/customers", [("email", "a@example.com"), ("name", "A")], idem="k1"))
    assert first.status == again.status == 200 and first.body == again.body
    assert again.replayed and not again.mutated and first.mutated and not first.replayed
    assert again.headers["Idempotent-Replayed"] == "true" and again.headers["Idempotency-Key"] == "k1"
    assert first.headers["Request-Id"].startswith("req_") and first.headers["Idempotency-Key"] == "k1"
    assert "Idempotent-Replayed" not in first.headers
    assert len(emu.admin("dump", {}).body["data"]) == 1


def test_same_key_with_different_params_is_an_idempotency_error(emu: StripeEmulator) -> None:
    create(emu, {"name": "A"}, idem="k1")
    error = error_of(emu.handle(req("POST", "/v1/customers", {"name": "B"}, idem="k1")), 400)
    assert error["type"] == "idempotency_error"
    assert error["message"].startswith("Keys for idempotent requests can only be used with the same parameters")
    # Same key on another path is a different request too.
    assert emu.handle(req("POST", "/v1/customers/cus_nope", {"name": "A"}, idem="k1")).status == 400


def test_failed_validation_is_not_saved(emu: StripeEmulator) -> None:
    assert emu.handle(req("POST", "/v1/customers", {"email": "bad"}, idem="k1")).status == 400
    assert emu.handle(req("POST", "/v1/customers", {"email": "good@example.com"}, idem="k1")).status == 200
    assert emu.handle(req("POST", "/v1/customers", {"name": "x"}, key="sk_test_wrong_key", idem="k2")).status == 401
    assert emu.handle(req("POST", "/v1/customers", {"name": "x"}, idem="k2")).status == 200


def test_saved_responses_expire_after_the_ttl_and_on_admin_expiry(emu: StripeEmulator, clock: FakeClock) -> None:
    emu.idempotency_ttl_s = 100
    first = create(emu, {"name": "A"}, idem="k1")
    clock.advance(99)
    assert emu.handle(req("POST", "/v1/customers", {"name": "A"}, idem="k1")).body["id"] == first["id"]
    clock.advance(2)
    second = emu.handle(req("POST", "/v1/customers", {"name": "A"}, idem="k1"))
    assert not second.replayed and second.body["id"] != first["id"]  # pruned: executes again (a duplicate!)

    assert emu.handle(req("POST", "/v1/customers", {"name": "A"}, idem="k1")).replayed
    assert emu.admin("expire_idempotency", {}).body["expired"] >= 1
    assert not emu.handle(req("POST", "/v1/customers", {"name": "A"}, idem="k1")).replayed


def test_idempotency_keys_are_scoped_per_account_and_mode(emu: StripeEmulator) -> None:
    a = create(emu, {"name": "A"}, idem="shared")
    b = create(emu, {"name": "A"}, idem="shared", key=KEY_B)
    live = create(emu, {"name": "A"}, idem="shared", key=LIVE_A)
    assert len({a["id"], b["id"], live["id"]}) == 3 and live["livemode"] is True


def test_overlong_idempotency_key_is_rejected(emu: StripeEmulator) -> None:
    key = "k" * (limits.IDEMPOTENCY_KEY_MAX_CHARS + 1)
    assert error_of(emu.handle(req("POST", "/v1/customers", {}, idem=key)), 400)["type"] == "invalid_request_error"
    assert emu.handle(req("POST", "/v1/customers", {}, idem=key[:-1])).status == 200


def test_a_key_still_in_flight_gets_409() -> None:
    entered, release = threading.Event(), threading.Event()

    class Slow(StripeEmulator):
        def _execute(self, handler: Any, call: Any) -> Response:
            if call.request.method == "POST":
                entered.set()
                release.wait(5)
            return super()._execute(handler, call)

    emu = Slow()
    results: list[Response] = []
    worker = threading.Thread(target=lambda: results.append(emu.handle(req("POST", "/v1/customers", idem="k"))))
    worker.start()
    assert entered.wait(5)
    conflict = emu.handle(req("POST", "/v1/customers", idem="k"))
    release.set()
    worker.join(5)
    error = error_of(conflict, 409)
    assert error["type"] == "idempotency_error" and not conflict.mutated
    assert results[0].status == 200
    assert emu.handle(req("POST", "/v1/customers", idem="k")).replayed  # the first one was saved


def test_stored_500_commits_the_change_and_replays_the_500(emu: StripeEmulator) -> None:
    emu.faults = FaultPlan.parse("stored500=1,max=1")
    first = emu.handle(req("POST", "/v1/customers", {"name": "Kept"}, idem="k500"))
    assert error_of(first, 500)["type"] == "api_error" and first.mutated and not first.replayed
    replay = emu.handle(req("POST", "/v1/customers", {"name": "Kept"}, idem="k500"))
    assert replay.status == 500 and replay.replayed and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.body == first.body
    dump = emu.admin("dump", {}).body["data"]
    assert [c["name"] for c in dump] == ["Kept"]
    assert emu.handle(req("POST", "/v1/customers", {"name": "Next"}, idem="k-next")).status == 200  # max=1


def test_requests_without_a_key_are_never_saved(emu: StripeEmulator) -> None:
    a = create(emu, {"name": "A"})
    b = create(emu, {"name": "A"})
    assert a["id"] != b["id"]


# -- retrieve, update, delete -------------------------------------------------------------------------


def test_deleted_customer_semantics(emu: StripeEmulator) -> None:
    cid = create(emu, {"name": "Gone", "email": "gone@example.com"})["id"]
    path = f"/v1/customers/{cid}"
    deleted = emu.handle(req("DELETE", path))
    assert deleted.status == 200 and deleted.mutated and deleted.body["deleted"] is True
    assert emu.handle(req("GET", path)).body == {"id": cid, "object": "customer", "deleted": True}
    error = error_of(emu.handle(req("POST", path, {"name": "Back"})), 404)
    assert error["code"] == "resource_missing" and error["param"] == "id"
    assert error_of(emu.handle(req("DELETE", path)), 404)["code"] == "resource_missing"
    assert emu.handle(req("GET", "/v1/customers")).body["data"] == []
    assert emu.handle(req("GET", "/v1/customers", {"email": "gone@example.com"})).body["data"] == []
    assert emu.admin("dump", {}).body["data"][0]["deleted"] is True


def test_unknown_customer_and_unknown_url(emu: StripeEmulator) -> None:
    error = error_of(emu.handle(req("GET", "/v1/customers/cus_doesnotexist1")), 404)
    assert error["message"] == "No such customer: 'cus_doesnotexist1'" and error["param"] == "id"
    assert error_of(emu.handle(req("POST", "/v1/customers/cus_doesnotexist1", {"name": "x"})), 404)["param"] == "id"
    assert error_of(emu.handle(req("GET", "/v1/subscriptions")), 404)["message"].startswith("Unrecognized request URL")


def test_update_changes_only_what_was_sent(emu: StripeEmulator) -> None:
    cid = create(emu, {"name": "A", "email": "a@example.com", "phone": "1"})["id"]
    response = emu.handle(req("POST", f"/v1/customers/{cid}", {"phone": "2"}))
    assert response.mutated and response.body["name"] == "A" and response.body["phone"] == "2"
    assert emu.handle(req("GET", f"/v1/customers/{cid}")).body["phone"] == "2"


# -- list ---------------------------------------------------------------------------------------------


def _ids(response: Response) -> list[str]:
    return [c["id"] for c in response.body["data"]]


def test_list_is_newest_first_and_pages_with_cursors(emu: StripeEmulator) -> None:
    ids = [create(emu, {"name": f"c{i}"})["id"] for i in range(25)]
    newest_first = list(reversed(ids))
    page1 = emu.handle(req("GET", "/v1/customers"))
    assert page1.body["object"] == "list" and page1.body["url"] == "/v1/customers"
    assert _ids(page1) == newest_first[:10] and page1.body["has_more"] is True
    page2 = emu.handle(req("GET", "/v1/customers", {"limit": "10", "starting_after": newest_first[9]}))
    assert _ids(page2) == newest_first[10:20] and page2.body["has_more"] is True
    page3 = emu.handle(req("GET", "/v1/customers", {"limit": "10", "starting_after": newest_first[19]}))
    assert _ids(page3) == newest_first[20:] and page3.body["has_more"] is False
    back = emu.handle(req("GET", "/v1/customers", {"limit": "5", "ending_before": newest_first[10]}))
    assert _ids(back) == newest_first[5:10] and back.body["has_more"] is True
    assert _ids(emu.handle(req("GET", "/v1/customers", {"limit": "100"}))) == newest_first


def test_list_skips_deleted_customers_when_paging(emu: StripeEmulator) -> None:
    ids = [create(emu, {"name": f"c{i}"})["id"] for i in range(6)]
    emu.handle(req("DELETE", f"/v1/customers/{ids[3]}"))
    page = emu.handle(req("GET", "/v1/customers", {"limit": "2", "starting_after": ids[5]}))
    assert _ids(page) == [ids[4], ids[2]]
    # A deleted customer still works as a cursor.
    assert _ids(emu.handle(req("GET", "/v1/customers", {"limit": "1", "starting_after": ids[3]}))) == [ids[2]]


@pytest.mark.parametrize("limit", ["0", "101", "ten"])
def test_list_limit_bounds(emu: StripeEmulator, limit: str) -> None:
    assert error_of(emu.handle(req("GET", "/v1/customers", {"limit": limit})), 400)["param"] == "limit"


def test_list_by_email_is_exact_and_case_sensitive(emu: StripeEmulator) -> None:
    lower = create(emu, {"email": "pat@example.com"})["id"]
    upper = create(emu, {"email": "Pat@Example.com"})["id"]
    second = create(emu, {"email": "pat@example.com"})["id"]
    assert _ids(emu.handle(req("GET", "/v1/customers", {"email": "pat@example.com"}))) == [second, lower]
    assert _ids(emu.handle(req("GET", "/v1/customers", {"email": "Pat@Example.com"}))) == [upper]
    assert _ids(emu.handle(req("GET", "/v1/customers", {"email": "pat@example"}))) == []
    # Changing an email moves the customer in the index.
    emu.handle(req("POST", f"/v1/customers/{lower}", {"email": "Pat@Example.com"}))
    assert _ids(emu.handle(req("GET", "/v1/customers", {"email": "Pat@Example.com"}))) == [upper, lower]
    assert _ids(emu.handle(req("GET", "/v1/customers", {"email": "pat@example.com", "limit": "1"}))) == [second]


def test_list_created_filters_and_bad_cursor(emu: StripeEmulator, clock: FakeClock) -> None:
    old = create(emu, {"name": "old"})
    clock.advance(100)
    new = create(emu, {"name": "new"})
    got = emu.handle(req("GET", "/v1/customers", {"created[gte]": str(new["created"])}))
    assert _ids(got) == [new["id"]]
    assert _ids(emu.handle(req("GET", "/v1/customers", {"created[lt]": str(new["created"])}))) == [old["id"]]
    assert _ids(emu.handle(req("GET", "/v1/customers", {"created": str(old["created"])}))) == [old["id"]]
    error = error_of(emu.handle(req("GET", "/v1/customers", {"starting_after": "cus_unknown00000"})), 400)
    assert error["param"] == "starting_after" and error["code"] == "resource_missing"
    assert error_of(emu.handle(req("GET", "/v1/customers", {"colour": "red"})), 400)["param"] == "colour"


# -- search -------------------------------------------------------------------------------------------


def _search(emu: StripeEmulator, query: str, **extra: str) -> Response:
    return emu.handle(req("GET", "/v1/customers/search", {"query": query, **extra}))


def test_search_lags_writes_by_the_delay(emu: StripeEmulator, clock: FakeClock) -> None:
    cid = create(emu, {"name": "Lag", "email": "lag@example.com"})["id"]
    assert _search(emu, "email:'lag@example.com'").body["data"] == []
    clock.advance(60)
    found = _search(emu, "email:'lag@example.com'").body
    assert found["object"] == "search_result" and [c["id"] for c in found["data"]] == [cid]
    assert found["url"] == "/v1/customers/search" and found["next_page"] is None and found["has_more"] is False

    emu.handle(req("POST", f"/v1/customers/{cid}", {"email": "moved@example.com", "name": "Moved"}))
    stale = _search(emu, "email:'lag@example.com'").body["data"]
    assert [c["name"] for c in stale] == ["Lag"]  # the old state, as the index still has it
    assert _search(emu, "email:'moved@example.com'").body["data"] == []
    clock.advance(61)
    assert _search(emu, "email:'lag@example.com'").body["data"] == []
    assert [c["name"] for c in _search(emu, "email:'moved@example.com'").body["data"]] == ["Moved"]

    emu.handle(req("DELETE", f"/v1/customers/{cid}"))
    assert len(_search(emu, "name:'Moved'").body["data"]) == 1  # still indexed for a while
    clock.advance(61)
    assert _search(emu, "name:'Moved'").body["data"] == []


def test_search_language(emu: StripeEmulator) -> None:
    emu.admin("set_search_delay", {"seconds": 0})
    a = create(emu, {"name": "Jane Doe", "email": "jane@example.com", "metadata[cliniko_patient_id]": "123"})["id"]
    b = create(emu, {"name": "John Doe", "email": "john@example.com", "metadata[cliniko_patient_id]": "456"})["id"]

    def ids(query: str) -> list[str]:
        return [c["id"] for c in _search(emu, query).body["data"]]

    assert ids("email:'JANE@example.com'") == [a]  # string fields match case-insensitively
    assert ids('name:"John Doe"') == [b]
    assert ids("metadata['cliniko_patient_id']:'123'") == [a]
    assert ids("metadata[\"cliniko_patient_id\"]:'456' AND email:'john@example.com'") == [b]
    assert ids("metadata['cliniko_patient_id']:'123' AND email:'john@example.com'") == []
    assert ids("email:'jane@example.com' OR email:'john@example.com'") == [b, a]
    assert ids("name~'Doe' -email:'jane@example.com'") == [b]
    assert ids("metadata['cliniko_patient_id']:'12'") == []
    assert set(ids("created>0")) == {a, b}


@pytest.mark.parametrize(
    "query",
    ["", "email:jane", "colour:'red'", "email:'a' AND name:'b' OR phone:'c'", "name~'ab'", "email:'a'name:'b'"],
)
def test_bad_search_queries_are_400(emu: StripeEmulator, query: str) -> None:
    assert error_of(_search(emu, query), 400)["param"] == "query"


def test_search_pages_and_total_count(emu: StripeEmulator) -> None:
    emu.admin("set_search_delay", {"seconds": 0})
    ids = [create(emu, {"name": f"Sam {i}", "email": f"s{i}@example.com"})["id"] for i in range(5)]
    first = _search(emu, "name~'Sam'", limit="2", **{"expand[0]": "total_count"}).body
    assert first["total_count"] == 5 and first["has_more"] is True
    seen = [c["id"] for c in first["data"]]
    page = first["next_page"]
    while page:
        body = _search(emu, "name~'Sam'", limit="2", page=page).body
        seen += [c["id"] for c in body["data"]]
        page = body["next_page"]
    assert seen == list(reversed(ids))
    assert error_of(_search(emu, "name~'Sam'", page="garbage!"), 400)["param"] == "page"


def test_parse_search_query_returns_join_and_clauses() -> None:
    join, clauses = parse_search_query("email:'a@b.co' or metadata['k']:'v'")
    assert join == "OR" and [c.field for c in clauses] == ["email", "metadata"] and clauses[1].metadata_key == "k"


# -- keys ---------------------------------------------------------------------------------------------


def test_unknown_and_missing_keys_are_401_with_a_masked_key(emu: StripeEmulator) -> None:
    fake = "sk_test_not_a_sandbox_keyxyz"
    error = error_of(emu.handle(req("GET", "/v1/customers", key=fake)), 401)
    assert error["type"] == "authentication_error"
    assert error["message"] == f"Invalid API Key provided: {mask_key(fake)}"
    assert fake not in error["message"] and error["message"].endswith("*yxyz")
    assert error_of(emu.handle(req("GET", "/v1/customers", key=None)), 401)["message"].startswith("You did not provide")


def test_basic_auth_is_accepted(emu: StripeEmulator) -> None:
    basic = "Basic " + base64.b64encode(f"{KEY_A}:".encode()).decode()
    response = emu.handle(req("GET", "/v1/customers", key=None, headers={"authorization": basic}))
    assert response.status == 200


def test_read_only_restricted_key(emu: StripeEmulator) -> None:
    cid = create(emu, {"name": "R"})["id"]
    assert emu.handle(req("GET", f"/v1/customers/{cid}", key=READONLY)).status == 200
    assert emu.handle(req("GET", "/v1/customers", key=READONLY)).status == 200
    for method, path in (
        ("POST", "/v1/customers"),
        ("POST", f"/v1/customers/{cid}"),
        ("DELETE", f"/v1/customers/{cid}"),
    ):
        error = error_of(emu.handle(req(method, path, {"name": "x"} if method == "POST" else {}, key=READONLY)), 403)
        assert error["type"] == "permission_error"
        assert error["message"].startswith("The provided key 'rk_test_")
        assert "does not have the required permissions for this endpoint" in error["message"]
        assert "Having the 'rak_customer_write' permission would allow this request to continue." in error["message"]
        assert READONLY not in error["message"]


def test_key_without_account_permission(emu: StripeEmulator) -> None:
    assert create(emu, {"name": "ok"}, key=NOACCOUNT)
    error = error_of(emu.handle(req("GET", "/v1/account", key=NOACCOUNT)), 403)
    assert error["type"] == "permission_error"


def test_revoked_key_gets_401(emu: StripeEmulator) -> None:
    assert emu.handle(req("GET", "/v1/account", key=KEY_B)).status == 200
    assert emu.admin("revoke", {"key": KEY_B}).status == 200
    error = error_of(emu.handle(req("GET", "/v1/account", key=KEY_B)), 401)
    assert "expired/been revoked" in error["message"] and KEY_B not in error["message"]
    assert emu.handle(req("GET", "/v1/account", key=KEY_A)).status == 200
    emu.admin("reset", {})
    assert emu.handle(req("GET", "/v1/account", key=KEY_B)).status == 200


def test_accounts_and_modes_are_separate(emu: StripeEmulator) -> None:
    a = create(emu, {"name": "A", "email": "same@example.com"})["id"]
    create(emu, {"name": "B", "email": "same@example.com"}, key=KEY_B)
    live = create(emu, {"name": "Live", "email": "same@example.com"}, key=LIVE_A)
    assert [c["name"] for c in emu.handle(req("GET", "/v1/customers")).body["data"]] == ["A"]
    assert [c["name"] for c in emu.handle(req("GET", "/v1/customers", key=KEY_B)).body["data"]] == ["B"]
    assert [c["name"] for c in emu.handle(req("GET", "/v1/customers", key=LIVE_A)).body["data"]] == ["Live"]
    assert error_of(emu.handle(req("GET", f"/v1/customers/{a}", key=KEY_B)), 404)["code"] == "resource_missing"
    cross = error_of(emu.handle(req("GET", f"/v1/customers/{live['id']}")), 404)
    assert "exists in live mode, but a test mode key was used" in cross["message"]
    assert emu.handle(req("GET", "/v1/account", key=KEY_B)).body["id"] == ACCOUNT_B
    assert emu.admin("dump", {"account": ACCOUNT_A, "livemode": True}).body["data"][0]["livemode"] is True


# -- server hooks -------------------------------------------------------------------------------------


def test_rate_limit_buckets(emu: StripeEmulator) -> None:
    plain = emu.rate_limit(req("GET", "/v1/customers"))
    assert plain is not None
    assert (plain.key, plain.limit, plain.per_seconds) == (f"{ACCOUNT_A}:test", limits.RATE_LIMIT_PER_SECOND["test"], 1)
    live = emu.rate_limit(req("POST", "/v1/customers", key=LIVE_A))
    assert live is not None and live.limit == limits.RATE_LIMIT_PER_SECOND["live"] and live.key == f"{ACCOUNT_A}:live"
    search = emu.rate_limit(req("GET", "/v1/customers/search", {"query": "x"}))
    assert search is not None and search.limit == limits.SEARCH_RATE_LIMIT_PER_SECOND and search.key != plain.key
    assert emu.rate_limit(req("GET", "/_sandbox/stats")) is None


def test_rate_limited_and_fault_responses(emu: StripeEmulator) -> None:
    limited = emu.rate_limited_response(req("POST", "/v1/customers", idem="k"), time.time() + 1)
    assert error_of(limited, 429)["type"] == "rate_limit_error"
    assert limited.headers["Stripe-Should-Retry"] == "true" and limited.headers["Retry-After"] == "1"
    assert limited.headers["Request-Id"].startswith("req_") and not limited.mutated
    lock = emu.fault_response(req("POST", "/v1/customers"), 429)
    assert error_of(lock, 429)["code"] == "lock_timeout" and lock.body["error"]["type"] == "rate_limit_error"
    for status in (500, 502, 503):
        fault = emu.fault_response(req("POST", "/v1/customers", idem="k"), status)
        assert error_of(fault, status)["type"] == "api_error" and fault.headers["Stripe-Should-Retry"] == "true"
    # Nothing was executed or saved: the key is still free.
    assert not emu.handle(req("POST", "/v1/customers", idem="k")).replayed


def test_endpoint_names_and_fault_eligibility(emu: StripeEmulator) -> None:
    assert emu.endpoint_name(req("POST", "/v1/customers")) == "POST /v1/customers"
    assert emu.endpoint_name(req("POST", "/v1/customers/cus_Abc123")) == "POST /v1/customers/{id}"
    assert emu.endpoint_name(req("DELETE", "/v1/customers/cus_Abc123")) == "DELETE /v1/customers/{id}"
    assert emu.endpoint_name(req("GET", "/v1/customers/search")) == "GET /v1/customers/search"
    assert emu.fault_eligible(req("GET", "/v1/customers")) and not emu.fault_eligible(req("GET", "/_sandbox/dump"))


# -- admin --------------------------------------------------------------------------------------------


def test_admin_seed_dump_delete(emu: StripeEmulator, clock: FakeClock) -> None:
    seeded = emu.admin(
        "seed",
        {
            "customers": [
                {"name": "Old One", "email": "old@example.com", "metadata": {"n": 1}, "expected": "ignored"},
                {"name": "Old Two", "address": {"city": "Hobart", "country": "AU"}, "created": 1_600_000_000},
            ]
        },
    )
    assert seeded.status == 200 and not seeded.mutated and seeded.body["ignored_fields"] == ["expected"]
    ids = seeded.body["ids"]
    assert len(ids) == 2
    # Seeded data is pre-existing: Search sees it immediately.
    assert [c["id"] for c in _search(emu, "email:'old@example.com'").body["data"]] == [ids[0]]
    dump = emu.admin("dump", {}).body["data"]
    assert [c["metadata"] for c in dump] == [{"n": "1"}, {}] and dump[1]["created"] == 1_600_000_000

    result = emu.admin("delete", {"ids": [ids[0], "cus_missing000000"]}).body
    assert result == {"deleted": [ids[0]], "missing": ["cus_missing000000"]}
    assert emu.handle(req("GET", f"/v1/customers/{ids[0]}")).body["deleted"] is True
    assert [c["deleted"] for c in emu.admin("dump", {}).body["data"]] == [True, False]

    assert emu.admin("seed", {"account": ACCOUNT_B, "customers": [{"name": "B"}]}).status == 200
    assert len(emu.handle(req("GET", "/v1/customers", key=KEY_B)).body["data"]) == 1
    bad = emu.admin("seed", {"customers": [{"email": "not-an-email"}]})
    assert bad is not None and bad.status == 400
    assert emu.admin("nonsense", {}) is None
    assert emu.admin("reset", {}).status == 200 and emu.admin("dump", {}).body["data"] == []


def test_admin_keys_lists_the_sandbox_keys(emu: StripeEmulator) -> None:
    keys = {k["key"] for k in emu.admin("keys", {}).body["keys"]}
    assert keys == {KEY_A, KEY_B, LIVE_A, "sk_live_sandbox_clinic_b", READONLY, NOACCOUNT}
    assert StripeEmulator(mode="live").default_key == LIVE_A


# -- scale and threads --------------------------------------------------------------------------------


def test_thousands_of_customers_stay_fast() -> None:
    emu = StripeEmulator(search_delay_s=0)
    started = time.perf_counter()
    for i in range(5000):
        emu.handle(req("POST", "/v1/customers", {"name": f"P {i}", "email": f"p{i}@example.com"}, idem=f"k{i}"))
    created = time.perf_counter() - started
    started = time.perf_counter()
    cursor, seen = None, 0
    while True:
        params = {"limit": "100", **({"starting_after": cursor} if cursor else {})}
        body = emu.handle(req("GET", "/v1/customers", params)).body
        seen += len(body["data"])
        if not body["has_more"]:
            break
        cursor = body["data"][-1]["id"]
    listed = time.perf_counter() - started
    assert seen == 5000
    assert _ids(emu.handle(req("GET", "/v1/customers", {"email": "p4321@example.com"})))
    # Generous bounds (a slow CI box); a linear-per-request bug would be orders of magnitude slower.
    assert created < 10 and listed < 5, (created, listed)


def test_concurrent_creates_are_all_kept() -> None:
    emu = StripeEmulator()

    def worker(n: int) -> None:
        for i in range(100):
            emu.handle(req("POST", "/v1/customers", {"name": f"{n}-{i}"}, idem=f"{n}-{i}"))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dump = emu.admin("dump", {}).body["data"]
    assert len(dump) == 800 and len({c["id"] for c in dump}) == 800


def test_a_truncated_body_is_never_executed(emu: StripeEmulator) -> None:
    # What a client killed mid-send leaves behind: headers promise more body than arrived.
    full = req("POST", "/v1/customers", {"name": "Whole", "email": "whole@example.com"}, idem="k-cut")
    cut = Request("POST", full.path, [], {**full.headers, "content-length": str(len(full.body))}, full.body[:5])
    response = emu.handle(cut)
    assert response.status == 400 and not response.mutated
    assert emu.admin("dump", {}).body["data"] == []
    whole = Request("POST", full.path, [], {**full.headers, "content-length": str(len(full.body))}, full.body)
    assert emu.handle(whole).status == 200  # the key was not burnt by the truncated attempt


# -- products and prices ------------------------------------------------------------------------------

AUD_45 = {"default_price_data[currency]": "aud", "default_price_data[unit_amount]": "4500"}


def create_product(emu: StripeEmulator, params: Params = (), **kw: Any) -> dict[str, Any]:
    pairs = list(params.items()) if isinstance(params, dict) else list(params)
    response = emu.handle(req("POST", "/v1/products", [("name", "Foam roller"), *pairs], **kw))
    assert response.status == 200, response.body
    return response.body


def create_price(emu: StripeEmulator, product: str, amount: int = 5000, **extra: str) -> dict[str, Any]:
    params = {"product": product, "currency": "aud", "unit_amount": str(amount), **extra}
    response = emu.handle(req("POST", "/v1/prices", params))
    assert response.status == 200, response.body
    return response.body


def update(emu: StripeEmulator, path: str, params: Params) -> Response:
    return emu.handle(req("POST", path, params))


def test_product_price_and_deleted_product_have_every_fixture_key(emu: StripeEmulator) -> None:
    product = create_product(emu, {**AUD_45, "description": "90 cm", "metadata[cliniko_product_id]": "77"})
    _assert_same_shape(_fixture("product"), product)
    assert re.fullmatch(r"prod_[A-Za-z0-9]{14,}", product["id"]) and product["object"] == "product"
    assert product["created"] == product["updated"] and product["livemode"] is False
    price = emu.handle(req("GET", f"/v1/prices/{product['default_price']}")).body
    recurring = create_price(emu, product["id"], **{"recurring[interval]": "month"})
    for body in (price, recurring):  # the fixture's price is recurring; a one-time price has recurring null
        _assert_same_shape(_fixture("price"), body)
        assert re.fullmatch(r"price_[A-Za-z0-9]{24}", body["id"])
    assert recurring["recurring"]["interval_count"] == 1 and recurring["type"] == "recurring"
    bare = create_product(emu, {"name": "Unpriced"})
    deleted = emu.handle(req("DELETE", f"/v1/products/{bare['id']}")).body
    _assert_same_shape(_fixture("deleted_product"), deleted)


def test_create_with_default_price_data_makes_the_price_its_default(emu: StripeEmulator) -> None:
    product = create_product(
        emu,
        {
            "default_price_data[currency]": "AUD",  # Stripe keeps currencies lower-case
            "default_price_data[unit_amount]": "4500",
            "default_price_data[tax_behavior]": "inclusive",
            "default_price_data[metadata][cliniko_product_id]": "77",
        },
    )
    prices = emu.handle(req("GET", "/v1/prices", {"product": product["id"]})).body["data"]
    assert [p["id"] for p in prices] == [product["default_price"]]
    price = prices[0]
    assert (price["unit_amount"], price["unit_amount_decimal"], price["currency"]) == (4500, "4500", "aud")
    assert (
        price["tax_behavior"] == "inclusive" and price["type"] == "one_time" and price["billing_scheme"] == "per_unit"
    )
    assert price["metadata"] == {"cliniko_product_id": "77"} and price["active"] is True
    assert price["product"] == product["id"]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"default_price_data[unit_amount]": "100"}, "default_price_data[currency]"),
        ({"default_price_data[currency]": "aud"}, "default_price_data[unit_amount]"),
        ({**AUD_45, "default_price_data[nickname]": "n"}, "default_price_data[nickname]"),
        ({**AUD_45, "default_price_data[unit_amount_decimal]": "1"}, "default_price_data[unit_amount]"),
        (
            {"default_price_data[currency]": "xyz", "default_price_data[unit_amount]": "1"},
            "default_price_data[currency]",
        ),
    ],
)
def test_bad_default_price_data_names_the_nested_param(emu: StripeEmulator, params: dict[str, str], param: str) -> None:
    error = error_of(emu.handle(req("POST", "/v1/products", {"name": "X", **params})), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert emu.admin("dump", {}).body["products"] == [] and emu.admin("dump", {}).body["prices"] == []


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"unit_amount": "5000"}, "Received unknown parameter: unit_amount"),
        ({"currency": "usd"}, "Received unknown parameter: currency"),
        ({"product": "prod_Other"}, "Received unknown parameter: product"),
        ({"unit_amount": "1", "currency": "usd"}, "Received unknown parameters: currency, unit_amount"),
    ],
)
def test_a_price_s_amount_currency_and_product_never_change(
    emu: StripeEmulator, params: dict[str, str], message: str
) -> None:
    product = create_product(emu, AUD_45)
    path = f"/v1/prices/{product['default_price']}"
    error = error_of(update(emu, path, params), 400)
    assert error["message"] == message and error["code"] == "parameter_unknown"
    assert error["param"] == sorted(params)[0]
    assert emu.handle(req("GET", path)).body["unit_amount"] == 4500


def test_what_a_price_update_may_change(emu: StripeEmulator) -> None:
    product = create_product(emu)
    price = create_price(emu, product["id"], **{"metadata[a]": "1", "metadata[b]": "2"})
    path = f"/v1/prices/{price['id']}"
    body = update(emu, path, {"nickname": "Retail", "lookup_key": "roller", "metadata[b]": ""}).body
    assert (body["nickname"], body["lookup_key"], body["metadata"]) == ("Retail", "roller", {"a": "1"})
    assert update(emu, path, {"tax_behavior": "exclusive"}).body["tax_behavior"] == "exclusive"
    assert update(emu, path, {"tax_behavior": "exclusive"}).status == 200  # the same value again is no change
    error = error_of(update(emu, path, {"tax_behavior": "inclusive"}), 400)
    assert error["param"] == "tax_behavior"
    assert error_of(update(emu, path, {"nickname": ""}), 400)["message"].startswith("You passed an empty string")
    off = update(emu, path, {"active": "false"})
    assert off.status == 200 and off.body["active"] is False and off.mutated
    assert update(emu, path, {"active": "true"}).body["active"] is True


def test_a_default_price_cannot_be_archived_until_another_is_the_default(emu: StripeEmulator) -> None:
    product = create_product(emu, AUD_45)
    old = product["default_price"]
    error = error_of(update(emu, f"/v1/prices/{old}", {"active": "false"}), 400)
    assert error["message"] == "This price cannot be archived because it is the default price of its product."
    assert error["type"] == "invalid_request_error"
    new = create_price(emu, product["id"], 5000)
    switched = update(emu, f"/v1/products/{product['id']}", {"default_price": new["id"]}).body
    assert switched["default_price"] == new["id"]
    assert update(emu, f"/v1/prices/{old}", {"active": "false"}).body["active"] is False
    listed = emu.handle(req("GET", "/v1/prices", {"product": product["id"], "active": "true"})).body["data"]
    assert [p["id"] for p in listed] == [new["id"]]


def test_a_default_price_must_be_an_active_price_of_the_product(emu: StripeEmulator) -> None:
    product = create_product(emu, AUD_45)
    other = create_product(emu, {"name": "Other", **AUD_45})
    path = f"/v1/products/{product['id']}"
    assert error_of(update(emu, path, {"default_price": other["default_price"]}), 400)["param"] == "default_price"
    missing = error_of(update(emu, path, {"default_price": "price_missing"}), 400)
    assert missing["code"] == "resource_missing" and missing["param"] == "default_price"
    retired = create_price(emu, product["id"], 4000)
    update(emu, f"/v1/prices/{retired['id']}", {"active": "false"})
    inactive = error_of(update(emu, path, {"default_price": retired["id"]}), 400)
    assert "inactive" in inactive["message"] and inactive["param"] == "default_price"
    assert error_of(update(emu, path, {"default_price": ""}), 400)["param"] == "default_price"  # cannot be unset
    assert emu.handle(req("GET", path)).body["default_price"] == product["default_price"]


def test_a_lookup_key_belongs_to_one_price_until_transferred(emu: StripeEmulator) -> None:
    product = create_product(emu)
    first = create_price(emu, product["id"], 100, lookup_key="standard")
    update(emu, f"/v1/prices/{first['id']}", {"active": "false"})  # an inactive holder still holds it
    params = {"product": product["id"], "currency": "aud", "unit_amount": "200", "lookup_key": "standard"}
    error = error_of(emu.handle(req("POST", "/v1/prices", params)), 400)
    assert (
        error["message"] == f"A price (`{first['id']}`) already uses that lookup key."
        and error["param"] == "lookup_key"
    )
    second = create_price(emu, product["id"], 200, lookup_key="standard", transfer_lookup_key="true")
    assert emu.handle(req("GET", f"/v1/prices/{first['id']}")).body["lookup_key"] is None
    found = emu.handle(req("GET", "/v1/prices", [("lookup_keys[0]", "standard"), ("lookup_keys[1]", "none")]))
    assert [p["id"] for p in found.body["data"]] == [second["id"]]


def test_product_validation_and_limits(emu: StripeEmulator) -> None:
    missing = error_of(emu.handle(req("POST", "/v1/products", {"description": "no name"})), 400)
    assert missing["param"] == "name" and missing["code"] == "parameter_missing"
    cap = limits.PRODUCT_FIELD_MAX_CHARS["name"]
    too_long = error_of(emu.handle(req("POST", "/v1/products", {"name": "n" * (cap + 1)})), 400)
    assert too_long["param"] == "name" and f"at most {cap} characters" in too_long["message"]
    assert create_product(emu, {"name": "n" * cap})["name"] == "n" * cap
    too_many = [("name", "M"), *((f"metadata[k{i}]", "v") for i in range(limits.METADATA_MAX_KEYS + 1))]
    assert error_of(emu.handle(req("POST", "/v1/products", too_many)), 400)["param"] == "metadata"
    product = create_product(emu, {"description": "d", "metadata[a]": "1"})
    path = f"/v1/products/{product['id']}"
    assert error_of(update(emu, path, {"name": ""}), 400)["message"].startswith("You passed an empty string for 'name'")
    body = update(emu, path, {"description": "", "metadata[b]": "2", "active": "false"}).body
    assert body["description"] is None and body["metadata"] == {"a": "1", "b": "2"} and body["active"] is False
    assert error_of(update(emu, path, {"active": "maybe"}), 400)["param"] == "active"
    big = {"product": product["id"], "currency": "aud", "unit_amount": str(limits.PRICE_MAX_UNIT_AMOUNT + 1)}
    assert error_of(emu.handle(req("POST", "/v1/prices", big)), 400)["param"] == "unit_amount"
    long_nickname = "n" * (limits.PRICE_FIELD_MAX_CHARS["nickname"] + 1)
    nick = {"product": product["id"], "currency": "aud", "unit_amount": "1", "nickname": long_nickname}
    assert error_of(emu.handle(req("POST", "/v1/prices", nick)), 400)["param"] == "nickname"
    no_product = {"product": "prod_missing", "currency": "aud", "unit_amount": "1"}
    assert error_of(emu.handle(req("POST", "/v1/prices", no_product)), 400)["param"] == "product"


def test_a_sub_cent_price_exists_only_as_its_decimal(emu: StripeEmulator) -> None:
    product = create_product(emu)
    price = emu.handle(
        req("POST", "/v1/prices", {"product": product["id"], "currency": "aud", "unit_amount_decimal": "8181.8"})
    ).body
    assert price["unit_amount"] is None and price["unit_amount_decimal"] == "8181.8"
    assert (
        error_of(
            emu.handle(
                req("POST", "/v1/prices", {"product": product["id"], "currency": "aud", "unit_amount_decimal": "1e3"})
            ),
            400,
        )["param"]
        == "unit_amount_decimal"
    )


def test_a_chosen_product_id_is_unique(emu: StripeEmulator) -> None:
    assert create_product(emu, {"id": "prod_cliniko_42"})["id"] == "prod_cliniko_42"
    error = error_of(emu.handle(req("POST", "/v1/products", {"name": "Again", "id": "prod_cliniko_42"})), 400)
    assert error["code"] == "resource_already_exists" and error["param"] == "id"


def test_a_product_with_prices_cannot_be_deleted(emu: StripeEmulator) -> None:
    priced = create_product(emu, AUD_45)
    error = error_of(emu.handle(req("DELETE", f"/v1/products/{priced['id']}")), 400)
    assert "cannot be deleted because it has one or more user-created prices" in error["message"]
    bare = create_product(emu, {"name": "Bare"})
    assert emu.handle(req("DELETE", f"/v1/products/{bare['id']}")).mutated
    assert error_of(emu.handle(req("GET", f"/v1/products/{bare['id']}")), 404)["code"] == "resource_missing"
    assert [p["id"] for p in emu.handle(req("GET", "/v1/products")).body["data"]] == [priced["id"]]


def test_expand_default_price_and_product(emu: StripeEmulator) -> None:
    product = create_product(emu, {**AUD_45, "expand[0]": "default_price"})
    assert product["default_price"]["unit_amount"] == 4500
    listed = emu.handle(req("GET", "/v1/products", {"expand[0]": "data.default_price"})).body["data"]
    assert listed[0]["default_price"]["object"] == "price"
    price_id = product["default_price"]["id"]
    price = emu.handle(req("GET", f"/v1/prices/{price_id}", {"expand[0]": "product"})).body
    assert price["product"]["id"] == product["id"]
    assert error_of(emu.handle(req("GET", f"/v1/prices/{price_id}", {"expand[0]": "default_price"})), 400)


def test_product_and_price_lists_filter_and_page_like_customers(emu: StripeEmulator, clock: FakeClock) -> None:
    ids = []
    for i in range(7):
        ids.append(create_product(emu, {"name": f"P{i}", **AUD_45})["id"])
        clock.advance(10)
    update(emu, f"/v1/products/{ids[2]}", {"active": "false"})
    newest_first = list(reversed(ids))
    page = emu.handle(req("GET", "/v1/products", {"limit": "3"})).body
    assert [p["id"] for p in page["data"]] == newest_first[:3] and page["has_more"] is True
    after = emu.handle(req("GET", "/v1/products", {"limit": "3", "starting_after": newest_first[2]})).body
    assert [p["id"] for p in after["data"]] == newest_first[3:6]
    active = emu.handle(req("GET", "/v1/products", {"active": "false"})).body["data"]
    assert [p["id"] for p in active] == [ids[2]]
    chosen = emu.handle(req("GET", "/v1/products", [("ids[0]", ids[1]), ("ids[1]", ids[4]), ("ids[2]", "prod_none")]))
    assert [p["id"] for p in chosen.body["data"]] == [ids[4], ids[1]]
    since = emu.admin("dump", {}).body["products"][5]["created"]
    assert [p["id"] for p in emu.handle(req("GET", "/v1/products", {"created[gte]": str(since)})).body["data"]] == [
        ids[6],
        ids[5],
    ]
    missing = error_of(emu.handle(req("GET", "/v1/products", {"starting_after": "prod_gone"})), 400)
    assert missing["param"] == "starting_after" and missing["message"] == "No such product: 'prod_gone'"
    create_price(emu, ids[0], 100, currency="usd", **{"recurring[interval]": "year"})
    usd = emu.handle(req("GET", "/v1/prices", {"currency": "usd"})).body["data"]
    assert len(usd) == 1 and usd[0]["type"] == "recurring"
    one_time = emu.handle(req("GET", "/v1/prices", {"product": ids[0], "type": "one_time"})).body["data"]
    assert [p["unit_amount"] for p in one_time] == [4500]
    assert error_of(emu.handle(req("GET", "/v1/prices", {"unit_amount": "4500"})), 400)["param"] == "unit_amount"


def test_product_search_lags_and_reads_metadata_name_and_active(emu: StripeEmulator, clock: FakeClock) -> None:
    product = create_product(emu, {"name": "Heat pack", "metadata[cliniko_product_id]": "9"})

    def found(query: str) -> list[str]:
        body = emu.handle(req("GET", "/v1/products/search", {"query": query})).body
        assert body["url"] == "/v1/products/search", body
        return [p["name"] for p in body["data"]]

    assert found("metadata['cliniko_product_id']:'9'") == []  # not indexed yet
    clock.advance(60)
    assert found("metadata['cliniko_product_id']:'9'") == ["Heat pack"]
    assert found("name:'heat pack' AND active:'true'") == ["Heat pack"]
    update(emu, f"/v1/products/{product['id']}", {"name": "Wheat pack", "active": "false"})
    assert found("name:'Heat pack'") == ["Heat pack"]  # the index still has the old version
    assert found("name:'Wheat pack'") == []
    clock.advance(61)
    assert found("name:'Wheat pack' AND active:'false'") == ["Wheat pack"]
    assert error_of(emu.handle(req("GET", "/v1/products/search", {"query": "email:'a@b.co'"})), 400)["param"] == "query"
    assert error_of(emu.handle(req("GET", "/v1/products/search", {"query": "active:'yes'"})), 400)["param"] == "query"


def test_price_search(emu: StripeEmulator) -> None:
    emu.admin("set_search_delay", {"seconds": 0})
    product = create_product(emu, AUD_45)
    create_price(emu, product["id"], 900, currency="usd", lookup_key="usd_price")
    body = emu.handle(req("GET", "/v1/prices/search", {"query": f"product:'{product['id']}' AND currency:'aud'"})).body
    assert [p["id"] for p in body["data"]] == [product["default_price"]] and body["url"] == "/v1/prices/search"
    hits = emu.handle(req("GET", "/v1/prices/search", {"query": "lookup_key:'usd_price'"})).body["data"]
    assert [p["unit_amount"] for p in hits] == [900]


def test_product_create_is_idempotent_and_replays_with_its_price(emu: StripeEmulator) -> None:
    params = {"name": "Once", **AUD_45}
    first = emu.handle(req("POST", "/v1/products", params, idem="prod-1"))
    again = emu.handle(req("POST", "/v1/products", params, idem="prod-1"))
    assert again.replayed and not again.mutated and again.body == first.body
    dump = emu.admin("dump", {}).body
    assert len(dump["products"]) == 1 and len(dump["prices"]) == 1
    error = error_of(emu.handle(req("POST", "/v1/products", {"name": "Twice", **AUD_45}, idem="prod-1")), 400)
    assert error["type"] == "idempotency_error"
    price = first.body["default_price"]
    refused = emu.handle(req("POST", f"/v1/prices/{price}", {"unit_amount": "1"}, idem="price-1"))
    assert refused.status == 400
    ok = emu.handle(req("POST", f"/v1/prices/{price}", {"nickname": "x"}, idem="price-1"))
    assert ok.status == 200 and not ok.replayed  # a refused request is not saved under its key


def test_stored_500_on_a_product_create_keeps_the_product_and_its_price(emu: StripeEmulator) -> None:
    emu.faults = FaultPlan.parse("stored500=1,max=1")
    params = {"name": "Kept", **AUD_45}
    assert emu.handle(req("POST", "/v1/products", params, idem="p500")).status == 500
    replay = emu.handle(req("POST", "/v1/products", params, idem="p500"))
    assert replay.status == 500 and replay.replayed
    dump = emu.admin("dump", {}).body
    assert [p["name"] for p in dump["products"]] == ["Kept"] and len(dump["prices"]) == 1


def test_products_and_prices_need_write_permissions_and_have_endpoint_names(emu: StripeEmulator) -> None:
    product = create_product(emu, AUD_45)
    for path, permission in (("/v1/products", "rak_product_write"), ("/v1/prices", "rak_price_write")):
        error = error_of(emu.handle(req("POST", path, {"name": "x"}, key=READONLY)), 403)
        assert f"Having the '{permission}' permission" in error["message"]
    assert emu.handle(req("GET", f"/v1/products/{product['id']}", key=READONLY)).status == 200
    assert emu.endpoint_name(req("POST", f"/v1/products/{product['id']}")) == "POST /v1/products/{id}"
    assert emu.endpoint_name(req("GET", "/v1/prices/price_Abc123")) == "GET /v1/prices/{id}"
    assert emu.endpoint_name(req("GET", "/v1/products/search")) == "GET /v1/products/search"
    search = emu.rate_limit(req("GET", "/v1/products/search", {"query": "x"}))
    assert search is not None and search.limit == limits.SEARCH_RATE_LIMIT_PER_SECOND
    assert error_of(emu.handle(req("DELETE", f"/v1/prices/{product['default_price']}")), 404)
    live = error_of(emu.handle(req("GET", f"/v1/products/{product['id']}", key=LIVE_A)), 404)
    assert "exists in test mode, but a live mode key was used" in live["message"]


def test_admin_products_by_hand(emu: StripeEmulator, clock: FakeClock) -> None:
    seeded = emu.admin(
        "seed",
        {
            "products": [
                {
                    "name": "Made by hand",
                    "created": 1_600_000_000,
                    "sandbox_case": "note",
                    "prices": [
                        {"currency": "aud", "unit_amount": 4500, "tax_behavior": "inclusive", "default": True},
                        {"currency": "aud", "unit_amount": 4000, "nickname": "Members"},
                    ],
                }
            ]
        },
    )
    assert seeded.status == 200 and not seeded.mutated and seeded.body["ignored_fields"] == ["sandbox_case"]
    made = seeded.body["products"][0]
    assert made["default_price"] == made["prices"][0] and len(made["prices"]) == 2
    # Seeded data existed long before: Search sees it at once, whatever the delay.
    hits = emu.handle(req("GET", "/v1/products/search", {"query": "name:'Made by hand'"})).body["data"]
    assert [p["id"] for p in hits] == [made["id"]] and hits[0]["created"] == 1_600_000_000

    added = emu.admin("add_product", {"name": "Just now", "metadata": {"k": "v"}}).body
    assert emu.handle(req("GET", "/v1/products/search", {"query": "name:'Just now'"})).body["data"] == []
    price = emu.admin("add_price", {"product": added["id"], "currency": "aud", "unit_amount": 100, "default": True})
    assert emu.handle(req("GET", f"/v1/products/{added['id']}")).body["default_price"] == price.body["id"]
    refused = emu.admin("edit_price", {"id": price.body["id"], "active": False})
    assert refused is not None and refused.status == 400  # the Dashboard keeps Stripe's rules too
    assert emu.admin("edit_product", {"id": added["id"], "active": False}).body["active"] is False
    assert emu.admin("edit_price", {"id": price.body["id"], "nickname": "Hand"}).body["nickname"] == "Hand"
    dump = emu.admin("dump", {}).body
    assert [p["name"] for p in dump["products"]] == ["Made by hand", "Just now"]
    assert len(dump["prices"]) == 3 and all(p["deleted"] is False for p in dump["prices"])
    bad = emu.admin("add_product", {"name": "Bad", "prices": [{"currency": "aud"}]})
    assert bad is not None and bad.status == 400 and len(emu.admin("dump", {}).body["products"]) == 2
