"""Reconciliation reports in the store (schema v7), marks as intended, and the CSV and HTML exports."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from peewee import SqliteDatabase

from clinicsync.reconcile.export import CSV_HEADER, time_span, write_csv, write_html
from clinicsync.reconcile.findings import (
    Counts,
    Finding,
    FindingStatus,
    FindingType,
    FixKind,
    Reason,
    ReportInfo,
    ReportOutcome,
    Severity,
)
from clinicsync.store import migrations
from clinicsync.store import reconciliation as store
from clinicsync.store.db import open_database
from clinicsync.store.models import AccountPair, ReconcileFinding, ReconcileReport, SchemaVersion


@pytest.fixture
def db(tmp_path: Path) -> Iterator[SqliteDatabase]:
    database = open_database(tmp_path / "data" / "db.sqlite3")
    yield database
    database.close()


@pytest.fixture
def pair(db: SqliteDatabase) -> AccountPair:
    return AccountPair.create(
        uuid="uuid-1",
        source_system="cliniko",
        source_account="700000000000000001",
        source_name="Sandy Bay Physio & Co <Clinic>",
        stripe_account="acct_sandbox_clinic_a",
        stripe_name="Sandy Bay",
        stripe_livemode=False,
    )


def finding(kind: FindingType = FindingType.FIELD_DRIFT, n: int = 1, **values: object) -> Finding:
    base: dict[str, object] = {
        "type": kind,
        "stream": "cliniko.patients",
        "severity": Severity.MEDIUM,
        "reason": Reason.VALUE_CHANGED,
        "stripe_object": "customer",
        "source_id": str(100 + n),
        "stripe_id": f"cus_{n}",
        "explanation": f"finding {n}",
        "suggested_fix": FixKind.REPUSH,
        "fixes": (FixKind.REPUSH, FixKind.MARK_INTENDED),
        "field": "name",
        "source_value": "Ada",
        "stripe_value": '=HYPERLINK("http://x")',
        "display_name": "Ada <b>Lovelace</b>",
        "fingerprint": f"fp{n}",
    }
    base.update(values)
    return Finding(**base)  # type: ignore[arg-type]


def test_v7_creates_the_tables_and_running_it_again_changes_nothing(db: SqliteDatabase):
    assert migrations.current_version(db) == migrations.LATEST_VERSION >= 7
    tables = set(db.get_tables())
    assert {"reconcile_report", "reconcile_finding", "reconcile_intent"} <= tables
    migrations._v7_reconciliation(db)  # idempotent: as a re-run after a crash between the step and its version row
    SchemaVersion.delete().where(SchemaVersion.version >= 7).execute()  # v7 and every later step run again
    assert migrations.migrate(db) == migrations.LATEST_VERSION and set(db.get_tables()) == tables


def test_findings_are_stored_filtered_and_read_back(pair: AccountPair):
    report = store.start_report(pair, ["cliniko.patients"], trigger="cli", time_zone="Australia/Sydney")
    drift, missing = finding(n=1), finding(FindingType.MISSING_IN_STRIPE, n=2, severity=Severity.HIGH, field="")
    dup = finding(FindingType.DUPLICATE, n=3, source_id=None, related=("cus_keep", "cus_3"))
    store.add_findings(report, [drift, missing, dup])
    counts = Counts()
    for item in (drift, missing, dup):
        counts.add(item)
    store.finish_report(report, ReportOutcome.FINDINGS, counts, {"cliniko.patients": {"source": 3, "stripe": 4}})
    ordered = list(store.findings(report.id))
    assert [f.type for f in ordered] == [FindingType.MISSING_IN_STRIPE, FindingType.FIELD_DRIFT, FindingType.DUPLICATE]
    assert ordered[2].related == ("cus_keep", "cus_3") and ordered[2].kept_id == "cus_keep"
    assert [f.id for f in store.findings(report.id, types=["duplicate"])] == [ordered[2].id]
    assert store.finding_count(report.id, severities=["high"]) == 1
    assert [f.stripe_id for f in store.findings(report.id, search="cus_3")] == ["cus_3"]
    assert store.finding_count(report.id, search="LOVELACE") == 3
    assert len(list(store.findings(report.id, limit=1, offset=1))) == 1
    info = store.report()
    assert info is not None and info.id == report.id and info.counts.total == 3
    assert info.clinic_name == "Sandy Bay Physio & Co <Clinic>" and info.time_zone == "Australia/Sydney"
    assert info.compared == {"cliniko.patients": {"source": 3, "stripe": 4}}


def test_pages_seek_past_the_last_row_and_together_are_the_whole_filtered_list(pair: AccountPair):
    report = store.start_report(pair, ["cliniko.patients", "cliniko.products"], trigger="cli")
    kinds = (FindingType.DUPLICATE, FindingType.FIELD_DRIFT, FindingType.MISSING_IN_STRIPE)
    levels = tuple(Severity)
    streams = ("cliniko.products", "cliniko.patients")
    store.add_findings(
        report,
        [finding(kinds[n % 3], n=n, severity=levels[n % 2 + n % 3 // 2], stream=streams[n % 2]) for n in range(47)],
    )
    for filters in ({}, {"streams": ["cliniko.products"]}, {"types": ["field_drift"], "search": "cus_1"}):
        pages, cursor = [], None
        while True:
            page, cursor = store.findings_page(report.id, cursor, 5, **filters)
            pages.append(page)
            if cursor is None:
                break
        paged = [f.id for page in pages for f in page]
        assert paged == [f.id for f in store.findings(report.id, **filters)], filters
        assert all(len(page) == 5 for page in pages[:-1]) and len(pages[-1]) <= 5


def test_marking_as_intended_remembers_the_fingerprint_and_recounts(pair: AccountPair):
    report = store.start_report(pair, ["cliniko.patients"], trigger="cli")
    store.add_findings(report, [finding(n=1), finding(n=2)])
    counts = Counts()
    counts.add(finding(n=1))
    counts.add(finding(n=2))
    store.finish_report(report, ReportOutcome.FINDINGS, counts, {})
    first = next(store.findings(report.id))
    (marked,) = store.mark_intended([first.id or 0], "staff prefer the short name", who="tester")
    assert marked.status == FindingStatus.ACCEPTED and marked.note == "staff prefer the short name"
    assert store.intents(pair, "cliniko.patients") == {first.key: ("fp1", "staff prefer the short name")}
    info = store.report(report.id)
    assert info is not None and (info.counts.total, info.counts.accepted) == (1, 1)
    assert [f.source_id for f in store.findings(report.id, reported_only=True)] == ["102"]
    store.mark_intended([first.id or 0], "again", who="tester")  # a second mark replaces the first
    assert store.intents(pair, "cliniko.patients")[first.key] == ("fp1", "again")


def test_unknown_findings_are_named(pair: AccountPair):
    with pytest.raises(store.ReconcileError, match="No finding 999"):
        store.get_findings([999])


def test_only_the_newest_reports_are_kept(pair: AccountPair):
    for _ in range(store.KEEP_REPORTS + 3):
        report = store.start_report(pair, ["cliniko.patients"], trigger="cli")
        store.add_findings(report, [finding()])
        store.finish_report(report, ReportOutcome.FINDINGS, Counts(), {})
    assert ReconcileReport.select().count() == store.KEEP_REPORTS
    assert ReconcileFinding.select().count() == store.KEEP_REPORTS


def test_export_writes_csv_and_html_files(pair: AccountPair, tmp_path: Path):
    report = store.start_report(pair, ["cliniko.patients"], trigger="cli")
    store.add_findings(report, [finding(n=1), finding(n=2, status=FindingStatus.ACCEPTED)])
    store.finish_report(report, ReportOutcome.FINDINGS, Counts(reported={"cliniko.patients": {"field_drift": 1}}), {})
    assert store.export(report.id, csv_path=tmp_path / "r.csv", html_path=tmp_path / "r.html") == 1
    rows = list(csv.reader((tmp_path / "r.csv").open(encoding="utf-8", newline="")))
    assert rows[0] == list(CSV_HEADER) and len(rows) == 2  # accepted findings are not reported
    assert "Sandy Bay Physio &amp; Co &lt;Clinic&gt;" in (tmp_path / "r.html").read_text(encoding="utf-8")
    assert store.report_html(report.id) == (tmp_path / "r.html").read_text(encoding="utf-8")


# --- the exports on their own --------------------------------------------------------------------------------
def info(**values: object) -> ReportInfo:
    base: dict[str, object] = {
        "id": 7,
        "clinic_name": "Sandy Bay Physio",
        "stripe_name": "Sandy Bay",
        "livemode": False,
        "started_at": datetime(2025, 3, 1, 22, 55, tzinfo=UTC),
        "finished_at": datetime(2025, 3, 1, 23, 5, tzinfo=UTC),
        "time_zone": "Australia/Melbourne",
        "streams": ("cliniko.patients",),
        "outcome": "findings",
        "counts": Counts(reported={"cliniko.patients": {"field_drift": 2}}),
    }
    base.update(values)
    return ReportInfo(**base)  # type: ignore[arg-type]


def test_csv_has_the_exact_header_every_column_and_no_formulas():
    out = io.StringIO()
    rows = [
        finding(n=1),
        finding(n=2, stripe_value="+61 491 570 156", source_value="-5"),
        finding(FindingType.DUPLICATE, n=3, source_id=None, field="", source_value=None, stripe_value=None,
                related=("cus_keep",), suggested_fix=FixKind.ARCHIVE),
    ]  # fmt: skip
    assert write_csv(rows, out) == 3
    lines = out.getvalue().splitlines()
    assert (
        lines[0] == "type,stream,severity,source_id,stripe_id,field,source_value,stripe_value,explanation,suggested_fix"
    )
    parsed = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert parsed[0]["stripe_value"] == '\'=HYPERLINK("http://x")'  # a spreadsheet shows it, never runs it
    assert (parsed[1]["stripe_value"], parsed[1]["source_value"]) == ("+61 491 570 156", "-5")
    assert parsed[0]["suggested_fix"] == "Send it again from Cliniko (the next sync does it)"
    assert parsed[2]["suggested_fix"] == "Mark cus_3 in Stripe as a duplicate of cus_keep"
    assert parsed[2]["source_id"] == "" and all(set(row) == set(CSV_HEADER) for row in parsed)


def test_html_is_one_escaped_page_for_print_with_the_clinic_and_the_time_span():
    out = io.StringIO()
    assert write_html(info(clinic_name="A & B <Physio>"), [finding(n=1), finding(n=2)], out) == 2
    page = out.getvalue()
    assert "A &amp; B &lt;Physio&gt;" in page and "<Physio>" not in page
    assert "02 Mar 2025 09:55 – 10:05 (Australia/Melbourne)" in page  # the clinic's time, DST-correct (AEDT)
    assert "Ada &lt;b&gt;Lovelace&lt;/b&gt;" in page and "@page" in page and "TEST MODE" in page
    assert "<script" not in page and "http" not in page.replace('"http://x"', "").replace("http://x", "")
    assert page.count("<h2>Field drift</h2>") == 1


def test_a_clean_report_and_an_unfinished_one_say_so():
    clean = io.StringIO()
    write_html(info(counts=Counts(accepted=2), outcome="clean"), [], clean)
    assert "nothing to report" in clean.getvalue() and "2 finding(s) marked as intended" in clean.getvalue()
    failed = io.StringIO()
    write_html(info(outcome="failed", message="Stripe could not be reached"), [], failed)
    assert "incomplete" in failed.getvalue() and "Stripe could not be reached" in failed.getvalue()
    assert time_span(info(finished_at=datetime(2025, 3, 2, 14, 0, tzinfo=UTC))).startswith("02 Mar 2025 09:55 – 03 Mar")
