"""`calcom.reference` → notes on the event types' Stripe products: where each event type's availability comes from
(its schedule's name and time zone), which team offers it, and who owns it (the user whose email the event types
stream writes as `calcom_owner_email`: their name and time zone).

A record of this stream is an event type, like one of `calcom.event_types`; it writes to the product that stream
linked (resolved through the links, PlanRequest.links: never looked up in Stripe), and only the metadata keys this
stream owns (OWN_KEYS), so the event type's own keys, name, price and status stay the event types stream's; Stripe
merges metadata keys, so sending only ours never clears another's. An event type whose product is not synced yet
waits (NotYet) and is read again on the next run; a free one never gets a product, so it is never written here.
When the event type's product changes (the old one was deleted in Stripe and a new one made, or a person linked
another), the notes follow it on the next run though the event type did not change (Stream.follows).

Audit: each cross-reference is a RecordLink (and each price a RoleLink), which keeps when it was made
(`created_at`) and when Stripe last confirmed a write through it (`updated_at`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from clinicsync.reconcile.compare import CompareRequest, Comparison, Drift, compare_fields
from clinicsync.reconcile.findings import FindingType, FixKind
from clinicsync.streams import calcom_common
from clinicsync.streams.base import NotYet, PlanRequest, Record, Stream, WriteStep
from clinicsync.streams.calcom_event_types import CALCOM_EVENT_TYPES, _archived

OWN_KEYS = (
    "calcom_schedule",
    "calcom_schedule_time_zone",
    "calcom_team_id",
    "calcom_team_slug",
    "calcom_owner_name",
    "calcom_owner_time_zone",
)


def _details(event_type: Record, schedules: Mapping[str, Record], me: Any, team: Record | None) -> dict[str, Any]:
    """The event type with what this stream writes. A personal event type without a schedule of its own uses its
    owner's default schedule (Cal.com does); a team's uses its hosts' own, which the key's user may not see."""
    own = team is None and str(event_type.get("ownerId") or me.id) == me.id
    schedule = schedules.get(str(event_type.get("scheduleId")))
    if schedule is None and own:
        schedule = next((s for s in schedules.values() if s.get("isDefault")), None)
    return {
        "id": event_type.get("id"),
        "title": event_type.get("title"),
        "hidden": event_type.get("hidden"),
        "metadata": event_type.get("metadata"),
        "deleted": event_type.get("deleted"),
        "schedule_name": (schedule or {}).get("name"),
        "schedule_time_zone": (schedule or {}).get("timeZone"),
        "team_id": (team or {}).get("id"),
        "team_slug": (team or {}).get("slug"),
        "owner_name": me.name if own else None,
        "owner_time_zone": me.time_zone if own else None,
    }


def _references(client: Any, cursor: datetime | None) -> Iterator[Record]:
    """Every event type, every time (as calcom.event_types reads them), with its schedule, team and owner."""
    me = client.get_me()
    schedules = {str(s.get("id")): s for s in client.list_schedules()}
    for event_type in client.list_event_types():
        yield _details(event_type, schedules, me, None)
    for team in client.list_teams():
        for event_type in client.list_team_event_types(team["id"]):
            yield _details(event_type, schedules, me, team)


def _reference(client: Any, source_id: str) -> Record:
    found = client.get_event_type(source_id)
    if found is None:
        return {"id": source_id, "deleted": True}
    team = client.get_team(found["teamId"]) if found.get("teamId") else None
    schedules = {str(s.get("id")): s for s in client.list_schedules()}
    return _details(found, schedules, client.get_me(), team)


def _plan(request: PlanRequest) -> list[WriteStep]:
    """One update of the event type's product: this stream's keys only, an empty one sent as "" (which removes
    it, e.g. a schedule no longer set). Whatever product the engine matched, the event type's own is the one."""
    product = request.links.stripe_id(CALCOM_EVENT_TYPES.name, request.mapped.source_id) if request.links else None
    if product is None:
        raise NotYet("its event type is not in Stripe yet (it is synced first)")
    payload = request.mapped.payload
    metadata = {key: ("" if payload.get(f"metadata.{key}") is None else payload[f"metadata.{key}"]) for key in OWN_KEYS}
    return [
        WriteStep(
            "product", "update", "product", {"metadata": metadata}, stripe_id=product, note="Cal.com details noted"
        )
    ]


# --- reconciliation (issue 12): only the notes this stream writes --------------------------------------------
def reconcile_compare(request: CompareRequest) -> list[Drift]:
    """This stream's metadata keys on the event type's product (OWN_KEYS), as `_plan` writes them; its name, cross-
    reference and everything else are the event types stream's to compare, and an archived event type's product
    is only made inactive by that stream (nothing of ours is written to it)."""
    if request.mapped.archived:
        return []
    own = tuple(f"metadata.{key}" for key in OWN_KEYS)
    return compare_fields(request, skip=tuple(t for t in request.mapping.targets if t not in own))


COMPARISON = Comparison(
    compare=reconcile_compare,
    archive_fix=FixKind.DEACTIVATE,
    # The products are the event types stream's: missing, orphaned or duplicated, that stream reports them.
    reports=frozenset({FindingType.FIELD_DRIFT}),
)


CALCOM_REFERENCE = Stream(
    name="calcom.reference",
    source_system="calcom",
    primary_role="product",
    stripe_object="product",
    read_changed=_references,
    read_one=_reference,
    archived_value=_archived,  # a free, hidden or deleted event type: its product (if any) is the event types'
    changed_at=lambda record: None,  # event types carry no change time
    plan=_plan,
    find_created=lambda gateway, request: None,  # it never creates: every write is an update of a known product
    idle_poll={"calcom": 6, "stripe": 1},
    time_zone=calcom_common.time_zone,
    depends_on=(CALCOM_EVENT_TYPES.name,),
    compare=COMPARISON,
    complete_listing=True,
    follows=CALCOM_EVENT_TYPES.name,  # a new product for the event type gets these notes too
)
