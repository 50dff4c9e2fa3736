"""Cross-reference write-back (opt-in): the Stripe customer id written into a Cliniko patient custom field the user
picked, so the link is visible from both records.

It runs as a throttled, resumable backfill after a sync: every linked patient whose custom field does not yet hold
its Stripe id gets a read-modify-write (`GET /patients/{id}`, then `PATCH` with all of the patient's custom fields,
ours changed), within the Cliniko client's request budget. Progress is a row per patient done (WritebackMark), so
a restart, a cancel or a closed laptop continue where they stopped.

The write bumps the patient's `updated_at`, so the next poll reads it again: the echo rule (`without_writeback_field`)
removes the write-back field from every record before it is mapped, so a patient whose only change is our own
write maps to the same payload hash and causes no Stripe write — even if someone maps that field.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from peewee import JOIN

from clinicsync.mapping.apply import custom_field_value
from clinicsync.store.models import AccountPair, RecordLink, WritebackMark, utcnow

log = logging.getLogger(__name__)

SECONDS_PER_SYNC = 300.0  # a sync spends at most this long on the backfill; the rest waits for the next sync


class PatientSource(Protocol):
    def get_patient(self, patient_id: str) -> dict[str, Any] | None: ...

    def update_patient(self, patient_id: str, fields: Mapping[str, Any]) -> dict[str, Any]: ...

    def get_settings(self) -> dict[str, Any]: ...


@dataclass
class BackfillResult:
    written: int = 0  # PATCHes sent
    already: int = 0  # patients that already held the right id (no PATCH)
    missing: int = 0  # patients Cliniko no longer has
    failed: int = 0
    remaining: int = 0  # still to do after this run
    total: int = 0  # linked patients that should carry the id
    stopped_early: bool = False  # the time box ran out
    message: str = ""


# --- the echo rule ---------------------------------------------------------------------------------------
# --- the custom fields body ------------------------------------------------------------------------------
def section_token_for(settings: Mapping[str, Any], field_token: str) -> str | None:
    """The section a custom field belongs to, from `/settings` patient_custom_fields_definition."""
    definition = settings.get("patient_custom_fields_definition") or {}
    for section in definition.get("sections") or []:
        if any(isinstance(f, Mapping) and f.get("token") == field_token for f in section.get("fields") or []):
            return str(section.get("token") or "") or None
    return None


def custom_fields_with(current: Mapping[str, Any] | None, field_token: str, section_token: str, value: str) -> dict:
    """The patient's custom fields as read, with ours set to `value`: a read-modify-write body that keeps every
    other field's value (Cliniko reads only tokens and values; names and types are ignored on write)."""
    sections = copy.deepcopy(list((current or {}).get("sections") or []))
    for section in sections:
        for item in section.get("fields") or []:
            if isinstance(item, dict) and item.get("token") == field_token:
                item["value"] = value
                return {"sections": sections}
    target = next((s for s in sections if s.get("token") == section_token), None)
    if target is None:
        target = {"token": section_token, "fields": []}
        sections.append(target)
    target.setdefault("fields", []).append({"token": field_token, "value": value})
    return {"sections": sections}


# --- progress --------------------------------------------------------------------------------------------
def _pending_links(pair: AccountPair, stream: str, token: str) -> Any:
    """Linked, live records whose write-back mark is missing or names another Stripe id or field."""
    return (
        RecordLink.select(RecordLink.source_id, RecordLink.stripe_id)
        .join(
            WritebackMark,
            JOIN.LEFT_OUTER,
            on=(
                (WritebackMark.pair == RecordLink.pair)
                & (WritebackMark.stream == RecordLink.stream)
                & (WritebackMark.source_id == RecordLink.source_id)
            ),
        )
        .where(
            (RecordLink.pair == pair)
            & (RecordLink.stream == stream)
            & RecordLink.stripe_id.is_null(False)
            & (RecordLink.archived == False)  # noqa: E712 (peewee expression)
            & (
                WritebackMark.id.is_null(True)
                | (WritebackMark.stripe_id != RecordLink.stripe_id)
                | (WritebackMark.field_token != token)
            )
        )
        .order_by(RecordLink.id)
    )


