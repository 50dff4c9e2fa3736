"""The HTTP base every source client (Cliniko, Cal.com) is built on.

One request path for all of them: wait for the shared RequestBudget, send, classify transport failures, turn error
statuses into the SourceError family, retry what is transient under the app's RetryPolicy, and parse JSON. A
subclass says only what differs: its name, its headers, how its 4xx bodies read, how its rate-limit headers say
when to come back, and what a redirect means for it.

The API key never leaves this layer: messages are built from fixed text plus scrubbed excerpts, and no httpx
exception (which holds the request, and so the Authorization header) is ever chained onto a SourceError.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx

from clinicsync.retry import PERMANENT, RetryDecision, RetryPolicy, call_with_retries
from clinicsync.sources.errors import (
    EXCERPT_LIMIT,
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
    redact,
    scrubbed_excerpt,
)
from clinicsync.sources.http import ClosingClient, api_client
from clinicsync.sources.ratelimit import RequestBudget

log = logging.getLogger(__name__)

# A server's wait hint further away than this is treated as garbage (e.g. milliseconds instead of seconds).
MAX_PLAUSIBLE_WAIT_S = 3600.0

Params = Mapping[str, Any] | Sequence[tuple[str, Any]] | None


class SourceClient(ClosingClient):
    """Requests, retries, errors and JSON for one API key of one service. Thread-safe: one keep-alive
    httpx.Client and one RequestBudget, which several clients of the same allowance may share."""

    service: ClassVar[str] = "The source"
    # Appended to "could not connect." (e.g. which address to check).
    connect_hint: ClassVar[str] = "Check this computer's internet connection."

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str,
        headers: Mapping[str, str],
        auth: httpx.Auth | None = None,
        requests_per_minute: float | None,
        retry: RetryPolicy,
        timeout_s: float,
        transport: httpx.BaseTransport | None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], object] = time.sleep,
        budget: RequestBudget | None = None,
    ) -> None:
        self._api_key = api_key
        self.base_url = base_url
        self.retry = retry
        self._sleep = sleep
        self._wall_clock = wall_clock
        if budget is None:
            budget = RequestBudget(requests_per_minute or None, clock=clock, sleep=sleep, wall_clock=wall_clock)
        self.budget = budget
        self.last_response_date: datetime | None = None
        self._http = api_client(auth=auth, headers=headers, timeout_s=timeout_s, transport=transport)

    def server_date(self) -> datetime | None:
        """The `Date` header of the most recent response (aware UTC), or None before the first one."""
        return self.last_response_date

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
        headers: Mapping[str, str] | None = None,
        what: str = "the request",
    ) -> httpx.Response:
        """Send one API request with the budget, retries and error mapping; return a 2xx response."""
        url = path_or_url if "://" in path_or_url else self._url(path_or_url)

        def attempt() -> httpx.Response:
            return self._send_once(method, url, params, json_body, headers, what)

        def on_retry(attempt_no: int, exc: BaseException, delay: float) -> None:
            log.warning(
                "%s %s %s failed (%s); retry %d of %d in %.1f s",
                self.service,
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
                attempt, policy=self.retry, classify=classify, sleep=self._sleep, on_retry=on_retry
            )
        except SourceUnavailable as exc:
            tries = "once" if self.retry.max_attempts == 1 else f"{self.retry.max_attempts} times"
            final = SourceUnavailable(
                f"{exc.message} ClinicSync tried {tries}.", service=self.service, status=exc.status
            )
        except SourceRateLimited:
            final = SourceRateLimited.gave_up(self.service, self.retry.max_attempts)
        raise final  # outside the except block, so no chained exception (holding the request) comes along

    def _send_once(
        self,
        method: str,
        url: str,
        params: Sequence[tuple[str, str]] | None,
        json_body: Any,
        headers: Mapping[str, str] | None,
        what: str,
    ) -> httpx.Response:
        self.budget.acquire()
        sent_headers = dict(headers or {})
        if json_body is not None:
            sent_headers["Content-Type"] = "application/json"
        content = json.dumps(json_body).encode("utf-8") if json_body is not None else None
        failure: SourceError | None = None
        try:
            response = self._http.request(
                method, url, params=params or None, content=content, headers=sent_headers or None
            )
        except httpx.TimeoutException as exc:
            failure = SourceUnavailable.unreachable(self.service, self._timeout_reason(exc))
        except httpx.TransportError as exc:
            failure = self._transport_failure(exc)
        if failure is not None:
            raise failure  # raised here, not in the except block: the httpx error holds the auth header
        self._observe(response)
        if response.is_success:
            return response
        raise self._error_for(response, what)

    def _observe(self, response: httpx.Response) -> None:
        """Called for every response, success or not: keeps the server's clock (subclasses read more)."""
        date = parse_http_date(response.headers.get("Date"))
        if date is not None:
            self.last_response_date = date

    # -- errors ----------------------------------------------------------------------------------------------

    def _error_for(self, response: httpx.Response, what: str) -> SourceError:
        """Map a non-2xx response to the error a practice manager should see (or a retryable one)."""
        status = response.status_code
        if status == 401:
            return SourceAuthError.rejected_key(self.service, status)
        if status == 403:
            return SourcePermissionError.refused(self.service, what, status)
        if status == 404:
            return SourceNotFound.missing(self.service, what, status)
        if status == 429:
            hint = self._rate_limit_wait(response)
            if hint is not None:
                self.budget.pause_for(hint)  # every thread sharing the budget waits, not just this one
            return SourceRateLimited.limited(self.service, retry_after_s=hint)
        if status >= 500:
            return SourceUnavailable.unreachable(
                self.service,
                f"the {self.service} server had a problem (HTTP {status}).",
                status=status,
                retry_after_s=retry_after(response, self._wall_clock),
            )
        if 300 <= status < 400:
            return self._redirect_error(status)
        return self._rejection(response)

    def _redirect_error(self, status: int) -> SourceConfigError:
        return SourceConfigError(
            f"{self.service} redirected the request (HTTP {status}) instead of answering. Check the "
            f"{self.service} address in Connections.",
            service=self.service,
            status=status,
        )

    def _rejection(self, response: httpx.Response) -> SourceRequestRejected:
        """A 4xx in the service's own words; subclasses read their error bodies, this quotes the text."""
        status = response.status_code
        detail = self._excerpt(response.text, REJECTION_LIMIT)
        prefix = f"{self.service} rejected the request (HTTP {status})"
        return SourceRequestRejected(
            f"{prefix}: {detail}" if detail else f"{prefix}.", service=self.service, status=status
        )

    def _rate_limit_wait(self, response: httpx.Response) -> float | None:
        """Seconds a 429 asks us to wait; the default reads Retry-After."""
        return retry_after(response, self._wall_clock)

    def _timeout_reason(self, exc: httpx.TimeoutException) -> str:
        if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
            return "connecting timed out. Check this computer's internet connection."
        return f"{self.service} took too long to answer."

    def _transport_failure(self, exc: httpx.TransportError) -> SourceError:
        """No answer at all. A host name that does not resolve is named; a subclass may know better (a Cliniko
        shard that does not exist is a setting, not the internet)."""
        if name_lookup_failure(exc) is not None:
            host = urlsplit(self.base_url).hostname or self.base_url
            return SourceUnavailable.unreachable(
                self.service, f"the server {host} could not be found. {self.connect_hint}"
            )
        return SourceUnavailable.unreachable(self.service, self._transport_reason(exc))

    def _transport_reason(self, exc: httpx.TransportError) -> str:
        if isinstance(exc, httpx.ConnectError):
            return f"could not connect. {self.connect_hint}"
        if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
            return "the connection was interrupted."
        return "a network error occurred."

    # -- responses -------------------------------------------------------------------------------------------

    def _json(self, response: httpx.Response) -> Any:
        try:
            return json.loads(response.content)
        except ValueError:
            raise SourceBadResponse.malformed(
                self.service, "it was not valid JSON.", self._excerpt(response.text), status=response.status_code
            ) from None

    def _excerpt(self, text: str, limit: int = EXCERPT_LIMIT) -> str:
        return scrubbed_excerpt(text, self._api_key, limit=limit)

    def _scrub(self, text: str) -> str:
        return redact(text, self._api_key)


