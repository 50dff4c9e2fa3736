"""Validation of a whole mapping before it is saved or used: every problem names its row and the rule it breaks.

Row numbers are 1-based positions in `rules` (as the editor and the JSON file show them); row 0 is the mapping as
a whole (the scope, write-back, metadata totals).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from clinicsync import stripe_limits
from clinicsync.mapping.fields import CLINICAL, MATCH_KEY_TARGETS, FieldCatalogue, target_spec
from clinicsync.mapping.spec import CUSTOM_FIELD_PREFIX, FieldRule, StreamMapping
from clinicsync.mapping.transforms import OPTION_CHOICES, TRANSFORM_ARITY, TRANSFORM_OPTIONS, template_fields


@dataclass(frozen=True)
class Problem:
    row: int  # 1-based rule position; 0 for the mapping as a whole
    rule: str  # short name of the broken rule, e.g. "clinical-field", "metadata-key"
    message: str
    target: str = ""

    def __str__(self) -> str:
        where = f"row {self.row} ({self.target})" if self.row else "mapping"
        return f"{where}: {self.message} [{self.rule}]"


class MappingInvalid(ValueError):
    """Raised when saving or running a mapping that has problems; str() lists every one."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def allowance_warning(field_label: str, field_name: str, targets: Collection[str], stripe_object: str) -> str:
    """What a person must read before allowing a clinical field: what leaves the clinic, and where it goes."""
    where = (
        f"as the {stripe_object} field {', '.join(sorted(targets))}"
        if targets
        else f"in whichever {stripe_object} field you map it to"
    )
    return (
        f"'{field_label}' ({field_name}) is clinical or sensitive information. Allowing it lets ClinicSync send "
        f"every synced record's value to Stripe {where}. Anyone with access to the "
        "Stripe account — staff, connected apps and Stripe itself — can then read it, and it stays in Stripe "
        "(and its logs) even if you remove the field from the mapping later. Allow it only if the clinic's privacy "
        "policy and the patients' consent cover sending it to Stripe."
    )


def validate_mapping(
    mapping: StreamMapping,
    catalogue: FieldCatalogue,
    allowed: Collection[str] = (),
) -> list[Problem]:
    """Every problem with `mapping`; empty when it may be saved and used. `allowed`: clinical source fields a
    person has explicitly allowed for this stream."""
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for row, item in enumerate(mapping.rules, start=1):
        problems.extend(_check_rule(mapping, catalogue, allowed, row, item))
        if item.target in seen:
            problems.append(
                Problem(
                    row, "duplicate-target", f"{item.target} is already mapped in row {seen[item.target]}", item.target
                )
            )
        seen.setdefault(item.target, row)
    problems.extend(_check_nesting(mapping))
    problems.extend(_check_whole(mapping, catalogue))
    return problems


def _check_rule(
    mapping: StreamMapping, catalogue: FieldCatalogue, allowed: Collection[str], row: int, item: FieldRule
) -> list[Problem]:
    problems: list[Problem] = []

    def bad(rule: str, message: str) -> None:
        problems.append(Problem(row, rule, message, item.describe()))

    # The Stripe side.
    if item.target.startswith("metadata."):
        problem = metadata_key_problem(item.target.removeprefix("metadata."))
        if problem:
            bad("metadata-key", problem)
    elif target_spec(mapping.stripe_object, item.target) is None:
        bad("unknown-target", f"{item.target} is not a field ClinicSync can set on a Stripe {mapping.stripe_object}")
    if item.role == "cross_ref" and not item.target.startswith("metadata."):
        bad("cross-ref-target", "the cross-reference must be a metadata key (Stripe cannot hold it elsewhere)")
    expected_key = MATCH_KEY_TARGETS.get(mapping.stripe_object)
    if item.role == "match_key" and item.target != expected_key:
        what = f"the {expected_key} field" if expected_key else "absent (matched by cross-reference)"
        bad(
            "match-key-target",
            f"the match key must be {what}",
        )
    if item.overflow == "truncate" and item.role:
        bad("overflow", "an identifier cannot be shortened: a cut id or email would point at the wrong record")
    # The transform.
    if item.transform not in TRANSFORM_OPTIONS:
        bad("unknown-transform", f"unknown transform {item.transform!r}; known: {', '.join(TRANSFORM_OPTIONS)}")
    else:
        for message in _option_problems(item):
            bad("transform-options", message)
    # The source side.
    for source in item.sources:
        entry = catalogue.get(source)
        if entry is None:
            what = (
                f"no custom field has the token {source.removeprefix(CUSTOM_FIELD_PREFIX)}"
                if source.startswith(CUSTOM_FIELD_PREFIX)
                else f"{source} is not a field of {mapping.source_system} {mapping.source_type}s"
            )
            bad("unknown-source", what)
            continue
        if mapping.writeback.enabled and source == CUSTOM_FIELD_PREFIX + mapping.writeback.field_token:
            bad(
                "writeback-echo",
                f"{source} holds the Stripe id ClinicSync writes back; mapping it would send Stripe its own id",
            )
        if entry.needs_allowance and source not in allowed:
            kind = "clinical" if entry.cls == CLINICAL else "the clinic's own business information"
            bad(
                "clinical-field",
                f"{source} ({entry.label}) is {kind} and is not allowed for this stream; allow it explicitly "
                f"first (`clinicsync mapping allow {source} --stream {mapping.stream}`) after reading the warning",
            )
    return problems


