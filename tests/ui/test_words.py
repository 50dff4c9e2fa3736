"""Words a practice manager understands: every string the window can show — each widget of each tab, the dialogs,
the tray menu and the notifications — names no command to run, no environment variable, no internal stream, role
or transform identifier, no validation rule code and no JSON (outside the Advanced panel that exists to show it).
And counts agree with their words ("1 record needs", "3 records need")."""

from __future__ import annotations

import re

import pytest
from PySide6.QtCore import QModelIndex, Qt
from PySide6.QtGui import QTextDocument
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractItemView,
    QComboBox,
    QGroupBox,
    QLabel,
    QLineEdit,
    QMenu,
    QPlainTextEdit,
    QTabWidget,
    QWidget,
)

from clinicsync.labels import for_gui, plural, stream_title
from clinicsync.mapping.transforms import TRANSFORMS
from clinicsync.retry import CancelToken
from clinicsync.secrets import MemorySecretStore
from clinicsync.sync import service
from clinicsync.sync.engine import RunResult
from clinicsync.sync.runner import Job, JobOutcome
from clinicsync.ui.first_run import FirstRunDialog
from clinicsync.ui.main import TRAY_HINT, TRAY_HINT_SCHEDULED
from tests.ui.conftest import WAIT_MS

COMMAND = re.compile(r"`clinicsync|\bclinicsync (?:sync|config|review|mapping|plan|doctor|sandbox|status)\b")
STREAM_ID = re.compile(r"\b(?:cliniko|calcom)\.(?!com\b)[a-z_]+")
RULE_CODE = re.compile(r"\[[a-z]+(?:-[a-z]+)+\]")
IDENTIFIERS = ("cross_ref", "match_key", *(name for name in TRANSFORMS if "_" in name))


def offences(text: str) -> list[str]:
    found = []
    if COMMAND.search(text):
        found.append("a command to run")
    if "CLINICSYNC_" in text:
        found.append("an environment variable")
    if STREAM_ID.search(text):
        found.append("a stream identifier")
    if RULE_CODE.search(text):
        found.append("a rule code")
    found += [f"the identifier {word}" for word in IDENTIFIERS if word in text]
    if "JSON" in text:
        found.append("JSON")
    return found


def plain(label: QLabel) -> str:
    if label.textFormat() == Qt.TextFormat.PlainText:
        return label.text()
    document = QTextDocument()
    document.setHtml(label.text())
    return document.toPlainText()


def raw_panel(widget: QWidget) -> bool:
    """The Advanced panel shows the mapping as its file holds it: identifiers and JSON are its point."""
    while widget is not None:
        if widget.property("shows_raw_mapping"):
            return True
        widget = widget.parentWidget()
    return False


def view_texts(view: QAbstractItemView, limit: int = 60) -> list[str]:
    model = view.model()
    texts = []
    if model is None:
        return texts
    for column in range(model.columnCount()):
        texts.append(str(model.headerData(column, Qt.Orientation.Horizontal) or ""))

    def walk(parent: QModelIndex) -> None:
        for row in range(min(model.rowCount(parent), limit)):
            for column in range(model.columnCount(parent)):
                index = model.index(row, column, parent)
                for role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole):
                    value = index.data(role)
                    if value:
                        texts.append(str(value))
            first = model.index(row, 0, parent)
            if model.rowCount(first):
                walk(first)

    walk(QModelIndex())
    return texts


def widget_texts(root: QWidget) -> list[tuple[str, str]]:
    """(where, text) for everything `root` and its children show or say in a tooltip."""
    found: list[tuple[str, str]] = []
    for widget in [root, *root.findChildren(QWidget)]:
        if raw_panel(widget):
            continue
        where = f"{type(widget).__name__} in {root.objectName() or type(root).__name__}"
        texts = [widget.toolTip(), widget.windowTitle() if widget.isWindow() else ""]
        if isinstance(widget, QLabel):
            texts.append(plain(widget))
        if isinstance(widget, QAbstractButton):
            texts.append(widget.text())
        if isinstance(widget, QGroupBox):
            texts.append(widget.title())
        if isinstance(widget, QComboBox):
            texts += [widget.itemText(i) for i in range(widget.count())] + [widget.currentText()]
        if isinstance(widget, QLineEdit | QPlainTextEdit):
            texts.append(widget.placeholderText())
        if isinstance(widget, QTabWidget):
            texts += [widget.tabText(i) for i in range(widget.count())]
        if isinstance(widget, QAbstractItemView):
            texts += view_texts(widget)
        if isinstance(widget, QMenu):
            texts += [action.text() for action in widget.actions()]
        for action in widget.actions():
            texts.append(action.text())
        found += [(where, text) for text in texts if text]
    return found


def bad_words(pairs: list[tuple[str, str]]) -> list[str]:
    return sorted(
        {f"{where}: {text[:140]!r} names {', '.join(offences(text))}" for where, text in pairs if offences(text)}
    )