# -- helpers shared by the clients ---------------------------------------------------------------------------


# The resolver's "no such name" (Linux/macOS EAI_NONAME, EAI_NODATA; Windows WSAHOST_NOT_FOUND, WSANO_DATA) versus
# "could not ask" (EAI_AGAIN: no DNS server, i.e. most likely offline).
_NO_SUCH_HOST = {getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA") if hasattr(socket, name)} | {
    11001,
    11004,
}
_NO_SUCH_HOST_WORDS = ("name or service not known", "nodename nor servname", "no address associated", "getaddrinfo")


def name_lookup_failure(exc: BaseException) -> str | None:
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


def classify(exc: BaseException) -> RetryDecision:
    """429, 5xx, timeouts and connection failures are worth retrying; everything else is permanent."""
    if isinstance(exc, SourceRateLimited | SourceUnavailable):
        return RetryDecision(retry=True, hint_s=exc.retry_after_s)
    return PERMANENT


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


def float_header(value: str | None) -> float | None:
    """A numeric header value, or None when missing, unreadable, NaN or infinite."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def retry_after(response: httpx.Response, wall_clock: Callable[[], float]) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None when missing or unreadable."""
    value = response.headers.get("Retry-After")
    seconds = float_header(value)
    if seconds is None:
        when = parse_http_date(value)
        if when is None:
            return None
        seconds = when.timestamp() - wall_clock()
    if seconds > MAX_PLAUSIBLE_WAIT_S:
        return None
    return max(0.0, seconds)


def query_pairs(params: Params) -> list[tuple[str, str]]:
    """Params as ordered pairs; list values become repeated keys (Cliniko's `q[]` filters)."""
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


def host_of(url: str) -> str:
    return urlsplit(url).hostname or "an unknown address"
