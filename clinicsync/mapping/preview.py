"""Preview a mapping on one real source record: the exact Stripe request a sync would send, and how it differs from
the linked Stripe object. A dry run: it reads the source and Stripe and writes nothing anywhere.

Pure: the record, the linked object and the person's allowances come in as arguments. Reading them (from the
source, Stripe and the profile's database) is clinicsync/sync/preview.py's job, for `clinicsync mapping preview`
and the Field mapping tab (on a worker thread).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clinicsync.mapping.apply import create_params, map_record, update_params, without_writeback_field
from clinicsync.mapping.fields import FieldCatalogue, custom_field_entries
from clinicsync.mapping.spec import StreamMapping
from clinicsync.mapping.transforms import DEFAULT_TIME_ZONE, TransformContext
from clinicsync.mapping.validate import Problem, validate_mapping


@dataclass(frozen=True)
class FieldDiff:
    target: str
    current: Any  # in the linked Stripe object (None: empty or no linked object)
    new: Any  # what the sync would set (None: unset)

    @property
    def changed(self) -> bool:
        return _blank(self.current) != _blank(self.new)


@dataclass
class Preview:
    stream: str
    record_id: str
    found: bool = False
    display_name: str = ""
    op: str = ""  # create, update ("" when the record was not found or cannot be sent)
    params: dict[str, Any] = field(default_factory=dict)  # the exact Stripe request parameters
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # why this record would fail
    stripe_id: str | None = None  # the linked Stripe object
    diff: list[FieldDiff] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)  # mapping rows left out of the preview
    skipped_rows: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "record_id": self.record_id,
            "found": self.found,
            "name": self.display_name,
            "op": self.op,
            "params": self.params,
            "notes": self.notes,
            "error": self.error,
            "stripe_id": self.stripe_id,
            "diff": [{"target": d.target, "current": d.current, "new": d.new} for d in self.diff if d.changed],
            "problems": [str(problem) for problem in self.problems],
        }


def _blank(value: Any) -> Any:
    return None if value in ("", None, {}) else value


def catalogue_for(mapping: StreamMapping, settings: Mapping[str, Any] | None) -> FieldCatalogue:
    return FieldCatalogue.for_source(mapping.source_system, mapping.source_type, custom_field_entries(settings))


def preview_record(
    mapping: StreamMapping,
    record: Mapping[str, Any] | None,
    record_id: str,
    catalogue: FieldCatalogue,
    *,
    allowed: set[str] | frozenset[str] = frozenset(),  # clinical fields a person allowed for this stream
    archived_value: str | None = None,
    time_zone: str = DEFAULT_TIME_ZONE,
    link: str | None = None,  # the linked Stripe object's id
    retired: tuple[str, ...] = (),  # targets the linked object was written with that the mapping no longer has
    current: Mapping[str, Any] | None = None,  # the linked Stripe object as Stripe has it now
) -> Preview:
    """The preview of one record (pure: no I/O). Rows with problems are left out and listed, so a half-edited
    mapping still shows what its valid rows would send — and a clinical field that is not allowed is never shown
    as part of a payload."""
    result = Preview(stream=mapping.stream, record_id=record_id)
    result.problems = validate_mapping(mapping, catalogue, allowed)
    bad_rows = {problem.row for problem in result.problems if problem.row}
    result.skipped_rows = sorted(bad_rows)
    usable = mapping.with_rules(tuple(r for n, r in enumerate(mapping.rules, start=1) if n not in bad_rows))
    if record is None:
        result.error = f"there is no record {record_id} (or it was deleted)"
        return result
    result.found = True
    if mapping.writeback.enabled:
        record = without_writeback_field(record, mapping.writeback.field_token)
    mapped = map_record(usable, record, archived_value=archived_value, context=TransformContext(time_zone))
    result.display_name, result.notes, result.error = mapped.display_name, mapped.notes, mapped.error
    if link is None:
        retired = ()
    else:
        result.stripe_id = link
    if mapped.error is None:
        result.op = "update" if link is not None else "create"
        result.params = update_params(mapped.payload, retired) if link else create_params(mapped.payload)
    targets = [*mapped.payload, *retired]
    result.diff = [
        FieldDiff(target, stripe_value(current, target) if current else None, mapped.payload.get(target))
        for target in targets
    ]
    return result


def stripe_value(obj: Mapping[str, Any] | None, target: str) -> Any:
    """A dotted target's value in a Stripe object (`metadata.<key>` may contain dots itself)."""
    if obj is None:
        return None
    if target.startswith("metadata."):
        return (obj.get("metadata") or {}).get(target.removeprefix("metadata."))
    value: Any = obj
    for part in target.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value
