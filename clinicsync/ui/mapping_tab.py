"""Field mapping: per stream, what each Stripe field gets ("First name + last name → Name"), edited row by row in
a small form (clinicsync.ui.rule_form), which records are synced at all, and a live preview on a real record.

Everything the tab saves goes through store/mappings.py — the same validation and clinical allow-list as the
command line's import — so the tab cannot save what the command line would refuse. Problems are shown in plain
words (clinicsync.labels.problem_text) on their row. The mapping as JSON, and the exact Stripe request of the
preview, stay available under "Advanced". The preview reads one real record (and the linked Stripe object) off
the GUI thread; it writes nothing. Keys are read on the GUI thread.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

from PySide6.QtCore import QDate, Qt, Signal
from PySide6.QtGui import QAction, QBrush, QColor, QFont, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDateEdit,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMenu,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from clinicsync import labels
from clinicsync.labels import plural
from clinicsync.mapping.defaults import DEFAULT_MAPPINGS
from clinicsync.mapping.fields import FieldCatalogue, custom_field_entries
from clinicsync.mapping.preview import Preview
from clinicsync.mapping.spec import (
    DocumentError,
    FieldRule,
    StreamMapping,
    SyncScope,
    WritebackConfig,
    to_document,
)
from clinicsync.mapping.transforms import template_fields
from clinicsync.mapping.validate import Problem, validate_mapping
from clinicsync.secrets import SYNC_SECRETS, MemorySecretStore
from clinicsync.store import mappings as mapping_store
from clinicsync.sync.preview import connect, fetch_preview, sample_records, source_settings
from clinicsync.sync.runner import read_credentials
from clinicsync.ui.background import Outcome, run_in_background
from clinicsync.ui.context import UiContext
from clinicsync.ui.layout import fit_header_titles
from clinicsync.ui.models import clean_text
from clinicsync.ui.rule_form import RuleForm
from clinicsync.ui.wheel import guard_wheel

COLUMNS = ("Stripe field", "Comes from", "")
COL_TARGET, COL_SOURCES, COL_STATUS = range(len(COLUMNS))
SCOPES = (
    ("all", "All records"),
    ("since", "Records created or changed since"),
    ("recent_activity", "Patients seen in the last"),
)
INVALID = QColor(220, 50, 47, 60)  # translucent, so it reads in light and dark palettes alike
INVALID_TEXT = QColor(200, 40, 40)
TARGET_ROLE = Qt.ItemDataRole.UserRole + 1  # the preview table's rows: the Stripe field they show
CHANGED_ROLE = Qt.ItemDataRole.UserRole + 2

ConfirmAllow = Callable[[QWidget, str, str], bool]  # (parent, field, warning) → the person said yes


def confirm_allow_dialog(parent: QWidget, field: str, warning: str) -> bool:
    box = QMessageBox(QMessageBox.Icon.Warning, f"Send {field} to Stripe?", warning, parent=parent)
    box.setInformativeText("Allow this field to be sent to Stripe?")
    box.setStandardButtons(QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No)
    box.setDefaultButton(QMessageBox.StandardButton.No)
    return box.exec() == QMessageBox.StandardButton.Yes


def _scroll(widget: QWidget) -> QScrollArea:
    """A column that scrolls when the window is shorter than its content, instead of squeezing it."""
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setWidget(widget)
    return area


def _text(value: Any) -> str:
    if value is None or value == "":
        return "—"
    return clean_text(value)


class MappingTab(QWidget):
    preview_ready = Signal(object)  # Preview, or an exception
    fields_loaded = Signal()
    saved = Signal(int)  # the new version

    def __init__(self, ui: UiContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ui = ui
        self.confirm_allow: ConfirmAllow = confirm_allow_dialog
        self.stream = next(iter(DEFAULT_MAPPINGS))
        self._base: StreamMapping = mapping_store.load(self.stream)
        self._rules: list[FieldRule] = list(self._base.rules)
        self._settings: dict[str, Any] | None = None  # the source's settings (custom fields), once read
        self._catalogue = self._make_catalogue()
        self.problems: list[Problem] = []
        self.row_problems: dict[int, list[str]] = {}  # 0-based row → its problems in words
        self.dirty = False
        self.last_preview: Preview | None = None
        self._loading = False
        self._fields_requested = False
        self.reading_fields = False  # a background read of the source's fields is under way
        self._build()
        self._load_into_widgets()

    # --- layout ---------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.stream_box = QComboBox()
        for stream in DEFAULT_MAPPINGS:
            self.stream_box.addItem(labels.stream_title(stream), stream)
        self.stream_box.currentIndexChanged.connect(lambda _i: self._stream_changed(self.stream_box.currentData()))
        self.version_label = QLabel(wordWrap=True)
        self.revert_button = QPushButton("Revert")
        self.revert_button.setToolTip("Show the saved mapping again, dropping unsaved changes")
        self.save_button = QPushButton("Save")
        self.save_button.setDefault(True)
        self.more_button = QToolButton(text="More", popupMode=QToolButton.ToolButtonPopupMode.InstantPopup)
        more = QMenu(self.more_button)
        self.reset_action = QAction("Reset to ClinicSync's defaults", more)
        self.import_action = QAction("Import from a file…", more)
        self.export_action = QAction("Export to a file…", more)
        for action in (self.reset_action, self.import_action, self.export_action):
            more.addAction(action)
        self.more_button.setMenu(more)
        self.reset_action.triggered.connect(lambda: self.reset_to_defaults())
        self.import_action.triggered.connect(self._import_clicked)
        self.export_action.triggered.connect(self._export_clicked)
        self.revert_button.clicked.connect(lambda: self.reload(force=True))
        self.save_button.clicked.connect(lambda: self.save())

        top = QHBoxLayout()
        top.addWidget(QLabel("Sync:"))
        top.addWidget(self.stream_box)
        top.addWidget(self.version_label, 1)
        top.addWidget(self.more_button)
        top.addWidget(self.revert_button)
        top.addWidget(self.save_button)

        # The rows, in words; the selected one is edited in the form below.
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setWordWrap(False)
        self.table.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.table.setMinimumHeight(180)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(COL_TARGET, QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(COL_SOURCES, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(COL_STATUS, QHeaderView.ResizeMode.ResizeToContents)
        self.table.setColumnWidth(COL_TARGET, 170)
        self.table.itemSelectionChanged.connect(self._selection_changed)

        self.add_button = QPushButton("Add a field")
        self.remove_button = QPushButton("Remove")
        self.up_button = QPushButton("Move up")
        self.down_button = QPushButton("Move down")
        self.allow_button = QPushButton("Allow clinical field…")
        self.allow_button.setToolTip("Read what sending this clinical field to Stripe would mean, and allow it")
        self.add_button.clicked.connect(lambda: self.add_row())
        self.remove_button.clicked.connect(lambda: self.remove_row(self.table.currentRow()))
        self.up_button.clicked.connect(lambda: self.move_row(self.table.currentRow(), -1))
        self.down_button.clicked.connect(lambda: self.move_row(self.table.currentRow(), +1))
        self.allow_button.clicked.connect(lambda: self.allow_selected())
        rows = QHBoxLayout()
        for button in (self.add_button, self.remove_button, self.up_button, self.down_button):
            rows.addWidget(button)
        rows.addStretch(1)
        rows.addWidget(self.allow_button)

        self.form = RuleForm()
        self.form.edited.connect(self._form_edited)
        self.message = QLabel(wordWrap=True, textFormat=Qt.TextFormat.PlainText)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        editor = QWidget()
        editor_layout = QVBoxLayout(editor)
        editor_layout.addWidget(QLabel("<b>What each Stripe field gets</b>"))
        editor_layout.addWidget(self.table, 1)
        editor_layout.addLayout(rows)
        editor_layout.addWidget(self.form)
        editor_layout.addWidget(self.message)

        # Which records, and the link back.
        self.scope_box = QComboBox()
        for key, label in SCOPES:
            self.scope_box.addItem(label, key)
        recent = self.scope_box.findData("recent_activity")
        self.scope_box.setItemData(
            recent, "Patients with an invoice or an appointment in that time", Qt.ItemDataRole.ToolTipRole
        )
        self.since_edit = QDateEdit(calendarPopup=True)
        self.since_edit.setDisplayFormat("d MMM yyyy")
        self.months_spin = QSpinBox(minimum=1, maximum=120, suffix=" months")
        self.scope_box.currentIndexChanged.connect(self._settings_edited)
        self.since_edit.dateChanged.connect(self._settings_edited)
        self.months_spin.valueChanged.connect(self._settings_edited)
        self.writeback_check = QCheckBox("Write each Stripe id back into Cliniko, in:")
        self.writeback_field = QComboBox()
        self.writeback_field.setEditable(True)
        self.writeback_check.toggled.connect(self._settings_edited)
        self.writeback_field.currentTextChanged.connect(self._settings_edited)
        records = QGroupBox("Which records are synced")
        records_form = QFormLayout(records)
        records_form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        scope_row = QHBoxLayout()
        scope_row.addWidget(self.since_edit)
        scope_row.addWidget(self.months_spin)
        scope_row.addStretch(1)
        records_form.addRow(self.scope_box)
        records_form.addRow(scope_row)
        self.scope_hint = QLabel(wordWrap=True)
        records_form.addRow(self.scope_hint)
        records_form.addRow(self.writeback_check)
        records_form.addRow(self.writeback_field)

        # Preview.
        self.record_box = QComboBox()
        self.record_box.setEditable(True)
        self.record_box.lineEdit().setPlaceholderText("a Cliniko record's id")
        self.preview_button = QPushButton("Preview")
        self.preview_button.clicked.connect(lambda: self.preview(self.record_id()))
        # Plain text: the preview names the record (the clinic's data) and quotes errors.
        self.preview_status = QLabel(
            "Try the mapping on a real record: nothing is written.", wordWrap=True, textFormat=Qt.TextFormat.PlainText
        )
        self.diff_label = QLabel(wordWrap=True)
        self.diff_table = QTableWidget(0, 3)
        self.diff_table.setHorizontalHeaderLabels(["Stripe field", "In Stripe now", "Next sync"])
        self.diff_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        fit_header_titles(self.diff_table.horizontalHeader())
        self.diff_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.diff_table.verticalHeader().hide()
        self.diff_table.setMinimumHeight(160)
        preview = QGroupBox("Preview")
        preview_layout = QVBoxLayout(preview)
        picker = QHBoxLayout()
        picker.addWidget(self.record_box, 1)
        picker.addWidget(self.preview_button)
        preview_layout.addLayout(picker)
        preview_layout.addWidget(self.preview_status)
        preview_layout.addWidget(self.diff_label)
        preview_layout.addWidget(self.diff_table, 1)

        # Advanced: the mapping as JSON (the format of Export and Import), and the preview's exact request.
        self.advanced_button = QToolButton(text="Advanced", checkable=True)
        self.advanced_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.advanced_button.setArrowType(Qt.ArrowType.RightArrow)
        self.advanced_button.toggled.connect(self._advanced_toggled)
        self.json_edit = QPlainTextEdit()
        self.json_edit.setMinimumHeight(160)
        self.apply_json_button = QPushButton("Use this text")
        self.apply_json_button.clicked.connect(lambda: self.apply_json(self.json_edit.toPlainText()))
        self.payload_view = QPlainTextEdit(readOnly=True)
        self.payload_view.setPlaceholderText("The exact Stripe request of the preview appears here.")
        self.payload_view.setMinimumHeight(120)
        self.advanced = QWidget()
        self.advanced.setProperty("shows_raw_mapping", True)  # identifiers and JSON are the point here
        advanced_layout = QVBoxLayout(self.advanced)
        advanced_layout.setContentsMargins(0, 0, 0, 0)
        advanced_layout.addWidget(QLabel("The whole mapping, as Export writes it:", wordWrap=True))
        advanced_layout.addWidget(self.json_edit)
        advanced_layout.addWidget(self.apply_json_button, 0, Qt.AlignmentFlag.AlignRight)
        advanced_layout.addWidget(QLabel("The exact request the preview would send to Stripe:", wordWrap=True))
        advanced_layout.addWidget(self.payload_view)
        self.advanced.hide()

        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.addWidget(records)
        side_layout.addWidget(preview, 1)
        side_layout.addWidget(self.advanced_button, 0, Qt.AlignmentFlag.AlignLeft)
        side_layout.addWidget(self.advanced)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(_scroll(editor))
        splitter.addWidget(_scroll(side))
        splitter.setChildrenCollapsible(False)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        splitter.setSizes([600, 400])
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(splitter, 1)
        guard_wheel(self)

    # --- the model ------------------------------------------------------------------------------------
    def _make_catalogue(self) -> FieldCatalogue:
        return FieldCatalogue.for_source(
            self._base.source_system, self._base.source_type, custom_field_entries(self._settings)
        )

    def current_mapping(self) -> StreamMapping:
        """The mapping as edited (not yet saved)."""
        kind = self.scope_box.currentData() or "all"
        qdate = self.since_edit.date()
        scope = SyncScope(
            kind=kind,
            since=date(qdate.year(), qdate.month(), qdate.day()) if kind == "since" else None,
            months=self.months_spin.value(),
        )
        token = str(self.writeback_field.currentData() or self.writeback_field.currentText()).strip()
        writeback = WritebackConfig(enabled=self.writeback_check.isChecked(), field_token=token)
        return replace(self._base, rules=tuple(self._rules), scope=scope, writeback=writeback)

    def rules(self) -> tuple[FieldRule, ...]:
        return tuple(self._rules)

    def validate(self) -> list[Problem]:
        """Check the edited mapping and mark every invalid row with its problems, in words."""
        mapping = self.current_mapping()
        self.problems = validate_mapping(mapping, self._catalogue, mapping_store.allowed_fields(self.stream))
        self.row_problems = {}
        whole: list[str] = []
        for problem in self.problems:
            text = labels.problem_text(problem, mapping, self._catalogue)
            if problem.row:
                self.row_problems.setdefault(problem.row - 1, []).append(text)
            else:
                whole.append(text)
        for row in range(self.table.rowCount()):
            self._show_row_status(row)
        self.form.show_problems(self.row_problems.get(self.table.currentRow(), []))
        if self.problems:
            lines = [f"Row {row + 1}: {text}" for row, texts in sorted(self.row_problems.items()) for text in texts]
            lines = whole + lines
            more = f"\n…and {len(lines) - 4} more" if len(lines) > 4 else ""
            head = f"{plural(len(self.problems), 'problem')} to fix before saving:\n"
            self._say(head + "\n".join(lines[:4]) + more, True)
        elif self._base.unreadable and not self.dirty:  # not blocking: saving is how it is replaced
            self._say(labels.for_gui(self._base.unreadable), True)
        else:
            self._say("No problems." + (" Unsaved changes." if self.dirty else ""), False)
        if self.advanced.isVisible() and not self.json_edit.hasFocus():
            self._show_json()
        self._update_buttons()
        return self.problems

    def row_status(self, row: int) -> str:
        """ "✓", or "⚠ " and the row's problems in words."""
        problems = self.row_problems.get(row, [])
        return "⚠ " + "; ".join(problems) if problems else "✓"

    # --- editing --------------------------------------------------------------------------------------
    def select_row(self, row: int) -> RuleForm:
        """Select a row; its form (the tests and the keyboard reach the editors there)."""
        self.table.selectRow(row)
        return self.form

    def add_row(self, rule: FieldRule | None = None) -> int:
        self._rules.append(rule or FieldRule(target="metadata.", sources=()))
        self._changed(rebuild=True)
        row = len(self._rules) - 1
        self.table.selectRow(row)
        return row

    def remove_row(self, row: int) -> None:
        if 0 <= row < len(self._rules):
            del self._rules[row]
            self._changed(rebuild=True)

    def move_row(self, row: int, delta: int) -> None:
        target = row + delta
        if 0 <= row < len(self._rules) and 0 <= target < len(self._rules):
            self._rules[row], self._rules[target] = self._rules[target], self._rules[row]
            self._changed(rebuild=True)
            self.table.selectRow(target)

    def set_rule(self, row: int, rule: FieldRule) -> None:
        self._rules[row] = rule
        self._changed(rebuild=True)

    def reset_to_defaults(self) -> None:
        """The built-in default in the editor, with the scope the connected Stripe mode starts with (saved only
        with Save). Before, it put scope "all" in, and saving that widened a live account's 24-month default."""
        livemode = self.ui.status.key_livemode if self.ui.status is not None else None
        default = mapping_store.default_for_connection(self.stream, livemode=livemode)
        self._apply_mapping(replace(default, version=self._base.version))
        self.dirty = True
        self.validate()

    def import_file(self, path: Path) -> bool:
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
            mapping = mapping_store.parse(self.stream, document)
        except (OSError, ValueError, DocumentError) as exc:
            self._say(f"Could not import {Path(path).name}: {labels.for_gui(exc)}", True)
            return False
        self._apply_mapping(replace(mapping, version=self._base.version))
        self.dirty = True
        self.validate()
        return True

    def export_file(self, path: Path) -> None:
        document = {**to_document(self.current_mapping()), "version": self._base.version}
        try:
            Path(path).write_text(json.dumps(document, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            self._say(f"Could not export to {Path(path).name}: {exc.strerror or exc}", True)
            return
        self._say(f"Exported to {Path(path).name}.", False)

    def apply_json(self, text: str) -> bool:
        """Advanced: take the mapping from JSON text (the Export format). Refused, with the reason, when malformed."""
        try:
            mapping = mapping_store.parse(self.stream, json.loads(text))
        except json.JSONDecodeError as exc:
            self._say(f"That text is not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}.", True)
            return False
        except (ValueError, DocumentError) as exc:
            self._say(f"That text is not a mapping ClinicSync can read: {labels.for_gui(exc)}.", True)
            return False
        self._apply_mapping(replace(mapping, version=self._base.version))
        self.dirty = True
        self.validate()
        return True

    def save(self) -> bool:
        if self.validate():
            return False
        try:
            result = mapping_store.save(self.current_mapping(), self._catalogue)
        except mapping_store.MappingInvalid as exc:  # allowances changed meanwhile
            mapping = self.current_mapping()
            texts = [labels.problem_text(problem, mapping, self._catalogue) for problem in exc.problems]
            self._say("Not saved:\n" + "\n".join(texts), True)
            return False
        self._base = result.mapping
        self.dirty = False
        self._update_version()
        if not result.changed:
            self._say("Nothing to save: this is the saved mapping.", False)
        else:
            reread = " The next sync reads every record again and updates those whose Stripe fields change."
            self._say(f"Saved as version {result.mapping.version}." + (reread if result.cursor_reset else ""), False)
            self.saved.emit(result.mapping.version)
        return True

    def reload(self, *, force: bool = False) -> None:
        """Show the stored mapping again (unsaved edits are kept unless `force`)."""
        if self.dirty and not force:
            return
        self._base = mapping_store.load(self.stream)
        self._catalogue = self._make_catalogue()
        self._apply_mapping(self._base)
        self.dirty = False
        self.validate()

    def refresh(self) -> None:
        """Called by the window when the tab comes to the front or the profile changes."""
        self.reload()

    def allow_selected(self) -> bool:
        """Allow the clinical field of the selected row, after the person has read the warning."""
        row = self.table.currentRow()
        fields = self._clinical_fields(row)
        if not fields:
            return False
        mapping = self.current_mapping()
        for field in fields:
            label = labels.source_label(field, self._catalogue)
            warning = mapping_store.warning_for(self.stream, field, self._catalogue, mapping)
            if not self.confirm_allow(self, label, warning):
                self._say(f"{label} was not allowed.", False)
                return False
            mapping_store.allow(self.stream, field, warning=warning, via="gui")
        self.validate()
        return True

    def _clinical_fields(self, row: int) -> list[str]:
        if not 0 <= row < len(self._rules):
            return []
        allowed = mapping_store.allowed_fields(self.stream)
        return [
            s
            for s in self._rules[row].sources
            if self._catalogue.get(s) is not None and self._catalogue.class_of(s) == "clinical" and s not in allowed
        ]

    def _apply_mapping(self, mapping: StreamMapping) -> None:
        self._base = mapping
        self._rules = list(mapping.rules)
        self._loading = True
        try:
            index = next(i for i, (key, _) in enumerate(SCOPES) if key == mapping.scope.kind)
            self.scope_box.setCurrentIndex(index)
            since = mapping.scope.since or date.today()
            self.since_edit.setDate(QDate(since.year, since.month, since.day))
            self.months_spin.setValue(mapping.scope.months)
            self.writeback_check.setChecked(mapping.writeback.enabled)
            self._fill_writeback_fields(mapping.writeback.field_token)
            self._rebuild_table()
        finally:
            self._loading = False
        self._update_scope_widgets()
        self._update_version()

    def _load_into_widgets(self) -> None:
        self._apply_mapping(self._base)
        if self._rules:
            self.table.selectRow(0)
        self.validate()

    def _stream_changed(self, stream: str) -> None:
        if stream and stream != self.stream:
            self.stream = stream
            self._settings = None
            self._fields_requested = False
            self.reload(force=True)

    def _changed(self, *, rebuild: bool = False) -> None:
        if self._loading:
            return
        self.dirty = True
        if rebuild:
            self._loading = True
            try:
                self._rebuild_table()
            finally:
                self._loading = False
        self.validate()

    def _settings_edited(self, *_: object) -> None:
        self._update_scope_widgets()
        self._changed()

    def _update_scope_widgets(self) -> None:
        kind = self.scope_box.currentData()
        self.since_edit.setVisible(kind == "since")
        self.months_spin.setVisible(kind == "recent_activity")
        self.writeback_field.setEnabled(self.writeback_check.isChecked())

    def _update_version(self) -> None:
        origin = (
            f"Saved version {self._base.version}."
            if self._base.version
            else "ClinicSync's built-in mapping (not saved yet)."
        )
        # Not saved yet: a live Stripe connection syncs a narrower set (see default_scope_for_pair).
        live_scope = mapping_store.default_scope_for_pair(self.stream, livemode=True)
        unsaved_live_default = not self._base.version and live_scope != self._base.scope
        self.scope_hint.setText(
            f"Not saved yet: a LIVE Stripe account syncs only {live_scope.describe()} until you save a choice here."
            if unsaved_live_default
            else ""
        )
        self.scope_hint.setVisible(unsaved_live_default)
        self.version_label.setText(origin)

    def _update_buttons(self) -> None:
        row = self.table.currentRow()
        self.remove_button.setEnabled(0 <= row < len(self._rules))
        self.up_button.setEnabled(row > 0)
        self.down_button.setEnabled(0 <= row < len(self._rules) - 1)
        self.allow_button.setEnabled(bool(self._clinical_fields(row)))

    def _say(self, text: str, problem: bool) -> None:
        self.message.setText(text)
        self.message.setStyleSheet(f"color: {INVALID_TEXT.name()};" if problem else "")

    # --- the table and the form -------------------------------------------------------------------------------
    def _rebuild_table(self) -> None:
        current = self.table.currentRow()
        self.table.setRowCount(len(self._rules))
        for row in range(len(self._rules)):
            self._show_row_text(row)
            self._show_row_status(row)
        if 0 <= current < len(self._rules):
            self.table.selectRow(current)
        elif self._rules:
            self.table.selectRow(min(max(current, 0), len(self._rules) - 1))
        self._selection_changed()

    def _show_row_text(self, row: int) -> None:
        rule = self._rules[row]
        for column, text in (
            (COL_TARGET, labels.target_label(rule.target)),
            (COL_SOURCES, labels.sources_phrase(rule, self._catalogue)),
        ):
            item = QTableWidgetItem(text)
            item.setToolTip(f"{labels.rule_summary(rule, self._catalogue)}\n{labels.transform_label(rule.transform)}")
            self.table.setItem(row, column, item)

    def _show_row_status(self, row: int) -> None:
        reasons = self.row_problems.get(row, [])
        item = QTableWidgetItem("⚠" if reasons else "✓")
        item.setToolTip("\n".join(reasons) if reasons else "No problems")
        item.setForeground(QBrush(INVALID_TEXT) if reasons else QBrush())
        item.setBackground(QBrush(INVALID) if reasons else QBrush())
        item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
        self.table.setItem(row, COL_STATUS, item)
        header = QTableWidgetItem(f"{row + 1} ⚠" if reasons else str(row + 1))
        header.setForeground(QBrush(INVALID_TEXT) if reasons else QBrush())
        header.setToolTip("\n".join(reasons))
        self.table.setVerticalHeaderItem(row, header)

    def _selection_changed(self) -> None:
        row = self.table.currentRow()
        rule = self._rules[row] if 0 <= row < len(self._rules) else None
        self.form.load(rule, row, self._catalogue, self._base.stripe_object)
        self.form.show_problems(self.row_problems.get(row, []))
        self._update_buttons()

    def _form_edited(self, rule: FieldRule) -> None:
        row = self.table.currentRow()
        if self._loading or not 0 <= row < len(self._rules):
            return
        # A template's placeholders are its sources: keep them in step, so the row never disagrees with itself.
        if rule.transform == "template" and isinstance(rule.options.get("template"), str):
            rule = replace(rule, sources=tuple(template_fields(rule.options["template"])))
        self._rules[row] = rule
        self._show_row_text(row)
        self._changed()

    def _fill_writeback_fields(self, token: str) -> None:
        self.writeback_field.clear()
        for entry in self._catalogue.fields:
            if entry.name.startswith("custom_fields.") and entry.kind == "text":
                self.writeback_field.addItem(entry.label, entry.name.removeprefix("custom_fields."))
        index = self.writeback_field.findData(token)
        if index >= 0:
            self.writeback_field.setCurrentIndex(index)
        else:
            self.writeback_field.setCurrentIndex(-1)
            self.writeback_field.setEditText(token)

    # --- advanced -------------------------------------------------------------------------------------------
    def _advanced_toggled(self, shown: bool) -> None:
        self.advanced.setVisible(shown)
        self.advanced_button.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)
        if shown:
            self._show_json()

    def _show_json(self) -> None:
        document = to_document(self.current_mapping())
        self.json_edit.setPlainText(json.dumps(document, ensure_ascii=False, indent=2))

    # --- files ----------------------------------------------------------------------------------------
    def _import_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import a mapping", "", "Mapping (*.json)")
        if path:
            self.import_file(Path(path))

    def _export_clicked(self) -> None:
        name = f"{labels.stream_source(self.stream).lower().replace(' ', '-')}-mapping.json"
        path, _ = QFileDialog.getSaveFileName(self, "Export the mapping", name, "Mapping (*.json)")
        if path:
            self.export_file(Path(path))

    # --- talking to the source (off the GUI thread) ---------------------------------------------------------
    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if not self._fields_requested:
            self.load_source_fields()

    def _secrets(self) -> MemorySecretStore:
        """The keys, read here on the GUI thread (some keyrings must not be used from worker threads)."""
        return MemorySecretStore(read_credentials(self.ui.app.secrets, SYNC_SECRETS))

    def load_source_fields(self) -> None:
        """Read the source's real field list (custom fields) and a few records to preview on."""
        self._fields_requested = True
        self.reading_fields = True
        settings, secrets, stream, base = self.ui.app.settings, self._secrets(), self.stream, self._base
        probe = replace(base, writeback=WritebackConfig(enabled=True))  # makes source_settings read custom fields

        def work() -> tuple[Any, list[tuple[str, str]]]:
            connection = connect(settings, secrets, stream)
            try:
                return source_settings(connection, probe), sample_records(connection, base)
            finally:
                connection.close()

        run_in_background(work, self._fields_done, owner=self)

    def _fields_done(self, outcome: Outcome) -> None:
        self.reading_fields = False
        if not outcome.ok:
            self.preview_status.setText(
                f"Cliniko could not be read for its fields and records: {labels.for_gui(outcome.error)}"
            )
            self.fields_loaded.emit()
            return
        self._settings, samples = outcome.value
        self._catalogue = self._make_catalogue()
        keep = self.record_box.currentText()
        self.record_box.clear()
        for record_id, name in samples:
            self.record_box.addItem(f"{clean_text(name)} — {record_id}", record_id)
        if keep:
            self.record_box.setEditText(keep)
        self.record_box.lineEdit().setCursorPosition(0)
        token = self.current_mapping().writeback.field_token
        self._loading = True
        try:
            self._fill_writeback_fields(token)
            self._rebuild_table()
        finally:
            self._loading = False
        self.validate()
        self.fields_loaded.emit()
        if self.last_preview is None and samples:  # show something real at once; the person can pick another
            self.preview(self.record_id())

    def record_id(self) -> str:
        data = self.record_box.currentData()
        text = self.record_box.currentText().strip()
        if data and self.record_box.itemText(self.record_box.currentIndex()) == text:
            return str(data)
        return text.rsplit("—", 1)[-1].strip()

    def preview(self, record_id: str) -> None:
        """Fetch one record (and its Stripe customer) off the GUI thread and show what a sync would send."""
        if not record_id:
            self.preview_status.setText("Choose a record, or type its Cliniko id, first.")
            return
        mapping, settings, secrets = self.current_mapping(), self.ui.app.settings, self._secrets()
        self.preview_button.setEnabled(False)
        self.preview_status.setText(f"Reading record {record_id}…")

        def work() -> Preview:
            connection = connect(settings, secrets, mapping.stream)
            try:
                return fetch_preview(connection, mapping, record_id)
            finally:
                connection.close()

        run_in_background(work, self._preview_done, owner=self)

    def _preview_done(self, outcome: Outcome) -> None:
        self.preview_button.setEnabled(True)
        if not outcome.ok:
            self.last_preview = None
            self.preview_status.setText(f"The preview could not be made: {labels.for_gui(outcome.error)}")
            self.preview_ready.emit(outcome.error)
            return
        preview: Preview = outcome.value
        self.last_preview = preview
        self._show_preview(preview)
        self.preview_ready.emit(preview)

    def _show_preview(self, preview: Preview) -> None:
        if not preview.found:
            self.preview_status.setText(labels.sentence(labels.for_gui(preview.error or "not found")) + ".")
            self.payload_view.clear()
            self.diff_table.setRowCount(0)
            return
        objects = labels.stripe_object_words(self._base.stripe_object)
        name = clean_text(preview.display_name) or "This record"
        if preview.op == "update":
            action = f"is linked to Stripe {objects} {preview.stripe_id}; the next sync would update it"
        elif preview.op == "create":
            by = labels.matched_by(self._base.stripe_object) or "Cliniko id"
            action = f"has no Stripe {objects} yet; the next sync would create one (or link one with its {by})"
        else:
            action = "could not be sent"
        lines = [f"{name} {action}. Nothing was written: this is a preview."]
        if preview.error:
            lines.append(f"It would not be sent: {labels.for_gui(preview.error)}")
        lines += [labels.for_gui(note) for note in preview.notes]
        if preview.skipped_rows:
            rows = ", ".join(map(str, preview.skipped_rows))
            lines.append(f"{plural(len(preview.skipped_rows), 'row')} with problems left out: {rows}.")
        self.preview_status.setText("\n".join(lines))
        self.payload_view.setPlainText(json.dumps(preview.params, ensure_ascii=False, indent=2))
        changed = [d for d in preview.diff if d.changed]
        if not preview.stripe_id:
            self.diff_label.setText("What the new Stripe record would hold:")
        else:
            count = plural(len(changed), "field would change", "fields would change") if changed else "nothing"
            self.diff_label.setText(f"Compared with the linked Stripe record: {count}.")
        shown = [d for d in preview.diff if d.new is not None or d.current is not None]
        self.diff_table.setRowCount(len(shown))
        bold = QFont(self.diff_table.font())
        bold.setBold(True)
        for row, diff in enumerate(shown):
            for column, value in enumerate((labels.target_label(diff.target), _text(diff.current), _text(diff.new))):
                item = QTableWidgetItem(value)
                item.setToolTip(value)
                item.setData(TARGET_ROLE, diff.target)
                item.setData(CHANGED_ROLE, diff.changed)
                if diff.changed and preview.stripe_id:
                    item.setFont(bold)  # what the next sync would change stands out
                self.diff_table.setItem(row, column, item)

    def preview_changes(self) -> dict[str, str]:
        """The previewed Stripe fields that would change, with their new value (as the table shows them)."""
        changes = {}
        for row in range(self.diff_table.rowCount()):
            item = self.diff_table.item(row, 0)
            if item is not None and item.data(CHANGED_ROLE):
                changes[str(item.data(TARGET_ROLE))] = self.diff_table.item(row, 2).text()
        return changes
