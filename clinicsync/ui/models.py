"""Qt item models for the sync history: runs, and the per-record rows of a run with its problems pinned on top.

Rows come from `clinicsync.store.queries` a page at a time (`canFetchMore`/`fetchMore`), so a run with 100,000
records costs one page until someone scrolls. Presentation only: no SQL here.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterable, MutableSequence, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, TypeVar

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QPersistentModelIndex,
    Qt,
)
from PySide6.QtGui import QColor, QGuiApplication, QPalette

from clinicsync import labels
from clinicsync.store import queries
from clinicsync.store.queries import EventCursor, EventQuery, EventRow, RunRow

Index = QModelIndex | QPersistentModelIndex
RowT = TypeVar("RowT")
CursorT = TypeVar("CursorT")

# A page loader: (cursor of the next page or None for the first, page size) -> (rows, next cursor or None).
PageLoader = Callable[[CursorT | None, int], tuple[list[RowT], CursorT | None]]

ROW_ID_ROLE = Qt.ItemDataRole.UserRole + 1  # the run or event id
ACTION_ROLE = Qt.ItemDataRole.UserRole + 2  # an event's action / a run's outcome

DISPLAY_LIMIT = 160  # a 5,000-character name must not make one cell the width of ten screens
TOOLTIP_LIMIT = 1_000
# Everything Qt (or Unicode) breaks a line at: CR LF, LF, CR, VT, FF, NEL, LINE and PARAGRAPH SEPARATOR.
_LINE_BREAK = re.compile(r"\r\n|[\n\r\x0b\x0c\x85\u2028\u2029]")
# C0 and C1 controls, and the invisible direction marks, embeddings, overrides and isolates (LRM, RLM, ALM,
# LRE…RLO, LRI…PDI) that reorder the text after them.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def clean_text(value: object, limit: int = DISPLAY_LIMIT) -> str:
    """Make source data safe to show: no control or bidi characters, one line, at most `limit` characters."""
    if value is None or value == "":
        return ""
    text = _CONTROL.sub("", _LINE_BREAK.sub(" · ", str(value)).replace("\t", " "))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def escape_html(value: object) -> str:
    """Text for a rich-text label (source data, a message): shown as written, never read as markup, so
    "Smith <Allied> & Sons" keeps its words and "<h1>" stays text instead of becoming a heading."""
    return "" if value is None else html.escape(str(value))


def local_time(value: datetime | None) -> datetime | None:
    """The store keeps naive UTC; people read their own clock."""
    return None if value is None else value.replace(tzinfo=UTC).astimezone()


def format_when(value: datetime | None, now: datetime | None = None) -> str:
    moment = local_time(value)
    if moment is None:
        return ""
    now = now or datetime.now().astimezone()
    if moment.date() == now.date():
        return moment.strftime("Today %H:%M:%S")
    if moment.year == now.year:
        return moment.strftime("%d %b %H:%M")
    return moment.strftime("%d %b %Y %H:%M")


def format_duration(run: RunRow) -> str:
    if run.finished_at is None:
        return "running…" if run.outcome == "running" else ""
    seconds = max(0.0, (run.finished_at - run.started_at).total_seconds())
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


TRIGGERS = {
    "manual": "Sync now",
    "schedule": "Scheduled",
    "cli": "Command line",
    "retry": "Retry failed",
    "first_run": "First run",
    "reconcile": "Reconciliation",
    "reconcile_fix": "Reconciliation fix",
    "webhook": "Cal.com notice",
}
OUTCOMES = queries.OUTCOME_WORDS  # one set of words for the window and `clinicsync history`
ACTIONS = {
    "created": "Created",
    "linked": "Linked",
    "updated": "Updated",
    "unchanged": "Unchanged",
    "skipped": "Skipped",
    "failed": "Failed",
    "review": "Needs review",
    "note": "Note",
}


def action_label(action: str, stream: str = "") -> str:
    """What happened to a record, as its stream counts it ("Not paid through Stripe" for an invoice no payment
    is linked to, where the engine says skipped)."""
    named = labels.count_name(action, stream)
    return labels.sentence(named) if named != action else ACTIONS.get(action, action)


def stream_label(stream: str) -> str:
    """'cliniko.patients' → 'Cliniko patients'."""
    return labels.stream_source(stream)


def outcome_label(run: RunRow) -> str:
    if run.dry_run and run.outcome == "ok":
        return "Plan only (nothing written)"
    return OUTCOMES.get(run.outcome, run.outcome)


def _is_dark() -> bool:
    palette = QGuiApplication.palette()
    return palette.color(QPalette.ColorRole.Base).lightness() < 128


def severity_color(kind: str) -> QColor | None:
    """Text colour for a problem, readable on both the light and the dark palette."""
    dark = _is_dark()
    if kind in ("failed",):
        return QColor("#ff6b6b") if dark else QColor("#b3261e")
    if kind in ("attention", "review", "needs_approval"):
        return QColor("#f0b429") if dark else QColor("#8a5a00")
    if kind in ("cancelled", "interrupted"):  # nobody must act: the next sync carries on
        return QColor("#9aa0a6") if dark else QColor("#5f6368")
    return None


def severity_tint(kind: str) -> QColor | None:
    """A faint row background for problems; translucent so it suits either palette."""
    if kind == "failed":
        return QColor(220, 53, 69, 48)
    if kind == "review":
        return QColor(240, 180, 41, 48)
    return None


class PackedRows(MutableSequence[RowT]):
    """A list of rows kept as plain tuples, each made back into its row when read.

    CPython's garbage collector stops watching a plain tuple of plain values (str, int, datetime, None) once it
    survives a collection, but never a dataclass instance or a named tuple. A table holding 100,000 of those made
    each full collection tens of milliseconds longer, and loading them set one off every few pages: the window
    froze while scrolling. Packed, 100,000 rows cost the collector nothing. The last row made is kept, because a
    view asks for one row's cells a column and a role at a time."""

    def __init__(
        self, pack: Callable[[RowT], tuple[Any, ...]], unpack: Callable[[tuple[Any, ...]], RowT], rows: Any = ()
    ) -> None:
        self._pack, self._unpack = pack, unpack
        self._packed: list[tuple[Any, ...]] = [pack(row) for row in rows]
        self._last: tuple[int, RowT] | None = None

    def __len__(self) -> int:
        return len(self._packed)

    def __getitem__(self, position: Any) -> Any:
        if isinstance(position, slice):
            return [self._unpack(values) for values in self._packed[position]]
        if position < 0:
            position += len(self._packed)
            if position < 0:  # as a list does (the packed list would wrap it a second time)
                raise IndexError("row index out of range")
        last = self._last
        if last is not None and last[0] == position:
            return last[1]
        row = self._unpack(self._packed[position])
        self._last = (position, row)
        return row

    def __eq__(self, other: object) -> bool:  # compares as the list of rows it holds
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]  # mutable, as a list

    def values(self, position: int) -> tuple[Any, ...]:
        """The row's packed values, without making the row."""
        return self._packed[position]

    @property
    def packed(self) -> Sequence[tuple[Any, ...]]:
        """Every row's packed values, to search 100,000 rows without making each one (read only)."""
        return self._packed

    def __setitem__(self, position: Any, value: Any) -> None:
        self._last = None
        if isinstance(position, slice):
            self._packed[position] = [self._pack(row) for row in value]
        else:
            self._packed[position] = self._pack(value)

    def __delitem__(self, position: Any) -> None:
        self._last = None
        del self._packed[position]

    def insert(self, position: int, value: RowT) -> None:
        self._last = None
        self._packed.insert(position, self._pack(value))

    def extend(self, values: Iterable[RowT]) -> None:
        self._packed.extend(self._pack(row) for row in values)


