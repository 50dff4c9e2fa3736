"""`clinicsync reconcile …`: compare Cliniko and Cal.com with Stripe in full, list what differs, fix it or accept it.

clinicsync reconcile [--stream S] [--csv FILE] [--html FILE]   compare; exit 0 when nothing to report, 1 if any
clinicsync reconcile list [--report N] [--type T] [--stream S] [--all]
clinicsync reconcile fix ID… [--fix KIND] [--to STRIPE_ID] [--yes]   (or --all-suggested [--type T] [--stream S])
clinicsync reconcile intend ID… --note TEXT
clinicsync reconcile export [--report N] [--csv FILE] [--html FILE]
clinicsync reconcile reports
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clinicsync.reconcile.findings import (
    FINDING_TYPES,
    FIX_KINDS,
    Finding,
    FindingStatus,
    FixKind,
    fix_words,
)

Printer = Callable[[str], None]


def add_parser(sub: Any) -> None:
    reconcile = sub.add_parser(
        "reconcile",
        help="compare Cliniko and Cal.com with Stripe in full; report what differs (exit 1 if anything does)",
    )
    reconcile.add_argument(
        "--stream", help="only this stream, e.g. calcom.bookings (default: every enabled one of the connected sources)"
    )
    reconcile.add_argument("--csv", type=Path, help="also write the findings to this CSV file")
    reconcile.add_argument("--html", type=Path, help="also write the report to this HTML file (styled for print)")
    actions = reconcile.add_subparsers(dest="reconcile_action")

    listing = actions.add_parser("list", help="the findings of the newest report (or --report N)")
    _filters(listing)
    listing.add_argument("--all", action="store_true", help="also those marked as intended")

    fix = actions.add_parser("fix", help="carry out findings' suggested fix (or --fix KIND)")
    fix.add_argument("ids", nargs="*", type=_finding_id, help="finding numbers, as `reconcile list` shows them")
    fix.add_argument("--all-suggested", action="store_true", help="every open finding of the report (filters apply)")
    _filters(fix)
    fix.add_argument("--fix", dest="fix_kind", choices=FIX_KINDS, help="this fix instead of the suggested one")
    fix.add_argument("--to", dest="target", help="link: the Stripe object to link the record to")
    fix.add_argument("--note", default="", help="mark_intended: why")
    fix.add_argument("--yes", action="store_true", help="confirm deletions (they cannot be undone)")

    intend = actions.add_parser("intend", help="mark findings as intended: not reported again unless something changes")
    intend.add_argument("ids", nargs="+", type=_finding_id)
    intend.add_argument("--note", required=True, help="why it is intended")

    export = actions.add_parser("export", help="write a report as CSV and/or HTML")
    export.add_argument("--report", type=int, help="report number (default: the newest)")
    export.add_argument("--csv", dest="export_csv", type=Path)
    export.add_argument("--html", dest="export_html", type=Path)

    actions.add_parser("reports", help="the reports kept, newest first")


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--report", type=int, help="report number (default: the newest)")
    parser.add_argument("--type", dest="only_type", choices=FINDING_TYPES)
    parser.add_argument("--stream", dest="only_stream")


def _finding_id(text: str) -> int:
    try:
        return int(text.strip().removeprefix("#"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finding number; `clinicsync reconcile list`") from None


def run(args: argparse.Namespace, out: Printer, err: Printer) -> int:
    from clinicsync.app import bootstrap
    from clinicsync.store.reconciliation import ReconcileError

    ctx = bootstrap()
    handler = {
        None: _reconcile,
        "list": _list,
        "fix": _fix,
        "intend": _intend,
        "export": _export,
        "reports": _reports,
    }[args.reconcile_action]
    try:
        return int(handler(ctx, args, out, err))
    except ReconcileError as exc:
        from clinicsync.cli import EXIT_CONFIG

        err(str(exc))
        return EXIT_CONFIG


def _reconcile(ctx: Any, args: argparse.Namespace, out: Printer, err: Printer) -> int:
    from clinicsync.cli import _EXIT_OF_FAILURE, EXIT_ATTENTION, EXIT_OK
    from clinicsync.store import reconciliation
    from clinicsync.sync.reconcile_run import run_reconcile

    result = run_reconcile(
        ctx.paths, ctx.settings, ctx.secrets, streams=[args.stream] if args.stream else None, trigger="cli"
    )
    counts = result.counts
    out(f"Reconciliation report #{result.report_id}: {counts.total or 'nothing'} to report")
    for stream in result.streams:
        if stream.failure_kind:
            out(f"  {stream.stream}: not compared in full — {stream.message}")
            continue
        out(f"  {stream.stream}: {stream.source_records} source records, {stream.stripe_objects} Stripe objects")
        for kind, count in counts.reported.get(stream.stream, {}).items():
            out(f"    {kind:<20} {count}")
    if counts.accepted:
        out(f"  {counts.accepted} marked as intended earlier (not reported)")
    for path, kind in ((args.csv, "csv_path"), (args.html, "html_path")):
        if path is not None:
            reconciliation.export(result.report_id, **{kind: path})
            out(f"  written: {path}")
    if counts.total:
        out("List them: clinicsync reconcile list · fix one: clinicsync reconcile fix ID · accept one: … intend ID")
    code = max((_EXIT_OF_FAILURE.get(s.failure_kind, EXIT_ATTENTION) for s in result.failed), default=EXIT_OK)
    return max(code, EXIT_ATTENTION if counts.total else EXIT_OK)


def _report_id(args: argparse.Namespace) -> int:
    from clinicsync.store import reconciliation

    info = reconciliation.report(args.report)
    if info is None:
        which = f"report {args.report}" if args.report else "reconciliation report yet"
        raise reconciliation.ReconcileError(f"No {which}; run `clinicsync reconcile`.")
    return info.id


def _selected(args: argparse.Namespace, *, include_accepted: bool = False, statuses: tuple[str, ...] = ()) -> Any:
    from clinicsync.store import reconciliation

    return reconciliation.findings(
        _report_id(args),
        types=[args.only_type] if args.only_type else [],
        streams=[args.only_stream] if args.only_stream else [],
        statuses=statuses,
        reported_only=not include_accepted,
    )


def describe(finding: Finding) -> list[str]:
    """A finding in a few lines, for the terminal."""
    record = f"{finding.source_id} ({finding.display_name})" if finding.source_id else "-"
    lines = [
        f"#{finding.id}  {finding.type.value}  {finding.severity.value}  {finding.stream}  record {record}  "
        f"→ {finding.stripe_object} {finding.stripe_id or '-'}"
        + ("" if finding.status == FindingStatus.OPEN else f"  [{finding.status.value}]")
    ]
    if finding.field:
        lines.append(f"     {finding.field}: source {finding.source_value!r}, Stripe {finding.stripe_value!r}")
    lines.append(f"     {finding.explanation}")
    if finding.suggested_fix:
        others = [fix.value for fix in finding.fixes if fix != finding.suggested_fix]
        also = f"; also: {', '.join(others)}" if others else ""
        lines.append(f"     fix: {fix_words(finding.suggested_fix, finding)} [{finding.suggested_fix.value}]{also}")
    if finding.note:
        lines.append(f"     note: {finding.note}")
    return lines


def _list(ctx: Any, args: argparse.Namespace, out: Printer, err: Printer) -> int:
    from clinicsync.cli import EXIT_OK

    shown = 0
    for finding in _selected(args, include_accepted=args.all):
        for line in describe(finding):
            out(line)
        shown += 1
    if not shown:
        out("Nothing to report.")
    return EXIT_OK


def _fix(ctx: Any, args: argparse.Namespace, out: Printer, err: Printer) -> int:
    from clinicsync.cli import EXIT_ATTENTION, EXIT_CONFIG, EXIT_OK
    from clinicsync.sync.reconcile_fix import FixRequest, apply_fixes

    kind = FixKind(args.fix_kind) if args.fix_kind else None
    ids = list(args.ids)
    if args.all_suggested:
        ids += [f.id for f in _selected(args, statuses=(FindingStatus.OPEN.value,)) if f.id not in ids]
    if not ids:
        err("Name the findings to fix (numbers from `clinicsync reconcile list`), or --all-suggested.")
        return EXIT_CONFIG
    requests = [FixRequest(finding_id, kind, args.target, args.note) for finding_id in ids]
    outcomes = apply_fixes(ctx.paths, ctx.settings, ctx.secrets, requests, confirmed=args.yes)
    code = EXIT_OK
    for outcome in outcomes:
        fix = outcome.fix.value if outcome.fix else "-"
        state = outcome.status.value if outcome.status else "not done"
        out(f"#{outcome.finding_id} {fix}: {state} — {outcome.message}")
        if outcome.status is None:
            code = max(code, EXIT_CONFIG)
        elif outcome.status == FindingStatus.FAILED:
            code = max(code, EXIT_ATTENTION)
    if any(o.status == FindingStatus.SCHEDULED for o in outcomes):
        out("The next sync carries out the scheduled ones; reconcile after it to check.")
    return code


def _intend(ctx: Any, args: argparse.Namespace, out: Printer, err: Printer) -> int:
    from clinicsync.cli import EXIT_CONFIG, EXIT_OK
    from clinicsync.store import reconciliation
    from clinicsync.store.mappings import current_user

    if not args.note.strip():
        err("Say why it is intended (--note), so the next person knows.")
        return EXIT_CONFIG
    for finding in reconciliation.mark_intended(args.ids, args.note.strip(), who=current_user()):
        out(
            f"#{finding.id} marked as intended: not reported again unless {finding.source_id or finding.stripe_id} "
            "changes on either side."
        )
    return EXIT_OK


def _export(ctx: Any, args: argparse.Namespace, out: Printer, err: Printer) -> int:
    from clinicsync.cli import EXIT_CONFIG, EXIT_OK
    from clinicsync.store import reconciliation

    if args.export_csv is None and args.export_html is None:
        err("Say where: --csv FILE and/or --html FILE.")
        return EXIT_CONFIG
    report_id = _report_id(args)
    count = reconciliation.export(report_id, csv_path=args.export_csv, html_path=args.export_html)
    out(f"Report #{report_id}: {count} finding(s) written.")
    return EXIT_OK


def _reports(ctx: Any, args: argparse.Namespace, out: Printer, err: Printer) -> int:
    from clinicsync.cli import EXIT_OK
    from clinicsync.store import reconciliation

    rows = reconciliation.reports()
    if not rows:
        out("No reconciliation yet; run `clinicsync reconcile`.")
    for info in rows:
        when = info.started_at.strftime("%Y-%m-%d %H:%M UTC")
        accepted = f", {info.counts.accepted} accepted" if info.counts.accepted else ""
        out(f"#{info.id}  {when}  {info.outcome}  {info.counts.total} to report{accepted}  ({', '.join(info.streams)})")
    return EXIT_OK
