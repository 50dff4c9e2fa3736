"""The editor of one Field mapping row, in words: which Stripe field, from which Cliniko fields, how, and each of
the transform's options as a small form (a separator by name, the preferred phone type, a time zone from a
list, a translation table) — nobody types JSON here.

The form edits a FieldRule and emits the edited rule; it never validates (the tab does, for the whole mapping)
but shows the problems the tab hands it. An option the person has not touched is left as stored, so opening and
saving a mapping changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import cache
from types import MappingProxyType
from typing import Any
from zoneinfo import available_timezones

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from clinicsync import labels
from clinicsync.mapping.fields import STRIPE_TARGETS, FieldCatalogue
from clinicsync.mapping.spec import OVERFLOWS, ROLES, FieldRule
from clinicsync.mapping.transforms import OPTION_CHOICES, TRANSFORM_ARITY, TRANSFORMS, template_fields
from clinicsync.ui.wheel import guard_wheel

METADATA = labels.METADATA_PREFIX
OTHER = "\0other"  # the "something else" choice of the separator list
PROBLEM_STYLE = "color: #c82828;"


def starting_options(transform: str, rule: FieldRule) -> dict[str, Any]:
    """What a row switched to `transform` starts with: the options it cannot do without, filled sensibly."""
    if transform == "template":
        return {"template": " ".join("{" + source + "}" for source in rule.sources)}
    return {"constant": {"value": ""}, "truncate": {"max_chars": 100}, "lookup": {"table": {}}}.get(transform, {})


def switch_transform(rule: FieldRule, transform: str) -> FieldRule:
    """The row with another transform: its sources kept as far as the transform takes them, options afresh."""
    options = starting_options(transform, rule)
    arity = TRANSFORM_ARITY.get(transform)
    if transform == "template":
        sources = tuple(template_fields(options["template"]))
    elif arity is None:
        sources = rule.sources
    else:
        sources = rule.sources[:arity]
    return replace(rule, transform=transform, sources=sources, options=MappingProxyType(options))


@cache
def time_zones() -> tuple[str, ...]:
    return tuple(sorted(zone for zone in available_timezones() if "/" in zone and not zone.startswith("Etc/")))


class RuleForm(QGroupBox):
    """One row of the mapping as a form. `edited` carries the whole new rule after every change."""

    edited = Signal(object)  # FieldRule

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.rule: FieldRule | None = None
        self.catalogue = FieldCatalogue(())
        self.stripe_object = "customer"
        self._loading = False
        self.options: dict[str, QWidget] = {}  # option name → its main editor (the tests reach them here)
        self.source_boxes: list[QComboBox] = []

        self.target_box = QComboBox()
        self.metadata_edit = QLineEdit()
        self.metadata_edit.setPlaceholderText("its name in Stripe, e.g. cliniko_notes")
        self.transform_box = QComboBox()
        for name in TRANSFORMS:
            self.transform_box.addItem(labels.transform_label(name), name)
        self.sources_holder = QWidget()
        self.sources_layout = QVBoxLayout(self.sources_holder)
        self.sources_layout.setContentsMargins(0, 0, 0, 0)
        self.options_holder = QWidget()
        self.options_form = QFormLayout(self.options_holder)
        self.options_form.setContentsMargins(0, 0, 0, 0)
        self.options_form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        self.role_box = QComboBox()
        for role in ROLES:
            self.role_box.addItem(labels.RULE_ROLES[role], role)
        self.overflow_box = QComboBox()
        for overflow in OVERFLOWS:
            self.overflow_box.addItem(labels.OVERFLOWS[overflow], overflow)
        self.problems_label = QLabel(wordWrap=True, textFormat=Qt.TextFormat.PlainText)
        self.problems_label.setStyleSheet(PROBLEM_STYLE)

        target_row = QHBoxLayout()
        target_row.setContentsMargins(0, 0, 0, 0)
        target_row.addWidget(self.target_box, 1)
        target_row.addWidget(self.metadata_edit, 1)
        form = QFormLayout(self)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("Stripe field:", target_row)
        form.addRow("How:", self.transform_box)
        form.addRow("From Cliniko:", self.sources_holder)
        form.addRow(self.options_holder)
        form.addRow("Special use:", self.role_box)
        form.addRow("If too long for Stripe:", self.overflow_box)
        form.addRow(self.problems_label)

        self.target_box.currentIndexChanged.connect(self._target_chosen)
        self.metadata_edit.textEdited.connect(lambda text: self._emit(target=METADATA + text.strip()))
        self.transform_box.currentIndexChanged.connect(self._transform_chosen)
        self.role_box.currentIndexChanged.connect(lambda _i: self._emit(role=self.role_box.currentData()))
        self.overflow_box.currentIndexChanged.connect(lambda _i: self._emit(overflow=self.overflow_box.currentData()))
        self.setEnabled(False)

    # --- showing a rule -----------------------------------------------------------------------------------
    def load(self, rule: FieldRule | None, row: int, catalogue: FieldCatalogue, stripe_object: str) -> None:
        """Show `rule` (row `row`, 0-based), or nothing when None."""
        self.rule, self.catalogue, self.stripe_object = rule, catalogue, stripe_object
        self._loading = True
        try:
            self.setEnabled(rule is not None)
            if rule is None:
                self.setTitle("Select a row to change it")
                self._clear(self.sources_layout)
                self._clear_options()
                self.problems_label.clear()
                return
            self.setTitle(f"Row {row + 1}: {labels.target_label(rule.target)}")
            self._fill_targets(rule.target)
            for index in range(self.role_box.count()):  # "Finds existing Stripe products (by name)", per mapping
                self.role_box.setItemText(index, labels.rule_role_label(self.role_box.itemData(index), stripe_object))
            self._select(self.transform_box, rule.transform, labels.transform_label(rule.transform))
            self._select(self.role_box, rule.role, rule.role)
            self._select(self.overflow_box, rule.overflow, rule.overflow)
            self._build_sources(rule)
            self._build_options(rule)
        finally:
            self._loading = False
        guard_wheel(self)

    def show_problems(self, problems: list[str]) -> None:
        self.problems_label.setText("\n".join(f"⚠ {text}" for text in problems))
        self.problems_label.setVisible(bool(problems))

    @staticmethod
    def _select(box: QComboBox, data: str, label: str) -> None:
        index = box.findData(data)
        if index < 0:  # a value from an imported file that this version has no words for
            box.addItem(label, data)
            index = box.count() - 1
        box.setCurrentIndex(index)

    def _fill_targets(self, target: str) -> None:
        self.target_box.clear()
        for name in STRIPE_TARGETS.get(self.stripe_object, {}):
            self.target_box.addItem(labels.target_label(name), name)
        self.target_box.addItem("Metadata (name it)", METADATA)
        is_metadata = target.startswith(METADATA)
        if not is_metadata and self.target_box.findData(target) < 0:
            self.target_box.addItem(f"{target} (not a Stripe field)", target)
        self.target_box.setCurrentIndex(self.target_box.findData(METADATA if is_metadata else target))
        self.metadata_edit.setText(target.removeprefix(METADATA) if is_metadata else "")
        self.metadata_edit.setVisible(is_metadata)

    # --- sources --------------------------------------------------------------------------------------------
    def _build_sources(self, rule: FieldRule, shown: list[str] | None = None) -> None:
        """One box per source (`shown`: the boxes' values when they differ from the rule's, e.g. a new empty one)."""
        self._clear(self.sources_layout)
        self.source_boxes = []
        arity = TRANSFORM_ARITY.get(rule.transform, 1)
        if rule.transform == "template":
            names = ", ".join(labels.source_label(s, self.catalogue) for s in rule.sources) or "none yet"
            self.sources_layout.addWidget(QLabel(f"the fields the pattern names: {names}", wordWrap=True))
            return
        if arity == 0:
            self.sources_layout.addWidget(QLabel("nothing: the value below is always sent", wordWrap=True))
            return
        values = list(shown if shown is not None else rule.sources)
        count = max(1, len(values)) if arity is None else arity
        for position in range(count):
            current = values[position] if position < len(values) else ""
            self._add_source_box(current, removable=arity is None and count > 1)
        if arity is None:
            add = QPushButton("Add another field")
            add.clicked.connect(self._add_source)
            self.sources_layout.addWidget(add, 0, Qt.AlignmentFlag.AlignLeft)
            self.add_source_button = add

    def _add_source_box(self, current: str, *, removable: bool) -> None:
        box = QComboBox()
        box.addItem("Choose a field…", "")
        for entry in self.catalogue.fields:
            clinical = " (clinical)" if entry.needs_allowance else ""
            box.addItem(entry.label + clinical, entry.name)
        if current and box.findData(current) < 0:
            box.addItem(labels.source_label(current, self.catalogue), current)
        box.setCurrentIndex(max(0, box.findData(current)))
        box.currentIndexChanged.connect(lambda _i: self._emit(sources=self._chosen_sources()))
        row = QWidget()
        line = QHBoxLayout(row)
        line.setContentsMargins(0, 0, 0, 0)
        line.addWidget(box, 1)
        if removable:
            remove = QPushButton("Remove")
            remove.setToolTip("Leave this field out")
            remove.clicked.connect(lambda: self._remove_source(box))
            line.addWidget(remove)
        self.sources_layout.addWidget(row)
        self.source_boxes.append(box)

    def _chosen_sources(self) -> tuple[str, ...]:
        return tuple(str(box.currentData()) for box in self.source_boxes if box.currentData())

    def _add_source(self) -> None:
        if self.rule is None:
            return
        shown = [str(box.currentData() or "") for box in self.source_boxes] + [""]
        self._loading = True
        try:
            self._build_sources(self.rule, shown)  # a new empty box; the rule changes once a field is chosen in it
        finally:
            self._loading = False
        guard_wheel(self)

    def _remove_source(self, box: QComboBox) -> None:
        if self.rule is None or box not in self.source_boxes:
            return
        self.source_boxes.remove(box)
        shown = [str(other.currentData() or "") for other in self.source_boxes]
        self._emit(sources=self._chosen_sources())
        self._loading = True
        try:
            self._build_sources(self.rule, shown)
        finally:
            self._loading = False
        guard_wheel(self)

    # --- options --------------------------------------------------------------------------------------------
    def _clear_options(self) -> None:
        while self.options_form.rowCount():
            self.options_form.removeRow(0)
        self.options = {}

    def _build_options(self, rule: FieldRule) -> None:
        self._clear_options()
        builder: Callable[[FieldRule], None] | None = getattr(self, f"_options_{rule.transform}", None)
        if builder is not None:
            builder(rule)
        self.options_holder.setVisible(self.options_form.rowCount() > 0)

    def _row(self, rule: FieldRule, option: str, widget: QWidget, editor: QWidget | None = None) -> None:
        self.options_form.addRow(labels.option_label(rule.transform, option) + ":", widget)
        self.options[option] = editor or widget

    def _choice_box(self, rule: FieldRule, option: str, default: str) -> QComboBox:
        box = QComboBox()
        for value in OPTION_CHOICES[(rule.transform, option)]:
            box.addItem(labels.choice_label(rule.transform, option, value), value)
        value = str(rule.options.get(option, default))
        self._select(box, value, value)
        box.currentIndexChanged.connect(lambda _i: self._set_option(option, box.currentData()))
        return box

    def _options_join(self, rule: FieldRule) -> None:
        box = QComboBox()
        for value, label in labels.SEPARATORS:
            box.addItem(label, value)
        box.addItem("something else:", OTHER)
        custom = QLineEdit()
        custom.setPlaceholderText("what goes between the values")
        current = str(rule.options.get("separator", " "))
        index = box.findData(current)
        box.setCurrentIndex(index if index >= 0 else box.count() - 1)
        custom.setText(current if index < 0 else "")
        custom.setEnabled(index < 0)

        def chosen(_index: int) -> None:
            other = box.currentData() == OTHER
            custom.setEnabled(other)
            self._set_option("separator", custom.text() if other else box.currentData())

        box.currentIndexChanged.connect(chosen)
        custom.textEdited.connect(lambda text: self._set_option("separator", text))
        holder = QWidget()
        line = QHBoxLayout(holder)
        line.setContentsMargins(0, 0, 0, 0)
        line.addWidget(box)
        line.addWidget(custom, 1)
        self._row(rule, "separator", holder, box)
        self.separator_edit = custom

    def _options_template(self, rule: FieldRule) -> None:
        edit = QLineEdit(str(rule.options.get("template", "")))
        edit.setPlaceholderText("e.g. {title} {first_name} {last_name}")
        edit.textChanged.connect(self._template_edited)
        insert = QComboBox()
        insert.addItem("Insert a field…", "")
        for entry in self.catalogue.fields:
            insert.addItem(entry.label, entry.name)

        def put(index: int) -> None:
            name = insert.itemData(index)
            if name:
                edit.insert("{" + str(name) + "}")
                insert.setCurrentIndex(0)

        insert.activated.connect(put)
        holder = QWidget()
        column = QVBoxLayout(holder)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(edit)
        column.addWidget(insert)
        hint = QLabel("A field's name in braces is replaced by its value; empty fields leave no gaps.", wordWrap=True)
        hint.setEnabled(False)
        column.addWidget(hint)
        self._row(rule, "template", holder, edit)
        self.insert_box = insert

    def _template_edited(self, text: str) -> None:
        if self._loading or self.rule is None:
            return
        options = dict(self.rule.options, template=text)
        self._emit(options=MappingProxyType(options), sources=tuple(template_fields(text)))
        self._loading = True
        try:
            self._build_sources(self.rule)
        finally:
            self._loading = False

    def _options_email(self, rule: FieldRule) -> None:
        check = QCheckBox("Send it in lower case (Stripe tells Ann@ and ann@ apart)")
        check.setChecked(bool(rule.options.get("lowercase", False)))
        check.toggled.connect(lambda on: self._set_option("lowercase", on))
        self.options_form.addRow(check)
        self.options["lowercase"] = check

    def _options_constant(self, rule: FieldRule) -> None:
        edit = QLineEdit(str(rule.options.get("value", "")))
        edit.textEdited.connect(lambda text: self._set_option("value", text))
        self._row(rule, "value", edit)

    def _options_truncate(self, rule: FieldRule) -> None:
        spin = QSpinBox(minimum=1, maximum=100_000, suffix=" characters")
        spin.setValue(int(rule.options.get("max_chars", 100) or 1))
        spin.valueChanged.connect(lambda value: self._set_option("max_chars", value))
        self._row(rule, "max_chars", spin)
        marker = QLineEdit(str(rule.options.get("marker", "")))
        marker.setPlaceholderText("… (an ellipsis)")
        marker.textEdited.connect(lambda text: self._set_option("marker", text) if text else self._drop("marker"))
        self._row(rule, "marker", marker)

    def _options_phone_e164(self, rule: FieldRule) -> None:
        self._row(rule, "on_invalid", self._choice_box(rule, "on_invalid", "keep"))

    def _options_preferred_phone(self, rule: FieldRule) -> None:
        self._row(rule, "prefer", self._choice_box(rule, "prefer", "Mobile"))
        self._row(rule, "format", self._choice_box(rule, "format", "as_entered"))

    def _options_local_date(self, rule: FieldRule) -> None:
        box = QComboBox()
        box.setEditable(True)
        box.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        box.addItem(labels.CLINIC_TIME_ZONE, "")
        for zone in time_zones():
            box.addItem(zone, zone)
        current = str(rule.options.get("time_zone", "") or "")
        index = box.findData(current)
        if index >= 0:
            box.setCurrentIndex(index)
        else:
            box.setEditText(current)

        def changed(text: str) -> None:
            zone = "" if text in ("", labels.CLINIC_TIME_ZONE) else text.strip()
            if zone:
                self._set_option("time_zone", zone)
            else:
                self._drop("time_zone")

        box.currentTextChanged.connect(changed)
        self._row(rule, "time_zone", box)

    def _options_minor_units(self, rule: FieldRule) -> None:
        spin = QSpinBox(minimum=0, maximum=6)
        spin.setValue(int(rule.options.get("exponent", 2)))
        spin.valueChanged.connect(lambda value: self._set_option("exponent", value))
        spin.setToolTip("2 for dollars and cents: 12.34 becomes 1234")
        self._row(rule, "exponent", spin)

    def _options_lookup(self, rule: FieldRule) -> None:
        table = QTableWidget(0, 2)
        table.setHorizontalHeaderLabels(["Value in Cliniko", "Send to Stripe"])
        table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        table.verticalHeader().hide()
        table.setMinimumHeight(120)
        for key, value in dict(rule.options.get("table") or {}).items():
            row = table.rowCount()
            table.insertRow(row)
            table.setItem(row, 0, QTableWidgetItem(str(key)))
            table.setItem(row, 1, QTableWidgetItem("" if value is None else str(value)))
        table.itemChanged.connect(lambda _item: self._set_option("table", self._lookup_rows()))
        add, remove = QPushButton("Add a row"), QPushButton("Remove the row")
        add.clicked.connect(self._add_lookup_row)
        remove.clicked.connect(self._remove_lookup_row)
        buttons = QHBoxLayout()
        buttons.addWidget(add)
        buttons.addWidget(remove)
        buttons.addStretch(1)
        holder = QWidget()
        column = QVBoxLayout(holder)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(table)
        column.addLayout(buttons)
        self._row(rule, "table", holder, table)
        self.lookup_table = table

        check = QCheckBox("send this instead:")
        check.setToolTip("Otherwise a record with a value that is not in the table is not sent, and is reported")
        default = QLineEdit(str(rule.options.get("default", "")))
        has_default = "default" in rule.options
        check.setChecked(has_default)
        default.setEnabled(has_default)

        def toggled(on: bool) -> None:
            default.setEnabled(on)
            if on:
                self._set_option("default", default.text())
            else:
                self._drop("default")

        check.toggled.connect(toggled)
        default.textEdited.connect(lambda text: self._set_option("default", text) if check.isChecked() else None)
        line = QWidget()
        row = QHBoxLayout(line)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(check)
        row.addWidget(default, 1)
        self._row(rule, "default", line, default)
        self.default_check = check

    def _lookup_rows(self) -> dict[str, str]:
        rows: dict[str, str] = {}
        for row in range(self.lookup_table.rowCount()):
            key, value = self.lookup_table.item(row, 0), self.lookup_table.item(row, 1)
            if key is not None and key.text().strip():
                rows[key.text().strip()] = value.text() if value is not None else ""
        return rows

    def _add_lookup_row(self) -> None:
        row = self.lookup_table.rowCount()
        self.lookup_table.insertRow(row)
        for column in range(2):  # empty cells to type into; a row without a Cliniko value counts for nothing
            self.lookup_table.setItem(row, column, QTableWidgetItem(""))
        self.lookup_table.setCurrentCell(row, 0)

    def _remove_lookup_row(self) -> None:
        row = self.lookup_table.currentRow()
        if row >= 0:
            self.lookup_table.removeRow(row)
            self._set_option("table", self._lookup_rows())

    # --- editing --------------------------------------------------------------------------------------------
    def _target_chosen(self, _index: int) -> None:
        if self._loading:
            return
        target = str(self.target_box.currentData() or "")
        is_metadata = target == METADATA
        self.metadata_edit.setVisible(is_metadata)
        self._emit(target=METADATA + self.metadata_edit.text().strip() if is_metadata else target)

    def _transform_chosen(self, _index: int) -> None:
        if self._loading or self.rule is None:
            return
        rule = switch_transform(self.rule, str(self.transform_box.currentData()))
        self.rule = rule
        self._loading = True
        try:
            self._build_sources(rule)
            self._build_options(rule)
        finally:
            self._loading = False
        guard_wheel(self)
        self.edited.emit(rule)

    def _set_option(self, name: str, value: Any) -> None:
        if self.rule is not None:
            self._emit(options=MappingProxyType({**self.rule.options, name: value}))

    def _drop(self, name: str) -> None:
        if self.rule is not None and name in self.rule.options:
            self._emit(options=MappingProxyType({k: v for k, v in self.rule.options.items() if k != name}))

    def _emit(self, **changes: Any) -> None:
        if self._loading or self.rule is None:
            return
        self.rule = replace(self.rule, **changes)
        if "target" in changes:
            self.setTitle(self.title().split(":", 1)[0] + ": " + labels.target_label(self.rule.target))
        self.edited.emit(self.rule)

    @staticmethod
    def _clear(layout: QVBoxLayout) -> None:
        while layout.count():
            item = layout.takeAt(0)
            widget = item.widget()
            if widget is not None:
                widget.hide()  # at once: deleteLater waits for the event loop
                widget.deleteLater()
