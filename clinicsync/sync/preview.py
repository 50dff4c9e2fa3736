"""Read what a mapping preview needs — a real source record, its linked Stripe object, the person's allowances —
and preview the mapping on it (mapping/preview.py). Reads only: a preview leaves no trace.

Used by `clinicsync mapping preview` and by the Field mapping tab (on a worker thread). `connect` builds the
clients from settings and secrets for callers that have none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clinicsync.mapping.apply import map_record
from clinicsync.mapping.preview import Preview, catalogue_for, preview_record
from clinicsync.mapping.spec import CUSTOM_FIELD_PREFIX, StreamMapping
from clinicsync.mapping.transforms import DEFAULT_TIME_ZONE
from clinicsync.retry import CancelToken
from clinicsync.store import mappings as mapping_store
from clinicsync.store.models import AccountPair, RecordLink
from clinicsync.streams import STREAMS
from clinicsync.streams.base import records_of
from clinicsync.sync.service import SOURCES, ConfigProblem, stripe_gateway


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

    stream = STREAMS[stream_name]
    kind = SOURCES[stream.source_system]
    source = kind.client(settings, secrets, CancelToken())
    try:
        gateway = stripe_gateway(settings, secrets)
    except ConfigProblem:
        gateway = None
    pair = None
    if gateway is not None:
        source_account, region, _ = kind.identity(source)
        account = gateway.account()
        pair = AccountPair.get_or_none(
            (AccountPair.source_system == stream.source_system)
            & (AccountPair.source_account == source_account)
            & (AccountPair.source_region == region)
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
    settings = source_settings(connection, mapping)
    catalogue = catalogue_for(mapping, settings)
    record = connection.stream.read_one(connection.source, record_id)
    zone = mapping.time_zone or connection.stream.time_zone(connection.source) or DEFAULT_TIME_ZONE
    link = None
    retired: tuple[str, ...] = ()
    current = None
    if connection.pair is not None:
        row = RecordLink.get_or_none(
            (RecordLink.pair == connection.pair)
            & (RecordLink.stream == mapping.stream)
            & (RecordLink.source_id == record_id)
            & RecordLink.stripe_id.is_null(False)
        )
        if row is not None:
            link = row.stripe_id
            retired = mapping_store.retired_targets(mapping.stream, row.mapping_version, mapping)
            if connection.gateway is not None:
                current = connection.gateway.retrieve(mapping.stripe_object, row.stripe_id)
    archived = connection.stream.archived_value(record) if record is not None else None
    return preview_record(
        mapping,
        record,
        record_id,
        catalogue,
        allowed=mapping_store.allowed_fields(mapping.stream),
        archived_value=archived,
        time_zone=zone,
        link=link,
        retired=retired,
        current=current,
    )


def sample_records(connection: Connection, mapping: StreamMapping, limit: int = 20) -> list[tuple[str, str]]:
    """A few (id, display name) pairs to preview on: the first records the stream reads (one page)."""
    samples: dict[str, str] = {}  # by id: a stream may read a record twice (Cliniko's archived pass lists all)
    for record in records_of(connection.stream.read_changed(connection.source, None)):
        mapped = map_record(mapping, record)
        samples.setdefault(mapped.source_id, mapped.display_name)
        if len(samples) >= limit:
            break
    return list(samples.items())
