"""Review: records ClinicSync would not guess about (two Stripe customers with one email, an email match the
clinic wants confirmed, a customer deleted in Stripe), with the candidate customers side by side.

Link / Create new / Ignore call `queries.resolve_review`, the same operation as `clinicsync review link|create|
ignore`; the next sync carries the decision out. The local database holds no emails, so the candidates' names and
emails are fetched from Stripe (the gateway's `retrieve`) off the GUI thread, with the key read on the GUI thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QItemSelection,
    QModelIndex,
    QPersistentModelIndex,
    Qt,
    Signal,
)
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from clinicsync.mapping.defaults import CLINIKO_PATIENTS
from clinicsync.secrets import STRIPE_API_KEY, SecretStoreError
from clinicsync.sources.errors import SourceConfigError
from clinicsync.sources.urls import validate_base_url
from clinicsync.store import queries
from clinicsync.store.models import ReviewItem
from clinicsync.store.settings import SettingError
from clinicsync.stripe_gateway import StripeFailure, StripeGateway
from clinicsync.sync.runner import JobOutcome
from clinicsync.ui.background import Outcome, run_in_background
from clinicsync.ui.context import UiContext
from clinicsync.ui.models import RowsTableModel
from clinicsync.ui.models import clean_text as clean
from clinicsync.ui.status import StatusTracker, request_sync

Index = QModelIndex | QPersistentModelIndex

REASONS = {
    "ambiguous_email": "More than one Stripe customer has this email",
    "email_match": "One Stripe customer has this email: link it?",
    "ambiguous_reference": "Several Stripe customers already name this record in their metadata",
    "stripe_object_deleted": "Its Stripe customer was deleted in Stripe",
}
CROSS_REF_KEY = CLINIKO_PATIENTS.cross_ref_key  # the metadata key naming the patient on a customer


@dataclass(frozen=True)
class ReviewRow:
    """An open review item as plain values (no lazy peewee attributes reach the view)."""

    id: int
    stream: str
    source_id: str
    display_name: str
    reason: str
    detail: str
    candidates: tuple[str, ...]

    @classmethod
    def of(cls, item: ReviewItem) -> ReviewRow:
        return cls(
            id=item.id,
            stream=item.stream,
            source_id=item.source_id,
            display_name=item.display_name,
            reason=item.reason,
            detail=item.detail,
            candidates=tuple(item.candidates or ()),
        )

    @property
    def title(self) -> str:
        """The record's name, or its id when it has none; both cleaned (one line, bounded, no bidi tricks)."""
        return clean(self.display_name) or clean(self.source_id)

    @property
    def reason_text(self) -> str:
        return REASONS.get(self.reason, self.reason.replace("_", " "))


@dataclass(frozen=True)
class Candidate:
    """A candidate Stripe customer; `customer` None while loading, or when Stripe says it no longer exists."""

    stripe_id: str
    customer: dict[str, Any] | None = None
    loaded: bool = False

    @property
    def exists(self) -> bool:
        return self.customer is not None


class ReviewModel(RowsTableModel[ReviewRow]):
    columns = ("#", "Record", "Why", "Candidates")

    def cell(self, row: ReviewRow, column: int, role: int) -> Any:
        if role == Qt.ItemDataRole.DisplayRole:
            values = (str(row.id), row.title, row.reason_text, str(len(row.candidates)))
            return values[column]
        if role == Qt.ItemDataRole.ToolTipRole:
            return clean(row.detail) or None
        return None


class CandidateModel(RowsTableModel[Candidate]):
    columns = ("Stripe customer", "Name", "Email", "Phone", "Created", f"Cliniko id ({CROSS_REF_KEY})")

    def cell(self, candidate: Candidate, column: int, role: int) -> Any:
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        if column == 0:
            return clean(candidate.stripe_id)
        if not candidate.loaded:
            return "loading…" if column == 1 else ""
        if candidate.customer is None:
            return "(deleted in Stripe)" if column == 1 else ""
        customer = candidate.customer
        metadata = customer.get("metadata") or {}
        values = (
            clean(customer.get("name")),
            clean(customer.get("email")),
            clean(customer.get("phone")),
            _date(customer.get("created")),
            clean(metadata.get(CROSS_REF_KEY)),
        )
        return values[column - 1]


def _date(epoch: object) -> str:
    if not isinstance(epoch, int | float):
        return ""
    return datetime.fromtimestamp(epoch, UTC).astimezone().strftime("%Y-%m-%d")


def fetch_customers(key: str, base_url: str | None, stripe_ids: tuple[str, ...]) -> dict[str, dict[str, Any] | None]:
    """The candidates' current Stripe records (None for a deleted one); runs on a worker thread."""
    gateway = StripeGateway(key, base_url=base_url, timeout_s=15.0)
    return {stripe_id: gateway.retrieve("customer", stripe_id) for stripe_id in stripe_ids}


