"""Stored mappings: the current one per stream, every earlier revision, and the clinical-field allowances.

The only module that reads or writes the mapping tables; the CLI, the engine and the Field mapping tab all go
through it, so validation and the allow-list cannot be skipped by any of them.
"""

from __future__ import annotations

import getpass
import json
from dataclasses import dataclass, replace
from typing import Any

from clinicsync.mapping.defaults import DEFAULT_MAPPINGS
from clinicsync.mapping.fields import FieldCatalogue
from clinicsync.mapping.spec import DocumentError, StreamMapping, SyncScope, from_document, to_document
from clinicsync.mapping.validate import MappingInvalid, Problem, allowance_warning, validate_mapping
from clinicsync.store.db import database_proxy
from clinicsync.store.models import FieldAllowance, MappingRevision, StreamMappingRow, StreamState, utcnow


class UnknownStream(KeyError):
    def __str__(self) -> str:
        return f"unknown stream {self.args[0]!r}; known streams: {', '.join(DEFAULT_MAPPINGS)}"


def current_user() -> str:
    """Who is deciding, for the record: the OS account name (never a secret)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name (a service account, a container)
        return "unknown"


def default_mapping(stream: str) -> StreamMapping:
    try:
        return DEFAULT_MAPPINGS[stream]
    except KeyError:
        raise UnknownStream(stream) from None


def load(stream: str) -> StreamMapping:
    """The stream's current mapping: the saved one, else the built-in default (version 0).

    A stored row that cannot be read (not JSON, or not a mapping) does not raise: the result is the built-in
    default marked `unreadable`, which `check` reports, so every caller can still show it and the sync of this
    stream stops with that reason while everything else keeps working."""
    base = default_mapping(stream)
    row = database_proxy.execute_sql(
        "SELECT version, body FROM stream_mapping WHERE stream = ?", (stream,)
    ).fetchone()  # raw: the model's JSON field would raise on a damaged body before anything could say which
    if row is None:
        return base
    version, body = row
    try:
        if not _is_version(version):
            raise DocumentError("its version is not a number")
        mapping = _from_stored(body, base)
    except DocumentError as exc:
        kept = version if _is_version(version) else 0
        return replace(base, version=kept, unreadable=unreadable(stream, version, exc))
    return replace(mapping, version=version)


def unreadable(stream: str, version: object, why: Exception) -> str:
    """What to say about a stored mapping that cannot be read, and how to get out of it."""
    return (
        f"The stored field mapping of {stream} (version {version}) cannot be read ({why}), so nothing is sent for "
        "this stream. Save a mapping again: `clinicsync mapping reset` (the built-in default), "
        "`clinicsync mapping import FILE`, or Field mapping in the app."
    )


def _from_stored(body: object, base: StreamMapping) -> StreamMapping:
    """A stored JSON body read onto `base`; raises DocumentError for anything but a well-formed mapping."""
    if not isinstance(body, str | bytes) or not body.strip():
        raise DocumentError("it is empty")
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise DocumentError(f"not JSON: {exc}") from None
    return from_document(document, base)


def _is_version(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# The scope a new LIVE connection starts with (data minimisation): patients seen in the last two years.
LIVE_DEFAULT_SCOPE = SyncScope(kind="recent_activity", months=24)
LIVE_DEFAULT_NOTE = (
    "the default for a new live connection; change it in Field mapping or with `clinicsync mapping import`"
)


def default_scope_for_pair(stream: str, *, livemode: bool) -> SyncScope:
    """The sync scope `stream` uses with an account pair while its mapping is the built-in default (never saved
    by a person): for a LIVE Stripe account, only Cliniko patients with an invoice or appointment in the last
    24 months; in test mode (the sandbox's default too) every record, as the built-in mapping says.

    Stored mappings are per stream, not per pair, so this default is not saved: it is applied at each run for
    the pair, until a person saves a mapping (any scope, "all" included) in Field mapping or with
    `clinicsync mapping import`."""
    base = default_mapping(stream)
    if livemode and (base.source_system, base.source_type) == ("cliniko", "patient"):
        return LIVE_DEFAULT_SCOPE
    return base.scope


def default_for_connection(stream: str, *, livemode: bool | None) -> StreamMapping:
    """The built-in mapping with the scope a new connection of this kind gets ("Reset to defaults"). With the
    mode not known yet, the narrower live scope: resetting must never widen what a live account receives."""
    return replace(default_mapping(stream), scope=default_scope_for_pair(stream, livemode=livemode is not False))


def load_for_pair(stream: str, *, livemode: bool) -> tuple[StreamMapping, bool]:
    """The mapping a run for an account pair uses, and whether its scope is the pair's default (not saved)."""
    mapping = load(stream)
    if mapping.version:
        return mapping, False
    scope = default_scope_for_pair(stream, livemode=livemode)
    return replace(mapping, scope=scope), scope != mapping.scope


def revision(stream: str, version: int | None) -> StreamMapping:
    """The mapping as it was at `version` (None or 0: the built-in default, which every link predating a saved
    mapping was written with)."""
    base = default_mapping(stream)
    if not version:
        return base
    row = database_proxy.execute_sql(
        "SELECT body FROM mapping_revision WHERE stream = ? AND version = ?", (stream, version)
    ).fetchone()
    if row is None:
        return base
    try:
        return replace(_from_stored(row[0], base), version=version)
    except DocumentError:
        return base


def retired_targets(stream: str, written_with: int | None, current: StreamMapping) -> tuple[str, ...]:
    """Stripe fields the mapping an object was written with set, and the current one no longer maps."""
    if (written_with or 0) == current.version:
        return ()
    now = set(current.targets)
    return tuple(t for t in revision(stream, written_with).targets if t not in now)


def added_targets(stream: str, written_with: int | None, current: StreamMapping) -> tuple[str, ...]:
    """Stripe fields the current mapping sets that the object's mapping did not: ClinicSync now owns them, so an
    object must be written once even if its values are empty (an empty mapped field is unset in Stripe)."""
    if (written_with or 0) == current.version:
        return ()
    before = set(revision(stream, written_with).targets)
    return tuple(t for t in current.targets if t not in before)


# --- allowances ------------------------------------------------------------------------------------------
def allowed_fields(stream: str) -> set[str]:
    """Clinical source fields a person has allowed for this stream (their newest decision is "allowed")."""
    newest: dict[str, str] = {}
    for row in FieldAllowance.select().where(FieldAllowance.stream == stream).order_by(FieldAllowance.id):
        newest[row.source_field] = row.decision
    return {name for name, decision in newest.items() if decision == "allowed"}


def allowance_history(stream: str | None = None) -> list[FieldAllowance]:
    query = FieldAllowance.select().order_by(FieldAllowance.id)
    if stream is not None:
        query = query.where(FieldAllowance.stream == stream)
    return list(query)


def warning_for(stream: str, source_field: str, catalogue: FieldCatalogue, mapping: StreamMapping | None = None) -> str:
    """The warning a person must see before allowing `source_field`: what would be sent, and to where."""
    mapping = mapping or load(stream)
    entry = catalogue.get(source_field)
    targets = [rule.target for rule in mapping.rules if source_field in rule.sources]
    label = entry.label if entry is not None else source_field
    return allowance_warning(label, source_field, targets, mapping.stripe_object)


def allow(stream: str, source_field: str, *, warning: str, who: str | None = None, via: str = "cli") -> FieldAllowance:
    """Record that a person allowed one clinical field, after being shown `warning`."""
    default_mapping(stream)
    if not warning.strip():
        raise ValueError("an allowance must record the warning the person was shown")
    return FieldAllowance.create(
        stream=stream,
        source_field=source_field,
        decision="allowed",
        decided_by=who or current_user(),
        via=via,
        warning=warning,
    )


def withdraw(stream: str, source_field: str, *, who: str | None = None, via: str = "cli") -> FieldAllowance:
    """Withdraw an allowance. Refused while the mapping still sends the field: remove it from the mapping first,
    so the next sync unsets it in Stripe rather than failing."""
    mapping = load(stream)
    if source_field in mapping.source_fields:
        rows = [str(n) for n, rule in enumerate(mapping.rules, start=1) if source_field in rule.sources]
        raise MappingInvalid(
            [Problem(0, "allowance-in-use", f"{source_field} is still mapped (row {', '.join(rows)}); remove it first")]
        )
    return FieldAllowance.create(
        stream=stream, source_field=source_field, decision="withdrawn", decided_by=who or current_user(), via=via
    )


# --- saving ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SaveResult:
    mapping: StreamMapping
    changed: bool  # False when the document equals the current one (nothing saved)
    cursor_reset: bool  # the next sync re-reads every source record


def check(mapping: StreamMapping, catalogue: FieldCatalogue) -> list[Problem]:
    """Validation with this stream's recorded allowances: what save() and the engine both run."""
    problems = validate_mapping(mapping, catalogue, allowed_fields(mapping.stream))
    if mapping.unreadable:
        problems.insert(0, Problem(0, "stored-mapping", mapping.unreadable))
    return problems


def parse(stream: str, document: Any) -> StreamMapping:
    """A JSON document (already decoded) as a mapping for `stream`; raises DocumentError when malformed."""
    if isinstance(document, dict) and document.get("stream") not in (None, stream):
        raise DocumentError(f"this file is the mapping of {document.get('stream')!r}, not {stream!r}")
    return from_document(document, default_mapping(stream))


def save(mapping: StreamMapping, catalogue: FieldCatalogue, *, who: str | None = None) -> SaveResult:
    """Validate and store `mapping` as the stream's new current version; raises MappingInvalid with every problem.

    A change to what is sent or to which records are synced resets the stream's cursors (every account pair), so
    the next sync re-reads the whole source — ClinicSync caches no source data — and updates exactly the records
    whose payload changed.
    """
    # Saving writes a new, readable row: whatever made the stored one unreadable no longer applies to this one.
    mapping = replace(mapping, unreadable="")
    problems = check(mapping, catalogue)
    if problems:
        raise MappingInvalid(problems)
    current = load(mapping.stream)
    document = to_document(mapping)
    # Saving over the built-in default is kept even when equal: it records a person's choice (e.g. scope "all"
    # for a live connection, whose unsaved default is recent activity; see default_scope_for_pair).
    if document == to_document(current) and current.version and not current.unreadable:
        return SaveResult(current, changed=False, cursor_reset=False)
    who = who or current_user()
    with database_proxy.atomic():
        version = (
            MappingRevision.select(MappingRevision.version)
            .where(MappingRevision.stream == mapping.stream)
            .order_by(MappingRevision.version.desc())
            .scalar()
            or 0
        ) + 1
        MappingRevision.create(stream=mapping.stream, version=version, body=document, saved_by=who)
        StreamMappingRow.insert(
            stream=mapping.stream, version=version, body=document, saved_at=utcnow(), saved_by=who
        ).on_conflict_replace().execute()
        # A live pair's default scope may differ; what an unreadable mapping sent is not known.
        reset = _affects_records(current, mapping) or not current.version or bool(current.unreadable)
        if reset:
            StreamState.update(cursor=None).where(StreamState.stream == mapping.stream).execute()
    return SaveResult(replace(mapping, version=version), changed=True, cursor_reset=reset)


def reset_to_default(stream: str, catalogue: FieldCatalogue, *, who: str | None = None) -> SaveResult:
    return save(default_mapping(stream), catalogue, who=who)


def _affects_records(before: StreamMapping, after: StreamMapping) -> bool:
    """Whether a change alters any payload or the set of records synced (write-back settings alone do not)."""
    strip = {"writeback"}
    old = {k: v for k, v in to_document(before).items() if k not in strip}
    new = {k: v for k, v in to_document(after).items() if k not in strip}
    return old != new
