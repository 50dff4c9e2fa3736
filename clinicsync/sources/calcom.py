"""Cal.com API v2 client: bookings, event types, schedules, teams, webhooks and the key's user.

The facts it follows (docs/calcom-api.md):
- `Authorization: Bearer <key>` (keys start with `cal_`, live ones `cal_live_`), HTTPS only; base
  `https://api.cal.com/v2`, EU `https://api.cal.eu/v2`, or a self-hosted API v2 app's own address ending in `/v2`.
- `cal-api-version` is required on versioned endpoints, and leaving it out silently returns an older response
  shape; each family has its own date (`api_version_for`), and unversioned endpoints get no header.
- Lists page by `take` (at most 250) and `skip`; `/bookings` filters by `afterUpdatedAt`/`afterCreatedAt` and sorts
  by `sortUpdatedAt`/`sortCreated`. A booking's `updatedAt` may be empty (null), so incremental reads also ask
  for bookings created since the cursor.
- 120 requests a minute per key; going over blocks the key for 60 s. The limit's headers carry a suffix
  (`X-RateLimit-Remaining-Default`, `X-RateLimit-Reset-Default` in seconds) and a 429 has no Retry-After.
- Errors come as `{"status": "error", "error": {"code", "message", "details"}}`.

Sending, retries, error mapping and JSON come from `sources/base.py`, shared with the Cliniko client.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from clinicsync import rate_limits
from clinicsync.readahead import ReadAhead
from clinicsync.retry import RetryPolicy
from clinicsync.sources.base import MAX_PLAUSIBLE_WAIT_S, SourceClient, float_header, parse_http_date, retry_after
from clinicsync.sources.errors import (
    REJECTION_LIMIT,
    SourceAuthError,
    SourceBadResponse,
    SourceConfigError,
    SourceError,
    SourceNotFound,
    SourcePermissionError,
    SourceRequestRejected,
)
from clinicsync.sources.ratelimit import RequestBudget
from clinicsync.sources.urls import validate_base_url

log = logging.getLogger(__name__)

SERVICE = "Cal.com"
CLOUD_BASE_URL = "https://api.cal.com/v2"
EU_BASE_URL = "https://api.cal.eu/v2"
KEY_PREFIX = "cal_"
LIVE_KEY_PREFIX = "cal_live_"
MAX_TAKE = 250  # `take` above this is a 400

# `cal-api-version` per endpoint family (docs/calcom-api.md §1, from the spec's header defaults). None: the
# endpoint declares no version and is called without the header.
CAL_API_VERSIONS: Mapping[str, str | None] = {
    "/bookings": "2024-08-13",
    "/event-types": "2024-06-14",
    "/schedules": "2024-06-11",
    "/slots": "2024-09-04",
    "/me": None,
    "/teams": None,
    "/webhooks": None,
}
# Sub-resources of a versioned family that declare no version of their own.
_UNVERSIONED = re.compile(r"^/event-types/[^/]+/(webhooks|private-links)(/|$)")

# HTTP 498: Cal.com's answer to an expired managed-user access token (packages/platform/constants/api.ts).
TOKEN_EXPIRED = 498

_UID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
_NUMERIC_ID = re.compile(r"^\d{1,18}$")
_RL_REMAINING = "x-ratelimit-remaining"
_RL_RESET = "x-ratelimit-reset"
_ONE_MS = timedelta(milliseconds=1)
_GENERIC_MESSAGE = re.compile(r"^([A-Za-z]+ )*[A-Za-z]*Exception$")


def api_version_for(path: str) -> str | None:
    """The `cal-api-version` a path under /v2 needs (e.g. "/bookings/abc" → "2024-08-13"), or None."""
    path = "/" + path.strip("/")
    if _UNVERSIONED.match(path):
        return None
    for prefix, version in CAL_API_VERSIONS.items():
        if path == prefix or path.startswith(prefix + "/"):
            return version
    return None


def format_cursor(moment: datetime) -> str:
    """A Cal.com date filter value: strict ISO-8601 UTC with milliseconds, `2025-03-07T10:00:00.000Z`.

    Microseconds are dropped (floored), so the filter never starts after `moment`."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("cursor must be timezone-aware (Cal.com filters are in UTC)")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_instant(value: object) -> datetime | None:
    """A Cal.com timestamp (`…Z`, `….000Z` or `+00:00`) as an aware UTC datetime; None when empty or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


@dataclass(frozen=True)
class CalcomUser:
    """The Cal.com user behind an API key (`GET /v2/me`)."""

    id: str
    username: str
    email: str
    name: str
    time_zone: str | None = None
    organization_name: str | None = None

    @property
    def display_name(self) -> str:
        return self.name or self.username or self.email or self.id


@dataclass(frozen=True)
class BookingsPage:
    """One page of `GET /v2/bookings`: its bookings and what its pagination block said."""

    bookings: list[dict[str, Any]]
    total: int | None
    has_next: bool
    skip: int
    take: int


CLOSE_WAIT_S = 0.2  # a listing read ahead that ends this soon lets close close the connection itself


class CalcomClient(SourceClient):
    """A Cal.com API v2 client for one key. Close it (or use `with`) to release its connection."""

    service = SERVICE
    connect_hint = "Check this computer's internet connection and the Cal.com address."

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str | None = None,
        requests_per_minute: float | None = rate_limits.CALCOM_BUDGET_PER_MINUTE,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, so one shared default is safe
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], object] = time.sleep,
        budget: RequestBudget | None = None,
    ) -> None:
        """`budget` lets several clients of the same key share one allowance (it overrides
        `requests_per_minute`). `sleep` is used for every wait (pass a CancelToken's sleep to make them
        cancellable, and the bookings read ahead's stop end them on its thread); `clock`/`wall_clock` are injectable
        for tests."""
        api_key = (api_key or "").strip()
        if not api_key:
            raise SourceConfigError("No Cal.com API key is set. Add it in Connections.", service=SERVICE)
        super().__init__(
            api_key,
            base_url=validate_base_url(base_url or CLOUD_BASE_URL, SERVICE),
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            requests_per_minute=requests_per_minute,
            retry=retry,
            timeout_s=timeout_s,
            transport=transport,
            clock=clock,
            wall_clock=wall_clock,
            sleep=sleep,
            budget=budget,
        )
        self.last_total_entries: int | None = None  # the current bookings pass's size, for progress
        # What one sync run reads more than once, kept for the client's life: a client serves one run (the sync
        # service makes one per run), whose streams all ask for the key's user (the clinic's zone, the cursor's
        # clock), the event types, and every booking. Each is read once; see `iter_bookings_changed_since`.
        self._me: httpx.Response | None = None
        self._lists: dict[tuple[str, tuple[tuple[str, str], ...]], list[dict[str, Any]]] = {}
        self._bookings: dict[tuple[datetime | None, int], list[dict[str, Any]]] = {}
        self._ahead: dict[tuple[datetime | None, int], ReadAhead[dict[str, Any]]] = {}
        self._ahead_totals: dict[tuple[datetime | None, int], int | None] = {}  # each read-ahead listing's size

    def close(self) -> None:
        """A listing nobody took (its stream did not run) stops with the run: it sends no request after the one in
        flight, a pause it is in (a rate limit's) ends at once when the client sleeps with a CancelToken (as a sync's
        does), and it closes the connection itself when it ends, never under a request. Waiting for it here would
        only make closing slow."""
        lingering = [ahead for ahead in self._ahead.values() if not ahead.stop(CLOSE_WAIT_S)]
        if not lingering:
            super().close()
            return
        remaining = [len(lingering)]
        lock = threading.Lock()

        def one_ended() -> None:
            with lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                SourceClient.close(self)

        for ahead in lingering:
            ahead.then(one_ended)

    def __repr__(self) -> str:  # never show the key
        return f"CalcomClient(base_url={self.base_url!r})"

    # -- the key's user --------------------------------------------------------------------------------------

    def get_me(self) -> CalcomUser:
        """The user the key belongs to: the cheapest authenticated read Cal.com offers (read once per client)."""
        data = self._envelope(self._me_response(), "your Cal.com profile")["data"]
        if not isinstance(data, dict) or data.get("id") in (None, ""):
            raise SourceBadResponse.malformed(SERVICE, "the profile had no user id.")
        organization = data.get("organization")
        org_name = organization.get("name") if isinstance(organization, dict) else None
        return CalcomUser(
            id=str(data["id"]),
            username=str(data.get("username") or ""),
            email=str(data.get("email") or ""),
            name=str(data.get("name") or ""),
            time_zone=data.get("timeZone") or None,
            organization_name=str(org_name) if org_name else None,
        )

    def probe(self) -> datetime:
        """Cal.com's clock from the Date header of this client's `/me` (this PC's clock when the header is missing:
        the cursor's overlap absorbs a small difference), which a run uses as the base of its next cursor. The
        client's first `/me` came before any of its listings, so every stream of the run gets a cursor from before
        what it read (bookings changed since are read again next run, which is harmless)."""
        response = self._me_response()
        return parse_http_date(response.headers.get("Date")) or datetime.now(UTC)

    def _me_response(self) -> httpx.Response:
        if self._me is None:
            self._me = self._get("GET", "/me", what="your Cal.com profile")
        return self._me

    # -- bookings --------------------------------------------------------------------------------------------

    def iter_booking_pages(
        self, params: Sequence[tuple[str, str]] = (), *, take: int = MAX_TAKE
    ) -> Iterator[BookingsPage]:
        """Offset pages of `GET /v2/bookings` with `params` (Cal.com's own filter and sort names), to the end.

        Offset pages shift when bookings change during the listing; `iter_bookings_changed_since` does not."""
        take = _checked_take(take)
        skip = 0
        while True:
            page = self._bookings_page([*params, ("take", str(take)), ("skip", str(skip))], take, skip)
            yield page
            if not page.has_next:
                return
            skip += len(page.bookings)

    def iter_bookings_changed_since(self, cursor: datetime | None, *, take: int = MAX_TAKE) -> Iterator[dict[str, Any]]:
        """Every booking (any status) changed at or after `cursor`, each once; all bookings when `cursor` is None.

        With no cursor (the first, full backfill) it lists by creation time, which every booking has. With a cursor
        it makes two passes: bookings updated since (`afterUpdatedAt` + `sortUpdatedAt=asc`), then bookings created
        since (`afterCreatedAt` + `sortCreated=asc`), because a booking's `updatedAt` may be empty and such a
        booking would never appear in the first pass. Pass a cursor a little before the previous run's start
        (an overlap): Cal.com's clock and this PC's differ, and re-reading a booking is harmless.

        A listing read to its end is kept for the client's run: the same cursor again (the run's next stream, or a
        read by id that needs every booking) gets it without a request. The bookings are shared: do not change them.
        """
        take = _checked_take(take)
        key = (cursor, take)
        if key in self._bookings:  # this run listed them already (another stream, or a read by id)
            self.last_total_entries = len(self._bookings[key])
            yield from self._bookings[key]
            return
        listed: list[dict[str, Any]] = []
        ahead = self._ahead.get(key)  # being read on its own thread since the run began (`read_ahead_bookings`)
        for booking in ahead if ahead is not None else self._changed_since(cursor, take, self._show_total):
            if ahead is not None and not listed:  # its size, for progress, once its reader takes it
                self.last_total_entries = self._ahead_totals.get(key)
            listed.append(booking)
            yield booking
        self._bookings[key] = listed  # only a listing read to its end is kept

    def read_ahead_bookings(self) -> ReadAhead[dict[str, Any]] | None:
        """Start reading every booking (the first, full listing) on a thread of its own, for this run's
        `iter_bookings_changed_since(None)` to take as it arrives: Cal.com's pages come at its rate limit's pace, a
        few seconds for a few thousand bookings, which then overlap the Stripe work of the streams before. The
        listing started (None: it was started or read already)."""
        key = (None, MAX_TAKE)
        if key in self._bookings or key in self._ahead:
            return None

        def total(size: int | None) -> None:  # kept for its reader: other streams' progress shows their own
            self._ahead_totals[key] = size

        self._ahead[key] = ReadAhead(
            lambda: self._changed_since(None, MAX_TAKE, total), name="Cal.com bookings", check=lambda: self._sleep(0)
        )
        return self._ahead[key]

    def _show_total(self, size: int | None) -> None:
        self.last_total_entries = size

    def _changed_since(
        self, cursor: datetime | None, take: int, on_total: Callable[[int | None], None]
    ) -> Iterator[dict[str, Any]]:
        if cursor is None:
            yield from self._keyset("createdAt", "afterCreatedAt", "sortCreated", None, take, on_total)
            return
        since = format_cursor(cursor)
        seen: set[str] = set()
        for booking in self._keyset("updatedAt", "afterUpdatedAt", "sortUpdatedAt", since, take, on_total):
            seen.add(booking["uid"])
            yield booking
        for booking in self._keyset("createdAt", "afterCreatedAt", "sortCreated", since, take, on_total):
            if booking["uid"] not in seen:
                seen.add(booking["uid"])
                yield booking

    def get_booking(self, uid: str) -> list[dict[str, Any]]:
        """The booking a uid names, as a one-item list; every occurrence (sorted by start) when the uid is a
        recurring series' uid; [] when Cal.com says 404."""
        try:
            data = self._data("GET", f"/bookings/{_checked_uid(uid)}", what=f"booking {uid}")
        except SourceNotFound:
            return []
        items = data if isinstance(data, list) else [data]
        if not all(isinstance(item, dict) and _usable_uid(item.get("uid")) for item in items):
            raise SourceBadResponse.malformed(SERVICE, f"booking {uid} had no usable uid.")
        return items

    # -- event types, schedules, teams, webhooks -------------------------------------------------------------

    def list_event_types(self) -> list[dict[str, Any]]:
        """The key's user's event types, hidden ones included (Cal.com shows those to their owner). Not paged.

        Read a paid event type's price from `metadata.apps.stripe` (`price` in minor units, `currency`,
        `paymentOption`), not from the deprecated top-level `price`/`currency`."""
        return self._list("/event-types", what="the event types", once=True)

    def get_event_type(self, event_type_id: int | str) -> dict[str, Any] | None:
        """One event type; None when Cal.com says 404 (deleted, or not the key's user's)."""
        return self._one(f"/event-types/{_checked_number(event_type_id)}", what=f"event type {event_type_id}")

    def list_team_event_types(self, team_id: int | str) -> list[dict[str, Any]]:
        """A team's event types (round robin, collective, managed), each with `teamId`, `hosts`, `schedulingType`."""
        return self._list(
            f"/teams/{_checked_number(team_id)}/event-types", what=f"team {team_id}'s event types", once=True
        )

    def list_schedules(self) -> list[dict[str, Any]]:
        """The key's user's availability schedules (times are wall-clock in each schedule's `timeZone`)."""
        return self._list("/schedules", what="the schedules")

    def get_schedule(self, schedule_id: int | str) -> dict[str, Any] | None:
        return self._one(f"/schedules/{_checked_number(schedule_id)}", what=f"schedule {schedule_id}")

    def get_default_schedule(self) -> dict[str, Any] | None:
        """The default schedule, or None when the user has none."""
        return self._one("/schedules/default", what="the default schedule")

    def list_teams(self) -> list[dict[str, Any]]:
        return self._list("/teams", what="the teams", once=True)

    def get_team(self, team_id: int | str) -> dict[str, Any] | None:
        return self._one(f"/teams/{_checked_number(team_id)}", what=f"team {team_id}")

    def iter_webhooks(self, *, take: int = MAX_TAKE) -> Iterator[dict[str, Any]]:
        """The key's user's webhook subscriptions (`take`/`skip` pages; the answer has no pagination block, so a
        short page is the last). Ids are strings: the spec says number, the database holds a string."""
        take = _checked_take(take)
        skip = 0
        while True:
            items = self._list(
                "/webhooks", params=[("take", str(take)), ("skip", str(skip))], what="the webhook subscriptions"
            )
            for item in items:
                if item.get("id") is not None:
                    item["id"] = str(item["id"])
                yield item
            if len(items) < take:
                return
            skip += len(items)

    def get_webhook(self, webhook_id: str) -> dict[str, Any] | None:
        item = self._one(f"/webhooks/{_checked_uid(webhook_id)}", what=f"webhook {webhook_id}")
        if item is not None and item.get("id") is not None:
            item["id"] = str(item["id"])
        return item

    # -- requests --------------------------------------------------------------------------------------------

    def _data(self, method: str, path: str, *, params: Sequence[tuple[str, str]] | None = None, what: str) -> Any:
        """The `data` of Cal.com's success envelope `{"status": "success", "data": ...}`."""
        return self._envelope(self._get(method, path, params=params, what=what), what)["data"]

    def _get(
        self, method: str, path: str, *, params: Sequence[tuple[str, str]] | None = None, what: str
    ) -> httpx.Response:
        version = api_version_for(path)
        headers = {"cal-api-version": version} if version else None
        return self._request(method, path, params=params, headers=headers, what=what)

    def _envelope(self, response: httpx.Response, what: str) -> dict[str, Any]:
        body = self._json(response)
        if not isinstance(body, dict) or "data" not in body:
            raise SourceBadResponse.malformed(
                SERVICE, f"{what} came without Cal.com's 'data' envelope.", self._excerpt(response.text)
            )
        if body.get("status") == "error":  # an error dressed as a success
            _, message, _ = _error_parts(body)
            raise SourceBadResponse.malformed(
                SERVICE, f"it answered {what} with an error: {self._excerpt(message or response.text)}"
            )
        return body

    def _list(
        self, path: str, *, params: Sequence[tuple[str, str]] | None = None, what: str, once: bool = False
    ) -> list[dict[str, Any]]:
        """A list endpoint's records; with `once`, read once per client (a run's streams share the event types and
        the teams)."""
        key = (path, tuple(params or ()))
        if not once or key not in self._lists:
            data = self._data("GET", path, params=params, what=what)
            if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
                raise SourceBadResponse.malformed(SERVICE, f"{what} were not a list of records.")
            self._lists[key] = data
        return self._lists[key]

    def _one(self, path: str, *, what: str) -> dict[str, Any] | None:
        try:
            data = self._data("GET", path, what=what)
        except SourceNotFound:
            return None
        if data is None:
            return None
        if not isinstance(data, dict):
            raise SourceBadResponse.malformed(SERVICE, f"{what} was not a record.")
        return data

    def _bookings_page(self, params: list[tuple[str, str]], take: int, skip: int) -> BookingsPage:
        response = self._get("GET", "/bookings", params=params, what="the bookings list")
        body = self._envelope(response, "the bookings list")
        data = body["data"]
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise SourceBadResponse.malformed(SERVICE, "a page of bookings was not a list of bookings.")
        usable = [item for item in data if _usable_uid(item.get("uid"))]
        if len(usable) < len(data):  # nothing can be linked without a uid: skip it, keep the rest
            log.warning("Cal.com sent %d booking(s) without a uid; they were skipped", len(data) - len(usable))
        pagination = body.get("pagination")
        pagination = pagination if isinstance(pagination, dict) else {}
        total = pagination.get("totalItems")
        has_next = pagination.get("hasNextPage")
        if not isinstance(has_next, bool):
            has_next = len(data) >= take  # no (usable) pagination block: a full page may have more after it
        if not data:
            has_next = False  # an empty page that claims more would loop forever
        return BookingsPage(
            bookings=usable,
            total=int(total) if isinstance(total, int | float) and not isinstance(total, bool) else None,
            has_next=has_next,
            skip=skip,
            take=take,
        )

    def _keyset(
        self,
        field: str,
        after_param: str,
        sort_param: str,
        since: str | None,
        take: int,
        on_total: Callable[[int | None], None],
    ) -> Iterator[dict[str, Any]]:
        """Bookings with `field` at or after `since`, oldest first, by keyset paging.

        Offset pages over a list sorted by `updatedAt` lose bookings: an edit moves a booking to the end, so the
        next page's first bookings slide onto a page already read. So after each page the listing restarts at
        the page's last timestamp (less a millisecond, so it works whether Cal.com's filter is `>=` or `>`),
        leaving out the uids already yielded at or after that point. Edits only move bookings later, so nothing
        can slide behind it. Only when a whole page lies within that millisecond does it page by offset.
        """
        since_at = parse_instant(since) if since else None
        skip = 0
        boundary: set[str] = set()  # uids already yielded at or after `since`
        recent: list[tuple[str, datetime | None]] = []  # what was read since the last restart
        first = True
        while True:
            params = [(after_param, since)] if since else []
            params += [(sort_param, "asc"), ("take", str(take)), ("skip", str(skip))]
            page = self._bookings_page(params, take, skip)
            if first:
                on_total(page.total)  # the pass's size, for progress
                first = False
            for booking in page.bookings:
                if booking["uid"] not in boundary:
                    boundary.add(booking["uid"])
                    yield booking
            recent += [(b["uid"], parse_instant(b.get(field))) for b in page.bookings]
            if not page.has_next:
                return
            last = recent[-1][1] if recent else None
            restart = last - _ONE_MS if last is not None else None
            if restart is None or (since_at is not None and restart <= since_at):
                skip += len(page.bookings)  # cannot move the key forward: page by offset within it
                continue
            since, since_at, skip = format_cursor(restart), restart, 0
            recent = [(uid, at) for uid, at in recent if at is not None and at >= restart]
            boundary = {uid for uid, _ in recent}

    # -- Cal.com's errors and rate limit ---------------------------------------------------------------------

    def _observe(self, response: httpx.Response) -> None:
        """Every response says how much of the minute's allowance is left: when every tier is used up, wait for
        the window to turn instead of sending the request that would block the key for a minute."""
        super()._observe(response)
        if response.status_code == 429:
            return  # _rate_limit_wait handles it
        tiers = self._rate_limit_tiers(response)
        if tiers and all(remaining is not None and remaining <= 0 for remaining, _ in tiers.values()):
            waits = [wait for _, wait in tiers.values() if wait is not None]
            if waits:
                log.info("Cal.com's allowance for this minute is used up; waiting %.1f s", min(waits))
                self.budget.pause_for(min(waits))

    def _rate_limit_wait(self, response: httpx.Response) -> float | None:
        """How long a 429 asks us to wait: the reset of the exhausted tier(s) (a block lasts 60 s), else
        Retry-After, else the documented block, since backing off for less only spends attempts inside it."""
        tiers = self._rate_limit_tiers(response)
        exhausted = [wait for remaining, wait in tiers.values() if wait is not None and (remaining or 0) <= 0]
        waits = exhausted or [wait for _, wait in tiers.values() if wait is not None]
        if waits:
            return min(waits)
        hinted = retry_after(response, self._wall_clock)
        return hinted if hinted is not None else float(rate_limits.CALCOM_BLOCK_SECONDS)

    def _rate_limit_tiers(self, response: httpx.Response) -> dict[str, tuple[float | None, float | None]]:
        """{tier suffix: (remaining, seconds until reset)} from `X-RateLimit-Remaining-<tier>` and
        `X-RateLimit-Reset-<tier>`. Reset is seconds to go (@nestjs/throttler); a value that looks like a UNIX time
        (seconds or milliseconds) is read as one, against the response's own Date."""
        date = parse_http_date(response.headers.get("Date"))
        now = date.timestamp() if date is not None else self._wall_clock()
        tiers: dict[str, tuple[float | None, float | None]] = {}
        for name, value in response.headers.items():
            lower = name.lower()
            for prefix, slot in ((_RL_REMAINING, 0), (_RL_RESET, 1)):
                if lower.startswith(prefix):
                    number = float_header(value)
                    if slot == 1 and number is not None:
                        number = _seconds_until(number, now)
                    pair = list(tiers.get(lower[len(prefix) :], (None, None)))
                    pair[slot] = number
                    tiers[lower[len(prefix) :]] = (pair[0], pair[1])
        return tiers

    def _error_for(self, response: httpx.Response, what: str) -> SourceError:
        status = response.status_code
        if status == TOKEN_EXPIRED:
            return SourceAuthError.rejected_key(SERVICE, status)
        error = super()._error_for(response, what)
        if isinstance(error, SourceNotFound | SourcePermissionError):
            said = self._cal_words(response)
            if said:  # e.g. which uid was not found, or that the key's plan lacks API access
                error = type(error)(f"{error.message} Cal.com said: {said}", service=SERVICE, status=status)
        return error

    def _redirect_error(self, status: int) -> SourceConfigError:
        return SourceConfigError(
            f"Cal.com redirected the request (HTTP {status}) instead of answering. Check the Cal.com "
            "address in Connections: it should be the API's address, ending in /v2.",
            service=SERVICE,
            status=status,
        )

    def _rejection(self, response: httpx.Response) -> SourceRequestRejected:
        """Cal.com's words for a 4xx: the envelope's code and message plus the validation details, e.g.
        `Cal.com rejected the request (HTTP 400, BadRequestException): take must not be greater than 250`."""
        status = response.status_code
        code = self._cal_code(response)
        detail = self._cal_words(response, REJECTION_LIMIT) or self._excerpt(response.text, REJECTION_LIMIT)
        prefix = f"Cal.com rejected the request (HTTP {status}{', ' + code if code else ''})"
        message = f"{prefix}: {detail}" if detail else f"{prefix}."
        request_id = response.headers.get("X-Request-Id")
        if request_id:  # what Cal.com's support asks for
            message += f" (Cal.com request id {self._excerpt(request_id, 80)})"
        return SourceRequestRejected(message, service=SERVICE, status=status)

    def _cal_words(self, response: httpx.Response, limit: int = 300) -> str:
        """The error's message and any further validation details, scrubbed and shortened ("" if none)."""
        try:
            body = self._json(response)
        except SourceBadResponse:
            return ""
        code, message, details = _error_parts(body)
        if details and _GENERIC_MESSAGE.match(message or code):
            message = ""  # NestJS's ValidationPipe says only "Bad Request Exception"; the details say what
        extra = [d for d in details if d and d != message]
        text = "; ".join(part for part in (message, *extra) if part)
        return self._excerpt(text, limit) if text else ""

    def _cal_code(self, response: httpx.Response) -> str:
        try:
            body = self._json(response)
        except SourceBadResponse:
            return ""
        code, _, _ = _error_parts(body)
        return self._excerpt(code, 60) if code else ""


# -- module helpers ------------------------------------------------------------------------------------------


def _error_parts(body: object) -> tuple[str, str, list[str]]:
    """(code, message, details) from Cal.com's error envelope, or from a bare NestJS error body."""
    if not isinstance(body, dict):
        return "", "", []
    error = body.get("error")
    if isinstance(error, dict):
        code = str(error.get("code") or "")
        message = _text(error.get("message"))
        details = error.get("details")
        detail_messages = _texts(details.get("message")) if isinstance(details, dict) else _texts(details)
        return code, message, detail_messages
    # NestJS without Cal.com's filter: {"statusCode": 400, "message": [...], "error": "Bad Request"}
    messages = _texts(body.get("message"))
    return str(error or ""), "; ".join(messages), []


def _text(value: object) -> str:
    if isinstance(value, list):
        return "; ".join(str(v) for v in value if v not in (None, ""))
    return str(value) if value not in (None, "") else ""


def _texts(value: object) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value if v not in (None, "")]
    return [str(value)] if isinstance(value, str | int | float) and value != "" else []


def _seconds_until(value: float, now: float) -> float | None:
    """A reset header as seconds from now: seconds to go, or a UNIX time in seconds or milliseconds."""
    if value > 1e12:
        value = value / 1000.0 - now
    elif value > 1e9:
        value = value - now
    if not -MAX_PLAUSIBLE_WAIT_S < value <= MAX_PLAUSIBLE_WAIT_S:
        return None
    return max(0.0, value)


def _checked_take(take: int) -> int:
    if not 1 <= int(take) <= MAX_TAKE:
        raise ValueError(f"take must be between 1 and {MAX_TAKE}")
    return int(take)


def _checked_uid(uid: str) -> str:
    """Uids go into URL paths, so only URL-safe characters are accepted."""
    text = str(uid).strip()
    if not _UID.match(text):
        raise ValueError(f"not a Cal.com uid: {uid!r}")
    return text


def _checked_number(value: int | str) -> str:
    text = str(value).strip()
    if not _NUMERIC_ID.match(text):
        raise ValueError(f"not a Cal.com id: {value!r}")
    return text


def _usable_uid(value: object) -> bool:
    return isinstance(value, str) and value.strip() != ""
