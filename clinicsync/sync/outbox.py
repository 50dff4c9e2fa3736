"""The outbox: every Stripe write is stored with its exact request and an idempotency key naming that row before
it is sent, then marked done together with the link in one transaction.

A record's change is a plan of one or more steps (streams/base.py WriteStep), all stored before the first is
sent. A step waits for the one before it and takes earlier steps' Stripe ids where its request names them; a crash
resumes at the first step not done, and a done step is never sent again.

So a crash at any point replays exactly the request Stripe may already have executed (same key, same params),
an edit after a crash becomes a new row (a new key), and an A→B→A edit is never mistaken for a replay.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from peewee import IntegrityError

from clinicsync.mapping.apply import MappedRecord
from clinicsync.mapping.spec import StreamMapping
from clinicsync.retry import RetryPolicy, call_with_retries
from clinicsync.store import lookup
from clinicsync.store.db import database_proxy
from clinicsync.store.models import (
    AccountPair,
    OutboxEntry,
    RecordLink,
    RetryRecord,
    ReviewItem,
    RoleLink,
    StripeIndexEntry,
    utcnow,
)
from clinicsync.streams.base import DETACHED_ROLE, FindRequest, Stream, WriteStep
from clinicsync.stripe_gateway import StripeFailure, StripeGateway, is_action, retry_decision
from clinicsync.sync.crash import crashpoint
from clinicsync.sync.matching import same_account

log = logging.getLogger(__name__)

ACTION_OF_OP = {"create": "created", "link": "linked", "update": "updated"}
# Stripe prunes idempotency keys after 24 hours; older creates look for their object before being replayed.
IDEMPOTENCY_WINDOW = timedelta(hours=23)
MAX_SUPERSEDES = 3
CLOCK_MARGIN_S = 600


class StripeStopped(Exception):
    """Stripe cannot take writes now (unreachable, key rejected, permission missing). Queued writes wait."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Recorder(Protocol):
    def record(
        self, action: str, source_id: str, display_name: str, stripe_id: str | None, message: str = ""
    ) -> None: ...


def idempotency_key(pair: AccountPair, stream: str, source_id: str, op: str, row_id: int) -> str:
    return f"cs:{pair.uuid[:12]}:{stream}:{source_id}:{op}:{row_id}"


def _key_op(row: OutboxEntry, primary_role: str) -> str:
    """The write's name in its key: as before plans existed for the primary object, role-qualified otherwise."""
    return row.op if row.role in ("", primary_role) else f"{row.role}-{row.op}"


def _step_key(row: OutboxEntry) -> tuple[str, int]:
    """A step's place in its plan; a row queued before plans existed is a plan of its own."""
    return (row.plan_key or f"row:{row.id}", row.step)


def _resolved(params: dict[str, Any] | None, refs: dict[str, str]) -> dict[str, Any]:
    return {**(params or {}), **{name: value for name, value in refs.items() if name}}


def _normalised(params: dict[str, Any]) -> dict[str, Any]:
    # What is sent is exactly what a replay will send: both come from the same JSON text.
    loaded: dict[str, Any] = json.loads(json.dumps(params, sort_keys=True, ensure_ascii=False))
    return loaded


# What settling a step changes in its outbox row (saved alone: the row's other columns are as stored).
SETTLED_FIELDS = [
    OutboxEntry.status,
    OutboxEntry.stripe_id,
    OutboxEntry.params,
    OutboxEntry.finished_at,
    OutboxEntry.attempts,
]
SETTLED_LINK_FIELDS = [
    RecordLink.stripe_id,
    RecordLink.payload_hash,
    RecordLink.email_hash,
    RecordLink.display_name,
    RecordLink.archived,
    RecordLink.mapping_version,
    RecordLink.updated_at,
]
# Finished writes recorded together. Each transaction writes again every page it touches, and a batch's links,
# done marks and history rows land on pages spread over indexes keyed by Stripe ids and hashes (no order): 50 at a
# time touched nearly a page of each per record at 20,000 patients; a thousand share most of them.
SETTLE_BATCH = 1000
SETTLE_BACKLOG = 2 * SETTLE_BATCH  # finished writes a write thread lets wait before it records them itself


