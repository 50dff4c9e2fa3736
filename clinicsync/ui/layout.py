"""Small layout helpers shared by the screens, so that words are never cut off."""

from __future__ import annotations

from PySide6.QtCore import QAbstractItemModel, QEvent, QObject, Qt
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QStyle, QTableView, QWidget


def long_table(parent: QWidget, name: str, model: QAbstractItemModel) -> QTableView:
    """A read-only, row-selecting table that stays cheap with 100,000 rows: fixed row heights, one line per row,
    no sizing to contents (that would measure every row). The caller sets the column widths."""
    view = QTableView(parent, objectName=name)
    view.setModel(model)
    view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    view.setAlternatingRowColors(True)
    view.setWordWrap(False)
    view.setTextElideMode(Qt.TextElideMode.ElideRight)
    view.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
    vertical = view.verticalHeader()
    vertical.setVisible(False)
    vertical.setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
    vertical.setDefaultSectionSize(view.fontMetrics().height() + 8)
    view.horizontalHeader().setHighlightSections(False)
    return view


def fit_header_titles(header: QHeaderView) -> None:
    """No column narrower than its title: stretched columns shrink with the window, and a title cut to "Aft…"
    tells nobody anything. When the columns no longer fit, the table scrolls sideways instead."""
    model = header.model()
    if model is None:
        return
    margin = header.style().pixelMetric(QStyle.PixelMetric.PM_HeaderMargin, None, header)
    widest = 0
    for section in range(header.count()):
        title = model.headerData(section, header.orientation(), Qt.ItemDataRole.DisplayRole)
        widest = max(widest, header.fontMetrics().horizontalAdvance(str(title or "")) + 2 * margin + 4)
    header.setMinimumSectionSize(max(header.minimumSectionSize(), widest))


class ColumnShares(QObject):
    """A table's columns share its width by weight, as the view is resized: the room goes where the long values
    are (emails, addresses), and no column needs a sideways scroll until every one is down to its title's width.
    A cell still too narrow elides, and its tooltip has the whole value."""

    def __init__(self, view: QAbstractItemView, shares: dict[int, int]) -> None:
        super().__init__(view)
        self._view, self._shares = view, shares
        header = view.horizontalHeader() if isinstance(view, QTableView) else None
        assert header is not None, "ColumnShares is for table views"
        self._header = header
        header.setStretchLastSection(False)
        for column in shares:
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.Interactive)
        view.viewport().installEventFilter(self)
        self.apply()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Resize:
            self.apply()
        return False

    def apply(self) -> None:
        available = self._view.viewport().width()
        floor = self._header.minimumSectionSize()
        # A column whose share is below its title's width keeps the title's width, and the others share what is
        # left (found in rounds: giving one its floor can push another below its own).
        floored: set[int] = set()
        while True:
            shared = {column: share for column, share in self._shares.items() if column not in floored}
            room = available - floor * len(floored)
            total = sum(shared.values()) or 1
            below = {column for column, share in shared.items() if room * share // total < floor}
            if not below or len(floored | below) == len(self._shares):
                break
            floored |= below
        widths = {column: max(floor, room * share // total) for column, share in shared.items()}
        widths.update(dict.fromkeys(floored, floor))
        widest = max(self._shares, key=lambda column: self._shares[column])
        widths[widest] += max(0, available - sum(widths.values()))  # the rounding's few pixels
        for column, width in widths.items():
            self._header.resizeSection(column, width)
