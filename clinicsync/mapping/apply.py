"""Apply a StreamMapping to one source record, fit the result to Stripe's limits, and say what was changed.

A field Stripe would refuse is either shortened where that keeps its meaning (the display name, with a visible
marker and a note) or the record is rejected with a specific message. Nothing is cut silently.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clinicsync import stripe_limits
from clinicsync.mapping.spec import StreamMapping
from clinicsync.mapping.transforms import TRANSFORMS

TRUNCATION_MARKER = "…"
# Plausible address: something@something.tld with no spaces; Stripe refuses anything less.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$")

Payload = dict[str, Any]  # flat: dotted target → str | None


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
        canonical = json.dumps(self.payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class MappingError(ValueError):
    """The record cannot be sent to Stripe; the message says which field and why."""


def source_value(record: Mapping[str, Any], path: str) -> Any:
    value: Any = record
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def map_record(mapping: StreamMapping, record: Mapping[str, Any], *, archived_value: str | None = None) -> MappedRecord:
    """Map one source record. `archived_value` (e.g. the archive date) marks a linked object as archived."""
    source_id = str(record.get("id") or "")
    payload: Payload = {}
    notes: list[str] = []
    for field_rule in mapping.rules:
        values = [source_value(record, name) for name in field_rule.sources]
        payload[field_rule.target] = TRANSFORMS[field_rule.transform](values, field_rule.options)
    payload[f"metadata.{mapping.archived_marker}"] = archived_value
    result = MappedRecord(
        source_id=source_id,
        payload=payload,
        display_name="",
        match_value=None,
        archived=archived_value is not None,
        notes=notes,
    )
    try:
        if not source_id:
            raise MappingError("the record has no id")
        _clean_control_characters(payload, notes)
        _fit_display_name(mapping, payload, notes)
        _check_match_key(mapping, payload)
        _check_lengths(payload)
        _check_metadata(payload)
    except MappingError as exc:
        result.error = str(exc)
    result.display_name = _display_name(mapping, payload, source_id)
    result.match_value = payload.get(mapping.match_target)
    return result


def _display_name(mapping: StreamMapping, payload: Payload, source_id: str) -> str:
    name = payload.get(mapping.display_target) or f"(no name, id {source_id})"
    return name[:120]


def _clean_control_characters(payload: Payload, notes: list[str]) -> None:
    for target, value in payload.items():
        if value is None:
            continue
        cleaned = "".join(ch for ch in value if unicodedata.category(ch) != "Cc").strip()
        if cleaned != value.strip():
            removed = len(value) - len("".join(ch for ch in value if unicodedata.category(ch) != "Cc"))
            notes.append(f"{target}: removed {removed} control character(s) Stripe would refuse")
        payload[target] = cleaned or None


def _fit_display_name(mapping: StreamMapping, payload: Payload, notes: list[str]) -> None:
    target = mapping.display_target
    value = payload.get(target)
    limit = stripe_limits.CUSTOMER_FIELD_MAX_CHARS.get(target)
    if value is None or limit is None or len(value) <= limit:
        return
    payload[target] = value[: limit - len(TRUNCATION_MARKER)].rstrip() + TRUNCATION_MARKER
    notes.append(
        f"{target}: shortened from {len(value)} to {limit} characters (Stripe's limit), marked with "
        f"'{TRUNCATION_MARKER}'"
    )


def _check_match_key(mapping: StreamMapping, payload: Payload) -> None:
    value = payload.get(mapping.match_target)
    if value is None:
        return
    limit = stripe_limits.CUSTOMER_FIELD_MAX_CHARS.get(mapping.match_target)
    if limit is not None and len(value) > limit:
        raise MappingError(
            f"{mapping.match_target} is {len(value)} characters long, over Stripe's limit of {limit}; "
            "correct it in the source record"
        )
    if not _EMAIL.match(value):
        shown = value if len(value) <= 60 else value[:57] + "..."
        raise MappingError(f"{mapping.match_target} {shown!r} is not a valid email address; correct it in the source")


def _check_lengths(payload: Payload) -> None:
    for target, value in payload.items():
        limit = stripe_limits.CUSTOMER_FIELD_MAX_CHARS.get(target)
        if value is not None and limit is not None and len(value) > limit:
            raise MappingError(
                f"{target} is {len(value)} characters long, over Stripe's limit of {limit}; "
                "shortening it would change its meaning, so correct it in the source"
            )


def _check_metadata(payload: Payload) -> None:
    keys = [target.removeprefix("metadata.") for target in payload if target.startswith("metadata.")]
    if len(keys) > stripe_limits.METADATA_MAX_KEYS:
        raise MappingError(f"{len(keys)} metadata keys, over Stripe's limit of {stripe_limits.METADATA_MAX_KEYS}")
    for key in keys:
        if len(key) > stripe_limits.METADATA_KEY_MAX_CHARS or any(
            ch in key for ch in stripe_limits.METADATA_KEY_FORBIDDEN_CHARS
        ):
            raise MappingError(f"metadata key {key!r} is not allowed by Stripe (≤40 characters, no brackets)")
        value = payload[f"metadata.{key}"]
        if value is not None and len(value) > stripe_limits.METADATA_VALUE_MAX_CHARS:
            raise MappingError(
                f"metadata {key} is {len(value)} characters long, over Stripe's limit of "
                f"{stripe_limits.METADATA_VALUE_MAX_CHARS}"
            )


def create_params(payload: Payload) -> dict[str, Any]:
    """Stripe create parameters: empty fields are left out."""
    params: dict[str, Any] = {}
    for target, value in payload.items():
        if value is not None:
            _put(params, target, value)
    return params


def update_params(payload: Payload) -> dict[str, Any]:
    """Stripe update parameters: every mapped field is sent, and an empty one as "" (which unsets it)."""
    params: dict[str, Any] = {}
    for target, value in payload.items():
        _put(params, target, "" if value is None else value)
    # An address with no parts left is unset as a whole; Stripe has no empty address object.
    address = params.get("address")
    if isinstance(address, dict) and all(part == "" for part in address.values()):
        params["address"] = ""
    return params


def _put(params: dict[str, Any], target: str, value: str) -> None:
    head, _, rest = target.partition(".")
    if rest:
        params.setdefault(head, {})[rest] = value
    else:
        params[head] = value
