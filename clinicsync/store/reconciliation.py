"""Reconciliation reports in the profile's database: what a reconciliation stores as it goes, what the CLI and the
Reconciliation tab read (reports, findings with filters, exports), and the findings people mark as intended.

Findings are read back as reconcile.findings.Finding, so screens and exports never see a database row.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from peewee import Case, Tuple, chunked, fn

from clinicsync.reconcile.export import write_csv, write_html
from clinicsync.reconcile.findings import (
    FINDING_TYPES,
    SEVERITIES,
    Counts,
    Finding,
    FindingStatus,
    FindingType,
    FixKind,
    Reason,
    ReportInfo,
    ReportOutcome,
    Severity,
    source_system,
)
from clinicsync.store.db import database_proxy
from clinicsync.store.models import (
    AccountPair,
    ReconcileFinding,
    ReconcileIntent,
    ReconcileReport,
    utcnow,
)

KEEP_REPORTS = 20  # per pair of accounts: older reports (and the values their findings show) are deleted
DEFAULT_TIME_ZONE = "Australia/Melbourne"


class ReconcileError(ValueError):
    """A request about findings that cannot be carried out as asked; the message says why."""


# --- writing (the driver) --------------------------------------------------------------------------------
def start_report(pair: AccountPair, streams: Sequence[str], *, trigger: str, time_zone: str = "") -> ReconcileReport:
    return ReconcileReport.create(pair=pair, streams=list(streams), trigger=trigger, time_zone=time_zone)


def add_findings(report: ReconcileReport | int, findings: Iterable[Finding]) -> None:
    rows = (_row(report, finding) for finding in findings)
    with database_proxy.atomic():
        for batch in chunked(rows, 200):
            ReconcileFinding.insert_many(batch).execute()


def _row(report: ReconcileReport | int, finding: Finding) -> dict[str, Any]:
    return {
        "report": report,
        "stream": finding.stream,
        "type": finding.type.value,
        "severity": finding.severity.value,
        "reason": finding.reason.value,
        "stripe_object": finding.stripe_object,
        "source_id": finding.source_id,
        "stripe_id": finding.stripe_id,
        "field": finding.field,
        "source_value": finding.source_value,
        "stripe_value": finding.stripe_value,
        "display_name": finding.display_name[:255],
        "explanation": finding.explanation,
        "suggested_fix": finding.suggested_fix.value if finding.suggested_fix else None,
        "fixes": [fix.value for fix in finding.fixes],
        "related": list(finding.related),
        "fingerprint": finding.fingerprint,
        "status": finding.status.value,
        "note": finding.note,
        "updated_at": utcnow(),
    }


def finish_report(
    report: ReconcileReport,
    outcome: ReportOutcome,
    counts: Counts,
    compared: Mapping[str, Mapping[str, int]],
    message: str = "",
) -> None:
    report.outcome = outcome.value
    report.counts = counts.to_json()
    report.compared = {stream: dict(values) for stream, values in compared.items()}
    report.message = message
    report.finished_at = utcnow()
    report.save()
    prune_reports(report.pair)


def prune_reports(pair: AccountPair | int, keep: int = KEEP_REPORTS) -> int:
    """Delete all but the newest `keep` reports of a pair (their findings go with them)."""
    kept = (
        ReconcileReport.select(ReconcileReport.id)
        .where(ReconcileReport.pair == pair)
        .order_by(ReconcileReport.id.desc())
        .limit(keep)
    )
    old = [
        row.id
        for row in ReconcileReport.select(ReconcileReport.id).where(
            (ReconcileReport.pair == pair) & ReconcileReport.id.not_in(kept)
        )
    ]
    with database_proxy.atomic():
        for batch in chunked(old, 200):
            ReconcileFinding.delete().where(ReconcileFinding.report.in_(batch)).execute()
            ReconcileReport.delete().where(ReconcileReport.id.in_(batch)).execute()
    return len(old)


def intents(pair: AccountPair, stream: str) -> dict[str, tuple[str, str]]:
    """Marks as intended for one stream: finding key → (fingerprint, note). Few: each is a person's decision."""
    rows = ReconcileIntent.select().where((ReconcileIntent.pair == pair) & (ReconcileIntent.stream == stream))
    return {row.key: (row.fingerprint, row.note) for row in rows}


