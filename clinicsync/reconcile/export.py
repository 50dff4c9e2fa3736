"""A report as CSV (one row per finding) and as one self-contained HTML page styled for print (the window's PDF
export prints this page with Qt's PDF writer). Pure: findings come in as an iterable and are written as they come,
so a large report is never held whole."""

from __future__ import annotations

import csv
import html
import re
from collections.abc import Iterable
from datetime import datetime
from typing import TextIO
from zoneinfo import ZoneInfo

from clinicsync.labels import severity_label, stream_source, stream_title, target_label
from clinicsync.reconcile.findings import (
    FINDING_TYPES,
    TYPE_WORDS,
    Finding,
    ReportInfo,
    ReportOutcome,
    fix_words,
    source_name,
)

CSV_HEADER = (
    "type",
    "stream",
    "severity",
    "source_id",
    "stripe_id",
    "field",
    "source_value",
    "stripe_value",
    "explanation",
    "suggested_fix",
)

# A spreadsheet runs a cell that starts with = @ + - as a formula; clinic data (a name typed as "=HYPERLINK(...)")
# must never become one. Numbers and phone numbers ("+61 491 570 156", "-5") are left as they are.
_FORMULA_START = ("=", "@", "\t", "\r")
_NUMBER_LIKE = re.compile(r"^[+-][\d\s().-]*$")


def _cell(value: str | None) -> str:
    if not value:
        return ""
    if value.startswith(_FORMULA_START) or (value[0] in "+-" and not _NUMBER_LIKE.match(value)):
        return "'" + value
    return value


def csv_row(finding: Finding) -> list[str]:
    suggested = fix_words(finding.suggested_fix, finding) if finding.suggested_fix else ""
    values = (
        finding.type.value,
        finding.stream,
        finding.severity.value,
        finding.source_id,
        finding.stripe_id,
        finding.field,
        finding.source_value,
        finding.stripe_value,
        finding.explanation,
        suggested,
    )
    return [_cell(value) for value in values]


def write_csv(findings: Iterable[Finding], out: TextIO) -> int:
    """Write the header and one row per finding (a duplicate is one extra Stripe object); how many rows."""
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_HEADER)
    rows = 0
    for finding in findings:
        writer.writerow(csv_row(finding))
        rows += 1
    return rows


# --- HTML --------------------------------------------------------------------------------------------------
_STYLE = """
@page { size: A4 landscape; margin: 12mm; }
body { font-family: "Segoe UI", "Helvetica Neue", Arial, sans-serif; font-size: 9.5pt; color: #111; margin: 0; }
h1 { font-size: 16pt; margin: 0 0 2pt 0; }
h2 { font-size: 12pt; margin: 14pt 0 4pt 0; page-break-after: avoid; }
p.meta { margin: 0 0 8pt 0; color: #444; }
table { border-collapse: collapse; width: 100%; margin-bottom: 6pt; }
thead { display: table-header-group; }
tr { page-break-inside: avoid; }
th, td { border: 0.5pt solid #999; padding: 2pt 4pt; text-align: left; vertical-align: top; }
th { background: #eee; }
td.n { text-align: right; }
td.value { font-family: "Consolas", "Menlo", monospace; word-break: break-all; }
.sev-high { font-weight: bold; color: #a00; }
.sev-medium { color: #a60; }
.badge { border: 0.5pt solid #a00; color: #a00; padding: 0 3pt; font-size: 8pt; }
.clean { color: #060; font-weight: bold; }
"""


# The attributes draw the grid where CSS is not read (Qt's own layout, for the PDF); browsers use the style.
_TABLE = '<table border="1" cellspacing="0" cellpadding="3">'


def _local(moment: datetime | None, zone: str) -> str:
    if moment is None:
        return "…"
    return moment.astimezone(ZoneInfo(zone)).strftime("%d %b %Y %H:%M")


def time_span(report: ReportInfo) -> str:
    """When both sides were read, in the clinic's time zone."""
    start = _local(report.started_at, report.time_zone)
    end = _local(report.finished_at, report.time_zone)
    same_day = report.finished_at is not None and start[:11] == end[:11]
    return f"{start} – {end[12:] if same_day else end} ({report.time_zone})"


