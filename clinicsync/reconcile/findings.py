"""What reconciliation can report, how bad it is, and what can be done about it: the one list each.

A Finding is plain data (no database, no network): the comparison makes them, the store keeps them, the CLI, the
exports and the window show them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from clinicsync.labels import FINDING_TYPE_LABELS


class FindingType(StrEnum):
    MISSING_IN_STRIPE = "missing_in_stripe"  # a source record in scope with no Stripe object
    ORPHANED_IN_STRIPE = "orphaned_in_stripe"  # names a source record that is gone, archived, or linked elsewhere
    FIELD_DRIFT = "field_drift"  # a mapped field differs from what the mapping produces (edited in Stripe)
    DUPLICATE = "duplicate"  # one cross-reference on several objects, or one email on unreferenced customers
    PAYMENT_MISMATCH = "payment_mismatch"  # invoices ↔ payments (cliniko.invoices)
    BOOKING_PAYMENT_MISMATCH = "booking_payment_mismatch"  # paid bookings ↔ payments (calcom.booking_payments)


FINDING_TYPES: tuple[str, ...] = tuple(kind.value for kind in FindingType)  # in the order reports show them
# Findings about money between two records (an invoice and its payment): a LINK fix takes one of `related`.
PAYMENT_TYPES = (FindingType.PAYMENT_MISMATCH, FindingType.BOOKING_PAYMENT_MISMATCH)

TYPE_WORDS: dict[str, str] = FINDING_TYPE_LABELS  # the words people see: clinicsync/labels.py


class Severity(StrEnum):
    HIGH = "high"  # money or identity can go wrong (a charge on the wrong or a second customer)
    MEDIUM = "medium"  # Stripe says something the clinic's records do not
    LOW = "low"  # cosmetic, or already harmless


SEVERITIES: tuple[str, ...] = tuple(level.value for level in Severity)


class FixKind(StrEnum):
    REPUSH = "repush"  # the next sync sends the record again (or creates its object again)
    LINK = "link"  # link the record to this Stripe object, now
    ARCHIVE = "archive"  # mark the customer archived (or as a duplicate of the one kept), now
    DEACTIVATE = "deactivate"  # make the product or price inactive (and mark it), now
    DELETE = "delete"  # delete an unused duplicate customer, now; only when a person confirms
    MARK_INTENDED = "mark_intended"  # accept it as it is; reported again only if either side changes
    CORRECT_SOURCE = "correct_source"  # nothing ClinicSync can do: the source record must be corrected


FIX_KINDS: tuple[str, ...] = tuple(kind.value for kind in FixKind)
# Fixes that change Stripe or the links now (the others only mark something in ClinicSync's own database).
WRITES_NOW = frozenset({FixKind.LINK, FixKind.ARCHIVE, FixKind.DEACTIVATE, FixKind.DELETE})


class Reason(StrEnum):
    """Why a finding of a type was made; decides its words and how its fixes are carried out."""

    NEVER_SYNCED = "never_synced"  # missing: not synced yet (new, or left out by a failure)
    DELETED_IN_STRIPE = "deleted_in_stripe"  # missing: its linked object was deleted in Stripe
    WAITING_FOR_REVIEW = "waiting_for_review"  # missing: a person must choose in Review
    CANNOT_MAP = "cannot_map"  # missing: the mapping cannot send it (the message says why)
    SOURCE_ABSENT = "source_absent"  # orphaned: no such record at the source
    SOURCE_ARCHIVED = "source_archived"  # orphaned: archived at the source, not marked in Stripe
    LINKED_ELSEWHERE = "linked_elsewhere"  # orphaned: the record is linked to another object
    VALUE_CHANGED = "value_changed"  # field drift
    SAME_REFERENCE = "same_reference"  # duplicate: several objects name one record
    SAME_EMAIL = "same_email"  # duplicate: several unreferenced customers share one email
    NO_PAYMENT = "no_payment"  # paid at the source, and no Stripe payment is linked or names it
    PAYMENT_DIFFERS = "payment_differs"  # the linked payment failed, was refunded, or differs in amount or date
    NOT_REFUNDED = "not_refunded"  # a cancelled booking's payment still stands


class FindingStatus(StrEnum):
    OPEN = "open"  # reported
    ACCEPTED = "accepted"  # marked as intended (now or in an earlier report, with the same values): not reported
    SCHEDULED = "scheduled"  # a fix the next sync carries out
    FIXED = "fixed"  # a fix carried out now
    FAILED = "failed"  # a fix that was tried and did not work (the note says why)


class ReportOutcome(StrEnum):
    RUNNING = "running"
    CLEAN = "clean"  # nothing to report (marks as intended aside)
    FINDINGS = "findings"
    FAILED = "failed"  # stopped before both sides were read in full: the findings so far are incomplete
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Finding:
    type: FindingType
    stream: str
    severity: Severity
    reason: Reason
    stripe_object: str  # "customer", "product", "price"
    source_id: str | None  # the source record (None: none is named)
    stripe_id: str | None  # the Stripe object (for a duplicate: the extra one; None: none exists)
    explanation: str
    suggested_fix: FixKind | None
    fixes: tuple[FixKind, ...]
    field: str = ""  # field drift: the Stripe field, dotted as in the mapping
    source_value: str | None = None  # field drift: what the mapping produces
    stripe_value: str | None = None  # field drift: what Stripe holds
    display_name: str = ""
    # A duplicate: the object kept first, then the group's others. Missing: Stripe objects it could be linked to.
    related: tuple[str, ...] = ()
    fingerprint: str = ""  # of the values compared: a mark "as intended" holds while it is unchanged
    # Set once stored:
    id: int | None = None
    status: FindingStatus = FindingStatus.OPEN
    note: str = ""  # what a fix did, or why something was marked as intended

    @property
    def key(self) -> str:
        """What identifies "the same finding" from one report to the next (for marks as intended)."""
        return finding_key(self.type, self.source_id, self.stripe_id, self.field)

    @property
    def kept_id(self) -> str | None:
        """A duplicate's object that stays (the linked, else the oldest one)."""
        return self.related[0] if self.type == FindingType.DUPLICATE and self.related else None

    @property
    def reported(self) -> bool:
        return self.status != FindingStatus.ACCEPTED

    def with_status(self, status: FindingStatus, note: str = "") -> Finding:
        return replace(self, status=status, note=note or self.note)


