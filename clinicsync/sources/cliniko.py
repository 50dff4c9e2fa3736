"""Cliniko REST API v1 client: auth, shard routing, pagination, incremental reads, rate limits and retries.

See docs/cliniko-api.md for the facts this follows. In short: HTTP Basic with the key as user name, a
User-Agent naming the app and a contact email, `https://api.{shard}.cliniko.com/v1`, 200 requests a minute
per user (429 + X-RateLimit-Reset as UNIX seconds), `links.next` pagination, `q[]` filters, and archived
records hidden unless asked for with `q[]=archived_at:*`.

The client is thread-safe (one keep-alive httpx.Client, one shared RequestBudget) and never lets the API key
reach a log, an exception message or another host.
"""

from __future__ import annotations

import json
import logging
import math
import re
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from clinicsync import wording
from clinicsync.sources.errors import (
    EXCERPT_LIMIT,
    FIELD_ERROR_LIMIT,
    REJECTION_LIMIT,
    SourceAuthError,
    SourceBadResponse,
    SourceConfigError,
    SourceError,
    SourceNotFound,
    SourcePermissionError,
    SourceRateLimited,
    SourceRequestRejected,
    SourceUnavailable,
    describe_validation_errors,
    redact,
    scrubbed_excerpt,
)
from clinicsync.sources.http import ClosingClient, api_client
from clinicsync.sources.ratelimit import RequestBudget
from clinicsync.sources.urls import same_origin, validate_base_url
from clinicsync.sync.retry import PERMANENT, RetryDecision, RetryPolicy, call_with_retries

log = logging.getLogger(__name__)

SERVICE = "Cliniko"
APP_NAME = "ClinicSync"
DEFAULT_SHARD = "au1"
PER_PAGE = 100
# Documented Cliniko shards (docs/cliniko-api.md §1); a host for anything else will not exist.
KNOWN_SHARDS: tuple[str, ...] = ("au1", "au2", "au3", "au4", "ca1", "uk1", "uk2", "eu1")

_KEY_SHARD = re.compile(r"-([a-z]{2}\d{1,2})$", re.IGNORECASE)
_SHARD = re.compile(r"^[a-z]{2}\d{1,2}$")
_EMAIL = re.compile(r"^[^@\s()<>,;:\"\[\]]+@[^@\s()<>,;:\"\[\]]+\.[a-z]{2,}$", re.IGNORECASE)
_ID = re.compile(r"^\d{1,20}$")
# A rate-limit reset further away than this is treated as garbage (e.g. milliseconds instead of seconds).
_MAX_PLAUSIBLE_RESET_S = 3600.0

Params = Mapping[str, Any] | Sequence[tuple[str, Any]] | None


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
    # The page's last `updated_at` as sent, even if that record was unusable and left out of `records`:
    # keyset paging restarts from it.
    last_updated_at: str | None = None


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


def parse_http_date(value: str | None) -> datetime | None:
    """An HTTP Date header as an aware UTC datetime, or None when missing or unreadable."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _float_header(value: str | None) -> float | None:
    """A numeric header value, or None when missing, unreadable, NaN or infinite."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