def _as_tuple(row: Any) -> tuple[Any, ...]:
    return tuple(row)  # a named tuple's values as a plain tuple, which the collector can stop watching


class RowsTableModel(QAbstractTableModel, Generic[RowT]):
    """A read-only table over a list of rows set at once; subclasses say `columns` and `cell()`, and how a row
    packs into a plain tuple of plain values and back (`pack_row`, `unpack_row`; by default a named tuple's)."""

    columns: Sequence[str] = ()
    row_type: Callable[..., RowT] | None = None  # a named tuple class: packs by default

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.rows: PackedRows[RowT] = self._packed_rows()

    def _packed_rows(self, rows: Iterable[RowT] = ()) -> PackedRows[RowT]:
        return PackedRows(self.pack_row, self.unpack_row, rows)

    def pack_row(self, row: RowT) -> tuple[Any, ...]:
        return _as_tuple(row)

    def unpack_row(self, values: tuple[Any, ...]) -> RowT:
        assert self.row_type is not None, "a model of named tuples says its row_type; others unpack themselves"
        return self.row_type._make(values)  # type: ignore[attr-defined]

    def set_rows(self, rows: Sequence[RowT]) -> None:
        self.beginResetModel()
        self.rows = self._packed_rows(rows)
        self.endResetModel()

    def row_for(self, index: Index) -> RowT | None:
        return self.rows[index.row()] if index.isValid() and index.row() < len(self.rows) else None

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008 - Qt's own default
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.columns)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return self.columns[section]
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        row = self.row_for(index)
        if row is None:
            return None
        value = self.cell(row, index.column(), role)
        if value is None and role == Qt.ItemDataRole.ToolTipRole:
            # A cell too narrow for its text is elided; its tooltip then still has the whole of it.
            text = self.cell(row, index.column(), Qt.ItemDataRole.DisplayRole)
            return text if isinstance(text, str) and text else None
        return value

    def cell(self, row: RowT, column: int, role: int) -> Any:
        raise NotImplementedError


