"""What every Cliniko stream asks its source beyond its own records: settings, the clinic's zone and country."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def archived_value(record: Mapping[str, Any], fields: tuple[str, ...]) -> str | None:
    """Why the record counts as archived ("archived 2026-04-04T13:30:00Z"), from the first of `fields` that is
    set; None when none is. A value that is not text says only which it is, never its Python spelling."""
    for field in fields:
        value = record.get(field)
        if value:
            what = field.removesuffix("_at")
            return f"{what} {value}" if isinstance(value, str) else what
    return None


def settings(client: Any) -> Mapping[str, Any] | None:
    """`GET /settings` for the custom field definitions; None when the key's role may not read settings."""
    from clinicsync.sources.errors import SourcePermissionError

    try:
        result: Mapping[str, Any] = client.get_settings()
    except SourcePermissionError:
        return None
    return result


def _first_business(client: Any) -> Mapping[str, Any] | None:
    from clinicsync.sources.errors import SourceNotFound, SourcePermissionError

    try:
        businesses = client.get_businesses()  # one listing per sync, shared with the invoices' zones
    except (SourcePermissionError, SourceNotFound):
        return None
    return businesses[0] if businesses else None


def time_zone(client: Any) -> str | None:
    """The first business's IANA zone (docs/cliniko-api.md §5.6); a clinic's businesses share one in practice.

    None (so the default zone is used) when the key's role may not list businesses: a local date a few hours off
    at midnight is better than no sync at all."""
    business = _first_business(client)
    zone = business.get("time_zone_identifier") if business else None
    return zone if isinstance(zone, str) and zone else None


def country(client: Any) -> str | None:
    """The first business's country code (e.g. "AU"), for the clinic's currency; None when not known."""
    business = _first_business(client)
    code = business.get("country_code") if business else None
    return code if isinstance(code, str) and len(code) == 2 else None
