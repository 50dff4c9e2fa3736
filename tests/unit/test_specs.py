"""The trimmed API facts in tests/specs/ are complete enough for the checks that read them, and derive.py (which
writes them) keeps validation facts and drops prose. Nothing here reads the upstream documents outside the
repository."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from clinicsync.sources.calcom import CAL_API_VERSIONS

SPECS = Path(__file__).resolve().parents[1] / "specs"
DERIVE = SPECS / "derive.py"

# What tests/integration/test_cliniko_emulator_spec.py validates against, and what the sandbox will serve next.
CLINIKO_SCHEMAS = {
    "Patient",
    "PublicSettings",
    "Settings",
    "User",
    "Business",
    "Invoice",
    "InvoiceItem",
    "IndividualAppointment",
    "Product",
    "Practitioner",
    "Tax",
}
CLINIKO_RESPONSES = {
    ("/patients", "get", "200"),
    ("/patients", "post", "201"),
    ("/patients/{id}", "get", "200"),
    ("/patients/{id}", "patch", "200"),
    ("/patients/{id}", "patch", "422"),
    ("/patients/{id}/unarchive", "post", "200"),
    ("/settings", "get", "200"),
    ("/settings/public", "get", "200"),
    ("/user", "get", "200"),
    ("/businesses", "get", "200"),
    ("/invoices", "get", "200"),
    ("/invoices/{id}", "get", "200"),
    ("/individual_appointments", "get", "200"),
    ("/individual_appointments/{id}", "get", "200"),
}
# What tests/unit/test_stripe_emulator_unit.py compares the emulator's objects with.
STRIPE_OBJECTS = {"customer", "deleted_customer", "account", "product", "price", "invoice", "invoiceitem", "line_item"}


def _load(name: str) -> dict[str, Any]:
    return json.loads((SPECS / name).read_text(encoding="utf-8"))


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


def _annotation_keys(node: Any, in_properties: bool = False) -> set[str]:
    """Prose keywords left anywhere in a schema tree; inside `properties` the keys are field names, not prose."""
    found: set[str] = set()
    if isinstance(node, dict):
        if not in_properties:
            found |= set(node) & {"description", "example", "examples", "summary", "title", "default"}
        for key, value in node.items():
            found |= _annotation_keys(value, in_properties=key == "properties" and not in_properties)
    elif isinstance(node, list):
        for value in node:
            found |= _annotation_keys(value)
    return found


@pytest.mark.parametrize("name", ["cliniko.json", "calcom.json"])
def test_every_ref_resolves_and_no_prose_is_left(name: str) -> None:
    document = _load(name)
    for ref in _refs(document):
        kind, item = re.fullmatch(r"#/components/([^/]+)/([^/]+)", ref).groups()  # type: ignore[union-attr]
        assert item in document["components"][kind], f"{name}: {ref} does not resolve"
    assert _annotation_keys(document["paths"]) == set()
    assert _annotation_keys(document["components"]) == set()


def test_cliniko_facts_have_what_the_emulator_checks_need() -> None:
    document = _load("cliniko.json")
    assert set(document["components"]["schemas"]) >= CLINIKO_SCHEMAS
    for path, method, status in CLINIKO_RESPONSES:
        assert status in document["paths"][path][method]["responses"], (path, method, status)
    patient = document["components"]["schemas"]["Patient"]
    # Validation facts survive the trimming: types, the email pattern, enums, nullability, formats.
    assert patient["properties"]["email"]["pattern"] and patient["properties"]["email"]["type"] == "string"
    assert patient["properties"]["archived_at"] == {"format": "date-time", "nullable": True, "type": "string"}
    invoice = document["components"]["schemas"]["Invoice"]["properties"]
    assert invoice["status"]["enum"] == [10, 20, 30, 40]
    # Fields that share a name with a prose keyword are fields, and are kept.
    assert "title" in patient["properties"]
    assert "description" in document["components"]["schemas"]["Practitioner"]["properties"]
    assert "/patients/{patient_id}/medical_alerts" not in document["paths"]


def test_calcom_client_sends_the_api_versions_the_document_requires() -> None:
    paths = _load("calcom.json")["paths"]
    for path, version in CAL_API_VERSIONS.items():
        headers = {p["name"]: p for p in paths[f"/v2{path}"]["get"].get("parameters", []) if p.get("in") == "header"}
        if version is None:
            assert "cal-api-version" not in headers, path
        else:
            assert headers["cal-api-version"]["required"] is True
            assert headers["cal-api-version"]["x-must-be"] == version, path


def test_stripe_examples_are_kept_whole() -> None:
    resources = _load("stripe.json")["resources"]
    assert set(resources) >= STRIPE_OBJECTS
    assert resources["customer"]["object"] == "customer" and isinstance(resources["customer"]["address"], dict)
    assert resources["line_item"]["object"] == "line_item"  # an invoice line, not a Checkout item
    assert resources["deleted_customer"]["deleted"] is True


def test_the_readme_names_every_source_as_generated() -> None:
    readme = (SPECS / "README.md").read_text(encoding="utf-8")
    assert "generated" in readme and "do not edit" in readme
    for trimmed in ("cliniko.json", "calcom.json", "stripe.json"):
        source = _load(trimmed)["x-derived-from"]
        assert f"`{source['file']}`" in readme and source["sha256"] in readme


# -- derive.py on a tiny synthetic source ---------------------------------------------------------------------

SYNTHETIC_CLINIKO = {
    "openapi": "3.0.3",
    "info": {"title": "Tiny Cliniko", "version": "v1", "description": "Long prose about the API."},
    "paths": {
        "/patients": {
            "get": {
                "summary": "List patients",
                "description": "Prose.",
                "parameters": [
                    {"$ref": "#/components/parameters/PerPage"},
                    {"name": "q[]", "in": "query", "description": "Filters.", "schema": {"type": "array"}},
                ],
                "responses": {
                    "200": {
                        "description": "ok",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Patient"}}},
                    },
                    "422": {"$ref": "#/components/responses/ValidationError"},
                },
            }
        },
        "/patients/{id}/archive": {"post": {"responses": {"204": {"description": "Archived"}}}},
        "/medical_alerts": {
            "get": {
                "responses": {
                    "200": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Alert"}}}}
                }
            }
        },
    },
    "components": {
        "parameters": {
            "PerPage": {"name": "per_page", "in": "query", "description": "Prose.", "schema": {"maximum": 100}}
        },
        "responses": {
            "ValidationError": {
                "description": "Prose.",
                "content": {"application/json": {"schema": {"type": "object", "example": {"errors": {}}}}},
            }
        },
        "schemas": {
            "Patient": {
                "type": "object",
                "title": "A patient",
                "required": ["id"],
                "properties": {
                    "id": {"type": "string", "format": "int64", "example": "123", "description": "The id."},
                    "description": {"type": "string", "nullable": True, "description": "A field named description."},
                    "sex": {"type": "string", "enum": ["Female", "Male"], "x-tags": ["Patient"]},
                    "age": {"type": "integer", "minimum": 0, "exclusiveMinimum": True},
                    "phone": {"$ref": "#/components/schemas/Phone"},
                },
            },
            "Phone": {"type": "object", "properties": {"number": {"type": "string", "maxLength": 20}}},
            "Alert": {"type": "object"},
            "Unused": {"type": "object"},
            "Invoice": {
                "type": "object",
                "description": "prose",
                "properties": {
                    "status": {"type": "integer", "nullable": True, "enum": [10, 20], "description": "x"},
                    "issue_date": {"type": "string", "format": "date"},
                    "patient": {"$ref": "#/components/schemas/Alert"},
                },
            },
        },
    },
}
SYNTHETIC_CALCOM = {
    "openapi": "3.0.0",
    "info": {"title": "Tiny Cal", "version": "1.0.0"},
    "paths": {
        "/v2/bookings": {
            "get": {
                "parameters": [
                    {
                        "name": "cal-api-version",
                        "in": "header",
                        "required": True,
                        "description": "Must be set to 2024-08-13. Otherwise an older version answers.",
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {"200": {"description": "ok"}},
            }
        },
        "/v2/slots": {"get": {"responses": {"200": {}}}},
        "/v2/organizations/{orgId}/bookings": {"get": {"responses": {"200": {}}}},
    },
    "components": {"schemas": {}},
}
SYNTHETIC_STRIPE = {
    "resources": {
        **{
            name: {"id": f"{name}_fake", "object": name, "amount": 1, "livemode": False}
            for name in (
                "account",
                "customer",
                "product",
                "price",
                "payment_intent",
                "charge",
                "refund",
                "invoice",
                "invoiceitem",
                "line_item",
                "credit_note",
                "payment_method",
            )
        },
        "deleted_customer": {"id": "cus_fake", "object": "customer", "deleted": True},
        "subscription": {"id": "sub_fake", "object": "subscription"},
    }
}


def _derive(tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path / "out"
    return subprocess.run(
        [sys.executable, str(DERIVE), str(tmp_path / "src"), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    ), out


@pytest.fixture
def derived(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    # JSON is YAML too, so the Cliniko source can be written without PyYAML.
    (src / "cliniko-openapi.yaml").write_text(json.dumps(SYNTHETIC_CLINIKO), encoding="utf-8")
    (src / "calcom-v2-openapi.json").write_text(json.dumps(SYNTHETIC_CALCOM), encoding="utf-8")
    (src / "stripe-fixtures3.json").write_text(json.dumps(SYNTHETIC_STRIPE), encoding="utf-8")
    result, out = _derive(tmp_path)
    assert result.returncode == 0, result.stderr
    return out


def test_derive_keeps_types_and_enums_and_drops_prose(derived: Path) -> None:
    cliniko = json.loads((derived / "cliniko.json").read_text(encoding="utf-8"))
    assert cliniko["info"] == {"title": "Tiny Cliniko", "version": "v1"}
    assert set(cliniko["paths"]) == {"/patients", "/patients/{id}/archive"}  # not /medical_alerts
    schemas = cliniko["components"]["schemas"]
    assert set(schemas) == {"Patient", "Phone"}  # reachable by $ref only; Unused and Alert are gone
    assert schemas["Patient"] == {
        "type": "object",
        "required": ["id"],
        "properties": {
            "id": {"type": "string", "format": "int64"},
            "description": {"type": "string", "nullable": True},
            "sex": {"type": "string", "enum": ["Female", "Male"]},
            "age": {"type": "integer", "minimum": 0, "exclusiveMinimum": True},
            "phone": {"$ref": "#/components/schemas/Phone"},
        },
    }
    assert schemas["Phone"]["properties"]["number"] == {"type": "string", "maxLength": 20}
    operation = cliniko["paths"]["/patients"]["get"]
    assert operation["parameters"] == [
        {"$ref": "#/components/parameters/PerPage"},
        {"name": "q[]", "in": "query", "schema": {"type": "array"}},
    ]
    assert operation["responses"]["422"] == {"$ref": "#/components/responses/ValidationError"}
    assert cliniko["components"]["parameters"]["PerPage"] == {
        "name": "per_page",
        "in": "query",
        "schema": {"maximum": 100},
    }
    assert cliniko["components"]["responses"]["ValidationError"] == {
        "content": {"application/json": {"schema": {"type": "object"}}}
    }
    assert cliniko["paths"]["/patients/{id}/archive"]["post"]["responses"] == {"204": {}}
    # Field facts: names, JSON types, nullability and enums of the named schemas present, nothing else.
    assert cliniko["x-field-facts"] == {
        "Invoice": {
            "issue_date": {"type": "string", "nullable": False},
            "patient": {"type": "object", "nullable": False},
            "status": {"type": "integer", "nullable": True, "enum": [10, 20]},
        }
    }
    assert _annotation_keys(cliniko["paths"]) == _annotation_keys(cliniko["components"]) == set()


def test_derive_records_required_header_values_and_keeps_stripe_examples(derived: Path) -> None:
    calcom = json.loads((derived / "calcom.json").read_text(encoding="utf-8"))
    assert set(calcom["paths"]) == {"/v2/bookings", "/v2/slots"}  # organisation-scoped paths are not kept
    (header,) = calcom["paths"]["/v2/bookings"]["get"]["parameters"]
    assert header == {
        "name": "cal-api-version",
        "in": "header",
        "required": True,
        "schema": {"type": "string"},
        "x-must-be": "2024-08-13",
    }
    stripe = json.loads((derived / "stripe.json").read_text(encoding="utf-8"))["resources"]
    assert "subscription" not in stripe and stripe["deleted_customer"]["deleted"] is True
    assert stripe["customer"] == SYNTHETIC_STRIPE["resources"]["customer"]
    readme = (derived / "README.md").read_text(encoding="utf-8")
    assert "Tiny Cliniko" in readme and "do not edit" in readme


def test_derive_refuses_an_incomplete_source(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "stripe-fixtures3.json").write_text(json.dumps(SYNTHETIC_STRIPE), encoding="utf-8")
    result, out = _derive(tmp_path)
    assert result.returncode == 2 and "cliniko-openapi.yaml" in result.stderr
    assert not out.exists()
