"""Sync history: every run, and for the selected run what happened to each record, problems first.

Tables are item models fetched a page at a time (clinicsync.ui.models), so a run of 100,000 records opens as
fast as a run of ten. The tab refreshes when the runner reports a finished job (a queued signal: GUI thread).
"""

from __future__ import annotations

from PySide6.QtCore import QAbstractItemModel, QItemSelectionModel, QModelIndex, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from clinicsync import labels
from clinicsync.labels import plural
from clinicsync.store import queries
from clinicsync.store.queries import EventQuery, RunRow
from clinicsync.sync.runner import JobOutcome
from clinicsync.ui.context import UiContext
from clinicsync.ui.layout import long_table
from clinicsync.ui.models import (
    EventsModel,
    RunsModel,
    format_when,
    outcome_label,
    stream_label,
)

SEARCH_DELAY_MS = 300  # wait for a pause in typing: a search over every run scans the history table
SEARCH_HINT = (
    "Search by name, Cliniko id or Stripe id. Email addresses are not stored, so a full address is matched "
    "through its keyed hash; for part of an address, search the name or the Stripe customer id."
)
RUN_WIDTHS = (130, 120, 100, 80, 70, 70, 70, 80, 70, 65, 60, 60)
EVENT_WIDTHS = (60, 130, 170, 220, 190, 105)