def progress(pair: AccountPair, stream: str, token: str) -> tuple[int, int]:
    """(done, total) linked live records for the progress display."""
    total = (
        RecordLink.select()
        .where(
            (RecordLink.pair == pair)
            & (RecordLink.stream == stream)
            & RecordLink.stripe_id.is_null(False)
            & (RecordLink.archived == False)  # noqa: E712
        )
        .count()
    )
    return total - _pending_links(pair, stream, token).count(), total


def _mark(pair: AccountPair, stream: str, source_id: str, stripe_id: str, token: str) -> None:
    WritebackMark.insert(
        pair=pair, stream=stream, source_id=source_id, stripe_id=stripe_id, field_token=token, written_at=utcnow()
    ).on_conflict(
        conflict_target=[WritebackMark.pair, WritebackMark.stream, WritebackMark.source_id],
        update={
            WritebackMark.stripe_id: stripe_id,
            WritebackMark.field_token: token,
            WritebackMark.written_at: utcnow(),
        },
    ).execute()


def _next_batch(pair: AccountPair, stream: str, token: str, skip: set[str], size: int = 200) -> list[tuple[str, str]]:
    """Pending (source id, Stripe id) pairs, re-queried per batch so a long backfill holds no open cursor;
    `skip`: records that failed this run (retried on the next one)."""
    rows = _pending_links(pair, stream, token).limit(size + len(skip))
    return [(r.source_id, r.stripe_id) for r in rows if r.source_id not in skip][:size]


def backfill(
    source: PatientSource,
    pair: AccountPair,
    stream: str,
    token: str,
    *,
    seconds: float | None = SECONDS_PER_SYNC,
    check_cancel: Callable[[], None] = lambda: None,
    report: Callable[[int, int], None] = lambda done, total: None,
    clock: Callable[[], float] = time.monotonic,
) -> BackfillResult:
    """Write each linked record's Stripe id into the custom field `token`, until done or `seconds` have passed.

    Requests go through the source client, so its budget (Cliniko's 200/min shared with the clinic's other
    integrations; 150/min by default) throttles them. `check_cancel` raises to stop between patients.
    """
    result = BackfillResult()
    section = section_token_for(source.get_settings(), token)
    if section is None:
        result.message = f"the custom field {token} is not in Cliniko's settings; write-back skipped"
        log.warning("write-back: %s", result.message)
        done, result.total = progress(pair, stream, token)
        result.remaining = result.total - done
        return result
    started = clock()
    done, result.total = progress(pair, stream, token)
    report(done, result.total)
    failed: set[str] = set()
    while batch := _next_batch(pair, stream, token, failed):
        for source_id, stripe_id in batch:
            check_cancel()
            if seconds is not None and clock() - started >= seconds:
                result.stopped_early = True
                break
            if _write_one(source, pair, stream, token, section, source_id, stripe_id, result):
                done += 1
            else:
                failed.add(source_id)
            report(done, result.total)
        if result.stopped_early:
            break
    finished, result.total = progress(pair, stream, token)
    result.remaining = result.total - finished
    return result


def _write_one(
    source: PatientSource,
    pair: AccountPair,
    stream: str,
    token: str,
    section: str,
    source_id: str,
    stripe_id: str,
    result: BackfillResult,
) -> bool:
    """Read-modify-write one patient; False when Cliniko refused it (the others go on)."""
    from clinicsync.sources.errors import SourceRequestRejected

    try:
        patient = source.get_patient(source_id)
        if patient is None:
            result.missing += 1  # deleted in Cliniko since it was linked: nothing to write into
        elif custom_field_value(patient, token) == stripe_id:
            result.already += 1
        else:
            body = custom_fields_with(patient.get("custom_fields"), token, section, stripe_id)
            source.update_patient(source_id, {"custom_fields": body})
            result.written += 1
    except SourceRequestRejected as exc:  # e.g. a 422 for this patient only
        log.warning("write-back to patient %s refused: %s", source_id, exc)
        result.failed += 1
        return False
    _mark(pair, stream, source_id, stripe_id, token)
    return True
