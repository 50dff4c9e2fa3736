"""Cliniko REST API v1 client: auth, shard routing, pagination, incremental reads, rate limits and retries.

See docs/cliniko-api.md for the facts this follows. In short: HTTP Basic with the key as user name, a
User-Agent naming the app and a contact email, `https://api.{shard}.cliniko.com/v1`, 200 requests a minute
per user (429 + X-RateLimit-Reset as UNIX seconds), `links.next` pagination, `q[]` filters, and archived
records hidden unless asked for with `q[]=archived_at:*`.

Sending, retries, error mapping and JSON come from `sources/base.py` (shared with the Cal.com client); this
module adds Cliniko's auth and User-Agent, its 4xx bodies, its X-RateLimit-Reset, shards and paging. The client
is thread-safe (one keep-alive httpx.Client, one shared RequestBudget) and never lets the API key reach a log,
an exception message or another host.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from clinicsync import wording
from clinicsync.retry import RetryPolicy
from clinicsync.sources.base import (
    MAX_PLAUSIBLE_WAIT_S,
    Params,
    SourceClient,
    float_header,
    host_of,
    name_lookup_failure,
    parse_http_date,
    query_pairs,
    retry_after,
)
from clinicsync.sources.errors import (
    FIELD_ERROR_LIMIT,
    REJECTION_LIMIT,
    SourceBadResponse,
    SourceConfigError,
    SourceError,
    SourceNotFound,
    SourcePermissionError,
    SourceRequestRejected,
    SourceUnavailable,
    describe_validation_errors,
)
from clinicsync.sources.ratelimit import RequestBudget
from clinicsync.sources.urls import same_origin, validate_base_url

log = logging.getLogger(__name__)

SERVICE = "Cliniko"
APP_NAME = "ClinicSync"
DEFAULT_SHARD = "au1"
# Documented Cliniko shards (docs/cliniko-api.md §1); a host for anything else will not exist.
KNOWN_SHARDS: tuple[str, ...] = ("au1", "au2", "au3", "au4", "ca1", "uk1", "uk2", "eu1")
PER_PAGE = 100
UPDATED_AT = "updated_at"  # the listings' default keyset order: oldest change first

_KEY_SHARD = re.compile(r"-([a-z]{2}\d{1,2})$", re.IGNORECASE)
_SHARD = re.compile(r"^[a-z]{2}\d{1,2}$")
_EMAIL = re.compile(r"^[^@\s()<>,;:\"\[\]]+@[^@\s()<>,;:\"\[\]]+\.[a-z]{2,}$", re.IGNORECASE)
_ID = re.compile(r"^\d{1,20}$")

__all__ = ["ClinikoAccount", "ClinikoClient", "PageOf", "format_cursor", "link_id", "parse_http_date", "shard_for_key"]


@dataclass(frozen=True)
class ClinikoAccount:
    """The Cliniko account a key belongs to: sync state is keyed by (id, shard)."""

    id: str
    name: str
    shard: str
    country_code: str | None = None
    currency_symbol: str | None = None


@dataclass(frozen=True)
class PageOf:
    """One page of a list endpoint: its records (under the resource's name) and the list's total size."""

    records: list[dict[str, Any]]
    total_entries: int | None
    url: str
    next_url: str | None


class NoSuchShard(SourceConfigError):
    """The shard's API host does not exist: a wrong key ending or shard setting, not a network problem."""


def shard_for_key(api_key: str, shard: str | None = None) -> str:
    """The shard a key belongs to: its `-xx9` suffix, else `shard`, else au1. Raises SourceConfigError."""
    match = _KEY_SHARD.search(api_key)
    chosen = (match.group(1) if match else (shard or DEFAULT_SHARD)).strip().lower()
    if not _SHARD.match(chosen):
        raise SourceConfigError(
            f"'{chosen}' is not a valid Cliniko region (shard). It should look like au1, uk2 or ca1; it is the "
            "part after the last '-' at the end of the API key.",
            service=SERVICE,
        )
    return chosen


def link_id(link_obj: Mapping[str, Any] | None) -> str | None:
    """The id in a Cliniko link object (`{"links": {"self": ".../patients/123"}}`), as a string.

    Cliniko gives related records as URLs, not ids; the id is the URL's last path segment.
    """
    if not isinstance(link_obj, Mapping):
        return None
    links = link_obj.get("links")
    url = links.get("self") if isinstance(links, Mapping) else None
    if not isinstance(url, str) or not url:
        return None
    segment = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
    return segment or None


def format_cursor(cursor: datetime) -> str:
    """A Cliniko DateTime filter value: UTC, whole seconds, `YYYY-MM-DDTHH:MM:SSZ`."""
    if cursor.tzinfo is None or cursor.utcoffset() is None:
        raise ValueError("cursor must be timezone-aware (Cliniko filters are in UTC)")
    return cursor.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


PROBE_REUSE_S = 60.0  # how old the account read's clock may be for a run to take it as its probe


class ClinikoClient(SourceClient):
    """A Cliniko API client for one API key. Close it (or use `with`) to release its connections."""

    service = SERVICE

    def __init__(
        self,
        api_key: str,
        *,
        contact_email: str,
        shard: str | None = None,
        base_url: str | None = None,
        requests_per_minute: float | None = 150,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, so one shared default is safe
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], object] = time.sleep,
        budget: RequestBudget | None = None,
    ) -> None:
        """`budget` lets several clients of the same Cliniko user share one allowance (it overrides
        `requests_per_minute`). `sleep` is used for every wait (pass a CancelToken's sleep to make them
        cancellable); `clock`/`wall_clock` are injectable for tests."""
        api_key = (api_key or "").strip()
        if not api_key:
            raise SourceConfigError("No Cliniko API key is set. Add it in Connections.", service=SERVICE)
        contact_email = (contact_email or "").strip()
        if not _EMAIL.match(contact_email):
            raise SourceConfigError(wording.contact_email_missing(), service=SERVICE)
        self.shard = shard_for_key(api_key, shard)
        super().__init__(
            api_key,
            base_url=validate_base_url(base_url, SERVICE) if base_url else f"https://api.{self.shard}.cliniko.com/v1",
            auth=httpx.BasicAuth(api_key, ""),
            headers={"User-Agent": f"{APP_NAME} ({contact_email})", "Accept": "application/json"},
            requests_per_minute=requests_per_minute,
            retry=retry,
            timeout_s=timeout_s,
            transport=transport,
            clock=clock,
            wall_clock=wall_clock,
            sleep=sleep,
            budget=budget,
        )
        self.last_total_entries: int | None = None
        self._monotonic = clock
        # The server's clock from the last `/settings/public` answer (the account read that starts a sync), and
        # when it came (monotonic): the first stream's probe takes it instead of asking again.
        self._account_clock: tuple[float, datetime] | None = None
        self._businesses: list[dict[str, Any]] | SourceError | None = None  # read once per client (one sync)

    def __repr__(self) -> str:  # never show the key
        return f"ClinikoClient(shard={self.shard!r}, base_url={self.base_url!r})"

    # -- public API ------------------------------------------------------------------------------------------

    def probe(self) -> datetime:
        """Cliniko's clock, which a run uses as the base of its next cursor: from the account read if it answered
        within PROBE_REUSE_S (a sync reads the account just before its first stream), else one cheap request.

        Using the server's clock rather than this PC's keeps the cursor right when the PC's clock is off; a clock
        read a few seconds before the listing only makes the next run's overlap that much longer.
        """
        if self._account_clock is not None:
            at, date = self._account_clock
            self._account_clock = None  # once: a later stream of the same sync asks again
            if self._monotonic() - at <= PROBE_REUSE_S:
                return date
        response = self._request("GET", "/settings/public", what="the account's public settings")
        date = parse_http_date(response.headers.get("Date"))
        if date is None:
            raise SourceBadResponse.malformed(SERVICE, "the response had no valid Date header.")
        return date

    def get_account(self) -> ClinikoAccount:
        """The account behind the key (`GET /settings/public`), which works for every user role."""
        response = self._request("GET", "/settings/public", what="the account's public settings")
        date = parse_http_date(response.headers.get("Date"))
        self._account_clock = (self._monotonic(), date) if date is not None else None
        body = self._json(response)
        account = body.get("account") if isinstance(body, dict) else None
        if not isinstance(account, dict) or account.get("id") in (None, ""):
            raise SourceBadResponse.malformed(
                SERVICE, "the account settings had no account id.", self._excerpt(json.dumps(body))
            )
        return ClinikoAccount(
            id=str(account["id"]),
            name=str(account.get("name") or ""),
            shard=self.shard,
            country_code=account.get("country_code") or None,
            currency_symbol=account.get("currency_symbol") or None,
        )

    def get_businesses(self) -> list[dict[str, Any]]:
        """Every business (`GET /businesses`, 100 a page), read once per client: a sync's streams ask for the
        clinic's zone and country and each invoice's business zone, and a client lives for one sync. A refusal
        (the key's role may not list businesses) is kept and raised again, not asked again."""
        if self._businesses is None:
            try:
                self._businesses = [dict(b) for page in self.iter_pages("/businesses") for b in page.records]
            except (SourcePermissionError, SourceNotFound) as refused:
                self._businesses = refused
        if isinstance(self._businesses, SourceError):
            raise self._businesses
        return list(self._businesses)

    def get_settings(self) -> dict[str, Any]:
        """`GET /settings` (needs a role allowed to view settings): custom field definitions and more."""
        body = self._json(self._request("GET", "/settings", what="the clinic settings"))
        if not isinstance(body, dict):
            raise SourceBadResponse.malformed(SERVICE, "the settings were not a JSON object.")
        return body

    def iter_pages(self, path: str, params: Params = None, *, records_key: str | None = None) -> Iterator[PageOf]:
        """Yield each page of a list endpoint as it arrives, following `links.next` to the end.

        `per_page` defaults to 100 (the maximum, to spare the rate limit). Records are read from the key named
        after the resource (`/patients` → "patients") unless `records_key` says otherwise. A `next` link to
        any other scheme, host or port is refused: following it would send the API key there.
        """
        key = records_key or path.strip("/").split("/", 1)[0]
        query = query_pairs(params)
        if not any(name == "per_page" for name, _ in query):
            query.append(("per_page", str(PER_PAGE)))
        url: str | None = self._url(path)
        seen: set[str] = set()
        while url is not None:
            response = self._request("GET", url, params=query, what=f"the {key.replace('_', ' ')} list")
            page = self._parse_page(response, key)
            self.last_total_entries = page.total_entries  # for progress ("patients 140/500")
            seen.add(str(response.request.url))
            url = self._checked_next(page.next_url, seen)  # checked before yielding: fail before any work
            query = []  # `next` links are absolute and carry the query themselves
            yield page

    def iter_patients_changed_since(self, cursor: datetime | None) -> Iterator[dict[str, Any]]:
        """Active patients updated at or after `cursor` (all of them when None), oldest change first.

        `>=` (DateTime filters have no `=`) so a run that overlaps the previous one's window misses nothing.
        """
        yield from self._changed_records("/patients", [], cursor)

    def iter_archived_patients_changed_since(self, cursor: datetime | None) -> Iterator[dict[str, Any]]:
        """The archived pass alone: `q[]=archived_at:*` makes Cliniko include archived patients, which the normal
        list hides. Callers should look at each record's `archived_at` (the filter means "any value"). A caller that
        needs live and archived patients reads `iter_live_and_archived("/patients", cursor)` instead."""
        yield from self._changed_records("/patients", [("q[]", "archived_at:*")], cursor)

    def get_patient(self, patient_id: str) -> dict[str, Any] | None:
        """One patient, archived or not; None when Cliniko says 404 (unknown or deleted)."""
        return self.get_record("/patients", patient_id, "patient")

    def iter_changed(
        self, path: str, cursor: datetime | None, *, archived: bool = False, deleted: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Records of a listing updated at or after `cursor`; `archived` is the pass that includes archived ones
        (`q[]=archived_at:*`; callers look at each record's `archived_at`); `deleted` lists only deleted ones, for
        listings that keep them (`q[]=deleted_at:?`, e.g. invoices). A caller that needs live and archived records
        reads `iter_live_and_archived`, which decides whether the live pass is needed, not both passes itself."""
        filters = [("q[]", "archived_at:*")] if archived else []
        if deleted:
            filters.append(("q[]", "deleted_at:?"))
        yield from self._changed_records(path, filters, cursor)

    def iter_live_and_archived(
        self, path: str, cursor: datetime | None, *, filters: Params = None, order: str = UPDATED_AT
    ) -> Iterator[dict[str, Any]]:
        """Live and archived records of a listing updated at or after `cursor` (and matching `filters`, such as
        `[("q[]", "id:=1,2")]`): every caller that needs both reads them here, in one pass or two, decided afresh on
        each call from what Cliniko returns.

        The `q[]=archived_at:*` pass is read first. Its docs say `*` "finds cancelled or archived records on an
        endpoint that would usually exclude them", not whether live records come too. If the pass returned any
        record whose `archived_at` is null, the listing evidently includes live records, so that pass stands for the
        live one too and the live pass is skipped. Otherwise (none live among them, or no records at all) the live
        pass is read as well, so nothing is lost if `*` lists archived records only. Callers look at each record's
        `archived_at`; a record in both passes comes twice (the later read is the newer version). Each pass lists
        in ascending `order` (`_changed_records`).
        """
        narrowed = query_pairs(filters)
        live_listed = False
        for record in self._changed_records(path, [*narrowed, ("q[]", "archived_at:*")], cursor, order):
            # Evidence is an `archived_at` given as null; a record that leaves the field out proves nothing.
            live_listed = live_listed or ("archived_at" in record and record["archived_at"] is None)
            yield record
        if live_listed:
            log.debug("%s: the archived_at:* pass listed live records too; the live pass is not needed", path)
            return
        yield from self._changed_records(path, narrowed, cursor, order)

    def iter_created_since(self, path: str, cursor: datetime) -> Iterator[dict[str, Any]]:
        """Records created at or after `cursor` (for append-only listings such as stock adjustments)."""
        yield from self._records(path, [("q[]", f"created_at:>={format_cursor(cursor)}"), ("sort", "created_at:asc")])

    def get_record(self, path: str, record_id: str, what: str) -> dict[str, Any] | None:
        """One record of a listing, archived or not; None when Cliniko says 404 (unknown or deleted)."""
        try:
            response = self._request(
                "GET", f"{path}/{_checked_id(record_id)}", params=[("q[]", "archived_at:*")], what=f"{what} {record_id}"
            )
        except SourceNotFound:
            return None
        return self._record(response)

    def update_patient(self, patient_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """`PATCH /patients/{id}` with only `fields`; returns the updated record. Note: bumps `updated_at`."""
        path = f"/patients/{_checked_id(patient_id)}"
        response = self._request("PATCH", path, json_body=dict(fields), what=f"patient {patient_id}")
        return self._record(response)

    # -- errors --------------------------------------------------------------------------------------------

    def _transport_failure(self, exc: httpx.TransportError) -> SourceError:
        """For a shard Cliniko does not have, the host cannot exist: that is the key's ending or the shard
        setting, not the internet (and retrying cannot help)."""
        host = urlsplit(self.base_url).hostname or self.base_url
        own_host = self.base_url == f"https://api.{self.shard}.cliniko.com/v1"
        if name_lookup_failure(exc) == "no_such_host" and own_host and self.shard not in KNOWN_SHARDS:
            return NoSuchShard(
                f"There is no Cliniko server for the shard '{self.shard}' ({host} does not exist). Check the shard: "
                "it is the ending of the API key (such as -au2), or the Cliniko shard setting for a key without one; "
                f"Cliniko's regions are {', '.join(KNOWN_SHARDS)}. (Or this computer is offline.)",
                service=SERVICE,
            )
        if name_lookup_failure(exc) is not None:
            where = "the shard and " if own_host else "the Cliniko address setting and "
            return SourceUnavailable.unreachable(
                SERVICE, f"the server {host} could not be found. Check {where}this computer's internet connection."
            )
        return super()._transport_failure(exc)

    def _redirect_error(self, status: int) -> SourceConfigError:
        return SourceConfigError(
            f"Cliniko redirected the request (HTTP {status}) instead of answering. This usually means the "
            "API key's region (the shard at the end of the key) is wrong or the account has moved; check "
            "the key in Connections.",
            service=SERVICE,
            status=status,
        )

    def _rejection(self, response: httpx.Response) -> SourceRequestRejected:
        """Cliniko's own words for a 4xx: `message` plus the per-field `errors` (422), or the plain text."""
        status = response.status_code
        text = response.text
        detail = ""
        field_errors: dict[str, str] = {}
        try:
            body = json.loads(response.content)
        except ValueError:
            body = None
        if isinstance(body, dict):
            message = str(body.get("message") or "").strip()
            errors = body.get("errors")
            if isinstance(errors, Mapping):
                field_errors = {
                    str(k)[:100]: self._excerpt(describe_validation_errors(v), FIELD_ERROR_LIMIT)
                    for k, v in errors.items()
                }
            described = describe_validation_errors(errors)
            detail = f"{message} — {described}" if message and described else (message or described)
        detail = self._excerpt(detail or text, REJECTION_LIMIT)
        prefix = f"Cliniko rejected the request (HTTP {status})"
        message = f"{prefix}: {detail}" if detail else f"{prefix}."
        return SourceRequestRejected(message, service=SERVICE, status=status, field_errors=field_errors)

    def _rate_limit_wait(self, response: httpx.Response) -> float | None:
        """Seconds until Cliniko's X-RateLimit-Reset (UNIX seconds), measured against the response's own Date
        so a wrong PC clock does not matter; falls back to Retry-After; None when neither is usable."""
        reset = float_header(response.headers.get("X-RateLimit-Reset"))
        if reset is not None:
            date = parse_http_date(response.headers.get("Date"))
            now = date.timestamp() if date is not None else self._wall_clock()
            wait = reset - now
            if -MAX_PLAUSIBLE_WAIT_S < wait <= MAX_PLAUSIBLE_WAIT_S:
                return max(0.0, wait)
        return retry_after(response, self._wall_clock)

    # -- responses -------------------------------------------------------------------------------------------

    def _record(self, response: httpx.Response) -> dict[str, Any]:
        body = self._json(response)
        if not isinstance(body, dict):
            raise SourceBadResponse.malformed(SERVICE, "a record was not a JSON object.", self._excerpt(response.text))
        return _normalise_id(body)

    def _parse_page(self, response: httpx.Response, key: str) -> PageOf:
        body = self._json(response)
        records = body.get(key) if isinstance(body, dict) else None
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise SourceBadResponse.malformed(
                SERVICE, f"a page of the list had no '{key}' records.", self._excerpt(response.text)
            )
        links = body.get("links")
        next_url = links.get("next") if isinstance(links, dict) else None
        if next_url is not None and not isinstance(next_url, str):
            raise SourceBadResponse.malformed(SERVICE, "a page's 'next' link was not a web address.")
        total = body.get("total_entries")
        return PageOf(
            # Every record, even one without a usable id: the sync rejects that one by itself, with a message in
            # its history, rather than it vanishing here.
            records=[_normalise_id(r) for r in records],
            total_entries=total if isinstance(total, int) and not isinstance(total, bool) else None,
            url=str(response.request.url),
            next_url=next_url or None,
        )

    def _checked_next(self, next_url: str | None, seen: set[str]) -> str | None:
        if next_url is None:
            return None
        if not same_origin(next_url, self.base_url):
            raise SourceBadResponse.malformed(
                SERVICE,
                f"a page linked to the next page on another server ({host_of(next_url)}). ClinicSync stopped "
                "rather than send the API key there.",
            )
        if str(httpx.URL(next_url)) in seen:
            raise SourceBadResponse.malformed(SERVICE, "a page linked back to a page already read.")
        return next_url

    def _records(self, path: str, query: list[tuple[str, str]]) -> Iterator[dict[str, Any]]:
        for page in self.iter_pages(path, query):
            yield from page.records

    def _changed_records(
        self, path: str, filters: list[tuple[str, str]], cursor: datetime | None, order: str = UPDATED_AT
    ) -> Iterator[dict[str, Any]]:
        """Records updated at or after `cursor`, by keyset paging on `order` ascending, then id (oldest change first
        by default; another field, such as an invoice's `issue_date`, lists them in that field's order).

        Page-offset paging loses records: an edit moves a record to the end of a list sorted by `updated_at` (or,
        for `issue_date`, to wherever its new date sorts), so the next page's first records slide onto a page
        already read; a deletion does the same in any order. Instead each page after the first is asked for as
        "`order` at or after the last value seen", skipping the ids already yielded at exactly that value. A record
        that moves behind that boundary during the read is not listed again (an `updated_at` edit never does; an
        invoice re-dated to a date already passed does: the invoices stream reads what changed during its first
        read once more). Records sharing one value never come in a fixed order across pages unless the id breaks
        the tie, so the id is always the second sort key, and a whole page at one value goes on by keyset on the id
        within that value (`q[]=order:>=V`, `q[]=order:<=V`, `q[]=id:>LAST`), then past it (`q[]=order:>V`). In
        another order, records without a value have a pass of their own after it, by `updated_at`: a restart's `>=`
        filter would never list them. Progress counts against every pass's records together.
        """
        if order != UPDATED_AT:
            dated = yield from self._keyset_records(path, [*filters, ("q[]", f"{order}:?")], cursor, order)
            undated = [*filters, ("q[]", f"{order}:!?")]
            yield from self._keyset_records(path, undated, cursor, UPDATED_AT, counted=dated or 0)
            return
        yield from self._keyset_records(path, filters, cursor, order)

    def _keyset_records(
        self, path: str, filters: list[tuple[str, str]], cursor: datetime | None, order: str, counted: int = 0
    ) -> Generator[dict[str, Any], None, int | None]:
        """`_changed_records` in one order, for records that all have a value in it. Returns the pass's total;
        `counted` is the total of the passes before it, added to the progress's."""
        by_update = order == UPDATED_AT
        narrowed = [*filters]
        if cursor is not None and not by_update:
            narrowed.append(("q[]", f"{UPDATED_AT}:>={format_cursor(cursor)}"))
        at: _Keyset | None = _Keyset(since=format_cursor(cursor) if cursor is not None and by_update else None)
        pass_total: int | None = None
        while at is not None:
            page = self._first_page(path, [*narrowed, *at.query(order)])
            # Progress counts against the whole pass, not the rest of it that a restarted listing reports.
            pass_total = page.total_entries if pass_total is None else pass_total
            self.last_total_entries = None if pass_total is None else counted + pass_total
            if not by_update:  # a wrong order would make the caller's "everything before this is listed" false
                _check_order(page.records, order, at.since)
            if at.past and page.records and _order_value(page.records[0], order) == at.since:
                raise SourceBadResponse.malformed(  # listed past a value again: paging on would never end
                    SERVICE, f"a page of the list was not in the order asked for ({order}); the sync stopped."
                )
            yield from (record for record in page.records if _boundary_key(record) not in at.seen)
            if page.next_url is None:  # the rest is read; within one value, every record at it is
                at = _Keyset(since=at.since, past=True) if at.tie_id is not None else None
                continue
            went_on = _next_keyset(page.records, order, at)
            if went_on == at:
                raise SourceBadResponse.malformed(
                    SERVICE, "a page of the list repeated the one before it; the sync stopped rather than loop."
                )
            at = went_on
        return pass_total

    def _first_page(self, path: str, query: list[tuple[str, str]]) -> PageOf:
        """One page: every page of a keyset listing is the first of its own query."""
        pages = self.iter_pages(path, query)
        try:
            return next(pages)
        finally:
            pages.close()


@dataclass(frozen=True)
class _Keyset:
    """Where a keyset listing goes on: from the value `since` (past it only, when `past`), skipping the ids `seen`
    already at exactly that value; or, within a value too many records share for a page (`tie_id` set), the records
    at `since` whose id is above `tie_id`."""

    since: str | None = None
    past: bool = False
    seen: frozenset[str | None] = frozenset()
    tie_id: int | None = None

    def query(self, order: str) -> list[tuple[str, str]]:
        query = []
        if self.since is not None:
            query.append(("q[]", f"{order}:{'>' if self.past else '>='}{self.since}"))
        if self.tie_id is not None:  # Date and DateTime filters both have `<=` (DateTime has no `=`)
            query += [("q[]", f"{order}:<={self.since}"), ("q[]", f"id:>{self.tie_id}")]
        # The id breaks ties: without it records sharing a value may come in another order on each page.
        query.append(("sort", f"{order}:asc,id:asc"))
        return query


def _next_keyset(records: list[dict[str, Any]], order: str, at: _Keyset) -> _Keyset | None:
    """Where the listing goes on after a page that has a next one (None: it cannot, a record has no value)."""
    last = _order_value(records[-1], order) if records else None
    if last is None:
        return None
    if at.tie_id is not None or _order_value(records[0], order) == last:  # the page is all at one value
        tie_id = _last_id(records)
        if tie_id is None or (at.tie_id is not None and tie_id <= at.tie_id):
            raise SourceBadResponse.malformed(
                SERVICE, "a page of the list was not in the order asked for (id); the sync stopped rather than guess."
            )
        return _Keyset(since=last, tie_id=tie_id)
    return _Keyset(since=last, seen=frozenset(_boundary_key(r) for r in records if _order_value(r, order) == last))


def _last_id(records: list[dict[str, Any]]) -> int | None:
    """The highest record id on a page, as a number (ids are ordered as numbers)."""
    ids = [int(key) for record in records if (key := _boundary_key(record)) is not None and _ID.match(key)]
    return max(ids, default=None)


# -- module helpers ------------------------------------------------------------------------------------------


def is_record_id(text: str) -> bool:
    """True for a Cliniko record id (digits only, as Cliniko issues them)."""
    return bool(_ID.match(str(text).strip()))


def _checked_id(record_id: str) -> str:
    """Ids go into URL paths, so only digits are accepted."""
    text = str(record_id).strip()
    if not _ID.match(text):
        raise ValueError(f"not a Cliniko id: {record_id!r}")
    return text


def _order_value(record: Mapping[str, Any], order: str) -> str | None:
    value = record.get(order)
    return value if isinstance(value, str) else None


def _check_order(records: list[dict[str, Any]], order: str, since: str | None) -> None:
    """Refuse a page not in ascending `order`, with a record without a value, or reaching back before the
    listing's restart point: the caller relies on everything before a value being listed once the value is met."""
    values = [_order_value(record, order) for record in records]
    dated = [value for value in values if value is not None]
    in_order = (
        len(dated) == len(values) and dated == sorted(dated) and (since is None or not dated or dated[0] >= since)
    )
    if not in_order:
        raise SourceBadResponse.malformed(
            SERVICE, f"a page of the list was not in the order asked for ({order}); the sync stopped rather than guess."
        )


def _boundary_key(record: Mapping[str, Any]) -> str | None:
    """A record's id for the keyset boundary: any id that is not text (a source may send anything) is None."""
    value = record.get("id")
    return value if isinstance(value, str) else None


def _normalise_id(record: dict[str, Any]) -> dict[str, Any]:
    """Ids are strings (64-bit ints lose precision elsewhere); old payloads used JSON numbers."""
    if isinstance(record.get("id"), int) and not isinstance(record.get("id"), bool):
        record["id"] = str(record["id"])
    return record