class HistoryTab(QWidget):
    """Runs on top, the selected run's records below; search, and "Retry failed" for the selected run."""

    retry_requested = Signal(int, int)  # run id, records queued for retry

    def __init__(self, ui: UiContext, parent: QWidget | None = None, *, page_size: int = 200) -> None:
        super().__init__(parent)
        self.setObjectName("historyTab")
        self._ui = ui
        self._follow_latest = True  # select each new run as it lands, until the user picks an older one
        self._events_total = 0  # the shown run's record count: counted once per run shown, not per page fetched
        self.runs_model = RunsModel(page_size, self)
        # Shown as loaded: its pages come in the pinned order (failed, review, the rest). A sorting proxy on top
        # compared a few thousand rows in Python for every page inserted, stalling the scroll at 100,000 rows.
        self.events_model = EventsModel(page_size, self)
        self._search_timer = QTimer(self, singleShot=True, interval=SEARCH_DELAY_MS)
        self._search_timer.timeout.connect(self._show_events)
        self._build()
        ui.bridge.job_started.connect(self._on_job_started)
        ui.bridge.job_finished.connect(self._on_job_finished)
        self.reload()

    # --- layout -----------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.summary = QLabel(self, objectName="historySummary", wordWrap=True)
        self.summary.setTextFormat(Qt.TextFormat.PlainText)

        self.runs_view = _table(self, "runsView", self.runs_model, RUN_WIDTHS)
        self.runs_view.selectionModel().currentRowChanged.connect(self._on_run_changed)

        self.search = QLineEdit(self, objectName="historySearch", clearButtonEnabled=True)
        self.search.setPlaceholderText("Search name, Cliniko id, Stripe id or full email…")
        self.search.setToolTip(SEARCH_HINT)
        self.search.textChanged.connect(lambda _text: self._search_timer.start())
        self.all_runs = QCheckBox("All runs", self, objectName="historyAllRuns")
        self.all_runs.setToolTip("Search every run's records instead of only the selected run's")
        self.all_runs.toggled.connect(lambda _on: self._show_events())
        self.retry_button = QPushButton("Retry failed", self, objectName="retryFailed", enabled=False)
        self.retry_button.setToolTip("Read this run's failed records again at the start of a new sync")
        self.retry_button.clicked.connect(self.retry_failed)

        self.events_view = _table(self, "eventsView", self.events_model, EVENT_WIDTHS)
        # Plain text: it quotes the search as typed.
        self.events_status = QLabel(self, objectName="eventsStatus", textFormat=Qt.TextFormat.PlainText)
        self.events_model.rowsInserted.connect(lambda *_: self._update_events_status())  # a page was fetched
        self.hint = QLabel(SEARCH_HINT, self, objectName="searchHint", wordWrap=True)
        self.hint.setEnabled(False)  # greyed: a hint, not a message

        tools = QHBoxLayout()
        tools.addWidget(self.search, 1)
        tools.addWidget(self.all_runs)
        tools.addWidget(self.retry_button)
        lower = QWidget(self)
        lower_layout = QVBoxLayout(lower)
        lower_layout.setContentsMargins(0, 0, 0, 0)
        lower_layout.addLayout(tools)
        lower_layout.addWidget(self.hint)
        lower_layout.addWidget(self.events_view, 1)
        lower_layout.addWidget(self.events_status)
        splitter = QSplitter(Qt.Orientation.Vertical, self)
        splitter.addWidget(self.runs_view)
        splitter.addWidget(lower)
        splitter.setStretchFactor(0, 2)
        splitter.setStretchFactor(1, 3)
        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addWidget(splitter, 1)

    # --- data -------------------------------------------------------------------------------------------
    def reload(self) -> None:
        """Read the history again from the database and select the newest run."""
        self._loaded_app = self._ui.app
        self.runs_model.load()
        self._follow_latest = True
        self._select_run_row(0 if self.runs_model.rowCount() else None)
        self._update_summary()

    def selected_run(self) -> RunRow | None:
        index = self.runs_view.selectionModel().currentIndex()
        return self.runs_model.row_at(index.row()) if index.isValid() else None

    def _select_run_row(self, row: int | None) -> None:
        selection = self.runs_view.selectionModel()
        if row is None:
            selection.clear()
            self._show_events()
            return
        flags = QItemSelectionModel.SelectionFlag.ClearAndSelect | QItemSelectionModel.SelectionFlag.Rows
        selection.setCurrentIndex(self.runs_model.index(row, 0), flags)

    def _on_run_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        self._follow_latest = current.isValid() and current.row() == 0
        self._show_events()

    def _show_events(self) -> None:
        self._search_timer.stop()
        run = self.selected_run()
        text = self.search.text().strip()
        if text and self.all_runs.isChecked():
            query: EventQuery | None = EventQuery(None, text)
        else:
            query = EventQuery(run.id, text) if run is not None else None
        counted = query is not None and query.run_id is not None and not query.search
        self._events_total = queries.history_event_count(query.run_id) if counted and query else 0
        self.events_model.show(query)
        self.events_view.setColumnHidden(EventsModel.RUN, query is None or query.run_id is not None)
        self._update_retry(run)
        self._update_events_status()

    def _update_events_status(self) -> None:
        query = self.events_model.query
        loaded = self.events_model.loaded
        if query is None:
            text = "Select a run to see its records."
        elif query.search:
            scope = "every run" if query.run_id is None else f"run #{query.run_id}"
            more = " — scroll for more" if self.events_model.canFetchMore() else ""
            text = (
                f"{plural(loaded, 'record matches', 'records match')} “{query.search}” in {scope}{more}"
                if loaded
                else f"No records match “{query.search}” in {scope}."
            )
        else:
            # (a run still going has written more rows since it was counted: show them all the same)
            total = max(self._events_total, loaded) if query.run_id is not None else loaded
            text = (
                f"{loaded:,} of {total:,} records shown — scroll for more"
                if loaded < total
                else f"{plural(total, 'record')} changed, failed or sent to review in this run"
            )
        self.events_status.setText(text)

    def _update_retry(self, run: RunRow | None) -> None:
        can_retry = run is not None and run.failed > 0 and run.pair_id is not None and not self._ui.runner.busy
        self.retry_button.setEnabled(can_retry)
        self.retry_button.setText(
            f"Retry failed ({run.failed:,})" if run is not None and run.failed else "Retry failed"
        )

    def _update_summary(self) -> None:
        latest = self.runs_model.row_at(0) if self.runs_model.rowCount() else None
        if latest is None:
            self.summary.setText("No syncs yet. Press Sync now on the Overview tab to run the first one.")
            return
        # What was written, failed or waits (records held back by an earlier change still queued for Stripe), and
        # what the stream names in its own words (an invoice linking run's invoices not paid through Stripe).
        named = [name for name in ("skipped",) if labels.count_name(name, latest.stream) != name]
        counts = ", ".join(
            f"{getattr(latest, name):,} {labels.count_name(name, latest.stream)}"
            for name in ("created", "linked", "updated", *named, "waiting", "failed", "review")
            if getattr(latest, name)
        )
        text = f"Latest: {stream_label(latest.stream)} at {format_when(latest.started_at)} — {outcome_label(latest)}"
        text += f" ({counts})" if counts else ""
        if latest.failed:
            text += ". Failed records are listed first: correct them in Cliniko, then press Retry failed."
        self.summary.setText(text)

    # --- actions ----------------------------------------------------------------------------------------
    def retry_failed(self) -> int:
        """Queue the selected run's failed records to be read again, and start a sync to do it."""
        run = self.selected_run()
        if run is None:
            return 0
        count = queries.queue_retry_of_failed(run.id)
        if not count:
            self.events_status.setText("This run has no failed records with an id to read again.")
            return 0
        job = self._ui.sync_now(trigger="retry")
        if job is not None:
            message = f"Retrying {plural(count, 'record')}…"
            self._follow_latest = True  # show the retry's run when it lands
        elif self._ui.runner.paused():
            message = f"Syncing is paused: {plural(count, 'record')} will be retried at the next sync once it resumes."
        elif self._ui.attached:
            message = f"Asked the background service to sync: it will retry {plural(count, 'record')}."
        else:
            these = "this record" if count == 1 else f"these {count:,} records"
            message = f"A sync is already waiting: it will retry {these}."
        self.events_status.setText(message)
        self.retry_button.setEnabled(False)
        self.retry_requested.emit(run.id, count)
        return count

    # --- runner signals (delivered on the GUI thread) and refreshing ------------------------------------
    def _on_job_started(self, _job: object) -> None:
        # A run in progress deletes the retry queue when it ends, so no retry may be queued under it.
        self.retry_button.setEnabled(False)

    def _on_job_finished(self, _outcome: JobOutcome) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Pick up runs that finished since the last look (the window calls this when the tab comes to the front;
        a sync from the command line or a scheduler in another process shows up too)."""
        if self._ui.app is not self._loaded_app:  # the app moved to another profile (the first-run sandbox trial)
            self.reload()
            return
        selected = self.selected_run()
        new_ids = self.runs_model.refresh()
        if new_ids and (self._follow_latest or selected is None):
            self._select_run_row(0)
        elif selected is not None:
            position = self.runs_model.row_of(selected.id)
            fresh = self.runs_model.row_at(position) if position is not None else None
            if fresh != selected:  # it was still running: show its final rows
                self._show_events()
            else:
                self._update_retry(fresh)
        self._update_summary()


def _table(parent: QWidget, name: str, model: QAbstractItemModel, widths: tuple[int, ...]) -> QTableView:
    view = long_table(parent, name, model)
    header = view.horizontalHeader()
    header.setStretchLastSection(True)
    for column, width in enumerate(widths):
        header.resizeSection(column, width)
    return view