class ReviewTab(QWidget):
    """Open review items on the left, the selected one's candidates on the right, and the three decisions."""

    resolved = Signal(int, str)  # review item id, action
    candidates_loaded = Signal(int)  # review item id

    def __init__(self, ui: UiContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ui = ui
        self.tracker = ui.status or StatusTracker(ui.runner, ui.bridge, ui.app.settings, self)
        self._customers: dict[str, dict[str, Any] | None] = {}  # fetched this session; refreshed on each sync
        self._loading: set[str] = set()
        self.model = ReviewModel(self)
        self.candidate_model = CandidateModel(self)
        self._build()
        ui.bridge.job_finished.connect(self._sync_finished)
        # Sync now is offered exactly when the Overview's is: not while syncing, not while paused.
        self.tracker.changed.connect(self._update_sync_button)
        self.reload()
        self._update_sync_button()

    # --- layout -------------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.items_view = _table(self.model)
        self.items_view.selectionModel().selectionChanged.connect(self._selection_changed)
        self.empty_label = QLabel("Nothing needs review.")
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.addWidget(QLabel("<b>Records waiting for a decision</b>"))
        left_layout.addWidget(self.items_view, 1)
        left_layout.addWidget(self.empty_label)

        # Plain text: the record's name and id come from the clinic's data and are shown as written.
        self.record_label = QLabel(wordWrap=True, textFormat=Qt.TextFormat.PlainText)
        self.record_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.candidates_view = _table(self.candidate_model)
        self.candidates_view.selectionModel().selectionChanged.connect(self._update_buttons)
        self.link_button = QPushButton("Link to selected customer")
        self.create_button = QPushButton("Create new customer")
        self.ignore_button = QPushButton("Ignore this record")
        self.link_button.clicked.connect(self.link_selected)
        self.create_button.clicked.connect(lambda: self.resolve("create"))
        self.ignore_button.clicked.connect(lambda: self.resolve("ignore"))
        actions = QHBoxLayout()
        for button in (self.link_button, self.create_button, self.ignore_button):
            actions.addWidget(button)
        actions.addStretch(1)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.addWidget(QLabel("<b>The record</b>"))
        right_layout.addWidget(self.record_label)
        right_layout.addWidget(QLabel("<b>Candidate Stripe customers</b>"))
        right_layout.addWidget(self.candidates_view, 1)
        right_layout.addLayout(actions)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(left)
        splitter.addWidget(right)
        splitter.setStretchFactor(1, 2)
        splitter.setSizes([420, 680])  # the list's reasons are read too, not only the names

        self.status_label = QLabel(wordWrap=True, textFormat=Qt.TextFormat.PlainText)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.sync_button = QPushButton("Sync now")
        self.sync_button.clicked.connect(self._sync_now)
        footer = QHBoxLayout()
        footer.addWidget(self.status_label, 1)
        footer.addWidget(self.sync_button)
        layout = QVBoxLayout(self)
        layout.addWidget(splitter, 1)
        layout.addLayout(footer)

    # --- data ---------------------------------------------------------------------------------------------
    def reload(self) -> None:
        """Re-read the open items (a few rows) and keep the selection on the same item when it is still open."""
        selected = self.current_item()
        self.model.set_rows([ReviewRow.of(item) for item in queries.open_reviews()])
        self.empty_label.setVisible(not self.model.rows)
        row = next((i for i, r in enumerate(self.model.rows) if selected and r.id == selected.id), 0)
        if self.model.rows:
            self.items_view.selectRow(row)
        else:
            self._show_item(None)

    def refresh(self) -> None:
        """What the window calls when the tab is shown or the profile changed: re-read the items and fetch the
        candidates afresh (after a profile switch they belong to another Stripe account)."""
        self._customers.clear()
        self.reload()

    def current_item(self) -> ReviewRow | None:
        indexes = self.items_view.selectionModel().selectedRows() if self.items_view.selectionModel() else []
        return self.model.row_for(indexes[0]) if indexes else None

    def current_candidate(self) -> Candidate | None:
        indexes = self.candidates_view.selectionModel().selectedRows()
        return self.candidate_model.row_for(indexes[0]) if indexes else None

    def _selection_changed(self, selected: QItemSelection, deselected: QItemSelection) -> None:
        self._show_item(self.current_item())

    def _show_item(self, item: ReviewRow | None) -> None:
        if item is None:
            self.record_label.setText("")
            self.candidate_model.set_rows([])
            self._update_buttons()
            return
        name = clean(item.display_name) or "(no name)"
        self.record_label.setText(
            f"{name} — {item.stream} record {clean(item.source_id)}\n{item.reason_text}"
            + (f"\n{clean(item.detail)}" if item.detail else "")
        )
        self._show_candidates(item)
        missing = tuple(c for c in item.candidates if c not in self._customers and c not in self._loading)
        if missing:
            self._fetch(item.id, missing)
        elif not item.candidates or all(c in self._customers for c in item.candidates):
            self.candidates_loaded.emit(item.id)

    def _show_candidates(self, item: ReviewRow) -> None:
        rows = [Candidate(c, self._customers.get(c), loaded=c in self._customers) for c in item.candidates]
        self.candidate_model.set_rows(rows)
        if rows:
            self.candidates_view.selectRow(0)
        self._update_buttons()

    def _fetch(self, item_id: int, stripe_ids: tuple[str, ...]) -> None:
        """Read the key here (GUI thread), fetch the customers on a worker."""
        try:
            key = self.ui.app.secrets.get(STRIPE_API_KEY)
            base_url = self.ui.app.settings.get("stripe.base_url") or None
            if base_url:
                base_url = validate_base_url(base_url, "Stripe")
        except (SecretStoreError, SourceConfigError, SettingError) as exc:
            self.status_label.setText(f"Could not load the candidates from Stripe: {exc}")
            return
        if not key:
            self.status_label.setText("No Stripe key is set, so the candidates' details can't be shown.")
            return
        self._loading.update(stripe_ids)
        run_in_background(
            lambda: fetch_customers(key, base_url, stripe_ids),
            lambda outcome: self._fetched(item_id, stripe_ids, outcome),
            owner=self,
        )

    def _fetched(self, item_id: int, stripe_ids: tuple[str, ...], outcome: Outcome) -> None:
        self._loading.difference_update(stripe_ids)
        if not outcome.ok:
            error = outcome.error
            text = error.message if isinstance(error, StripeFailure) else f"{type(error).__name__}: {error}"
            self.status_label.setText(f"Could not load the candidates from Stripe: {text}")
            return
        self._customers.update(outcome.value)
        current = self.current_item()
        if current is not None and current.id == item_id:
            self._show_candidates(current)
        self.candidates_loaded.emit(item_id)

    def _update_buttons(self) -> None:
        item = self.current_item()
        candidate = self.current_candidate()
        self.link_button.setEnabled(item is not None and candidate is not None and candidate.exists)
        self.create_button.setEnabled(item is not None)
        self.ignore_button.setEnabled(item is not None)

    # --- decisions ----------------------------------------------------------------------------------------
    def link_selected(self) -> None:
        candidate = self.current_candidate()
        if candidate is not None:
            self.resolve("link", candidate.stripe_id)

    def resolve(self, action: str, stripe_id: str | None = None) -> None:
        """Record the decision (as `clinicsync review ACTION`); the next sync carries it out."""
        item = self.current_item()
        if item is None:
            return
        try:
            queries.resolve_review(item.id, action, stripe_id)
        except queries.ReviewError as exc:
            self.status_label.setText(str(exc))
            return
        what = {"link": f"link to {stripe_id}", "create": "create a new customer", "ignore": "ignore"}[action]
        self.status_label.setText(f"#{item.id} {item.title}: {what}. The next sync carries it out.")
        self.reload()
        self.resolved.emit(item.id, action)

    def _sync_now(self) -> None:
        """The Overview's request path: the same checks and the same words when the sync can't start."""
        job, why_not = request_sync(self.ui, "manual")
        if job is None:
            self.status_label.setText(why_not)
        self._update_sync_button()  # queued: disabled now, before the runner reports it started

    def _update_sync_button(self) -> None:
        syncing = self.tracker.syncing
        paused = self.tracker.paused()
        self.sync_button.setEnabled(not syncing and not paused)
        # The words change too, so the state reads the same in any palette (disabled colours vary by theme).
        self.sync_button.setText("Syncing…" if syncing else "Sync now")
        self.sync_button.setToolTip("Syncing is paused" if paused else "Send changes to Stripe now")

    def _sync_finished(self, outcome: JobOutcome) -> None:
        # A sync may open or close items and change the customers in Stripe: read both afresh.
        self._customers.clear()
        self.reload()

    def showEvent(self, event: QShowEvent) -> None:
        self.reload()
        super().showEvent(event)


def _table(model: QAbstractTableModel) -> QTableView:
    view = QTableView()
    view.setModel(model)
    view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    view.verticalHeader().hide()
    view.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    view.horizontalHeader().setStretchLastSection(True)
    view.setWordWrap(False)
    return view