class ClinikoClient(ClosingClient):
    """A Cliniko API client for one API key. Close it (or use `with`) to release its connections."""

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
        self._api_key = api_key
        self.shard = shard_for_key(api_key, shard)
        self.base_url = validate_base_url(base_url, SERVICE) if base_url else f"https://api.{self.shard}.cliniko.com/v1"
        self.retry = retry
        self._sleep = sleep
        self._wall_clock = wall_clock
        if budget is None:
            budget = RequestBudget(requests_per_minute or None, clock=clock, sleep=sleep, wall_clock=wall_clock)
        self.budget = budget
        self.last_response_date: datetime | None = None
        self.last_total_entries: int | None = None
        self._http = api_client(
            auth=httpx.BasicAuth(api_key, ""),
            headers={"User-Agent": f"{APP_NAME} ({contact_email})", "Accept": "application/json"},
            timeout_s=timeout_s,
            transport=transport,
        )

    def __repr__(self) -> str:  # never show the key
        return f"ClinikoClient(shard={self.shard!r}, base_url={self.base_url!r})"

    # -- public API ------------------------------------------------------------------------------------------

    def server_date(self) -> datetime | None:
        """The `Date` header of the most recent response (aware UTC), or None before the first one."""
        return self.last_response_date

    def probe(self) -> datetime:
        """One cheap request; returns Cliniko's clock, which a run uses as the base of its next cursor.

        Using the server's clock rather than this PC's keeps the cursor right when the PC's clock is off.
        """
        response = self._request("GET", "/settings/public", what="the account's public settings")
        date = parse_http_date(response.headers.get("Date"))
        if date is None:
            raise SourceBadResponse.malformed(SERVICE, "the response had no valid Date header.")
        return date

    def get_account(self) -> ClinikoAccount:
        """The account behind the key (`GET /settings/public`), which works for every user role."""
        body = self._json(self._request("GET", "/settings/public", what="the account's public settings"))
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
        query = _query_pairs(params)
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
        """The archived pass: `q[]=archived_at:*` makes Cliniko include archived patients, which the normal
        list hides. Callers should look at each record's `archived_at` (the filter means "any value")."""
        yield from self._changed_records("/patients", [("q[]", "archived_at:*")], cursor)

    def get_patient(self, patient_id: str) -> dict[str, Any] | None:
        """One patient, archived or not; None when Cliniko says 404 (unknown or deleted)."""
        path = f"/patients/{_checked_id(patient_id)}"
        try:
            response = self._request("GET", path, params=[("q[]", "archived_at:*")], what=f"patient {patient_id}")
        except SourceNotFound:
            return None
        return self._record(response)

    def update_patient(self, patient_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """`PATCH /patients/{id}` with only `fields`; returns the updated record. Note: bumps `updated_at`."""
        path = f"/patients/{_checked_id(patient_id)}"
        response = self._request("PATCH", path, json_body=dict(fields), what=f"patient {patient_id}")
        return self._record(response)

    # -- requests --------------------------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return self.base_url + "/" + path.lstrip("/")

    def _request(
        self,
        method: str,
        path_or_url: str,
        *,
        params: Sequence[tuple[str, str]] | None = None,
        json_body: Any = None,
        what: str = "the request",
    ) -> httpx.Response:
        """Send one API request with the budget, retries and error mapping; return a 2xx response."""
        url = path_or_url if "://" in path_or_url else self._url(path_or_url)

        def attempt() -> httpx.Response:
            return self._send_once(method, url, params, json_body, what)

        def on_retry(attempt_no: int, exc: BaseException, delay: float) -> None:
            log.warning(
                "Cliniko %s %s failed (%s); retry %d of %d in %.1f s",
                method,
                urlsplit(url).path,
                exc,
                attempt_no,
                self.retry.max_attempts - 1,
                delay,
            )

        final: SourceError
        try:
            return call_with_retries(
                attempt, policy=self.retry, classify=_classify, sleep=self._sleep, on_retry=on_retry
            )
        except SourceUnavailable as exc:
            tries = "once" if self.retry.max_attempts == 1 else f"{self.retry.max_attempts} times"
            final = SourceUnavailable(f"{exc.message} ClinicSync tried {tries}.", service=SERVICE, status=exc.status)
        except SourceRateLimited:
            final = SourceRateLimited.gave_up(SERVICE, self.retry.max_attempts)
        raise final  # outside the except block, so no chained exception (holding the request) comes along

    def _send_once(
        self, method: str, url: str, params: Sequence[tuple[str, str]] | None, json_body: Any, what: str
    ) -> httpx.Response:
        self.budget.acquire()
        headers = {"Content-Type": "application/json"} if json_body is not None else None
        content = json.dumps(json_body).encode("utf-8") if json_body is not None else None
        failure: SourceError | None = None
        try:
            response = self._http.request(method, url, params=params or None, content=content, headers=headers)
        except httpx.TimeoutException as exc:
            failure = SourceUnavailable.unreachable(SERVICE, _timeout_reason(exc))
        except httpx.TransportError as exc:
            failure = self._transport_failure(exc)
        if failure is not None:
            raise failure  # raised here, not in the except block: the httpx error holds the auth header
        date = parse_http_date(response.headers.get("Date"))
        if date is not None:
            self.last_response_date = date
        if response.is_success:
            return response
        raise self._error_for(response, what)

    def _transport_failure(self, exc: httpx.TransportError) -> SourceError:
        """No answer. A name that does not resolve says which host; for a shard Cliniko does not have, that is the
        key's ending or the shard setting, not the internet (and retrying cannot help)."""
        lookup = _name_lookup_failure(exc)
        if lookup is None:
            return SourceUnavailable.unreachable(SERVICE, _transport_reason(exc))
        host = urlsplit(self.base_url).hostname or self.base_url
        own_host = self.base_url == f"https://api.{self.shard}.cliniko.com/v1"
        if lookup == "no_such_host" and own_host and self.shard not in KNOWN_SHARDS:
            return NoSuchShard(
                f"There is no Cliniko server for the shard '{self.shard}' ({host} does not exist). Check the shard: "
                "it is the ending of the API key (such as -au2), or the Cliniko shard setting for a key without one; "
                f"Cliniko's regions are {', '.join(KNOWN_SHARDS)}. (Or this computer is offline.)",
                service=SERVICE,
            )
        where = "the shard and " if own_host else "the Cliniko address setting and "
        return SourceUnavailable.unreachable(
            SERVICE,
            f"the server {host} could not be found. Check {where}this computer's internet connection.",
        )

    def _error_for(self, response: httpx.Response, what: str) -> SourceError:
        """Map a non-2xx response to the error a practice manager should see (or a retryable one)."""
        status = response.status_code
        if status == 401:
            return SourceAuthError.rejected_key(SERVICE, status)
        if status == 403:
            return SourcePermissionError.refused(SERVICE, what, status)
        if status == 404:
            return SourceNotFound.missing(SERVICE, what, status)
        if status == 429:
            hint = self._rate_limit_wait(response)
            if hint is not None:
                self.budget.pause_for(hint)  # every thread sharing the budget waits, not just this one
            return SourceRateLimited.limited(SERVICE, retry_after_s=hint)
        if status >= 500:
            return SourceUnavailable.unreachable(
                SERVICE,
                f"the Cliniko server had a problem (HTTP {status}).",
                status=status,
                retry_after_s=_retry_after(response, self._wall_clock),
            )
        if 300 <= status < 400:
            return SourceConfigError(
                f"Cliniko redirected the request (HTTP {status}) instead of answering. This usually means the "
                "API key's region (the shard at the end of the key) is wrong or the account has moved; check "
                "the key in Connections.",
                service=SERVICE,
                status=status,
            )
        return self._rejection(response)

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
        reset = _float_header(response.headers.get("X-RateLimit-Reset"))
        if reset is not None:
            date = parse_http_date(response.headers.get("Date"))
            now = date.timestamp() if date is not None else self._wall_clock()
            wait = reset - now
            if -_MAX_PLAUSIBLE_RESET_S < wait <= _MAX_PLAUSIBLE_RESET_S:
                return max(0.0, wait)
        return _retry_after(response, self._wall_clock)

    # -- responses -------------------------------------------------------------------------------------------

    def _json(self, response: httpx.Response) -> Any:
        try:
            return json.loads(response.content)
        except ValueError:
            raise SourceBadResponse.malformed(
                SERVICE, "it was not valid JSON.", self._excerpt(response.text), status=response.status_code
            ) from None

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
        last = records[-1].get("updated_at") if records else None
        usable = [_normalise_id(r) for r in records if _usable_id(r.get("id"))]
        if len(usable) < len(records):  # nothing can be matched or linked without an id: skip it, keep the rest
            log.warning(
                "Cliniko sent %d %s record(s) without a usable id on %s; they were skipped",
                len(records) - len(usable),
                key,
                response.request.url.path,
            )
        return PageOf(
            records=usable,
            total_entries=total if isinstance(total, int) and not isinstance(total, bool) else None,
            url=str(response.request.url),
            next_url=next_url or None,
            last_updated_at=last if isinstance(last, str) else None,
        )

    def _checked_next(self, next_url: str | None, seen: set[str]) -> str | None:
        if next_url is None:
            return None
        if not same_origin(next_url, self.base_url):
            raise SourceBadResponse.malformed(
                SERVICE,
                f"a page linked to the next page on another server ({_host_of(next_url)}). ClinicSync stopped "
                "rather than send the API key there.",
            )
        if str(httpx.URL(next_url)) in seen:
            raise SourceBadResponse.malformed(SERVICE, "a page linked back to a page already read.")
        return next_url

    def _records(self, path: str, query: list[tuple[str, str]]) -> Iterator[dict[str, Any]]:
        for page in self.iter_pages(path, query):
            yield from page.records

    def _changed_records(
        self, path: str, filters: list[tuple[str, str]], cursor: datetime | None
    ) -> Iterator[dict[str, Any]]:
        """Records updated at or after `cursor`, oldest change first, by keyset paging on `updated_at`.

        Page-offset paging over a list sorted by `updated_at` loses records: an edit moves a record to the end,
        so the next page's first records slide onto a page already read. Instead each page after the first is
        asked for as "updated at or after the last timestamp seen", skipping the ids already yielded at exactly
        that timestamp. Edits only move records later, so nothing can slide behind the boundary. Only when a
        whole page shares one timestamp (a bulk import) does it follow `links.next` as offset paging.
        """
        since = format_cursor(cursor) if cursor is not None else None
        boundary: set[str] = set()  # ids already yielded whose updated_at equals `since`
        pass_total: int | None = None
        while True:
            query = [*filters]
            if since is not None:
                query.append(("q[]", f"updated_at:>={since}"))
            query.append(("sort", "updated_at:asc"))
            restart_at: str | None = None
            for page in self.iter_pages(path, query):
                # Progress counts against the whole pass, not the rest of it that a restarted listing reports.
                pass_total = page.total_entries if pass_total is None else pass_total
                self.last_total_entries = pass_total
                yield from (record for record in page.records if record["id"] not in boundary)
                last = page.last_updated_at
                if page.next_url is None or last is None:
                    return
                if last != since:
                    restart_at = last
                    boundary = {r["id"] for r in page.records if r.get("updated_at") == last}
                    break
                boundary.update(record["id"] for record in page.records)  # a page all at one timestamp
            if restart_at is None:
                return
            since = restart_at

    def _excerpt(self, text: str, limit: int = EXCERPT_LIMIT) -> str:
        return scrubbed_excerpt(text, self._api_key, limit=limit)

    def _scrub(self, text: str) -> str:
        return redact(text, self._api_key)


# -- module helpers ------------------------------------------------------------------------------------------


def _classify(exc: BaseException) -> RetryDecision:
    """429, 5xx, timeouts and connection failures are worth retrying; everything else is permanent."""
    if isinstance(exc, SourceRateLimited | SourceUnavailable):
        return RetryDecision(retry=True, hint_s=exc.retry_after_s)
    return PERMANENT


def _retry_after(response: httpx.Response, wall_clock: Callable[[], float]) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None when missing or unreadable."""
    value = response.headers.get("Retry-After")
    seconds = _float_header(value)
    if seconds is None:
        when = parse_http_date(value)
        if when is None:
            return None
        seconds = when.timestamp() - wall_clock()
    if seconds > _MAX_PLAUSIBLE_RESET_S:
        return None
    return max(0.0, seconds)


def _timeout_reason(exc: httpx.TimeoutException) -> str:
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return "connecting timed out. Check this computer's internet connection."
    return "Cliniko took too long to answer."


# The resolver's "no such name" (Linux/macOS EAI_NONAME, EAI_NODATA; Windows WSAHOST_NOT_FOUND, WSANO_DATA) versus
# "could not ask" (EAI_AGAIN: no DNS server, i.e. most likely offline).
_NO_SUCH_HOST = {getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA") if hasattr(socket, name)} | {
    11001,
    11004,
}
_NO_SUCH_HOST_WORDS = ("name or service not known", "nodename nor servname", "no address associated", "getaddrinfo")


def _name_lookup_failure(exc: BaseException) -> str | None:
    """ "no_such_host" or "lookup_failed" when a connection failed because the host name did not resolve."""
    cause: BaseException | None = exc
    for _ in range(5):  # httpx → httpcore → socket.gaierror
        if cause is None:
            break
        if isinstance(cause, socket.gaierror):
            return "no_such_host" if cause.errno in _NO_SUCH_HOST else "lookup_failed"
        cause = cause.__cause__ or cause.__context__
    text = str(exc).casefold()
    if isinstance(exc, httpx.ConnectError) and any(words in text for words in _NO_SUCH_HOST_WORDS):
        return "no_such_host"
    return None


def _transport_reason(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "could not connect. Check this computer's internet connection."
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return "the connection was interrupted."
    return "a network error occurred."


def _query_pairs(params: Params) -> list[tuple[str, str]]:
    """Params as ordered pairs; list values become repeated keys (how Cliniko's `q[]` filters are sent)."""
    if params is None:
        return []
    items = params.items() if isinstance(params, Mapping) else params
    pairs: list[tuple[str, str]] = []
    for name, value in items:
        if isinstance(value, list | tuple):
            pairs.extend((name, str(v)) for v in value)
        else:
            pairs.append((name, str(value)))
    return pairs


def is_record_id(text: str) -> bool:
    """True for a Cliniko record id (digits only, as Cliniko issues them)."""
    return bool(_ID.match(str(text).strip()))


def _checked_id(record_id: str) -> str:
    """Ids go into URL paths, so only digits are accepted."""
    text = str(record_id).strip()
    if not _ID.match(text):
        raise ValueError(f"not a Cliniko id: {record_id!r}")
    return text


def _usable_id(value: object) -> bool:
    return (isinstance(value, str) and value.strip() != "") or (isinstance(value, int) and not isinstance(value, bool))


def _normalise_id(record: dict[str, Any]) -> dict[str, Any]:
    """Ids are strings (64-bit ints lose precision elsewhere); old payloads used JSON numbers."""
    if isinstance(record.get("id"), int) and not isinstance(record.get("id"), bool):
        record["id"] = str(record["id"])
    return record


def _host_of(url: str) -> str:
    return urlsplit(url).hostname or "an unknown address"
