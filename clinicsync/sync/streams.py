"""The streams ClinicSync runs: which source records they read, and what else the engine may ask their source.

Which Stripe fields a stream writes is not here: each stream's mapping is stored (mapping/store.py) and read by
the engine at the start of every run.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

Record = Mapping[str, Any]


class StreamNotReady(Exception):
    """The stream cannot run with its current settings (e.g. a scope the source cannot serve); says why."""


@dataclass(frozen=True)
class StreamDef:
    name: str
    read_changed: Callable[[Any, datetime | None], Iterator[Record]]  # (source client, cursor)
    read_one: Callable[[Any, str], Record | None]
    archived_value: Callable[[Record], str | None]  # why the record counts as archived, or None
    changed_at: Callable[[Record], str | None]  # the record's last-change time (UTC ISO), for the "since" scope
    # Source ids with activity on or after a date, for the "recent_activity" scope (None: not supported).
    active_ids: Callable[[Any, date, str], set[str]] | None = None  # (client, since, clinic time zone)
    source_settings: Callable[[Any], Mapping[str, Any] | None] = lambda client: None  # custom field definitions
    time_zone: Callable[[Any], str | None] = lambda client: None  # the clinic's IANA zone, when the source says


def _patients_changed(client: Any, cursor: datetime | None) -> Iterator[Record]:
    # Cliniko hides archived (and merged) patients from the ordinary list, so they need a pass of their own.
    return itertools.chain(
        client.iter_patients_changed_since(cursor),
        client.iter_archived_patients_changed_since(cursor),
    )


def _patient_archived(record: Record) -> str | None:
    for field in ("deleted_at", "merged_at", "archived_at"):
        if record.get(field):
            return f"{field.removesuffix('_at')} {record[field]}"
    return None


def _cliniko_settings(client: Any) -> Mapping[str, Any] | None:
    """`GET /settings` for the custom field definitions; None when the key's role may not read settings."""
    from clinicsync.sources.errors import SourcePermissionError

    try:
        settings: Mapping[str, Any] = client.get_settings()
    except SourcePermissionError:
        return None
    return settings


def _cliniko_time_zone(client: Any) -> str | None:
    """The first business's IANA zone (docs/cliniko-api.md §5.6); a clinic's businesses share one in practice.

    None (so the default zone is used) when the key's role may not list businesses: a local date a few hours off
    at midnight is better than no sync at all."""
    from clinicsync.sources.errors import SourceNotFound, SourcePermissionError

    try:
        for page in client.iter_pages("/businesses", [("per_page", "1")]):
            for business in page.records:
                zone = business.get("time_zone_identifier")
                if isinstance(zone, str) and zone:
                    return zone
            break
    except (SourcePermissionError, SourceNotFound):
        return None
    return None


def _patients_with_recent_activity(client: Any, since: date, time_zone: str) -> set[str]:
    """Patients with an invoice issued, or an individual appointment starting, on or after `since` (clinic-local).

    Read from `/invoices` (issue_date is a pure date) and `/individual_appointments` (starts_at is UTC, so the
    clinic's local midnight is converted), taking the patient id from each record's `patient` link.
    """
    from clinicsync.sources.cliniko import link_id
    from clinicsync.sources.errors import SourceNotFound

    start = datetime.combine(since, time(), tzinfo=ZoneInfo(time_zone)).astimezone(ZoneInfo("UTC"))
    queries = (
        ("/invoices", [("q[]", f"issue_date:>={since.isoformat()}")]),
        ("/individual_appointments", [("q[]", f"starts_at:>={start.strftime('%Y-%m-%dT%H:%M:%SZ')}")]),
    )
    ids: set[str] = set()
    try:
        for path, query in queries:
            for page in client.iter_pages(path, query):
                ids.update(pid for record in page.records if (pid := link_id(record.get("patient"))))
    except SourceNotFound:
        raise StreamNotReady(
            "The sync scope 'patients with recent activity' reads Cliniko's invoices and appointments, and this "
            "Cliniko does not serve them. Choose the scope 'all' or 'since a date' in the field mapping."
        ) from None
    return ids


CLINIKO_PATIENTS_STREAM = StreamDef(
    name="cliniko.patients",
    read_changed=_patients_changed,
    read_one=lambda client, source_id: client.get_patient(source_id),
    archived_value=_patient_archived,
    changed_at=lambda record: record.get("updated_at"),
    active_ids=_patients_with_recent_activity,
    source_settings=_cliniko_settings,
    time_zone=_cliniko_time_zone,
)

STREAMS: dict[str, StreamDef] = {CLINIKO_PATIENTS_STREAM.name: CLINIKO_PATIENTS_STREAM}
