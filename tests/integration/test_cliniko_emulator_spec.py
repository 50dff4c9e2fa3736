"""The Cliniko emulator's responses validate against Cliniko's official OpenAPI document.

The document is read from tests/specs/cliniko.json, a trimmed copy derived from the upstream YAML by
tests/specs/derive.py (paths, parameters, response and component schemas with every validation keyword; no
prose), so this runs in any clone and never skips.

Every integration test trusts the emulator, so the emulator must agree with the spec: list envelopes, Patient,
PublicSettings, Settings, User, Business, Invoice, IndividualAppointment and the 422 ValidationError body, for
the clean and hard profiles.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_schema_validator import OAS30Validator, oas30_format_checker

from clinicsync.sandbox.cliniko_emu import DEFAULT_API_KEY, ClinikoEmulator
from clinicsync.sandbox.server import RunningServer, serve

SPEC_PATH = Path(__file__).resolve().parents[1] / "specs" / "cliniko.json"
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
# Belongs-to links the emulator leaves out when there is nothing to point at (see docs/sandbox.md).
OPTIONAL_PATIENT_LINKS = {"concession_type", "referring_doctor", "latest_booking", "merged_with_patient"}


@cache
def spec() -> dict[str, Any]:
    document = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
    _case_insensitive_email_patterns(document)
    _nullable_enums_allow_null(document)
    return document


def _nullable_enums_allow_null(node: Any) -> None:
    """A `nullable: true` property with an `enum` lacking null (e.g. an appointment's
    cancellation_reason_description, null until it is cancelled): OpenAPI 3.0.3 says the enum must list null
    for null to pass, which the spec's authors did not do, so null is added to such enums."""
    if isinstance(node, dict):
        if node.get("nullable") is True and isinstance(node.get("enum"), list) and None not in node["enum"]:
            node["enum"] = [*node["enum"], None]
        for value in node.values():
            _nullable_enums_allow_null(value)
    elif isinstance(node, list):
        for value in node:
            _nullable_enums_allow_null(value)


def _case_insensitive_email_patterns(node: Any) -> None:
    """The spec's email patterns list only upper-case letters ([A-Z0-9...]); Cliniko's own validator is
    case-insensitive (every real address is lower-case), so the patterns are checked with (?i)."""
    if isinstance(node, dict):
        pattern = node.get("pattern")
        if isinstance(pattern, str) and "@" in pattern and "[A-Z" in pattern:
            node["pattern"] = "(?i)" + pattern
        for value in node.values():
            _case_insensitive_email_patterns(value)
    elif isinstance(node, list):
        for value in node:
            _case_insensitive_email_patterns(value)


def validate(schema: dict[str, Any], instance: Any) -> None:
    """Validate with `$ref`s to #/components/... resolved against the whole document."""
    root = {**copy.deepcopy(schema), "components": spec()["components"]}
    validator = OAS30Validator(root, format_checker=oas30_format_checker)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message[:300]}" for e in errors[:10])