# --- reading (CLI, window, exports) ----------------------------------------------------------------------
def _info(report: ReconcileReport) -> ReportInfo:
    pair = report.pair
    return ReportInfo(
        id=report.id,
        clinic_name=pair.source_name or pair.source_account,
        stripe_name=pair.stripe_name or pair.stripe_account,
        livemode=pair.stripe_livemode,
        started_at=report.started_at.replace(tzinfo=UTC),
        finished_at=report.finished_at.replace(tzinfo=UTC) if report.finished_at else None,
        time_zone=report.time_zone or DEFAULT_TIME_ZONE,
        streams=tuple(report.streams or ()),
        outcome=report.outcome,
        counts=Counts.from_json(report.counts),
        compared=report.compared or {},
        message=report.message,
    )


def reports(limit: int = 50, pair: AccountPair | int | None = None) -> list[ReportInfo]:
    """The newest reports first."""
    query = ReconcileReport.select(ReconcileReport, AccountPair).join(AccountPair)
    if pair is not None:
        query = query.where(ReconcileReport.pair == pair)
    return [_info(row) for row in query.order_by(ReconcileReport.id.desc()).limit(limit)]


def report(report_id: int | None = None) -> ReportInfo | None:
    """One report, or the newest one (of any pair of accounts) when no id is given."""
    query = ReconcileReport.select(ReconcileReport, AccountPair).join(AccountPair)
    if report_id is not None:
        row = query.where(ReconcileReport.id == report_id).first()
    else:
        row = query.order_by(ReconcileReport.id.desc()).first()
    return _info(row) if row is not None else None


def _finding(row: ReconcileFinding) -> Finding:
    return Finding(
        type=FindingType(row.type),
        stream=row.stream,
        severity=Severity(row.severity),
        reason=Reason(row.reason),
        stripe_object=row.stripe_object,
        source_id=row.source_id,
        stripe_id=row.stripe_id,
        explanation=row.explanation,
        suggested_fix=FixKind(row.suggested_fix) if row.suggested_fix else None,
        fixes=tuple(FixKind(fix) for fix in row.fixes or ()),
        field=row.field,
        source_value=row.source_value,
        stripe_value=row.stripe_value,
        display_name=row.display_name,
        related=tuple(row.related or ()),
        fingerprint=row.fingerprint,
        id=row.id,
        status=FindingStatus(row.status),
        note=row.note,
    )


def _filtered(
    report_id: int,
    *,
    types: Sequence[str] = (),
    streams: Sequence[str] = (),
    severities: Sequence[str] = (),
    statuses: Sequence[str] = (),
    reported_only: bool = False,
    search: str = "",
) -> Any:
    query = ReconcileFinding.select().where(ReconcileFinding.report == report_id)
    if types:
        query = query.where(ReconcileFinding.type.in_(list(types)))
    if streams:
        query = query.where(ReconcileFinding.stream.in_(list(streams)))
    if severities:
        query = query.where(ReconcileFinding.severity.in_(list(severities)))
    if statuses:
        query = query.where(ReconcileFinding.status.in_(list(statuses)))
    if reported_only:
        query = query.where(ReconcileFinding.status != FindingStatus.ACCEPTED.value)
    if search.strip():
        term = f"%{search.strip()}%"
        query = query.where(
            ReconcileFinding.source_id.contains(search.strip())
            | ReconcileFinding.stripe_id.contains(search.strip())
            | ReconcileFinding.display_name**term
            | ReconcileFinding.field.contains(search.strip())
        )
    return query


def findings(
    report_id: int,
    *,
    types: Sequence[str] = (),
    streams: Sequence[str] = (),
    severities: Sequence[str] = (),
    statuses: Sequence[str] = (),
    reported_only: bool = False,
    search: str = "",
    limit: int | None = None,
    offset: int = 0,
) -> Iterator[Finding]:
    """A report's findings, filtered, by type (in the order of FINDING_TYPES), severity, stream and id. A
    generator over a cursor: an export of a large report never holds it whole."""
    query = _filtered(
        report_id,
        types=types,
        streams=streams,
        severities=severities,
        statuses=statuses,
        reported_only=reported_only,
        search=search,
    )
    query = query.order_by(*_order())
    if limit is not None:
        query = query.limit(limit).offset(offset)
    for row in query.iterator():
        yield _finding(row)


