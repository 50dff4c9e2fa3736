"""The Cliniko emulator over real HTTP: auth, paging, filters, sorting, edits, archive/merge, rate limits."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest

from clinicsync.sandbox import seed as seedmod
from clinicsync.sandbox.cliniko_emu import DEFAULT_API_KEY, DEFAULT_LIMITED_KEY, ClinikoEmulator, normalize_phone
from clinicsync.sandbox.server import RunningServer, serve

USER_AGENT = "ClinicSync tests (dev@example.com)"


@pytest.fixture
def server() -> Iterator[RunningServer]:
    with serve(ClinikoEmulator()) as srv:
        yield srv


@pytest.fixture
def seeded(server: RunningServer) -> dict[str, Any]:
    response = httpx.post(f"{server.url}/_sandbox/seed", json={"profile": "hard", "patients": 25, "seed": 3})
    assert response.status_code == 200
    return response.json()


def api(server: RunningServer, key: str = DEFAULT_API_KEY, **kwargs: Any) -> httpx.Client:
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **kwargs.pop("headers", {})}
    return httpx.Client(base_url=f"{server.url}/v1", auth=(key, ""), headers=headers, timeout=5, **kwargs)


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with api(server) as c:
        yield c


def admin(server: RunningServer, action: str, **params: Any) -> dict[str, Any]:
    response = httpx.post(f"{server.url}/_sandbox/{action}", json=params)
    assert response.status_code == 200, response.text
    return response.json()


def case_id(seeded: dict[str, Any], case: str) -> str:
    return next(pid for pid, name in seeded["cases"].items() if name == case)


def all_pages(client: httpx.Client, params: list[tuple[str, str]], path: str = "/patients") -> list[dict[str, Any]]:
    """Follow links.next like the real client does."""
    response = client.get(path, params=params)
    rows: list[dict[str, Any]] = []
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        rows.extend(body[path.strip("/")])
        if "next" not in body["links"]:
            return rows
        response = client.get(body["links"]["next"])


# -- auth ----------------------------------------------------------------------------------------------


def test_bad_or_missing_key_is_401(server: RunningServer, seeded: dict[str, Any]) -> None:
    with api(server, key="wrong-key-au1") as bad:
        response = bad.get("/patients")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic")
    no_key = httpx.get(f"{server.url}/v1/patients", headers={"User-Agent": USER_AGENT})
    assert no_key.status_code == 401


def test_key_works_with_or_without_its_shard_suffix(server: RunningServer, seeded: dict[str, Any]) -> None:
    bare = DEFAULT_API_KEY.rsplit("-", 1)[0]
    for key in (DEFAULT_API_KEY, bare):
        with api(server, key=key) as c:
            assert c.get("/patients").status_code == 200


def test_user_agent_needs_contact_email(server: RunningServer) -> None:
    for agent in ("python-httpx/0.28", "ClinicSync (no email here)", ""):
        response = httpx.get(f"{server.url}/v1/patients", auth=(DEFAULT_API_KEY, ""), headers={"User-Agent": agent})
        assert response.status_code == 403
        assert response.json() == {"message": "Requires a user agent with contact details"}


def test_limited_role_cannot_read_settings_but_can_read_public_settings(server: RunningServer) -> None:
    with api(server, key=DEFAULT_LIMITED_KEY) as limited:
        assert limited.get("/settings").status_code == 403
        assert limited.get("/settings/public").json()["account"]["country_code"] == "AU"
        assert limited.get("/user").json()["role"] == "receptionist"


def test_revoked_key_gets_401(server: RunningServer, client: httpx.Client) -> None:
    assert client.get("/user").status_code == 200
    admin(server, "revoke_key")
    assert client.get("/user").status_code == 401
    admin(server, "restore_key")
    assert client.get("/user").status_code == 200


def test_unknown_route_is_404(client: httpx.Client) -> None:
    assert client.get("/nonsense").status_code == 404
    assert client.get("/patients/123").status_code == 404


# -- lists, paging, sorting ----------------------------------------------------------------------------


def test_pagination_follows_links_next_and_covers_every_live_patient(
    client: httpx.Client, seeded: dict[str, Any]
) -> None:
    first = client.get("/patients", params={"per_page": 7}).json()
    hidden = {case_id(seeded, "archived"), case_id(seeded, "merged_away")}
    assert first["total_entries"] == len(seeded["ids"]) - len(hidden)
    assert len(first["patients"]) == 7
    assert "previous" not in first["links"]
    assert first["links"]["self"].endswith("/v1/patients?per_page=7&page=1") or "page=1" in first["links"]["self"]
    rows = all_pages(client, [("per_page", "7")])
    ids = [p["id"] for p in rows]
    assert len(ids) == len(set(ids)) == first["total_entries"]
    assert set(ids) == set(seeded["ids"]) - hidden
    second = client.get("/patients", params={"per_page": 7, "page": 2}).json()
    assert "page=1" in second["links"]["previous"]


def test_per_page_is_capped_at_100(client: httpx.Client, seeded: dict[str, Any]) -> None:
    assert client.get("/patients", params={"per_page": 100}).status_code == 200
    for bad in ("101", "0", "ten"):
        response = client.get("/patients", params={"per_page": bad})
        assert response.status_code == 400
        assert "per_page" in response.json()["message"]


def test_default_order_is_created_at_then_id(client: httpx.Client, seeded: dict[str, Any]) -> None:
    rows = all_pages(client, [("per_page", "100")])
    keys = [(p["created_at"], int(p["id"])) for p in rows]
    assert keys == sorted(keys)


def test_sort_by_updated_at_both_ways(client: httpx.Client, seeded: dict[str, Any]) -> None:
    asc = [p["updated_at"] for p in all_pages(client, [("sort", "updated_at:asc"), ("per_page", "100")])]
    desc = [p["updated_at"] for p in all_pages(client, [("sort", "updated_at:desc"), ("per_page", "100")])]
    assert asc == sorted(asc)
    assert desc == sorted(desc, reverse=True)
    assert client.get("/patients", params={"sort": "medicare"}).status_code == 400


def test_links_keep_filters_and_sort(client: httpx.Client, seeded: dict[str, Any]) -> None:
    body = client.get("/patients", params=[("q[]", "created_at:>2000-01-01T00:00:00Z"), ("per_page", "3")]).json()
    assert "q%5B%5D=created_at%3A%3E2000-01-01T00%3A00%3A00Z" in body["links"]["next"]


# -- filters -------------------------------------------------------------------------------------------


def test_updated_at_filter_finds_edits(server: RunningServer, client: httpx.Client, seeded: dict[str, Any]) -> None:
    watermark = max(p["updated_at"] for p in all_pages(client, [("per_page", "100")]))
    assert all_pages(client, [("q[]", f"updated_at:>{watermark}")]) == []
    edited = admin(server, "edit", count=3)["ids"]
    rows = all_pages(client, [("q[]", f"updated_at:>={watermark}"), ("sort", "updated_at:asc")])
    assert set(edited) <= {p["id"] for p in rows}
    assert {p["id"] for p in all_pages(client, [("q[]", f"updated_at:>{watermark}")])} == set(edited)


def test_archived_at_any_value_includes_archived_and_merged(client: httpx.Client, seeded: dict[str, Any]) -> None:
    live = {p["id"] for p in all_pages(client, [("per_page", "100")])}
    everyone = {p["id"] for p in all_pages(client, [("q[]", "archived_at:*"), ("per_page", "100")])}
    archived = {p["id"]: p for p in all_pages(client, [("q[]", "archived_at:?")])}
    assert everyone == live | set(archived)
    assert set(archived) == {case_id(seeded, "archived"), case_id(seeded, "merged_away")}
    merged = archived[case_id(seeded, "merged_away")]
    assert merged["merged_at"] is not None
    assert merged["merged_with_patient"]["links"]["self"].endswith(f"/patients/{case_id(seeded, 'merge_survivor')}")
    assert "merged_with_patient" not in archived[case_id(seeded, "archived")]


def test_string_int_and_boolean_filters(client: httpx.Client, seeded: dict[str, Any]) -> None:
    target = case_id(seeded, "plus_addressed_email")
    by_email = all_pages(client, [("q[]", "email:=mia.kowalski+physio@example.com")])
    assert [p["id"] for p in by_email] == [target]
    contains = all_pages(client, [("q[]", "email:~KOWALSKI+PHYSIO")])
    assert [p["id"] for p in contains] == [target]
    wildcard = all_pages(client, [("q[]", "last_name:~~ashw%th")])
    assert len(wildcard) == 3
    two = [case_id(seeded, "no_email"), target]
    by_ids = all_pages(client, [("q[]", f"id:={','.join(two)}")])
    assert {p["id"] for p in by_ids} == set(two)
    no_email = all_pages(client, [("q[]", "email:!?")])
    assert case_id(seeded, "no_email") in {p["id"] for p in no_email}
    anded = all_pages(client, [("q[]", "last_name:=Ashworth"), ("q[]", "first_name:=Ivy")])
    assert [p["first_name"] for p in anded] == ["Ivy"]
    assert client.get("/patients", params=[("q[]", "accepted_privacy_policy:=true")]).status_code == 200


def test_bad_filters_are_400(client: httpx.Client, seeded: dict[str, Any]) -> None:
    for term in ("medicare:=1", "deleted_at:*", "nonsense"):
        response = client.get("/patients", params=[("q[]", term)])
        assert response.status_code == 400
        assert response.json() == {"message": "This column is not searchable."}
    # DateTime has no "=", and values must be UTC date-times.
    assert client.get("/patients", params=[("q[]", "updated_at:=2024-01-01T00:00:00Z")]).status_code == 400
    assert client.get("/patients", params=[("q[]", "updated_at:>yesterday")]).status_code == 400


# -- single records, writes, clock ---------------------------------------------------------------------


def test_every_response_has_a_date_header_and_edits_are_not_older(
    server: RunningServer, client: httpx.Client, seeded: dict[str, Any]
) -> None:
    listing = client.get("/patients")
    date_header = parsedate_to_datetime(listing.headers["date"])
    assert abs((date_header - datetime.now(UTC)).total_seconds()) < 5
    assert "date" in httpx.get(f"{server.url}/v1/patients").headers  # even on a 401
    pid = listing.json()["patients"][0]["id"]
    patched = client.patch(f"/patients/{pid}", json={"old_reference_id": "cus_SandboxRef1"})
    assert patched.status_code == 200
    updated = datetime.strptime(patched.json()["updated_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert updated >= date_header


def test_patch_bumps_updated_at_only_on_real_change(client: httpx.Client, seeded: dict[str, Any]) -> None:
    pid = case_id(seeded, "upper_case_email")
    before = client.get(f"/patients/{pid}").json()
    same = client.patch(f"/patients/{pid}", json={"first_name": before["first_name"]}).json()
    assert same["updated_at"] == before["updated_at"]
    changed = client.patch(f"/patients/{pid}", json={"preferred_first_name": "Noz"}).json()
    assert changed["updated_at"] > before["updated_at"]
    assert changed["preferred_first_name"] == "Noz"
    assert changed["email"] == before["email"]  # read-modify-write: untouched fields stay


def test_admin_edit_changes_mapped_fields_and_bumps_updated_at(
    server: RunningServer, client: httpx.Client, seeded: dict[str, Any]
) -> None:
    pid = case_id(seeded, "no_email")
    before = client.get(f"/patients/{pid}").json()
    result = admin(server, "edit", ids=[pid], fields={"email": "now.has.email@example.com"})
    after = client.get(f"/patients/{pid}").json()
    assert result["ids"] == [pid]
    assert after["email"] == "now.has.email@example.com"
    assert after["updated_at"] > before["updated_at"]
    random_edit = admin(server, "edit", count=4)
    assert len(random_edit["ids"]) == 4 and all(random_edit["changes"].values())


def test_custom_fields_are_written_by_token_and_merged(client: httpx.Client, seeded: dict[str, Any]) -> None:
    pid = case_id(seeded, "unicode_cjk")
    body = {
        "custom_fields": {
            "sections": [
                {"token": "ignored", "fields": [{"token": seedmod.CUSTOM_FIELD_STRIPE_ID_TOKEN, "value": "cus_X1"}]}
            ]
        }
    }
    patched = client.patch(f"/patients/{pid}", json=body).json()
    values = {f["token"]: f["value"] for s in patched["custom_fields"]["sections"] for f in s["fields"]}
    assert values[seedmod.CUSTOM_FIELD_STRIPE_ID_TOKEN] == "cus_X1"
    assert seedmod.CUSTOM_FIELD_HEALTH_FUND_TOKEN in values  # the other field kept its value
    empty = {
        "custom_fields": {"sections": [{"fields": [{"token": seedmod.CUSTOM_FIELD_STRIPE_ID_TOKEN, "value": ""}]}]}
    }
    assert client.patch(f"/patients/{pid}", json=empty).status_code == 422


def test_validation_errors_are_422_with_cliniko_body(client: httpx.Client, seeded: dict[str, Any]) -> None:
    pid = seeded["ids"][0]
    response = client.patch(f"/patients/{pid}", json={"email": "not-an-email", "last_name": ""})
    assert response.status_code == 422
    assert response.json() == {
        "message": "Validation Failed",
        "errors": {"email": "is invalid", "last_name": "can't be blank"},
    }
    assert client.post("/patients", json={"first_name": "Only"}).status_code == 422


def test_create_patient_returns_201_with_location(client: httpx.Client) -> None:
    body = {
        "first_name": "Nell",
        "last_name": "Created",
        "email": "nell.created@example.com",
        "patient_phone_numbers": [{"number": "0491 570 110", "phone_type": "Mobile"}],
    }
    response = client.post("/patients", json=body)
    assert response.status_code == 201
    created = response.json()
    assert response.headers["location"] == created["links"]["self"]
    assert 18 <= len(created["id"]) <= 19 and created["id"].isdigit()
    assert created["created_at"] == created["updated_at"]
    assert created["patient_phone_numbers"][0]["normalized_number"] == "+61491570110"
    assert client.get(f"/patients/{created['id']}").json()["email"] == "nell.created@example.com"


def test_archive_unarchive_cycle(client: httpx.Client, seeded: dict[str, Any]) -> None:
    pid = case_id(seeded, "home_phone_only")
    assert client.post(f"/patients/{pid}/archive").status_code == 204
    assert pid not in {p["id"] for p in all_pages(client, [("per_page", "100")])}
    assert client.get(f"/patients/{pid}").status_code == 404  # hidden unless asked for archived records
    archived = client.get(f"/patients/{pid}", params=[("q[]", "archived_at:*")]).json()
    assert archived["archived_at"] is not None
    restored = client.post(f"/patients/{pid}/unarchive")
    assert restored.status_code == 200
    assert restored.json()["archived_at"] is None
    assert restored.json()["updated_at"] >= archived["updated_at"]
    assert pid in {p["id"] for p in all_pages(client, [("per_page", "100")])}


def test_admin_merge_archive_and_delete(server: RunningServer, client: httpx.Client, seeded: dict[str, Any]) -> None:
    loser, survivor = case_id(seeded, "family_shared_email_2"), case_id(seeded, "family_shared_email_1")
    assert admin(server, "merge", ids=[loser], into=survivor)["merged"] == {loser: survivor}
    merged = client.get(f"/patients/{loser}", params=[("q[]", "archived_at:*")]).json()
    assert merged["merged_at"] is not None and merged["archived_at"] is not None
    assert merged["merged_with_patient"]["links"]["self"].endswith(f"/patients/{survivor}")
    assert client.post(f"/patients/{loser}/unarchive").status_code == 422

    gone = case_id(seeded, "unicode_rtl")
    admin(server, "delete", ids=[gone])
    assert client.get(f"/patients/{gone}").status_code == 404
    assert client.get(f"/patients/{gone}", params=[("q[]", "archived_at:*")]).status_code == 404
    assert gone not in {p["id"] for p in all_pages(client, [("q[]", "archived_at:*"), ("per_page", "100")])}

    admin(server, "archive", ids=[survivor])
    assert client.get(f"/patients/{survivor}").status_code == 404
    admin(server, "unarchive", ids=[survivor])
    assert client.get(f"/patients/{survivor}").status_code == 200

    dump = admin(server, "dump")["patients"]
    assert {p["id"] for p in dump} == set(seeded["ids"])
    assert next(p for p in dump if p["id"] == gone)["deleted_at"] is not None


def test_settings_user_and_businesses(client: httpx.Client) -> None:
    settings = client.get("/settings").json()
    assert settings["account"]["country_code"] == "AU" and settings["account"]["currency_symbol"] == "$"
    tokens = [f["token"] for s in settings["patient_custom_fields_definition"]["sections"] for f in s["fields"]]
    assert seedmod.CUSTOM_FIELD_STRIPE_ID_TOKEN in tokens
    businesses = client.get("/businesses").json()
    assert businesses["total_entries"] == 1
    assert businesses["businesses"][0]["time_zone_identifier"] == "Australia/Melbourne"
    assert client.get("/user").json()["role"] == "administrator"


# -- rate limit, faults --------------------------------------------------------------------------------


def test_rate_limit_is_200_per_minute_per_key_with_reset_header() -> None:
    with serve(ClinikoEmulator(), rate_limits=True) as srv, api(srv) as client:
        codes = [client.get("/user").status_code for _ in range(200)]
        assert set(codes) == {200}
        limited = client.get("/user")
        assert limited.status_code == 429
        reset = int(limited.headers["x-ratelimit-reset"])
        assert datetime.now(UTC).timestamp() < reset <= datetime.now(UTC).timestamp() + 61
        with api(srv, key=DEFAULT_LIMITED_KEY) as other_user:  # a different user has its own budget
            assert other_user.get("/user").status_code == 200
        with api(srv, key="wrong") as stranger:  # unauthenticated requests get 401, not 429
            assert stranger.get("/user").status_code == 401


def test_fault_responses_look_like_cliniko(server: RunningServer, client: httpx.Client) -> None:
    httpx.post(f"{server.url}/_sandbox/faults", json={"spec": "before:429=1"})
    limited = client.get("/user")
    assert limited.status_code == 429 and int(limited.headers["x-ratelimit-reset"]) > 0
    httpx.post(f"{server.url}/_sandbox/faults", json={"spec": "before:502=1"})
    gateway = client.get("/user")
    assert gateway.status_code == 502 and gateway.headers["content-type"].startswith("text/html")


def test_phone_normalisation() -> None:
    assert normalize_phone("0491 570 156", "AU") == "+61491570156"
    assert normalize_phone("+61491570156", "AU") == "+61491570156"
    assert normalize_phone("(03) 7010 4821", None) == "+61370104821"


def test_seed_is_deterministic_and_admin_seed_reports_cases(server: RunningServer) -> None:
    now = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)  # activity dates count back from `now`: fix it, or two calls
    a = seedmod.seed_profile("hard", 25, 3, now=now)  # straddling a second differ
    b = seedmod.seed_profile("hard", 25, 3, now=now)
    assert a == b
    assert set(a.cases.values()) == set(seedmod.HARD_CASES)
    hostile = admin(server, "seed", profile="hostile", patients=20, seed=2)
    assert set(hostile["cases"].values()) == set(seedmod.HOSTILE_CASES)
    assert len(hostile["ids"]) == 20
    with pytest.raises(ValueError, match="unknown seed profile"):
        seedmod.seed_profile("nope")


def test_hostile_records_are_served_without_errors(server: RunningServer, client: httpx.Client) -> None:
    admin(server, "seed", profile="hostile", patients=15, seed=4)
    rows = all_pages(client, [("per_page", "100")])
    assert len(rows) == 15
    names = {p["first_name"] for p in rows}
    assert "Bo\x00b" in names and "N" * 5000 in names
    assert server.stats.snapshot()["errors"] == 0


def test_emulator_ids_are_long_strings(seeded: dict[str, Any]) -> None:
    assert all(pid.isdigit() and 18 <= len(pid) <= 19 for pid in seeded["ids"])


def test_clock_advance_moves_date_header_and_edits(server: RunningServer, client: httpx.Client) -> None:
    before = parsedate_to_datetime(client.get("/user").headers["date"])
    admin(server, "clock", advance_s=3600)
    after = parsedate_to_datetime(client.get("/user").headers["date"])
    assert (after - before).total_seconds() >= 3599


def test_a_429_states_its_reset_on_the_same_clock_as_its_date_header() -> None:
    """Cliniko states both from one clock; after the emulator's clock moves, the wait the client works out
    from them must still be the real one (before, it came out 600 s in the past and the client gave up)."""
    emulator = ClinikoEmulator()
    emulator.admin("clock", {"advance_s": 600})
    with serve(emulator, rate_limits=True) as srv, api(srv) as client:
        while (limited := client.get("/user")).status_code != 429:
            pass
        wait = int(limited.headers["x-ratelimit-reset"]) - parsedate_to_datetime(limited.headers["date"]).timestamp()
        assert 0 < wait <= 61


def test_a_body_without_a_json_content_type_is_refused_not_silently_read(seeded, client) -> None:
    pid = seeded["ids"][0]
    refused = client.patch(f"/patients/{pid}", content=b'{"first_name": "X1"}', headers={"content-type": "text/plain"})
    assert refused.status_code == 415 and "Content-Type: application/json" in refused.json()["message"]
    assert client.get(f"/patients/{pid}").json()["first_name"] != "X1"
    assert client.patch(f"/patients/{pid}", json={"first_name": "X2"}).json()["first_name"] == "X2"


def test_an_invoices_reversals_link_uses_a_searchable_column(server, client) -> None:
    admin(server, "seed", profile="clean", patients=30, seed=1)
    invoices = client.get("/invoices").json()["invoices"]
    assert invoices, "the clean profile has invoices"
    reversals = client.get(invoices[0]["reversed_invoices"]["links"]["self"])
    assert reversals.status_code == 200, reversals.text


def test_emulator_class_can_be_used_directly() -> None:
    emulator = ClinikoEmulator()
    assert emulator.admin("unknown", {}) is None
    assert emulator.admin("seed", {"profile": "clean", "patients": 3}).status == 200
    assert len(emulator.patients) == 3


# -- products, suppliers, taxes, stock adjustments -----------------------------------------------------


@pytest.fixture
def catalogue(server: RunningServer) -> dict[str, Any]:
    response = httpx.post(
        f"{server.url}/_sandbox/seed", json={"profile": "hard", "patients": 5, "products": 40, "seed": 3}
    )
    assert response.status_code == 200
    return response.json()


def product_case(seeded: dict[str, Any], case: str) -> str:
    return next(pid for pid, name in seeded["product_cases"].items() if name == case)


def products(client: httpx.Client, *params: tuple[str, str]) -> list[dict[str, Any]]:
    return all_pages(client, [("per_page", "100"), *params], "/products")


def test_products_render_prices_from_the_entered_price_and_the_tax_rate(
    client: httpx.Client, catalogue: dict[str, Any]
) -> None:
    def get(case: str) -> dict[str, Any]:
        response = client.get(f"/products/{product_case(catalogue, case)}")
        assert response.status_code == 200, response.text
        return response.json()

    inclusive = get("gst_inclusive_3dp")
    assert (inclusive["price_ex_tax"], inclusive["price_including_tax"]) == ("81.818", "90.0")
    assert inclusive["tax"]["links"]["self"].endswith(f"/taxes/{catalogue['taxes']['GST']}")
    exclusive = get("gst_exclusive")
    assert (exclusive["price_ex_tax"], exclusive["price_including_tax"]) == ("40.0", "44.0")
    free = get("gst_free")
    assert free["price_ex_tax"] == free["price_including_tax"] == "35.0"
    untaxed = get("no_tax")
    assert "tax" not in untaxed and untaxed["price_ex_tax"] == untaxed["price_including_tax"] == "50.0"
    assert get("zero_price")["price_including_tax"] == "0.0"
    no_supplier = get("no_supplier")
    assert no_supplier["product_supplier_name"] is None
    assert "product_supplier" not in no_supplier and "product_supplier_id" not in no_supplier
    supplied = get("same_name_1")
    assert supplied["product_supplier"]["links"]["self"].endswith(
        f"/product_suppliers/{supplied['product_supplier_id']}"
    )
    assert supplied["product_supplier_name"] == seedmod.SUPPLIER_NAMES[1]
    assert get("untracked_stock")["stock_level"] is None and get("stock_adjusted")["stock_level"] == "19.0"
    assert len(get("name_255")["name"]) == 255
    assert get("unicode_cjk")["name"] == "指圧マッサージボール（大）"
    assert get("same_name_1")["name"] == get("same_name_2")["name"]
    adjustments = client.get(get("stock_adjusted")["stock_adjustments"]["links"]["self"]).json()
    assert sum(float(a["quantity"]) for a in adjustments["stock_adjustments"]) == 19.0


def test_product_lists_page_filter_sort_and_hide_archived_like_patients(
    client: httpx.Client, catalogue: dict[str, Any]
) -> None:
    live = products(client)
    everything = products(client, ("q[]", "archived_at:*"))
    archived = products(client, ("q[]", "archived_at:?"))
    assert {p["id"] for p in everything} == set(catalogue["product_ids"])
    assert {p["id"] for p in live} == {p["id"] for p in everything} - {p["id"] for p in archived}
    assert product_case(catalogue, "archived") in {p["id"] for p in archived}
    paged = all_pages(client, [("per_page", "7")], "/products")
    assert [p["id"] for p in paged] == [p["id"] for p in live]  # default order: created_at, then id
    keyset = products(client, ("sort", "updated_at,id"), ("q[]", "archived_at:*"))
    assert [(p["updated_at"], int(p["id"])) for p in keyset] == sorted((p["updated_at"], int(p["id"])) for p in keyset)
    same = products(client, ("q[]", "name:=Therapy putty – medium"))
    assert len(same) == 2
    gst = products(client, ("q[]", f"tax_id:={catalogue['taxes']['GST']}"))
    assert gst and all(p["tax"]["links"]["self"].endswith(catalogue["taxes"]["GST"]) for p in gst)
    untaxed = products(client, ("q[]", "tax_id:!?"))
    assert product_case(catalogue, "no_tax") in {p["id"] for p in untaxed}
    watermark = max(p["updated_at"] for p in everything)
    assert products(client, ("q[]", f"updated_at:>{watermark}")) == []
    for bad in ("price_ex_tax:=1", "deleted_at:*", "stock_level:>1"):
        assert client.get("/products", params=[("q[]", bad)]).status_code == 400
    assert client.get("/products", params={"sort": "price_ex_tax"}).status_code == 400
    assert client.get("/products/archived").status_code == 404  # not in the spec: the pass is q[]=archived_at:*


def test_an_archived_product_is_read_by_id_only_with_the_archived_filter(
    client: httpx.Client, catalogue: dict[str, Any]
) -> None:
    pid = product_case(catalogue, "archived")
    assert client.get(f"/products/{pid}").status_code == 404
    archived = client.get(f"/products/{pid}", params={"q[]": "archived_at:*"})
    assert archived.status_code == 200 and archived.json()["archived_at"] is not None
    assert client.get("/products/123").status_code == 404


def test_product_writes(client: httpx.Client, catalogue: dict[str, Any]) -> None:
    gst = catalogue["taxes"]["GST"]
    created = client.post(
        "/products", json={"product": {"name": "Spiky ball", "price": 22, "price_includes_tax": True, "tax_id": gst}}
    )
    assert created.status_code == 201 and created.headers["location"] == created.json()["links"]["self"]
    body = created.json()
    assert (body["price_ex_tax"], body["price_including_tax"]) == ("20.0", "22.0")
    assert body["created_at"] == body["updated_at"]
    pid = body["id"]
    same = client.patch(f"/products/{pid}", json={"name": "Spiky ball", "price": "22.00"}).json()
    assert same["updated_at"] == body["updated_at"]  # no real change: updated_at stays
    seeded = product_case(catalogue, "gst_inclusive_3dp")
    unchanged = client.get(f"/products/{seeded}").json()
    assert client.patch(f"/products/{seeded}", json={"price": 90}).json()["updated_at"] == unchanged["updated_at"]
    ignored = client.patch(f"/products/{pid}", json={"stock_level": "99"}).json()  # an update cannot set stock
    assert ignored["stock_level"] is None
    repriced = client.patch(f"/products/{pid}", json={"price": "25.30"}).json()
    assert (repriced["price_ex_tax"], repriced["price_including_tax"]) == ("23.0", "25.3")
    untaxed = client.patch(f"/products/{pid}", json={"tax_id": None}).json()
    assert "tax" not in untaxed and untaxed["price_ex_tax"] == "25.3"
    invalid = client.patch(f"/products/{pid}", json={"name": "", "price": -1, "tax_id": "1", "item_code": "x" * 101})
    assert invalid.status_code == 422
    assert invalid.json()["errors"] == {
        "name": "can't be blank",
        "price": "must be greater than or equal to 0",
        "tax": "must exist",
        "item_code": "is too long (maximum is 100 characters)",
    }
    assert client.post("/products", json={"price": 5}).status_code == 422
    assert client.post(f"/products/{pid}/archive").status_code == 204
    assert pid not in {p["id"] for p in products(client)}
    assert client.post(f"/products/{pid}/unarchive").status_code == 404  # the API has no product unarchive
    other = client.post("/products", json={"name": "Old stock"}).json()["id"]
    assert client.delete(f"/products/{other}").status_code == 204  # deprecated: archives
    assert client.get(f"/products/{other}", params={"q[]": "archived_at:?"}).status_code == 200
    assert client.post("/taxes", json={"name": "VAT", "rate": "20"}).status_code == 404  # not emulated


def test_a_stock_adjustment_moves_stock_and_updated_at_only_while_the_switch_is_on(
    server: RunningServer, client: httpx.Client, catalogue: dict[str, Any]
) -> None:
    pid = product_case(catalogue, "stock_adjusted")
    before = client.get(f"/products/{pid}").json()
    sold = client.post("/stock_adjustments", json={"product_id": pid, "quantity": -2, "adjustment_type": "Item Sold"})
    assert sold.status_code == 201 and sold.headers["location"] == sold.json()["links"]["self"]
    assert sold.json()["quantity"] == "-2.0" and sold.json()["product"]["links"]["self"].endswith(f"/products/{pid}")
    after = client.get(f"/products/{pid}").json()
    assert after["stock_level"] == "17.0" and after["updated_at"] > before["updated_at"]  # the default

    assert admin(server, "stock_touches_product", enabled=False) == {"stock_touches_product": False}
    client.post("/stock_adjustments", json={"product_id": pid, "quantity": "5", "adjustment_type": "Stock Purchase"})
    quiet = client.get(f"/products/{pid}").json()
    assert quiet["stock_level"] == "22.0" and quiet["updated_at"] == after["updated_at"]
    # The adjustment itself is always new, so a client can find moved stock through the adjustments.
    since = client.get(
        "/stock_adjustments", params=[("q[]", f"created_at:>={after['updated_at']}"), ("sort", "created_at")]
    )
    assert [a["quantity"] for a in since.json()["stock_adjustments"]] == ["-2.0", "5.0"]
    assert admin(server, "stock_touches_product") == {"stock_touches_product": False}
    response = httpx.post(f"{server.url}/_sandbox/stock_touches_product", json={"enabled": "no"})
    assert response.status_code == 400


def test_the_archived_lists_live_switch_decides_what_an_archived_at_star_listing_holds(
    server: RunningServer, client: httpx.Client, seeded: dict[str, Any]
) -> None:
    star = [("q[]", "archived_at:*")]
    patients = {p["id"]: p for p in all_pages(client, star)}
    products = {p["id"]: p for p in all_pages(client, star, "/products")}
    archived = {pid for pid, p in patients.items() if p["archived_at"]}
    archived_products = {pid for pid, p in products.items() if p["archived_at"]}
    assert archived and len(archived) < len(patients), "the default: live and archived patients"
    assert archived_products and len(archived_products) < len(products)
    live = {p["id"] for p in all_pages(client, [])}
    assert live == set(patients) - archived

    assert admin(server, "archived_lists_live", enabled=False) == {"archived_lists_live": False}
    assert {p["id"] for p in all_pages(client, star)} == archived
    assert {p["id"] for p in all_pages(client, star, "/products")} == archived_products
    assert {p["id"] for p in all_pages(client, [])} == live, "the default listing is as before"
    assert {p["id"] for p in all_pages(client, [("q[]", "archived_at:!?")])} == live
    one_live = sorted(live)[0]
    assert client.get(f"/patients/{one_live}", params=star).status_code == 200, "a record by id is as before"
    assert admin(server, "archived_lists_live") == {"archived_lists_live": False}
    assert admin(server, "dump")["archived_lists_live"] is False
    response = httpx.post(f"{server.url}/_sandbox/archived_lists_live", json={"enabled": "no"})
    assert response.status_code == 400
    admin(server, "reset")
    assert admin(server, "archived_lists_live") == {"archived_lists_live": True}


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        (
            {"quantity": 3, "adjustment_type": "Item Sold"},
            {"quantity": "must be negative for a decreasing adjustment type"},
        ),
        (
            {"quantity": -3, "adjustment_type": "Returned"},
            {"quantity": "must be positive for an increasing adjustment type"},
        ),
        ({"quantity": 0, "adjustment_type": "Other"}, {"quantity": "must not be zero"}),
        ({"quantity": 1, "adjustment_type": "Gift"}, {"adjustment_type": "is not included in the list"}),
        ({"quantity": "lots", "adjustment_type": "Other"}, {"quantity": "is not a number"}),
    ],
)
def test_stock_adjustment_validation(
    client: httpx.Client, catalogue: dict[str, Any], body: dict[str, Any], errors: dict[str, str]
) -> None:
    pid = product_case(catalogue, "stock_adjusted")
    response = client.post("/stock_adjustments", json={"product_id": pid, **body})
    assert response.status_code == 422 and response.json() == {"message": "Validation Failed", "errors": errors}
    assert (
        client.post("/stock_adjustments", json={"product_id": "1", **body}).json()["errors"]["product"] == "must exist"
    )


def test_taxes_suppliers_and_adjustment_lists(client: httpx.Client, catalogue: dict[str, Any]) -> None:
    taxes = {t["name"]: t for t in client.get("/taxes").json()["taxes"]}
    assert (taxes["GST"]["rate"], taxes["GST Free"]["rate"]) == ("10.0", "0.0")
    assert client.get(f"/taxes/{catalogue['taxes']['GST']}").json()["name"] == "GST"
    suppliers = all_pages(client, [("per_page", "2")], "/product_suppliers")
    assert {s["id"] for s in suppliers} == set(catalogue["supplier_ids"])
    assert [s["created_at"] for s in suppliers] == sorted(s["created_at"] for s in suppliers)
    assert {s["name"] for s in suppliers} == set(seedmod.SUPPLIER_NAMES)
    named = client.get("/product_suppliers", params={"q[]": "name:~orthotics"}).json()["product_suppliers"]
    assert [s["name"] for s in named] == ["Southern Cross Orthotics"]
    adjustments = all_pages(client, [("per_page", "100")], "/stock_adjustments")
    assert len(adjustments) == catalogue["stock_adjustments"]
    assert client.get("/taxes", params={"q[]": "name:=GST"}).status_code == 400  # not a tax filter in the spec


def test_admin_product_actions(server: RunningServer, client: httpx.Client, catalogue: dict[str, Any]) -> None:
    pid = product_case(catalogue, "gst_exclusive")
    before = client.get(f"/products/{pid}").json()
    priced = admin(server, "set_product_price", id=pid, price=99, includes_tax=True)
    assert (priced["price_ex_tax"], priced["price_including_tax"]) == ("90.0", "99.0")
    after = client.get(f"/products/{pid}").json()
    assert after["price_including_tax"] == "99.0" and after["updated_at"] == priced["updated_at"] > before["updated_at"]
    assert admin(server, "set_product_price", id=pid, price="81.82")["price_including_tax"] == "81.82"

    admin(server, "archive_products", ids=[pid])
    assert client.get(f"/products/{pid}").status_code == 404
    admin(server, "unarchive_products", ids=[pid])
    assert client.get(f"/products/{pid}").json()["archived_at"] is None

    added = admin(server, "add_products", count=3)["ids"]
    made = admin(server, "add_products", products=[{"name": "Clinic tote bag", "price": 12}])["ids"]
    assert len(added) == 3 and len(made) == 1
    fresh = products(client, ("q[]", f"updated_at:>={after['updated_at']}"))
    assert set(added + made) <= {p["id"] for p in fresh}
    assert client.get(f"/products/{made[0]}").json()["price_ex_tax"] == "12.0"

    adjusted = admin(server, "adjust_stock", product_id=pid, quantity=-1)
    assert adjusted["stock_level"] == "9.0"
    listed = client.get("/stock_adjustments", params={"q[]": f"product_id:={pid}"}).json()["stock_adjustments"]
    assert [a["adjustment_type"] for a in listed][-1] == "Item Sold"

    edited = admin(server, "edit_products", count=4)
    assert len(edited["ids"]) == 4 and all(
        set(change) in ({"name"}, {"price"}) for change in edited["changes"].values()
    )
    renamed = admin(server, "edit_products", ids=[pid], fields={"name": "Lumbar cushion (new)"})
    assert renamed["changes"] == {pid: {"name": "Lumbar cushion (new)"}}
    bad = httpx.post(f"{server.url}/_sandbox/set_product_price", json={"id": pid, "price": "free"})
    assert bad.status_code == 422 and bad.json()["errors"] == {"price": "is not a number"}
    dump = admin(server, "dump")
    assert {"products", "product_suppliers", "taxes", "stock_adjustments"} <= set(dump)
    assert next(p for p in dump["products"] if p["id"] == pid)["name"] == "Lumbar cushion (new)"


def test_product_seed_is_deterministic_and_leaves_patients_alone() -> None:
    a, b = seedmod.seed_products(60, seed=4), seedmod.seed_products(60, seed=4)
    assert a == b and a != seedmod.seed_products(60, seed=5)
    assert len(a.products) == 60 and set(a.cases.values()) == set(seedmod.PRODUCT_CASES)
    assert len(seedmod.seed_products(1, seed=4).products) == len(seedmod.PRODUCT_CASES) + 3
    now = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
    with_products = seedmod.seed_profile("hard", 10, 4, now=now)
    without = seedmod.seed_profile("hard", 10, 4, now=now, products=0)
    assert with_products.patients == without.patients and without.catalogue.products == []
    assert without.stripe_products == [] and seedmod.seed_profile("clean", 5, 4, now=now).stripe_products == []
    hand_made = with_products.stripe_products
    names = [p["name"] for p in hand_made]
    by_case = {case: pid for pid, case in with_products.catalogue.cases.items()}
    same_name = next(p["name"] for p in with_products.catalogue.products if p["id"] == by_case["same_name_1"])
    assert names.count(same_name) == 2
    linked = next(p for p in hand_made if "metadata" in p)
    assert linked["metadata"] == {"cliniko_product_id": by_case["stripe_linked_earlier"]}
    assert all("metadata" not in p for p in hand_made if p is not linked)  # made by hand: no ClinicSync metadata


def test_the_shuffle_ties_knob_reorders_only_records_the_sort_leaves_tied(
    server: RunningServer, client: httpx.Client, seeded: dict[str, Any]
) -> None:
    def ids(sort: str) -> list[str]:  # live patients: every archived_at is null, so all tie on it
        response = client.get("/patients", params=[("sort", sort), ("per_page", "100")])
        assert response.status_code == 200, response.text
        return [p["id"] for p in response.json()["patients"]]

    plain = ids("archived_at:asc")
    assert admin(server, "shuffle_ties", seed=11) == {"shuffle_ties": True}
    orders = {tuple(ids("archived_at:asc")) for _ in range(3)}
    assert len(orders) > 1 and all(sorted(order) == sorted(plain) for order in orders), "a fresh order each time"
    assert ids("archived_at:asc,id:asc") == plain == ids("archived_at:asc,id:asc"), "the id leaves no tie"
    assert httpx.post(f"{server.url}/_sandbox/shuffle_ties", json={"seed": "x"}).status_code == 400
    assert admin(server, "shuffle_ties", seed=None) == {"shuffle_ties": False}
    assert ids("archived_at:asc") == plain