class Settler:
    """Records finished writes (done mark, links, history) in batches, one transaction for many records.

    Only the outbox row must be durable before its request is sent; what Stripe's answer changes locally may wait
    for the next batch: a crash before it commits replays those writes with their own keys, and Stripe answers
    each replay with the object it made. The reading thread records them in the same transaction that stores the
    next batch of plans once `batch` are waiting, so one thread writes the database and the write threads never
    wait for it; each transaction rewrites every page it touches, so fewer of them write far fewer bytes. A waiting
    write keeps only what recording it needs (its outbox row without the request, the answer's ids)."""

    def __init__(self, batch: int = SETTLE_BATCH, backlog: int = SETTLE_BACKLOG) -> None:
        self.batch = batch
        self._backlog = backlog
        self._items: list[tuple[str, Callable[[], None]]] = []
        self._held: Counter[str] = Counter()  # source ids waiting or being recorded: asked for every record read
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._after_commit: list[Callable[[], None]] = []  # of the flush under way

    def add(self, source_id: str, settle: Callable[[], None]) -> None:
        with self._lock:
            self._items.append((source_id, settle))
            self._held[source_id] += 1
            full = len(self._items) >= self._backlog
        if full:  # the reading thread is held up (a slow source): do not let the backlog grow
            self.flush()

    def holds(self, source_id: str) -> bool:
        with self._lock:
            return self._held[source_id] > 0

    def take(self, at_least: int = 1) -> list[tuple[str, Callable[[], None]]]:
        """The waiting writes, to record now. Their records stay held until the recording commits (`release`):
        a record read again meanwhile must still wait for it, not find its outbox row pending."""
        with self._lock:
            if len(self._items) < at_least:
                return []
            items, self._items = self._items, []
        return items

    def release(self, items: list[tuple[str, Callable[[], None]]]) -> None:
        with self._lock:
            self._held.subtract(source_id for source_id, _ in items)
            self._held = +self._held  # drop the records no longer held

    @staticmethod
    def apply(items: list[tuple[str, Callable[[], None]]]) -> None:
        """Record `items` inside the caller's transaction."""
        for _, settle in items:
            settle()

    @staticmethod
    def committed(items: list[tuple[str, Callable[[], None]]]) -> None:
        for _ in items:  # counted per record, as the crash-safety tests name them
            crashpoint("after_link_saved")

    def flush(self) -> None:
        with self.flushing() as items:
            if items:
                with database_proxy.atomic():
                    self.apply(items)

    @contextmanager
    def flushing(self, at_least: int = 1) -> Iterator[list[tuple[str, Callable[[], None]]]]:
        """The finished writes to record in the caller's transaction, opened inside this (none while fewer than
        `at_least` wait); counted as committed once it has. One flush at a time, so a record's steps are recorded
        in the order they finished."""
        with self._flush_lock:
            items = self.take(at_least)
            try:
                yield items
            except BaseException:
                self._after_commit.clear()
                self.release(items)  # not recorded: their rows stay pending, and a later run replays them
                raise
            self.release(items)
            self.committed(items)
            actions, self._after_commit = self._after_commit, []
            for action in actions:
                action()

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run `action` once the flush recording it has committed (called while recording, in its transaction)."""
        self._after_commit.append(action)


@dataclass
class OutboxWriter:
    gateway: StripeGateway
    pair: AccountPair
    mapping: StreamMapping
    stream: Stream
    policy: RetryPolicy
    recorder: Recorder
    sleep: Callable[[float], object]
    search_settle_s: float
    now: Callable[[], datetime] = utcnow
    settler: Settler = field(default_factory=Settler)
    # Stripe ids of steps done but not yet recorded (the settler's next batch), for the steps after them.
    _fresh_ids: dict[tuple[str, int], str] = field(default_factory=dict)

    def flush(self) -> None:
        """Record every finished write now (at the end of a run, or before a record is looked at again)."""
        self.settler.flush()

    # --- queueing -------------------------------------------------------------------------------------
    def enqueue_plan(
        self, mapped: MappedRecord, action: str, steps: list[WriteStep], email_hash: str | None
    ) -> list[OutboxEntry]:
        """Store every step of one record's plan (see enqueue_plans)."""
        return self.enqueue_plans([(mapped, action, steps, email_hash)])[0]

    def enqueue_plans(
        self,
        plans: list[tuple[MappedRecord, str, list[WriteStep], str | None]],
        before: Callable[[], None] = lambda: None,
    ) -> list[list[OutboxEntry]]:
        """Store the plans of several records in one transaction (after `before`, in it), each step with a key
        naming its own row. Nothing is sent before this returns: the rows are durable first."""
        stored: list[list[OutboxEntry]] = []
        with self.settler.flushing(at_least=self.settler.batch) as settled, database_proxy.atomic():
            before()
            # The writes finished meanwhile are recorded in the same transaction once a batch of them waits: one
            # thread writes the database (a write thread recording a large backlog holds it for a second, and the
            # reading thread waits).
            Settler.apply(settled)
            for mapped, action, steps, email_hash in plans:
                stored.append(self._store_plan(mapped, action, steps, email_hash))
        for _ in stored:  # counted per record, as the crash-safety tests name them
            crashpoint("after_outbox_insert")
        return stored

    def _store_plan(
        self, mapped: MappedRecord, action: str, steps: list[WriteStep], email_hash: str | None
    ) -> list[OutboxEntry]:
        rows: list[OutboxEntry] = []
        notes = "\n".join([*mapped.notes, *(step.note for step in steps if step.note)])
        for number, step in enumerate(steps):
            row = OutboxEntry(
                pair=self.pair,
                stream=self.mapping.stream,
                source_id=mapped.source_id,
                op=step.op,
                stripe_object=step.stripe_object,
                stripe_id=step.stripe_id,
                params=_normalised(dict(step.params)),
                payload_hash=mapped.payload_hash,
                email_hash=email_hash,
                display_name=mapped.display_name,
                archived=mapped.archived,
                notes=notes,
                mapping_version=self.mapping.version,
                step=number,
                last_step=number == len(steps) - 1,
                role=step.role,
                refs=dict(step.refs) or None,
                effects=[vars(record) for record in step.records] or None,
                plan_action=action,
            )
            lookup.insert(row)
            row.plan_key = f"{self.mapping.stream}:{mapped.source_id}:{rows[0].id if rows else row.id}"
            row.idempotency_key = idempotency_key(
                self.pair, self.mapping.stream, mapped.source_id, _key_op(row, self.stream.primary_role), row.id
            )
            lookup.save(row, [OutboxEntry.plan_key, OutboxEntry.idempotency_key])  # the rest was just inserted
            rows.append(row)
        return rows

    def pending(self) -> list[OutboxEntry]:
        return list(
            OutboxEntry.select()
            .where(
                (OutboxEntry.pair == self.pair)
                & (OutboxEntry.stream == self.mapping.stream)
                & (OutboxEntry.status == "pending")
            )
            .order_by(OutboxEntry.id)
        )

    # --- delivery -------------------------------------------------------------------------------------
    def pending_steps(self) -> list[tuple[str, int]]:
        """(source id, row id) of every pending step, in the order stored: what a run replays, without the rows."""
        rows = (
            OutboxEntry.select(OutboxEntry.source_id, OutboxEntry.id)
            .where(
                (OutboxEntry.pair == self.pair)
                & (OutboxEntry.stream == self.mapping.stream)
                & (OutboxEntry.status == "pending")
            )
            .order_by(OutboxEntry.id)
            .tuples()
        )
        return [(str(source_id), int(row_id)) for source_id, row_id in rows]

    def deliver_plan(self, rows: list[OutboxEntry]) -> None:
        """Send a record's steps in order; stop at a step that did not finish (it is retried next run)."""
        self.deliver_steps([row.id for row in rows])

    def deliver_steps(self, row_ids: Sequence[int]) -> None:
        """`deliver_plan` by the steps' row ids: each step is read afresh before it is sent, so a write waiting in
        the pool's queue holds its ids only (thousands wait there during a first sync), not its rows."""
        for row_id in row_ids:
            current = lookup.get_or_none(OutboxEntry, id=row_id) or OutboxEntry.get_by_id(row_id)
            if current.status == "done" or _step_key(current) in self._fresh_ids:
                continue  # a replay of a finished step is a no-op
            if current.status != "pending" or not self.deliver(current):
                return

    def _step_row(self, row: OutboxEntry, step: int, *, status: str | None = None) -> OutboxEntry | None:
        if row.plan_key is None:
            return None
        query = OutboxEntry.select().where((OutboxEntry.plan_key == row.plan_key) & (OutboxEntry.step == step))
        if status is not None:
            query = query.where(OutboxEntry.status == status)
        return query.order_by(OutboxEntry.id.desc()).first()

    def _earlier_ids(self, row: OutboxEntry) -> dict[str, str] | None:
        """The Stripe ids the step's request takes from earlier steps; None while one of them is not done."""
        ids: dict[str, str] = {}
        for name, step in (row.refs or {}).items():
            fresh = self._fresh_ids.get((row.plan_key, int(step))) if row.plan_key else None
            if fresh is not None:
                ids[name] = fresh
                continue
            earlier = self._step_row(row, int(step), status="done")
            if earlier is None or not earlier.stripe_id:
                return None
            ids[name] = earlier.stripe_id
        return ids

    def _parent_failed(self, row: OutboxEntry) -> bool:
        if row.step == 0:
            return False
        parent = self._step_row(row, row.step - 1)
        return parent is not None and parent.status == "failed"

    def deliver(self, row: OutboxEntry, supersedes: int = 0) -> bool:
        """Send one queued step and settle it; True when it is done. Raises StripeStopped when the run must stop."""
        if self._parent_failed(row):
            self._mark_failed(row, "not sent: an earlier step of this change failed")
            return False
        earlier = self._earlier_ids(row)
        if earlier is None:
            return False  # its parent is not done yet: it waits (the plan is replayed in order next run)
        target = earlier.get("", row.stripe_id)
        params = _resolved(row.params, earlier)
        if row.op == "create" and self.now() - row.created_at > IDEMPOTENCY_WINDOW:
            found = self._find_created(row, params)
            if found is not None:
                self._complete(row, found, replayed=True)
                return True
        try:
            result = call_with_retries(
                lambda: self.gateway.write(row.op, row.stripe_object, target, params, row.idempotency_key),
                policy=self.policy,
                classify=retry_decision,
                sleep=self.sleep,
                on_retry=lambda attempt, exc, delay: log.info(
                    "Stripe write for %s %s failed (%s); retry %d in %.2fs",
                    self.mapping.source_type,
                    row.source_id,
                    exc,
                    attempt,
                    delay,
                ),
            )
        except StripeFailure as failure:
            return self._settle_failure(row, failure, supersedes, params, target)
        crashpoint("after_stripe_ok")
        self._complete(row, result.object, replayed=result.replayed)
        return True

    def _settle_failure(
        self, row: OutboxEntry, failure: StripeFailure, supersedes: int, params: dict[str, Any], target: str | None
    ) -> bool:
        """Settle a step Stripe did not take; True if it turned out done after all (found, or replayed fresh)."""
        if failure.kind == "transient":
            self._note_attempt(row, failure.message)
            raise StripeStopped(
                "unavailable",
                "Stripe could not be reached or kept failing, so the sync stopped; the change is queued and will be "
                f"sent on the next sync. {failure.message}",
            )
        if failure.kind in ("auth", "permission"):
            self._note_attempt(row, failure.message)
            raise StripeStopped(failure.kind, failure.message)
        if failure.kind == "unknown_outcome":
            return self._resolve_unknown(row, failure, supersedes, params)
        if failure.kind == "not_found" and row.op in ("update", "link") and self._is_primary(row):
            return self._object_gone(row, params, supersedes)
        if failure.kind == "invalid" and row.op == "create" and failure.param in self.stream.unique_params:
            # Stripe keeps this parameter unique: the object the create would make exists already (another
            # installation made it a moment ago). It is this step's object, not a failure.
            found = self._find_created(row, params)
            if found is not None:
                self._complete(row, found, replayed=True)
                return True
        if failure.kind == "invalid" and target and is_action(row.stripe_object, row.op):
            # Refused because it was done already (a replay under a new key, or past Stripe's 24 h): done.
            done = self.gateway.action_done(row.stripe_object, row.op, target)
            if done is not None:
                self._complete(row, done, replayed=True)
                return True
        self._fail(row, failure.message)
        return False

    def _resolve_unknown(
        self, row: OutboxEntry, failure: StripeFailure, supersedes: int, params: dict[str, Any]
    ) -> bool:
        """Stripe saved a 500 under this key, so replaying it can never succeed: find out what happened."""
        if row.op == "create":
            found = self._find_created(row, params)
            if found is not None:
                self._complete(row, found, replayed=True)
                return True
            if not self._absence_is_certain(row, params):
                self._note_attempt(row, f"waiting to confirm whether Stripe created this {row.stripe_object}")
                return False
        if supersedes >= MAX_SUPERSEDES:
            self._fail(row, f"Stripe kept failing this write: {failure.message}")
            return False
        return self.deliver(self._supersede(row), supersedes + 1)

    def _find_request(self, row: OutboxEntry, params: dict[str, Any]) -> FindRequest:
        # Stripe's `created` is on Stripe's clock; this PC's may be ahead of it.
        created = int(row.created_at.replace(tzinfo=UTC).timestamp()) - CLOCK_MARGIN_S
        return FindRequest(row.stripe_object, row.source_id, params, self.mapping.cross_ref_key, created)

    def _find_created(self, row: OutboxEntry, params: dict[str, Any]) -> dict[str, Any] | None:
        """The object an earlier attempt of this create made, if any, as the stream knows how to find it."""
        return self.stream.find_created(self.gateway, self._find_request(row, params))

    def _absence_is_certain(self, row: OutboxEntry, params: dict[str, Any]) -> bool:
        age_s = (self.now() - row.created_at).total_seconds()
        return self.stream.absence_certain(self._find_request(row, params), age_s, self.search_settle_s)

    def _is_primary(self, row: OutboxEntry) -> bool:
        return row.role in ("", self.stream.primary_role)

    def _supersede(self, row: OutboxEntry) -> OutboxEntry:
        with database_proxy.atomic():
            row.status = "superseded"
            row.finished_at = self.now()
            row.save()
            fresh = OutboxEntry.create(
                **{
                    name: getattr(row, name)
                    for name in OutboxEntry._meta.fields
                    if name not in ("id", "idempotency_key", "status", "attempts", "last_error", "created_at")
                    and name not in ("finished_at", "stripe_id")
                },
                stripe_id=row.stripe_id,
            )
            fresh.idempotency_key = idempotency_key(
                self.pair, row.stream, row.source_id, _key_op(fresh, self.stream.primary_role), fresh.id
            )
            fresh.save()
            row.params = None
            row.save()
        return fresh

    # --- settling -------------------------------------------------------------------------------------
    def _complete(self, row: OutboxEntry, obj: dict[str, Any], *, replayed: bool) -> None:
        """Stripe took the step: record it with the settler's next batch; later steps may use its id now."""
        self._fresh_ids[_step_key(row)] = str(obj["id"])
        row.params = None  # sent: its request is dropped when it is recorded done, and need not wait in memory
        kept = {"id": obj["id"], **{e["field"]: obj.get(e["field"]) for e in row.effects or [] if e["field"] in obj}}
        self.settler.add(row.source_id, lambda: self._settle_done(row, kept, replayed=replayed))

    def _settle_done(self, row: OutboxEntry, obj: dict[str, Any], *, replayed: bool) -> None:
        stripe_id = str(obj["id"])
        try:
            with database_proxy.atomic():  # a savepoint inside the settler's batch
                self._save_link(row, obj, replayed=replayed)
        except IntegrityError:  # another record is linked to this object: never a crash that blocks the queue
            self._link_taken(row, stripe_id)
        # Forgotten only once committed: till then the write threads' own connections cannot see the done step, and
        # the record's next step takes its id from here.
        self.settler.after_commit(lambda: self._fresh_ids.pop(_step_key(row), None))

    def _save_link(self, row: OutboxEntry, obj: dict[str, Any], *, replayed: bool) -> None:
        stripe_id = str(obj["id"])
        with database_proxy.atomic():
            row.status = "done"
            row.stripe_id = stripe_id
            row.params = None
            row.finished_at = self.now()
            row.attempts += 1
            lookup.save(row, SETTLED_FIELDS)  # the rest of the row is as stored: rewriting it costs CPU for nothing
            if row.role == DETACHED_ROLE:  # not the record's object: its links and decisions stay as they are
                self.recorder.record(
                    row.plan_action or ACTION_OF_OP[row.op], row.source_id, row.display_name, stripe_id, row.notes
                )
                return
            self._apply_effects(row, obj)
            primary = self._is_primary(row)
            if not (primary or row.last_step):
                return
            link = lookup.get_or_none(RecordLink, pair=self.pair, stream=row.stream, source_id=row.source_id)
            if link is None:
                link, _ = RecordLink.get_or_create(
                    pair=self.pair,
                    stream=row.stream,
                    source_id=row.source_id,
                    defaults={"stripe_object": row.stripe_object},
                )
            stored = dict(link.__data__)
            if primary:
                link.stripe_id = stripe_id
            if not row.last_step:
                link.save()
                return
            settled = {
                "stripe_id": link.stripe_id,
                "payload_hash": row.payload_hash,
                "email_hash": row.email_hash,
                "display_name": row.display_name,
                "archived": row.archived,
                "mapping_version": row.mapping_version,  # which fields Stripe now holds from us
            }
            # Only the columns that change: setting an indexed column (the email hash) to the value it holds still
            # rewrites its index entry, on a page of an index in no order.
            changed = [f for f in SETTLED_LINK_FIELDS if f.name in settled and stored.get(f.name) != settled[f.name]]
            for name, value in settled.items():
                setattr(link, name, value)
            link.updated_at = self.now()
            lookup.save(link, [*changed, RecordLink.updated_at])
            self._close_decisions(row)  # carried out
            message = row.notes + ("\n(replayed after an interruption)" if replayed else "")
            action = row.plan_action or ACTION_OF_OP[row.op]
            self.recorder.record(action, row.source_id, row.display_name, link.stripe_id, message.strip())

    def _apply_effects(self, row: OutboxEntry, obj: dict[str, Any]) -> None:
        """Record what a finished step made or changed among the record's objects of other roles."""
        for effect in row.effects or []:
            stripe_id = obj.get(effect["field"])
            if isinstance(stripe_id, dict):  # an expanded object
                stripe_id = stripe_id.get("id")
            if not stripe_id:
                continue
            mine = {"pair": self.pair, "stream": row.stream, "role": effect["role"]}
            if effect.get("current"):
                lookup.update(RoleLink, {"current": False}, **mine, source_id=row.source_id)
            values: dict[str, Any] = {"updated_at": self.now()}
            for name in ("fingerprint", "current", "active"):
                if effect.get(name) is not None:
                    values[name] = effect[name]
            if not lookup.update(RoleLink, values, **mine, stripe_id=str(stripe_id)):
                lookup.insert(
                    RoleLink(
                        **mine,
                        source_id=row.source_id,
                        stripe_object=effect["role"],
                        stripe_id=str(stripe_id),
                        **{name: value for name, value in values.items() if name != "updated_at"},
                    )
                )

    def _fail(self, row: OutboxEntry, message: str) -> None:
        with database_proxy.atomic():
            self._mark_failed(row, message)
            self.recorder.record("failed", row.source_id, row.display_name, row.stripe_id, f"Stripe refused: {message}")

    def _mark_failed(self, row: OutboxEntry, message: str) -> None:
        row.status = "failed"
        row.params = None
        row.last_error = message
        row.finished_at = self.now()
        row.save()
        if row.plan_key is not None:  # the steps after it will not be sent: their change starts again next sync
            OutboxEntry.update(
                status="failed", params=None, last_error="not sent: an earlier step failed", finished_at=self.now()
            ).where(
                (OutboxEntry.plan_key == row.plan_key)
                & (OutboxEntry.step > row.step)
                & (OutboxEntry.status == "pending")
            ).execute()

    def _close_decisions(self, row: OutboxEntry) -> None:
        """A person's decision about this record is settled (carried out, or it led to a failure)."""
        # record_reviews(pair, stream, source_id, "resolved"), asked for every write
        resolved = {"pair": self.pair, "stream": row.stream, "source_id": row.source_id, "status": "resolved"}
        lookup.update(ReviewItem, {"status": "done"}, **resolved)

    def _object_gone(self, row: OutboxEntry, params: dict[str, Any], supersedes: int) -> bool:
        """The Stripe object was deleted. Another installation removing the twin of a race: carry on with the object
        that stayed. Linked before, or chosen by a person: a person decides whether to re-create it, never us
        silently. Only matched automatically (by email or cross-reference, from an index listed before the
        deletion): nobody chose it, so it is forgotten and the next sync decides again."""
        survivor = self._surviving_twin(row, params)
        if survivor is not None and supersedes < MAX_SUPERSEDES:
            with database_proxy.atomic():
                RecordLink.update(stripe_id=survivor, payload_hash=None).where(
                    (RecordLink.pair == self.pair)
                    & (RecordLink.stream == row.stream)
                    & (RecordLink.source_id == row.source_id)
                ).execute()
                fresh = self._supersede(row)
                fresh.stripe_id = survivor
                fresh.save()
            return self.deliver(fresh, supersedes + 1)
        if row.op == "link" and not self._decision_for(row):
            detail = (
                f"The Stripe {row.stripe_object} {row.stripe_id} it matched was deleted in Stripe; the next sync "
                "decides again."
            )
            with database_proxy.atomic():
                self._mark_failed(row, detail)
                StripeIndexEntry.delete().where(
                    (StripeIndexEntry.pair == self.pair)
                    & (StripeIndexEntry.stripe_object == row.stripe_object)
                    & (StripeIndexEntry.stripe_id == row.stripe_id)
                ).execute()
                revisit_later(self.pair, row.stream, row.source_id, detail)
                self._recheck_links_to(row.stripe_object, row.stripe_id)
                self.recorder.record("skipped", row.source_id, row.display_name, row.stripe_id, detail)
            return False
        detail = f"The Stripe {row.stripe_object} {row.stripe_id} linked to this record no longer exists."
        self._back_to_review(row, "stripe_object_deleted", detail)
        return False

    def _recheck_links_to(self, stripe_object: str, stripe_id: str | None) -> None:
        """Records of other streams (or sources) linked to an object found deleted: the person's customer this
        record was joining, which another installation removed as a race's twin. Each is read again and written
        next run, which finds the twin that stayed (or asks a person); until then they would offer the deleted
        customer to this record on every run."""
        if stripe_id is None:
            return
        rows = RecordLink.select(RecordLink.pair, RecordLink.stream, RecordLink.source_id).where(
            (RecordLink.stripe_object == stripe_object)
            & (RecordLink.stripe_id == stripe_id)
            & RecordLink.pair.in_(same_account(self.pair))
        )
        for link in list(rows):
            RecordLink.update(payload_hash=None).where(
                (RecordLink.pair == link.pair)
                & (RecordLink.stream == link.stream)
                & (RecordLink.source_id == link.source_id)
            ).execute()
            revisit_later(link.pair, link.stream, link.source_id, "its Stripe object was deleted in Stripe")

    def _surviving_twin(self, row: OutboxEntry, params: dict[str, Any]) -> str | None:
        """Another object naming this record, made since these accounts were first synced here (a race's twin)."""
        since = int(self.pair.created_at.replace(tzinfo=UTC).timestamp()) - CLOCK_MARGIN_S
        request = FindRequest(row.stripe_object, row.source_id, params, self.mapping.cross_ref_key, since)
        found = self.stream.find_created(self.gateway, request)
        if found is None or found.get("id") == row.stripe_id or found.get("created", 0) < since:
            return None
        return str(found["id"])

    def _decision_for(self, row: OutboxEntry) -> bool:
        """Whether a person's decision (a resolved review) led to this write."""
        return ReviewItem.select().where(record_reviews(self.pair, row.stream, row.source_id, "resolved")).exists()

    def _link_taken(self, row: OutboxEntry, stripe_id: str) -> None:
        """Stripe took the write, but its object is linked to another record here (two decisions chose one
        customer). That record's data must go back to it: forget its pushed hash so the next sync re-sends it."""
        owner = RecordLink.get_or_none(
            (RecordLink.pair == self.pair) & (RecordLink.stream == row.stream) & (RecordLink.stripe_id == stripe_id)
        )
        name = (owner.display_name or owner.source_id) if owner is not None else "another record"
        detail = f"Stripe {row.stripe_object} {stripe_id} is already linked to {name}; choose another for this record."
        with database_proxy.atomic():
            if owner is not None:
                RecordLink.update(payload_hash=None).where(RecordLink.id == owner.id).execute()
            self._back_to_review(row, "link_taken", detail)

    def _back_to_review(self, row: OutboxEntry, reason: str, detail: str) -> None:
        """Fail the row and ask a person. A decision already taken for the record is closed: it led here, so
        reusing it would repeat the same write every run with nobody able to change it."""
        with database_proxy.atomic():
            self._mark_failed(row, detail)
            self._close_decisions(row)
            open_review(self.pair, row.stream, row.source_id, row.display_name, reason, detail, [])
            self.recorder.record("review", row.source_id, row.display_name, row.stripe_id, detail)

    def _note_attempt(self, row: OutboxEntry, message: str) -> None:
        OutboxEntry.update(attempts=OutboxEntry.attempts + 1, last_error=message[:2000]).where(
            OutboxEntry.id == row.id
        ).execute()


