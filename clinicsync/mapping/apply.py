"""Apply a StreamMapping to one source record, fit the result to Stripe's limits, and say what was changed.

A field Stripe would refuse is either shortened where its rule allows it (overflow "truncate": a visible marker
and a note) or the record is rejected with a specific message. Nothing is cut silently.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from clinicsync.labels import SOURCE_SYSTEMS
from clinicsync.mapping.fields import id_problem, target_limit, target_spec
from clinicsync.mapping.spec import CUSTOM_FIELD_PREFIX, StreamMapping
from clinicsync.mapping.transforms import (
    DEFAULT_CONTEXT,
    TRANSFORMS,
    TRUNCATION_MARKER,
    TransformContext,
    TransformError,
    Value,
    input_problem,
    text_problem,
    truncate_text,
)

__all__ = [
    "TRUNCATION_MARKER",
    "MappedRecord",
    "MappingError",
    "create_params",
    "map_record",
    "source_value",
    "update_params",
    "without_writeback_field",
]

# Plausible address: something@something.tld with no spaces; Stripe refuses anything less.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$")

# The control characters that separate words (tab, line breaks, form feed, the information separators: those
# str.isspace() counts), and a run of them with the spaces around it.
_SEPARATORS = "".join(chr(code) for code in (*range(0x20), *range(0x7F, 0xA0)) if chr(code).isspace())
_SEPARATING_CONTROLS = re.compile(f" *[{re.escape(_SEPARATORS)}][{re.escape(_SEPARATORS)} ]*")

Payload = dict[str, Value]  # flat: dotted target → str | int | None


def payload_hash(payload: Payload) -> str:
    """A hash of what ClinicSync asserts in Stripe: the non-empty mapped values.

    Empty values are left out on purpose: a mapped-but-empty field and an unmapped one both mean "nothing of ours
    there", so removing a rule re-sends only the records that had a value for it (to unset it), and changing a
    rule re-sends only the records whose value changed.
    """
    present = {target: value for target, value in payload.items() if value is not None}
    canonical = json.dumps(present, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass
class MappedRecord:
    source_id: str
    payload: Payload  # dotted target → value (None = empty, unset in Stripe)
    display_name: str
    match_value: str | None  # the value of the match key (the email), None if empty
    archived: bool
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def payload_hash(self) -> str:
        return payload_hash(self.payload)


class MappingError(ValueError):
    """The record cannot be sent to Stripe; the message says which field and why."""


def custom_field_value(record: Mapping[str, Any], token: str) -> Any:
    """A Cliniko custom field's value by token: `value` for text/date fields, the selected options' names for
    checkboxes and radio buttons (", "-joined), with an enabled "other" answer after them."""
    custom = record.get("custom_fields") if isinstance(record, Mapping) else None
    sections = custom.get("sections") if isinstance(custom, Mapping) else None
    for section in sections if isinstance(sections, list) else []:
        items = section.get("fields") if isinstance(section, Mapping) else None
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, Mapping) or item.get("token") != token:
                continue
            if "options" in item:
                options = [o for o in item.get("options") or [] if isinstance(o, Mapping) and o.get("selected")]
                other = item.get("other") if isinstance(item.get("other"), Mapping) else {}
                chosen = [o.get("name") for o in options]
                if other.get("enabled") and other.get("selected") and other.get("value"):
                    chosen.append(other["value"])
                if any(text_problem(name) for name in chosen):
                    return chosen  # not text: the record is rejected naming the field, not sent as Python text
                return ", ".join(str(name) for name in chosen if name not in (None, "")) or None
            value = item.get("value")
            # Text as it is; anything else is returned as it came, so the mapping rejects it naming the field.
            return None if value in (None, "") else value
    return None


def source_value(record: Mapping[str, Any], path: str) -> Any:
    if path.startswith(CUSTOM_FIELD_PREFIX):
        return custom_field_value(record, path.removeprefix(CUSTOM_FIELD_PREFIX))
    value: Any = record
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def map_record(
    mapping: StreamMapping,
    record: Mapping[str, Any],
    *,
    archived_value: str | None = None,
    context: TransformContext = DEFAULT_CONTEXT,
) -> MappedRecord:
    """Map one source record. `archived_value` (e.g. the archive date) marks a linked object as archived."""
    raw_id = record.get("id")
    bad_id = id_problem(mapping.source_system, raw_id, mapping.source_type)
    # A bad id is kept as text only to name the record in history; nothing is sent or linked under it.
    source_id = "" if raw_id is None or text_problem(raw_id) else str(raw_id)
    payload: Payload = {}
    notes: list[str] = []
    result = MappedRecord(source_id=source_id, payload=payload, display_name="", match_value=None, archived=False)
    try:
        for field_rule in mapping.rules:
            values = [source_value(record, name) for name in field_rule.sources]
            for name, value in zip(field_rule.sources, values, strict=True):
                if (problem := input_problem(field_rule.transform, value)) is not None:
                    source = SOURCE_SYSTEMS.get(mapping.source_system, mapping.source_system)
                    raise MappingError(f"{name}: {source} sent {problem}; the record was not sent")
            try:
                value = TRANSFORMS[field_rule.transform](values, field_rule.options, context)
            except TransformError as exc:
                raise MappingError(f"{field_rule.target}: {exc}") from None
            payload[field_rule.target] = _as_stripe_value(mapping, field_rule.target, value)
    except MappingError as exc:
        result.error = str(exc)
    if bad_id is not None:  # said first: without a usable id nothing else about the record matters
        result.error = bad_id
    payload[f"metadata.{mapping.archived_marker}"] = archived_value
    result.archived = archived_value is not None
    result.notes = notes
    if result.error is None:
        try:
            _clean_control_characters(payload, notes)
            _fit_truncatable(mapping, payload, notes)
            _check_match_key(mapping, payload)
            _check_lengths(mapping, payload)
        except MappingError as exc:
            result.error = str(exc)
    result.display_name = _display_name(mapping, payload, source_id)
    match_value = payload.get(mapping.match_target) if _has_role(mapping, "match_key") else None
    result.match_value = match_value if isinstance(match_value, str) else None
    return result


def _has_role(mapping: StreamMapping, role: str) -> bool:
    return any(item.role == role for item in mapping.rules)


def _as_stripe_value(mapping: StreamMapping, target: str, value: Value) -> Value:
    """Stripe metadata and text fields take strings; integer fields (amounts) keep integers."""
    if isinstance(value, int) and not isinstance(value, bool):
        spec = target_spec(mapping.stripe_object, target)
        return value if spec is not None and spec.kind == "integer" else str(value)
    return value


def _display_name(mapping: StreamMapping, payload: Payload, source_id: str) -> str:
    name = payload.get(mapping.display_target)
    return str(name)[:120] if name not in (None, "") else f"(no name, id {source_id})"


def clean_text(value: str) -> str:
    """`value` without control characters (Stripe refuses them): a tab, line break or other separating one
    becomes a space, with the spaces around it collapsed into one; any other (NUL, BEL, ESC) is removed, as it
    sat inside a word. Ends are trimmed."""
    kept = "".join(ch for ch in value if unicodedata.category(ch) != "Cc" or ch in _SEPARATORS)
    return _SEPARATING_CONTROLS.sub(" ", kept).strip()


def _clean_control_characters(payload: Payload, notes: list[str]) -> None:
    for target, value in payload.items():
        if not isinstance(value, str):
            continue
        found = sum(1 for ch in value if unicodedata.category(ch) == "Cc")
        if found:
            notes.append(
                f"{target}: cleaned {found} control character(s) Stripe would refuse (one between words became a space)"
            )
        payload[target] = clean_text(value) or None


def _fit_truncatable(mapping: StreamMapping, payload: Payload, notes: list[str]) -> None:
    for field_rule in mapping.rules:
        if field_rule.overflow != "truncate":
            continue
        value = payload.get(field_rule.target)
        limit = target_limit(mapping.stripe_object, field_rule.target)
        if not isinstance(value, str) or limit is None or len(value) <= limit:
            continue
        payload[field_rule.target] = truncate_text(value, limit)
        notes.append(
            f"{field_rule.target}: shortened from {len(value)} to {limit} characters (Stripe's limit), marked with "
            f"'{TRUNCATION_MARKER}'"
        )


def _check_match_key(mapping: StreamMapping, payload: Payload) -> None:
    if not _has_role(mapping, "match_key"):
        return
    value = payload.get(mapping.match_target)
    if not isinstance(value, str):
        return
    limit = target_limit(mapping.stripe_object, mapping.match_target)
    if limit is not None and len(value) > limit:
        raise MappingError(
            f"{mapping.match_target} is {len(value)} characters long, over Stripe's limit of {limit}; "
            "correct it in the source record"
        )
    spec = target_spec(mapping.stripe_object, mapping.match_target)
    if spec is not None and spec.kind == "email" and not _EMAIL.match(value):
        shown = value if len(value) <= 60 else value[:57] + "..."
        raise MappingError(f"{mapping.match_target} {shown!r} is not a valid email address; correct it in the source")


def _check_lengths(mapping: StreamMapping, payload: Payload) -> None:
    for target, value in payload.items():
        limit = target_limit(mapping.stripe_object, target)
        if not isinstance(value, str) or limit is None or len(value) <= limit:
            continue
        if target.startswith("metadata."):
            raise MappingError(
                f"metadata {target.removeprefix('metadata.')} is {len(value)} characters long, over Stripe's limit of "
                f"{limit}; set the rule's overflow to 'truncate' to send it shortened"
            )
        raise MappingError(
            f"{target} is {len(value)} characters long, over Stripe's limit of {limit}; "
            "shortening it would change its meaning, so correct it in the source"
        )


def create_params(payload: Payload) -> dict[str, Any]:
    """Stripe create parameters: empty fields are left out."""
    params: dict[str, Any] = {}
    for target, value in payload.items():
        if value is not None:
            _put(params, target, value)
    return params


def update_params(payload: Payload, retired: Iterable[str] = ()) -> dict[str, Any]:
    """Stripe update parameters: every mapped field is sent, and an empty one as "" (which unsets it).

    `retired`: targets an earlier mapping wrote to this object and the current one no longer maps. They are
    unset too, so a field removed from the mapping does not stay behind in Stripe.
    """
    params: dict[str, Any] = {}
    for target in retired:
        if target not in payload:
            _put(params, target, "")
    for target, value in payload.items():
        _put(params, target, "" if value is None else value)
    # An address with no parts left is unset as a whole; Stripe has no empty address object.
    for key in ("address", "shipping"):
        part = params.get(key)
        if isinstance(part, dict) and _all_empty(part):
            params[key] = ""
    return params


def _all_empty(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_all_empty(item) for item in value.values())
    return value == ""


def _put(params: dict[str, Any], target: str, value: Value) -> None:
    # A metadata key may itself contain dots ("metadata.a.b" is the key "a.b"); other targets nest at each dot.
    *parents, leaf = target.split(".", 1) if target.startswith("metadata.") else target.split(".")
    node = params
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value


def without_writeback_field(record: Mapping[str, Any], token: str) -> Mapping[str, Any]:
    """The record with the write-back custom field removed, so what ClinicSync wrote into the source never flows
    back into a payload (and never changes a payload hash)."""
    if not token or custom_field_value(record, token) is None:
        return record
    cleaned = dict(record)
    sections = []
    for section in record["custom_fields"]["sections"]:  # well formed along the way to the token, just read
        if not isinstance(section, Mapping) or not isinstance(section.get("fields"), list):
            continue  # nothing readable in it: nothing of it can reach a payload either
        fields = [f for f in section["fields"] if not (isinstance(f, Mapping) and f.get("token") == token)]
        if fields:
            sections.append({**section, "fields": fields})
    cleaned["custom_fields"] = {"sections": sections} if sections else None
    return cleaned
