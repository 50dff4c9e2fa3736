"""Run a reconciliation: read both sides of each stream in full, page by page, ask the stream's comparison and
the shared rules (clinicsync/reconcile/) about every record, and store the report and its findings.

Memory stays flat however large the clinic: Stripe's objects go page by page into a temporary SQLite file
(private to this run, deleted when it ends), source records are judged a page at a time against it, and findings
are stored in batches as they are made. Both sides are read through the same clients, with the same rate budgets,
as a sync; and under the profile's lock, so a reconciliation never overlaps a sync of the same profile.

The two sides are read at the same time (Stripe in a thread of its own, each within its own budget): the source's
records read before Stripe's side is complete wait in a second temporary file, and are judged once it is; later
ones are judged as they come, while the source's rate budget would have the reader wait anyway.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from clinicsync.mapping.defaults import DEFAULT_MAPPINGS
from clinicsync.mapping.preview import stripe_value
from clinicsync.mapping.spec import StreamMapping
from clinicsync.paths import AppPaths
from clinicsync.profile_lock import ProfileLock
from clinicsync.reconcile.compare import Comparison, Owned, StripeScope
from clinicsync.reconcile.findings import Counts, Finding, FindingStatus, FindingType, ReportOutcome
from clinicsync.reconcile.judge import Decision, SourceSide, StripeSide, judge_match_group, judge_record
from clinicsync.retry import Cancelled, CancelToken, stopped_by
from clinicsync.secrets import SecretStore
from clinicsync.sources.errors import SourceError
from clinicsync.store import mappings as mapping_store
from clinicsync.store import reconciliation as report_store
from clinicsync.store.models import AccountPair, OutboxEntry, RecordLink, ReviewItem, RoleLink
from clinicsync.store.settings import Settings
from clinicsync.streams import STREAMS, Record, Stream, StreamNotReady, dependency_order, identity
from clinicsync.streams.base import records_of
from clinicsync.stripe_gateway import StripeGateway
from clinicsync.sync.engine import PreparedStream, Progress, prepare_stream
from clinicsync.sync.matching import PERSON_OBJECTS, match_hash
from clinicsync.sync.service import (
    CONNECTED_SOURCES,
    SOURCES,
    ConfigProblem,
    connected_sources,
    enabled_streams,
    failure_of,
    run_options,
    stripe_gateway,
)

log = logging.getLogger(__name__)

BATCH = 200  # source records judged together: one query per side per batch
SCRATCH_CACHE_KIB = 4096  # the temporary file's page cache; the rest stays on disk


@dataclass
class StreamReport:
    stream: str
    source_records: int = 0
    stripe_objects: int = 0
    failure_kind: str | None = None  # failure_of's kinds: config, auth, unreachable, error, storage, internal
    message: str = ""


@dataclass
class ReconcileResult:
    report_id: int
    outcome: ReportOutcome
    counts: Counts
    streams: list[StreamReport] = field(default_factory=list)
    message: str = ""

    @property
    def failed(self) -> list[StreamReport]:
        return [stream for stream in self.streams if stream.failure_kind]


def reconcilable(
    settings: Settings, streams: Sequence[str] | None = None, connected: Sequence[str] | None = None
) -> list[str]:
    """The streams to compare: those asked for, else every enabled one of the connected sources (`connected`;
    default: Cliniko's) that declares a comparison."""
    unknown = [name for name in streams or () if name not in STREAMS]
    if unknown:
        raise ConfigProblem(f"Unknown stream {', '.join(unknown)}; known streams: {', '.join(STREAMS)}")
    names = list(streams) if streams else enabled_streams(settings, connected or CONNECTED_SOURCES)
    not_compared = [name for name in names if STREAMS[name].compare is None]
    if streams and not_compared:
        raise ConfigProblem(f"{', '.join(not_compared)} cannot be reconciled yet.")
    return dependency_order(STREAMS, [name for name in names if name not in not_compared])


def run_reconcile(
    paths: AppPaths,
    settings: Settings,
    secrets: SecretStore,
    *,
    streams: Sequence[str] | None = None,
    trigger: str = "cli",
    cancel: CancelToken | None = None,
    progress: Progress | None = None,
) -> ReconcileResult:
    """Compare the given streams (default: every enabled one) and store the report. Holds the profile's lock
    (raises SyncLocked while a sync runs). A stream that fails is named in the result; a failure every stream would
    meet (a key refused, a service unreachable, a full disk) or a cancellation stops the report and is raised."""
    cancel = cancel or CancelToken()
    names = reconcilable(settings, streams, connected_sources(secrets))
    with ProfileLock(paths.lock_file):
        clients: dict[str, Any] = {}
        try:
            # Each source's streams are compared with its own client and pair of accounts (as a sync does); the
            # report is filed under the first source's pair (Cliniko's when it is compared).
            systems = sorted({STREAMS[name].source_system for name in names}, key=lambda s: s != "cliniko")
            for system in systems:
                clients[system] = SOURCES[system].client(settings, secrets, cancel)
            gateway = stripe_gateway(settings, secrets, cancel)
            pairs = {system: SOURCES[system].resolve_pair(clients[system], gateway) for system in systems}
            report = report_store.start_report(pairs[systems[0]], names, trigger=trigger)
            counts = Counts()
            result = ReconcileResult(report.id, ReportOutcome.RUNNING, counts)
            try:
                for name in names:
                    stream_report = StreamReport(name)
                    result.streams.append(stream_report)
                    system = STREAMS[name].source_system
                    try:
                        _StreamReconciler(
                            STREAMS[name],
                            pairs[system],
                            clients[system],
                            gateway,
                            settings,
                            report,
                            counts,
                            cancel,
                            progress,
                        ).run(stream_report)
                    except Exception as exc:
                        if isinstance(exc, StreamNotReady):
                            exc = ConfigProblem(str(exc))
                        failure = failure_of(exc)
                        if failure is None or failure[0] in _STOPS_EVERYTHING:
                            raise exc from None
                        stream_report.failure_kind, stream_report.message = failure
                        log.warning("reconciliation of %s stopped: %s", name, failure[1])
            except BaseException as exc:
                cancelled = isinstance(exc, Cancelled)
                outcome = ReportOutcome.CANCELLED if cancelled else ReportOutcome.FAILED
                message = "Cancelled." if cancelled else (failure_of(exc) or ("", type(exc).__name__))[1]
                _finish(report, result, outcome, message)
                raise
            if result.failed:
                message = "; ".join(f"{s.stream}: {s.message}" for s in result.failed)
                _finish(report, result, ReportOutcome.FAILED, message)
            else:
                _finish(report, result, ReportOutcome.FINDINGS if counts.total else ReportOutcome.CLEAN, "")
            return result
        finally:
            for client in clients.values():
                client.close()


# A failure every later stream would meet too (failure_of's kinds): the report stops there, as a sync does.
_STOPS_EVERYTHING = frozenset({"auth", "unreachable", "storage", "cancelled", "locked"})


def _finish(report: Any, result: ReconcileResult, outcome: ReportOutcome, message: str) -> None:
    result.outcome, result.message = outcome, message
    compared = {s.stream: {"source": s.source_records, "stripe": s.stripe_objects} for s in result.streams}
    try:
        report_store.finish_report(report, outcome, result.counts, compared, message)
    except Exception:  # the report's own row may not fit on a full disk either; the cause is what matters
        log.exception("could not record the end of reconciliation report %s", report.id)


# --- the temporary store of one stream's Stripe side ----------------------------------------------------------
class Scratch:
    """Stripe objects of one stream, in a private temporary SQLite file that SQLite deletes when it is closed.

    Keeps per object: its id, the cross-reference it carries, the hash of its match key, its `created`, whether a
    local link points to it, and the object itself (JSON) for the comparison; related objects (a product's prices)
    by parent id; and which source ids have been seen.
    """

    def __init__(self) -> None:
        # "": a temporary file, removed on close. Filled by the Stripe thread, then read by the judging one (never
        # both at once).
        self.db = sqlite3.connect("", isolation_level=None, check_same_thread=False)
        self.db.execute(f"PRAGMA cache_size = -{SCRATCH_CACHE_KIB}")
        self.db.executescript(
            """
            CREATE TABLE obj (id TEXT PRIMARY KEY, ref TEXT, match TEXT, created INTEGER, linked INTEGER DEFAULT 0,
                              other INTEGER DEFAULT 0, body TEXT NOT NULL);
            CREATE INDEX obj_ref ON obj (ref);
            CREATE INDEX obj_match ON obj (match) WHERE ref IS NULL;
            CREATE TABLE rel (id TEXT PRIMARY KEY, parent TEXT, body TEXT NOT NULL);
            CREATE INDEX rel_parent ON rel (parent);
            CREATE TABLE seen (source_id TEXT PRIMARY KEY);
            """
        )

    def close(self) -> None:
        self.db.close()

    def load(self, objects: Iterable[Mapping[str, Any]], row: Callable[[Mapping[str, Any]], tuple[Any, ...]]) -> int:
        count = 0
        for batch in _chunks(objects, 500):
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO obj VALUES (?, ?, ?, ?, 0, ?, ?)", [row(obj) for obj in batch])
            self.db.execute("COMMIT")
            count += len(batch)
        return count

    def load_related(self, objects: Iterable[Mapping[str, Any]], parent_field: str) -> int:
        count = 0
        for batch in _chunks(objects, 500):
            rows = [(str(obj["id"]), _id_of(obj.get(parent_field)), _dump(obj)) for obj in batch]
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO rel VALUES (?, ?, ?)", rows)
            self.db.execute("COMMIT")
            count += len(batch)
        return count

    def mark_linked(self, stripe_ids: Iterable[str]) -> None:
        for batch in _chunks(stripe_ids, 500):
            marks = ",".join("?" * len(batch))
            self.db.execute(f"UPDATE obj SET linked = 1 WHERE id IN ({marks})", batch)

    def first_time(self, source_id: str) -> bool:
        """Record that the source has this record; False if it was seen already (read twice in one pass)."""
        return self.db.execute("INSERT OR IGNORE INTO seen VALUES (?)", (source_id,)).rowcount == 1

    def objects_for(self, refs: Sequence[str], ids: Sequence[str]) -> list[tuple[str | None, dict[str, Any]]]:
        """(cross-reference, object) for objects naming one of `refs` or having one of `ids`."""
        if not refs and not ids:
            return []
        rows = self.db.execute(
            f"SELECT ref, body FROM obj WHERE ref IN ({','.join('?' * len(refs)) or 'NULL'}) "
            f"OR id IN ({','.join('?' * len(ids)) or 'NULL'})",
            [*refs, *ids],
        )
        return [(ref, json.loads(body)) for ref, body in rows]

    def related_for(self, parents: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {}
        if not parents:
            return found
        rows = self.db.execute(
            f"SELECT parent, body FROM rel WHERE parent IN ({','.join('?' * len(parents))})", parents
        )
        for parent, body in rows:
            found.setdefault(parent, []).append(json.loads(body))
        return found

    def candidates(self, match: str | None) -> tuple[str, ...]:
        """Objects without a cross-reference and without a link that share this match key."""
        if match is None:
            return ()
        rows = self.db.execute(
            "SELECT id FROM obj WHERE ref IS NULL AND match = ? AND linked = 0 ORDER BY created, id", (match,)
        )
        return tuple(row[0] for row in rows)

    def unseen_references(self) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        """Groups of objects naming a source id the source did not return, one group at a time."""
        rows = self.db.execute(
            "SELECT ref, body FROM obj WHERE ref IS NOT NULL AND ref NOT IN (SELECT source_id FROM seen) ORDER BY ref"
        )
        yield from _grouped(rows)

    def match_groups(self) -> Iterator[list[dict[str, Any]]]:
        """Groups of unreferenced, unlinked objects sharing a match key, one group at a time; an object another
        stream's cross-reference names (a Cal.com attendee's customer, to the patients stream) is that stream's."""
        rows = self.db.execute(
            "SELECT match, body FROM obj WHERE ref IS NULL AND linked = 0 AND other = 0 AND match IN "
            "(SELECT match FROM obj WHERE ref IS NULL AND linked = 0 AND other = 0 AND match IS NOT NULL "
            "GROUP BY match HAVING COUNT(*) > 1) ORDER BY match"
        )
        for _, objects in _grouped(rows):
            yield objects


class Spool:
    """Source records read while Stripe's side is still being read, in a private temporary SQLite file (deleted
    when closed), in the order read."""

    def __init__(self) -> None:
        self.db = sqlite3.connect("", isolation_level=None)
        self.db.execute(f"PRAGMA cache_size = -{SCRATCH_CACHE_KIB // 4}")
        self.db.execute("CREATE TABLE rec (n INTEGER PRIMARY KEY, body TEXT NOT NULL)")

    def close(self) -> None:
        self.db.close()

    def add(self, records: Sequence[Record]) -> None:
        self.db.execute("BEGIN")
        self.db.executemany("INSERT INTO rec (body) VALUES (?)", [(_dump(record),) for record in records])
        self.db.execute("COMMIT")

    def batches(self, size: int) -> Iterator[list[dict[str, Any]]]:
        rows = self.db.execute("SELECT body FROM rec ORDER BY n")
        while batch := rows.fetchmany(size):
            yield [json.loads(body) for (body,) in batch]


class _StripeStopped(Exception):
    """The source side failed or was cancelled: the Stripe thread stops reading."""


def _grouped(rows: Iterable[tuple[str, str]]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    key: str | None = None
    group: list[dict[str, Any]] = []
    for value, body in rows:
        if value != key and group:
            yield key, group  # type: ignore[misc]
            group = []
        key = value
        group.append(json.loads(body))
    if group:
        yield key, group  # type: ignore[misc]


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _dump(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=_decimal_text)


def _decimal_text(value: Any) -> str:
    """The SDK gives decimal fields (a price's unit_amount_decimal) as Decimal: kept exactly, as Stripe sends them."""
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _id_of(value: Any) -> str | None:
    if isinstance(value, Mapping):  # an expanded object
        value = value.get("id")
    return str(value) if value else None


# --- one stream ------------------------------------------------------------------------------------------------
class _StreamReconciler:
    def __init__(
        self,
        stream: Stream,
        pair: AccountPair,
        source: Any,
        gateway: StripeGateway,
        settings: Settings,
        report: Any,
        counts: Counts,
        cancel: CancelToken,
        progress: Progress | None,
    ) -> None:
        assert stream.compare is not None
        self.stream = stream
        self.comparison: Comparison = stream.compare
        self.pair = pair
        self.source = source
        self.gateway = gateway
        self.settings = settings
        self.report = report
        self.counts = counts
        self.cancel = cancel
        self._progress = progress or (lambda *_: None)
        self.mapping: StreamMapping = mapping_store.load_for_pair(stream.name, livemode=pair.stripe_livemode)[0]
        self.intents: dict[str, tuple[str, str]] = {}
        self.decisions: dict[str, str] = {}
        self.pending: list[Finding] = []
        self.stripe_scope = StripeScope(None, None)
        # The Stripe objects a person may choose from in Review, by source id: what a stream that only links (payments)
        # offers to link a record to.
        self.review_candidates: dict[str, tuple[str, ...]] = {}

    def run(self, stream_report: StreamReport) -> None:
        options = run_options(self.settings, trigger="reconcile", dry_run=True)
        prepared = prepare_stream(self.stream, self.mapping, self.source, options)
        if not self.report.time_zone:  # the clinic's zone, for showing the report's times
            self.report.time_zone = self.mapping.time_zone or self._clinic_zone() or prepared.context.time_zone
            self.report.save()
        self.intents = report_store.intents(self.pair, self.stream.name)
        self.decisions = self._decisions()
        since = prepared.scope.since
        self.stripe_scope = StripeScope(int(since.timestamp()) if since else None, prepared.settings)
        scratch, spool = Scratch(), Spool()
        try:
            stream_report.stripe_objects, stream_report.source_records = self._read_and_judge(scratch, spool, prepared)
            self._progress(self.stream.name, stream_report.source_records, None, "Looking for orphans and duplicates")
            self._judge_unseen(scratch)
            for objects in scratch.match_groups() if self.comparison.duplicate_match_key else ():
                self.cancel.raise_if_cancelled()
                self._found(judge_match_group(self.comparison, self.mapping, objects))
            self._flush()
        finally:
            scratch.close()
            spool.close()

    def _read_and_judge(self, scratch: Scratch, spool: Spool, prepared: PreparedStream) -> tuple[int, int]:
        """Stripe's side into `scratch` (in a thread) while the source is read: the source's records wait in `spool`
        until Stripe's side is complete, and are judged then; the rest a page at a time as they come (while the
        source's rate budget would have the reader wait anyway). A failure of either side stops both. Returns how
        many Stripe objects and source records were read."""
        outcome: dict[str, Any] = {}
        stop = threading.Event()
        halt = CancelToken()  # cancelled with `stop`: ends a pause the Stripe thread is in (a 429's, a retry's)

        def read_stripe() -> None:
            try:
                with stopped_by(halt):
                    outcome["count"] = self._read_stripe(scratch, stop)
            except BaseException as exc:  # handed to the reconciling thread, which raises it
                cut_short = isinstance(exc, Cancelled) and halt.cancelled and not self.cancel.cancelled
                outcome["error"] = _StripeStopped() if cut_short else exc

        thread = threading.Thread(target=read_stripe, name=f"reconcile-stripe-{self.stream.name}", daemon=True)
        thread.start()
        try:
            judged = self._read_source(scratch, spool, prepared, thread, outcome)
        except BaseException:
            stop.set()
            halt.cancel()
            thread.join()
            if isinstance(outcome.get("error"), Exception) and not isinstance(outcome["error"], _StripeStopped):
                raise outcome["error"] from None  # Stripe failed first: the source stopped because of it
            raise
        return int(outcome["count"]), judged

    def _stripe_ready(self, thread: threading.Thread, outcome: Mapping[str, Any], scratch: Scratch) -> None:
        """Wait for Stripe's side (raising its failure), then mark the objects the local links point to."""
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        linked = (
            row.stripe_id
            for row in RecordLink.select(RecordLink.stripe_id)
            .where(self._links() & RecordLink.stripe_id.is_null(False))
            .iterator()
        )
        scratch.mark_linked(linked)

    def _clinic_zone(self) -> str | None:
        try:
            return self.stream.time_zone(self.source)
        except SourceError as exc:  # only the report's clock depends on it
            log.info("the clinic's time zone was not read (%s); the report shows the default", exc)
            return None

    # --- Stripe ---------------------------------------------------------------------------------------------
    def _read_stripe(self, scratch: Scratch, stop: threading.Event) -> int:
        """Runs in a thread of its own: touches only Stripe and `scratch` (no progress, no database)."""
        kind = self.mapping.stripe_object
        ref_key = self.mapping.cross_ref_key
        has_match = any(rule.role == "match_key" for rule in self.mapping.rules)
        other_keys = _other_cross_refs(self.stream)

        def index_row(obj: Mapping[str, Any]) -> tuple[Any, ...]:
            self.cancel.raise_if_cancelled()
            if stop.is_set():
                raise _StripeStopped()
            metadata = obj.get("metadata") or {}
            ref = metadata.get(ref_key) or None
            value = stripe_value(obj, self.mapping.match_target) if has_match else None
            match = match_hash(self.pair, value) if isinstance(value, str) else None
            other = int(any(metadata.get(key) for key in other_keys))
            return (str(obj["id"]), ref, match, obj.get("created"), other, _dump(obj))

        listing = self.comparison.listing
        objects = listing(self.gateway, self.stripe_scope) if listing else self.gateway.iter_objects(kind)
        count = scratch.load(objects, index_row)
        for related in self.comparison.related:
            scratch.load_related(
                _checked(self.gateway.iter_objects(related.stripe_object), self.cancel, stop), related.parent_field
            )
        return count

    # --- the source -----------------------------------------------------------------------------------------
    def _read_source(
        self,
        scratch: Scratch,
        spool: Spool,
        prepared: PreparedStream,
        stripe: threading.Thread,
        outcome: Mapping[str, Any],
    ) -> int:
        """Every source record, a page at a time: into the spool while Stripe is being read, judged once it is."""
        kind = self.mapping.stripe_object
        self._progress(self.stream.name, 0, None, f"Reading Stripe {kind}s and {self.mapping.source_type} records")
        read = judged = 0
        ready = False
        # A stream with its own, windowed Stripe listing (payments) is read within the sync's scope on both sides
        # (invoices changed since the scope's date), not all time; it reports no orphans (streams' `reports`).
        cursor = prepared.scope.first_cursor(None) if self.comparison.listing else None
        for batch in _chunks(records_of(self.stream.read_changed(self.source, cursor)), BATCH):
            self.cancel.raise_if_cancelled()
            if "error" in outcome:
                raise _StripeStopped()
            read += len(batch)
            if not ready and not stripe.is_alive():
                ready = True
                self._stripe_ready(stripe, outcome, scratch)
                judged += self._judge_spooled(scratch, spool, prepared)
            if ready:
                judged += self._judge_records(scratch, prepared, batch)
            else:
                spool.add(batch)
            self._progress(self.stream.name, read, getattr(self.source, "last_total_entries", None), "")
        if not ready:
            self._stripe_ready(stripe, outcome, scratch)
            judged += self._judge_spooled(scratch, spool, prepared)
        return judged

    def _judge_spooled(self, scratch: Scratch, spool: Spool, prepared: PreparedStream) -> int:
        judged = 0
        for batch in spool.batches(BATCH):
            self.cancel.raise_if_cancelled()
            judged += self._judge_records(scratch, prepared, batch)
        return judged

    def _judge_records(self, scratch: Scratch, prepared: PreparedStream, records: Sequence[Record]) -> int:
        """Judge a batch (a record listed twice, once); returns how many were new."""
        fresh = [record for record in records if scratch.first_time(str(record.get("id") or ""))]
        self._judge_batch(scratch, prepared, fresh)
        prepared.scope.left_out.clear()  # ids only, but a full read must not grow with the clinic
        return len(fresh)

    def _judge_batch(self, scratch: Scratch, prepared: PreparedStream, records: list[Record]) -> None:
        ids = [str(record.get("id") or "") for record in records]
        links = {row.source_id: row for row in RecordLink.select().where(self._links() & RecordLink.source_id.in_(ids))}
        owned = self._owned(ids) if self.comparison.related else {}
        linked_ids = [link.stripe_id for link in links.values() if link.stripe_id]
        by_ref: dict[str, list[dict[str, Any]]] = {}
        by_id: dict[str, dict[str, Any]] = {}
        for ref, obj in scratch.objects_for(ids, linked_ids):
            by_id[str(obj["id"])] = obj
            if ref:
                by_ref.setdefault(ref, []).append(obj)
        if self.comparison.fetch is not None:  # linked objects made outside the stream's listing, read by id
            for stripe_id in (i for i in linked_ids if i not in by_id):
                self.cancel.raise_if_cancelled()
                fetched = self.comparison.fetch(self.gateway, stripe_id)
                if fetched is not None:
                    by_id[stripe_id] = dict(fetched)
        related = scratch.related_for(list(by_id)) if self.comparison.related else {}
        shared = self._identity_elsewhere(list(by_id))
        for record, sid in zip(records, ids, strict=True):
            link = links.get(sid)
            in_scope = prepared.scope.admits(record)
            mapped = prepared.map(record)
            facts = self.comparison.facts(record, prepared.settings) if self.comparison.facts else {}
            objects = {str(obj["id"]): obj for obj in by_ref.get(sid, [])}
            if link is not None and link.stripe_id in by_id:
                objects[link.stripe_id] = by_id[link.stripe_id]
            if self.comparison.unmatched is not None:
                candidates = self.review_candidates.get(sid, ())
            else:
                candidates = () if objects else scratch.candidates(match_hash(self.pair, mapped.match_value))
            side = SourceSide(
                source_id=sid,
                mapped=mapped,
                in_scope=in_scope,
                linked_id=link.stripe_id if link is not None else None,
                synced_hash=link.payload_hash if link is not None else None,
                decision=self.decisions.get(sid, Decision.NONE),
                owned=owned.get(sid, ()),
                facts=facts,
            )
            stripe = StripeSide(
                tuple(objects.values()),
                {oid: tuple(related.get(oid, ())) for oid in objects},
                candidates,
                identity_elsewhere=shared & objects.keys(),
            )
            self._found(judge_record(self.comparison, self.mapping, side, stripe))

    def _judge_unseen(self, scratch: Scratch) -> None:
        """Objects naming records the source does not have (deleted, or from another account)."""
        for group in _chunks(scratch.unseen_references(), BATCH):
            self.cancel.raise_if_cancelled()
            ids = [source_id for source_id, _ in group]
            links = {
                row.source_id: row.stripe_id
                for row in RecordLink.select().where(self._links() & RecordLink.source_id.in_(ids))
            }
            for source_id, objects in group:
                if self._outside_window(source_id):
                    continue
                side = SourceSide(source_id=source_id, mapped=None, linked_id=links.get(source_id))
                self._found(judge_record(self.comparison, self.mapping, side, StripeSide(tuple(objects))))

    def _outside_window(self, source_id: str) -> bool:
        """A stream read within the sync's window (its own Stripe listing) did not see every record: one its objects
        name is read by id before they are called orphans (it may only be older than the window)."""
        if self.comparison.listing is None or FindingType.ORPHANED_IN_STRIPE not in self.comparison.reports:
            return False
        self.cancel.raise_if_cancelled()
        return self.stream.read_one(self.source, source_id) is not None

    # --- what the local database says ----------------------------------------------------------------------
    def _links(self) -> Any:
        return (RecordLink.pair == self.pair) & (RecordLink.stream == self.stream.name)

    def _decisions(self) -> dict[str, str]:
        """Records a person must decide about or chose to ignore, and those with a write waiting to be sent."""
        decisions = {}
        reviews = ReviewItem.select(ReviewItem.source_id, ReviewItem.status, ReviewItem.candidates).where(
            (ReviewItem.pair == self.pair)
            & (ReviewItem.stream == self.stream.name)
            & ReviewItem.status.in_(("open", "ignored"))
        )
        for row in reviews.iterator():
            decisions[row.source_id] = Decision.REVIEW if row.status == "open" else Decision.IGNORED
            if row.status == "open" and row.candidates:
                self.review_candidates[row.source_id] = tuple(str(c) for c in row.candidates)
        queued = OutboxEntry.select(OutboxEntry.source_id).where(
            (OutboxEntry.pair == self.pair)
            & (OutboxEntry.stream == self.stream.name)
            & (OutboxEntry.status == "pending")
        )
        for row in queued.iterator():
            decisions[row.source_id] = Decision.QUEUED
        return decisions

    def _identity_elsewhere(self, stripe_ids: Sequence[str]) -> frozenset[str]:
        """The people's objects among `stripe_ids` whose details another source owns (streams/identity.py): this
        stream's source is not the primary one, and a record of the primary source is linked to them (in the same
        Stripe account and mode). Only this stream's metadata is compared on those."""
        primary = self.settings.get(identity.PRIMARY_SOURCE_SETTING) or identity.DEFAULT_PRIMARY_SOURCE
        kind = self.mapping.stripe_object
        if not stripe_ids or kind not in PERSON_OBJECTS or self.stream.source_system == primary:
            return frozenset()
        primary_pairs = AccountPair.select(AccountPair.id).where(
            (AccountPair.source_system == primary)
            & (AccountPair.stripe_account == self.pair.stripe_account)
            & (AccountPair.stripe_livemode == self.pair.stripe_livemode)
        )
        rows = RecordLink.select(RecordLink.stripe_id).where(
            RecordLink.pair.in_(primary_pairs)
            & (RecordLink.stripe_object == kind)
            & RecordLink.stripe_id.in_(stripe_ids)
        )
        return frozenset(row.stripe_id for row in rows)

    def _owned(self, ids: Sequence[str]) -> dict[str, tuple[Owned, ...]]:
        owned: dict[str, list[Owned]] = {}
        rows = RoleLink.select().where(
            (RoleLink.pair == self.pair) & (RoleLink.stream == self.stream.name) & RoleLink.source_id.in_(list(ids))
        )
        for row in rows:
            owned.setdefault(row.source_id, []).append(Owned(row.role, row.stripe_id, row.current, row.active))
        return {source_id: tuple(items) for source_id, items in owned.items()}

    # --- findings -------------------------------------------------------------------------------------------
    def _found(self, findings: Iterable[Finding]) -> None:
        for finding in findings:
            intent = self.intents.get(finding.key)
            if intent is not None and intent[0] == finding.fingerprint:
                finding = replace(finding, status=FindingStatus.ACCEPTED, note=intent[1])
            self.counts.add(finding)
            self.pending.append(finding)
        if len(self.pending) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            report_store.add_findings(self.report, self.pending)
            self.pending = []


def _other_cross_refs(stream: Stream) -> tuple[str, ...]:
    """The cross-reference keys of the other streams that write the same kind of Stripe object."""
    return tuple(
        mapping.cross_ref_key
        for mapping in DEFAULT_MAPPINGS.values()
        if mapping.stripe_object == stream.stripe_object and mapping.stream != stream.name
    )


def _checked(
    objects: Iterable[Mapping[str, Any]], cancel: CancelToken, stop: threading.Event
) -> Iterator[Mapping[str, Any]]:
    for obj in objects:
        cancel.raise_if_cancelled()
        if stop.is_set():
            raise _StripeStopped()
        yield obj
