"""What a window uses when another process (`clinicsync serve`) runs the profile's scheduler: Qt-free, through
the database, so the window never starts a second scheduler.

    info = attach.scheduler_holder(paths)     # None: nobody runs the schedule; host it yourself (SchedulerHost)
    if info is not None:
        request_id = attach.sync_now()         # the service syncs (its keys, its runner, its history)
        attach.request_state(request_id)       # pending → accepted → done, or refused, with words to show
        attach.pause(); attach.resume(); attach.cancel()
        attach.decide_review(3, "link", "cus_…")   # stored now; carried out by the sync it asks for
        attach.active_alerts()                 # what needs a person, for the Overview and the tray

Reading what the service did needs nothing special: history, review items and alerts are rows of the same
database; `scheduler_holder(paths).next_runs` gives the next run per stream for "next sync at 14:05".
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from clinicsync.paths import AppPaths
from clinicsync.store import queries
from clinicsync.store.models import ReviewItem
from clinicsync.sync import alerts, requests
from clinicsync.sync.instance import Holder, current_holder, scheduler_running

AlertView = alerts.AlertView
RequestState = requests.RequestState


def scheduler_holder(paths: AppPaths) -> Holder | None:
    """Who runs this profile's schedule now (None: nobody — the window may host it itself)."""
    if not scheduler_running(paths):
        return None
    return current_holder()


def sync_now(streams: Sequence[str] | None = None, *, origin: str = "window") -> int:
    """Ask the service for a sync (every enabled stream, or these); returns the request id."""
    return requests.send(requests.SYNC, streams=streams, origin=origin)


def cancel(*, origin: str = "window") -> int:
    return requests.send(requests.CANCEL, origin=origin)


def pause(*, origin: str = "window") -> int:
    """Pause syncing: stored, honoured by every trigger, and the running sync stops at its next safe point."""
    return requests.send(requests.PAUSE, origin=origin)


def resume(*, origin: str = "window") -> int:
    return requests.send(requests.RESUME, origin=origin)


def request_state(request_id: int) -> RequestState | None:
    return requests.state(request_id)


def decide_review(
    item_id: int, action: str, stripe_id: str | None = None, *, sync: bool = True, origin: str = "window"
) -> tuple[ReviewItem, int | None]:
    """Store a person's review decision (link, create, ignore; raises queries.ReviewError with the reason when it
    cannot be taken) and, unless `sync` is False, ask the service to carry it out now. Returns the item and the
    sync request's id (None when no sync was asked for)."""
    item = queries.resolve_review(item_id, action, stripe_id)
    request_id = sync_now(origin=origin) if sync and action != "ignore" else None
    return item, request_id


def active_alerts() -> list[AlertView]:
    return alerts.active_alerts()


def take_due_notices(now: datetime) -> list[AlertView]:
    """For the window's notifier: the alerts to announce now (new ones once, then at most once a day)."""
    return alerts.take_due_notices(now)
