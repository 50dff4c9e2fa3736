"""`cliniko.patients` → Stripe customers: one patient is one customer, written by one create, link or update."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from clinicsync.reconcile.compare import Comparison, compare_fields
from clinicsync.reconcile.findings import FixKind
from clinicsync.streams import cliniko_common, customers
from clinicsync.streams.base import (
    PlanRequest,
    Record,
    Stream,
    StreamNotReady,
    WriteStep,
    single_write,
)


def _patients_changed(client: Any, cursor: datetime | None) -> Iterator[Record]:
    # Cliniko hides archived (and merged) patients from the ordinary list: the client reads both (one pass or two).
    return client.iter_live_and_archived("/patients", cursor)


def _patient_archived(record: Record) -> str | None:
    return cliniko_common.archived_value(record, ("deleted_at", "merged_at", "archived_at"))


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


def _plan(request: PlanRequest) -> list[WriteStep]:
    return single_write(request, "customer", "customer")


CLINIKO_PATIENTS = Stream(
    name="cliniko.patients",
    source_system="cliniko",
    primary_role="customer",
    stripe_object="customer",
    read_changed=_patients_changed,
    read_one=lambda client, source_id: client.get_patient(source_id),
    archived_value=_patient_archived,
    changed_at=lambda record: record.get("updated_at"),
    plan=_plan,
    find_created=customers.find_created,
    idle_poll={"cliniko": 3, "stripe": 1},
    absence_certain=customers.absence_certain,
    retire_twin=customers.retire_twin,
    active_ids=_patients_with_recent_activity,
    source_settings=cliniko_common.settings,
    time_zone=cliniko_common.time_zone,
    country=cliniko_common.country,
    # Every mapped field; a customer is retired by marking it, and one nobody paid may be deleted. Customers
    # without a cross-reference sharing an email are duplicates (family members each carry their own reference).
    compare=Comparison(compare=compare_fields, archive_fix=FixKind.ARCHIVE, can_delete=True, duplicate_match_key=True),
)
