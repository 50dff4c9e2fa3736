"""The declarative shape of a field mapping: which source fields feed which Stripe field, through which transform.

Streams read their field names only from a StreamMapping; nothing else in the app names a mapped field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class FieldRule:
    target: str  # Stripe field, dotted for nested objects: "name", "address.line1", "metadata.cliniko_patient_id"
    sources: tuple[str, ...]
    transform: str = "copy"
    options: MappingProxyType[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    role: str = ""  # "cross_ref": the Stripe-side reference to the source id; "match_key": used to match records


@dataclass(frozen=True)
class StreamMapping:
    stream: str
    source_system: str
    source_type: str
    stripe_object: str
    rules: tuple[FieldRule, ...]
    display_target: str  # the Stripe field shown to people as the record's name
    archived_marker: str  # metadata key set on a linked object when its source record is archived

    def rule_with_role(self, role: str) -> FieldRule:
        return next(rule for rule in self.rules if rule.role == role)

    @property
    def cross_ref_key(self) -> str:
        """The metadata key holding the source id, e.g. "cliniko_patient_id"."""
        return self.rule_with_role("cross_ref").target.removeprefix("metadata.")

    @property
    def match_target(self) -> str:
        return self.rule_with_role("match_key").target


def rule(target: str, *sources: str, transform: str = "copy", role: str = "", **options: Any) -> FieldRule:
    return FieldRule(target, tuple(sources), transform, MappingProxyType(dict(options)), role)
