"""Overview: is everything in sync? Per stream its state, last run and counts, next run, queued writes, review
items and errors; a big Sync now with progress and Cancel; a banner when a connection is broken; and a
SANDBOX / TEST MODE badge whenever the accounts are not live.

Reads are small queries on the GUI thread (a handful of rows); the sync itself runs on the runner's thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QFont, QShowEvent
from PySide6.QtWidgets import (
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from clinicsync import labels
from clinicsync.labels import plural
from clinicsync.store import queries
from clinicsync.streams import STREAMS
from clinicsync.sync.runner import Job, JobOutcome
from clinicsync.sync.service import connected_sources, enabled_streams
from clinicsync.ui.context import UiContext
from clinicsync.ui.models import clean_text, escape_html
from clinicsync.ui.notifications import active_notices
from clinicsync.ui.schedule import MANUAL, next_run_text, schedule_words
from clinicsync.ui.status import (
    LIVE,
    SANDBOX,
    Progress,
    StatusTracker,
    current_mode,
    current_pair_rows,
    local_time,
    request_sync,
    stream_label,
)

STATE_WORDS = {
    "ok": "Up to date",
    "attention": "Needs attention",
    "failed": "Failed",
    "cancelled": "Cancelled",
    "needs_approval": "Waiting for your approval",
    "running": "Interrupted (resumes on the next sync)",  # until the next start closes it as interrupted
    "interrupted": "Interrupted (resumes on the next sync)",
}
COUNT_ORDER = ("created", "linked", "updated", "unchanged", "skipped", "waiting", "failed", "review")

# Explicit colour pairs (background, text) so both the light and the dark Fusion palette stay readable.
BADGE_STYLE = {
    SANDBOX: ("#f59e0b", "#1f2937"),
    "TEST MODE": ("#f59e0b", "#1f2937"),
    LIVE: ("#15803d", "#ffffff"),
}
BANNER_STYLE = "QFrame#banner { background: #fee2e2; border: 1px solid #b91c1c; border-radius: 6px; }"
BANNER_TEXT = "color: #7f1d1d;"
PAUSED_STYLE = "QFrame#paused { background: #fef3c7; border: 1px solid #b45309; border-radius: 6px; }"
PAUSED_TEXT = "color: #78350f;"
ALERTS_STYLE = (
    "QLabel#alerts { background: #fef3c7; color: #78350f; border: 1px solid #b45309; border-radius: 6px;"
    " padding: 6px; }"
)


@dataclass(frozen=True)
class StreamView:
    """The words of one stream card."""

    title: str
    state: str
    last_run: str
    counts: str
    next_run: str
    queued: str
    review: str
    errors: str


MANUAL_NEXT = "manual (press Sync now)"
COUNTDOWN_MS = 5000
CONNECTED_RECHECK_S = 30.0  # a key saved in Connections shows its source's cards within this


def counts_text(counts: dict[str, int], stream: str = "") -> str:
    parts = [
        f"{counts[name]:,} {labels.count_name(name, stream, gui=True)}" for name in COUNT_ORDER if counts.get(name)
    ]
    return ", ".join(parts) if parts else "no changes"


def stream_view(
    stream: str,
    row: dict[str, Any] | None,
    progress: Progress | None,
    now: datetime,
    *,
    awaiting_approval: bool = False,
    next_run: str | None = None,
) -> StreamView:
    """The words of one card. `next_run`: when the schedule runs it next (None: syncs only on a click)."""
    title = labels.stream_title(stream)
    next_words = next_run or MANUAL_NEXT
    syncing = progress is not None and progress.stream == stream
    if syncing:
        state = "Syncing…"
    elif awaiting_approval:
        state = STATE_WORDS["needs_approval"]
    elif row is None or row.get("last_outcome") is None:
        state = "Never synced"
    else:
        state = settled_state(row)
    if row is None or row.get("last_run_at") is None:
        return StreamView(title, state, "never", "—", next_words, "none", "none", "none")
    started = local_time(row["last_run_at"])
    assert started is not None
    when = started.strftime("%H:%M today") if started.date() == now.date() else f"{started.day} {started:%b %Y %H:%M}"
    failed = row["last_counts"].get("failed", 0)
    running = syncing and row.get("last_outcome") == "running"  # the row is the run in progress, not a result
    return StreamView(
        title=title,
        state=state,
        last_run=f"{when} (in progress)" if running else when,
        counts="in progress…" if running else counts_text(row["last_counts"], stream),
        next_run=next_words,
        queued=f"{plural(row['queued'], 'change')} waiting to be sent to Stripe" if row["queued"] else "none",
        review=f"{plural(row['review'], 'record needs', 'records need')} your decision" if row["review"] else "none",
        errors=f"{plural(failed, 'record')} failed in the last run" if failed else "none",
    )


def settled_state(row: dict[str, Any]) -> str:
    """The state of a stream that is not syncing, from its last run and what is still open: "Up to date" only when
    nothing waits for a person or for Stripe."""
    outcome = row["last_outcome"]
    if outcome in ("failed", "cancelled", "running", "needs_approval"):
        return STATE_WORDS[outcome]
    if row.get("review"):
        return f"{plural(row['review'], 'record needs', 'records need')} your decision"
    failed = row["last_counts"].get("failed", 0)
    if failed:
        return f"{plural(failed, 'record')} could not be sent"
    if row.get("queued"):
        return f"{plural(row['queued'], 'change')} waiting to be sent"
    return STATE_WORDS.get(outcome, outcome)


class StreamCard(QGroupBox):
    FIELDS = (
        ("state", "State"),
        ("last_run", "Last run"),
        ("counts", "Result"),
        ("next_run", "Next run"),
        ("queued", "Waiting to send"),
        ("review", "Review"),
        ("errors", "Errors"),
    )

    def __init__(self, stream: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.stream = stream
        self.setObjectName(f"stream-{stream}")
        form = QFormLayout(self)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.labels: dict[str, QLabel] = {}
        for key, text in self.FIELDS:
            label = QLabel(textFormat=Qt.TextFormat.PlainText)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            label.setWordWrap(True)
            self.labels[key] = label
            form.addRow(text + ":", label)

    def show_view(self, view: StreamView) -> None:
        self.setTitle(view.title)
        for key, _ in self.FIELDS:
            self.labels[key].setText(getattr(view, key))
        bold = QFont(self.labels["state"].font())
        bold.setBold(view.state not in ("Up to date", "Never synced"))
        self.labels["state"].setFont(bold)


class OverviewTab(QWidget):
    open_connections_requested = Signal()

    def __init__(self, ui: UiContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ui = ui
        self.tracker = ui.status or StatusTracker(ui.runner, ui.bridge, ui.app.settings, self)
        self.cards: dict[str, StreamCard] = {}
        self._connected: tuple[tuple[str, ...], float] | None = None  # (sources with a key, when read)
        self._progress_stream = ""
        self._cancelling = False  # Cancel was pressed: its words stay until the sync has stopped
        self._build()
        self.tracker.changed.connect(self.refresh)
        # "next sync in 40 s" counts down: re-read now and then while shown and a schedule runs.
        self._countdown = QTimer(self)
        self._countdown.setInterval(COUNTDOWN_MS)
        self._countdown.timeout.connect(self._count_down)
        self._countdown.start()
        # Bound methods of this widget: Qt delivers the worker's signals here on the GUI thread.
        ui.bridge.job_started.connect(self._on_started)
        ui.bridge.job_progress.connect(self._on_progress)
        ui.bridge.job_finished.connect(self._on_finished)
        self.refresh()

    # --- layout ---------------------------------------------------------------------------------------
    def _build(self) -> None:
        outer = QVBoxLayout(self)
        header = QHBoxLayout()
        self.accounts_label = QLabel()  # rich text: names go in through escape_html
        self.accounts_label.setWordWrap(True)
        self.mode_badge = QLabel()
        self.mode_badge.setObjectName("mode-badge")
        self.mode_badge.setAlignment(Qt.AlignmentFlag.AlignCenter)
        header.addWidget(self.accounts_label, 1)
        header.addWidget(self.mode_badge)
        outer.addLayout(header)
        # Who runs the schedule: this window, or the background service it is attached to.
        self.schedule_line = QLabel(wordWrap=True, textFormat=Qt.TextFormat.PlainText)
        self.schedule_line.setObjectName("schedule-line")
        outer.addWidget(self.schedule_line)

        self.banner = QFrame(objectName="banner")
        self.banner.setStyleSheet(BANNER_STYLE)
        banner_row = QHBoxLayout(self.banner)
        self.banner_text = QLabel(wordWrap=True)  # rich text: the message goes in through escape_html
        self.banner_text.setStyleSheet(BANNER_TEXT)
        self.banner_text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.connections_button = QPushButton("Open Connections")
        self.connections_button.clicked.connect(self.open_connections_requested)
        banner_row.addWidget(self.banner_text, 1)
        banner_row.addWidget(self.connections_button)
        outer.addWidget(self.banner)

        # What needs a person, as the alerts say (recorded by this window's schedule or the background service).
        self.alerts_label = QLabel(wordWrap=True, textFormat=Qt.TextFormat.PlainText)
        self.alerts_label.setObjectName("alerts")
        self.alerts_label.setStyleSheet(ALERTS_STYLE)
        self.alerts_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        outer.addWidget(self.alerts_label)

        self.paused_strip = QFrame(objectName="paused")
        self.paused_strip.setStyleSheet(PAUSED_STYLE)
        paused_row = QHBoxLayout(self.paused_strip)
        paused_text = QLabel("Syncing is paused: nothing is sent to Stripe until you resume.")
        paused_text.setStyleSheet(PAUSED_TEXT)
        self.resume_button = QPushButton("Resume syncing")
        self.resume_button.clicked.connect(lambda: self.tracker.set_paused(False))
        paused_row.addWidget(paused_text, 1)
        paused_row.addWidget(self.resume_button)
        outer.addWidget(self.paused_strip)

        controls = QHBoxLayout()
        self.sync_button = QPushButton("Sync now")
        self.sync_button.setObjectName("sync-now")
        self.sync_button.setMinimumSize(180, 52)
        big = QFont(self.sync_button.font())
        big.setPointSizeF(big.pointSizeF() * 1.35)
        big.setBold(True)
        self.sync_button.setFont(big)
        self.sync_button.clicked.connect(self.sync_now)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setMinimumHeight(52)
        self.cancel_button.clicked.connect(self.cancel)
        progress_column = QVBoxLayout()
        self.progress_bar = QProgressBar()
        self.progress_bar.setTextVisible(True)
        # One status line, replaced, never stacked: the sync's progress while it runs, then how it went, or why a
        # click did nothing. Plain text: its messages quote the services.
        self.status_line = QLabel(wordWrap=True, textFormat=Qt.TextFormat.PlainText)
        self.step_label = self.message_label = self.status_line  # the names the rest of the app knows it by
        progress_column.addWidget(self.progress_bar)
        progress_column.addWidget(self.status_line)
        progress_column.addStretch(1)
        controls.addWidget(self.sync_button, 0, Qt.AlignmentFlag.AlignTop)
        controls.addWidget(self.cancel_button, 0, Qt.AlignmentFlag.AlignTop)
        controls.addLayout(progress_column, 1)
        outer.addLayout(controls)

        self.cards_holder = QWidget()
        self.cards_layout = QVBoxLayout(self.cards_holder)
        self.cards_layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(self.cards_holder)
        scroll.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        outer.addWidget(scroll, 1)

    # --- actions --------------------------------------------------------------------------------------
    def sync_now(self) -> None:
        job, why_not = request_sync(self.ui, "manual")
        if job is not None:
            self._show_syncing(True)
            self.status_line.setText("Waiting to start…")
        else:
            self.status_line.setText(why_not)

    def cancel(self) -> None:
        self.ui.cancel()
        self._cancelling = True
        self.cancel_button.setEnabled(False)
        self.status_line.setText("Cancelling at the next safe point…")

    # --- state ----------------------------------------------------------------------------------------
    def refresh(self) -> None:
        rows = current_pair_rows(queries.stream_status())
        by_stream = {row["stream"]: row for row in rows}
        now = datetime.now().astimezone()
        syncing = self.tracker.syncing
        if not syncing:  # a sync cancelled in the background service reports no end here: its stop is the end
            self._cancelling = False
        progress = self.tracker.progress if syncing else None
        paused = self.tracker.paused()
        schedule = self.ui.schedule
        next_runs = schedule.next_runs() if schedule is not None and schedule.mode != MANUAL else None
        connected = self._connected_sources()
        # A connected source's streams that are on (a stream switched off shows only once it has history).
        enabled = set(enabled_streams(self.ui.app.settings, connected))
        shown = [s for s in STREAMS if s in enabled or s in by_stream]
        for stream, card in self.cards.items():  # a source no longer connected: its cards go (history stays)
            card.setVisible(stream in shown or stream not in STREAMS)
        for stream in shown + [s for s in by_stream if s not in STREAMS]:
            card = self.cards.get(stream)
            if card is None:
                card = self.cards[stream] = StreamCard(stream, self.cards_holder)
                self.cards_layout.insertWidget(self.cards_layout.count() - 1, card)
            waiting = awaiting_approval(stream, by_stream.get(stream))
            next_run = None
            if next_runs is not None:
                running = progress is not None and progress.stream == stream
                next_run = next_run_text(
                    stream,
                    next_runs,
                    schedule.clock.now(),
                    paused=paused,
                    waiting_for_approval=waiting,
                    syncing=running or syncing,
                )
            row = by_stream.get(stream)
            card.show_view(stream_view(stream, row, progress, now, awaiting_approval=waiting, next_run=next_run))
        self._show_alerts()
        words = schedule_words(schedule)
        self.schedule_line.setText(words)
        self.schedule_line.setVisible(bool(words))
        self._show_accounts(rows)
        self._show_problem()
        self.paused_strip.setVisible(paused)
        self.sync_button.setToolTip("Syncing is paused" if paused else "Send changes to Stripe now")
        self._show_syncing(syncing)

    def _show_alerts(self) -> None:
        try:
            notices = active_notices()
        except Exception:  # the database is busy: the next refresh shows them
            notices = []
        lines = [f"• {notice.title}: {notice.message}" for notice in notices]
        self.alerts_label.setText("Needs your attention:\n" + "\n".join(lines) if lines else "")
        self.alerts_label.setVisible(bool(lines))

    def _show_accounts(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            # The names come from Cliniko and Stripe: shown as written (cleaned, escaped), never as markup.
            source = escape_html(clean_text(rows[0].get("source_name"))) or "your clinic"
            stripe = escape_html(clean_text(rows[0].get("stripe_name"))) or "Stripe"
            self.accounts_label.setText(f"<b>{source}</b> → <b>{stripe}</b>")
        else:
            self.accounts_label.setText("<b>Not synced yet.</b> Press Sync now to send your patients to Stripe.")
        mode = current_mode(self.ui, rows)
        self.mode_badge.setVisible(mode is not None)
        if mode is not None:
            background, text = BADGE_STYLE.get(mode, BADGE_STYLE[SANDBOX])
            self.mode_badge.setText(mode)
            self.mode_badge.setToolTip(
                "Live Stripe account: real customers" if mode == LIVE else "Not a live account: nothing here is real"
            )
            self.mode_badge.setStyleSheet(
                f"QLabel#mode-badge {{ background: {background}; color: {text}; font-weight: bold;"
                " padding: 6px 14px; border-radius: 6px; letter-spacing: 1px; }"
            )

    def _show_problem(self) -> None:
        problem = self.tracker.problem
        self.banner.setVisible(problem is not None)
        if problem is not None:
            lead = {
                "auth": "A key was refused.",
                "config": "ClinicSync needs a setting.",
                "unreachable": "Cliniko or Stripe could not be reached.",
                "storage": "ClinicSync can't save its records.",
            }.get(problem.kind, "A connection is broken.")
            self.banner_text.setText(f"<b>{lead}</b> {escape_html(labels.for_gui(problem.message))}")

    def _show_syncing(self, syncing: bool) -> None:
        self.sync_button.setEnabled(not syncing and not self.tracker.paused())
        # The words change too, so the state reads the same in any palette (disabled colours vary by theme).
        self.sync_button.setText("Syncing…" if syncing else "Sync now")
        self.cancel_button.setEnabled(syncing and not self._cancelling)
        self.cancel_button.setVisible(syncing)
        self.progress_bar.setVisible(syncing)

    def _on_started(self, job: Job) -> None:
        self._progress_stream = ""
        self._cancelling = False
        self.progress_bar.setRange(0, 0)  # busy until the first count arrives
        self.status_line.setText("Starting…")  # replaces the last sync's result
        self._show_syncing(True)

    def _on_progress(self, job: Job, stream: str, done: int, total: int | None, step: str) -> None:
        if stream != self._progress_stream:  # once per stream, not per record: its card now says "Syncing…"
            self._progress_stream = stream
            self.refresh()
        if total:
            self.progress_bar.setRange(0, total)
            self.progress_bar.setValue(min(done, total))
        else:
            self.progress_bar.setRange(0, 0)
        if self._cancelling:
            return  # "Cancelling at the next safe point…" stays until the sync has stopped
        what = stream_label(stream).capitalize()
        if step:
            self.status_line.setText(f"{what}: {step}")
        elif total:
            self.status_line.setText(f"{what}: {done:,} of {total:,}")
        else:
            self.status_line.setText(f"{what}: {done:,} done")

    def _on_finished(self, outcome: JobOutcome) -> None:
        self._cancelling = False
        self.status_line.setText(finished_text(outcome))
        # The tracker's `changed` refreshes the cards; this only resets the controls if it has not yet.
        self._show_syncing(self.tracker.syncing)

    def _count_down(self) -> None:
        schedule = self.ui.schedule
        if self.isVisible() and schedule is not None and schedule.mode != MANUAL:
            self.refresh()

    def _connected_sources(self) -> tuple[str, ...]:
        """The sources with a key, read at most every CONNECTED_RECHECK_S (a keyring read is not free, and this
        runs with every countdown tick): a clinic on Cliniko alone sees no Cal.com cards."""
        now = time.monotonic()
        if self._connected is None or now - self._connected[1] >= CONNECTED_RECHECK_S:
            self._connected = (connected_sources(self.ui.app.secrets), now)
        return self._connected[0]

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self._connected = None  # back from Connections, say: a key saved there shows its cards at once
        self.refresh()


def awaiting_approval(stream: str, row: dict[str, Any] | None) -> bool:
    """A live-mode plan nobody has approved yet, newer than the stream's last real run (plans are dry runs,
    which stream_status leaves out)."""
    plan = queries.latest_plan(stream)
    if plan is None or plan.approved_at is not None or not plan.pair.stripe_livemode:
        return False
    last = row.get("last_run_at") if row else None
    return last is None or plan.created_at >= last


def finished_text(outcome: JobOutcome) -> str:
    """One line about the sync that just ended."""
    if outcome.failure_kind == "locked":
        return "Another sync (for example from the command line) is running for this clinic; try again shortly."
    if outcome.failure_kind == "cancelled":  # the runner's own words: "Not started: syncing is paused." etc.
        return labels.for_gui(outcome.message)
    if outcome.failure_kind is not None:
        return f"The sync did not run: {labels.for_gui(outcome.message)}"
    if outcome.reconcile is not None:  # a full comparison (on schedule, or from its tab)
        total = outcome.reconcile.counts.total
        found = f"{plural(total, 'difference')} found (see Reconciliation)." if total else "nothing disagrees."
        return f"Full comparison finished: {found}"
    parts = []
    for result in outcome.results:
        word = {"cancelled": "cancelled", "needs_approval": "waiting for approval", "failed": "failed"}.get(
            result.outcome, "done"
        )
        parts.append(f"{stream_label(result.stream).capitalize()} {word}: {counts_text(result.counts, result.stream)}")
    return "; ".join(parts) or "Nothing to sync."
