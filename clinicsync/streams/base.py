"""What a stream is: a declaration of what it reads, how its records match Stripe objects, and the Stripe writes
that make Stripe agree with one record. The engine (clinicsync/sync/) runs any stream declared this way.

Plain, Qt-free, database-free: a stream module says *what*; the engine owns cursors, paging, the outbox, retries,
history, dry runs, progress and cancellation.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from clinicsync.mapping.apply import MappedRecord
from clinicsync.readahead import ReadAhead

if TYPE_CHECKING:
    from clinicsync.reconcile.compare import Comparison

Record = Mapping[str, Any]


class ListingMark:
    """Not a record: a point in a stream's `read_changed` listing that says something about the listing itself.
    Readers that want only records skip it (`records_of`)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"ListingMark({self.name!r})"


# Every record the stream's matcher could be offered this run has been listed (e.g. the invoices' live pass has
# ended: the archived and deleted passes after it bring none): decisions that waited for every candidate are made
# now, and their writes go out while the rest is read. A stream whose listing never says so is decided at its end.
CANDIDATES_LISTED = ListingMark("candidates listed")


class ListedBelow(ListingMark):
    """Every record the stream's matcher could be offered whose value in the listing's order (e.g. an invoice's
    issue date, for a listing sorted by it) is below `value` has been listed: decisions that waited only for
    those can be made now (the matcher's `listed_below`), and their writes go out while the rest is read."""

    def __init__(self, value: Any) -> None:
        super().__init__(f"listed below {value}")
        self.value = value


def records_of(listing: Iterable[Record | ListingMark]) -> Iterator[Record]:
    """The records of a `read_changed` listing, without its marks."""
    return (record for record in listing if not isinstance(record, ListingMark))


class StreamNotReady(Exception):
    """The stream cannot run with its current settings (e.g. a scope the source cannot serve); says why."""


class NotYet(Exception):
    """A record's plan needs what another stream has not synced yet (an invoice's patient has no customer yet):
    nothing is written now, and the record is read again on the next run. The message says what it waits for."""


class LinkLookup(Protocol):
    """What other streams' records are linked to in this Stripe account (sync/references.py): a stream that
    points at a customer or a price resolves it here, never by looking it up in Stripe."""

    def stripe_id(self, stream: str, source_id: str, role: str | None = None) -> str | None: ...

    def same_person(self, stream: str, source_id: str, email: str | None) -> bool: ...
    def people(self, stream: str, email: str | None) -> list[str]: ...  # the source ids of records with this email
    def fingerprint(self, stream: str, source_id: str, role: str) -> str | None: ...

    # Which of `stripe_ids` records of `stream` are linked to (a payment a Cal.com booking's record owns), with
    # those records' source ids (the patients of a customer).
    def linked_by(self, stream: str, stripe_ids: Collection[str]) -> dict[str, list[str]]: ...

    # Every linked record of `stream` → its primary object's Stripe id, in one read (stripe_id for each of many).
    def all_stripe_ids(self, stream: str) -> dict[str, str]: ...


@dataclass(frozen=True)
class RoleRecord:
    """What a finished write step means for the record's links of one role.

    `field`: where the linked object's id is in Stripe's answer ("id", or e.g. "default_price" of a product).
    `fingerprint`: what identifies an immutable object's content (a price's amount, currency and tax behaviour),
    so an earlier one can be reused; None leaves the stored one. `current`/`active`: the new state, None = as is.
    """

    role: str
    field: str = "id"
    fingerprint: str | None = None
    current: bool | None = None
    active: bool | None = None


@dataclass(frozen=True)
class WriteStep:
    """One Stripe write of a record's plan. Steps run in order; each is stored before it is sent.

    `stripe_id`: the object to update, when known at planning time. `refs`: request parameters (top level, or
    "" for the object to update) that take the Stripe id of an earlier step of the same plan, by its index.
    """

    role: str
    op: str  # create | update | link (an update that adopts an existing object)
    stripe_object: str
    params: Mapping[str, Any]
    stripe_id: str | None = None
    refs: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    records: tuple[RoleRecord, ...] = ()
    note: str = ""  # what the step does, in words, for history and plans


@dataclass(frozen=True)
class RoleLinkInfo:
    """A Stripe object of a secondary role the record owns (e.g. one of the prices ClinicSync made), or, in a
    request's `observed`, one its linked Stripe object holds now (`current`: the one in use, e.g. the default)."""

    role: str
    stripe_id: str
    fingerprint: str | None
    current: bool
    active: bool