class PagedTableModel(RowsTableModel[RowT], Generic[RowT, CursorT]):
    """A read-only table filled a page at a time from a loader; views ask for more as they scroll."""

    def __init__(self, loader: PageLoader[CursorT, RowT] | None = None, page_size: int = 200, parent: Any = None):
        super().__init__(parent)
        self._loader = loader
        self._page_size = page_size
        self._cursor: CursorT | None = None
        self._more = False

    # --- loading ----------------------------------------------------------------------------------------
    def set_loader(self, loader: PageLoader[CursorT, RowT] | None) -> None:
        """Start over with another loader (another run, another search): the first page loads at once."""
        self.beginResetModel()
        self._loader = loader
        self.rows, self._cursor, self._more = self._packed_rows(), None, loader is not None
        if loader is not None:
            rows, self._cursor = loader(None, self._page_size)
            self.rows = self._packed_rows(rows)
            self._more = self._cursor is not None
        self.endResetModel()

    def reload(self) -> None:
        self.set_loader(self._loader)

    def canFetchMore(self, parent: Index = QModelIndex()) -> bool:  # noqa: B008 - Qt's own default
        return not parent.isValid() and self._more

    def fetchMore(self, parent: Index = QModelIndex()) -> None:  # noqa: B008
        if parent.isValid() or not self._more or self._loader is None:
            return
        rows, cursor = self._loader(self._cursor, self._page_size)
        self._cursor, self._more = cursor, cursor is not None
        if rows:
            first = len(self.rows)
            self.beginInsertRows(QModelIndex(), first, first + len(rows) - 1)
            self.rows.extend(rows)
            self.endInsertRows()

    # --- reading ----------------------------------------------------------------------------------------
    def row_at(self, row: int) -> RowT:
        return self.rows[row]

    @property
    def loaded(self) -> int:
        return len(self.rows)


# --- runs ---------------------------------------------------------------------------------------------


class RunsModel(PagedTableModel[RunRow, int]):
    """Sync runs, newest first. `refresh()` adds new runs at the top and updates ones that were still running,
    so a selection survives a sync finishing."""

    columns = (
        "Started",
        "Stream",
        "Trigger",
        "Duration",
        "Created",
        "Linked",
        "Updated",
        "Unchanged",
        "Skipped",
        "Waiting",
        "Failed",
        "Review",
        "Outcome",
    )
    COUNT_COLUMNS: ClassVar[dict[int, str]] = {
        4: "created",
        5: "linked",
        6: "updated",
        7: "unchanged",
        8: "skipped",
        9: "waiting",  # held back by an earlier change still queued for Stripe (its tooltip says so)
        10: "failed",
        11: "review",
    }
    OUTCOME_COLUMN = 12
    row_type = RunRow

    def __init__(self, page_size: int = 200, parent: Any = None) -> None:
        super().__init__(None, page_size, parent)

    def load(self) -> None:
        self.set_loader(_load_runs)

    def refresh(self) -> list[int]:
        """Pick up runs added or finished since the last look; returns the ids of new runs."""
        if self._loader is None or not self.rows:
            self.load()
            return [row.id for row in self.rows]
        newer = queries.history_runs(after_id=self.rows[0].id, limit=10_000)
        if newer:
            self.beginInsertRows(QModelIndex(), 0, len(newer) - 1)
            self.rows[0:0] = newer
            self.endInsertRows()
        running = [position for position, values in enumerate(self.rows.packed) if values[_FINISHED_AT] is None]
        for position in running:  # it was running: read its final counts and outcome
            run = self.rows[position]
            fresh = queries.history_run(run.id)
            if fresh is not None and fresh != run:
                self.rows[position] = fresh
                self.dataChanged.emit(self.index(position, 0), self.index(position, len(self.columns) - 1))
        return [row.id for row in newer]

    def row_of(self, run_id: int) -> int | None:
        return next((position for position, values in enumerate(self.rows.packed) if values[_ID] == run_id), None)

    def cell(self, run: RunRow, column: int, role: int) -> Any:
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(run, column)
        if role == ROW_ID_ROLE:
            return run.id
        if role == ACTION_ROLE:
            return run.outcome
        if role == Qt.ItemDataRole.TextAlignmentRole and column in self.COUNT_COLUMNS:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ForegroundRole:
            return self._colour(run, column)
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(run, column)
        return None

    def _display(self, run: RunRow, column: int) -> str:
        if column in self.COUNT_COLUMNS:
            value = getattr(run, self.COUNT_COLUMNS[column])
            return f"{value:,}" if value else "–"
        return {
            0: lambda: format_when(run.started_at),
            1: lambda: stream_label(run.stream),
            2: lambda: TRIGGERS.get(run.trigger, run.trigger.replace("_", " ").capitalize()),
            3: lambda: format_duration(run),
            self.OUTCOME_COLUMN: lambda: outcome_label(run),
        }[column]()

    def _colour(self, run: RunRow, column: int) -> QColor | None:
        if column == self.OUTCOME_COLUMN:
            return severity_color(run.outcome)
        action = self.COUNT_COLUMNS.get(column)
        if action in ("failed", "review") and getattr(run, action):
            return severity_color(action)
        return None

    def _tooltip(self, run: RunRow, column: int) -> str:
        started = local_time(run.started_at)
        lines = [f"Run #{run.id} · started {started:%Y-%m-%d %H:%M:%S}" if started else f"Run #{run.id}"]
        if column not in self.COUNT_COLUMNS and column != 0:
            lines.insert(0, self._display(run, column))  # the cell's own words first: it may be elided
        elif column in self.COUNT_COLUMNS:  # what the number counts, as the run's stream names it
            action = self.COUNT_COLUMNS[column]
            lines.insert(0, f"{getattr(run, action):,} {labels.count_name(action, run.stream, gui=True)}")
        if run.message:
            lines.append(clean_text(labels.for_gui(run.message), TOOLTIP_LIMIT))
        return "\n".join(lines)


