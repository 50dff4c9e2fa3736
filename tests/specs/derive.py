"""Derives the trimmed API facts in tests/specs/ from the upstream documents (`make specs`).

    python tests/specs/derive.py SOURCE_DIR [--out OUT_DIR]

SOURCE_DIR (outside the repository; tests never read it) holds the upstream copies: cliniko-openapi.yaml,
calcom-v2-openapi.json and stripe-fixtures3.json. OUT_DIR (default: this folder) receives cliniko.json,
calcom.json, stripe.json and README.md.

The tests need only interface facts, so only those are kept and committed: which paths and methods exist, each
parameter's name/location/requiredness/type, each response status's schema, and the component schemas those
reach by `$ref`, with validation keywords only (types, enums, formats, patterns, bounds...). Descriptions,
summaries, examples and other prose are dropped. The result is a valid OpenAPI-shaped document whose every
`$ref` resolves inside it, so the tests validate against it exactly as they did against the full document.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

CLINIKO_SOURCE = "cliniko-openapi.yaml"
CALCOM_SOURCE = "calcom-v2-openapi.json"
STRIPE_SOURCE = "stripe-fixtures3.json"

# The Cliniko resources ClinicSync reads or writes (or may soon): a path is kept when the resource it addresses
# is one of these, so `/patients/{id}/archive` and `/patients/{patient_id}/invoices` are kept but
# `/patients/{patient_id}/medical_alerts` is not.
CLINIKO_RESOURCES = frozenset(
    {
        "patients",
        "settings",
        "user",
        "businesses",
        "invoices",
        "invoice_items",
        "individual_appointments",
        "products",
        "product_suppliers",
        "taxes",
        "stock_adjustments",
        "practitioners",
        "billable_items",
        "appointment_types",
    }
)
# Trailing segments that act on a resource rather than name another one (`/settings/public` is settings).
CLINIKO_ACTIONS = frozenset({"archive", "unarchive", "cancel", "conflicts", "inactive", "active", "public"})

# Cliniko schemas whose field facts (name -> type, nullable, enum) are also written compactly under
# `x-field-facts`, for the tests that check every field of the emulator's invoices, invoice items and businesses.
CLINIKO_FIELD_FACTS = ("Invoice", "InvoiceItem", "Business")

# Cal.com v2 top-level resources; everything under them is kept (`/v2/bookings/{bookingUid}/cancel`, ...).
# `slots` because the Cal.com client pins a cal-api-version for it (clinicsync.sources.calcom.CAL_API_VERSIONS).
CALCOM_RESOURCES = frozenset({"bookings", "event-types", "schedules", "slots", "teams", "webhooks", "me"})

# Stripe objects whose example the emulator's shape checks compare against (plus `deleted_<name>` where Stripe
# has one, and the account, which the unit tests compare too).
STRIPE_OBJECTS = (
    "account",
    "customer",
    "product",
    "price",
    "payment_intent",
    "charge",
    "refund",
    "invoice",
    "invoiceitem",
    "line_item",  # an invoice line ("object": "line_item")
    "credit_note",
    "payment_method",
)

# Schema keywords that decide what validates; everything else in a schema object (description, example, title,
# default, deprecated, x-*...) is an annotation and is dropped. exclusiveMinimum/Maximum and the rest beyond the
# obvious ones are kept because the upstream documents use some of them and dropping one would loosen a check.
SCHEMA_KEYWORDS = frozenset(
    {
        "type",
        "properties",
        "required",
        "enum",
        "nullable",
        "format",
        "pattern",
        "items",
        "$ref",
        "allOf",
        "oneOf",
        "anyOf",
        "not",
        "additionalProperties",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "maxLength",
        "minLength",
        "minItems",
        "maxItems",
        "uniqueItems",
        "minProperties",
        "maxProperties",
        "readOnly",
        "writeOnly",
        "discriminator",
    }
)
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# "Must be set to 2024-08-13." — Cal.com states a required header's value in prose where no default is given.
MUST_BE = re.compile(r"Must be set to ([0-9A-Za-z._-]+?)\.?(?:\s|$)")


def trim_schema(node: Any) -> Any:
    """A schema with validation keywords only; property names are data, so `properties` keeps them all."""
    if not isinstance(node, dict):
        return node  # `true`/`false` schemas, or a malformed leaf: kept as they are
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in SCHEMA_KEYWORDS:
            continue
        if key == "properties":
            out[key] = {name: trim_schema(sub) for name, sub in value.items()}
        elif key in ("items", "not", "additionalProperties"):
            out[key] = [trim_schema(v) for v in value] if isinstance(value, list) else trim_schema(value)
        elif key in ("allOf", "oneOf", "anyOf"):
            out[key] = [trim_schema(v) for v in value]
        elif key == "discriminator":
            out[key] = {k: v for k, v in value.items() if k in ("propertyName", "mapping")}
        else:
            out[key] = value
    return out


def trim_parameter(param: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in param:
        return {"$ref": param["$ref"]}
    out = {k: param[k] for k in ("name", "in", "required", "style", "explode") if k in param}
    if "schema" in param:
        out["schema"] = trim_schema(param["schema"])
    if "content" in param:
        out["content"] = _trim_content(param["content"])
    if param.get("in") == "header":
        # The value a version header must carry is a fact the client depends on (Cal.com's cal-api-version),
        # given either as the schema's default or only in the description.
        default = (param.get("schema") or {}).get("default")
        match = MUST_BE.search(param.get("description") or "")
        if default is not None or match:
            out["x-must-be"] = default if default is not None else match.group(1)  # type: ignore[union-attr]
    return out


def _trim_content(content: dict[str, Any]) -> dict[str, Any]:
    return {
        media: {"schema": trim_schema(body["schema"])} if "schema" in body else {} for media, body in content.items()
    }


def trim_response(response: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in response:
        return {"$ref": response["$ref"]}
    return {"content": _trim_content(response["content"])} if "content" in response else {}


def trim_request_body(body: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in body:
        return {"$ref": body["$ref"]}
    out: dict[str, Any] = {"required": body["required"]} if "required" in body else {}
    if "content" in body:
        out["content"] = _trim_content(body["content"])
    return out


def trim_operation(operation: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "parameters" in operation:
        out["parameters"] = [trim_parameter(p) for p in operation["parameters"]]
    if "requestBody" in operation:
        out["requestBody"] = trim_request_body(operation["requestBody"])
    out["responses"] = {str(status): trim_response(r) for status, r in operation.get("responses", {}).items()}
    return out


TRIM_COMPONENT: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "schemas": trim_schema,
    "parameters": trim_parameter,
    "responses": trim_response,
    "requestBodies": trim_request_body,
}


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        for value in node.values():
            found |= _refs(value)
        return found
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node)) if node else set()
    return set()


def trim_document(document: dict[str, Any], keep_path: Callable[[str], bool]) -> dict[str, Any]:
    """The kept paths, trimmed, plus every component they reach by `$ref` (transitively), trimmed."""
    paths: dict[str, Any] = {}
    for path, item in document.get("paths", {}).items():
        if not keep_path(path):
            continue
        kept = {m: trim_operation(item[m]) for m in METHODS if m in item}
        if "parameters" in item:
            kept["parameters"] = [trim_parameter(p) for p in item["parameters"]]
        paths[path] = kept

    source_components = document.get("components", {})
    components: dict[str, dict[str, Any]] = {}
    pending = _refs(paths)
    done: set[str] = set()
    while pending:
        ref = pending.pop()
        done.add(ref)
        match = re.fullmatch(r"#/components/([^/]+)/([^/]+)", ref)
        if not match or match.group(1) not in TRIM_COMPONENT:
            raise ValueError(f"cannot keep {ref!r}: only local #/components/<kind>/<name> references are supported")
        kind, name = match.groups()
        try:
            original = source_components[kind][name]
        except KeyError:
            raise ValueError(f"{ref!r} does not resolve in the source document") from None
        trimmed = TRIM_COMPONENT[kind](original)
        components.setdefault(kind, {})[name] = trimmed
        pending |= _refs(trimmed) - done

    info = document.get("info", {})
    return {
        "openapi": document.get("openapi"),
        "info": {k: info[k] for k in ("title", "version") if k in info},
        "paths": paths,
        "components": {kind: dict(sorted(items.items())) for kind, items in sorted(components.items())},
    }


def field_facts(document: dict[str, Any], names: tuple[str, ...]) -> dict[str, dict[str, dict[str, Any]]]:
    """For each named component schema: each property's JSON type, whether it may be null, and its enum (if any);
    a `$ref` is followed. Nothing else (no formats, bounds or prose)."""
    schemas = document["components"]["schemas"]

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = schemas[node["$ref"].rsplit("/", 1)[1]]
        return node

    facts: dict[str, dict[str, dict[str, Any]]] = {}
    for name in (n for n in names if n in schemas):  # test_cliniko_emulator_spec checks the real ones are there
        fields: dict[str, dict[str, Any]] = {}
        for prop, raw in sorted(resolve(schemas[name]).get("properties", {}).items()):
            node = resolve(raw)
            fact: dict[str, Any] = {"type": node.get("type", "object"), "nullable": bool(node.get("nullable", False))}
            if "enum" in node:
                fact["enum"] = node["enum"]
            if node.get("type") == "array" and isinstance(node.get("items"), dict):
                fact["items"] = resolve(node["items"]).get("type")
            fields[prop] = fact
        facts[name] = fields
    return facts


def cliniko_keeps(path: str) -> bool:
    segments = [s for s in path.strip("/").split("/") if s and not s.startswith("{")]
    while segments and segments[-1] in CLINIKO_ACTIONS:
        segments.pop()
    return bool(segments) and segments[-1] in CLINIKO_RESOURCES


def calcom_keeps(path: str) -> bool:
    segments = path.strip("/").split("/")
    return len(segments) >= 2 and segments[0] == "v2" and segments[1] in CALCOM_RESOURCES


def derive_stripe(fixtures: dict[str, Any]) -> dict[str, Any]:
    """Stripe's example objects, whole (they are small and MIT-licensed), for the kept object types."""
    resources = fixtures["resources"]
    missing = [name for name in STRIPE_OBJECTS if name not in resources]
    if missing:
        raise ValueError(f"the Stripe fixtures lack {missing}")
    names = [*STRIPE_OBJECTS, *(f"deleted_{n}" for n in STRIPE_OBJECTS if f"deleted_{n}" in resources)]
    return {"resources": {name: resources[name] for name in sorted(names)}}