FindingCursor = tuple[int, int, str, int]  # where the last page ended, in the order findings are listed


def _order() -> tuple[Any, ...]:
    type_order = Case(ReconcileFinding.type, [(kind, n) for n, kind in enumerate(FINDING_TYPES)], len(FINDING_TYPES))
    severity_order = Case(ReconcileFinding.severity, [(level, n) for n, level in enumerate(SEVERITIES)], 9)
    return type_order, severity_order, ReconcileFinding.stream, ReconcileFinding.id


def finding_cursor(finding: Finding) -> FindingCursor:
    kind, level = finding.type.value, finding.severity.value
    type_rank = FINDING_TYPES.index(kind) if kind in FINDING_TYPES else len(FINDING_TYPES)
    return type_rank, SEVERITIES.index(level) if level in SEVERITIES else 9, finding.stream, finding.id or 0


def findings_page(
    report_id: int, after: FindingCursor | None, limit: int, **filters: Any
) -> tuple[list[Finding], FindingCursor | None]:
    """One page of findings in `findings`' order, starting after `after` (None: the first page); and the cursor
    of the next page (None: this was the last).

    Read group by group (a type, then a severity) in the (report, type, stream) index's own order, seeking past
    the last row shown: no query sorts the whole report, so page 500 of 100,000 findings costs what page 1 does
    (the window fetches pages on the GUI thread)."""
    rows: list[Finding] = []
    start = (after[0], after[1]) if after is not None else (0, 0)
    wanted_types, wanted_levels = set(filters.get("types") or ()), set(filters.get("severities") or ())
    for type_rank, kind in enumerate(FINDING_TYPES):
        for level_rank, level in enumerate(SEVERITIES):
            if (type_rank, level_rank) < start or (wanted_types and kind not in wanted_types):
                continue
            if wanted_levels and level not in wanted_levels:
                continue
            query = _filtered(report_id, **filters).where(
                (ReconcileFinding.type == kind) & (ReconcileFinding.severity == level)
            )
            if after is not None and (type_rank, level_rank) == start:
                # A row value: SQLite seeks to it in the index instead of scanning the group from its start.
                query = query.where(Tuple(ReconcileFinding.stream, ReconcileFinding.id) > Tuple(after[2], after[3]))
            page = query.order_by(ReconcileFinding.stream, ReconcileFinding.id).limit(limit - len(rows))
            rows += [_finding(row) for row in page.iterator()]
            if len(rows) == limit:
                return rows, finding_cursor(rows[-1])
    return rows, None


def finding_count(report_id: int, **filters: Any) -> int:
    return int(_filtered(report_id, **filters).count())


def get_findings(ids: Sequence[int]) -> list[Finding]:
    """The findings with these ids, in that order; raises ReconcileError naming any that do not exist."""
    rows = {row.id: row for row in ReconcileFinding.select().where(ReconcileFinding.id.in_(list(ids)))}
    unknown = [str(finding_id) for finding_id in ids if finding_id not in rows]
    if unknown:
        raise ReconcileError(
            f"No finding {', '.join(unknown)}; `clinicsync reconcile list` shows the latest report's findings."
        )
    return [_finding(rows[finding_id]) for finding_id in ids]


def report_of(finding_id: int) -> ReportInfo:
    row = ReconcileFinding.get_by_id(finding_id)
    info = report(row.report_id)
    assert info is not None
    return info


def pair_of_report(report_id: int) -> AccountPair:
    return ReconcileReport.get_by_id(report_id).pair


def stream_pair(report_pair: AccountPair, stream: str) -> AccountPair:
    """The pair of accounts a stream's findings belong to: a report is filed under one source's pair, and a stream
    of another source (Cal.com's, in a report with Cliniko's) has its own pair with the same Stripe account."""
    system = source_system(stream)
    if system == report_pair.source_system:
        return report_pair
    found = (
        AccountPair.select()
        .where(
            (AccountPair.source_system == system)
            & (AccountPair.stripe_account == report_pair.stripe_account)
            & (AccountPair.stripe_livemode == report_pair.stripe_livemode)
        )
        .order_by(AccountPair.last_used_at.desc())
        .first()
    )
    return found or report_pair