def record_reviews(pair: AccountPair, stream: str, source_id: str, *statuses: str) -> Any:
    """The condition selecting one source record's review items in the given statuses."""
    return (
        (ReviewItem.pair == pair)
        & (ReviewItem.stream == stream)
        & (ReviewItem.source_id == source_id)
        & ReviewItem.status.in_(statuses)
    )


def revisit_later(pair: AccountPair, stream: str, source_id: str, reason: str) -> None:
    """Read this source record again by id at the start of the next run (its change must not be lost)."""
    RetryRecord.insert(pair=pair, stream=stream, source_id=source_id, reason=reason, created_at=utcnow()).on_conflict(
        conflict_target=[RetryRecord.pair, RetryRecord.stream, RetryRecord.source_id],
        update={RetryRecord.created_at: utcnow(), RetryRecord.reason: reason},
    ).execute()


def open_review(
    pair: AccountPair,
    stream: str,
    source_id: str,
    display_name: str,
    reason: str,
    detail: str,
    candidates: list[str],
) -> ReviewItem:
    existing = ReviewItem.get_or_none(record_reviews(pair, stream, source_id, "open", "resolved"))
    if existing is not None:
        return existing
    return ReviewItem.create(
        pair=pair,
        stream=stream,
        source_id=source_id,
        display_name=display_name,
        reason=reason,
        detail=detail,
        candidates=candidates,
    )
