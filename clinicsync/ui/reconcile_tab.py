"""Reconciliation: compare Cliniko (and Cal.com) with Stripe in full, and deal with what differs.

"Run reconciliation now" and every fix are jobs of the runner (never the GUI thread): their progress and results
arrive through the bridge's signals. The findings table is a lazy model that reads the stored report a page at a
time with the chosen filters, so a report of 100,000 findings opens as fast as one of ten. Exports write the
store's CSV and print-styled HTML off the GUI thread; the PDF is that same HTML laid out on A4 by Qt's own PDF
writer (Qt may only paint on the GUI thread). Words come from clinicsync.labels: no identifiers are shown.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from PySide6.QtCore import QMarginsF, QModelIndex, QPersistentModelIndex, QPoint, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QPageLayout, QPageSize, QPdfWriter, QTextDocument
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMenu,
    QMessageBox,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from clinicsync import labels
from clinicsync.labels import plural
from clinicsync.reconcile.findings import (
    FINDING_TYPES,
    SEVERITIES,
    Finding,
    FindingStatus,
    FindingType,
    FixKind,
    Reason,
    ReportInfo,
    ReportOutcome,
    Severity,
    fix_words,
)
from clinicsync.secrets import SYNC_SECRETS, SecretStoreError
from clinicsync.store import reconciliation as report_store
from clinicsync.store.reconciliation import FindingCursor
from clinicsync.streams import STREAMS
from clinicsync.sync.reconcile_fix import FixOutcome, FixRequest
from clinicsync.sync.runner import Job, JobOutcome, read_credentials
from clinicsync.ui.background import Outcome, run_in_background
from clinicsync.ui.context import UiContext
from clinicsync.ui.layout import ColumnShares, fit_header_titles, long_table
from clinicsync.ui.models import PagedTableModel, clean_text, local_time, severity_color

SEARCH_DELAY_MS = 300  # a pause in typing: each search is a query over the report's findings
PAGE_SIZE = 200
# How the table's width is shared (by weight): the values compared get the room.
COLUMN_SHARES = {0: 5, 1: 14, 2: 13, 3: 14, 4: 10, 5: 8, 6: 13, 7: 13, 8: 9}
REPORTS_LISTED = 20  # the store keeps the newest 20 reports of a pair
LONG_PDF_FINDINGS = 5_000  # Qt lays a PDF out on the GUI thread: beyond this, ask first

# Runner failures, in the window's words (the message says the rest).
BUSY_TEXT = "A sync or a reconciliation is already waiting to start; try again when it has started."
PAUSED_FIX_TEXT = "Syncing is paused, so fixes are not sent. Resume syncing (tray menu or Overview) to apply it."


# --- the findings table ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FindingFilter:
    """What the table shows of one report."""

    report_id: int
    types: tuple[str, ...] = ()
    streams: tuple[str, ...] = ()
    severities: tuple[str, ...] = ()
    with_accepted: bool = False
    search: str = ""

    def store_args(self) -> dict[str, Any]:
        return {
            "types": self.types,
            "streams": self.streams,
            "severities": self.severities,
            "reported_only": not self.with_accepted,
            "search": self.search,
        }


def record_text(finding: Finding) -> str:
    """The record a finding is about, as a person knows it: its name, else its id, else the Stripe object."""
    return clean_text(finding.display_name) or clean_text(finding.source_id) or clean_text(finding.stripe_id)


def field_text(finding: Finding) -> str:
    return labels.target_label(finding.field) if finding.field else ""


def status_text(finding: Finding) -> str:
    return labels.FINDING_STATUS_LABELS.get(finding.status.value, finding.status.value)


class FindingsModel(PagedTableModel[Finding, FindingCursor]):
    """One report's findings, filtered, a page at a time (each page seeks past the last one's final row)."""

    columns = (
        "Severity",
        "Finding",
        "Records",
        "Record",
        "Stripe id",
        "Field",
        "Source says",
        "Stripe says",
        "Status",
    )
    SEVERITY, TYPE, STREAM, RECORD, STRIPE, FIELD, SOURCE_VALUE, STRIPE_VALUE, STATUS = range(9)

    def __init__(self, page_size: int = PAGE_SIZE, parent: Any = None) -> None:
        super().__init__(None, page_size, parent)
        self.filter: FindingFilter | None = None

    def pack_row(self, row: Finding) -> tuple[Any, ...]:
        return pack_finding(row)

    def unpack_row(self, values: tuple[Any, ...]) -> Finding:
        return unpack_finding(values)

    page_loaded = Signal()  # after each page fetched as the view scrolls (the last one may be empty)

    def fetchMore(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> None:  # noqa: B008
        super().fetchMore(parent)
        self.page_loaded.emit()

    def show(self, finding_filter: FindingFilter | None) -> None:
        self.filter = finding_filter
        self.set_loader(None if finding_filter is None else _finding_loader(finding_filter))

    def cell(self, finding: Finding, column: int, role: int) -> Any:
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(finding, column)
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(finding, column)
        if role == Qt.ItemDataRole.ForegroundRole and column == self.SEVERITY:
            return severity_color({"high": "failed", "medium": "attention"}.get(finding.severity.value, ""))
        if role == Qt.ItemDataRole.ForegroundRole and column == self.STATUS:
            return severity_color("failed" if finding.status == FindingStatus.FAILED else "")
        return None

    def _display(self, finding: Finding, column: int) -> str:
        values: dict[int, Callable[[], str]] = {
            self.SEVERITY: lambda: labels.severity_label(finding.severity.value),
            self.TYPE: lambda: labels.finding_type_label(finding.type.value),
            self.STREAM: lambda: labels.stream_source(finding.stream),
            self.RECORD: lambda: record_text(finding),
            self.STRIPE: lambda: clean_text(finding.stripe_id),
            self.FIELD: lambda: field_text(finding),
            self.SOURCE_VALUE: lambda: clean_text(finding.source_value) if finding.field else "",
            self.STRIPE_VALUE: lambda: clean_text(finding.stripe_value) if finding.field else "",
            self.STATUS: lambda: status_text(finding),
        }
        return values[column]()

    def _tooltip(self, finding: Finding, column: int) -> str | None:
        text = self._display(finding, column)
        lines = [text] if text else []
        if column == self.RECORD and finding.source_id:
            lines.append(f"{labels.record_words(finding.stream)} {clean_text(finding.source_id)}")
        if column in (self.TYPE, self.RECORD):
            lines.append(clean_text(finding.explanation, 1_000))
        if column == self.STATUS and finding.note:
            lines.append(clean_text(labels.for_gui(finding.note), 1_000))
        return "\n".join(lines) or None


# A finding's enum fields, held as their plain values in the table (see PackedRows: an enum member is an object
# the garbage collector watches, and so is a tuple holding one).
_FINDING_ENUMS: dict[str, Callable[[str], Any]] = {
    "type": FindingType,
    "severity": Severity,
    "reason": Reason,
    "suggested_fix": FixKind,
    "status": FindingStatus,
}
_FINDING_FIELDS = tuple(field.name for field in dataclasses.fields(Finding))


def pack_finding(finding: Finding) -> tuple[Any, ...]:
    """A finding as a plain tuple of str, int, None and tuples of str (its enums by value)."""
    values = []
    for name in _FINDING_FIELDS:
        value = getattr(finding, name)
        if name == "fixes":
            value = tuple(kind.value for kind in value)
        elif isinstance(value, Enum):
            value = value.value
        values.append(value)
    return tuple(values)


def unpack_finding(values: tuple[Any, ...]) -> Finding:
    fields = dict(zip(_FINDING_FIELDS, values, strict=True))
    for name, kind in _FINDING_ENUMS.items():
        if fields[name] is not None:
            fields[name] = kind(fields[name])
    fields["fixes"] = tuple(FixKind(value) for value in fields["fixes"])
    return Finding(**fields)


def _finding_loader(
    finding_filter: FindingFilter,
) -> Callable[[FindingCursor | None, int], tuple[list[Finding], FindingCursor | None]]:
    def load(cursor: FindingCursor | None, limit: int) -> tuple[list[Finding], FindingCursor | None]:
        return report_store.findings_page(finding_filter.report_id, cursor, limit, **finding_filter.store_args())

    return load


# --- words ---------------------------------------------------------------------------------------------------
def report_choice_text(report: ReportInfo) -> str:
    """A report in the history list: when, and what it found."""
    when = local_time(report.started_at.replace(tzinfo=None))
    stamp = f"{when:%d %b %Y %H:%M}" if when else ""
    outcome = labels.REPORT_OUTCOME_LABELS.get(report.outcome, report.outcome)
    if report.outcome in (ReportOutcome.FINDINGS, ReportOutcome.CLEAN) and report.counts.total:
        outcome = plural(report.counts.total, "finding")
    return f"{stamp} — {outcome}"


def report_summary(report: ReportInfo | None) -> str:
    if report is None:
        return (
            "No reconciliation yet. “Run reconciliation now” reads both sides in full and lists every record that "
            "is missing, orphaned, duplicated or different in Stripe, with a fix for each."
        )
    compared = "; ".join(
        f"{plural(values.get('source', 0), labels.record_words(stream))} with Stripe's "
        f"{labels.stripe_object_words(_stripe_object(stream), values.get('stripe', 0))}"
        for stream, values in report.compared.items()
    )
    outcome = labels.REPORT_OUTCOME_LABELS.get(report.outcome, report.outcome)
    parts = [f"{outcome}."]
    for stream in report.streams:  # counts per stream and type, in the order reports list types
        per_type = report.counts.reported.get(stream, {})
        found = [f"{labels.finding_type_label(k)}: {per_type[k]:,}" for k in FINDING_TYPES if per_type.get(k)]
        if found:
            parts.append(f"{labels.stream_source(stream)} — {', '.join(found)}.")
    if report.counts.accepted:
        parts.append(f"{plural(report.counts.accepted, 'finding')} marked as intended earlier.")
    if compared:
        parts.append(f"Compared {compared}.")
    if report.message and report.outcome in (ReportOutcome.FAILED, ReportOutcome.CANCELLED):
        parts.append(labels.sentence(labels.for_gui(report.message)))
    return " ".join(parts)


def _stripe_object(stream: str) -> str:
    known = STREAMS.get(stream)
    return known.stripe_object if known is not None else "object"


def confirm_text(finding: Finding, kind: FixKind, target: str | None = None) -> str:
    """What a fix will do, in plain words, for the confirmation."""
    what = _fix_label(finding, kind, target)
    record = record_text(finding)
    about = labels.record_words(finding.stream) if finding.source_id else "Stripe object"
    lines = [f"{what}.", "", f"{labels.finding_type_label(finding.type.value)}: {about} {record}."]
    lines.append(clean_text(finding.explanation, 600))
    if kind == FixKind.DELETE:
        lines += ["", "Deleting cannot be undone. It is only done if the customer has no payments or invoices."]
    elif kind == FixKind.REPUSH:
        lines += ["", "Nothing changes in Stripe until the next sync."]
    elif kind in (FixKind.LINK, FixKind.ARCHIVE, FixKind.DEACTIVATE):
        lines += ["", "Stripe is changed right away (what cannot be finished now, the next sync finishes)."]
    return "\n".join(lines)


def _fix_label(finding: Finding, kind: FixKind, target: str | None = None) -> str:
    if kind == FixKind.LINK and target:
        return f"Link the {labels.record_words(finding.stream)} to {target}"
    return fix_words(kind, finding)


def fix_outcome_text(outcome: FixOutcome) -> str:
    """What became of a fix, in words (the message is not capitalised: it may start with a Stripe id)."""
    message = labels.for_gui(outcome.message).rstrip(".")
    if outcome.status is None:
        return f"Not done: {message}."
    if outcome.status == FindingStatus.FAILED:
        return f"The fix failed: {message}."
    if outcome.status == FindingStatus.SCHEDULED:  # "the next sync sends it again", "queued: …"
        return f"Scheduled: {message.removeprefix('queued: ')}."
    return f"Done: {message}."


# --- dialogs (injectable: tests answer without a modal dialog) ------------------------------------------------
def confirm_dialog(parent: QWidget, title: str, text: str, action: str) -> bool:
    box = QMessageBox(QMessageBox.Icon.Question, title, text, QMessageBox.StandardButton.NoButton, parent)
    apply = box.addButton(action, QMessageBox.ButtonRole.AcceptRole)
    box.addButton("Cancel", QMessageBox.ButtonRole.RejectRole)
    box.exec()
    return box.clickedButton() is apply


def note_dialog(parent: QWidget, text: str) -> str | None:
    note, ok = QInputDialog.getText(parent, "Mark as intended", text)
    return note if ok else None


def save_dialog(parent: QWidget, title: str, suggested: str, file_filter: str) -> str:
    path, _ = QFileDialog.getSaveFileName(parent, title, suggested, file_filter)
    return path


def write_pdf(html: str, path: Path, title: str = "Reconciliation report") -> None:
    """Lay the report's HTML out on A4 (landscape, as its print style asks) and write it as PDF. Qt paints on the
    GUI thread only; the HTML is made off it."""
    writer = QPdfWriter(str(path))
    writer.setTitle(title)
    writer.setCreator("ClinicSync")
    writer.setPageLayout(
        QPageLayout(
            QPageSize(QPageSize.PageSizeId.A4),
            QPageLayout.Orientation.Landscape,
            QMarginsF(12, 12, 12, 12),
            QPageLayout.Unit.Millimeter,
        )
    )
    document = QTextDocument()
    document.setHtml(html)
    document.print_(writer)


# --- the tab ---------------------------------------------------------------------------------------------------
class ReconcileTab(QWidget):
    """The latest report (and earlier ones), its findings with filters and search, a fix for each, and exports."""

    report_shown = Signal(int)  # report id (0: none)
    fixes_done = Signal(object)  # tuple[FixOutcome, ...]
    exported = Signal(str, str)  # kind (csv, html, pdf), path; "" path: it failed (the message says why)

    def __init__(self, ui: UiContext, parent: QWidget | None = None, *, page_size: int = PAGE_SIZE) -> None:
        super().__init__(parent)
        self.setObjectName("reconcileTab")
        self._ui = ui
        self._loaded_app = ui.app
        self.confirm: Callable[[QWidget, str, str, str], bool] = confirm_dialog
        self.ask_note: Callable[[QWidget, str], str | None] = note_dialog
        self.choose_file: Callable[[QWidget, str, str, str], str] = save_dialog
        self.reports: list[ReportInfo] = []
        self.run_job: Job | None = None
        self.fix_job: Job | None = None
        self._step = ""  # the running reconciliation's current step, in words
        self._counted: tuple[FindingFilter, int] | None = None  # the shown filter's total, while it is shown
        self.model = FindingsModel(page_size, self)
        self._search_timer = QTimer(self, singleShot=True, interval=SEARCH_DELAY_MS)
        self._search_timer.timeout.connect(self.apply_filters)
        self._build()
        ui.bridge.job_started.connect(self._on_job_started)
        ui.bridge.job_progress.connect(self._on_job_progress)
        ui.bridge.job_finished.connect(self._on_job_finished)
        self.reload()

    # --- layout -----------------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.run_button = QPushButton("Run reconciliation now", self, objectName="runReconciliation")
        self.run_button.setToolTip(
            "Read the clinic's records and Stripe in full and list every difference (nothing is changed)"
        )
        self.run_button.clicked.connect(self.run_now)
        self.cancel_button = QPushButton("Cancel", self, objectName="cancelReconciliation", enabled=False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QLabel(self, objectName="reconcileProgress", wordWrap=True)
        self.progress.setTextFormat(Qt.TextFormat.PlainText)
        top = QHBoxLayout()
        top.addWidget(self.run_button)
        top.addWidget(self.cancel_button)
        top.addWidget(self.progress, 1)

        self.report_picker = QComboBox(self, objectName="reportPicker")
        self.report_picker.setToolTip("Earlier reports are kept, the newest 20")
        self.report_picker.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.report_picker.currentIndexChanged.connect(lambda _i: self._show_report())
        picker_row = QHBoxLayout()
        picker_row.addWidget(QLabel("Report:", self))
        picker_row.addWidget(self.report_picker)
        picker_row.addStretch(1)
        self.summary = QLabel(self, objectName="reconcileSummary", wordWrap=True)
        self.summary.setTextFormat(Qt.TextFormat.PlainText)

        self.stream_filter = QComboBox(self, objectName="streamFilter")
        self.type_filter = QComboBox(self, objectName="typeFilter")
        self.type_filter.addItem("All kinds of finding", "")
        for kind in FINDING_TYPES:
            self.type_filter.addItem(labels.finding_type_label(kind), kind)
        self.severity_filter = QComboBox(self, objectName="severityFilter")
        self.severity_filter.addItem("Any severity", "")
        for level in SEVERITIES:
            self.severity_filter.addItem(labels.severity_label(level), level)
        self.accepted_box = QCheckBox("Show marked as intended", self, objectName="showAccepted")
        self.search = QLineEdit(self, objectName="reconcileSearch", clearButtonEnabled=True)
        self.search.setPlaceholderText("Search name, record id, Stripe id…")
        self.search.textChanged.connect(lambda _text: self._search_timer.start())
        for combo in (self.stream_filter, self.type_filter, self.severity_filter):
            combo.currentIndexChanged.connect(lambda _i: self.apply_filters())
        self.accepted_box.toggled.connect(lambda _on: self.apply_filters())
        filters = QHBoxLayout()
        for widget in (self.stream_filter, self.type_filter, self.severity_filter, self.accepted_box):
            filters.addWidget(widget)
        filters.addWidget(self.search, 1)

        self.view = _table(self, self.model)
        self.view.selectionModel().currentRowChanged.connect(lambda *_: self._update_selection())
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.view.customContextMenuRequested.connect(self._context_menu)
        self.model.page_loaded.connect(self._update_status)
        self.status = QLabel(self, objectName="findingsStatus", wordWrap=True)
        self.status.setTextFormat(Qt.TextFormat.PlainText)
        self.detail = QLabel(self, objectName="findingDetail", wordWrap=True)
        self.detail.setTextFormat(Qt.TextFormat.PlainText)
        self.detail.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.fix_button = QPushButton("Fix…", self, objectName="fixFinding", enabled=False)
        self.fix_button.setToolTip("The fixes for the selected finding; each asks before it changes anything")
        self.fix_menu = QMenu(self.fix_button)
        self.fix_button.setMenu(self.fix_menu)
        self.fix_menu.aboutToShow.connect(lambda: self._fill_fix_menu(self.fix_menu))
        self.intended_button = QPushButton("Mark as intended…", self, objectName="markIntended", enabled=False)
        self.intended_button.setToolTip("Accept it as it is: not reported again unless either side changes")
        self.intended_button.clicked.connect(lambda: self.request_fix(FixKind.MARK_INTENDED))
        self.export_buttons: dict[str, QPushButton] = {}
        actions = QHBoxLayout()
        actions.addWidget(self.fix_button)
        actions.addWidget(self.intended_button)
        actions.addStretch(1)
        for kind, text, tip in (
            ("csv", "Export CSV…", "One row per finding, for a spreadsheet"),
            ("html", "Export report…", "One page to open in a browser or print"),
            ("pdf", "Export PDF…", "The printable report as a PDF on A4 paper"),
        ):
            button = QPushButton(text, self, objectName=f"export-{kind}", enabled=False)
            button.setToolTip(tip)
            button.clicked.connect(lambda _checked=False, k=kind: self._export_clicked(k))
            actions.addWidget(button)
            self.export_buttons[kind] = button

        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addLayout(picker_row)
        layout.addWidget(self.summary)
        layout.addLayout(filters)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.status)
        layout.addWidget(self.detail)
        layout.addLayout(actions)

    # --- reports ----------------------------------------------------------------------------------------------
    def reload(self, select_id: int | None = None) -> None:
        """Read the reports again and show `select_id`; else the one shown, if a person picked an earlier report;
        else the newest."""
        self._loaded_app = self._ui.app
        current = self.current_report()
        picked_earlier = current is not None and bool(self.reports) and current.id != self.reports[0].id
        wanted = select_id or (current.id if picked_earlier and current is not None else None)
        self.reports = report_store.reports(limit=REPORTS_LISTED)
        self.report_picker.blockSignals(True)
        self.report_picker.clear()
        for report in self.reports:
            self.report_picker.addItem(report_choice_text(report), report.id)
        position = next((n for n, r in enumerate(self.reports) if r.id == wanted), 0)
        if self.reports:
            self.report_picker.setCurrentIndex(position)
        self.report_picker.blockSignals(False)
        self.report_picker.setEnabled(bool(self.reports))
        self._show_report()

    def current_report(self) -> ReportInfo | None:
        index = self.report_picker.currentIndex()
        return self.reports[index] if 0 <= index < len(self.reports) else None

    def show_report(self, report_id: int) -> None:
        position = next((n for n, r in enumerate(self.reports) if r.id == report_id), None)
        if position is None:
            self.reload(report_id)
        else:
            self.report_picker.setCurrentIndex(position)

    def _show_report(self) -> None:
        report = self.current_report()
        self.summary.setText(report_summary(report))
        self._fill_stream_filter(report)
        for button in self.export_buttons.values():
            button.setEnabled(report is not None and report.outcome != ReportOutcome.RUNNING)
        self.apply_filters()
        self.report_shown.emit(report.id if report is not None else 0)

    def _fill_stream_filter(self, report: ReportInfo | None) -> None:
        chosen = self.stream_filter.currentData()
        self.stream_filter.blockSignals(True)
        self.stream_filter.clear()
        self.stream_filter.addItem("All records", "")
        for stream in report.streams if report is not None else ():
            self.stream_filter.addItem(labels.stream_source(stream), stream)
        found = self.stream_filter.findData(chosen) if chosen else 0
        self.stream_filter.setCurrentIndex(max(found, 0))
        self.stream_filter.blockSignals(False)

    # --- filters and the table ----------------------------------------------------------------------------------
    def current_filter(self) -> FindingFilter | None:
        report = self.current_report()
        if report is None:
            return None
        chosen = [combo.currentData() for combo in (self.type_filter, self.stream_filter, self.severity_filter)]
        kind, stream, severity = (str(value or "") for value in chosen)
        return FindingFilter(
            report.id,
            types=(kind,) if kind else (),
            streams=(stream,) if stream else (),
            severities=(severity,) if severity else (),
            with_accepted=self.accepted_box.isChecked(),
            search=self.search.text().strip(),
        )

    def apply_filters(self) -> None:
        self._search_timer.stop()
        self._counted = None
        self.model.show(self.current_filter())
        if self.model.rowCount():
            self.view.selectRow(0)
        self._update_status()
        self._update_selection()

    def filtering(self) -> bool:
        current = self.current_filter()
        return current is not None and (bool(current.types or current.streams or current.severities or current.search))

    def _update_status(self) -> None:
        report, current = self.current_report(), self.model.filter
        if report is None or current is None:
            self.status.setText("")
            return
        loaded = self.model.loaded
        if not loaded:
            if self.filtering():
                self.status.setText("No findings match.")
            elif report.outcome == ReportOutcome.CLEAN:
                self.status.setText("Both sides agree: nothing to report.")
            else:
                self.status.setText("No findings in this report.")
            return
        if self.model.canFetchMore():
            if self._counted is None or self._counted[0] != current:  # counted once per filter, not per page
                self._counted = (current, report_store.finding_count(current.report_id, **current.store_args()))
            total = self._counted[1]
            self.status.setText(f"{loaded:,} of {plural(total, 'finding')} shown — scroll for more")
        else:
            matching = plural(loaded, "finding matches", "findings match")
            self.status.setText(matching if self.filtering() else plural(loaded, "finding"))

    def current_finding(self) -> Finding | None:
        index = self.view.selectionModel().currentIndex()
        return self.model.row_for(index) if index.isValid() else None

    def select_finding(self, row: int) -> None:
        self.view.selectRow(row)

    def _update_selection(self) -> None:
        finding = self.current_finding()
        busy = self.fix_job is not None
        can_fix = finding is not None and finding.status not in (FindingStatus.FIXED, FindingStatus.ACCEPTED)
        self.fix_button.setEnabled(can_fix and not busy and bool(self._usable_fixes(finding)))
        self.intended_button.setEnabled(
            can_fix and not busy and finding is not None and FixKind.MARK_INTENDED in finding.fixes
        )
        if finding is None:
            self.detail.setText("")
            return
        lines = [clean_text(finding.explanation, 1_000)]
        if finding.suggested_fix is not None:
            lines.append(f"Suggested fix: {fix_words(finding.suggested_fix, finding)}.")
        if finding.status != FindingStatus.OPEN:
            note = f" ({clean_text(labels.for_gui(finding.note), 300)})" if finding.note else ""
            lines.append(f"{status_text(finding)}{note}.")
        self.detail.setText("\n".join(lines))

    # --- fixes --------------------------------------------------------------------------------------------------
    @staticmethod
    def _usable_fixes(finding: Finding | None) -> list[tuple[FixKind, str | None]]:
        """(fix, link target) for each fix a person can choose; a link among several candidates names each one."""
        if finding is None:
            return []
        choices: list[tuple[FixKind, str | None]] = []
        ordered = sorted(finding.fixes, key=lambda kind: kind != finding.suggested_fix)
        for kind in ordered:
            if kind == FixKind.CORRECT_SOURCE:
                continue
            if kind == FixKind.LINK and finding.type == FindingType.MISSING_IN_STRIPE and len(finding.related) > 1:
                choices += [(kind, target) for target in finding.related]
            else:
                choices.append((kind, None))
        return choices

    def fix_choices(self, finding: Finding | None = None) -> list[tuple[str, FixKind, str | None]]:
        """(words, fix, target) for the selected (or given) finding, the suggested fix first."""
        finding = finding or self.current_finding()
        result = []
        for kind, target in self._usable_fixes(finding):
            assert finding is not None
            words = _fix_label(finding, kind, target)
            if kind == finding.suggested_fix and target is None:
                words += " (suggested)"
            result.append((words, kind, target))
        return result

    def _fill_fix_menu(self, menu: QMenu) -> None:
        menu.clear()
        finding = self.current_finding()
        for words, kind, target in self.fix_choices(finding):
            action = QAction(words.replace("&", "&&"), menu)
            action.triggered.connect(lambda _checked=False, k=kind, t=target: self.request_fix(k, t))
            menu.addAction(action)
        if finding is not None and FixKind.CORRECT_SOURCE in finding.fixes:
            action = QAction(fix_words(FixKind.CORRECT_SOURCE, finding), menu, enabled=False)
            menu.addAction(action)

    def _context_menu(self, position: QPoint) -> None:
        index = self.view.indexAt(position)
        if not index.isValid():
            return
        self.view.selectRow(index.row())
        if not self.fix_button.isEnabled():
            return
        menu = QMenu(self)
        self._fill_fix_menu(menu)
        menu.popup(self.view.viewport().mapToGlobal(position))

    def request_fix(self, kind: FixKind, target: str | None = None) -> Job | None:
        """Ask, then queue the fix for the selected finding as a runner job; None if not asked for or refused."""
        finding = self.current_finding()
        if finding is None or finding.id is None:
            return None
        note = ""
        if kind == FixKind.MARK_INTENDED:
            answer = self.ask_note(
                self,
                f"Why is “{record_text(finding)}” as intended? The note is kept with it, so the next person knows.",
            )
            if answer is None:
                return None
            note = answer.strip()
            if not note:
                self.progress.setText("Say why it is intended (a note), so the next person knows.")
                return None
        else:
            action = "Delete" if kind == FixKind.DELETE else "Apply fix"
            if not self.confirm(self, "Apply this fix?", confirm_text(finding, kind, target), action):
                return None
        request = FixRequest(finding.id, kind, target=target, note=note)
        return self._submit("reconcile_fix", fixes=[request], confirmed=kind == FixKind.DELETE)

    # --- runner jobs ----------------------------------------------------------------------------------------------
    def run_now(self) -> Job | None:
        """Queue a reconciliation of every enabled stream."""
        job = self._submit("reconcile")
        if job is not None:
            self.progress.setText("Waiting to start…")
        return job

    def cancel(self) -> None:
        current = self._ui.runner.current
        if self.run_job is not None and current is not None and current.id == self.run_job.id:
            self._ui.runner.cancel()
            self.progress.setText("Cancelling…")
            self.cancel_button.setEnabled(False)

    def _submit(self, kind: str, **extra: Any) -> Job | None:
        try:
            credentials = read_credentials(self._ui.app.secrets, SYNC_SECRETS)
        except SecretStoreError as exc:  # the keyring is locked or missing: say so instead of failing the click
            self.progress.setText(labels.for_gui(exc))
            return None
        job = self._ui.runner.submit(trigger="manual", credentials=credentials, kind=kind, **extra)
        if job is None:
            paused = kind != "reconcile" and self._ui.runner.paused()
            self.progress.setText(PAUSED_FIX_TEXT if paused else BUSY_TEXT)
            return None
        if kind == "reconcile":
            self.run_job = job
            self.run_button.setEnabled(False)
        else:
            self.fix_job = job
            self.progress.setText("Applying the fix…")
            self._update_selection()
        return job

    def _mine(self, job: Job) -> bool:
        return any(own is not None and own.id == job.id for own in (self.run_job, self.fix_job))

    def _on_job_started(self, job: Job) -> None:
        if self.run_job is not None and job.id == self.run_job.id:
            self._step = ""
            self.progress.setText("Reconciling…")
            self.cancel_button.setEnabled(True)

    def _on_job_progress(self, job: Job, stream: str, done: int, total: object, step: str) -> None:
        if self.run_job is None or job.id != self.run_job.id:
            return
        if step:  # a named step ("Reading Stripe customers"); per-record ticks keep it and update the count
            self._step = step
        words = labels.stream_source(stream) if stream else ""
        count = f"{done:,} of {total:,}" if isinstance(total, int) and total else (f"{done:,}" if done else "")
        self.progress.setText(" — ".join(part for part in (self._step, words, count) if part) or "Reconciling…")

    def _on_job_finished(self, outcome: JobOutcome) -> None:
        job = outcome.job
        if self.run_job is not None and job.id == self.run_job.id:
            self.run_job = None
            self.run_button.setEnabled(True)
            self.cancel_button.setEnabled(False)
            self.progress.setText(self._run_words(outcome))
            report_id = outcome.reconcile.report_id if outcome.reconcile is not None else None
            self.reload(report_id)
            if report_id is None:  # a failed or cancelled run stored its (incomplete) report: show it
                self.reload(self.reports[0].id if self.reports else None)
            return
        if self.fix_job is not None and job.id == self.fix_job.id:
            self.fix_job = None
            if outcome.failure_kind:
                self.progress.setText(f"The fix was not applied: {labels.for_gui(outcome.message)}")
            else:
                self.progress.setText(" ".join(fix_outcome_text(done) for done in outcome.fixes))
            self._refresh_findings()
            self.fixes_done.emit(outcome.fixes)
            return
        if job.kind == "reconcile" or job.trigger == "reconcile":  # the schedule's, or another window's
            self.reload()

    def _run_words(self, outcome: JobOutcome) -> str:
        if outcome.failure_kind == "cancelled" or (
            outcome.reconcile is not None and outcome.reconcile.outcome == ReportOutcome.CANCELLED
        ):
            return "Reconciliation cancelled; the report below is incomplete."
        if outcome.failure_kind:
            return f"Reconciliation stopped: {labels.for_gui(outcome.message)}"
        result = outcome.reconcile
        if result is None:
            return ""
        if result.outcome == ReportOutcome.FAILED:
            return f"Reconciliation finished, but part of it failed: {labels.for_gui(result.message)}"
        total = result.counts.total
        return "Reconciliation finished: " + (plural(total, "finding") if total else "both sides agree")

    def _refresh_findings(self) -> None:
        """After a fix: the same report, its statuses and counts read again, the same row selected."""
        row = self.view.selectionModel().currentIndex().row()
        self._counted = None  # a mark as intended takes a finding out of the count
        current, position = self.current_report(), self.report_picker.currentIndex()
        fresh = report_store.report(current.id) if current is not None else None
        if fresh is not None:  # a mark as intended changes the counts
            self.reports[position] = fresh
            self.summary.setText(report_summary(fresh))
            self.report_picker.setItemText(position, report_choice_text(fresh))
        self.model.show(self.model.filter)
        if self.model.rowCount():
            self.view.selectRow(min(max(row, 0), self.model.rowCount() - 1))
        self._update_status()
        self._update_selection()

    def refresh(self) -> None:
        """Reports made elsewhere (the command line, the schedule) show up when the tab comes to the front."""
        if self._ui.app is not self._loaded_app:  # another profile (the first-run sandbox trial): a new runner
            self.run_job = self.fix_job = None
            self.run_button.setEnabled(True)
            self.cancel_button.setEnabled(False)
            self.progress.setText("")
            self.reload()
            return
        newest = report_store.reports(limit=1)
        if newest and (not self.reports or newest[0].id != self.reports[0].id or newest[0] != self.reports[0]):
            self.reload()

    # --- exports ------------------------------------------------------------------------------------------------
    def _export_clicked(self, kind: str) -> None:
        report = self.current_report()
        if report is None:
            return
        titles = {"csv": "Export findings as CSV", "html": "Export the report", "pdf": "Export the report as PDF"}
        filters = {"csv": "CSV files (*.csv)", "html": "Web pages (*.html)", "pdf": "PDF files (*.pdf)"}
        if kind == "pdf" and report.counts.total > LONG_PDF_FINDINGS:
            text = (
                f"The report has {plural(report.counts.total, 'finding')}: its PDF runs to many pages, and laying "
                "them out keeps the window busy for a while. The CSV or the report to open in a browser is quicker."
            )
            if not self.confirm(self, "A long PDF", text, "Make the PDF"):
                return
        suggested = str(Path.home() / f"reconciliation-{report.id}.{kind}")
        path = self.choose_file(self, titles[kind], suggested, filters[kind])
        if path:
            self.export(kind, Path(path))

    def export(self, kind: str, path: Path) -> None:
        """Write the shown report as `kind` (csv, html, pdf) to `path`; `exported` says when it is done."""
        report = self.current_report()
        if report is None:
            return
        report_id = report.id
        self.progress.setText("Exporting…")
        if kind == "pdf":
            run_in_background(
                lambda: report_store.report_html(report_id),
                lambda outcome: self._print_pdf(outcome, path, report),
                owner=self,
            )
            return
        args = {"csv_path": path} if kind == "csv" else {"html_path": path}
        run_in_background(
            lambda: report_store.export(report_id, **args),
            lambda outcome: self._exported(kind, path, outcome),
            owner=self,
        )

    def _print_pdf(self, outcome: Outcome, path: Path, report: ReportInfo) -> None:
        if outcome.ok:
            try:
                write_pdf(str(outcome.value), path, f"Reconciliation report — {report.clinic_name}")
            except OSError as exc:
                outcome = Outcome(error=exc)
        self._exported("pdf", path, outcome)

    def _exported(self, kind: str, path: Path, outcome: Outcome) -> None:
        if outcome.ok and (kind != "pdf" or path.exists()):
            self.progress.setText(f"Saved {path.name} in {path.parent}.")
            self.exported.emit(kind, str(path))
        else:
            why = outcome.error or "the file could not be written"
            self.progress.setText(f"Could not save {path.name}: {labels.for_gui(why)}")
            self.exported.emit(kind, "")


def _table(parent: QWidget, model: FindingsModel) -> QTableView:
    view = long_table(parent, "findingsView", model)
    fit_header_titles(view.horizontalHeader())
    ColumnShares(view, COLUMN_SHARES)
    return view