@dataclass(frozen=True)
class PlanRequest:
    """What the engine decided for one record, and what a stream needs to say which writes carry it out."""

    op: str  # create | link | update
    mapped: MappedRecord
    stripe_id: str | None  # the linked (update) or chosen (link) object of the primary role
    params: Mapping[str, Any]  # the mapped payload as Stripe create/update parameters
    cross_ref_key: str  # the metadata key that names the source record on its Stripe objects
    roles: tuple[RoleLinkInfo, ...] = ()
    # What the linked Stripe object holds now of other roles, when the stream looked (Stream.observe): e.g. the
    # default price of a product being linked, which the record adopts when it is already the price wanted.
    observed: tuple[RoleLinkInfo, ...] | None = None
    # Other streams' links (an invoice's customer, a line's price); the engine always sets it.
    links: LinkLookup | None = None


Plan = Callable[[PlanRequest], list[WriteStep]]


@dataclass(frozen=True)
class ReadAheadRequest:
    """What a stream's `read_ahead` is given when the run begins. `first_run`: the stream never ran for this pair
    (its matcher's `since` will be None); `check`: raises when the run is cancelled, for the reading threads."""

    source: Any
    gateway: Any
    first_run: bool
    check: Callable[[], None]


# --- a stream's own matching (streams.md §1: "match(record, ctx)") ------------------------------------------
@dataclass(frozen=True)
class MatchSetup:
    """What a stream's matcher may use, made once per run when the first unlinked record is offered.

    `linked`: the Stripe ids records of this stream are linked to already (never a candidate for another), with
    the source id of each. `gateway`/`source`: for the matcher's own reads (one paged listing per run, never one
    lookup per record). `since`: Stripe time (epoch s) from which to look for what happened to linked objects
    (the previous run, less the read overlap); None on the first run. `check`: raises when the run is cancelled,
    for a listing the matcher reads on a thread of its own.
    """

    gateway: Any
    source: Any
    links: LinkLookup
    settings: StreamSettings
    linked: Mapping[str, str]
    cross_ref_key: str
    since: int | None = None
    check: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class MatchDecision:
    """What a matcher decided for one record: `link` (stripe_id, stripe_object), `review` (candidates, reason,
    detail) or `none` (message: why nothing is written). `revisit`: judge it again later (a payment may still
    come): read by id next run, or, with `when_paid`, only on a run where the matcher's `recheck` finds a new
    payment that may be its (by customer, billing email or name; reading every waiting record by id on every run
    costs one source read each)."""

    kind: str  # link | review | none
    stripe_id: str | None = None
    stripe_object: str | None = None
    candidates: tuple[str, ...] = ()
    reason: str = ""
    message: str = ""
    revisit: bool = False
    when_paid: bool = False

    @staticmethod
    def link(stripe_id: str, stripe_object: str, message: str = "") -> MatchDecision:
        return MatchDecision("link", stripe_id=stripe_id, stripe_object=stripe_object, message=message)

    @staticmethod
    def review(candidates: Sequence[str], reason: str, detail: str) -> MatchDecision:
        return MatchDecision("review", candidates=tuple(candidates), reason=reason, message=detail)

    @staticmethod
    def none(message: str, *, revisit: bool = False, when_paid: bool = False) -> MatchDecision:
        return MatchDecision("none", message=message, revisit=revisit, when_paid=when_paid)


class Matcher(Protocol):
    """A stream's matcher for one run: offered every unlinked, live record during the read. It decides a record as
    it is offered when no record still to come can change the decision, so the write goes out while the source is
    still read; the others wait until every candidate is known (one payment covering two invoices needs both)."""

    def offer(self, mapped: MappedRecord, record: Record) -> MatchDecision | None: ...  # None: decided by `decide`

    # Called once every record that could be a candidate has been offered (the listing's CANDIDATES_LISTED mark,
    # else its end): source id → decision, for every record offered that waited. Records offered after it are
    # decided as they are offered.
    def decide(self) -> Mapping[str, MatchDecision]: ...

    # The listing's ListedBelow mark: source id → decision, for the records offered that waited and that no record
    # still to come can change now. Those it leaves wait on.
    def listed_below(self, value: Any) -> Mapping[str, MatchDecision]: ...

    # Records to judge again this run though they did not change (read before the changed ones): e.g. the
    # invoices, still in their window, of a customer with a payment since the last run.
    def recheck(self) -> Iterator[Record]: ...

    # What happened in Stripe since `since` to objects records are linked to (a payment refunded), for history:
    # (source id, Stripe id, message); each message names the Stripe event's own id, so it is recorded once.
    def linked_news(self) -> Sequence[tuple[str, str, str]]: ...

    # The run ended, whatever its outcome (a failure, a cancel): stop what the matcher still reads on a thread of its
    # own (no request after the one in flight, no pause waited out), without waiting for it.
    def stop(self) -> None: ...


