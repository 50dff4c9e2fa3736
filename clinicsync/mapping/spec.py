"""The declarative shape of a field mapping: which source fields feed which Stripe field, through which transform,
which source records are synced at all (the scope), and whether the Stripe id is written back to the source.

Streams read their field names only from a StreamMapping; nothing else in the app names a mapped field. The
JSON form (`to_document` / `from_document`) is what is stored in the database, exported and imported; README.md
documents it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from types import MappingProxyType
from typing import Any

from clinicsync.mapping.transforms import template_fields

FORMAT = 1  # of the JSON document; bump with a converter when the shape changes
ROLES = ("", "cross_ref", "match_key")
OVERFLOWS = ("reject", "truncate")
SCOPE_KINDS = ("all", "since", "recent_activity")
_ROLE_NAMES = ", ".join(role or '""' for role in ROLES)
CUSTOM_FIELD_PREFIX = "custom_fields."  # a source path naming a Cliniko custom field by its token


class DocumentError(ValueError):
    """A mapping document is not well-formed JSON for this format; the message says where."""


@dataclass(frozen=True)
class FieldRule:
    target: str  # Stripe field, dotted for nested objects: "name", "address.line1", "metadata.cliniko_patient_id"
    sources: tuple[str, ...]
    transform: str = "copy"
    options: MappingProxyType[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    role: str = ""  # "cross_ref": the Stripe-side reference to the source id; "match_key": used to match records
    # What to do with a value over Stripe's limit for the target: "reject" the record (the default: most fields
    # lose their meaning when cut) or "truncate" it with a visible marker (names, free-text metadata).
    overflow: str = "reject"

    def describe(self) -> str:
        return f"{self.target} ← {', '.join(self.sources) or '(constant)'}"


@dataclass(frozen=True)
class SyncScope:
    """Which source records go to Stripe at all (data minimisation)."""

    kind: str = "all"  # all | since | recent_activity
    since: date | None = None  # kind "since": records created or updated on or after this date
    months: int = 24  # kind "recent_activity": an invoice or appointment within this many months

    def describe(self) -> str:
        if self.kind == "since" and self.since is not None:
            return f"records created or updated since {self.since.isoformat()}"
        if self.kind == "recent_activity":
            return f"patients with an invoice or appointment in the last {self.months} months"
        return "all records"


@dataclass(frozen=True)
class WritebackConfig:
    """Opt-in: write the Stripe id into a source field (a Cliniko patient custom field, by token)."""

    enabled: bool = False
    field_token: str = ""


@dataclass(frozen=True)
class StreamMapping:
    stream: str
    source_system: str
    source_type: str
    stripe_object: str
    rules: tuple[FieldRule, ...]
    display_target: str  # the Stripe field shown to people as the record's name
    archived_marker: str  # metadata key set on a linked object when its source record is archived
    scope: SyncScope = field(default_factory=SyncScope)
    writeback: WritebackConfig = field(default_factory=WritebackConfig)
    time_zone: str = ""  # blank: the clinic's zone from the source (Australia/Melbourne until known)
    version: int = 0  # the stored revision this mapping came from (0: the built-in default)
    # Why the stored mapping this stands in for cannot be read (a damaged row): then this holds the built-in rules,
    # and validation reports the reason, so nothing is sent until a person saves a mapping again.
    unreadable: str = ""

    def rule_with_role(self, role: str) -> FieldRule:
        return next(rule for rule in self.rules if rule.role == role)

    @property
    def cross_ref_key(self) -> str:
        """The metadata key holding the source id, e.g. "cliniko_patient_id"."""
        return self.rule_with_role("cross_ref").target.removeprefix("metadata.")

    @property
    def match_target(self) -> str:
        return self.rule_with_role("match_key").target

    @property
    def targets(self) -> tuple[str, ...]:
        """Every Stripe field this mapping writes, including the archived marker."""
        return (*(rule.target for rule in self.rules), f"metadata.{self.archived_marker}")

    @property
    def source_fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(source for rule in self.rules for source in rule.sources))

    def with_rules(self, rules: tuple[FieldRule, ...]) -> StreamMapping:
        return replace(self, rules=rules)


def rule(
    target: str,
    *sources: str,
    transform: str = "copy",
    role: str = "",
    overflow: str = "reject",
    **options: Any,
) -> FieldRule:
    if transform == "template" and not sources:
        sources = tuple(template_fields(str(options.get("template", ""))))
    return FieldRule(target, tuple(sources), transform, MappingProxyType(dict(options)), role, overflow)


# --- the JSON document ------------------------------------------------------------------------------------
def rule_to_json(item: FieldRule) -> dict[str, Any]:
    out: dict[str, Any] = {"target": item.target, "sources": list(item.sources), "transform": item.transform}
    if item.options:
        out["options"] = _plain(item.options)
    if item.role:
        out["role"] = item.role
    if item.overflow != "reject":
        out["overflow"] = item.overflow
    return out


def to_document(mapping: StreamMapping) -> dict[str, Any]:
    scope: dict[str, Any] = {"kind": mapping.scope.kind}
    if mapping.scope.kind == "since" and mapping.scope.since is not None:
        scope["since"] = mapping.scope.since.isoformat()
    if mapping.scope.kind == "recent_activity":
        scope["months"] = mapping.scope.months
    return {
        "format": FORMAT,
        "stream": mapping.stream,
        "stripe_object": mapping.stripe_object,
        "display_target": mapping.display_target,
        "archived_marker": mapping.archived_marker,
        "time_zone": mapping.time_zone,
        "scope": scope,
        "writeback": {"enabled": mapping.writeback.enabled, "field_token": mapping.writeback.field_token},
        "rules": [rule_to_json(item) for item in mapping.rules],
    }


def from_document(document: Any, base: StreamMapping) -> StreamMapping:
    """Read a JSON document onto `base` (the stream's default, which fixes the stream and its source).

    Keys the document leaves out keep the default's value, so a hand-written file can hold just `rules`.
    Structural problems raise DocumentError; whether the rules make sense is validate.py's job.
    """
    if not isinstance(document, Mapping):
        raise DocumentError("a mapping must be a JSON object")
    known = {"format", "stream", "stripe_object", "display_target", "archived_marker", "time_zone", "scope"}
    known |= {"writeback", "rules", "version"}
    unknown = sorted(set(document) - known)
    if unknown:
        raise DocumentError(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    fmt = document.get("format", FORMAT)
    if fmt != FORMAT:
        raise DocumentError(f"format {fmt!r} is not one this ClinicSync reads (it reads format {FORMAT})")
    for key in ("stream", "stripe_object"):
        if key in document and document[key] != getattr(base, key):
            raise DocumentError(f"{key} is {document[key]!r}, but this mapping is for {getattr(base, key)!r}")
    rules_json = document.get("rules", [rule_to_json(item) for item in base.rules])
    if not isinstance(rules_json, list):
        raise DocumentError("rules must be a list")
    return replace(
        base,
        rules=tuple(rule_from_json(item, position) for position, item in enumerate(rules_json, start=1)),
        display_target=_string(document, "display_target", base.display_target),
        archived_marker=_string(document, "archived_marker", base.archived_marker),
        time_zone=_string(document, "time_zone", base.time_zone),
        scope=_scope(document.get("scope"), base.scope),
        writeback=_writeback(document.get("writeback"), base.writeback),
    )


def rule_from_json(item: Any, row: int) -> FieldRule:
    where = f"rule {row}"
    if not isinstance(item, Mapping):
        raise DocumentError(f"{where}: must be an object")
    unknown = sorted(set(item) - {"target", "sources", "transform", "options", "role", "overflow"})
    if unknown:
        raise DocumentError(f"{where}: unknown key(s) {', '.join(unknown)}")
    target = item.get("target")
    if not isinstance(target, str) or not target.strip():
        raise DocumentError(f"{where}: target must be a non-empty string")
    transform = item.get("transform", "copy")
    if not isinstance(transform, str):
        raise DocumentError(f"{where}: transform must be a string")
    options = item.get("options", {})
    if not isinstance(options, Mapping):
        raise DocumentError(f"{where}: options must be an object")
    sources = item.get("sources")
    if sources is None and transform == "template":
        sources = template_fields(str(options.get("template", "")))
    if isinstance(sources, str):
        sources = [sources]
    if not isinstance(sources, list) or not all(isinstance(s, str) and s.strip() for s in sources):
        raise DocumentError(f"{where}: sources must be a list of field names")
    role = item.get("role", "")
    overflow = item.get("overflow", "reject")
    if role not in ROLES:
        raise DocumentError(f"{where}: role must be one of {_ROLE_NAMES}")
    if overflow not in OVERFLOWS:
        raise DocumentError(f"{where}: overflow must be one of {', '.join(OVERFLOWS)}")
    return FieldRule(
        target.strip(),
        tuple(s.strip() for s in sources),
        transform,
        MappingProxyType(dict(options)),
        role,
        overflow,
    )


def _string(document: Mapping[str, Any], key: str, default: str) -> str:
    value = document.get(key, default)
    if not isinstance(value, str):
        raise DocumentError(f"{key} must be a string")
    return value.strip()


def _scope(value: Any, default: SyncScope) -> SyncScope:
    if value is None:
        return default
    if not isinstance(value, Mapping) or value.get("kind") not in SCOPE_KINDS:
        raise DocumentError(f"scope.kind must be one of {', '.join(SCOPE_KINDS)}")
    since = value.get("since")
    if value["kind"] == "since":
        try:
            since = date.fromisoformat(str(since))
        except ValueError:
            raise DocumentError("scope.since must be a date like 2024-07-01") from None
    months = value.get("months", 24)
    if not isinstance(months, int) or isinstance(months, bool) or not 1 <= months <= 120:
        raise DocumentError("scope.months must be a whole number of months from 1 to 120")
    return SyncScope(kind=value["kind"], since=since if value["kind"] == "since" else None, months=months)


def _writeback(value: Any, default: WritebackConfig) -> WritebackConfig:
    if value is None:
        return default
    if not isinstance(value, Mapping):
        raise DocumentError("writeback must be an object")
    enabled = value.get("enabled", False)
    token = value.get("field_token", "") or ""
    if not isinstance(enabled, bool) or not isinstance(token, str):
        raise DocumentError("writeback needs enabled (true/false) and field_token (a custom field token)")
    return WritebackConfig(enabled=enabled, field_token=token.strip())


def _plain(value: Any) -> Any:
    """Options as plain JSON values (MappingProxyType and tuples are not JSON)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