def finding_key(kind: str, source_id: str | None, stripe_id: str | None, field_name: str) -> str:
    return f"{kind}|{source_id or ''}|{stripe_id or ''}|{field_name}"


def fingerprint(*values: Any) -> str:
    """A short hash of compared values (JSON, so 1 and "1" differ and None is not "")."""
    text = json.dumps(values, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def shown(value: Any) -> str | None:
    """A compared value as text for people, exports and storage (None stays None: "empty")."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


@dataclass
class Counts:
    """Findings of one report by stream and type; accepted ones (marked as intended) are counted apart."""

    reported: dict[str, dict[str, int]] = field(default_factory=dict)  # stream → type → n
    accepted: int = 0

    def add(self, finding: Finding) -> None:
        if not finding.reported:
            self.accepted += 1
            return
        per_type = self.reported.setdefault(finding.stream, {})
        per_type[finding.type] = per_type.get(finding.type, 0) + 1

    @property
    def total(self) -> int:
        return sum(sum(per_type.values()) for per_type in self.reported.values())

    def by_type(self) -> dict[str, int]:
        totals = dict.fromkeys(FINDING_TYPES, 0)
        for per_type in self.reported.values():
            for kind, count in per_type.items():
                totals[kind] += count
        return totals

    def to_json(self) -> dict[str, Any]:
        return {"reported": self.reported, "accepted": self.accepted}

    @classmethod
    def from_json(cls, data: Any) -> Counts:
        data = data or {}
        return cls(
            reported={s: dict(t) for s, t in (data.get("reported") or {}).items()}, accepted=data.get("accepted", 0)
        )


@dataclass(frozen=True)
class ReportInfo:
    """One report's heading: whose accounts, when both sides were read, and what was found."""

    id: int
    clinic_name: str
    stripe_name: str
    livemode: bool
    started_at: datetime  # UTC, aware
    finished_at: datetime | None
    time_zone: str  # the clinic's, for showing times
    streams: tuple[str, ...]
    outcome: str  # running, clean, findings, failed, cancelled
    counts: Counts
    compared: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # stream → {"source": n, "stripe": n}
    message: str = ""


SOURCE_NAMES = {"cliniko": "Cliniko", "calcom": "Cal.com"}


def source_system(stream: str) -> str:
    """The source system of a stream's name ("calcom" of "calcom.bookings")."""
    return stream.split(".", 1)[0]


def source_name(stream: str) -> str:
    system = source_system(stream)
    return SOURCE_NAMES.get(system, system)


def fix_words(kind: FixKind, finding: Finding) -> str:
    """A fix in plain words, for this finding."""
    source, obj, sid = source_name(finding.stream), finding.stripe_object, finding.stripe_id
    duplicate = finding.type == FindingType.DUPLICATE
    if kind == FixKind.REPUSH:
        if finding.reason == Reason.NO_PAYMENT:
            return "Look for its payment again (the next sync does it)"
        if finding.reason == Reason.PAYMENT_DIFFERS:
            return f"Forget the link to {sid} and look for its payment again (the next sync does it)"
        if finding.reason == Reason.DELETED_IN_STRIPE:
            return f"Make a new {obj} for it in Stripe (the next sync does it)"
        return f"Send it again from {source} (the next sync does it)"
    if kind == FixKind.LINK:
        if finding.type == FindingType.MISSING_IN_STRIPE or (finding.type in PAYMENT_TYPES and finding.related):
            target = finding.related[0] if len(finding.related) == 1 else "one of " + ", ".join(finding.related)
        else:
            target = sid or "?"
        return f"Link the {source} record to {target}"
    if kind == FixKind.ARCHIVE:
        return f"Mark {sid} in Stripe as a duplicate of {finding.kept_id}" if duplicate else f"Mark the {obj} archived"
    if kind == FixKind.DEACTIVATE:
        if duplicate:
            return f"Make {sid} inactive, marked as a duplicate of {finding.kept_id}"
        return f"Make the {obj} inactive"
    if kind == FixKind.DELETE:
        return f"Delete {sid} from Stripe (only if it has no payments; asks to confirm)"
    if kind == FixKind.MARK_INTENDED:
        return "Mark as intended (reported again only if either side changes)"
    return f"Correct the record in {source}; the next sync sends it"