def _load(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml  # only the Cliniko source is YAML; PyYAML comes with the test extras

        return yaml.safe_load(text)
    return json.loads(text)


def _provenance(path: Path) -> dict[str, str]:
    return {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


README = """\
# Trimmed API facts for the tests (generated — do not edit)

The `.json` files in this folder and this README are written by `derive.py` from upstream documents kept
outside the repository (the workplace's folder of official API documents). Do not hand-edit them: change
`derive.py` and re-run

    make specs SPECS_SOURCE=SOME/DIR                  # the folder holding the three documents
    .venv/bin/python tests/specs/derive.py SOME/DIR   # the same, without make

The tests read only these files, so `make test` works in a clone with nothing beside it.

What is kept: which paths and methods exist; each parameter's name, location, requiredness, serialisation and
schema; each response status's schema; the component schemas those reach by `$ref` (all references resolve in
the file); and, in schemas, only the keywords that decide what validates (type, properties, required, enum,
nullable, format, pattern, items, allOf/oneOf/anyOf/not, additionalProperties, numeric and length bounds).
Descriptions, summaries, examples, titles, tags and other prose are dropped. For a header whose value is fixed
(Cal.com's `cal-api-version`), that value is recorded as `x-must-be`, from the schema's default or, where
there is none, from the description's "Must be set to ...".

## cliniko.json

- Source: `{cliniko[file]}` — Cliniko's official OpenAPI document ("{cliniko[title]}", OpenAPI
  {cliniko[openapi]}, API version {cliniko[version]}; the document carries no date). sha256 `{cliniko[sha256]}`.
- Licence: the document states no licence. Only interface facts needed to check the emulator against Cliniko's
  API are kept; none of its prose or examples.
- Kept: {cliniko_paths} paths and {cliniko_schemas} schemas — the paths addressing one of these resources, with
  their `{{id}}`, archive/unarchive/cancel/conflicts, `settings/public` and nested variants such as
  `/patients/{{patient_id}}/invoices`: {cliniko_resources}.
- Also, under `x-field-facts`: for {cliniko_facts}, each field's JSON type, whether it may be null, and its enum.
- Used by: `tests/integration/test_cliniko_emulator_spec.py` (validates the emulator's responses) and
  `tests/integration/test_cliniko_invoices_emulator.py` (every invoice, invoice item and business field).

## calcom.json

- Source: `{calcom[file]}` — Cal.com API v2 ("{calcom[title]}", OpenAPI {calcom[openapi]}, document version
  {calcom[version]}; no date). sha256 `{calcom[sha256]}`.
- Licence: the document states none; it comes from the Cal.com project, which is published under the AGPL-3.0.
  Only interface facts (names, types, required header values) are kept; none of its prose or examples.
- Kept: {calcom_paths} paths and {calcom_schemas} schemas — `/v2/<resource>` and everything under it for:
  {calcom_resources}.
- Used by: `tests/unit/test_specs.py` (the Cal.com client's `cal-api-version` values agree with the document).

## stripe.json

- Source: `{stripe[file]}` — Stripe's example API objects (`fixtures3.json` from github.com/stripe/openapi,
  MIT licence; the file carries no version or date). sha256 `{stripe[sha256]}`.
- Licence: MIT, so the example objects are kept whole for: {stripe_objects}.
- Used by: `tests/unit/test_stripe_emulator_unit.py` (the emulator's objects have every key, with the same JSON
  type, that Stripe's examples have).
"""


def derive(source: Path, out: Path) -> list[Path]:
    """Write cliniko.json, calcom.json, stripe.json and README.md into `out`; return the paths written."""
    cliniko_path, calcom_path, stripe_path = (source / n for n in (CLINIKO_SOURCE, CALCOM_SOURCE, STRIPE_SOURCE))
    cliniko_doc, calcom_doc, stripe_doc = (_load(p) for p in (cliniko_path, calcom_path, stripe_path))
    cliniko = trim_document(cliniko_doc, cliniko_keeps)
    cliniko["x-field-facts"] = field_facts(cliniko_doc, CLINIKO_FIELD_FACTS)
    calcom = trim_document(calcom_doc, calcom_keeps)
    stripe = derive_stripe(stripe_doc)
    cliniko["x-derived-from"] = _provenance(cliniko_path)
    calcom["x-derived-from"] = _provenance(calcom_path)
    stripe["x-derived-from"] = _provenance(stripe_path)

    def about(document: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
        return {
            **document["x-derived-from"],
            "title": raw.get("info", {}).get("title", "?"),
            "version": raw.get("info", {}).get("version", "?"),
            "openapi": raw.get("openapi", "?"),
        }

    readme = README.format(
        cliniko=about(cliniko, cliniko_doc),
        calcom=about(calcom, calcom_doc),
        stripe=stripe["x-derived-from"],
        cliniko_facts=", ".join(f"`{n}`" for n in CLINIKO_FIELD_FACTS),
        cliniko_resources=", ".join(f"`{r}`" for r in sorted(CLINIKO_RESOURCES)),
        calcom_resources=", ".join(f"`{r}`" for r in sorted(CALCOM_RESOURCES)),
        stripe_objects=", ".join(f"`{n}`" for n in stripe["resources"]),
        cliniko_paths=len(cliniko["paths"]),
        cliniko_schemas=len(cliniko["components"].get("schemas", {})),
        calcom_paths=len(calcom["paths"]),
        calcom_schemas=len(calcom["components"].get("schemas", {})),
    )
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, document in (("cliniko.json", cliniko), ("calcom.json", calcom), ("stripe.json", stripe)):
        target = out / name
        # Sorted keys and one-space indents: stable, reviewable diffs when upstream reorders or changes.
        target.write_text(json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False) + "\n", "utf-8")
        written.append(target)
    (out / "README.md").write_text(readme, encoding="utf-8")
    written.append(out / "README.md")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="folder with the upstream files")
    parser.add_argument("--out", type=Path, default=HERE, help="where to write the trimmed files")
    args = parser.parse_args(argv)
    missing = [n for n in (CLINIKO_SOURCE, CALCOM_SOURCE, STRIPE_SOURCE) if not (args.source / n).is_file()]
    if missing:
        print(f"derive.py: {args.source} lacks {', '.join(missing)}", file=sys.stderr)
        return 2
    for path in derive(args.source, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
