"""Which version of each record a run has handled: asked for every record read, to handle each version once.

Kept for every record a run reads (all of them on a first sync: 20,000 at a big clinic), so an entry is one int:
64 bits of the version's payload hash and its change time to the microsecond. As a tuple of the hash's hex text
and a datetime it took some 240 bytes a record, about five times as much. Two versions of one record whose hashes
share their first 64 bits (odds of 2^-64) would count as the same version: the later one waits for the next sync.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import NamedTuple

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_HASH_BITS = 64
_HASH_MASK = (1 << _HASH_BITS) - 1
_TIME_OFFSET = 1 << 60  # keeps every datetime's microseconds since 1970 positive (years 1-9999 are ±2.6e17)
_MICROSECOND = timedelta(microseconds=1)


class Handled(NamedTuple):
    """The version of a record a run handled: its payload hash's first 64 bits, and when it changed (if known)."""

    hash_prefix: int
    changed: datetime | None

    def same_payload(self, payload_hash: str) -> bool:
        return self.hash_prefix == _prefix(payload_hash)


class SeenVersions:
    """Source id → the version of that record this run handled."""

    def __init__(self) -> None:
        self._by_id: dict[str, int] = {}

    def __contains__(self, source_id: object) -> bool:
        return source_id in self._by_id

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, source_id: str, payload_hash: str, changed: datetime | None) -> None:
        code = 0 if changed is None else (changed - _EPOCH) // _MICROSECOND + _TIME_OFFSET + 1
        self._by_id[source_id] = (code << _HASH_BITS) | _prefix(payload_hash)

    def handled(self, source_id: str) -> Handled | None:
        value = self._by_id.get(source_id)
        if value is None:
            return None
        code = value >> _HASH_BITS
        changed = None if code == 0 else _EPOCH + (code - _TIME_OFFSET - 1) * _MICROSECOND
        return Handled(value & _HASH_MASK, changed)


def _prefix(payload_hash: str) -> int:
    return int(payload_hash[:16], 16)