def config_problem_message() -> str:
    """The engine's own words for a missing key (they tell the command line what to run)."""
    with pytest.raises(service.ConfigProblem) as problem:
        service.stripe_gateway(None, MemorySecretStore({}), CancelToken())  # the key is missed before any setting
    return str(problem.value)


def test_every_string_the_window_shows_is_in_words(qtbot, sandbox_gui) -> None:
    gui, _ = sandbox_gui(tray=True, env={"CLINICSYNC_SYNC_EMAIL_MATCH": "review"}, profile="hard", patients=20)
    seen: list[tuple[str, str]] = []

    # A sync that leaves records to review and history to read.
    with qtbot.waitSignal(gui.ui.bridge.job_finished, timeout=WAIT_MS):
        gui.sync_now()
    review = gui.window.show_tab("review")
    qtbot.waitUntil(lambda: all(c.loaded for c in review.candidate_model.rows), timeout=WAIT_MS)

    # The engine's messages for the command line, as they reach the window: a missing key, a plan to approve.
    missing_key = config_problem_message()
    assert "clinicsync config set-secret" in missing_key, "the engine's message is the command line's"
    job = Job(99, "manual")
    approval = RunResult(1, "cliniko.patients", "needs_approval", {"created": 3}, message=service.APPROVAL_MESSAGE)
    for outcome in (
        JobOutcome(job, failure_kind="config", message=missing_key),
        JobOutcome(job, results=(approval,)),
    ):
        gui.ui.bridge.job_started.emit(job)
        gui.ui.bridge.job_finished.emit(outcome)  # the alerts it raises are announced at once
        seen += [("overview", gui.window.tab("overview").message_label.text())]
        seen += [("overview", plain(gui.window.tab("overview").banner_text))]
    kinds = {notice.key.split(":")[0] for notice in gui.notifier.shown}
    assert {"config", "approval"} <= kinds, kinds
    seen += [("notification", text) for notice in gui.notifier.shown for text in (notice.title, notice.message)]
    seen += [("tray hint", TRAY_HINT), ("tray hint", TRAY_HINT_SCHEDULED)]

    for name in gui.window.tabs:
        tab = gui.window.show_tab(name)
        qtbot.wait(10)
        seen += widget_texts(tab)
    mapping = gui.window.tab("mapping")
    for row in range(len(mapping.rules())):  # each row's form, not only the first
        mapping.select_row(row)
        seen += widget_texts(mapping.form)
    mapping.add_row()  # a new row and its problems
    seen += widget_texts(mapping)
    seen += widget_texts(gui.window)
    gui.tray.menu.aboutToShow.emit()
    seen += [("tray", text) for text in gui.tray.menu_texts()] + [("tray", gui.tray.icon.toolTip())]
    welcome = FirstRunDialog(gui.ui, gui.window)
    seen += widget_texts(welcome)
    welcome.deleteLater()

    assert len(seen) > 300, "the walk reached the widgets"
    assert bad_words(seen) == []


def test_the_approval_dialog_and_a_live_plans_history_are_in_words(qtbot, sandbox_gui) -> None:
    gui, _ = sandbox_gui(profile="clean", patients=6, stripe_mode="live")
    with qtbot.waitSignal(gui.ui.bridge.job_finished, timeout=WAIT_MS):
        gui.sync_now()
    qtbot.waitUntil(lambda: gui.window.approval_dialog is not None)
    seen = widget_texts(gui.window.approval_dialog)
    assert any("Cliniko patients" in text for _, text in seen)
    history = gui.window.show_tab("history")
    seen += widget_texts(history)  # the run's stored message is the command line's; its tooltip is not
    assert any("check the plan" in text for _, text in seen)
    assert bad_words(seen) == []


@pytest.mark.parametrize(
    "message",
    [
        service.APPROVAL_MESSAGE,
        "No Stripe API key is set. Add it in Connections, or run `clinicsync config set-secret stripe_api_key`.",
        "There is no open review item #3; `clinicsync review list` shows them.",
        "There is no plan for cliniko.patients yet; run `clinicsync sync --once --dry-run` first.",
        "stripe_api_key comes from the environment variable CLINICSYNC_STRIPE_API_KEY, which ClinicSync cannot "
        "change; edit the variable instead, or unset it to keep the key in the OS keyring",
        "The field mapping of cliniko.patients cannot be used, so nothing was sent:\n  row 1 (a ← b): exactly one "
        "rule must be the cross-reference (role cross_ref), found 0 [cross-ref-count]\nFix it in Field mapping, or "
        "with `clinicsync mapping`.",
    ],
)
def test_messages_for_the_command_line_get_the_windows_words(message: str) -> None:
    worded = for_gui(message)
    assert offences(worded) == [] and worded, worded


def test_counts_agree_with_their_words() -> None:
    assert plural(1, "record") == "1 record" and plural(3, "record") == "3 records"
    assert plural(1, "record needs", "records need") == "1 record needs"
    assert plural(3, "record needs", "records need") == "3 records need"
    assert plural(12_000, "patient") == "12,000 patients"
    assert stream_title("cliniko.products") == "Cliniko products → Stripe products and prices"
