"""Review: records ClinicSync would not guess about (two Stripe customers with one email, an email match the
clinic wants confirmed, a customer deleted in Stripe), with the record and its candidate Stripe customers in one
table: the record's own name, email, phone and address on the first row, each candidate's right under it, so a
person can see which is the same person without scrolling sideways.

Link / Create new / Ignore call `queries.resolve_review`, the same operation as the command line's; the next sync
carries the decision out, and the tab then says it did. The local database holds no emails, so the details are
fetched off the GUI thread: the candidates from Stripe (the gateway's `retrieve`), the record from Cliniko (the
stream's `read_one`, through the stored mapping, so it shows what ClinicSync would send). Keys are read on the GUI
thread.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from PySide6.QtCore import (
    QAbstractTableModel,
    QItemSelection,
    QModelIndex,
    QPersistentModelIndex,
    Qt,
    Signal,
)
from PySide6.QtGui import QColor, QFont, QShowEvent
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

from clinicsync import labels
from clinicsync.labels import plural
from clinicsync.mapping.apply import map_record
from clinicsync.mapping.defaults import CLINIKO_PATIENTS
from clinicsync.mapping.spec import StreamMapping
from clinicsync.secrets import STRIPE_API_KEY, SYNC_SECRETS, MemorySecretStore, SecretStoreError
from clinicsync.sources.errors import SourceConfigError
from clinicsync.sources.urls import validate_base_url
from clinicsync.store import mappings as mapping_store
from clinicsync.store import queries
from clinicsync.store.models import ReviewItem
from clinicsync.store.settings import SettingError
from clinicsync.stripe_gateway import StripeFailure, StripeGateway
from clinicsync.sync.runner import JobOutcome, read_credentials
from clinicsync.ui.background import Outcome, run_in_background
from clinicsync.ui.context import UiContext
from clinicsync.ui.layout import ColumnShares, fit_header_titles
from clinicsync.ui.models import PagedTableModel
from clinicsync.ui.models import clean_text as clean
from clinicsync.ui.status import StatusTracker, request_sync

Index = QModelIndex | QPersistentModelIndex

# Why an item waits, in the words of the Stripe object its stream writes (a customer found by email, a product by
# name).
REASONS = {
    "ambiguous_email": "More than one Stripe {one} has this {key}",
    "email_match": "One Stripe {one} has this {key}: link it?",
    "ambiguous_reference": "Several Stripe {many} already name this record in their metadata",
    "stripe_object_deleted": "Its Stripe {one} was deleted in Stripe",
    "link_taken": "The {one} chosen for it is now linked to another record: choose again",
    "calcom_seats_one_payment": "One Stripe {one} for several seats of one booker: choose which seat it paid for",
    "plan_changed": "It changed after you approved the first sync's plan: choose what to do",
}
CROSS_REF_KEY = CLINIKO_PATIENTS.cross_ref_key  # the metadata key naming the patient on a customer


class ReviewRow(NamedTuple):
    """An open review item as plain values (no lazy peewee attributes reach the view). A tuple of plain values,
    which the garbage collector stops watching: 100,000 of them held by the table make no collection slower."""

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
        from clinicsync.streams import STREAMS

        template = REASONS.get(self.reason)
        if template is None:
            return self.reason.replace("_", " ").capitalize()
        stream = STREAMS.get(self.stream)
        kind = stream.stripe_object if stream is not None else "customer"
        one, many = labels.stripe_object_words(kind), labels.stripe_objects_words(kind)
        return template.format(one=one, many=many, key=labels.matched_by(kind) or "email")


_ITEM_ID = ReviewRow._fields.index("id")


class ReviewModel(PagedTableModel[ReviewRow, int]):
    """The open items, a page at a time as the view scrolls."""

    columns = ("Record", "Why it waits for you")
    row_type = ReviewRow

    def __init__(self, parent: Any = None, page_size: int = 200) -> None:
        super().__init__(_load_reviews, page_size, parent)

    def load_until(self, item_id: int) -> int | None:
        """Load pages until the item with this id is in the table (ids ascend); its row, or None if not open."""
        while self.rows and self.rows[-1].id < item_id and self.canFetchMore():
            self.fetchMore()
        return next((i for i, values in enumerate(self.rows.packed) if values[_ITEM_ID] == item_id), None)

    def cell(self, row: ReviewRow, column: int, role: int) -> Any:
        if role == Qt.ItemDataRole.DisplayRole:
            return (row.title, row.reason_text)[column]
        if role == Qt.ItemDataRole.ToolTipRole and column == 1:
            return "\n".join(part for part in (row.reason_text, labels.for_gui(clean(row.detail))) if part)
        return None


def _load_reviews(cursor: int | None, limit: int) -> tuple[list[ReviewRow], int | None]:
    rows = [ReviewRow.of(item) for item in queries.open_reviews_page(cursor, limit)]
    return rows, (rows[-1].id if len(rows) == limit else None)


def address_text(address: Mapping[str, Any] | None) -> str:
    """A postal address on one line: "1 Main St, Unit 2, Carlton VIC 3053, AU"."""
    if not isinstance(address, Mapping):
        return ""
    town = " ".join(str(address.get(key) or "").strip() for key in ("city", "state", "postal_code")).strip()
    parts = (address.get("line1"), address.get("line2"), " ".join(town.split()), address.get("country"))
    return ", ".join(str(part).strip() for part in parts if part and str(part).strip())


# Streams whose records are linked to payments show payment columns in the comparison.
PAYMENT_OBJECTS = ("payment_intent", "charge")
INVOICE_REF_KEY = "cliniko_invoice_id"


def stripe_object_of(stripe_id: str) -> str:
    """Which Stripe object a candidate id names (its prefix)."""
    if stripe_id.startswith("pi_"):
        return "payment_intent"
    if stripe_id.startswith(("ch_", "py_")):
        return "charge"
    return "customer"


def _amount(value: object, currency: object) -> str:
    """A Stripe amount in minor units (an int) or a Cliniko decimal string, as money."""
    from decimal import Decimal, InvalidOperation

    from clinicsync import money

    code = str(currency or money.DEFAULT_CURRENCY)
    try:
        amount = money.from_minor_units(value, code) if isinstance(value, int) else Decimal(str(value))
    except (InvalidOperation, ValueError, TypeError):
        return ""
    return f"{amount:,.2f} {code.upper()}"


def _date(epoch: object) -> str:
    if not isinstance(epoch, int | float):
        return ""
    return datetime.fromtimestamp(epoch, UTC).astimezone().strftime("%Y-%m-%d")


@dataclass(frozen=True)
class Details:
    """One line of the comparison: the record as ClinicSync would send it to Stripe, or a Stripe customer."""

    name: str = ""
    email: str = ""
    phone: str = ""
    address: str = ""
    created: str = ""
    stripe_id: str = ""
    note: str = ""  # e.g. which Cliniko record a customer already names

    @classmethod
    def of_customer(cls, stripe_id: str, customer: Mapping[str, Any]) -> Details:
        metadata = customer.get("metadata") or {}
        names = metadata.get(CROSS_REF_KEY)
        return cls(
            name=clean(customer.get("name")),
            email=clean(customer.get("email")),
            phone=clean(customer.get("phone")),
            address=clean(address_text(customer.get("address"))),
            created=_date(customer.get("created")),
            stripe_id=clean(stripe_id),
            note=f"Its metadata names Cliniko record {clean(names)}" if names else "",
        )

    @classmethod
    def of_stripe(cls, stripe_id: str, obj: Mapping[str, Any]) -> Details:
        """A candidate: a customer, or a payment (an invoice's candidates)."""
        if obj.get("object") in PAYMENT_OBJECTS:
            return cls.of_payment(stripe_id, obj)
        return cls.of_customer(stripe_id, obj)

    @classmethod
    def of_payment(cls, stripe_id: str, payment: Mapping[str, Any]) -> Details:
        """A payment side by side with an invoice: who paid (its billing details), how much, whose customer."""
        billing = payment.get("billing_details") or {}
        names = (payment.get("metadata") or {}).get(INVOICE_REF_KEY)
        return cls(
            name=clean(billing.get("name") or payment.get("description")),
            email=clean(billing.get("email") or payment.get("receipt_email")),
            phone=_amount(payment.get("amount"), payment.get("currency")),
            address=clean(payment.get("customer") or "no customer"),
            created=_date(payment.get("created")),
            stripe_id=clean(stripe_id),
            note=f"Its metadata names Cliniko invoice {clean(names)}" if names else "",
        )

    @classmethod
    def of_invoice(cls, record: Mapping[str, Any]) -> Details:
        """The invoice under review, in the payment columns (never its notes)."""
        return cls(
            name=clean(record.get("invoice_to")),
            phone=_amount(record.get("total_amount"), None),
            created=clean(record.get("issue_date")),  # a pure date: shown as Cliniko has it
        )

    @classmethod
    def of_payload(cls, payload: Mapping[str, Any]) -> Details:
        """From a mapped record (dotted Stripe fields): the values it would have in Stripe."""
        address = {key.removeprefix("address."): value for key, value in payload.items() if key.startswith("address.")}
        return cls(
            name=clean(payload.get("name")),
            email=clean(payload.get("email")),
            phone=clean(payload.get("phone")),
            address=clean(address_text(address)),
        )


@dataclass(frozen=True)
class Candidate:
    """A candidate Stripe customer; `customer` None while loading, or when Stripe says it no longer exists."""

    stripe_id: str
    customer: dict[str, Any] | None = None
    loaded: bool = False

    @property
    def exists(self) -> bool:
        return self.customer is not None


@dataclass(frozen=True)
class RecordSide:
    """The record under review, for the comparison's first row."""

    who: str  # "This patient"
    name: str  # its display name, until its details arrive
    details: Details | None = None  # None while loading, or when Cliniko could not be read
    loaded: bool = False
    problem: str = ""


def _same(left: str, right: str, field: str) -> bool:
    if not left or not right:
        return False
    if field == "phone":  # "0491 570 156" and "+61491570156" are one number
        return re.sub(r"\D", "", left)[-9:] == re.sub(r"\D", "", right)[-9:]
    return left.casefold() == right.casefold()


class ComparisonModel(QAbstractTableModel):
    """The record on the first row, its candidate Stripe customers under it, the same columns for both, so each
    candidate's email, phone and address sit right under the record's (its row is tinted). Values equal to the
    record's are bold."""

    CUSTOMER_COLUMNS = ("", "Name", "Email", "Phone", "Address", "Created", "Stripe id")
    # An invoice and its candidate payments: the same Details fields under payment headings.
    PAYMENT_COLUMNS = ("", "Paid by", "Email", "Amount", "Customer", "Date", "Stripe id")
    columns = CUSTOMER_COLUMNS
    FIELDS = ("name", "email", "phone", "address", "created", "stripe_id")

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.record: RecordSide | None = None
        self.rows: list[Candidate] = []

    def set_rows(self, record: RecordSide | None, rows: list[Candidate], *, payments: bool = False) -> None:
        self.beginResetModel()
        self.record, self.rows = record, list(rows)
        self.columns = self.PAYMENT_COLUMNS if payments else self.CUSTOMER_COLUMNS
        self.endResetModel()

    def set_record(self, record: RecordSide) -> None:
        self.record = record
        if self.rowCount():
            self.dataChanged.emit(self.index(0, 0), self.index(self.rowCount() - 1, len(self.columns) - 1))

    def row_for(self, index: Index) -> Candidate | None:
        """The candidate on this row; None for the record's own row."""
        if not index.isValid() or index.row() == 0 or index.row() > len(self.rows):
            return None
        return self.rows[index.row() - 1]

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008 - Qt's own default
        return 0 if parent.isValid() or self.record is None else 1 + len(self.rows)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.columns)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return self.columns[section]
        return None

    def flags(self, index: Index) -> Qt.ItemFlag:
        if index.isValid() and index.row() == 0:
            return Qt.ItemFlag.ItemIsEnabled  # the record itself cannot be chosen to link to
        return super().flags(index)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or self.record is None:
            return None
        row, column = index.row(), index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._text(row, column)
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(row, column)
        if role == Qt.ItemDataRole.FontRole and self._matches(row, column):
            font = QFont()
            font.setBold(True)
            return font
        if role == Qt.ItemDataRole.BackgroundRole and row == 0:
            return QColor(127, 127, 127, 40)  # translucent: the record's row stands apart in any palette
        return None

    def details_at(self, row: int) -> Details | None:
        if row == 0:
            return self.record.details if self.record is not None else None
        candidate = self.rows[row - 1]
        return Details.of_stripe(candidate.stripe_id, candidate.customer) if candidate.customer else None

    def _text(self, row: int, column: int) -> str:
        assert self.record is not None
        if row == 0:
            if column == 0:
                return self.record.who
            if self.record.details is None:
                return ("loading…" if not self.record.loaded else self.record.name) if column == 1 else ""
            return str(getattr(self.record.details, self.FIELDS[column - 1]))
        candidate = self.rows[row - 1]
        if column == 0:
            return f"{'Payment' if self.columns == self.PAYMENT_COLUMNS else 'Customer'} {row}"
        if column == len(self.columns) - 1:
            return clean(candidate.stripe_id)
        if not candidate.loaded:
            return "loading…" if column == 1 else ""
        if candidate.customer is None:
            return "(deleted in Stripe)" if column == 1 else ""
        details = self.details_at(row)
        return str(getattr(details, self.FIELDS[column - 1])) if details is not None else ""

    def _tooltip(self, row: int, column: int) -> str | None:
        text = self._text(row, column)
        lines = [text] if text else []
        details = self.details_at(row)
        if column == 0 and row == 0 and self.record is not None and self.record.problem:
            lines.append(self.record.problem)
        if column == 0 and details is not None and details.note:
            lines.append(details.note)
        if self._matches(row, column):
            lines.append("The same as the record's")
        return "\n".join(lines) or None

    def _matches(self, row: int, column: int) -> bool:
        if row == 0 or column not in (1, 2, 3, 4) or self.record is None or self.record.details is None:
            return False
        theirs = self.details_at(row)
        field = self.FIELDS[column - 1]
        return theirs is not None and _same(getattr(self.record.details, field), getattr(theirs, field), field)


