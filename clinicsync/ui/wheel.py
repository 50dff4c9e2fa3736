"""The mouse wheel scrolls the page, not the combo box or spin box that happens to pass under the pointer.

A person scrolling down a long form must not change a setting by accident. A box the person has clicked into
(it has the focus) still takes the wheel; one that has not passes the event on to the page around it.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QAbstractScrollArea, QAbstractSpinBox, QApplication, QComboBox, QWidget

GUARDED = (QComboBox, QAbstractSpinBox)


class WheelGuard(QObject):
    """Event filter: an unfocused box never sees the wheel; the nearest scroll area around it gets it instead.

    The event is handed on here rather than ignored for Qt to propagate, because Qt 6 propagates only wheel events
    that come from the window system, and a scroll area that cannot move further must pass it further out.
    """

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() != QEvent.Type.Wheel or not isinstance(watched, QWidget) or watched.hasFocus():
            return False
        assert isinstance(event, QWheelEvent)
        area = watched.parentWidget()
        while area is not None:
            if isinstance(area, QAbstractScrollArea):
                viewport = area.viewport()  # a scroll area takes the wheel through its viewport
                local = viewport.mapFromGlobal(event.globalPosition())
                copy = QWheelEvent(
                    local,
                    event.globalPosition(),
                    event.pixelDelta(),
                    event.angleDelta(),
                    event.buttons(),
                    event.modifiers(),
                    event.phase(),
                    event.inverted(),
                )
                copy.ignore()
                QApplication.sendEvent(viewport, copy)
                if copy.isAccepted():
                    break
            if area.isWindow():
                break
            area = area.parentWidget()
        event.accept()  # dealt with: Qt must not propagate it a second time
        return True


_guard: WheelGuard | None = None


def _the_guard() -> WheelGuard:
    global _guard
    if _guard is None:
        _guard = WheelGuard()
    return _guard


def guard_wheel(root: QWidget) -> None:
    """Guard `root` and every combo box and spin box under it (call again after adding boxes)."""
    guard = _the_guard()
    boxes = [root] if isinstance(root, GUARDED) else []
    for kind in GUARDED:
        boxes += root.findChildren(kind)
    for box in boxes:
        if box.property("wheel_guarded"):
            continue
        box.setProperty("wheel_guarded", True)
        box.setFocusPolicy(Qt.FocusPolicy.StrongFocus)  # a wheel turn does not take the focus either
        box.installEventFilter(guard)