def single_write(request: PlanRequest, stripe_object: str, role: str) -> list[WriteStep]:
    """The plan of a stream whose record is one Stripe object: one create, link or update."""
    return [
        WriteStep(
            role=role,
            op=request.op,
            stripe_object=stripe_object,
            params=request.params,
            stripe_id=request.stripe_id if request.op != "create" else None,
        )
    ]


@dataclass(frozen=True)
class FindRequest:
    """A create whose outcome is unknown (a saved 500, or a replay past Stripe's 24 h idempotency window)."""

    stripe_object: str
    source_id: str
    params: Mapping[str, Any]
    cross_ref_key: str
    created_after: int  # Stripe `created` (epoch s) before which the object cannot have been made


def oldest_naming(found: Sequence[Mapping[str, Any]], request: FindRequest) -> dict[str, Any] | None:
    """The oldest of `found` whose metadata names the record (a retried create that went through twice would
    have made two; the first is the one to keep)."""
    key, source_id = request.cross_ref_key, request.source_id
    matches = [dict(obj) for obj in found if (obj.get("metadata") or {}).get(key) == source_id]
    return min(matches, key=lambda obj: obj.get("created", 0)) if matches else None


DUPLICATE_OF_KEY = "clinicsync_duplicate_of"  # metadata on a twin that could not be deleted: which one stays
# The role of a write to a Stripe object the record does not own (a duplicate or an orphan a person retires from
# reconciliation): once done it is history only, and leaves the record's links and decisions as they are.
DETACHED_ROLE = "detached"