def _option_problems(item: FieldRule) -> list[str]:
    spec = TRANSFORM_OPTIONS[item.transform]
    messages = []
    for name in item.options:
        if name not in spec:
            known = ", ".join(spec) or "none"
            messages.append(f"{item.transform} has no option {name!r} (its options: {known})")
    for name, (kind, required) in spec.items():
        if name not in item.options:
            if required:
                messages.append(f"{item.transform} needs the option {name!r}")
            continue
        value = item.options[name]
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            type_name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            messages.append(f"option {name!r} must be a {type_name}")
        elif (item.transform, name) in OPTION_CHOICES and value not in OPTION_CHOICES[(item.transform, name)]:
            messages.append(f"option {name!r} must be one of {', '.join(OPTION_CHOICES[(item.transform, name)])}")
    arity = TRANSFORM_ARITY[item.transform]
    if arity is None and not item.sources:
        messages.append(f"{item.transform} needs at least one source field")
    elif arity is not None and len(item.sources) != arity:
        messages.append(f"{item.transform} takes {arity} source field(s), not {len(item.sources)}")
    if item.transform == "template" and isinstance(item.options.get("template"), str):
        placeholders = template_fields(item.options["template"])
        if not placeholders:
            messages.append("the template names no field; use {field_name} placeholders")
        elif list(item.sources) != placeholders:
            messages.append(f"the sources must be the template's fields in order: {', '.join(placeholders)}")
    if (
        item.transform == "truncate"
        and isinstance(item.options.get("max_chars"), int)
        and item.options["max_chars"] < 1
    ):
        messages.append("max_chars must be at least 1")
    zone_name = item.options.get("time_zone") if item.transform == "local_date" else None
    if zone_name and not _zone_exists(str(zone_name)):
        messages.append(f"unknown time zone {item.options['time_zone']!r}")
    if item.transform == "lookup" and isinstance(item.options.get("table"), dict) and not item.options["table"]:
        messages.append("the lookup table is empty")
    return messages


def metadata_key_problem(key: str) -> str | None:
    if not key:
        return "a metadata key cannot be empty"
    if len(key) > stripe_limits.METADATA_KEY_MAX_CHARS:
        return f"metadata key {key!r} is {len(key)} characters; Stripe allows {stripe_limits.METADATA_KEY_MAX_CHARS}"
    if any(ch in key for ch in stripe_limits.METADATA_KEY_FORBIDDEN_CHARS):
        return f"metadata key {key!r} contains '[' or ']', which Stripe refuses"
    return None


def _check_nesting(mapping: StreamMapping) -> list[Problem]:
    """ "address" and "address.line1" cannot both be mapped: one would overwrite the other."""
    problems = []
    targets = [item.target for item in mapping.rules]
    for row, item in enumerate(mapping.rules, start=1):
        parent = next((t for t in targets if item.target.startswith(t + ".")), None)
        if parent is not None:
            problems.append(
                Problem(
                    row, "target-conflict", f"{item.target} is inside {parent}, which is mapped too", item.describe()
                )
            )
    return problems


def _check_whole(mapping: StreamMapping, catalogue: FieldCatalogue) -> list[Problem]:
    problems: list[Problem] = []
    cross_refs = [item for item in mapping.rules if item.role == "cross_ref"]
    if len(cross_refs) != 1:
        problems.append(
            Problem(
                0,
                "cross-ref-count",
                f"exactly one rule must be the cross-reference (role cross_ref), found {len(cross_refs)}",
            )
        )
    match_keys = [item for item in mapping.rules if item.role == "match_key"]
    if mapping.stripe_object in MATCH_KEY_TARGETS and len(match_keys) != 1:
        problems.append(
            Problem(
                0, "match-key", f"exactly one rule must be the matching key (role match_key), found {len(match_keys)}"
            )
        )
    marker_problem = metadata_key_problem(mapping.archived_marker)
    if marker_problem:
        problems.append(Problem(0, "archived-marker", marker_problem))
    elif f"metadata.{mapping.archived_marker}" in {item.target for item in mapping.rules}:
        problems.append(
            Problem(0, "archived-marker", f"metadata.{mapping.archived_marker} is reserved for the archived marker")
        )
    metadata_keys = {t for t in mapping.targets if t.startswith("metadata.")}
    if len(metadata_keys) > stripe_limits.METADATA_MAX_KEYS:
        problems.append(
            Problem(
                0,
                "metadata-count",
                f"{len(metadata_keys)} metadata keys (with the archived marker); Stripe allows "
                f"{stripe_limits.METADATA_MAX_KEYS}",
            )
        )
    if mapping.time_zone and not _zone_exists(mapping.time_zone):
        problems.append(Problem(0, "time-zone", f"unknown time zone {mapping.time_zone!r}"))
    if mapping.scope.kind == "since" and mapping.scope.since is None:
        problems.append(Problem(0, "scope", "scope 'since' needs a date"))
    if mapping.scope.kind == "recent_activity" and (mapping.source_system, mapping.source_type) != (
        "cliniko",
        "patient",
    ):
        problems.append(Problem(0, "scope", "scope 'recent_activity' applies to Cliniko patients only"))
    if mapping.writeback.enabled:
        token = mapping.writeback.field_token
        if not token:
            problems.append(Problem(0, "writeback-field", "write-back is on but no custom field is chosen"))
        else:
            entry = catalogue.get(CUSTOM_FIELD_PREFIX + token)
            if entry is None:
                problems.append(Problem(0, "writeback-field", f"no custom field has the token {token}"))
            elif entry.kind != "text":
                problems.append(Problem(0, "writeback-field", f"{entry.label} is not a text field"))
    return problems


def _zone_exists(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True