@dataclass(frozen=True)
class Decision:
    """A decision a person made that a sync carries out (as the tab remembers it before the sync)."""

    id: int
    title: str
    action: str  # link, create
    stripe_id: str | None

    @classmethod
    def of(cls, item: ReviewItem) -> Decision:
        title = clean(item.display_name) or clean(item.source_id)
        return cls(item.id, title, item.resolution or "", item.resolution_stripe_id)


def carried_out_text(results: list[tuple[Decision, str, str | None]]) -> str:
    """What the last sync did with the decisions waiting for it: (decision, its status now, the Stripe id its record
    is linked to now) each."""
    done, failed, waiting = [], [], []
    for decision, status, linked in results:
        if status == "resolved":
            waiting.append(decision.title)
        elif decision.action == "link" and linked == decision.stripe_id:
            done.append(f"{decision.title} is now linked to Stripe customer {decision.stripe_id}")
        elif decision.action == "create" and linked:
            done.append(f"{decision.title} now has a new Stripe customer, {linked}")
        else:
            failed.append(decision.title)
    parts = []
    if done:
        decisions = "decision" if len(done) == 1 else "decisions"
        parts.append(f"The last sync carried out your {decisions}: " + "; ".join(done))
    if failed:
        parts.append(f"It could not carry out your decision about {', '.join(failed)}; Sync history says why")
    if waiting:
        still = plural(len(waiting), "decision waits", "decisions wait")
        parts.append(f"{still} for the next sync: {', '.join(waiting)}")
    return ". ".join(parts) + "." if parts else ""


