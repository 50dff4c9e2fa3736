"""The rules that turn one record's two sides into findings, the same for every stream.

Pure: the driver (clinicsync/sync/reconcile_run.py) reads both sides page by page and hands over, per source
record, what the source says (mapped as a sync would send it) and the Stripe objects that name the record or that
its link points to; and, after the source is read, each group of objects naming a record the source does not have,
and each group of unreferenced objects sharing a match key.

What is never reported: an archived record's object marked archived (what the stream does); a record never synced
because it was archived first; an object the stream or a person retired (marked archived or as a duplicate, or made
inactive) that is not the record's own; a record outside the mapping's scope, ignored in review, or with a write
waiting in the outbox; objects without a cross-reference, unless several share one email (family members sharing
an email each carry their own cross-reference, so they are never duplicates).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from clinicsync.mapping.apply import MappedRecord
from clinicsync.mapping.spec import StreamMapping
from clinicsync.reconcile.compare import (
    CompareRequest,
    Comparison,
    Drift,
    Owned,
    StripeObject,
    compared_values,
)
from clinicsync.reconcile.findings import (
    Finding,
    FindingType,
    FixKind,
    Reason,
    Severity,
    fingerprint,
    shown,
)
from clinicsync.streams.base import DUPLICATE_OF_KEY


class Decision:
    """What stands between a source record and Stripe, as the driver found it."""

    NONE = ""
    REVIEW = "review"  # waiting for a person in Review
    IGNORED = "ignored"  # a person chose never to sync it
    QUEUED = "queued"  # a write waits in the outbox: the next sync sends it


@dataclass(frozen=True)
class SourceSide:
    """One source record as the sync sees it. `mapped` None: the source has no such record."""

    source_id: str
    mapped: MappedRecord | None
    display_name: str = ""
    in_scope: bool = True
    linked_id: str | None = None  # the Stripe object the local link points to
    synced_hash: str | None = None  # the payload Stripe last accepted for it (RecordLink.payload_hash)
    decision: str = Decision.NONE
    owned: tuple[Owned, ...] = ()
    facts: Mapping[str, Any] = field(default_factory=dict)  # the stream's Comparison.facts of the record


@dataclass(frozen=True)
class StripeSide:
    """The Stripe objects that name the record in their cross-reference, or that its link points to."""

    objects: tuple[StripeObject, ...] = ()
    related: Mapping[str, tuple[StripeObject, ...]] = field(default_factory=dict)  # by parent object id
    candidates: tuple[str, ...] = ()  # unreferenced objects with the record's match key (to link it to)
    # Objects whose person's details (name, email, phone, address) another source owns: the primary source's
    # record is linked to them too (streams/identity.py). Only this stream's metadata is compared on them.
    identity_elsewhere: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Terms:
    """The words one stream's findings use."""

    stream: str
    source: str  # "Cliniko"
    record: str  # "patient"
    stripe_object: str  # "customer"

    @classmethod
    def of(cls, mapping: StreamMapping) -> Terms:
        source = {"cliniko": "Cliniko", "calcom": "Cal.com"}.get(mapping.source_system, mapping.source_system)
        return cls(mapping.stream, source, mapping.source_type, mapping.stripe_object)


def metadata(obj: StripeObject) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def oldest_first(objects: Sequence[StripeObject]) -> list[StripeObject]:
    """Stripe's `created`, then the id: every installation picks the same one to keep."""
    return sorted(objects, key=lambda obj: (obj.get("created") or 0, str(obj.get("id"))))


def is_retired(comparison: Comparison, mapping: StreamMapping, obj: StripeObject) -> bool:
    """Marked archived or as a duplicate (by the stream, a twin repair or a fix), or retired the stream's way."""
    meta = metadata(obj)
    return bool(meta.get(mapping.archived_marker) or meta.get(DUPLICATE_OF_KEY) or comparison.retired(obj))


