"""Preview a mapping on one real source record: the exact Stripe request a sync would send, and how it differs from
the linked Stripe object. A dry run: it reads the source and Stripe and writes nothing anywhere.

Used by `clinicsync mapping preview` and by the Field mapping tab (on a worker thread). The functions take their
clients as arguments; `connect` builds them from settings and secrets for callers that have none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clinicsync.mapping import store as mapping_store
from clinicsync.mapping.apply import create_params, map_record, update_params
from clinicsync.mapping.fields import FieldCatalogue, custom_field_entries
from clinicsync.mapping.spec import CUSTOM_FIELD_PREFIX, StreamMapping
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
    allowed: set[str] | None = None,
    archived_value: str | None = None,
    time_zone: str = DEFAULT_TIME_ZONE,
    link: tuple[str, int | None] | None = None,  # (Stripe id, mapping version it was written with)
    current: Mapping[str, Any] | None = None,  # the linked Stripe object as Stripe has it now
) -> Preview:
    """The preview of one record (pure: no I/O). Rows with problems are left out and listed, so a half-edited
    mapping still shows what its valid rows would send — and a clinical field that is not allowed is never shown
    as part of a payload."""
    result = Preview(stream=mapping.stream, record_id=record_id)
    allowed = mapping_store.allowed_fields(mapping.stream) if allowed is None else allowed
    result.problems = validate_mapping(mapping, catalogue, allowed)
    bad_rows = {problem.row for problem in result.problems if problem.row}
    result.skipped_rows = sorted(bad_rows)
    usable = mapping.with_rules(tuple(r for n, r in enumerate(mapping.rules, start=1) if n not in bad_rows))
    if record is None:
        result.error = f"there is no record {record_id} (or it was deleted)"
        return result
    result.found = True
    if mapping.writeback.enabled:
        from clinicsync.sync.writeback import without_writeback_field

        record = without_writeback_field(record, mapping.writeback.field_token)
    mapped = map_record(usable, record, archived_value=archived_value, context=TransformContext(time_zone))
    result.display_name, result.notes, result.error = mapped.display_name, mapped.notes, mapped.error
    retired: tuple[str, ...] = ()
    if link is not None:
        result.stripe_id = link[0]
        retired = mapping_store.retired_targets(mapping.stream, link[1], mapping)
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


# --- fetching (I/O) --------------------------------------------------------------------------------------
@dataclass
class Connection:
    """The clients a preview reads through, and the account pair they belong to (None if never synced)."""

    source: Any
    gateway: Any | None
    pair: Any | None
    stream: Any  # streams.base.Stream

    def close(self) -> None:
        close = getattr(self.source, "close", None)
        if close is not None:
            close()


def connect(settings: Any, secrets: Any, stream_name: str) -> Connection:
    """Clients from the profile's settings and keys. Stripe is optional (no key: no diff). Looks up the account
    pair without creating one: a preview leaves no trace."""
    from clinicsync.store.models import AccountPair
    from clinicsync.streams import STREAMS
    from clinicsync.sync.retry import CancelToken
    from clinicsync.sync.service import ConfigProblem, cliniko_client, stripe_gateway

    stream = STREAMS[stream_name]
    source = cliniko_client(settings, secrets, CancelToken())
    try:
        gateway = stripe_gateway(settings, secrets)
    except ConfigProblem:
        gateway = None
    pair = None
    if gateway is not None:
        clinic = source.get_account()
        account = gateway.account()
        pair = AccountPair.get_or_none(
            (AccountPair.source_system == "cliniko")
            & (AccountPair.source_account == clinic.id)
            & (AccountPair.source_region == source.shard)
            & (AccountPair.stripe_account == account.id)
            & (AccountPair.stripe_livemode == account.livemode)
        )
    return Connection(source=source, gateway=gateway, pair=pair, stream=stream)


def source_settings(connection: Connection, mapping: StreamMapping) -> Mapping[str, Any] | None:
    """The source's settings (custom field definitions), read only when the mapping needs them."""
    custom = any(name.startswith(CUSTOM_FIELD_PREFIX) for name in mapping.source_fields)
    if not custom and not mapping.writeback.enabled:
        return None
    result: Mapping[str, Any] | None = connection.stream.source_settings(connection.source)
    return result


def fetch_preview(connection: Connection, mapping: StreamMapping, record_id: str) -> Preview:
    """Read one record (and its linked Stripe object) and preview `mapping` on it. Reads only."""
    from clinicsync.store.models import RecordLink

    settings = source_settings(connection, mapping)
    catalogue = catalogue_for(mapping, settings)
    record = connection.stream.read_one(connection.source, record_id)
    zone = mapping.time_zone or connection.stream.time_zone(connection.source) or DEFAULT_TIME_ZONE
    link = None
    current = None
    if connection.pair is not None:
        row = RecordLink.get_or_none(
            (RecordLink.pair == connection.pair)
            & (RecordLink.stream == mapping.stream)
            & (RecordLink.source_id == record_id)
            & RecordLink.stripe_id.is_null(False)
        )
        if row is not None:
            link = (row.stripe_id, row.mapping_version)
            if connection.gateway is not None:
                current = connection.gateway.retrieve(mapping.stripe_object, row.stripe_id)
    archived = connection.stream.archived_value(record) if record is not None else None
    return preview_record(
        mapping,
        record,
        record_id,
        catalogue,
        archived_value=archived,
        time_zone=zone,
        link=link,
        current=current,
    )


def sample_records(connection: Connection, mapping: StreamMapping, limit: int = 20) -> list[tuple[str, str]]:
    """A few (id, display name) pairs to preview on: the first records the stream reads (one page)."""
    samples: dict[str, str] = {}  # by id: a stream may read a record twice (Cliniko's archived pass lists all)
    for record in connection.stream.read_changed(connection.source, None):
        mapped = map_record(mapping, record)
        samples.setdefault(mapped.source_id, mapped.display_name)
        if len(samples) >= limit:
            break
    return list(samples.items())
