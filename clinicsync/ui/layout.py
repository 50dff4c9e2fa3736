"""Small layout helpers shared by the screens, so that words are never cut off."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHeaderView, QStyle


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