class _Judge:
    def __init__(self, comparison: Comparison, mapping: StreamMapping) -> None:
        self.comparison = comparison
        self.mapping = mapping
        self.terms = Terms.of(mapping)
        self.ref_key = mapping.cross_ref_key

    def refers(self, obj: StripeObject, source_id: str) -> bool:
        return metadata(obj).get(self.ref_key) == source_id

    def retired(self, obj: StripeObject) -> bool:
        return is_retired(self.comparison, self.mapping, obj)

    def name_of(self, source: SourceSide) -> str:
        name = source.display_name or (source.mapped.display_name if source.mapped else "")
        return f"{name} ({source.source_id})" if name else source.source_id

    def object_name(self, obj: StripeObject) -> str:
        label = obj.get("name") or obj.get("email") or ""
        return f"{obj['id']} ({label})" if label else str(obj["id"])

    def finding(self, kind: FindingType, reason: Reason, severity: Severity, **values: Any) -> Finding:
        fixes = tuple(values.pop("fixes"))
        suggested = values.pop("suggested", fixes[0] if fixes else None)
        return Finding(
            type=kind,
            stream=self.terms.stream,
            severity=severity,
            reason=reason,
            stripe_object=values.pop("stripe_object", self.terms.stripe_object),
            suggested_fix=suggested,
            fixes=(*fixes, FixKind.MARK_INTENDED) if FixKind.MARK_INTENDED not in fixes else fixes,
            **values,
        )

    def retire_fixes(self, *, deletable: bool) -> list[FixKind]:
        fixes = [self.comparison.archive_fix]
        if deletable and self.comparison.can_delete:
            fixes.append(FixKind.DELETE)
        return fixes

    # --- one record -----------------------------------------------------------------------------------
    def record(self, source: SourceSide, stripe: StripeSide) -> list[Finding]:
        objects = oldest_first(stripe.objects)
        linked = next((obj for obj in objects if obj["id"] == source.linked_id), None)
        naming = [obj for obj in objects if self.refers(obj, source.source_id)]
        if source.mapped is None:
            return self.absent(source, naming if linked is None or linked in naming else [*naming, linked])
        if not source.in_scope or source.decision in (Decision.IGNORED, Decision.QUEUED):
            return []  # the sync leaves it alone on purpose, or has not finished with it yet
        mapped = source.mapped
        primary = linked or next((obj for obj in naming if not self.retired(obj)), None)
        if self.comparison.unmatched is not None and linked is None:
            primary = None  # a stream that only links (payments): what is not linked is not the record's yet
        if primary is None:
            if self.comparison.unmatched is not None:
                return self.unmatched(source, tuple(stripe.candidates))
            return [] if mapped.archived else [self.missing(source, stripe)]
        findings = [
            self.extra(source, obj, primary, linked) for obj in naming if obj is not primary and not self.retired(obj)
        ]
        if linked is None and source.linked_id:
            # Linked to an object deleted since, while this one names the record: link it (the sync would not).
            findings.insert(0, self.linked_elsewhere(source, primary, gone=True))
            return findings
        if mapped.error is not None:
            return findings  # nothing to compare with: the sync reports why it cannot send the record
        findings += self.compare(source, primary, stripe)
        return findings

    def absent(self, source: SourceSide, objects: list[StripeObject]) -> list[Finding]:
        terms = self.terms
        found = []
        for obj in objects:
            if self.retired(obj):
                continue  # retired already: what the stream does when a record goes
            found.append(
                self.finding(
                    FindingType.ORPHANED_IN_STRIPE,
                    Reason.SOURCE_ABSENT,
                    Severity.MEDIUM,
                    source_id=source.source_id,
                    stripe_id=obj["id"],
                    display_name=str(obj.get("name") or ""),
                    explanation=(
                        f"Stripe {terms.stripe_object} {self.object_name(obj)} names {terms.record} "
                        f"{source.source_id} ({self.ref_key}), but {terms.source} has no such {terms.record}: it was "
                        f"deleted, or the {terms.stripe_object} came from another {terms.source} account."
                    ),
                    fixes=self.retire_fixes(deletable=True),
                    fingerprint=fingerprint(FindingType.ORPHANED_IN_STRIPE, compared_values(self.mapping, obj)),
                )
            )
        return found

    def missing(self, source: SourceSide, stripe: StripeSide) -> Finding:
        terms = self.terms
        mapped = source.mapped
        assert mapped is not None
        who = f"{terms.source} {terms.record} {self.name_of(source)}"
        candidates = tuple(stripe.candidates)
        can_link = [FixKind.LINK] if candidates else []
        if mapped.error is not None:
            reason, severity, fixes = Reason.CANNOT_MAP, Severity.MEDIUM, [FixKind.CORRECT_SOURCE]
            text = f"{who} has no {terms.stripe_object} in Stripe: it cannot be sent ({mapped.error})."
        elif source.decision == Decision.REVIEW:
            reason, severity, fixes = Reason.WAITING_FOR_REVIEW, Severity.MEDIUM, [*can_link, FixKind.REPUSH]
            text = f"{who} has no {terms.stripe_object} in Stripe: it waits in Review for a person to choose one"
            text += f" (candidates: {', '.join(candidates)})." if candidates else "."
        elif source.linked_id:
            reason, severity, fixes = Reason.DELETED_IN_STRIPE, Severity.HIGH, [FixKind.REPUSH, *can_link]
            text = (
                f"{who} was linked to Stripe {terms.stripe_object} {source.linked_id}, which has been deleted in "
                f"Stripe; ClinicSync does not make a new one unless a person says so."
            )
        else:
            reason, severity = Reason.NEVER_SYNCED, Severity.HIGH
            fixes = [*can_link, FixKind.REPUSH] if len(candidates) == 1 else [FixKind.REPUSH, *can_link]
            text = f"{who} has no {terms.stripe_object} in Stripe: it has not been synced yet."
            if candidates:
                text += (
                    f" Stripe has {len(candidates)} {terms.stripe_object}(s) with the same email it could be linked to."
                )
        return self.finding(
            FindingType.MISSING_IN_STRIPE,
            reason,
            severity,
            source_id=source.source_id,
            stripe_id=source.linked_id if reason == Reason.DELETED_IN_STRIPE else None,
            display_name=mapped.display_name,
            explanation=text,
            fixes=fixes,
            related=candidates,
            fingerprint=fingerprint(FindingType.MISSING_IN_STRIPE, reason, mapped.payload_hash, candidates),
        )

    def unmatched(self, source: SourceSide, candidates: tuple[str, ...] = ()) -> list[Finding]:
        """A record no Stripe object names, of a stream that never makes its objects: the stream says what that
        means (a paid invoice with no payment), or that nothing is owed."""
        assert source.mapped is not None and self.comparison.unmatched is not None
        drift = self.comparison.unmatched(source.mapped, source.facts)
        if drift is None:
            return []
        if source.decision == Decision.REVIEW:
            drift = replace(drift, explanation=f"{drift.explanation} It waits in Review for a person to choose.")
        if candidates:  # the payments Review offers: link to one of them (suggested when there is only one)
            fixes = [fix for fix in drift.fixes or (drift.fix,) if fix != FixKind.LINK]
            fixes.insert(0 if len(candidates) == 1 else 1, FixKind.LINK)
            words = ", ".join(candidates)
            drift = replace(
                drift, related=candidates, fixes=tuple(fixes), explanation=f"{drift.explanation} Candidates: {words}."
            )
        return [self.drift(source, None, drift, pending=False)]

    def extra(
        self, source: SourceSide, obj: StripeObject, primary: StripeObject, linked: StripeObject | None
    ) -> Finding:
        """Another object naming the record: a duplicate of the record's own, or — when the record is linked to an
        object that does not name it — one that claims a record linked elsewhere."""
        if linked is not None and not self.refers(linked, source.source_id):
            return self.linked_elsewhere(source, obj, gone=False)
        terms = self.terms
        keeps = "the one linked" if primary is linked else "the oldest"
        return self.finding(
            FindingType.DUPLICATE,
            Reason.SAME_REFERENCE,
            Severity.HIGH,
            source_id=source.source_id,
            stripe_id=obj["id"],
            display_name=str(obj.get("name") or ""),
            explanation=(
                f"Stripe {terms.stripe_object}s {primary['id']} and {self.object_name(obj)} both name "
                f"{terms.record} {self.name_of(source)}. ClinicSync keeps {primary['id']} ({keeps}); {obj['id']} is "
                f"an extra copy."
            ),
            fixes=self.retire_fixes(deletable=True),
            related=(primary["id"],),
            fingerprint=fingerprint(FindingType.DUPLICATE, primary["id"], compared_values(self.mapping, obj)),
        )

    def linked_elsewhere(self, source: SourceSide, obj: StripeObject, *, gone: bool) -> Finding:
        terms = self.terms
        where = f"{source.linked_id}, which was deleted in Stripe" if gone else str(source.linked_id)
        fixes = (
            [FixKind.LINK, *self.retire_fixes(deletable=False)]
            if gone
            else [
                *self.retire_fixes(deletable=True),
                FixKind.LINK,
            ]
        )
        return self.finding(
            FindingType.ORPHANED_IN_STRIPE,
            Reason.LINKED_ELSEWHERE,
            Severity.MEDIUM,
            source_id=source.source_id,
            stripe_id=obj["id"],
            display_name=str(obj.get("name") or ""),
            explanation=(
                f"Stripe {terms.stripe_object} {self.object_name(obj)} names {terms.record} {self.name_of(source)}, "
                f"but ClinicSync links that {terms.record} to {where}."
            ),
            fixes=fixes,
            related=(source.linked_id,) if source.linked_id else (),
            fingerprint=fingerprint(
                FindingType.ORPHANED_IN_STRIPE, source.linked_id, gone, compared_values(self.mapping, obj)
            ),
        )

    def compare(self, source: SourceSide, obj: StripeObject, stripe: StripeSide) -> list[Finding]:
        mapped = source.mapped
        assert mapped is not None
        terms = self.terms
        findings = []
        marker = f"metadata.{self.mapping.archived_marker}"
        marked = metadata(obj).get(self.mapping.archived_marker)
        if mapped.archived and not marked:
            archived = mapped.payload.get(marker)
            findings.append(
                self.finding(
                    FindingType.ORPHANED_IN_STRIPE,
                    Reason.SOURCE_ARCHIVED,
                    Severity.LOW,
                    source_id=source.source_id,
                    stripe_id=obj["id"],
                    display_name=mapped.display_name,
                    explanation=(
                        f"{terms.source} {terms.record} {self.name_of(source)} is {archived or 'archived'}, but its "
                        f"Stripe {terms.stripe_object} {obj['id']} does not say so."
                    ),
                    fixes=[self.comparison.archive_fix, FixKind.REPUSH],
                    field=marker,
                    source_value=shown(archived),
                    fingerprint=fingerprint(
                        FindingType.ORPHANED_IN_STRIPE, mapped.payload_hash, compared_values(self.mapping, obj)
                    ),
                )
            )
        drifts = self.comparison.compare(
            CompareRequest(
                self.mapping,
                mapped,
                obj,
                tuple(stripe.related.get(str(obj["id"]), ())),
                tuple(source.owned),
                metadata_only=str(obj["id"]) in stripe.identity_elsewhere,
                facts=source.facts,
            )
        )
        if not mapped.archived and marked:
            drifts.insert(0, Drift(marker, None, marked, severity=Severity.MEDIUM))
        # The source changed since Stripe last took it: the next sync sends it, so it is not somebody's edit.
        pending = source.synced_hash is not None and source.synced_hash != mapped.payload_hash
        findings += [self.drift(source, obj, drift, pending=pending) for drift in drifts]
        return findings

    def drift(self, source: SourceSide, obj: StripeObject | None, drift: Drift, *, pending: bool) -> Finding:
        terms = self.terms
        stripe_object = drift.stripe_object or terms.stripe_object
        stripe_id = drift.stripe_id or (str(obj["id"]) if obj is not None else None)
        expected, actual = shown(drift.expected), shown(drift.actual)
        if drift.kind != FindingType.FIELD_DRIFT:  # the stream's own finding, in its own words
            return self.finding(
                drift.kind,
                drift.reason,
                drift.severity,
                source_id=source.source_id,
                stripe_id=stripe_id,
                stripe_object=stripe_object,
                display_name=source.mapped.display_name if source.mapped else "",
                explanation=drift.explanation.replace("{record}", self.name_of(source)),
                fixes=drift.fixes or (drift.fix,),
                field=drift.field,
                source_value=expected,
                stripe_value=actual,
                related=drift.related,
                fingerprint=fingerprint(drift.kind, drift.field, expected, actual),
            )
        why = (
            f"{terms.source} changed since the last sync, which sends it next time"
            if pending
            else "it was changed in Stripe, or the mapping now says otherwise"
        )
        explanation = (
            f"{drift.field} of Stripe {stripe_object} {stripe_id} for {terms.record} {self.name_of(source)} is "
            f"{_quoted(actual)}, but {terms.source} says {_quoted(expected)}: {why}."
        )
        fixes = [drift.fix] if drift.fix == FixKind.REPUSH else [drift.fix, FixKind.REPUSH]
        return self.finding(
            FindingType.FIELD_DRIFT,
            Reason.VALUE_CHANGED,
            Severity.LOW if pending else drift.severity,
            source_id=source.source_id,
            stripe_id=stripe_id,
            stripe_object=stripe_object,
            display_name=source.mapped.display_name if source.mapped else "",
            explanation=explanation,
            fixes=fixes,
            field=drift.field,
            source_value=expected,
            stripe_value=actual,
            fingerprint=fingerprint(FindingType.FIELD_DRIFT, drift.field, expected, actual),
        )

    # --- objects sharing a match key ------------------------------------------------------------------
    def same_match_key(self, objects: Sequence[StripeObject]) -> list[Finding]:
        terms = self.terms
        live = [obj for obj in oldest_first(objects) if not self.retired(obj)]
        if len(live) < 2:
            return []
        kept, *extras = live
        target = self.mapping.match_target
        return [
            self.finding(
                FindingType.DUPLICATE,
                Reason.SAME_EMAIL,
                Severity.MEDIUM,
                source_id=None,
                stripe_id=obj["id"],
                display_name=str(obj.get("name") or ""),
                explanation=(
                    f"Stripe {terms.stripe_object}s {self.object_name(kept)} and {self.object_name(obj)} have the same "
                    f"{target} ({obj.get(target) or kept.get(target)}) and neither comes from {terms.source}: probably "
                    f"one person entered twice. {kept['id']} (the oldest) is the one to keep."
                ),
                fixes=self.retire_fixes(deletable=True),
                related=tuple(str(o["id"]) for o in live if o is not obj),
                fingerprint=fingerprint(FindingType.DUPLICATE, kept["id"], compared_values(self.mapping, obj)),
            )
            for obj in extras
        ]


def judge_record(
    comparison: Comparison, mapping: StreamMapping, source: SourceSide, stripe: StripeSide
) -> list[Finding]:
    """Findings about one source record (or, with `source.mapped` None, about objects naming a record the source
    does not have) and the Stripe objects that name it or that its link points to."""
    findings = _Judge(comparison, mapping).record(source, stripe)
    return [finding for finding in findings if finding.type in comparison.reports]


def judge_match_group(comparison: Comparison, mapping: StreamMapping, objects: Sequence[StripeObject]) -> list[Finding]:
    """Duplicates among objects that carry no cross-reference, are linked to no record, and share a match key
    (casefolded): every one but the oldest. Empty unless the stream declares such duplicates."""
    if not comparison.duplicate_match_key:
        return []
    return [f for f in _Judge(comparison, mapping).same_match_key(objects) if f.type in comparison.reports]


def _quoted(value: str | None) -> str:
    return "empty" if value is None else f'"{value}"'