def fetch_customers(key: str, base_url: str | None, stripe_ids: tuple[str, ...]) -> dict[str, dict[str, Any] | None]:
    """The candidates' current Stripe records (None for a deleted one): customers, or payments with their
    charge's billing details; runs on a worker thread."""
    gateway = StripeGateway(key, base_url=base_url, timeout_s=15.0)
    found = {stripe_id: gateway.retrieve(stripe_object_of(stripe_id), stripe_id) for stripe_id in stripe_ids}
    for payment in found.values():
        charge = payment.get("latest_charge") if payment and payment.get("object") == "payment_intent" else None
        if isinstance(charge, str) and (paid := gateway.retrieve("charge", charge)) is not None:
            payment["billing_details"] = paid.get("billing_details")
    return found


def fetch_record(settings: Any, secrets: MemorySecretStore, mapping: StreamMapping, source_id: str) -> Details | None:
    """The record's own details as ClinicSync would send them to Stripe (None: its source has no such record any
    more); runs on a worker thread. Read through the stream's own source (Cliniko or Cal.com)."""
    from clinicsync.retry import CancelToken
    from clinicsync.streams import STREAMS
    from clinicsync.sync.service import SOURCES

    stream = STREAMS[mapping.stream]
    client = SOURCES[stream.source_system].client(settings, secrets, CancelToken())
    try:
        record = stream.read_one(client, source_id)
    finally:
        client.close()
    if record is None:
        return None
    if mapping.stripe_object in PAYMENT_OBJECTS:
        return Details.of_invoice(record)
    return Details.of_payload(map_record(mapping, record).payload)


