"""What a sync can say about a record, a run and a stop: the one list each, used by the engine, the store, the
CLI and the window (which give them words)."""

from __future__ import annotations

from enum import StrEnum


class Action(StrEnum):
    """What happened to one record in one run: each is a counter of the run and a history row."""

    CREATED = "created"
    LINKED = "linked"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    SKIPPED = "skipped"
    FAILED = "failed"
    REVIEW = "review"
    # Held back this run: an earlier change to the record is still queued for Stripe (its outbox row pending). The
    # record is read again once that change is through; it was not skipped, and nothing about it was decided.
    WAITING = "waiting"


ACTIONS: tuple[str, ...] = tuple(action.value for action in Action)  # the run's counters, in the order shown
NOTE = "note"  # a history row that counts nothing (e.g. a duplicate another installation made, removed)


class Outcome(StrEnum):
    """How a run ended."""

    RUNNING = "running"
    OK = "ok"
    ATTENTION = "attention"  # finished, with records failed or waiting for review
    FAILED = "failed"
    CANCELLED = "cancelled"
    NEEDS_APPROVAL = "needs_approval"  # a first live sync planned and waits for a person
    SKIPPED = "skipped"  # asked for (by the schedule or a window) but not started; the message says why


class StopKind(StrEnum):
    """Why a run stopped before its end."""

    MAPPING = "mapping"
    UNAVAILABLE = "unavailable"  # Stripe
    AUTH = "auth"
    PERMISSION = "permission"
    STRIPE_ERROR = "stripe_error"
    SOURCE_AUTH = "source_auth"
    SOURCE_PERMISSION = "source_permission"
    SOURCE_UNAVAILABLE = "source_unavailable"
    SOURCE_ERROR = "source_error"
    STORAGE = "storage"
    INTERNAL = "internal"


# A stop every later stream of the same sync would meet too: the sync ends there.
STOPS_EVERY_STREAM = frozenset(
    {
        StopKind.UNAVAILABLE,
        StopKind.AUTH,
        StopKind.PERMISSION,
        StopKind.STORAGE,
        StopKind.SOURCE_AUTH,
        StopKind.SOURCE_PERMISSION,
        StopKind.SOURCE_UNAVAILABLE,
    }
)
