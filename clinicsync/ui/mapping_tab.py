"""Field mapping: per stream, the rules that turn a source record into a Stripe object, with a live preview.

Everything the tab saves goes through mapping/store.py — the same validation and clinical allow-list as
`clinicsync mapping import` — so the tab cannot save what the command line would refuse. Invalid rows are marked
inline with the reason. The preview reads one real record (and the linked Stripe object) off the GUI thread and
shows the exact Stripe request and what would change; it writes nothing. Keys are read on the GUI thread.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import date
from pathlib import Path
from types import MappingProxyType
from typing import Any

from PySide6.QtCore import QDate, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDateEdit,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from clinicsync.mapping import store as mapping_store
from clinicsync.mapping.defaults import DEFAULT_MAPPINGS
from clinicsync.mapping.fields import STRIPE_TARGETS, FieldCatalogue, custom_field_entries
from clinicsync.mapping.preview import Preview, connect, fetch_preview, sample_records, source_settings
from clinicsync.mapping.spec import (
    OVERFLOWS,
    ROLES,
    DocumentError,
    FieldRule,
    StreamMapping,
    SyncScope,
    WritebackConfig,
    to_document,
)
from clinicsync.mapping.transforms import TRANSFORMS, template_fields
from clinicsync.mapping.validate import Problem, validate_mapping
from clinicsync.secrets import MemorySecretStore
from clinicsync.sync.runner import read_credentials
from clinicsync.ui.background import Outcome, run_in_background
from clinicsync.ui.context import SYNC_SECRETS, UiContext

COLUMNS = ("Source field(s)", "Stripe field", "Transform", "Options (JSON)", "Role", "If too long", "Check")
COL_SOURCES, COL_TARGET, COL_TRANSFORM, COL_OPTIONS, COL_ROLE, COL_OVERFLOW, COL_STATUS = range(len(COLUMNS))
SCOPES = (("all", "All records"), ("since", "Created or updated since"), ("recent_activity", "Recent activity"))
INVALID = QColor(220, 50, 47, 60)  # translucent, so it reads in light and dark palettes alike
INVALID_TEXT = QColor(200, 40, 40)

ConfirmAllow = Callable[[QWidget, str, str], bool]  # (parent, field, warning) → the person said yes


def confirm_allow_dialog(parent: QWidget, field: str, warning: str) -> bool:
    box = QMessageBox(QMessageBox.Icon.Warning, f"Allow {field}?", warning, parent=parent)
    box.setInformativeText("Allow this field to be sent to Stripe?")
    box.setStandardButtons(QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No)
    box.setDefaultButton(QMessageBox.StandardButton.No)
    return box.exec() == QMessageBox.StandardButton.Yes


def _sources_text(sources: tuple[str, ...]) -> str:
    return ", ".join(sources)


def _parse_sources(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


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
        self._option_errors: dict[int, str] = {}  # row → why its options text is not usable
        self._settings: dict[str, Any] | None = None  # the source's settings (custom fields), once read
        self._catalogue = self._make_catalogue()
        self.problems: list[Problem] = []
        self.dirty = False
        self.last_preview: Preview | None = None
        self._loading = False
        self._fields_requested = False
        self._build()
        self._load_into_widgets()

    # --- layout ---------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.stream_box = QComboBox()
        self.stream_box.addItems(list(DEFAULT_MAPPINGS))
        self.stream_box.currentTextChanged.connect(self._stream_changed)
        self.version_label = QLabel()
        self.add_button = QPushButton("Add row")
        self.remove_button = QPushButton("Remove")
        self.up_button = QPushButton("Move up")
        self.down_button = QPushButton("Move down")
        self.allow_button = QPushButton("Allow clinical field…")
        self.reset_button = QPushButton("Reset to defaults")
        self.import_button = QPushButton("Import…")
        self.export_button = QPushButton("Export…")
        self.revert_button = QPushButton("Revert")
        self.save_button = QPushButton("Save")
        self.save_button.setDefault(True)
        self.add_button.clicked.connect(lambda: self.add_row())
        self.remove_button.clicked.connect(lambda: self.remove_row(self.table.currentRow()))
        self.up_button.clicked.connect(lambda: self.move_row(self.table.currentRow(), -1))
        self.down_button.clicked.connect(lambda: self.move_row(self.table.currentRow(), +1))
        self.allow_button.clicked.connect(lambda: self.allow_selected())
        self.reset_button.clicked.connect(lambda: self.reset_to_defaults())
        self.import_button.clicked.connect(self._import_clicked)
        self.export_button.clicked.connect(self._export_clicked)
        self.revert_button.clicked.connect(lambda: self.reload(force=True))
        self.save_button.clicked.connect(lambda: self.save())

        top = QHBoxLayout()
        top.addWidget(QLabel("Stream:"))
        top.addWidget(self.stream_box)
        top.addWidget(self.version_label, 1)
        top.addWidget(self.revert_button)
        top.addWidget(self.save_button)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().setVisible(True)
        header = self.table.horizontalHeader()
        for column in range(len(COLUMNS)):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(COL_STATUS, QHeaderView.ResizeMode.Stretch)
        widths = {COL_SOURCES: 165, COL_TARGET: 165, COL_TRANSFORM: 105, COL_OPTIONS: 130, COL_ROLE: 85}
        for column, width in {**widths, COL_OVERFLOW: 75}.items():
            self.table.setColumnWidth(column, width)
        self.table.setWordWrap(False)
        self.table.itemSelectionChanged.connect(self._update_buttons)

        rows = QHBoxLayout()
        for button in (self.add_button, self.remove_button, self.up_button, self.down_button, self.allow_button):
            rows.addWidget(button)
        rows.addStretch(1)
        for button in (self.reset_button, self.import_button, self.export_button):
            rows.addWidget(button)

        # Scope and write-back.
        self.scope_box = QComboBox()
        for key, label in SCOPES:
            self.scope_box.addItem(label, key)
        self.since_edit = QDateEdit(calendarPopup=True)
        self.since_edit.setDisplayFormat("yyyy-MM-dd")
        self.months_spin = QSpinBox(minimum=1, maximum=120, suffix=" months")
        self.scope_box.currentIndexChanged.connect(self._settings_edited)
        self.since_edit.dateChanged.connect(self._settings_edited)
        self.months_spin.valueChanged.connect(self._settings_edited)
        self.writeback_check = QCheckBox("Write the Stripe id back into the Cliniko custom field")
        self.writeback_field = QComboBox()
        self.writeback_field.setEditable(True)
        self.writeback_check.toggled.connect(self._settings_edited)
        self.writeback_field.currentTextChanged.connect(self._settings_edited)
        options = QGroupBox("Which records, and the link back")
        options_layout = QHBoxLayout(options)
        options_layout.addWidget(QLabel("Sync:"))
        for widget in (self.scope_box, self.since_edit, self.months_spin):
            options_layout.addWidget(widget)
        options_layout.addSpacing(16)
        options_layout.addWidget(self.writeback_check)
        options_layout.addWidget(self.writeback_field, 1)

        self.scope_hint = QLabel(wordWrap=True)
        self.message = QLabel(wordWrap=True, textFormat=Qt.TextFormat.PlainText)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        editor = QWidget()
        editor_layout = QVBoxLayout(editor)
        editor_layout.setContentsMargins(0, 0, 0, 0)
        editor_layout.addLayout(top)
        editor_layout.addWidget(self.table, 1)
        editor_layout.addLayout(rows)
        editor_layout.addWidget(options)
        editor_layout.addWidget(self.scope_hint)
        editor_layout.addWidget(self.message)

        # Preview.
        self.record_box = QComboBox()
        self.record_box.setEditable(True)
        self.record_box.lineEdit().setPlaceholderText("Cliniko patient id")
        self.preview_button = QPushButton("Preview")
        self.preview_button.clicked.connect(lambda: self.preview(self.record_id()))
        # Plain text: the preview names the record (the clinic's data) and quotes errors.
        self.preview_status = QLabel(
            "Dry run on a real record: nothing is written.", wordWrap=True, textFormat=Qt.TextFormat.PlainText
        )
        self.payload_view = QPlainTextEdit(readOnly=True)
        self.payload_view.setPlaceholderText("The exact Stripe request appears here.")
        self.diff_table = QTableWidget(0, 3)
        self.diff_table.setHorizontalHeaderLabels(["Stripe field", "In Stripe now", "After the next sync"])
        self.diff_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.diff_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        preview = QWidget()
        preview_layout = QVBoxLayout(preview)
        preview_layout.setContentsMargins(0, 0, 0, 0)
        picker = QHBoxLayout()
        picker.addWidget(self.record_box, 1)
        picker.addWidget(self.preview_button)
        preview_layout.addWidget(QLabel("<b>Preview</b>"))
        preview_layout.addLayout(picker)
        preview_layout.addWidget(self.preview_status)
        preview_layout.addWidget(self.payload_view, 3)
        self.diff_label = QLabel("Differences from the linked Stripe customer:")
        preview_layout.addWidget(self.diff_label)
        preview_layout.addWidget(self.diff_table, 2)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(editor)
        splitter.addWidget(preview)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        splitter.setSizes([820, 440])
        layout = QVBoxLayout(self)
        layout.addWidget(splitter)

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
        """Check the edited mapping and mark every invalid row inline with its reason."""
        mapping = self.current_mapping()
        self.problems = validate_mapping(mapping, self._catalogue, mapping_store.allowed_fields(self.stream))
        self.problems += [Problem(row + 1, "options-json", text) for row, text in self._option_errors.items()]
        by_row: dict[int, list[str]] = {}
        for problem in self.problems:
            by_row.setdefault(problem.row, []).append(f"{problem.message} [{problem.rule}]")
        for row in range(self.table.rowCount()):
            reasons = by_row.get(row + 1, [])
            item = QTableWidgetItem("⚠ " + "; ".join(reasons) if reasons else "✓")
            item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
            item.setToolTip("\n".join(reasons))
            item.setForeground(QBrush(INVALID_TEXT) if reasons else QBrush())
            item.setBackground(QBrush(INVALID) if reasons else QBrush())
            self.table.setItem(row, COL_STATUS, item)
            # The other cells are editors that cover their item, so the row number carries the mark too.
            header = QTableWidgetItem(f"{row + 1} ⚠" if reasons else str(row + 1))
            header.setForeground(QBrush(INVALID_TEXT) if reasons else QBrush())
            header.setToolTip("\n".join(reasons))
            self.table.setVerticalHeaderItem(row, header)
        if self.problems:
            shown = [str(p) for p in self.problems[:4]]
            more = f"\n…and {len(self.problems) - 4} more" if len(self.problems) > 4 else ""
            self._say(f"{len(self.problems)} problem(s); fix them to save:\n" + "\n".join(shown) + more, True)
        elif self._base.unreadable and not self.dirty:  # not blocking: saving is how it is replaced
            self._say(self._base.unreadable, True)
        else:
            self._say("No problems." + (" Unsaved changes." if self.dirty else ""), False)
        self._update_buttons()
        return self.problems

    def row_status(self, row: int) -> str:
        item = self.table.item(row, COL_STATUS)
        return item.text() if item is not None else ""

    # --- editing --------------------------------------------------------------------------------------
    def editor(self, row: int, column: int) -> QWidget:
        """The widget editing one cell (for the tests and for keyboard focus)."""
        widget = self.table.cellWidget(row, column)
        assert widget is not None
        return widget

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
            self._say(f"Could not import {Path(path).name}: {exc}", True)
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

    def save(self) -> bool:
        if self.validate():
            return False
        try:
            result = mapping_store.save(self.current_mapping(), self._catalogue)
        except mapping_store.MappingInvalid as exc:  # allowances changed meanwhile
            self._say(str(exc), True)
            return False
        self._base = result.mapping
        self.dirty = False
        self._update_version()
        if not result.changed:
            self._say("Nothing to save: this is the current mapping.", False)
        else:
            reread = " The next sync re-reads every record and updates those whose Stripe fields change."
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
            warning = mapping_store.warning_for(self.stream, field, self._catalogue, mapping)
            if not self.confirm_allow(self, field, warning):
                self._say(f"{field} was not allowed.", False)
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
        self._option_errors.clear()
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
        origin = f"version {self._base.version}" if self._base.version else "built-in default"
        # Not saved yet: a live Stripe connection syncs a narrower set (see default_scope_for_pair).
        live_scope = mapping_store.default_scope_for_pair(self.stream, livemode=True)
        unsaved_live_default = not self._base.version and live_scope != self._base.scope
        self.scope_hint.setText(
            f"Not saved yet: a LIVE Stripe account syncs only {live_scope.describe()} until you save a choice here."
            if unsaved_live_default
            else ""
        )
        self.scope_hint.setVisible(unsaved_live_default)
        self.version_label.setText(f"→ Stripe {self._base.stripe_object}s · {origin}")

    def _update_buttons(self) -> None:
        row = self.table.currentRow()
        self.remove_button.setEnabled(0 <= row < len(self._rules))
        self.up_button.setEnabled(row > 0)
        self.down_button.setEnabled(0 <= row < len(self._rules) - 1)
        self.allow_button.setEnabled(bool(self._clinical_fields(row)))

    def _say(self, text: str, problem: bool) -> None:
        self.message.setText(text)
        self.message.setStyleSheet(f"color: {INVALID_TEXT.name()};" if problem else "")

    # --- the table's cell editors -------------------------------------------------------------------------
    def _rebuild_table(self) -> None:
        current = self.table.currentRow()
        self.table.setRowCount(0)
        self.table.setRowCount(len(self._rules))
        for row, rule in enumerate(self._rules):
            self._fill_row(row, rule)
        if 0 <= current < len(self._rules):
            self.table.selectRow(current)

    def _fill_row(self, row: int, rule: FieldRule) -> None:
        sources = QComboBox()
        sources.setEditable(True)
        for entry in self._catalogue.fields:
            sources.addItem(f"{entry.name}  ({entry.cls})", entry.name)
        sources.setCurrentIndex(-1)
        sources.setEditText(_sources_text(rule.sources))
        sources.setToolTip("A source field; several are separated by commas (join, template)")
        # Picking from the list gives "name  (class)": keep the name only.
        sources.activated.connect(lambda index, box=sources: box.setEditText(str(box.itemData(index))))
        sources.editTextChanged.connect(lambda text, r=row: self._edit(r, sources=_parse_sources(text)))

        target = QComboBox()
        target.setEditable(True)
        target.addItems([*STRIPE_TARGETS.get(self._base.stripe_object, {}), "metadata."])
        target.setEditText(rule.target)
        target.editTextChanged.connect(lambda text, r=row: self._edit(r, target=text.strip()))

        transform = QComboBox()
        transform.addItems(list(TRANSFORMS))
        if rule.transform not in TRANSFORMS:
            transform.addItem(rule.transform)
        transform.setCurrentText(rule.transform)
        transform.currentTextChanged.connect(lambda text, r=row: self._edit(r, transform=text))

        options = QLineEdit(json.dumps(dict(rule.options), ensure_ascii=False) if rule.options else "")
        options.setToolTip('The transform\'s options as JSON, e.g. {"separator": ", "} or {"template": "{first_name}"}')
        options.textChanged.connect(lambda text, r=row: self._edit_options(r, text))

        role = QComboBox()
        role.addItems([r or "—" for r in ROLES])
        role.setCurrentText(rule.role or "—")
        role.currentTextChanged.connect(lambda text, r=row: self._edit(r, role="" if text == "—" else text))

        overflow = QComboBox()
        overflow.addItems(list(OVERFLOWS))
        overflow.setCurrentText(rule.overflow)
        overflow.currentTextChanged.connect(lambda text, r=row: self._edit(r, overflow=text))

        # Show the start of long names ("patient_phone_numbers", "metadata.cliniko_patient_id"), not their end.
        for line in (sources.lineEdit(), target.lineEdit(), options):
            line.setCursorPosition(0)
        for column, widget in (
            (COL_SOURCES, sources),
            (COL_TARGET, target),
            (COL_TRANSFORM, transform),
            (COL_OPTIONS, options),
            (COL_ROLE, role),
            (COL_OVERFLOW, overflow),
        ):
            self.table.setCellWidget(row, column, widget)

    def _edit(self, row: int, **changes: Any) -> None:
        if self._loading or not 0 <= row < len(self._rules):
            return
        rule = replace(self._rules[row], **changes)
        # A template's placeholders are its sources: keep them in step, so the row never disagrees with itself.
        if rule.transform == "template" and isinstance(rule.options.get("template"), str) and "sources" not in changes:
            rule = replace(rule, sources=tuple(template_fields(rule.options["template"])))
            self._set_sources_text(row, rule.sources)
        self._rules[row] = rule
        self._changed()

    def _edit_options(self, row: int, text: str) -> None:
        if self._loading or not 0 <= row < len(self._rules):
            return
        try:
            options = json.loads(text) if text.strip() else {}
            if not isinstance(options, dict):
                raise ValueError('options must be a JSON object, e.g. {"separator": ", "}')
        except ValueError as exc:
            self._option_errors[row] = f"options are not valid JSON: {exc}"
            self._changed()
            return
        self._option_errors.pop(row, None)
        self._edit(row, options=MappingProxyType(options))

    def _set_sources_text(self, row: int, sources: tuple[str, ...]) -> None:
        box = self.table.cellWidget(row, COL_SOURCES)
        if isinstance(box, QComboBox) and _parse_sources(box.currentText()) != sources:
            self._loading = True
            try:
                box.setEditText(_sources_text(sources))
            finally:
                self._loading = False

    def _fill_writeback_fields(self, token: str) -> None:
        self.writeback_field.clear()
        for entry in self._catalogue.fields:
            if entry.name.startswith("custom_fields.") and entry.kind == "text":
                self.writeback_field.addItem(entry.label, entry.name.removeprefix("custom_fields."))
        index = self.writeback_field.findData(token)
        if index >= 0:
            self.writeback_field.setCurrentIndex(index)
        else:
            self.writeback_field.setEditText(token)

    # --- files ----------------------------------------------------------------------------------------
    def _import_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import mapping", "", "Mapping (*.json)")
        if path:
            self.import_file(Path(path))

    def _export_clicked(self) -> None:
        name = f"{self.stream}-mapping.json"
        path, _ = QFileDialog.getSaveFileName(self, "Export mapping", name, "Mapping (*.json)")
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
        if not outcome.ok:
            self.preview_status.setText(f"Cliniko could not be read for field names and records: {outcome.error}")
            self.fields_loaded.emit()
            return
        self._settings, samples = outcome.value
        self._catalogue = self._make_catalogue()
        keep = self.record_box.currentText()
        self.record_box.clear()
        for record_id, name in samples:
            self.record_box.addItem(f"{name} — {record_id}", record_id)
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
            self.preview_status.setText("Choose or type a record id first.")
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
            self.preview_status.setText(f"Preview failed: {outcome.error}")
            self.preview_ready.emit(outcome.error)
            return
        preview: Preview = outcome.value
        self.last_preview = preview
        self._show_preview(preview)
        self.preview_ready.emit(preview)

    def _show_preview(self, preview: Preview) -> None:
        if not preview.found:
            self.preview_status.setText(preview.error or "Not found.")
            self.payload_view.clear()
            self.diff_table.setRowCount(0)
            return
        linked = f"linked to {preview.stripe_id}" if preview.stripe_id else "not in Stripe yet"
        verb = {"update": "update", "create": "create (or link by email)"}.get(preview.op, "nothing: it would fail")
        lines = [f"{preview.display_name} — {linked}. Dry run: nothing written. Stripe request: {verb}."]
        if preview.error:
            lines.append(f"Would fail: {preview.error}")
        lines += [f"Note: {note}" for note in preview.notes]
        if preview.skipped_rows:
            lines.append(f"Rows left out (they have problems): {', '.join(map(str, preview.skipped_rows))}")
        self.preview_status.setText("\n".join(lines))
        self.payload_view.setPlainText(json.dumps(preview.params, ensure_ascii=False, indent=2))
        changed = [d for d in preview.diff if d.changed] if preview.stripe_id else []
        if not preview.stripe_id:
            self.diff_label.setText("Not linked to a Stripe customer yet: the sync would create (or link) one.")
        else:
            count = f"{len(changed)} field(s) would change" if changed else "nothing would change"
            self.diff_label.setText(f"Differences from the linked Stripe customer: {count}.")
        self.diff_table.setRowCount(len(changed))
        for row, diff in enumerate(changed):
            for column, value in enumerate((diff.target, diff.current, diff.new)):
                self.diff_table.setItem(row, column, QTableWidgetItem("" if value is None else str(value)))