@dataclass(frozen=True)
class Stream:
    """A declared stream. `primary_role` names the Stripe object the record *is* (its customer, its product)."""

    name: str
    source_system: str
    primary_role: str
    stripe_object: str
    read_changed: Callable[[Any, datetime | None], Iterator[Record | ListingMark]]  # (source client, cursor)
    read_one: Callable[[Any, str], Record | None]
    archived_value: Callable[[Record], str | None]  # why the record counts as archived, or None
    changed_at: Callable[[Record], str | None]  # the record's last-change time (UTC ISO), for the "since" scope
    plan: Plan
    # (gateway, request) → the object a lost create made, or None; and whether None is certain yet, given the
    # write's age and how long Stripe Search takes to catch up (only streams that must search care).
    find_created: Callable[[Any, FindRequest], dict[str, Any] | None]
    # Requests one poll of the stream sends to each service when nothing changed (its listings and reads, beyond
    # connecting: scheduler.CONNECT_REQUESTS), e.g. {"cliniko": 6, "stripe": 2}. The scheduler's poll budget sums
    # the streams that run; tests/integration/test_scheduler.py measures each against the sandbox and fails when a
    # declaration is lower than what a poll sends.
    idle_poll: Mapping[str, int]
    absence_certain: Callable[[FindRequest, float, float], bool] = lambda request, age_s, settle_s: True
    depends_on: tuple[str, ...] = ()
    # Values beyond the field mapping that decide the writes (a product's price), added to the mapped payload
    # as "<role>.<field>" entries so a change to them is a change to the record. None: nothing to add.
    enrich: Callable[[MappedRecord, Record, StreamSettings], None] | None = None
    # Source ids with activity on or after a date, for the "recent_activity" scope (None: not supported).
    active_ids: Callable[[Any, date, str], set[str]] | None = None  # (client, since, clinic time zone)
    source_settings: Callable[[Any], Mapping[str, Any] | None] = lambda client: None  # custom field definitions
    time_zone: Callable[[Any], str | None] = lambda client: None  # the clinic's IANA zone, when the source says
    country: Callable[[Any], str | None] = lambda client: None  # the clinic's country code, when the source says
    # (gateway, twin id, survivor id) → what was done, in words: the newer of two objects that name one record,
    # made by two installations racing, is deleted when nothing refers to it, else marked. None: left alone.
    retire_twin: Callable[[Any, str, str], str] | None = None
    # (gateway, ids of the objects naming one record, oldest first) → those that are a race's twins, the one to keep
    # first (fewer than two: nothing to do now), for a stream whose objects of one record are not all twins (a
    # mirror replaced on purpose) or whose oldest is not always the one to keep. None: every one, oldest kept.
    choose_twins: Callable[[Any, list[str]], list[str]] | None = None
    # What reconciliation compares between a record and its Stripe objects, and how its objects are retired.
    # None: the stream is not reconciled.
    compare: Comparison | None = None
    # read_changed lists every record every time (a source with no change cursor, like Cal.com's event types): a
    # linked record missing from it is read by id (read_one), which says whether it was deleted.
    complete_listing: bool = False
    # Whether the approved first sync may carry out this stream's plan record by record (reading only what changed
    # since the plan) instead of judging a fresh read. False for a stream whose full listing the run reads anyway
    # for a stream after it (one read shared per run): carrying out would add a read, not save one.
    carries_out_plan: bool = True
    # The stream's own declarations (enrich) need the clinic's time zone even when no mapping rule does.
    needs_time_zone: bool = False
    # (gateway, request) → what the linked Stripe object holds now of other roles, read only when the plan
    # depends on it (a link that may adopt an existing price, a change of an immutable object); None: not read.
    observe: Callable[[Any, PlanRequest], tuple[RoleLinkInfo, ...] | None] = lambda gateway, request: None
    # Create parameters Stripe keeps unique in an account (a price's lookup_key): a create refused over one made
    # its object already (two installations racing), which find_created finds, rather than failing.
    unique_params: tuple[str, ...] = ()
    # A stream that never creates its primary object, only links to one made elsewhere (a payment Cal.com's Stripe
    # app took): why a record nothing in Stripe matches is left alone, in words. Reported once (again only if the
    # reason changes), not every run.
    # None: such a record gets a new object.
    unmatched: Callable[[MappedRecord], str] | None = None
    # The stream's own matching (payments by amount, customer and local date window) instead of the engine's
    # (cross-reference in an index of the Stripe account, then email). Such a stream never creates: its records
    # are linked to objects that exist, go to review, or get nothing. None: the engine's matching.
    matcher: Callable[[MatchSetup], Matcher] | None = None
    # The setting (a bool, off by default) that switches an optional stream on, e.g. mirroring invoices; None: the
    # stream runs whenever its source is connected (unless `streams.<name>.enabled` is off).
    enabled_by: str | None = None
    # What the stream makes in Stripe, in words, shown with its dry-run and approval plans before anything is sent.
    plan_note: str = ""
    # The stream whose record of the same id owns the object this stream writes to (notes on an event type's
    # product): when that stream links its record to another object, this record is written again, to the new
    # one, though its own fields did not change. None: the stream's own link decides.
    follows: str | None = None
    # Start the stream's first, full reads (cursor None, every record; a listing of Stripe its first run makes
    # whatever the records) on threads of their own when the run begins, for the stream to take when it runs: a read
    # that waits seconds on a rate limit then overlaps the Stripe work of the streams before it. Returns what it
    # started, which the run stops when it ends (taken or not). None: the stream reads when it runs.
    read_ahead: Callable[[ReadAheadRequest], list[ReadAhead[Any]]] | None = None

    @property
    def creates(self) -> bool:
        """Whether the stream ever makes its primary object: one that links to objects made elsewhere (payments)
        never does, so "create a new one" is no decision a person can take for its records."""
        return self.matcher is None and self.unmatched is None


def observed_request(stream: Stream, gateway: Any, request: PlanRequest) -> PlanRequest:
    """The request with what its linked Stripe object holds now, when the stream's plan depends on it."""
    if request.op == "create" or request.stripe_id is None:
        return request
    observed = stream.observe(gateway, request)
    return request if observed is None else replace(request, observed=observed)


@dataclass(frozen=True)
class StreamSettings:
    """The settings a stream's declarations read, resolved once per run."""

    time_zone: str
    currency: str
    values: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


def dependency_order(streams: Mapping[str, Stream], names: Sequence[str]) -> list[str]:
    """`names` with every stream after the streams it depends on (among `names`); stable otherwise.

    Raises ValueError on a cycle: a declaration bug, not something a user can cause.
    """
    chosen = list(dict.fromkeys(names))
    ordered: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in ordered:
            return
        if name in visiting:
            raise ValueError(f"streams depend on each other in a cycle through {name}")
        visiting.add(name)
        for dependency in streams[name].depends_on:
            if dependency in streams:  # a stream of a source this build does not have is not waited for
                visit(dependency)
        visiting.discard(name)
        ordered.append(name)

    for name in chosen:
        visit(name)
    return [name for name in ordered if name in chosen]
