"""Does every word fit? A walk over a window's visible widgets that lists each text Qt would elide or clip.

The checks compare what a widget needs (its sizeHint / minimumSizeHint, a wrapped label's heightForWidth, a
header's or a cell's text width) with the room its layout gave it. Text in a scroll area may be scrolled out of
view (that is what scrolling is for); a cell may be elided when it carries the whole text as a tooltip.

The font is DejaVu Sans from resources/fonts, so the result is the same on every machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PySide6.QtCore import QModelIndex, Qt
from PySide6.QtGui import QFont, QFontDatabase, QFontMetrics
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractItemView,
    QApplication,
    QComboBox,
    QGroupBox,
    QHeaderView,
    QLabel,
    QScrollArea,
    QStyle,
    QStyleOptionComboBox,
    QTabBar,
    QWidget,
)

FONTS = Path(__file__).resolve().parents[2] / "resources" / "fonts"
FONT_FAMILY = "DejaVu Sans"
FONT_POINTS = 10  # a little larger than Windows' 9 pt Segoe UI, and DejaVu is wide: room to spare elsewhere
ROWS_CHECKED = 40  # cells of the first rows of a table; the rest look the same


@contextmanager
def shipped_font(app: QApplication) -> Iterator[QFont]:
    """DejaVu Sans as the application font for the duration (the app's own font is restored after)."""
    for path in sorted(FONTS.glob("*.ttf")):
        if QFontDatabase.addApplicationFont(str(path)) < 0:
            raise RuntimeError(f"could not load {path}")
    previous = app.font()
    font = QFont(FONT_FAMILY, FONT_POINTS)
    app.setFont(font)
    try:
        yield font
    finally:
        app.setFont(previous)


def describe(widget: QWidget) -> str:
    name = widget.objectName()
    text = ""
    for getter in ("text", "title", "currentText", "placeholderText"):
        value = getattr(widget, getter, None)
        if callable(value):
            try:
                text = str(value())
            except TypeError:
                continue
            if text:
                break
    owner = widget
    tab = ""
    while owner is not None:
        if owner.objectName().startswith("tab-"):
            tab = owner.objectName().removeprefix("tab-")
            break
        owner = owner.parentWidget()
    where = f"[{tab}] " if tab else ""
    return f"{where}{type(widget).__name__}{'#' + name if name else ''} {text[:60]!r}"


def fit_problems(root: QWidget) -> list[str]:
    """Everything visible under `root` whose text is elided or clipped; empty when all of it fits."""
    problems: list[str] = []
    widgets = [root, *root.findChildren(QWidget)]
    for widget in widgets:
        if not widget.isVisibleTo(root) and widget is not root:
            continue
        if widget.width() <= 0 or widget.height() <= 0:
            continue
        problems += _widget_problems(widget)
    return problems


def _widget_problems(widget: QWidget) -> list[str]:
    size = widget.size()
    if isinstance(widget, QLabel):
        return _label_problems(widget)
    out: list[str] = []
    if isinstance(widget, QHeaderView):
        return _header_problems(widget)
    if isinstance(widget, QTabBar):
        return _tab_problems(widget)
    if isinstance(widget, QAbstractItemView):
        out += _cell_problems(widget)
    if isinstance(widget, QScrollArea):
        out += _scroll_problems(widget)
    if isinstance(widget, QComboBox) and not widget.isEditable():
        out += _combo_problems(widget)
    needed = widget.minimumSizeHint()
    squeezed = needed.isValid() and (size.width() < needed.width() - 1 or size.height() < needed.height() - 1)
    if squeezed and (isinstance(widget, QAbstractButton | QGroupBox) or widget.layout() is not None):
        out.append(
            f"{describe(widget)} is {size.width()}×{size.height()} but needs at least "
            f"{needed.width()}×{needed.height()}"
        )
    return out


def _label_problems(label: QLabel) -> list[str]:
    if not label.text() and label.pixmap().isNull():
        return []
    size = label.size()
    if label.wordWrap():
        needed = label.heightForWidth(size.width())
        if needed > size.height() + 1:
            return [f"{describe(label)} is {size.height()} px high but its text needs {needed} px at this width"]
        return []
    hint = label.minimumSizeHint()
    if size.width() < hint.width() - 1 or size.height() < hint.height() - 1:
        shown, needs = f"{size.width()}×{size.height()}", f"{hint.width()}×{hint.height()}"
        return [f"{describe(label)} is {shown} but its text needs {needs}"]
    return []


def _header_problems(header: QHeaderView) -> list[str]:
    model = header.model()
    if model is None or header.orientation() != Qt.Orientation.Horizontal:
        return []
    metrics = QFontMetrics(header.font())
    margin = header.style().pixelMetric(QStyle.PixelMetric.PM_HeaderMargin, None, header)
    out = []
    for logical in range(header.count()):
        if header.isSectionHidden(logical) or header.sectionSize(logical) <= 0:
            continue
        text = str(model.headerData(logical, Qt.Orientation.Horizontal, Qt.ItemDataRole.DisplayRole) or "")
        needed = metrics.horizontalAdvance(text) + 2 * margin
        if header.isSortIndicatorShown():
            needed += header.style().pixelMetric(QStyle.PixelMetric.PM_HeaderMarkSize, None, header) + margin
        if text and header.sectionSize(logical) < needed:
            out.append(f"{describe(header)}: column {text!r} is {header.sectionSize(logical)} px, needs {needed}")
    return out


def _tab_problems(bar: QTabBar) -> list[str]:
    metrics = QFontMetrics(bar.font())
    space = bar.style().pixelMetric(QStyle.PixelMetric.PM_TabBarTabHSpace, None, bar)
    out = []
    for index in range(bar.count()):
        text = bar.tabText(index).replace("&", "")
        needed = metrics.horizontalAdvance(text) + space
        if bar.isTabVisible(index) and bar.tabRect(index).width() < needed:
            out.append(f"{describe(bar)}: tab {text!r} is {bar.tabRect(index).width()} px, needs {needed}")
    return out


def _scroll_problems(area: QScrollArea) -> list[str]:
    """Content wider (or taller) than a scroll area that may not scroll that way is clipped, not scrolled."""
    inner, viewport = area.widget(), area.viewport()
    if inner is None:
        return []
    off = Qt.ScrollBarPolicy.ScrollBarAlwaysOff
    out = []
    if area.horizontalScrollBarPolicy() == off and inner.width() > viewport.width() + 1:
        out.append(f"{describe(area)}: its content is {inner.width()} px wide in {viewport.width()} px, unscrollable")
    if area.verticalScrollBarPolicy() == off and inner.height() > viewport.height() + 1:
        out.append(f"{describe(area)}: its content is {inner.height()} px high in {viewport.height()}, unscrollable")
    return out


def _combo_problems(combo: QComboBox) -> list[str]:
    option = QStyleOptionComboBox()
    option.initFrom(combo)
    option.editable = False
    option.currentText = combo.currentText()
    room = combo.style().subControlRect(
        QStyle.ComplexControl.CC_ComboBox, option, QStyle.SubControl.SC_ComboBoxEditField, combo
    )
    needed = QFontMetrics(combo.font()).horizontalAdvance(combo.currentText())
    if combo.currentText() and room.width() < needed:
        return [f"{describe(combo)} shows its choice in {room.width()} px, needs {needed}"]
    return []


def _cell_problems(view: QAbstractItemView) -> list[str]:
    """A cell may elide its text only when the whole text is its tooltip."""
    model = view.model()
    if model is None:
        return []
    metrics = QFontMetrics(view.font())
    out = []
    for index in _indexes(model, QModelIndex(), ROWS_CHECKED):
        text = index.data(Qt.ItemDataRole.DisplayRole)
        if text is None or str(text) == "":
            continue
        rect = view.visualRect(index)
        if rect.width() <= 0:
            continue
        needed = metrics.horizontalAdvance(str(text)) + 8  # the cell's text margins
        tooltip = index.data(Qt.ItemDataRole.ToolTipRole)
        if rect.width() < needed and not (tooltip and str(text).rstrip("…") in str(tooltip)):
            out.append(f"{describe(view)}: cell {str(text)[:40]!r} is cut ({rect.width()} px) with no tooltip")
    return out


def _indexes(model, parent: QModelIndex, limit: int) -> Iterator[QModelIndex]:
    for row in range(min(model.rowCount(parent), limit)):
        for column in range(model.columnCount(parent)):
            index = model.index(row, column, parent)
            yield index
            if column == 0 and model.rowCount(index) > 0:  # a tree's children (a table has none)
                yield from _indexes(model, index, limit)
