"""Requests from a window to the process that runs the profile's scheduler, through the database.

A window attached to `clinicsync serve` must not start a second scheduler or sync itself; its Sync now, Cancel,
Pause and Resume become rows of `service_request`, which the service reads every second and answers in the same
row (accepted → done, or refused with the reason). Review decisions need no request: they are stored in the
review table (store.queries.resolve_review), and the next sync carries them out; a Sync now makes that prompt.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from clinicsync.store.db import database_proxy
from clinicsync.store.models import ServiceRequest, utcnow

SYNC, CANCEL, PAUSE, RESUME = "sync", "cancel", "pause", "resume"
KINDS = (SYNC, CANCEL, PAUSE, RESUME)
PENDING, ACCEPTED, REFUSED, DONE = "pending", "accepted", "refused", "done"
# A request nobody answered for this long was made while no service ran; acting on it later would surprise.
STALE_AFTER = timedelta(minutes=2)
STALE_MESSAGE = "Not carried out: ClinicSync's background service was not running when it was asked."


@dataclass(frozen=True)
class RequestState:
    id: int
    kind: str
    status: str  # pending, accepted, refused, done
    result: str  # what came of it, in words ("" while pending)
    job_id: int | None

    @property
    def finished(self) -> bool:
        return self.status in (REFUSED, DONE)


def send(kind: str, *, streams: Sequence[str] | None = None, origin: str = "") -> int:
    """Store a request for the service; returns its id (poll `state(id)` for the answer)."""
    if kind not in KINDS:
        raise ValueError(f"unknown service request {kind!r}; known: {', '.join(KINDS)}")
    row = ServiceRequest.create(
        kind=kind, streams=list(streams) if streams else None, origin=origin or f"pid {os.getpid()}"
    )
    return int(row.id)


def state(request_id: int) -> RequestState | None:
    row = ServiceRequest.get_or_none(ServiceRequest.id == request_id)
    if row is None:
        return None
    return RequestState(row.id, row.kind, row.status, row.result, row.job_id)


def take_pending(now: datetime) -> list[ServiceRequest]:
    """The requests to carry out now, oldest first; stale ones are answered as not carried out."""
    with database_proxy.atomic():
        rows = list(ServiceRequest.select().where(ServiceRequest.status == PENDING).order_by(ServiceRequest.id))
        fresh = []
        for row in rows:
            if now - row.created_at > STALE_AFTER:
                answer(row.id, REFUSED, STALE_MESSAGE, at=now)
            else:
                fresh.append(row)
    return fresh


def answer(request_id: int, status: str, result: str, *, job_id: int | None = None, at: datetime | None = None) -> None:
    values: dict[str, object] = {"status": status, "result": result, "handled_at": at or utcnow()}
    if job_id is not None:
        values["job_id"] = job_id
    ServiceRequest.update(**values).where(ServiceRequest.id == request_id).execute()