def report_id_of(finding_id: int) -> int:
    return int(ReconcileFinding.get_by_id(finding_id).report_id)


def set_status(finding_id: int, status: FindingStatus, note: str = "") -> None:
    ReconcileFinding.update(status=status.value, note=note, updated_at=utcnow()).where(
        ReconcileFinding.id == finding_id
    ).execute()


def mark_intended(finding_ids: Sequence[int], note: str, *, who: str) -> list[Finding]:
    """Accept findings as they are: each is remembered with its fingerprint (a hash of the values compared), so
    later reports show it as accepted until either side's values change. The reports' counts are updated."""
    chosen = dict(zip(finding_ids, get_findings(finding_ids), strict=True))
    with database_proxy.atomic():
        for finding_id, finding in chosen.items():
            pair = stream_pair(ReconcileFinding.get_by_id(finding_id).report.pair, finding.stream)
            ReconcileIntent.insert(
                pair=pair,
                stream=finding.stream,
                key=finding.key,
                fingerprint=finding.fingerprint,
                note=note,
                marked_by=who,
                marked_at=utcnow(),
            ).on_conflict(
                conflict_target=[ReconcileIntent.pair, ReconcileIntent.stream, ReconcileIntent.key],
                update={
                    ReconcileIntent.fingerprint: finding.fingerprint,
                    ReconcileIntent.note: note,
                    ReconcileIntent.marked_by: who,
                    ReconcileIntent.marked_at: utcnow(),
                },
            ).execute()
            set_status(finding_id, FindingStatus.ACCEPTED, note)
        for report_id in {report_id_of(finding_id) for finding_id in chosen}:
            recount(report_id)
    return get_findings(list(chosen))


def recount(report_id: int) -> Counts:
    """A report's counts from its findings (after some were marked as intended)."""
    counts = Counts()
    rows = (
        ReconcileFinding.select(ReconcileFinding.stream, ReconcileFinding.type, ReconcileFinding.status, fn.COUNT(1))
        .where(ReconcileFinding.report == report_id)
        .group_by(ReconcileFinding.stream, ReconcileFinding.type, ReconcileFinding.status)
        .tuples()
    )
    for stream, kind, status, count in rows:
        if status == FindingStatus.ACCEPTED:
            counts.accepted += count
        else:
            per_type = counts.reported.setdefault(stream, {})
            per_type[kind] = per_type.get(kind, 0) + count
    report_row = ReconcileReport.get_by_id(report_id)
    report_row.counts = counts.to_json()
    if report_row.outcome in (ReportOutcome.CLEAN, ReportOutcome.FINDINGS):
        report_row.outcome = (ReportOutcome.FINDINGS if counts.total else ReportOutcome.CLEAN).value
    report_row.save()
    return counts


def export(report_id: int, *, csv_path: Path | None = None, html_path: Path | None = None) -> int:
    """Write the report's reported findings (not those marked as intended) as CSV and/or HTML; how many."""
    info = report(report_id)
    if info is None:
        raise ReconcileError(f"No reconciliation report {report_id}.")
    written = 0
    if csv_path is not None:
        with csv_path.open("w", encoding="utf-8", newline="") as out:
            written = write_csv(findings(report_id, reported_only=True), out)
    if html_path is not None:
        with html_path.open("w", encoding="utf-8") as out:
            written = write_html(info, findings(report_id, reported_only=True), out)
    return written


def report_html(report_id: int) -> str:
    """The report as one self-contained HTML page (what the window shows, prints or writes to PDF)."""
    info = report(report_id)
    if info is None:
        raise ReconcileError(f"No reconciliation report {report_id}.")
    page = io.StringIO()
    write_html(info, findings(report_id, reported_only=True), page)
    return page.getvalue()


def last_finished(pair: AccountPair | int | None = None) -> datetime | None:
    """When the newest report finished (naive UTC), for the Overview and the scheduler."""
    query = ReconcileReport.select(fn.MAX(ReconcileReport.finished_at))
    if pair is not None:
        query = query.where(ReconcileReport.pair == pair)
    return query.scalar()
