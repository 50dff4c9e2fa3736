"""What every Cal.com stream asks its source beyond its own records: the clinic's time zone."""

from __future__ import annotations

from typing import Any


def time_zone(client: Any) -> str | None:
    """The key's user's IANA zone (`/me`): Cal.com's clinic owner account keeps the clinic's zone there."""
    zone = client.get_me().time_zone
    return zone if isinstance(zone, str) and zone else None