_ID, _FINISHED_AT = RunRow._fields.index("id"), RunRow._fields.index("finished_at")


def _load_runs(cursor: int | None, limit: int) -> tuple[list[RunRow], int | None]:
    rows = queries.history_runs(before_id=cursor, limit=limit)
    return rows, (rows[-1].id if len(rows) == limit else None)


# --- per-record rows ----------------------------------------------------------------------------------


class EventsModel(PagedTableModel[EventRow, EventCursor]):
    """The per-record rows of one run (or of every run, for a search), failures first, then newest first: the
    order the store's pages come in, so the view shows the model as it is (no sorting proxy)."""

    columns = ("Run", "Time", "Record id", "Name", "Stripe id", "Action", "Message")
    RUN, TIME, SOURCE, NAME, STRIPE, ACTION, MESSAGE = range(7)
    row_type = EventRow

    def __init__(self, page_size: int = 200, parent: Any = None) -> None:
        super().__init__(None, page_size, parent)
        self._query: EventQuery | None = None

    @property
    def query(self) -> EventQuery | None:
        return self._query

    def show(self, query: EventQuery | None) -> None:
        """Show a run's rows (or a search's); None empties the table."""
        self._query = query
        self.set_loader(None if query is None else _event_loader(query))

    def set_rows(self, rows: Sequence[EventRow]) -> None:
        """Show fixed rows (tests, previews), in the pinned order the pages of a query come in."""
        self._query = None
        pinned = sorted(rows, key=lambda event: (pin_rank(event.action), -event.id))
        self.set_loader(lambda _cursor, _limit: (pinned, None))

    def cell(self, event: EventRow, column: int, role: int) -> Any:
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(event, column)
        if role == ROW_ID_ROLE:
            return event.id
        if role == ACTION_ROLE:
            return event.action
        if role == Qt.ItemDataRole.ToolTipRole and column in (self.NAME, self.MESSAGE, self.SOURCE):
            message = labels.for_gui(event.message)
            text = {self.NAME: event.display_name, self.MESSAGE: message, self.SOURCE: event.source_id}[column]
            return clean_text(text, TOOLTIP_LIMIT) or None
        if role == Qt.ItemDataRole.ForegroundRole and column == self.ACTION:
            return severity_color(event.action)
        if role == Qt.ItemDataRole.BackgroundRole:
            return severity_tint(event.action)
        return None

    def _display(self, event: EventRow, column: int) -> str:
        values = {
            self.RUN: lambda: f"#{event.run_id}",
            self.TIME: lambda: format_when(event.created_at),
            self.SOURCE: lambda: clean_text(event.source_id, 40),
            self.NAME: lambda: clean_text(event.display_name) or "(no name)",
            self.STRIPE: lambda: clean_text(event.stripe_id),
            self.ACTION: lambda: action_label(event.action, event.stream),
            self.MESSAGE: lambda: clean_text(labels.for_gui(event.message)),
        }
        return values[column]()


def pin_rank(action: str) -> int:
    try:
        return queries.PINNED_ACTIONS.index(action)
    except ValueError:
        return len(queries.PINNED_ACTIONS)


def _event_loader(query: EventQuery) -> PageLoader[EventCursor, EventRow]:
    def load(cursor: EventCursor | None, limit: int) -> tuple[list[EventRow], EventCursor | None]:
        return queries.history_events(query, cursor, limit)

    return load