def write_html(report: ReportInfo, findings: Iterable[Finding], out: TextIO) -> int:
    """The report as one HTML page (no scripts, no external files); findings grouped by type, as they come
    (the store yields them ordered by type). Returns how many findings were written."""
    e = html.escape
    mode = "" if report.livemode else ' <span class="badge">TEST MODE</span>'
    sources = list(dict.fromkeys(source_name(stream) for stream in report.streams)) or ["Cliniko"]
    out.write('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">')
    out.write(f"<title>Reconciliation report — {e(report.clinic_name)}</title><style>{_STYLE}</style></head><body>")
    out.write(f"<h1>Reconciliation report — {e(report.clinic_name)}{mode}</h1>")
    out.write(
        f'<p class="meta">{e(" and ".join(sources))} and Stripe ({e(report.stripe_name)}) compared '
        f"{e(time_span(report))}. "
        f"Report #{report.id}: {e('; '.join(stream_title(stream) for stream in report.streams))}.</p>"
    )
    _summary(report, out)
    written = 0
    current = None
    for finding in findings:
        if finding.type != current:
            if current is not None:
                out.write("</tbody></table>")
            current = finding.type
            out.write(f"<h2>{e(TYPE_WORDS[current])}</h2>")
            out.write(
                f"{_TABLE}<thead><tr><th>Severity</th><th>Stream</th><th>Record</th><th>Stripe</th><th>Field</th>"
                "<th>In the source</th><th>In Stripe</th><th>What it means</th><th>Suggested fix</th></tr></thead>"
                "<tbody>"
            )
        record = f"{e(finding.source_id)}<br>{e(finding.display_name)}" if finding.source_id else ""
        suggested = fix_words(finding.suggested_fix, finding) if finding.suggested_fix else ""
        out.write(
            f'<tr><td class="sev-{finding.severity.value}">{e(severity_label(finding.severity))}</td>'
            f"<td>{e(stream_source(finding.stream))}</td><td>{record}</td><td>{e(finding.stripe_id or '')}</td>"
            f"<td>{e(target_label(finding.field) if finding.field else '')}</td>"
            f'<td class="value">{e(finding.source_value or "")}</td>'
            f'<td class="value">{e(finding.stripe_value or "")}</td>'
            f"<td>{e(finding.explanation)}</td><td>{e(suggested)}</td></tr>"
        )
        written += 1
    if current is not None:
        out.write("</tbody></table>")
    out.write("</body></html>\n")
    return written


def _summary(report: ReportInfo, out: TextIO) -> None:
    e = html.escape
    counts = report.counts
    if report.outcome in (ReportOutcome.FAILED, ReportOutcome.CANCELLED, ReportOutcome.RUNNING):
        out.write(f"<p><b>This report is incomplete ({e(report.outcome)}).</b> {e(report.message)}</p>")
    elif counts.total == 0:
        out.write('<p class="clean">Both sides agree: nothing to report.</p>')
    out.write(f"{_TABLE}<thead><tr><th>Stream</th><th>Source records</th><th>Stripe objects</th>")
    out.write("".join(f"<th>{e(TYPE_WORDS[kind])}</th>" for kind in FINDING_TYPES) + "</tr></thead><tbody>")
    for stream in report.streams:
        per_type = counts.reported.get(stream, {})
        compared = report.compared.get(stream, {})
        out.write(
            f'<tr><td>{e(stream_source(stream))}</td><td class="n">{compared.get("source", "")}</td>'
            f'<td class="n">{compared.get("stripe", "")}</td>'
            + "".join(f'<td class="n">{per_type.get(kind, 0)}</td>' for kind in FINDING_TYPES)
            + "</tr>"
        )
    out.write("</tbody></table>")
    if counts.accepted:
        out.write(f'<p class="meta">{counts.accepted} finding(s) marked as intended earlier are not listed.</p>')
