"""Approve before going live: the plan of a stream's first sync to a LIVE Stripe account, and its approval.

The plan is the saved result of a dry run (`SyncPlan.summary`: counts, up to 20 sample records per action, the
Stripe fields the mapping sends). Nothing has been written when this dialog shows. Approve records the approval
(`queries.approve_latest_plan`, the same as `clinicsync plan approve`) and starts the sync (`ui.sync_now()`),
which then writes exactly what the plan says (a record changed since that would now be written otherwise waits in
Review); Cancel writes nothing.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QModelIndex, Qt
from PySide6.QtGui import QShowEvent, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QLabel,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

from clinicsync import labels
from clinicsync.labels import plural
from clinicsync.mapping.defaults import stripe_object_of_stream
from clinicsync.secrets import SecretStoreError
from clinicsync.store import queries
from clinicsync.store.models import SyncPlan
from clinicsync.sync.runner import Job, JobOutcome
from clinicsync.ui.context import UiContext
from clinicsync.ui.models import TOOLTIP_LIMIT, clean_text, escape_html

# In the order a person reads the plan: what changes in Stripe first, then what is left alone. Each line's words
# are the stream's (labels.plan_action_label): customers for patients, products and prices for products.
ACTIONS = ("created", "linked", "updated", "review", "failed", "skipped", "waiting", "unchanged")
ACTION_ROLE = Qt.ItemDataRole.UserRole + 1


def stripe_object_of(summary: dict[str, Any]) -> str:
    """The Stripe object the plan's stream writes (a customer when the plan does not say which stream)."""
    return stripe_object_of_stream(str(summary.get("stream") or ""))


def columns(summary: dict[str, Any]) -> tuple[str, ...]:
    stream = str(summary.get("stream") or "cliniko.")
    source = labels.SOURCE_SYSTEMS.get(stream.split(".", 1)[0], "Cliniko")
    return ("What", f"{source} id", f"Stripe {labels.stripe_object_words(stripe_object_of(summary))}", "Note")


def streams_needing_approval(outcome: JobOutcome) -> list[str]:
    """The streams a finished sync stopped at the approval step (open an ApprovalDialog for each)."""
    return [result.stream for result in outcome.results if result.outcome == "needs_approval"]


def plan_model(summary: dict[str, Any]) -> QStandardItemModel:
    """One row per action with its count; under it, the records behind the number (the plan's samples)."""
    model = QStandardItemModel()
    headers = columns(summary)
    model.setHorizontalHeaderLabels(list(headers))
    counts: dict[str, int] = summary.get("counts", {})
    samples: dict[str, list[dict[str, Any]]] = summary.get("samples", {})
    stripe_object = stripe_object_of(summary)
    stream = str(summary.get("stream") or "")
    for action in ACTIONS:
        count = int(counts.get(action, 0))
        if count == 0 and action in ("failed", "skipped", "waiting", "unchanged", "updated"):
            continue  # rows about nothing only add noise; the four that shape the decision always show
        parent = QStandardItem(f"{count}  {labels.plan_action_label(action, stripe_object, stream)}")
        parent.setData(action, ACTION_ROLE)
        font = parent.font()
        font.setBold(True)
        parent.setFont(font)
        row = [parent, *(_cell("") for _ in headers[1:])]
        rows = samples.get(action, [])
        for sample in rows:
            parent.appendRow(
                [
                    _cell(sample.get("name") or "(no name)"),
                    _cell(sample.get("source_id")),
                    _cell(sample.get("stripe_id")),
                    _cell(labels.for_gui(sample.get("message") or "")),
                ]
            )
        if count > len(rows):
            parent.appendRow([_cell(f"… and {count - len(rows)} more"), *(_cell("") for _ in headers[1:])])
        model.appendRow(row)
    return model


def _cell(value: object) -> QStandardItem:
    text = clean_text(value, TOOLTIP_LIMIT)  # one line per cell, no bidi tricks, bounded
    item = QStandardItem(text)
    item.setEditable(False)
    if len(text) > 40:
        item.setToolTip(text)  # notes and long names are elided in the cell
    return item


def scope_text(summary: dict[str, Any]) -> str:
    """Which records the plan syncs at all, how many it leaves out, and whether that is the live default."""
    scope = summary.get("scope")
    if not scope:
        return ""
    left_out = int(summary.get("out_of_scope", 0) or 0)
    others = plural(left_out, "other record is", "other records are")
    text = f"Records synced: {scope}; {others} left out, and nothing of them is sent."
    if summary.get("scope_note"):
        text += f" This is {labels.for_gui(summary['scope_note'])}."
    return text


