"""What a stream declares for reconciliation (its `compare`), and the field comparison streams share.

A stream's Comparison says how one source record's mapped payload is compared with the Stripe object it should
agree with, which other Stripe objects that needs (a product's prices), and which fixes suit its objects. The
rules that turn comparisons into findings (missing, orphaned, duplicate) are the same for every stream: judge.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from clinicsync.mapping.apply import MappedRecord
from clinicsync.mapping.preview import stripe_value
from clinicsync.mapping.spec import StreamMapping
from clinicsync.reconcile.findings import FindingType, FixKind, Reason, Severity

StripeObject = Mapping[str, Any]


@dataclass(frozen=True)
class Owned:
    """A Stripe object of a secondary role the record owns (as the local links say): e.g. a price ClinicSync made."""

    role: str
    stripe_id: str
    current: bool
    active: bool


@dataclass(frozen=True)
class CompareRequest:
    """One record's mapped payload and the Stripe object it should agree with."""

    mapping: StreamMapping
    mapped: MappedRecord
    obj: StripeObject
    related: tuple[StripeObject, ...] = ()  # the object's related objects (a product's prices)
    owned: tuple[Owned, ...] = ()
    # Another source owns the object's other fields (a person's customer its primary source is linked to): only
    # the metadata this stream writes is compared (streams/identity.py).
    metadata_only: bool = False
    # What the stream's `facts` said of the source record beyond its payload (an invoice's total and status).
    facts: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Drift:
    """A compared value that differs. `stripe_object`/`stripe_id`: when it is on a related object (a price)."""

    field: str
    expected: Any
    actual: Any
    stripe_object: str = ""
    stripe_id: str = ""
    severity: Severity = Severity.MEDIUM
    fix: FixKind = FixKind.REPUSH
    # A finding of another type than field drift (a payment that does not agree with its invoice): its own words
    # ("{record}" in them becomes the record's name as reports show it), why (the Reason) and fixes (the first
    # suggested), and the Stripe objects a LINK fix may take.
    kind: FindingType = FindingType.FIELD_DRIFT
    reason: Reason = Reason.VALUE_CHANGED
    explanation: str = ""
    fixes: tuple[FixKind, ...] = ()
    related: tuple[str, ...] = ()


@dataclass(frozen=True)
class Related:
    """Other Stripe objects a comparison needs, listed in full and attached to their parent by `parent_field`."""

    stripe_object: str  # "price"
    parent_field: str  # "product": the price's field holding its product's id


@dataclass(frozen=True)
class Comparison:
    """A stream's reconciliation declaration (the `compare` slot of streams/base.py Stream)."""

    compare: Callable[[CompareRequest], list[Drift]]
    archive_fix: FixKind  # how an object is retired: ARCHIVE (customers: marked) or DEACTIVATE (products)
    can_delete: bool = False  # an unused duplicate may be deleted (customers; Stripe keeps products with prices)
    # Several objects without a cross-reference sharing the match key are duplicates (one email, two customers).
    duplicate_match_key: bool = False
    related: tuple[Related, ...] = ()
    # Whether an object was retired by the stream's own means (an inactive product), besides the markers.
    retired: Callable[[StripeObject], bool] = lambda obj: False
    # The shared rules' finding types the stream reports; the others are another stream's to report (the products
    # a notes stream writes to are the event types stream's: missing, orphaned or duplicated, it says so).
    reports: frozenset[FindingType] = frozenset(FindingType)
    # What the source record says beyond the mapped payload that the comparison needs (an invoice's total, status
    # and dates): (record, StreamSettings) → facts, handed to `compare` and `unmatched`. Read only here, so the
    # payload a sync sends (and its hash) stays as it is.
    facts: Callable[[Mapping[str, Any], Any], Mapping[str, Any]] | None = None
    # A record in scope that no Stripe object names, for a stream that never creates its objects (payments):
    # (mapped, facts) → the finding to report as a Drift of its own kind (paid at the source, no payment), or None
    # (nothing is owed: an unpaid invoice). None: the shared "missing in Stripe".
    unmatched: Callable[[MappedRecord, Mapping[str, Any]], Drift | None] | None = None
    # The stream's own reading of its Stripe side instead of every object of its kind (payments over the sync's
    # window, as charges with their PaymentIntents): (gateway, StripeScope) → objects.
    listing: Callable[[Any, StripeScope], Iterable[StripeObject]] | None = None
    # A linked object the listing did not bring (made outside the window), read by id: (gateway, id) → object, or
    # None when Stripe has no such object.
    fetch: Callable[[Any, str], StripeObject | None] | None = None


@dataclass(frozen=True)
class StripeScope:
    """What a stream's own Stripe listing covers: objects made from `since` (UTC epoch s; None: all time), with
    the stream's settings (StreamSettings) for windows around it."""

    since: int | None
    settings: Any


def blank(value: Any) -> Any:
    """Empty in Stripe and empty in a payload are the same: "", None and {} all mean nothing is there."""
    return None if value in ("", None, {}) else value


def same(expected: Any, actual: Any) -> bool:
    expected, actual = blank(expected), blank(actual)
    if expected is None or actual is None:
        return expected is actual
    if isinstance(expected, str) != isinstance(actual, str):  # metadata holds text; an amount may be an int
        return str(expected) == str(actual)
    return bool(expected == actual)


def compare_fields(request: CompareRequest, *, skip: tuple[str, ...] = ()) -> list[Drift]:
    """Every mapped target (the archived marker apart: judge.py owns it) against the object's value; only its
    metadata when another source owns the rest."""
    mapping = request.mapping
    marker = f"metadata.{mapping.archived_marker}"
    cross_ref = f"metadata.{mapping.cross_ref_key}"
    drifts = []
    for target in mapping.targets:
        if target == marker or target in skip or (request.metadata_only and not target.startswith("metadata.")):
            continue
        expected = request.mapped.payload.get(target)
        actual = stripe_value(request.obj, target)
        if not same(expected, actual):
            # A broken cross-reference misleads matching itself; other fields only misinform.
            severity = Severity.HIGH if target == cross_ref else Severity.MEDIUM
            drifts.append(Drift(target, blank(expected), blank(actual), severity=severity))
    return drifts


def compared_values(mapping: StreamMapping, obj: StripeObject) -> dict[str, Any]:
    """What reconciliation looks at in an object: a mark "as intended" on it holds while these stay the same."""
    return {target: blank(stripe_value(obj, target)) for target in mapping.targets}
