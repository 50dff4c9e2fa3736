"""Cal.com API v2 client — for now only what the connection test needs: `GET /v2/me`.

See docs/calcom-api.md §1: `Authorization: Bearer <key>` (keys start with `cal_`, live ones `cal_live_`),
HTTPS only, base `https://api.cal.com/v2` (EU: `https://api.cal.eu/v2`; self-hosted: the separate API v2
app's own address, ending in `/v2`). `cal-api-version` is required on versioned endpoints and changes the
response shape when omitted; `/v2/me` declares none, so none is sent for it (CAL_API_VERSIONS says which
endpoint gets which). Like the Cliniko client, the key never reaches a log, an exception or another host.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from clinicsync.sources.errors import (
    SourceAuthError,
    SourceBadResponse,
    SourceConfigError,
    SourceError,
    SourceNotFound,
    SourcePermissionError,
    SourceRateLimited,
    SourceRequestRejected,
    SourceUnavailable,
    scrubbed_excerpt,
)
from clinicsync.sources.http import ClosingClient, api_client
from clinicsync.sources.urls import validate_base_url

SERVICE = "Cal.com"
CLOUD_BASE_URL = "https://api.cal.com/v2"
EU_BASE_URL = "https://api.cal.eu/v2"
KEY_PREFIX = "cal_"
LIVE_KEY_PREFIX = "cal_live_"

# Per-endpoint `cal-api-version` values (docs/calcom-api.md §1). None: the endpoint declares no version and
# must be called without the header.
CAL_API_VERSIONS: Mapping[str, str | None] = {
    "/me": None,
    "/bookings": "2024-08-13",
    "/event-types": "2024-06-14",
    "/schedules": "2024-06-11",
    "/slots": "2024-09-04",
}

# HTTP 498: Cal.com's answer to an expired managed-user access token (packages/platform/constants/api.ts).
_TOKEN_EXPIRED = 498


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


class CalcomClient(ClosingClient):
    """A Cal.com API v2 client for one key. Close it (or use `with`) to release its connection."""

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str | None = None,
        timeout_s: float = 15.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        api_key = (api_key or "").strip()
        if not api_key:
            raise SourceConfigError("No Cal.com API key is set. Add it in Connections.", service=SERVICE)
        self._api_key = api_key
        self.base_url = validate_base_url(base_url or CLOUD_BASE_URL, SERVICE)
        self._http = api_client(
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            timeout_s=timeout_s,
            transport=transport,
        )

    def __repr__(self) -> str:  # never show the key
        return f"CalcomClient(base_url={self.base_url!r})"

    def get_me(self) -> CalcomUser:
        """The user the key belongs to: the cheapest authenticated read Cal.com offers."""
        body = self._get("/me", what="your Cal.com profile")
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict) or data.get("id") in (None, ""):
            raise SourceBadResponse.malformed(SERVICE, "the profile had no user id.", self._excerpt(json.dumps(body)))
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

    # -- requests --------------------------------------------------------------------------------------------

    def _get(self, path: str, *, what: str) -> Any:
        headers = {}
        version = CAL_API_VERSIONS.get(path)
        if version is not None:
            headers["cal-api-version"] = version
        failure: SourceError | None = None
        try:
            response = self._http.get(self.base_url + path, headers=headers)
        except httpx.TimeoutException:
            failure = SourceUnavailable.unreachable(SERVICE, "Cal.com took too long to answer.")
        except httpx.TransportError as exc:
            failure = SourceUnavailable.unreachable(SERVICE, _transport_reason(exc))
        if failure is not None:
            raise failure  # raised outside the except block: the httpx error holds the Authorization header
        if not response.is_success:
            raise self._error_for(response, what)
        try:
            return json.loads(response.content)
        except ValueError:
            raise SourceBadResponse.malformed(
                SERVICE, "it was not valid JSON.", self._excerpt(response.text), status=response.status_code
            ) from None

    def _error_for(self, response: httpx.Response, what: str) -> SourceError:
        status = response.status_code
        if status in (401, _TOKEN_EXPIRED):
            return SourceAuthError.rejected_key(SERVICE, status)
        if status == 403:
            return SourcePermissionError.refused(SERVICE, what, status)
        if status == 404:
            return SourceNotFound.missing(SERVICE, what, status)
        if status == 429:
            return SourceRateLimited.limited(SERVICE)
        if status >= 500:
            return SourceUnavailable.unreachable(
                SERVICE, f"the Cal.com server had a problem (HTTP {status}).", status=status
            )
        if 300 <= status < 400:
            return SourceConfigError(
                f"Cal.com redirected the request (HTTP {status}) instead of answering. Check the Cal.com "
                "address in Connections: it should be the API's address, ending in /v2.",
                service=SERVICE,
                status=status,
            )
        detail = self._error_message(response)
        prefix = f"Cal.com rejected the request (HTTP {status})"
        return SourceRequestRejected(f"{prefix}: {detail}" if detail else f"{prefix}.", service=SERVICE, status=status)

    def _error_message(self, response: httpx.Response) -> str:
        """Cal.com's own words: `{"status": "error", "error": {"code", "message"}}` (calcom-api.md §7)."""
        try:
            body = json.loads(response.content)
        except ValueError:
            return self._excerpt(response.text)
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        return self._excerpt(str(message)) if message else ""

    def _excerpt(self, text: str) -> str:
        return scrubbed_excerpt(text, self._api_key)


def _transport_reason(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "could not connect. Check this computer's internet connection and the Cal.com address."
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return "the connection was interrupted."
    return "a network error occurred."