class ApprovalDialog(QDialog):
    """Shows a plan; Approve records the approval and starts the sync, Cancel writes nothing.

    It starts the sync itself, so a caller must not start another on `accepted` (one would only repeat it).
    """

    STARTS_SYNC = True

    def __init__(self, ui: UiContext, plan: SyncPlan, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ui = ui
        self.plan = plan
        self.job: Job | None = None
        self.summary: dict[str, Any] = dict(plan.summary or {})
        self.setWindowTitle("Approve the first live sync")
        self.setMinimumSize(760, 520)
        self.model = plan_model(self.summary)
        self._build()

    def _build(self) -> None:
        pair = self.plan.pair
        mode = str(self.summary.get("stripe_mode", "live")).upper()
        self.heading = heading = QLabel(
            f"<h3>First sync of {escape_html(labels.stream_source(self.plan.stream))} to a {escape_html(mode)} Stripe "
            "account</h3>"
            f"<p>{escape_html(clean_text(pair.source_name)) or 'Cliniko'} → "
            f"{escape_html(clean_text(pair.stripe_name)) or escape_html(pair.stripe_account)} "
            f"({escape_html(mode)} mode). <b>Nothing has been written yet.</b> This is what the sync will do:</p>"
        )
        heading.setWordWrap(True)
        self.tree = QTreeView()
        self.tree.setModel(self.model)
        self.tree.setUniformRowHeights(True)
        self.tree.setAlternatingRowColors(True)
        header = self.tree.header()
        header.setStretchLastSection(True)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)
        for column in (1, 2):  # ids are read whole, never elided
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        header.resizeSection(0, 300)
        for row in range(self.model.rowCount()):  # an action's line reads across the whole width
            self.tree.setFirstColumnSpanned(row, QModelIndex(), True)
        self.tree.expandToDepth(0)
        fields = ", ".join(labels.target_label(field) for field in self.summary.get("fields", [])) or "none"
        self.fields_label = QLabel(f"Fields sent to Stripe: {fields}. Nothing else leaves the clinic.")
        self.fields_label.setWordWrap(True)
        self.scope_label = QLabel(scope_text(self.summary))
        self.scope_label.setWordWrap(True)
        # Plain text: field names, the scope and problem messages are shown as written, never as markup.
        for label in (self.fields_label, self.scope_label):
            label.setTextFormat(Qt.TextFormat.PlainText)
        self.scope_label.setVisible(bool(self.summary.get("scope")))
        # What an optional stream makes in Stripe (mirrored invoices), and what to check first, before approval.
        self.stream_note_label = QLabel(
            labels.for_gui(str(self.summary.get("stream_note") or "")),
            wordWrap=True,
            textFormat=Qt.TextFormat.PlainText,
        )
        self.stream_note_label.setVisible(bool(self.summary.get("stream_note")))
        queued = int(self.summary.get("queued_writes", 0) or 0)
        waiting = plural(queued, "earlier change is", "earlier changes are")
        self.changes_label = QLabel(
            "A record that changes before the sync runs is checked again: if it would then be created or linked "
            "differently from this plan, it waits in Review instead.",
            wordWrap=True,
        )
        self.queued_label = QLabel(f"{waiting} also waiting to be sent." if queued else "")
        self.queued_label.setVisible(bool(queued))
        self.message_label = QLabel(wordWrap=True, textFormat=Qt.TextFormat.PlainText)
        self.message_label.setStyleSheet("color: #b91c1c; font-weight: bold;")
        self.message_label.hide()
        self.buttons = QDialogButtonBox()
        self.approve_button = self.buttons.addButton("Approve and sync", QDialogButtonBox.ButtonRole.AcceptRole)
        self.cancel_button = self.buttons.addButton("Cancel", QDialogButtonBox.ButtonRole.RejectRole)
        self.cancel_button.setDefault(True)  # a stray Enter must not write to a live account
        self.approve_button.clicked.connect(self.approve)
        self.cancel_button.clicked.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addWidget(heading)
        layout.addWidget(self.tree, 1)
        layout.addWidget(self.stream_note_label)
        layout.addWidget(self.scope_label)
        layout.addWidget(self.fields_label)
        layout.addWidget(self.changes_label)
        layout.addWidget(self.queued_label)
        layout.addWidget(self.message_label)
        layout.addWidget(self.buttons)

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self.cancel_button.setFocus()  # Space or Enter on a just-opened dialog must not write to a live account

    def approve(self) -> None:
        latest = queries.latest_plan(self.plan.stream)
        if latest is None or latest.id != self.plan.id:
            # approve_latest_plan approves the newest plan: never one the person has not seen.
            self._show_problem("A newer plan was made since this one was shown. Close this and open the new one.")
            return
        queries.approve_latest_plan(self.plan.stream)
        try:
            self.job = self.ui.sync_now()
        except SecretStoreError as exc:
            self._show_problem(f"Approved, but the sync could not start: {labels.for_gui(exc)}")
            return
        if self.job is None and not self.ui.attached:  # attached: the background service syncs it
            reason = "syncing is paused" if self.ui.runner.paused() else "a sync is already waiting to start"
            self._show_problem(f"Approved. The sync did not start now because {reason}; it will write the plan then.")
            self.approve_button.setEnabled(False)
            self.cancel_button.setText("Close")
            return
        self.accept()

    def _show_problem(self, text: str) -> None:
        self.message_label.setText(text)
        self.message_label.show()
