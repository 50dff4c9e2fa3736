"""The Cal.com emulator's responses validate against Cal.com's official API v2 document, and the Cal.com client asks
for them the way the document says (parameter names, `cal-api-version`).

The document's facts come from tests/specs/calcom-emulator-facts.json (see tests/specs/README-calcom.md). Where the
document disagrees with Cal.com's own code, the test corrects it; `CORRECTIONS` lists each one and
`test_the_corrections_are_still_needed` fails once a regenerated document no longer needs it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_schema_validator import OAS30Validator, oas30_format_checker

from clinicsync.sandbox.calcom_emu import DEFAULT_API_KEY, CalcomEmulator
from clinicsync.sandbox.server import RunningServer, serve
from clinicsync.sources.calcom import CalcomClient, api_version_for

FACTS = Path(__file__).resolve().parents[1] / "specs" / "calcom-emulator-facts.json"
TIME_PATTERN = r"^\d{2}:\d{2}$"

CORRECTIONS = {
    "oneOf": "branches overlap (no additionalProperties: false; e.g. a location with only `type` fits "
    "OutputOrganizersDefaultAppLocation and every other branch), so `oneOf` is checked as `anyOf`; each booking is "
    "also checked against its own variant below",
    "nullable allOf": "`nullable: true` beside an `allOf` (e.g. an event type's recurrence) does not reach the "
    "referenced schema under OpenAPI 3.0's rules, so such a property is checked as `anyOf: [the schema, null]`",
    "TIME_FORMAT_HH_MM": "a schedule's startTime/endTime `pattern` is the name of a constant, not a regex: HH:MM",
    "array enum": "ScheduleAvailabilityInput.days carries the day names as an `enum` on the array itself; they "
    "belong to its items (which have them too)",
    "team hosts": "TeamEventTypeOutput.hosts are objects (TeamEventTypeResponseHost: userId, name, username, "
    "avatarUrl in @calcom/platform-types), not strings",
    "event type users": "EventTypeOutput.users are objects (User_2024_06_14), not strings",
    "updatedAt": "a booking's updatedAt may be null: Booking.updatedAt is nullable in schema.prisma and the output "
    "service passes it through (docs/calcom-api.md pitfall 8)",
    "webhook id": "a webhook's id is a string (the database column and the path parameter are strings; the "
    "document says number; docs/calcom-api.md pitfall 15)",
    "payloadTemplate": "a webhook without a custom payload template has payloadTemplate null (Webhook.payloadTemplate "
    "is nullable in schema.prisma)",
}
BOOKING_VARIANTS = (
    "BookingOutput_2024_08_13",
    "RecurringBookingOutput_2024_08_13",
    "GetSeatedBookingOutput_2024_08_13",
    "GetRecurringSeatedBookingOutput_2024_08_13",
)


@cache
def raw_facts() -> dict[str, Any]:
    return json.loads(FACTS.read_text(encoding="utf-8"))


@cache
def facts() -> dict[str, Any]:
    document = copy.deepcopy(raw_facts())
    _correct_everywhere(document)
    schemas = document["components"]["schemas"]
    object_items = {"type": "object"}
    schemas["TeamEventTypeOutput_2024_06_14"]["properties"]["hosts"]["items"] = object_items
    schemas["EventTypeOutput_2024_06_14"]["properties"]["users"]["items"] = object_items
    for name in BOOKING_VARIANTS:
        schemas[name]["properties"]["updatedAt"]["nullable"] = True
    webhook = schemas["UserWebhookOutputDto"]["properties"]
    webhook["id"] = {"type": "string"}
    webhook["payloadTemplate"]["nullable"] = True
    return document


def _correct_everywhere(node: Any) -> None:
    if isinstance(node, dict):
        if "oneOf" in node:
            node["anyOf"] = node.pop("oneOf")
        if node.get("nullable") is True and "allOf" in node and "type" not in node:
            node["anyOf"] = [*node.pop("allOf"), {"nullable": True, "enum": [None]}]
            del node["nullable"]
        if node.get("pattern") == "TIME_FORMAT_HH_MM":
            node["pattern"] = TIME_PATTERN
        if node.get("type") == "array" and "enum" in node:
            del node["enum"]
        for value in node.values():
            _correct_everywhere(value)
    elif isinstance(node, list):
        for value in node:
            _correct_everywhere(value)


def validate(schema: dict[str, Any], instance: Any) -> None:
    validator = _validator(json.dumps(schema, sort_keys=True))
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message[:300]}" for e in errors[:10])


@cache
def _validator(schema_json: str) -> OAS30Validator:
    root = {**json.loads(schema_json), "components": facts()["components"]}
    return OAS30Validator(root, format_checker=oas30_format_checker)


def response_schema(path: str, method: str = "get", status: str = "200") -> dict[str, Any]:
    return facts()["paths"][path][method]["responses"][status]["schema"]


def component(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


@pytest.fixture(scope="module", params=["clean", "hard"])
def server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    with serve(CalcomEmulator()) as srv:
        seeded = httpx.post(f"{srv.url}/_sandbox/seed", json={"profile": request.param, "patients": 20, "seed": 4})
        assert seeded.status_code == 200
        yield srv


def get(server: RunningServer, path: str, **params: Any) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
    version = api_version_for(path)
    if version:
        headers["cal-api-version"] = version
    response = httpx.get(f"{server.url}/v2{path}", params=params, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def every_booking(server: RunningServer) -> list[dict[str, Any]]:
    bookings: list[dict[str, Any]] = []
    skip = 0
    while True:
        body = get(server, "/bookings", take=17, skip=skip)
        validate(response_schema("/v2/bookings"), body)
        bookings += body["data"]
        if not body["pagination"]["hasNextPage"]:
            return bookings
        skip += len(body["data"])


def variant(booking: dict[str, Any]) -> str:
    seated = "bookingFieldsResponses" not in booking
    recurring = "recurringBookingUid" in booking
    return BOOKING_VARIANTS[2 * seated + recurring]


def test_booking_pages_and_each_booking_match_their_variant(server: RunningServer) -> None:
    bookings = every_booking(server)
    kinds = {variant(b) for b in bookings}
    assert kinds == set(BOOKING_VARIANTS) - {"GetRecurringSeatedBookingOutput_2024_08_13"}
    for booking in bookings:
        validate(component(variant(booking)), booking)
    assert any(b["updatedAt"] is None for b in bookings)
    assert {b["status"] for b in bookings} == {"accepted", "pending", "cancelled", "rejected"}


def test_one_booking_a_series_and_a_seat_match_the_spec(server: RunningServer) -> None:
    bookings = every_booking(server)
    schema = response_schema("/v2/bookings/{bookingUid}")
    plain = next(b for b in bookings if variant(b) == "BookingOutput_2024_08_13")
    validate(schema, get(server, f"/bookings/{plain['uid']}"))
    series = next(b["recurringBookingUid"] for b in bookings if "recurringBookingUid" in b)
    body = get(server, f"/bookings/{series}")
    validate(schema, body)
    assert isinstance(body["data"], list) and len(body["data"]) == 4
    seated = next(b for b in bookings if variant(b) == "GetSeatedBookingOutput_2024_08_13")
    seat = seated["attendees"][0]["seatUid"]
    validate(response_schema("/v2/bookings/by-seat/{seatUid}"), get(server, f"/bookings/by-seat/{seat}"))


def test_event_types_match_the_spec(server: RunningServer) -> None:
    listed = get(server, "/event-types")
    validate(response_schema("/v2/event-types"), listed)
    for event_type in listed["data"]:
        validate(component("EventTypeOutput_2024_06_14"), event_type)
    validate(response_schema("/v2/event-types/{eventTypeId}"), get(server, f"/event-types/{listed['data'][0]['id']}"))
    team_id = get(server, "/teams")["data"][0]["id"]
    team_types = get(server, f"/teams/{team_id}/event-types")
    validate(response_schema("/v2/teams/{teamId}/event-types"), team_types)
    for event_type in team_types["data"]:
        validate(component("TeamEventTypeOutput_2024_06_14"), event_type)


def test_me_schedules_and_teams_match_the_spec(server: RunningServer) -> None:
    validate(response_schema("/v2/me"), get(server, "/me"))
    schedules = get(server, "/schedules")
    validate(response_schema("/v2/schedules"), schedules)
    validate(response_schema("/v2/schedules/default"), get(server, "/schedules/default"))
    schedule_id = schedules["data"][-1]["id"]
    validate(response_schema("/v2/schedules/{scheduleId}"), get(server, f"/schedules/{schedule_id}"))
    teams = get(server, "/teams")
    validate(response_schema("/v2/teams"), teams)
    validate(response_schema("/v2/teams/{teamId}"), get(server, f"/teams/{teams['data'][0]['id']}"))


def test_webhook_requests_and_answers_match_the_spec(server: RunningServer) -> None:
    validate(response_schema("/v2/webhooks"), get(server, "/webhooks"))
    auth = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
    create = {"subscriberUrl": "https://hooks.example.com/spec-check", "triggers": ["BOOKING_PAID"], "active": True}
    validate(facts()["paths"]["/v2/webhooks"]["post"]["requestBody"]["schema"], create)
    created = httpx.post(f"{server.url}/v2/webhooks", json=create, headers=auth)
    assert created.status_code == 201
    validate(response_schema("/v2/webhooks", "post", "201"), created.json())
    hook = created.json()["data"]["id"]
    validate(response_schema("/v2/webhooks/{webhookId}"), get(server, f"/webhooks/{hook}"))
    update = {"active": False, "secret": "sandbox-signing-secret"}
    validate(facts()["paths"]["/v2/webhooks/{webhookId}"]["patch"]["requestBody"]["schema"], update)
    patched = httpx.patch(f"{server.url}/v2/webhooks/{hook}", json=update, headers=auth)
    validate(response_schema("/v2/webhooks/{webhookId}", "patch"), patched.json())
    deleted = httpx.delete(f"{server.url}/v2/webhooks/{hook}", headers=auth)
    validate(response_schema("/v2/webhooks/{webhookId}", "delete"), deleted.json())


def test_the_client_asks_the_way_the_spec_says(server: RunningServer) -> None:
    """Every query parameter the client sends is one the document declares for that path, and every request
    carries exactly the `cal-api-version` the document requires (none where it declares none)."""
    sent: list[httpx.Request] = []
    client = CalcomClient(DEFAULT_API_KEY, base_url=f"{server.url}/v2", requests_per_minute=None)
    client._http.event_hooks["request"].append(sent.append)
    with client:
        client.get_me()
        cursor = list(client.iter_bookings_changed_since(None, take=9))
        list(client.iter_bookings_changed_since(datetime.now(UTC) - timedelta(days=1)))
        client.get_booking(cursor[0]["uid"])
        client.list_event_types()
        client.get_event_type(client.list_event_types()[0]["id"])
        team = client.list_teams()[0]["id"]
        client.get_team(team)
        client.list_team_event_types(team)
        client.list_schedules()
        client.get_default_schedule()
        list(client.iter_webhooks())
    templates = facts()["paths"]
    for request in sent:
        template = _template_for(request.url.path, templates)
        operation = templates[template][request.method.lower()]
        declared = {p["name"]: p for p in operation["parameters"]}
        for name in dict(request.url.params):
            assert name in declared and declared[name]["in"] == "query", (template, name)
        header = declared.get("cal-api-version")
        expected = header["schema"].get("default") if header else None
        assert request.headers.get("cal-api-version") == expected, (template, expected)


def _template_for(path: str, templates: dict[str, Any]) -> str:
    parts = path.strip("/").split("/")
    for template in templates:
        pattern = template.strip("/").split("/")
        fits = len(pattern) == len(parts) and all(
            p == q or p.startswith("{") for p, q in zip(pattern, parts, strict=True)
        )
        if fits and not any(t != template and _more_literal(t, template, parts) for t in templates):
            return template
    raise AssertionError(f"no path in the document for {path}")


def _more_literal(other: str, template: str, parts: list[str]) -> bool:
    """`/v2/schedules/default` wins over `/v2/schedules/{scheduleId}` for "default"."""
    pattern = other.strip("/").split("/")
    if len(pattern) != len(parts) or not all(p == q or p.startswith("{") for p, q in zip(pattern, parts, strict=True)):
        return False
    return sum(not p.startswith("{") for p in pattern) > sum(
        not p.startswith("{") for p in template.strip("/").split("/")
    )


def test_the_corrections_are_still_needed() -> None:
    schemas = raw_facts()["components"]["schemas"]
    assert "oneOf" in json.dumps(schemas["GetBookingsOutput_2024_08_13"])
    recurrence = schemas["EventTypeOutput_2024_06_14"]["properties"]["recurrence"]
    assert recurrence["nullable"] is True and "allOf" in recurrence
    availability = schemas["ScheduleAvailabilityInput_2024_06_11"]["properties"]
    assert availability["startTime"]["pattern"] == "TIME_FORMAT_HH_MM"
    assert "enum" in availability["days"]
    assert schemas["TeamEventTypeOutput_2024_06_14"]["properties"]["hosts"]["items"] == {"type": "string"}
    assert schemas["EventTypeOutput_2024_06_14"]["properties"]["users"]["items"] == {"type": "string"}
    assert not schemas["BookingOutput_2024_08_13"]["properties"]["updatedAt"].get("nullable")
    webhook = schemas["UserWebhookOutputDto"]["properties"]
    assert webhook["id"]["type"] == "number" and not webhook["payloadTemplate"].get("nullable")
    assert set(CORRECTIONS) == {
        "oneOf",
        "nullable allOf",
        "TIME_FORMAT_HH_MM",
        "array enum",
        "team hosts",
        "event type users",
        "updatedAt",
        "webhook id",
        "payloadTemplate",
    }


def test_the_corrected_schemas_still_reject_junk() -> None:
    """Guard for the corrections: they must not make the schemas accept anything."""
    with pytest.raises(AssertionError):
        validate(
            component("ScheduleAvailabilityInput_2024_06_11"), {"days": ["Caturday"], "startTime": "9", "endTime": "x"}
        )
    with pytest.raises(AssertionError):
        validate(component("BookingOutput_2024_08_13"), {"id": "1", "uid": 2})
    with pytest.raises(AssertionError):
        validate(component("UserWebhookOutputDto"), {"id": 5, "triggers": ["NOT_A_TRIGGER"]})
