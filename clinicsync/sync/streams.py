"""The streams ClinicSync runs: which source records they read and which mapping turns them into Stripe objects."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from clinicsync.mapping.defaults import CLINIKO_PATIENTS
from clinicsync.mapping.spec import StreamMapping

Record = Mapping[str, Any]


@dataclass(frozen=True)
class StreamDef:
    name: str
    mapping: StreamMapping
    read_changed: Callable[[Any, datetime | None], Iterator[Record]]  # (source client, cursor)
    read_one: Callable[[Any, str], Record | None]
    archived_value: Callable[[Record], str | None]  # why the record counts as archived, or None


def _patients_changed(client: Any, cursor: datetime | None) -> Iterator[Record]:
    # Cliniko hides archived (and merged) patients from the ordinary list, so they need a pass of their own.
    return itertools.chain(
        client.iter_patients_changed_since(cursor),
        client.iter_archived_patients_changed_since(cursor),
    )


def _patient_archived(record: Record) -> str | None:
    for field in ("deleted_at", "merged_at", "archived_at"):
        if record.get(field):
            return f"{field.removesuffix('_at')} {record[field]}"
    return None


CLINIKO_PATIENTS_STREAM = StreamDef(
    name="cliniko.patients",
    mapping=CLINIKO_PATIENTS,
    read_changed=_patients_changed,
    read_one=lambda client, source_id: client.get_patient(source_id),
    archived_value=_patient_archived,
)

STREAMS: dict[str, StreamDef] = {CLINIKO_PATIENTS_STREAM.name: CLINIKO_PATIENTS_STREAM}