def _creates(stream: str) -> bool:
    """Whether "create a new one" is a decision for this stream's records (payments are only ever linked)."""
    from clinicsync.streams import STREAMS

    declared = STREAMS.get(stream)
    return declared is None or declared.creates


class ReviewTab(QWidget):
    """Open review items on top; below, the selected one's record and candidates compared, and the decisions."""

    resolved = Signal(int, str)  # review item id, action
    candidates_loaded = Signal(int)  # review item id
    record_loaded = Signal(int)  # review item id

    def __init__(self, ui: UiContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ui = ui
        self.tracker = ui.status or StatusTracker(ui.runner, ui.bridge, ui.app.settings, self)
        self._customers: dict[str, dict[str, Any] | None] = {}  # fetched this session; refreshed on each sync
        self._records: dict[tuple[str, str], RecordSide] = {}  # (stream, source id) → what Cliniko said
        self._waiting: dict[int, Decision] = {}  # decisions the next sync carries out
        self._loading: set[str] = set()
        self.model = ReviewModel(self)
        self.candidate_model = ComparisonModel(self)
        self._build()
        ui.bridge.job_finished.connect(self._sync_finished)
        # Sync now is offered exactly when the Overview's is: not while syncing, not while paused.
        self.tracker.changed.connect(self._update_sync_button)
        self.reload()
        self._update_sync_button()

    # --- layout -------------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.items_view = _table(self.model)
        self.items_view.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)
        self.items_view.setColumnWidth(0, 240)
        self.items_view.selectionModel().selectionChanged.connect(self._selection_changed)
        self.empty_label = QLabel("Nothing needs review.")
        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addWidget(QLabel("<b>Records waiting for a decision</b>"))
        top_layout.addWidget(self.items_view, 1)
        top_layout.addWidget(self.empty_label)

        # Plain text: the record's name and id come from the clinic's data and are shown as written.
        self.record_label = QLabel(wordWrap=True, textFormat=Qt.TextFormat.PlainText)
        self.record_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.candidates_view = _table(self.candidate_model)
        self.candidates_view.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.candidates_view.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        header = self.candidates_view.horizontalHeader()
        header.setStretchLastSection(False)
        fit_header_titles(header)
        # Widths follow the view: emails and addresses get the room, nothing needs a sideways scroll.
        self._columns = ColumnShares(self.candidates_view, {0: 2, 1: 3, 2: 5, 3: 3, 4: 5, 5: 2, 6: 3})
        self.candidates_view.selectionModel().selectionChanged.connect(self._update_buttons)
        self.link_button = QPushButton("Link to the selected customer")
        self.create_button = QPushButton("Create a new customer")
        self.ignore_button = QPushButton("Don't sync this record")
        self.link_button.clicked.connect(self.link_selected)
        self.create_button.clicked.connect(lambda: self.resolve("create"))
        self.ignore_button.clicked.connect(lambda: self.resolve("ignore"))
        actions = QHBoxLayout()
        for button in (self.link_button, self.create_button, self.ignore_button):
            actions.addWidget(button)
        actions.addStretch(1)
        bottom = QWidget()
        bottom_layout = QVBoxLayout(bottom)
        bottom_layout.setContentsMargins(0, 0, 0, 0)
        bottom_layout.addWidget(self.record_label)
        bottom_layout.addWidget(QLabel("<b>The record, and the Stripe customers it could be</b>"))
        bottom_layout.addWidget(self.candidates_view, 1)
        bottom_layout.addLayout(actions)

        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(top)
        splitter.addWidget(bottom)
        splitter.setChildrenCollapsible(False)
        splitter.setStretchFactor(0, 2)
        splitter.setStretchFactor(1, 3)
        splitter.setSizes([220, 380])

        self.status_label = QLabel(wordWrap=True, textFormat=Qt.TextFormat.PlainText)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.sync_button = QPushButton("Sync now")
        self.sync_button.clicked.connect(self._sync_now)
        footer = QHBoxLayout()
        footer.addWidget(self.status_label, 1)
        footer.addWidget(self.sync_button, 0, Qt.AlignmentFlag.AlignTop)
        layout = QVBoxLayout(self)
        layout.addWidget(splitter, 1)
        layout.addLayout(footer)

    # --- data ---------------------------------------------------------------------------------------------
    def reload(self) -> None:
        """Re-read the open items (the first page; more as the list scrolls) and keep the selection on the same item
        when it is still open."""
        selected = self.current_item()
        self.model.reload()
        self._waiting = {item.id: Decision.of(item) for item in queries.decided_reviews()}
        self.empty_label.setVisible(not self.model.rows)
        row = self.model.load_until(selected.id) if selected else None
        if self.model.rows:
            self.items_view.selectRow(row or 0)
        else:
            self._show_item(None)

    def refresh(self) -> None:
        """What the window calls when the tab is shown or the profile changed: re-read the items and fetch the
        details afresh (after a profile switch they belong to other accounts)."""
        self._customers.clear()
        self._records.clear()
        self.reload()

    def current_item(self) -> ReviewRow | None:
        indexes = self.items_view.selectionModel().selectedRows() if self.items_view.selectionModel() else []
        return self.model.row_for(indexes[0]) if indexes else None

    def current_candidate(self) -> Candidate | None:
        indexes = self.candidates_view.selectionModel().selectedRows()
        return self.candidate_model.row_for(indexes[0]) if indexes else None

    def select_candidate(self, position: int) -> None:
        """Select the candidate at `position` (0: the first candidate; the record's own row is above them)."""
        self.candidates_view.selectRow(position + 1)

    def _selection_changed(self, selected: QItemSelection, deselected: QItemSelection) -> None:
        self._show_item(self.current_item())

    def _show_item(self, item: ReviewRow | None) -> None:
        if item is None:
            self.record_label.setText("")
            self.candidate_model.set_rows(None, [])
            self._update_buttons()
            return
        name = clean(item.display_name) or "(no name)"
        self.record_label.setText(
            f"{name} — {labels.record_words(item.stream)} {clean(item.source_id)}\n{item.reason_text}"
            + (f"\n{labels.sentence(labels.for_gui(clean(item.detail)))}" if item.detail else "")
        )
        self._show_candidates(item)
        if (item.stream, item.source_id) not in self._records:
            self._fetch_record(item)
        missing = tuple(c for c in item.candidates if c not in self._customers and c not in self._loading)
        if missing:
            self._fetch(item.id, missing)
        elif not item.candidates or all(c in self._customers for c in item.candidates):
            self.candidates_loaded.emit(item.id)

    def _record_side(self, item: ReviewRow) -> RecordSide:
        who = f"This {labels.stream_noun(item.stream).removesuffix('s')}"
        return self._records.get((item.stream, item.source_id)) or RecordSide(who, item.title)

    def _show_candidates(self, item: ReviewRow) -> None:
        rows = [Candidate(c, self._customers.get(c), loaded=c in self._customers) for c in item.candidates]
        self.candidate_model.set_rows(self._record_side(item), rows, payments=not _creates(item.stream))
        if rows:
            self.select_candidate(0)
        self._update_buttons()

    def _fetch_record(self, item: ReviewRow) -> None:
        """Read the keys and the mapping here (GUI thread), the record from Cliniko on a worker."""
        side = self._record_side(item)
        try:
            secrets = MemorySecretStore(read_credentials(self.ui.app.secrets, SYNC_SECRETS))
            mapping = mapping_store.load(item.stream)
        except (SecretStoreError, KeyError, ValueError) as exc:
            self._record_read(item, side, Outcome(error=exc))
            return
        self._records[(item.stream, item.source_id)] = side  # asked once; a sync or a refresh asks again
        settings, source_id = self.ui.app.settings, item.source_id
        run_in_background(
            lambda: fetch_record(settings, secrets, mapping, source_id),
            lambda outcome: self._record_read(item, side, outcome),
            owner=self,
        )

    def _record_read(self, item: ReviewRow, side: RecordSide, outcome: Outcome) -> None:
        source = labels.SOURCE_SYSTEMS.get(item.stream.split(".", 1)[0], "Its source")
        if outcome.ok and outcome.value is not None:
            read = RecordSide(side.who, side.name, outcome.value, loaded=True)
        elif outcome.ok:
            read = RecordSide(side.who, side.name, loaded=True, problem=f"{source} no longer has this record.")
        else:
            problem = f"Its details could not be read from {source}: {labels.for_gui(outcome.error)}"
            read = RecordSide(side.who, side.name, loaded=True, problem=problem)
        self._records[(item.stream, item.source_id)] = read
        current = self.current_item()
        if current is not None and current.id == item.id:
            self.candidate_model.set_record(read)
            if read.problem:
                self.record_label.setText(self.record_label.text() + "\n" + read.problem)
        self.record_loaded.emit(item.id)

    def _fetch(self, item_id: int, stripe_ids: tuple[str, ...]) -> None:
        """Read the key here (GUI thread), fetch the customers on a worker."""
        try:
            key = self.ui.app.secrets.get(STRIPE_API_KEY)
            base_url = self.ui.app.settings.get("stripe.base_url") or None
            if base_url:
                base_url = validate_base_url(base_url, "Stripe")
        except (SecretStoreError, SourceConfigError, SettingError) as exc:
            self.status_label.setText(f"Could not load the candidates from Stripe: {labels.for_gui(exc)}")
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
            self.status_label.setText(f"Could not load the candidates from Stripe: {labels.for_gui(text)}")
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
        # An invoice is linked to a payment that exists or to none: nothing is created for it.
        self.create_button.setEnabled(item is not None and _creates(item.stream))
        self.ignore_button.setEnabled(item is not None)

    # --- decisions ----------------------------------------------------------------------------------------
    def link_selected(self) -> None:
        candidate = self.current_candidate()
        if candidate is not None:
            self.resolve("link", candidate.stripe_id)

    def resolve(self, action: str, stripe_id: str | None = None) -> None:
        """Record the decision (as the command line's review command does); the next sync carries it out."""
        item = self.current_item()
        if item is None:
            return
        try:
            queries.resolve_review(item.id, action, stripe_id)
        except queries.ReviewError as exc:
            self.status_label.setText(labels.for_gui(exc))
            return
        what = {
            "link": f"will be linked to Stripe customer {stripe_id} by the next sync",
            "create": "will get a new Stripe customer at the next sync",
            "ignore": "will not be synced",
        }[action]
        self.status_label.setText(f"{item.title} {what}.")
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
        waiting = dict(self._waiting)
        self._customers.clear()
        self._records.clear()
        self.reload()
        if waiting and outcome.failure_kind != "locked":
            results = queries.decision_results(list(waiting))
            now = [(waiting[item.id], item.status, linked) for item, linked in results]
            self.status_label.setText(carried_out_text(now))

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
