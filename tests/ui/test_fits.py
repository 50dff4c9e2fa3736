"""A window that fits: at the default size and at 1024×700, every tab shows its buttons, labels, headers and cells
whole (or scrolls, or elides a cell that carries its text as a tooltip); and the mouse wheel scrolls the page
instead of changing the combo box or spin box that happens to be under the pointer."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QApplication, QComboBox, QScrollArea, QSpinBox, QVBoxLayout, QWidget

from clinicsync.ui.main_window import TABS
from clinicsync.ui.wheel import guard_wheel
from tests.ui.conftest import WAIT_MS
from tests.ui.layout_support import fit_problems, shipped_font

DEFAULT_SIZE = (1100, 720)
SIZES = (DEFAULT_SIZE, (1024, 700))


@pytest.fixture
def font(qapp):
    with shipped_font(qapp) as font:
        yield font


def settle(qtbot, tab: QWidget | None = None) -> None:
    """Let background results land, then the layout requests they queue, before measuring (a result landing in
    the last moment would be measured before its text reflowed)."""
    if tab is not None and hasattr(tab, "reading_fields"):
        qtbot.waitUntil(lambda: not tab.reading_fields, timeout=WAIT_MS)
    for _ in range(3):
        QApplication.processEvents()
        qtbot.wait(20)


def every_tab_problems(qtbot, gui, size: tuple[int, int]) -> list[str]:
    window = gui.window
    window.resize(*size)
    window.show()
    qtbot.waitExposed(window)
    problems = []
    for spec in TABS:
        tab = window.show_tab(spec.name)
        settle(qtbot, tab)
        assert (window.width(), window.height()) == size, f"the window cannot be {size[0]}×{size[1]}"
        problems += fit_problems(tab)
    problems += fit_problems(window.tab_widget.tabBar())
    return problems


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_every_tab_fits_before_any_sync(qtbot, font, build_gui, offline_env, size) -> None:
    gui = build_gui(offline_env)
    assert every_tab_problems(qtbot, gui, size) == []


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_every_tab_fits_with_history_and_records_to_review(qtbot, font, sandbox_gui, size) -> None:
    gui, _ = sandbox_gui(env={"CLINICSYNC_SYNC_EMAIL_MATCH": "review"}, profile="hard", patients=20)
    with qtbot.waitSignal(gui.ui.bridge.job_finished, timeout=WAIT_MS):
        gui.sync_now()
    review = gui.window.show_tab("review")
    qtbot.waitUntil(lambda: bool(review.model.rows))
    qtbot.waitUntil(lambda: all(c.loaded for c in review.candidate_model.rows), timeout=WAIT_MS)
    assert every_tab_problems(qtbot, gui, size) == []


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_the_connections_tab_fits_on_the_sandbox_trial(qtbot, font, build_gui, tmp_path, size) -> None:
    """The trial adds its own words to the Connections tab (the way back to one's own accounts); the other tabs
    are the same as on any sandbox profile."""
    from clinicsync.ui.first_run import start_trial
    from tests.support import profile_env
    from tests.ui.connections_support import memory_keyring

    base = profile_env(tmp_path / "clinic", {})
    with memory_keyring():
        start_trial(base, patients=3, products=2).sandbox.stop()
        gui = build_gui(base)  # goes back to the trial
    window = gui.window
    window.resize(*size)
    window.show()
    qtbot.waitExposed(window)
    connections = window.show_tab("connections")
    settle(qtbot, connections)
    assert gui.ui.sandbox is not None and connections.trial_box.isVisibleTo(connections)
    assert (window.width(), window.height()) == size, f"the window cannot be {size[0]}×{size[1]}"
    assert fit_problems(connections) == []


def test_the_default_size_is_the_tested_one(build_gui, offline_env) -> None:
    gui = build_gui(offline_env)
    assert (gui.window.width(), gui.window.height()) == DEFAULT_SIZE


# --- the mouse wheel -------------------------------------------------------------------------------------------
def wheel(widget: QWidget, steps: int = -1) -> None:
    """One notch of the wheel over the middle of `widget`, as the window system delivers it."""
    centre = QPointF(widget.rect().center())
    event = QWheelEvent(
        centre,
        QPointF(widget.mapToGlobal(QPoint(int(centre.x()), int(centre.y())))),
        QPoint(0, 0),
        QPoint(0, 120 * steps),
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(widget, event)


def test_the_wheel_scrolls_the_page_not_the_box_under_the_pointer(qtbot) -> None:
    page = QWidget()
    column = QVBoxLayout(page)
    combo, spin = QComboBox(), QSpinBox()
    combo.addItems(["one", "two", "three"])
    column.addSpacing(400)
    column.addWidget(combo)
    column.addWidget(spin)
    column.addSpacing(1200)
    scroll = QScrollArea()
    scroll.setWidget(page)
    scroll.resize(300, 500)
    guard_wheel(scroll)
    qtbot.addWidget(scroll)
    scroll.show()
    qtbot.waitExposed(scroll)
    bar = scroll.verticalScrollBar()

    wheel(combo)
    assert combo.currentIndex() == 0, "the combo box kept its choice"
    first = bar.value()
    assert first > 0, "the page scrolled instead"
    wheel(spin)
    assert spin.value() == 0 and bar.value() > first
    assert combo.focusPolicy() == Qt.FocusPolicy.StrongFocus, "a wheel turn does not give it the focus either"

    scroll.activateWindow()
    combo.setFocus()  # once a person has clicked into it, the wheel is theirs to change it with
    qtbot.waitUntil(combo.hasFocus)
    wheel(combo)
    assert combo.currentIndex() == 1


def test_the_window_guards_every_box_of_every_tab(build_gui, offline_env) -> None:
    gui = build_gui(offline_env)
    gui.window.show_tab("mapping")
    boxes = [box for tab in gui.window.tabs.values() for box in tab.findChildren(QComboBox)]
    assert boxes and all(box.focusPolicy() == Qt.FocusPolicy.StrongFocus for box in boxes)


def test_the_mapping_form_of_every_transform_fits(qtbot, font, build_gui, offline_env) -> None:
    from clinicsync.mapping.spec import rule
    from clinicsync.mapping.transforms import TRANSFORMS

    gui = build_gui(offline_env)
    gui.window.resize(1024, 700)
    gui.window.show()
    tab = gui.window.show_tab("mapping")
    settle(qtbot, tab)
    problems = []
    for transform in TRANSFORMS:
        sources = {"template": (), "constant": (), "join": ("address_1", "city", "state")}.get(transform, ("city",))
        options = {"template": {"template": "{title} {first_name}"}, "lookup": {"table": {"A": "b"}, "default": "c"}}
        row = tab.add_row(rule(f"metadata.{transform}", *sources, transform=transform, **options.get(transform, {})))
        tab.select_row(row)
        settle(qtbot)
        problems += [f"{transform}: {problem}" for problem in fit_problems(tab)]
    assert problems == [], "\n".join(problems)