def response_schema(path: str, method: str, status: str) -> dict[str, Any]:
    operation = spec()["paths"][path][method]
    response = operation["responses"][status]
    if "$ref" in response:
        response = spec()["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    return response["content"]["application/json"]["schema"]


def component(name: str) -> dict[str, Any]:
    return spec()["components"]["schemas"][name]


@pytest.fixture(params=["clean", "hard"])
def server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    with serve(ClinikoEmulator()) as srv:
        seed = {"profile": request.param, "patients": 25, "products": 60, "seed": 5}
        response = httpx.post(f"{srv.url}/_sandbox/seed", json=seed)
        assert response.status_code == 200
        srv.seeded = response.json()  # type: ignore[attr-defined]
        yield srv


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    headers = {"User-Agent": "ClinicSync spec tests (dev@example.com)", "Accept": "application/json"}
    with httpx.Client(base_url=f"{server.url}/v1", auth=(DEFAULT_API_KEY, ""), headers=headers, timeout=5) as c:
        yield c


def every_patient(client: httpx.Client) -> list[dict[str, Any]]:
    """All patients including archived and merged ones, each list page validated on the way."""
    schema = response_schema("/patients", "get", "200")
    url: str | None = "/patients?per_page=10&q%5B%5D=archived_at:*"
    patients: list[dict[str, Any]] = []
    while url:
        body = client.get(url).json()
        validate(schema, body)
        patients.extend(body["patients"])
        url = body["links"].get("next")
    return patients


def test_patient_list_pages_match_the_spec(client: httpx.Client, server: RunningServer) -> None:
    patients = every_patient(client)
    assert len(patients) == len(server.seeded["ids"])  # type: ignore[attr-defined]


def test_each_patient_has_every_spec_field_and_nothing_else(client: httpx.Client) -> None:
    properties = set(component("Patient")["properties"])
    for patient in every_patient(client):
        validate(component("Patient"), patient)
        keys = set(patient)
        assert keys <= properties, f"fields the spec lacks: {keys - properties}"
        assert properties - OPTIONAL_PATIENT_LINKS <= keys, f"missing: {properties - OPTIONAL_PATIENT_LINKS - keys}"
        assert patient["id"].isdigit() and 18 <= len(patient["id"]) <= 19
        for name in ("created_at", "updated_at", "archived_at", "deleted_at", "merged_at"):
            assert patient[name] is None or TIMESTAMP.match(patient[name]), (name, patient[name])
        assert patient["links"]["self"].endswith(f"/v1/patients/{patient['id']}")


def test_single_patient_matches_the_spec(client: httpx.Client) -> None:
    first = client.get("/patients", params={"per_page": 1}).json()["patients"][0]
    validate(response_schema("/patients/{id}", "get", "200"), client.get(f"/patients/{first['id']}").json())


def test_created_and_patched_patients_match_the_spec(client: httpx.Client) -> None:
    created = client.post("/patients", json={"first_name": "Spec", "last_name": "Check", "email": "spec@example.com"})
    assert created.status_code == 201
    validate(response_schema("/patients", "post", "201"), created.json())
    patched = client.patch(f"/patients/{created.json()['id']}", json={"old_reference_id": "cus_SpecRef"})
    validate(response_schema("/patients/{id}", "patch", "200"), patched.json())
    unarchived = client.post(f"/patients/{created.json()['id']}/unarchive")
    validate(response_schema("/patients/{id}/unarchive", "post", "200"), unarchived.json())


def test_patch_validation_error_matches_the_spec(client: httpx.Client) -> None:
    first = client.get("/patients", params={"per_page": 1}).json()["patients"][0]
    response = client.patch(f"/patients/{first['id']}", json={"email": "not-an-email"})
    assert response.status_code == 422
    validate(response_schema("/patients/{id}", "patch", "422"), response.json())
    assert response.json()["errors"]["email"]


def test_settings_user_and_businesses_match_the_spec(client: httpx.Client) -> None:
    validate(response_schema("/settings/public", "get", "200"), client.get("/settings/public").json())
    validate(response_schema("/settings", "get", "200"), client.get("/settings").json())
    validate(response_schema("/user", "get", "200"), client.get("/user").json())
    businesses = client.get("/businesses").json()
    validate(response_schema("/businesses", "get", "200"), businesses)
    business_fields = set(component("Business")["properties"])
    assert set(businesses["businesses"][0]) <= business_fields


def test_the_case_insensitive_email_check_still_rejects_junk() -> None:
    """Guard for the (?i) adjustment above: it must not make the email pattern accept anything."""
    email_schema = component("Patient")["properties"]["email"]
    validate(email_schema, "Mixed.Case+tag@Example.com")
    with pytest.raises(AssertionError):
        validate(email_schema, "not-an-email")


def test_patients_still_match_the_spec_after_admin_edits(client: httpx.Client, server: RunningServer) -> None:
    response = httpx.post(f"{server.url}/_sandbox/edit", json={"count": 100})
    assert response.status_code == 200 and response.json()["ids"]
    for patient in every_patient(client):
        validate(component("Patient"), patient)


# Belongs-to links an invoice has only when there is something to point at (see docs/sandbox.md).
OPTIONAL_INVOICE_LINKS = {"appointment", "attendee", "original_invoice", "signature"}
OPTIONAL_APPOINTMENT_LINKS = {"patient_case", "repeated_from"}
ACTIVITY = {
    "/invoices": ("invoices", "Invoice", OPTIONAL_INVOICE_LINKS),
    "/individual_appointments": ("individual_appointments", "IndividualAppointment", OPTIONAL_APPOINTMENT_LINKS),
}


def check_record(record: dict[str, Any], name: str, optional: set[str], path: str) -> None:
    """`record` validates as the spec's schema `name` and has each of its properties (but the `optional` ones)
    and nothing else; its id is a digit string and its own link points at `path`."""
    validate(component(name), record)
    properties = set(component(name)["properties"])
    keys = set(record)
    assert keys <= properties, f"fields the spec lacks: {keys - properties}"
    assert properties - optional <= keys, f"missing: {properties - optional - keys}"
    assert record["id"].isdigit() and record["links"]["self"].endswith(f"/v1{path}/{record['id']}")


def every_record(client: httpx.Client, path: str, query: str = "") -> list[dict[str, Any]]:
    key, _, _ = {**ACTIVITY, **CATALOGUE}[path]
    schema = response_schema(path, "get", "200")
    url: str | None = f"{path}?per_page=100{query}"
    records: list[dict[str, Any]] = []
    while url:
        body = client.get(url).json()
        validate(schema, body)
        records.extend(body[key])
        url = body["links"].get("next")
    return records


@pytest.mark.parametrize("path", sorted(ACTIVITY))
def test_activity_lists_match_the_spec_with_every_field(client: httpx.Client, server: RunningServer, path: str) -> None:
    key, name, optional = ACTIVITY[path]
    records = every_record(client, path)
    assert len(records) == server.seeded[key.removeprefix("individual_")]  # type: ignore[attr-defined]
    patient_ids = set(server.seeded["ids"])  # type: ignore[attr-defined]
    for record in records:
        check_record(record, name, optional, path)
        assert record["patient"]["links"]["self"].rsplit("/", 1)[1] in patient_ids
        for field in ("created_at", "updated_at", "archived_at", "deleted_at"):
            assert record[field] is None or TIMESTAMP.match(record[field]), (field, record[field])
    first = records[0]
    validate(response_schema(f"{path}/{{id}}", "get", "200"), client.get(f"{path}/{first['id']}").json())


def test_activity_filters_by_date_datetime_and_patient(client: httpx.Client, server: RunningServer) -> None:
    invoices = every_record(client, "/invoices")
    dates = sorted(i["issue_date"] for i in invoices)
    middle = dates[len(dates) // 2]
    since = every_record(client, "/invoices", f"&q%5B%5D=issue_date:>={middle}")
    assert {i["id"] for i in since} == {i["id"] for i in invoices if i["issue_date"] >= middle}
    exact = every_record(client, "/invoices", f"&q%5B%5D=issue_date:={middle}")
    assert exact and all(i["issue_date"] == middle for i in exact)

    appointments = every_record(client, "/individual_appointments")
    starts = sorted(a["starts_at"] for a in appointments)
    moment = starts[len(starts) // 3]
    later = every_record(client, "/individual_appointments", f"&q%5B%5D=starts_at:>={moment}&sort=starts_at")
    assert [a["starts_at"] for a in later] == [s for s in starts if s >= moment]
    pid = appointments[0]["patient"]["links"]["self"].rsplit("/", 1)[1]
    own = every_record(client, "/individual_appointments", f"&q%5B%5D=patient_id:={pid}")
    assert own and {a["patient"]["links"]["self"].rsplit("/", 1)[1] for a in own} == {pid}
    assert every_record(client, "/individual_appointments", "&q%5B%5D=cancelled_at:!?&q%5B%5D=deleted_at:!?")
    assert client.get("/invoices", params={"q[]": "starts_at:>=2024-01-01T00:00:00Z"}).status_code == 400
    assert client.get("/individual_appointments", params={"q[]": "starts_at:=2024-01-01"}).status_code == 400
    assert client.get("/invoices", params={"q[]": "updated_at:>=2020-01-01T00:00:00Z"}).json()["total_entries"] == len(
        invoices
    )


def test_seeded_activity_leaves_some_patients_without_recent_activity(server: RunningServer) -> None:
    seeded = server.seeded  # type: ignore[attr-defined]
    inactive = set(seeded["inactive_ids"])
    assert inactive and inactive < set(seeded["ids"])
    dump = httpx.post(f"{server.url}/_sandbox/dump", json={}).json()
    edge = (datetime.fromisoformat(dump["now"].replace("Z", "+00:00")) - timedelta(days=730)).date()
    recent = {i["patient_id"] for i in dump["invoices"] if date.fromisoformat(i["issue_date"]) >= edge}
    recent |= {a["patient_id"] for a in dump["appointments"] if a["starts_at"][:10] >= edge.isoformat()}
    assert recent == set(seeded["ids"]) - inactive
    assert set(seeded["cases"]).isdisjoint(inactive), "named cases are always active"


# The product catalogue: belongs-to links (and product_supplier_id) appear only when there is something to point at.
CATALOGUE = {
    "/products": ("products", "Product", {"product_supplier", "product_supplier_id", "tax"}),
    "/product_suppliers": ("product_suppliers", "ProductSupplier", set()),
    "/taxes": ("taxes", "Tax", set()),
    "/stock_adjustments": ("stock_adjustments", "StockAdjustment", set()),
}
ARCHIVABLE = {"/products", "/stock_adjustments"}  # the lists whose q[] table has archived_at
# `format: decimal` is not a format the validator knows, so the decimal strings are checked here: Rails' BigDecimal
# text, e.g. "81.818", "90.0", "-2.0".
DECIMAL = re.compile(r"^-?\d+\.\d+$")
DECIMAL_FIELDS = {
    "Product": ("price_ex_tax", "price_including_tax", "cost_price", "stock_level"),
    "Tax": ("rate", "amount"),
    "StockAdjustment": ("quantity",),
    "ProductSupplier": (),
}


@pytest.mark.parametrize("path", sorted(CATALOGUE))
def test_catalogue_lists_match_the_spec_with_every_field(
    client: httpx.Client, server: RunningServer, path: str
) -> None:
    _, name, optional = CATALOGUE[path]
    records = every_record(client, path, "&q%5B%5D=archived_at:*" if path in ARCHIVABLE else "")
    if path == "/products":
        assert {r["id"] for r in records} == set(server.seeded["product_ids"])  # type: ignore[attr-defined]
    assert records
    for record in records:
        check_record(record, name, optional, path)
        for field in ("created_at", "updated_at", "archived_at"):
            assert record.get(field) is None or TIMESTAMP.match(record[field]), (field, record[field])
        for field in DECIMAL_FIELDS[name]:
            assert record[field] is None or DECIMAL.match(record[field]), (field, record[field])
    first = next(r for r in records if not r.get("archived_at"))
    one = client.get(f"{path}/{first['id']}")
    assert one.status_code == 200
    validate(response_schema(f"{path}/{{id}}", "get", "200"), one.json())


def test_products_reach_every_optional_link_and_both_tax_shapes(client: httpx.Client) -> None:
    """The seed covers each optional part of Product: with and without a tax, a supplier, a stock level."""
    products = every_record(client, "/products", "&q%5B%5D=archived_at:*")
    assert any("tax" in p for p in products) and any("tax" not in p for p in products)
    assert any("product_supplier" in p for p in products) and any("product_supplier" not in p for p in products)
    assert any(p["stock_level"] is None for p in products) and any(p["archived_at"] for p in products)


def test_product_and_stock_adjustment_writes_match_the_spec(client: httpx.Client, server: RunningServer) -> None:
    gst = server.seeded["taxes"]["GST"]  # type: ignore[attr-defined]
    created = client.post(
        "/products", json={"name": "Spec roller", "price": 90, "price_includes_tax": True, "tax_id": gst}
    )
    assert created.status_code == 201
    validate(response_schema("/products", "post", "201"), created.json())
    pid = created.json()["id"]
    patched = client.patch(f"/products/{pid}", json={"item_code": "SPEC-1", "cost_price": "30.5"})
    validate(response_schema("/products/{id}", "patch", "200"), patched.json())
    refused = client.patch(f"/products/{pid}", json={"name": ""})
    assert refused.status_code == 422
    validate(response_schema("/products/{id}", "patch", "422"), refused.json())
    adjusted = client.post(
        "/stock_adjustments", json={"product_id": pid, "quantity": "4", "adjustment_type": "Stock Purchase"}
    )
    assert adjusted.status_code == 201
    validate(response_schema("/stock_adjustments", "post", "201"), adjusted.json())
    wrong = client.post("/stock_adjustments", json={"product_id": pid, "quantity": "4", "adjustment_type": "Damaged"})
    validate(response_schema("/stock_adjustments", "post", "422"), wrong.json())
    assert client.post(f"/products/{pid}/archive").status_code == 204
    archived = client.get(f"/products/{pid}", params={"q[]": "archived_at:*"})
    validate(response_schema("/products/{id}", "get", "200"), archived.json())


# -- invoices, invoice items and businesses against the spec's field facts (tests/specs/cliniko.json x-field-facts) --

JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}
# Belongs-to links a record has only when there is something to point at (see docs/sandbox.md).
OPTIONAL_FIELDS = {
    "Invoice": OPTIONAL_INVOICE_LINKS,
    "InvoiceItem": {"product", "billable_item"},
    "Business": set(),
}


def field_facts(name: str) -> dict[str, dict[str, Any]]:
    return spec()["x-field-facts"][name]


def check_facts(record: dict[str, Any], name: str) -> None:
    """Every field the spec names (but the optional links) is present with the spec's type and enum; no other."""
    facts = field_facts(name)
    assert set(record) <= set(facts), f"{name} fields the spec lacks: {set(record) - set(facts)}"
    missing = set(facts) - OPTIONAL_FIELDS[name] - set(record)
    assert not missing, f"{name} lacks {missing}"
    for field, fact in facts.items():
        if field not in record:
            continue
        value = record[field]
        if value is None:
            assert fact["nullable"] or fact["type"] == "object", f"{name}.{field} is null but not nullable"
            continue
        wanted = JSON_TYPES[fact["type"]]
        assert isinstance(value, wanted) and not (bool in (type(value),) and bool not in wanted), (
            f"{name}.{field}: {value!r} is not {fact['type']}"
        )
        if "enum" in fact:
            assert value in fact["enum"], f"{name}.{field}: {value!r} not in {fact['enum']}"


@pytest.fixture(scope="module")
def invoice_server() -> Iterator[RunningServer]:
    with serve(ClinikoEmulator()) as srv:
        seed = {"profile": "clean", "patients": 60, "products": 20, "seed": 3}
        assert httpx.post(f"{srv.url}/_sandbox/seed", json=seed).status_code == 200
        scenario = httpx.post(f"{srv.url}/_sandbox/seed_invoices", json={"invoices": 90, "customers": 50})
        assert scenario.status_code == 200
        srv.scenario = scenario.json()  # type: ignore[attr-defined]
        yield srv


@pytest.fixture
def invoice_client(invoice_server: RunningServer) -> Iterator[httpx.Client]:
    headers = {"User-Agent": "ClinicSync spec tests (dev@example.com)", "Accept": "application/json"}
    with httpx.Client(base_url=f"{invoice_server.url}/v1", auth=(DEFAULT_API_KEY, ""), headers=headers, timeout=5) as c:
        yield c


def every_page(client: httpx.Client, path: str, key: str, query: str = "") -> list[dict[str, Any]]:
    schema = response_schema(path, "get", "200")
    url: str | None = f"{path}?per_page=100{query}"
    records: list[dict[str, Any]] = []
    while url:
        body = client.get(url).json()
        validate(schema, body)
        records.extend(body[key])
        url = body["links"].get("next")
    return records


def test_the_field_facts_were_derived() -> None:
    assert [e for e in field_facts("Invoice")["status"]["enum"] if e is not None] == [10, 20, 30, 40]
    assert field_facts("InvoiceItem")["total_including_tax"]["type"] == "number"
    assert field_facts("Business")["time_zone_identifier"]["type"] == "string"


def test_invoices_of_every_status_match_the_spec_facts(
    invoice_client: httpx.Client, invoice_server: RunningServer
) -> None:
    invoices = every_page(invoice_client, "/invoices", "invoices", "&q%5B%5D=archived_at:*&q%5B%5D=deleted_at:*")
    assert len(invoices) == 90
    for record in invoices:
        check_record(record, "Invoice", OPTIONAL_INVOICE_LINKS, "/invoices")
        check_facts(record, "Invoice")
        for name in ("total_amount", "net_amount", "tax_amount", "discounted_amount"):
            assert DECIMAL.match(record[name]), (name, record[name])
    assert {i["status"] for i in invoices} == {10, 20, 30, 40}
    assert any(i.get("original_invoice") for i in invoices) and any(i["total_amount"] == "0.0" for i in invoices)
    one = invoice_client.get(f"/invoices/{invoices[0]['id']}", params={"q[]": ["archived_at:*", "deleted_at:*"]})
    validate(response_schema("/invoices/{id}", "get", "200"), one.json())


def test_invoice_items_and_businesses_match_the_spec_facts(invoice_client: httpx.Client) -> None:
    items = every_page(invoice_client, "/invoice_items", "invoice_items")
    assert items
    for record in items:
        check_record(record, "InvoiceItem", OPTIONAL_FIELDS["InvoiceItem"], "/invoice_items")
        check_facts(record, "InvoiceItem")
        assert ("product" in record) != ("billable_item" in record)
        for name in ("quantity", "unit_price", "net_price", "tax_amount", "discounted_amount"):
            assert DECIMAL.match(record[name]), (name, record[name])
    assert any("product" in r for r in items) and any(r["is_monetary_discount"] for r in items)
    assert any(r["discount_percentage"] not in (None, "0.0") for r in items)
    one = invoice_client.get(f"/invoice_items/{items[0]['id']}")
    validate(response_schema("/invoice_items/{id}", "get", "200"), one.json())
    businesses = every_page(invoice_client, "/businesses", "businesses")
    assert {b["time_zone_identifier"] for b in businesses} == {"Australia/Melbourne", "Australia/Brisbane"}
    for record in businesses:
        check_record(record, "Business", set(), "/businesses")
        check_facts(record, "Business")
    validate(
        response_schema("/businesses/{id}", "get", "200"),
        invoice_client.get(f"/businesses/{businesses[1]['id']}").json(),
    )
