"""Cliniko invoices, invoice items and businesses in the sandbox, over real HTTP with httpx: line arithmetic to four
decimals, the items' own incremental listing, the staff actions (mark paid, close, reverse, delete, archive, edit)
and what each does to `updated_at`; and the invoices ↔ payments scenario seeded into both sandboxes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import stripe

from clinicsync.sandbox.cliniko_emu import DEFAULT_API_KEY, ClinikoEmulator
from clinicsync.sandbox.invoice_seed import BASE_COUNTS, INVOICE_CASES
from clinicsync.sandbox.launcher import Sandbox
from clinicsync.sandbox.server import RunningServer, serve

HEADERS = {"User-Agent": "ClinicSync invoice tests (dev@example.com)", "Accept": "application/json"}


@pytest.fixture
def server() -> Iterator[RunningServer]:
    with serve(ClinikoEmulator()) as srv:
        body = httpx.post(f"{srv.url}/_sandbox/seed", json={"patients": 8, "products": 0, "seed": 4}).json()
        srv.patient_ids = body["ids"]  # type: ignore[attr-defined]
        yield srv


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{server.url}/v1", auth=(DEFAULT_API_KEY, ""), headers=HEADERS, timeout=5) as c:
        yield c


def admin(srv: RunningServer, action: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{srv.url}/_sandbox/{action}", json=body, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def add(srv: RunningServer, **spec: Any) -> dict[str, Any]:
    spec.setdefault("patient_id", srv.patient_ids[0])  # type: ignore[attr-defined]
    return admin(srv, "add_invoices", {"invoices": [spec]})["invoices"][0]


def items_of(client: httpx.Client, invoice_id: str) -> list[dict[str, Any]]:
    return client.get("/invoice_items", params={"q[]": f"invoice_id:={invoice_id}", "per_page": 100}).json()[
        "invoice_items"
    ]


def advance(srv: RunningServer, seconds: float = 5) -> None:
    admin(srv, "clock", {"advance_s": seconds})


def test_line_amounts_keep_four_decimals_and_the_total_is_to_the_cent(
    server: RunningServer, client: httpx.Client
) -> None:
    exclusive = add(
        server,
        calculation_method=2,
        lines=[
            {"name": "Dry needling", "quantity": "3", "unit_price": "18.1818", "discount_percentage": "12.5"},
            {"name": "Foam roller", "unit_price": "39.9545", "tax_name": "GST", "tax_rate": "10.0", "product_id": "7"},
            {"name": "Review", "unit_price": "95.0", "discount_amount": "5.0"},
        ],
    )
    lines = {i["name"]: i for i in items_of(client, exclusive["id"])}
    needling = lines["Dry needling"]
    assert needling["discounted_amount"] == "6.8182" and needling["net_price"] == "47.7272"
    assert needling["total_including_tax"] == 47.7272 and needling["is_monetary_discount"] is False
    roller = lines["Foam roller"]
    assert roller["tax_amount"] == "3.9955" and roller["total_including_tax"] == 43.95
    assert roller["product"]["links"]["self"].endswith("/products/7") and "billable_item" not in roller
    review = lines["Review"]
    assert review["is_monetary_discount"] is True and review["discount_percentage"] is None
    assert review["net_price"] == "90.0"
    invoice = client.get(f"/invoices/{exclusive['id']}").json()
    # 47.7272 + 43.95 + 90 = 181.6772: the invoice is payable to the cent.
    assert invoice["total_amount"] == "181.68" and invoice["tax_amount"] == "3.9955"
    assert invoice["calculation_method_description"] == "Tax exclusive"

    inclusive = add(server, lines=[{"name": "Massage", "unit_price": "65.125", "tax_name": "GST", "tax_rate": "10.0"}])
    massage = items_of(client, inclusive["id"])[0]
    assert massage["total_including_tax"] == 65.125 and massage["net_price"] == "59.2045"
    assert massage["tax_amount"] == "5.9205"
    assert client.get(f"/invoices/{inclusive['id']}").json()["total_amount"] == "65.13"
    free = add(server, lines=[{"name": "Review (no charge)", "unit_price": "0"}])
    assert free["total_amount"] == "0.0"
    assert add(server)["total_amount"] == "0.0"  # no lines at all


def test_invoice_items_have_their_own_incremental_listing(server: RunningServer, client: httpx.Client) -> None:
    first = add(server, lines=[{"name": "A", "unit_price": "10"}, {"name": "B", "unit_price": "20"}])
    second = add(server, lines=[{"name": "C", "unit_price": "30"}])
    both = client.get("/invoice_items", params={"q[]": f"invoice_id:={first['id']},{second['id']}"}).json()
    assert sorted(i["name"] for i in both["invoice_items"]) == ["A", "B", "C"]
    assert client.get("/invoice_items", params={"per_page": 101}).status_code == 400
    mark = client.get("/invoice_items", params={"sort": "updated_at:desc", "per_page": 1}).json()
    watermark = mark["invoice_items"][0]["updated_at"]
    advance(server)
    admin(server, "edit_invoices", {"ids": [second["id"]], "lines": [{"name": "D", "unit_price": "31.5"}]})
    since = client.get(
        "/invoice_items", params={"q[]": [f"updated_at:>{watermark}", "deleted_at:*"], "sort": "updated_at"}
    ).json()["invoice_items"]
    # The replaced line shows up deleted, the new one live; the untouched invoice's lines do not.
    assert sorted((i["name"], i["deleted_at"] is not None) for i in since) == [("C", True), ("D", False)]
    assert [i["name"] for i in items_of(client, second["id"])] == ["D"]
    assert client.get(f"/invoices/{second['id']}").json()["total_amount"] == "31.5"
    deprecated = client.get(f"/invoices/{first['id']}/invoice_items").json()
    assert sorted(i["name"] for i in deprecated["invoice_items"]) == ["A", "B"]


def test_staff_actions_move_status_closed_at_and_updated_at(server: RunningServer, client: httpx.Client) -> None:
    line = [{"name": "Standard consultation", "unit_price": "95.0"}]
    open_ = add(server, lines=line)
    closing = add(server, lines=line)
    watermark = client.get(f"/invoices/{open_['id']}").json()["updated_at"]
    advance(server)
    admin(server, "pay_invoices", {"ids": [open_["id"]]})
    admin(server, "close_invoices", {"ids": [closing["id"]]})
    changed = client.get("/invoices", params={"q[]": f"updated_at:>{watermark}"}).json()["invoices"]
    assert {i["id"]: (i["status"], i["status_description"]) for i in changed} == {
        open_["id"]: (20, "Paid"),
        closing["id"]: (30, "Closed"),
    }
    assert all(i["closed_at"] for i in changed)
    refused = httpx.post(f"{server.url}/_sandbox/pay_invoices", json={"ids": [open_["id"]]})
    assert refused.status_code == 400 and "not open" in refused.text

    unpaid = add(server, lines=line)
    paid = add(server, lines=line, status=20)
    reversals = admin(server, "reverse_invoices", {"ids": [unpaid["id"], paid["id"]]})["reversals"]
    before = client.get(f"/invoices/{reversals[unpaid['id']]}").json()
    assert before["status"] == 30 and before["total_amount"] == "-95.0"
    assert before["original_invoice"]["links"]["self"].endswith(f"/invoices/{unpaid['id']}")
    assert client.get(f"/invoices/{unpaid['id']}").json()["status"] == 30
    after = client.get(f"/invoices/{reversals[paid['id']]}").json()
    assert after["status"] == 40 and after["status_description"] == "Open credit" and after["closed_at"] is None
    assert client.get(f"/invoices/{paid['id']}").json()["status"] == 20
    chain = client.get(client.get(f"/invoices/{paid['id']}").json()["reversed_invoices"]["links"]["self"]).json()
    assert [i["id"] for i in chain["invoices"]] == [reversals[paid["id"]]]
    assert items_of(client, reversals[paid["id"]])[0]["quantity"] == "-1.0"
    again = httpx.post(f"{server.url}/_sandbox/reverse_invoices", json={"ids": [paid["id"]]})
    assert again.status_code == 400


def test_deleted_and_archived_invoices_are_hidden_unless_asked(server: RunningServer, client: httpx.Client) -> None:
    gone = add(server, lines=[{"name": "X", "unit_price": "10"}])
    shelved = add(server, lines=[{"name": "Y", "unit_price": "10"}])
    admin(server, "delete_invoices", {"ids": [gone["id"]]})
    admin(server, "archive_invoices", {"ids": [shelved["id"]]})
    listed = {i["id"] for i in client.get("/invoices", params={"per_page": 100}).json()["invoices"]}
    assert gone["id"] not in listed and shelved["id"] not in listed
    assert client.get(f"/invoices/{gone['id']}").status_code == 404
    assert client.get(f"/invoices/{gone['id']}", params={"q[]": "deleted_at:*"}).json()["deleted_at"]
    assert client.get(f"/invoices/{shelved['id']}", params={"q[]": "archived_at:*"}).json()["archived_at"]
    deleted = client.get("/invoices", params={"q[]": "deleted_at:?"}).json()["invoices"]
    assert [i["id"] for i in deleted] == [gone["id"]]
    assert items_of(client, gone["id"]) == []
    edited = admin(server, "edit_invoices", {"ids": [shelved["id"]], "fields": {"issue_date": "2026-04-05"}})
    assert edited["ids"] == [shelved["id"]]
    bad = httpx.post(f"{server.url}/_sandbox/edit_invoices", json={"ids": [shelved["id"]], "fields": {"total": 1}})
    assert bad.status_code == 400


def test_businesses_carry_their_time_zone_and_invoices_use_it(server: RunningServer, client: httpx.Client) -> None:
    brisbane = admin(server, "add_business", {"time_zone_identifier": "Australia/Brisbane"})["id"]
    businesses = {b["id"]: b for b in client.get("/businesses").json()["businesses"]}
    assert businesses[brisbane]["time_zone_identifier"] == "Australia/Brisbane"
    assert businesses[brisbane]["time_zone"] == "Brisbane"
    assert client.get(f"/businesses/{brisbane}").json()["id"] == brisbane
    # 13:30Z on 4 April 2026 is the 5th in Melbourne (AEDT) and still the 4th in Brisbane.
    made = admin(
        server,
        "add_invoices",
        {
            "invoices": [
                {"patient_id": server.patient_ids[0], "created_at": "2026-04-04T13:30:00Z"},  # type: ignore[attr-defined]
                {"patient_id": server.patient_ids[0], "created_at": "2026-04-04T13:30:00Z", "business_id": brisbane},  # type: ignore[attr-defined]
            ]
        },
    )["invoices"]
    assert [i["issue_date"] for i in made] == ["2026-04-05", "2026-04-04"]
    assert (
        httpx.post(f"{server.url}/_sandbox/add_business", json={"time_zone_identifier": "Mars/Base"}).status_code == 400
    )


# -- the scenario in both sandboxes -----------------------------------------------------------------------------


@pytest.fixture
def scenario_sandbox(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    return make_sandbox(patients=60, invoices=120, invoice_customers=40, seed=7)


def cents(amount: str) -> int:
    return int((Decimal(amount) * 100).to_integral_value())


def test_the_scenario_seeds_every_case_with_payments_that_make_it_so(scenario_sandbox: Sandbox) -> None:
    scenario = scenario_sandbox.seeded["invoice_scenario"]
    counts = Counter(scenario["cases"].values())
    assert set(counts) == set(INVOICE_CASES) and sum(counts.values()) == 120
    assert counts["multi_invoice"] == 2 * max(1, round(BASE_COUNTS["multi_invoice"] * 0.12))
    with httpx.Client(
        base_url=scenario_sandbox.cliniko_url, auth=(DEFAULT_API_KEY, ""), headers=HEADERS, timeout=10
    ) as cliniko:
        invoices = {
            i["id"]: i
            for i in cliniko.get(
                "/invoices", params={"per_page": 100, "q[]": ["archived_at:*", "deleted_at:*"]}
            ).json()["invoices"]
        }
        invoices |= {
            i["id"]: i
            for i in cliniko.get(
                "/invoices", params={"per_page": 100, "page": 2, "q[]": ["archived_at:*", "deleted_at:*"]}
            ).json()["invoices"]
        }
        zones = {b["id"]: b["time_zone_identifier"] for b in cliniko.get("/businesses").json()["businesses"]}
    assert len(invoices) == 120
    sdk = stripe.StripeClient(scenario_sandbox.stripe_key or "", base_addresses={"api": scenario_sandbox.stripe_url})
    intents = {p.id: p for p in sdk.v1.payment_intents.list(params={"limit": 100}).auto_paging_iter()}
    charges = {c.id: c for c in sdk.v1.charges.list(params={"limit": 100}).auto_paging_iter()}
    customer_of = scenario["customer_ids"]
    for ref, invoice_ids in scenario["payment_invoices"].items():
        case = ref.split(":", 1)[0]
        made = scenario["payments"][ref]
        charge = charges[made["charge"]]
        first = invoices[invoice_ids[0]]
        assert first["status"] == 20
        patient = first["patient"]["links"]["self"].rsplit("/", 1)[1]
        expected_customer = None if case == "no_customer" else customer_of[patient]
        assert charge.customer == expected_customer, ref
        total = sum(cents(invoices[i]["total_amount"]) for i in invoice_ids)
        if case in ("certain", "linked_metadata", "refunded", "outside_window", "no_customer", "ambiguous"):
            assert charge.amount == total, ref
        if case == "refunded":
            assert charge.refunded
        if case == "linked_metadata":
            assert intents[made["payment_intent"]].metadata["cliniko_invoice_id"] == invoice_ids[0]
        zone = ZoneInfo(zones[first["business"]["links"]["self"].rsplit("/", 1)[1]])
        local_day = datetime.fromtimestamp(charge.created, UTC).astimezone(zone).date()
        issue = date.fromisoformat(first["issue_date"])
        if case == "outside_window":
            assert local_day == issue - timedelta(days=8)
        else:
            assert issue <= local_day <= issue + timedelta(days=2), ref
    splits = [r for r in scenario["payment_invoices"] if r.startswith("split:")]
    for invoice_id in {scenario["payment_invoices"][r][0] for r in splits}:
        parts = [charges[scenario["payments"][r]["charge"]].amount for r in splits if invoice_id in r]
        assert len(parts) == 2 and sum(parts) == cents(invoices[invoice_id]["total_amount"])
    for original, reversal in scenario["reversals"].items():
        assert invoices[reversal]["original_invoice"]["links"]["self"].endswith(original)
        assert cents(invoices[reversal]["total_amount"]) == -cents(invoices[original]["total_amount"])


def test_invoice_endpoints_share_the_rate_limit_and_the_fault_knobs() -> None:
    from clinicsync.sandbox.faults import FaultPlan

    with serve(ClinikoEmulator(), rate_limits=True, faults=FaultPlan.parse("before:503=1,max=1")) as srv:
        with httpx.Client(base_url=f"{srv.url}/v1", auth=(DEFAULT_API_KEY, ""), headers=HEADERS, timeout=5) as c:
            assert c.get("/invoice_items").status_code == 503
            statuses = [c.get("/invoice_items").status_code for _ in range(205)]
        assert statuses.count(429) >= 1 and statuses[0] == 200


def test_a_patients_invoices_are_listed_under_the_patient(server: RunningServer, client: httpx.Client) -> None:
    mine = add(server, lines=[{"name": "A", "unit_price": "10"}])
    other = server.patient_ids[1]  # type: ignore[attr-defined]
    add(server, patient_id=other, lines=[{"name": "B", "unit_price": "10"}])
    pid = server.patient_ids[0]  # type: ignore[attr-defined]
    listed = client.get(f"/patients/{pid}/invoices", params={"q[]": "total_amount:>1"})
    assert listed.status_code == 400  # not a searchable column, as on /invoices
    own = client.get(f"/patients/{pid}/invoices", params={"per_page": 100}).json()["invoices"]
    assert mine["id"] in {i["id"] for i in own}
    assert {i["patient"]["links"]["self"].rsplit("/", 1)[1] for i in own} == {pid}
    assert client.get("/patients/1/invoices").status_code == 404


def test_issue_dates_follow_each_business_zone_across_the_october_switch(server: RunningServer) -> None:
    brisbane = admin(server, "add_business", {"time_zone_identifier": "Australia/Brisbane"})["id"]
    pid = server.patient_ids[0]  # type: ignore[attr-defined]
    moments = ("2026-10-03T13:30:00Z", "2026-10-04T13:30:00Z")  # Melbourne moves to AEDT at 16:00Z on 3 October
    specs = [
        {"patient_id": pid, "created_at": moment, **({"business_id": business} if business else {})}
        for moment in moments
        for business in (None, brisbane)
    ]
    made = admin(server, "add_invoices", {"invoices": specs})["invoices"]
    assert [i["issue_date"] for i in made] == ["2026-10-03", "2026-10-03", "2026-10-05", "2026-10-04"]
    given = admin(server, "add_invoices", {"invoices": [{"patient_id": pid, "issue_date": "2026-10-04"}]})
    assert given["invoices"][0]["issue_date"] == "2026-10-04"  # a given issue date is never shifted


def test_invoices_items_and_businesses_survive_a_saved_sandbox(tmp_path: Any) -> None:
    from clinicsync.sandbox import persist

    emulator = ClinikoEmulator(seed=3)
    emulator.admin("seed", {"patients": 40, "products": 5})
    assert emulator.admin("seed_invoices", {"invoices": 60, "customers": 30}).status == 200  # type: ignore[union-attr]
    path = persist.snapshot_path(tmp_path, emulator)
    persist.save(emulator, path)
    restored = ClinikoEmulator(seed=3)
    assert persist.load(restored, path)
    before, after = (e.admin("dump", {}).body for e in (emulator, restored))  # type: ignore[union-attr]
    for table in ("invoices", "invoice_items", "businesses"):
        assert after[table] == before[table] and after[table]
    with (
        serve(restored) as srv,
        httpx.Client(base_url=f"{srv.url}/v1", auth=(DEFAULT_API_KEY, ""), headers=HEADERS, timeout=5) as client,
    ):
        listed = client.get("/invoice_items", params={"per_page": 100}).json()
        assert listed["total_entries"] == sum(1 for i in before["invoice_items"] if i["deleted_at"] is None)


def test_the_sandbox_command_takes_an_invoice_count() -> None:
    from clinicsync.sandbox.launcher import build_parser

    assert build_parser().parse_args(["--invoices", "1000"]).invoices == 1000
    assert build_parser().parse_args([]).invoices == 0  # off unless asked
    assert build_parser().parse_args(["--invoice-customers", "1500"]).invoice_customers == 1500
    assert build_parser().parse_args([]).invoice_customers == 300  # the acceptance mix's 300 patients
