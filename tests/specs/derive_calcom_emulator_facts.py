"""Write tests/specs/calcom-emulator-facts.json: the facts of Cal.com's API v2 OpenAPI document that the Cal.com
emulator's spec test needs, and nothing else.

    .venv/bin/python tests/specs/derive_calcom_emulator_facts.py SOME/DIR/calcom-v2-openapi.json

Kept: the paths and methods the emulator serves; each parameter's name, location, requiredness and schema; each
request body's and response's schema; the component schemas those reach by `$ref`; and, in schemas, only the
keywords that decide what validates. Descriptions, summaries, examples, titles and tags are dropped: the source
comes from the Cal.com project (AGPL-3.0), and the tests need its interface facts, not its prose.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "calcom-emulator-facts.json"

# The endpoints the Cal.com emulator (clinicsync/sandbox/calcom_emu.py) serves.
SERVED: dict[str, tuple[str, ...]] = {
    "/v2/me": ("get",),
    "/v2/bookings": ("get",),
    "/v2/bookings/{bookingUid}": ("get",),
    "/v2/bookings/by-seat/{seatUid}": ("get",),
    "/v2/event-types": ("get",),
    "/v2/event-types/{eventTypeId}": ("get",),
    "/v2/schedules": ("get",),
    "/v2/schedules/default": ("get",),
    "/v2/schedules/{scheduleId}": ("get",),
    "/v2/teams": ("get",),
    "/v2/teams/{teamId}": ("get",),
    "/v2/teams/{teamId}/event-types": ("get",),
    "/v2/webhooks": ("get", "post"),
    "/v2/webhooks/{webhookId}": ("get", "patch", "delete"),
}
# Schema keywords that decide what validates.
SCHEMA_KEYWORDS = frozenset(
    {
        "type", "properties", "required", "enum", "items", "$ref", "oneOf", "anyOf", "allOf", "not", "nullable",
        "format", "pattern", "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems", "default",
        "additionalProperties", "deprecated",
    }
)  # fmt: skip
PARAMETER_KEYS = ("name", "in", "required", "schema")


def trim_schema(schema: Any) -> Any:
    """Keep validating keywords only; `properties` maps field names (which may be "description") to schemas."""
    if isinstance(schema, list):
        return [trim_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key not in SCHEMA_KEYWORDS:
            continue
        if key == "properties":
            out[key] = {name: trim_schema(sub) for name, sub in value.items()}
        elif key in ("items", "not", "additionalProperties", "oneOf", "anyOf", "allOf"):
            out[key] = trim_schema(value)
        else:
            out[key] = value
    return out


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.rsplit("/", 1)[1])
        for value in node.values():
            _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)


def derive(document: dict[str, Any], sha256: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for path, methods in SERVED.items():
        for method in methods:
            operation = document["paths"][path][method]
            kept: dict[str, Any] = {
                "parameters": [
                    {k: trim_schema(p[k]) if k == "schema" else p[k] for k in PARAMETER_KEYS if k in p}
                    for p in operation.get("parameters", [])
                ],
                "responses": {
                    status: {"schema": trim_schema(r["content"]["application/json"]["schema"])}
                    for status, r in operation.get("responses", {}).items()
                    if "application/json" in r.get("content", {})
                },
            }
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body:
                kept["requestBody"] = {"schema": trim_schema(body["schema"])}
            paths.setdefault(path, {})[method] = kept
    schemas = document["components"]["schemas"]
    wanted: set[str] = set()
    _refs(paths, wanted)
    done: set[str] = set()
    while wanted - done:  # follow $refs inside the schemas too
        name = sorted(wanted - done)[0]
        done.add(name)
        _refs(schemas[name], wanted)
    info = document.get("info", {})
    return {
        "openapi": document.get("openapi"),
        "x-derived-from": {
            "title": info.get("title"),
            "version": info.get("version"),
            "file": "calcom-v2-openapi.json",
            "sha256": sha256,
            "by": "tests/specs/derive_calcom_emulator_facts.py",
        },
        "paths": paths,
        "components": {"schemas": {name: trim_schema(schemas[name]) for name in sorted(done)}},
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    source = Path(argv[0])
    raw = source.read_bytes()
    facts = derive(json.loads(raw), hashlib.sha256(raw).hexdigest())
    OUT.write_text(json.dumps(facts, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({len(facts['paths'])} paths, {len(facts['components']['schemas'])} schemas)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
