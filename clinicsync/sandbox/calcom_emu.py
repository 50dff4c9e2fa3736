"""An in-memory emulator of Cal.com's API v2 (bookings, event types, schedules, teams, webhooks, me) behind
`server.serve`, with the data of `calcom_seed`.

It follows Cal.com's OpenAPI document (tests/integration/test_calcom_emulator_spec.py checks it against a trimmed
copy in tests/specs/calcom.json) and, where the document is silent or wrong, Cal.com's code as
docs/calcom-api.md reports it; docs/sandbox.md lists its own choices.
"""

from __future__ import annotations

import copy
import json
import math
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from typing import Any
from urllib.parse import urlencode

from clinicsync import rate_limits
from clinicsync.sandbox import calcom_seed
from clinicsync.sandbox.calcom_seed import OWNER_ID, CalcomWorld, fmt_instant, stripe_app
from clinicsync.sandbox.http import Admission, RateLimit, Request, Response

API_PREFIX = "/v2"
# Underscores after `cal_test_`: never a 16+ character alphanumeric run, so no scanner takes it for a real key.
DEFAULT_API_KEY = "cal_test_sandbox_clinic_a"
RATE_LIMIT_PER_MINUTE = rate_limits.CALCOM_PER_MINUTE
BLOCK_SECONDS = float(rate_limits.CALCOM_BLOCK_SECONDS)
MAX_TAKE = 250
# The `cal-api-version` each versioned family requires (the spec's header defaults).
VERSIONS = {"bookings": "2024-08-13", "event-types": "2024-06-14", "schedules": "2024-06-11"}
STATUS_FILTERS = ("upcoming", "recurring", "past", "cancelled", "unconfirmed")
SORTS = (
    ("sortStart", "startTime"),
    ("sortEnd", "endTime"),
    ("sortCreated", "createdAt"),
    ("sortUpdatedAt", "updatedAt"),
)
DATE_FILTERS = (
    ("afterStart", "startTime", ">="),
    ("beforeEnd", "endTime", "<="),
    ("afterCreatedAt", "createdAt", ">="),
    ("beforeCreatedAt", "createdAt", "<="),
    ("afterUpdatedAt", "updatedAt", ">="),
    ("beforeUpdatedAt", "updatedAt", "<="),
)
WEBHOOK_TRIGGERS = (
    "BOOKING_CREATED", "BOOKING_PAYMENT_INITIATED", "BOOKING_PAID", "BOOKING_RESCHEDULED", "BOOKING_REQUESTED",
    "BOOKING_CANCELLED", "BOOKING_REJECTED", "BOOKING_NO_SHOW_UPDATED", "FORM_SUBMITTED", "MEETING_ENDED",
    "MEETING_STARTED", "RECORDING_READY", "INSTANT_MEETING", "RECORDING_TRANSCRIPTION_GENERATED", "OOO_CREATED",
    "AFTER_HOSTS_CAL_VIDEO_NO_SHOW", "AFTER_GUESTS_CAL_VIDEO_NO_SHOW", "FORM_SUBMITTED_NO_EVENT",
    "ROUTING_FORM_FALLBACK_HIT", "DELEGATION_CREDENTIAL_ERROR", "WRONG_ASSIGNMENT_REPORT",
)  # fmt: skip

MSG_THROTTLED = "CustomThrottlerGuard - Too many requests. Please try again later."
MSG_UNAUTHORISED = "ApiAuthGuard - Invalid API Key"  # the sandbox's wording
_REASONS = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 409: "Conflict", 429: "Too Many Requests"}
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:?\d{2})?)?$")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
_DISPLAY_EMAIL = re.compile(r"\+[a-zA-Z0-9]{25}")


class ApiError(Exception):
    """Ends a request with Cal.com's error envelope. `details` is what class-validator or the exception said."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


def _bad_request(*problems: str) -> ApiError:
    # NestJS's ValidationPipe: a generic message, the problems in details.message.
    return ApiError(400, "BadRequestException", "Bad Request Exception", list(problems))


def _not_found(message: str) -> ApiError:
    return ApiError(404, "NotFoundException", message, message)


class CalcomEmulator:
    """Cal.com API v2 for one invented clinic; thread-safe; state lives in memory."""

    name = "calcom"
    # Runtime-only (keys are never written to disk): the trial's snapshot (sandbox/persist.py) keeps the rest.
    SNAPSHOT_TRANSIENT = ("api_key",)

    def __init__(self, *, api_key: str = DEFAULT_API_KEY, seed: int = 1) -> None:
        self.api_key = api_key
        self._seed = seed
        self._lock = threading.RLock()
        self.reset()

    # -- state ---------------------------------------------------------------------------------------------------

    def reset(self) -> None:
        with self._lock:
            self.clock_offset = timedelta(0)
            self.revoked = False
            self.world = CalcomWorld(seed=self._seed, now=self.now())  # no bookings until seeded
            self.rate_limit_per_window = RATE_LIMIT_PER_MINUTE
            self.rate_window_s = 60.0
            self.block_s = BLOCK_SECONDS
            self._request_ids = 0

    def now(self) -> datetime:
        """Real UTC time plus any admin offset, in milliseconds like Cal.com's timestamps."""
        moment = datetime.now(UTC) + self.clock_offset
        return moment.replace(microsecond=moment.microsecond // 1000 * 1000)

    def _tick(self) -> datetime:
        now = self.now()
        self.world.now = now
        return now

    # -- server hooks --------------------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        with self._lock:
            self._tick()
            try:
                response = self._route(request)
            except ApiError as exc:
                response = self._error(request, exc)
            return self._finish(response)

    def _finish(self, response: Response) -> Response:
        response.headers.setdefault("Date", formatdate(self.now().timestamp(), usegmt=True))
        return response

    def _error(self, request: Request, exc: ApiError, headers: dict[str, str] | None = None) -> Response:
        """Cal.com's envelope (apps/api/v2/src/filters): status, timestamp, path, error {code, message, details}."""
        self._request_ids += 1
        error: dict[str, Any] = {"code": exc.code, "message": exc.message}
        if exc.details is not None:
            error["details"] = {
                "message": exc.details,
                "error": _REASONS.get(exc.status, "Error"),
                "statusCode": exc.status,
            }
        query = f"?{urlencode(request.query)}" if request.query else ""
        body = {"status": "error", "timestamp": fmt_instant(self.now()), "path": request.path + query, "error": error}
        return Response(exc.status, body, {"X-Request-Id": f"sandbox-{self._request_ids:06d}", **(headers or {})})

    def rate_limit(self, request: Request) -> RateLimit | None:
        if not self._authorised(request):
            return None  # a bad key gets its 401 instead
        return RateLimit(f"calcom:{self.api_key}", self.rate_limit_per_window, self.rate_window_s, self.block_s)

    def rate_limit_headers(self, request: Request, admission: Admission) -> dict[str, str]:
        """@nestjs/throttler's headers, suffixed with the limit's name; Reset is seconds to go."""
        return _limit_headers(admission.limit, admission.remaining, admission.reset_epoch)

    def rate_limited_response(self, request: Request, reset_epoch: float) -> Response:
        with self._lock:
            headers = _limit_headers(self.rate_limit_per_window, 0, reset_epoch)
            exc = ApiError(429, "ThrottlerException", MSG_THROTTLED, None)
            return self._finish(self._error(request, exc, headers))  # no Retry-After, as on Cal.com

    def fault_response(self, request: Request, status: int) -> Response:
        with self._lock:
            if status == 429:
                return self.rate_limited_response(request, time.time() + 1)
            if status == 500:
                exc = ApiError(500, "INTERNAL_SERVER_ERROR", "Internal server error")
                return self._finish(self._error(request, exc))
            # The edge in front of Cal.com answers 502/503 with HTML, not JSON.
            title = {502: "502 Bad Gateway", 503: "503 Service Unavailable"}.get(status, f"{status} Error")
            html = f"<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>"
            return self._finish(Response(status, html, {"Content-Type": "text/html; charset=utf-8"}))

    def fault_eligible(self, request: Request) -> bool:
        return request.path.startswith(API_PREFIX + "/")

    def endpoint_name(self, request: Request) -> str:
        """Stats keys: ids and uids become {id} / {uid}, so one endpoint is one line."""
        parts = request.path.split("/")
        for n, part in enumerate(parts):
            if n >= 3 and (
                part.isdigit() or (parts[n - 1] in ("bookings", "by-seat", "webhooks") and part != "by-seat")
            ):
                parts[n] = "{id}" if part.isdigit() else "{uid}"
        return f"{request.method} {'/'.join(parts)}"

    # -- auth and routing ----------------------------------------------------------------------------------------

    def _authorised(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and token.strip() == self.api_key and not self.revoked

    def _route(self, request: Request) -> Response:
        if not request.path.startswith(API_PREFIX + "/"):
            raise _not_found(f"Cannot {request.method} {request.path}")
        if not self._authorised(request):
            raise ApiError(401, "UnauthorizedException", MSG_UNAUTHORISED, MSG_UNAUTHORISED)
        parts = request.path[len(API_PREFIX) + 1 :].strip("/").split("/")
        handler = self._resolve(request.method, parts)
        if handler is None:
            raise _not_found(f"Cannot {request.method} {request.path}")
        self._check_version(request, parts)
        return handler(request)

    def _check_version(self, request: Request, parts: list[str]) -> None:
        """Cal.com answers a missing or other `cal-api-version` with an older version of the endpoint, in
        another shape; the sandbox refuses instead, so a client that forgets it fails loudly in tests."""
        expected = VERSIONS.get(parts[0])
        if expected is None or (parts[0] == "event-types" and len(parts) > 2):
            return
        sent = request.headers.get("cal-api-version")
        if sent != expected:
            raise _bad_request(
                f"sandbox: send the header cal-api-version: {expected} on /v2/{parts[0]} (got {sent or 'none'}); "
                "Cal.com would silently answer with an older response shape"
            )

    def _resolve(self, method: str, parts: list[str]) -> Callable[[Request], Response] | None:
        head, rest = parts[0], parts[1:]
        get = method in ("GET", "HEAD")
        if get and head == "me" and not rest:
            return self._get_me
        if get and head == "bookings":
            if not rest:
                return self._list_bookings
            if len(rest) == 2 and rest[0] == "by-seat":
                return lambda request: self._get_by_seat(rest[1])
            if len(rest) == 1:
                return lambda request: self._get_booking(rest[0])
        if get and head == "event-types":
            if not rest:
                return self._list_event_types
            if len(rest) == 1:
                return lambda request: self._get_event_type(rest[0])
        if get and head == "schedules":
            if not rest:
                return lambda request: _ok([_render_schedule(s) for s in self.world.schedules])
            if len(rest) == 1:
                return lambda request: self._get_schedule(rest[0])
        if get and head == "teams":
            if not rest:
                return lambda request: _ok([self._render_team(t) for t in self._my_teams()])
            if len(rest) == 1:
                return lambda request: _ok(self._render_team(self._team(rest[0])))
            if len(rest) == 2 and rest[1] == "event-types":
                return lambda request: self._list_team_event_types(rest[0])
        if head == "webhooks":
            return self._resolve_webhooks(method, rest)
        return None

    # -- me, schedules, teams -------------------------------------------------------------------------------------

    def _get_me(self, request: Request) -> Response:
        user = self.world.users[OWNER_ID]
        return _ok(
            {
                "id": user["id"],
                "username": user["username"],
                "email": user["email"],
                "name": user["name"],
                "avatarUrl": None,
                "bio": None,
                "timeFormat": user["timeFormat"],
                "defaultScheduleId": user["defaultScheduleId"],
                "weekStart": user["weekStart"],
                "timeZone": user["timeZone"],
                "organizationId": None,
            }
        )

    def _get_schedule(self, raw: str) -> Response:
        if raw == "default":
            default = next((s for s in self.world.schedules if s["isDefault"]), None)
            return _ok(_render_schedule(default) if default else None)
        schedule = next((s for s in self.world.schedules if str(s["id"]) == raw), None)
        if schedule is None:
            raise _not_found(f"Schedule with id={raw} not found")
        return _ok(_render_schedule(schedule))

    def _my_teams(self) -> list[dict[str, Any]]:
        return [t for t in self.world.teams.values() if OWNER_ID in t["members"]]

    def _team(self, raw: str) -> dict[str, Any]:
        team = next((t for t in self._my_teams() if str(t["id"]) == raw), None)
        if team is None:
            raise _not_found(f"Team with id={raw} not found")
        return team

    def _render_team(self, team: dict[str, Any]) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in team.items() if k != "members"}

    # -- event types ---------------------------------------------------------------------------------------------

    def _live_event_types(self) -> list[dict[str, Any]]:
        return [et for et in self.world.event_types.values() if not et["deleted"]]

    def _list_event_types(self, request: Request) -> Response:
        """The key's user's own event types, hidden ones included (they are the owner's). Not paged."""
        mine = [et for et in self._live_event_types() if et.get("owner") == OWNER_ID]
        slug = request.query_value("eventSlug")
        if slug:
            mine = [et for et in mine if et["slug"] == slug]
        order = request.query_value("sortCreatedAt")
        if order not in (None, "asc", "desc"):
            raise _bad_request("sortCreatedAt must be one of the following values: asc, desc")
        mine.sort(key=lambda et: et["id"], reverse=order == "desc")
        return _ok([self.render_event_type(et) for et in mine])

    def _get_event_type(self, raw: str) -> Response:
        event_type = next((et for et in self._live_event_types() if str(et["id"]) == raw), None)
        if event_type is None:
            raise _not_found(f"Event type with id={raw} not found")
        return _ok(self.render_event_type(event_type))

    def _list_team_event_types(self, raw: str) -> Response:
        team = self._team(raw)
        found = [et for et in self._live_event_types() if et.get("team") == team["id"]]
        return _ok([self.render_event_type(et) for et in sorted(found, key=lambda et: et["id"])])

    def render_event_type(self, et: dict[str, Any]) -> dict[str, Any]:
        """EventTypeOutput_2024_06_14, or TeamEventTypeOutput_2024_06_14 for a team's; the Stripe app's settings
        stay in metadata.apps.stripe, the deprecated top-level price/currency beside them."""
        location = (
            {"type": "address", "address": calcom_seed.CLINIC_ADDRESS, "public": True}
            if et.get("location") == "address"
            else {"type": "integration", "integration": "cal-video"}
        )
        out: dict[str, Any] = {
            "id": et["id"],
            "lengthInMinutes": et["length"],
            "title": et["title"],
            "slug": et["slug"],
            "description": et.get("description", ""),
            "locations": [location],
            "bookingFields": [],
            "disableGuests": False,
            "slotInterval": None,
            "minimumBookingNotice": 120,
            "beforeEventBuffer": 0,
            "afterEventBuffer": 10,
            "recurrence": copy.deepcopy(et.get("recurrence")),
            "metadata": copy.deepcopy(et["metadata"]),
            "price": et["price"],
            "currency": et["currency"],
            "lockTimeZoneToggleOnBookingPage": False,
            "forwardParamsSuccessRedirect": None,
            "successRedirectUrl": None,
            "isInstantEvent": False,
            "scheduleId": calcom_seed.DEFAULT_SCHEDULE_ID,
            "hidden": et["hidden"],
            "bookingRequiresAuthentication": False,
            "bookerLayouts": {"defaultLayout": "month", "enabledLayouts": ["month", "week", "column"]},
            "requiresBookerEmailVerification": False,
            "hideCalendarNotes": False,
            "hideCalendarEventDetails": False,
            "hideOrganizerEmail": False,
        }
        if et.get("seats"):
            out["seats"] = {"seatsPerTimeSlot": et["seats"], "showAttendeeInfo": False, "showAvailabilityCount": True}
        if et.get("team"):
            team = self.world.teams[et["team"]]
            hosts = [self.world.users[uid] for uid in et["hosts"]]
            out.update(
                teamId=team["id"],
                ownerId=None,
                parentEventTypeId=None,
                hosts=[
                    {"userId": u["id"], "name": u["name"], "username": u["username"], "avatarUrl": None} for u in hosts
                ],
                assignAllTeamMembers=False,
                schedulingType=et["scheduling"],
                team={
                    "id": team["id"],
                    "slug": team["slug"],
                    "name": team["name"],
                    "bannerUrl": team["bannerUrl"],
                    "logoUrl": team["logoUrl"],
                    "weekStart": team["weekStart"],
                    "brandColor": team["brandColor"],
                    "darkBrandColor": team["darkBrandColor"],
                    "theme": team["theme"],
                },
                bookingUrl=f"https://cal.com/team/{team['slug']}/{et['slug']}",
            )
        else:
            owner = self.world.users[et["owner"]]
            out.update(
                ownerId=owner["id"],
                users=[
                    {
                        "id": owner["id"],
                        "name": owner["name"],
                        "username": owner["username"],
                        "avatarUrl": None,
                        "weekStart": owner["weekStart"],
                        "brandColor": "#0f766e",
                        "darkBrandColor": "#5eead4",
                        "metadata": {},
                    }
                ],
                bookingUrl=f"https://cal.com/{owner['username']}/{et['slug']}",
            )
        return out

    # -- bookings ------------------------------------------------------------------------------------------------

    def _list_bookings(self, request: Request) -> Response:
        problems: list[str] = []
        statuses = [s for value in request.query_values("status") for s in value.split(",") if s]
        if any(s not in STATUS_FILTERS for s in statuses):
            problems.append(f"each value in status must be one of the following values: {', '.join(STATUS_FILTERS)}")
        take = _int_param(request, "take", 100, 1, MAX_TAKE, problems)
        skip = _int_param(request, "skip", 0, 0, None, problems)
        bounds: list[tuple[str, str, datetime]] = []
        for param, column, op in DATE_FILTERS:
            value = request.query_value(param)
            if value is None:
                continue
            moment = _iso(value)
            if moment is None:
                problems.append(f"{param} must be a valid ISO 8601 date string")
            else:
                bounds.append((column, op, moment))
        sorts = []
        for param, column in SORTS:
            order = request.query_value(param)
            if order is None:
                continue
            if order not in ("asc", "desc"):
                problems.append(f"{param} must be one of the following values: asc, desc")
            sorts.append((column, order == "desc"))
        if problems:
            raise _bad_request(*problems)
        rows = [b for b in self.world.bookings if self._matches(b, request, statuses, bounds)]
        rows = _sorted(rows, sorts or [("startTime", False)])
        page = rows[skip : skip + take]
        total = len(rows)
        pagination = {
            "totalItems": total,
            "remainingItems": max(0, total - skip - len(page)),
            "returnedItems": len(page),
            "itemsPerPage": take,
            "currentPage": skip // take + 1,
            "totalPages": math.ceil(total / take),
            "hasNextPage": skip + len(page) < total,
            "hasPreviousPage": skip > 0,
        }
        return Response(
            200, {"status": "success", "data": [self.render_booking(b) for b in page], "pagination": pagination}
        )

    def _matches(
        self, booking: dict[str, Any], request: Request, statuses: list[str], bounds: list[tuple[str, str, datetime]]
    ) -> bool:
        if statuses and not any(self._in_status(booking, s) for s in statuses):
            return False
        email = request.query_value("attendeeEmail")
        if email and not any(a["email"].casefold() == email.casefold() for a in booking["attendees"]):
            return False
        name = request.query_value("attendeeName")
        if name and not any(name.casefold() in a["name"].casefold() for a in booking["attendees"]):
            return False
        uid = request.query_value("bookingUid")
        if uid and booking["uid"] != uid:
            return False
        event_types = _csv_ints(request.query_value("eventTypeIds")) | _csv_ints(request.query_value("eventTypeId"))
        if event_types and booking["eventTypeId"] not in event_types:
            return False
        teams = _csv_ints(request.query_value("teamsIds")) | _csv_ints(request.query_value("teamId"))
        if teams and (self.world.event_types.get(booking["eventTypeId"]) or {}).get("team") not in teams:
            return False
        for column, op, moment in bounds:
            value = _iso(booking[column]) if booking[column] else None
            if value is None or not (value >= moment if op == ">=" else value <= moment):
                return False  # an empty updatedAt matches no updatedAt filter
        return True

    def _in_status(self, booking: dict[str, Any], status: str) -> bool:
        """The list filters as Cal.com's bookings handler defines them (docs/calcom-api.md §2)."""
        now = self.world.now
        end = _iso(booking["endTime"])
        assert end is not None
        state = booking["status"]
        live = state not in ("CANCELLED", "REJECTED")
        if status == "upcoming":
            return end >= now and live and not (booking["recurringEventId"] and state == "PENDING")
        if status == "recurring":
            return end >= now and live and bool(booking["recurringEventId"])
        if status == "past":
            return end <= now and live
        if status == "cancelled":
            return not live
        return state == "PENDING" and end >= now  # unconfirmed

    def _get_booking(self, uid: str) -> Response:
        series = sorted(
            (b for b in self.world.bookings if b["recurringEventId"] == uid), key=lambda b: (b["startTime"], b["id"])
        )
        if series:  # a recurring series' uid: every occurrence
            return _ok([self.render_booking(b) for b in series])
        booking = next((b for b in self.world.bookings if b["uid"] == uid), None)
        if booking is None:
            raise _not_found(f"Booking with uid={uid} was not found in the database")
        return _ok(self.render_booking(booking))

    def _get_by_seat(self, seat_uid: str) -> Response:
        for booking in self.world.bookings:
            if any((a.get("seat") or {}).get("referenceUid") == seat_uid for a in booking["attendees"]):
                return _ok(self.render_booking(booking))
        raise _not_found(f"Booking with seatUid={seat_uid} was not found in the database")

    def render_booking(self, b: dict[str, Any]) -> dict[str, Any]:
        """BookingOutput_2024_08_13 and its recurring and seated variants, built like Cal.com's
        OutputBookingsService_2024_08_13 (docs/calcom-api.md §2)."""
        event_type = self.world.event_types.get(b["eventTypeId"]) if b["eventTypeId"] else None
        if event_type is not None and event_type["deleted"]:
            event_type = None  # a deleted event type leaves its bookings without one
        seated = any(a.get("seat") for a in b["attendees"]) or bool(event_type and event_type.get("seats"))
        metadata = dict(b["metadata"])
        location = metadata.pop("videoCallUrl", None) or b["location"]
        host = self.world.users[b["userId"]]
        start, end = _iso(b["startTime"]), _iso(b["endTime"])
        assert start is not None and end is not None
        out: dict[str, Any] = {
            "id": b["id"],
            "uid": b["uid"],
            "title": b["title"],
            "description": b["description"] or "",
            "hosts": [
                {
                    "id": host["id"],
                    "name": host["name"],
                    "email": host["email"],
                    "displayEmail": _display(host["email"]),
                    "username": host["username"],
                    "timeZone": host["timeZone"],
                }
            ],
            "status": b["status"].lower(),
            "cancellationReason": b["cancellationReason"] or "",
            "start": b["startTime"],
            "end": b["endTime"],
            "duration": int((end - start).total_seconds() // 60),
            "eventTypeId": event_type["id"] if event_type else None,
            "eventType": {"id": event_type["id"], "slug": event_type["slug"]} if event_type else None,
            "location": location,
            "meetingUrl": location,
            "absentHost": bool(b["noShowHost"]),
            "createdAt": b["createdAt"],
            "updatedAt": b["updatedAt"],  # may be null: the column is nullable
            "metadata": metadata,
            "icsUid": b["iCalUID"],
        }
        if b["rating"] is not None:
            out["rating"] = b["rating"]
        if b["fromReschedule"]:
            out["rescheduledFromUid"] = b["fromReschedule"]
        if b["rescheduled"]:
            follower = next((x for x in self.world.bookings if x["fromReschedule"] == b["uid"]), None)
            if follower is not None:
                out["rescheduledToUid"] = follower["uid"]
        rescheduled_by = self._rescheduled_by(b)
        if rescheduled_by:
            out["rescheduledByEmail"] = rescheduled_by
        if b["recurringEventId"]:
            out["recurringBookingUid"] = b["recurringEventId"]
        if seated:  # the key's user owns the event type, so the seats' attendees are shown
            out["attendees"] = [_render_seat(a) for a in b["attendees"] if a.get("seat")]
            return out
        out["cancelledByEmail"] = b["cancelledBy"] or ""
        responses = copy.deepcopy(b["responses"])
        if responses.get("rescheduledReason"):
            out["reschedulingReason"] = responses["rescheduledReason"]
        out["attendees"] = [_render_attendee(a) for a in b["attendees"]]
        if "guests" in responses:
            out["guests"] = list(responses["guests"])
            responses["displayGuests"] = [_display(g) for g in responses["guests"]]
        if isinstance(responses.get("email"), str):
            responses["displayEmail"] = _display(responses["email"])
        out["bookingFieldsResponses"] = responses
        return out

    def _rescheduled_by(self, b: dict[str, Any]) -> str | None:
        if b["rescheduled"]:
            return b["rescheduledBy"]
        if b["fromReschedule"]:
            previous = next((x for x in self.world.bookings if x["uid"] == b["fromReschedule"]), None)
            return (previous or {}).get("rescheduledBy") or b["rescheduledBy"]
        return b["rescheduledBy"]

    # -- webhooks ------------------------------------------------------------------------------------------------

    def _resolve_webhooks(self, method: str, rest: list[str]) -> Callable[[Request], Response] | None:
        if not rest:
            return {"GET": self._list_webhooks, "POST": self._create_webhook}.get(method)
        if len(rest) != 1:
            return None
        hook_id = rest[0]
        if method == "GET":
            return lambda request: _ok(_render_webhook(self._webhook(hook_id)))
        if method == "PATCH":
            return lambda request: self._update_webhook(request, hook_id)
        if method == "DELETE":
            return lambda request: self._delete_webhook(hook_id)
        return None

    def _list_webhooks(self, request: Request) -> Response:
        problems: list[str] = []
        take = _int_param(request, "take", 250, 1, MAX_TAKE, problems)
        skip = _int_param(request, "skip", 0, 0, None, problems)
        if problems:
            raise _bad_request(*problems)
        mine = [w for w in self.world.webhooks if w["userId"] == OWNER_ID]
        return _ok([_render_webhook(w) for w in mine[skip : skip + take]])

    def _webhook(self, hook_id: str) -> dict[str, Any]:
        for hook in self.world.webhooks:
            if hook["id"] == hook_id and hook["userId"] == OWNER_ID:
                return hook
        raise _not_found(f"Webhook with id={hook_id} not found")

    def _create_webhook(self, request: Request) -> Response:
        body = _json_object(request)
        fields = _webhook_fields(body, creating=True)
        if any(w["subscriberUrl"] == fields["subscriberUrl"] for w in self.world.webhooks):
            raise ApiError(409, "ConflictException", "Webhook with this subscriber url already exists")
        hook = {"id": self.world.ids.uuid(), "userId": OWNER_ID, "payloadTemplate": None, "secret": None, **fields}
        self.world.webhooks.append(hook)
        return Response(201, {"status": "success", "data": _render_webhook(hook)}, mutated=True)

    def _update_webhook(self, request: Request, hook_id: str) -> Response:
        hook = self._webhook(hook_id)
        hook.update(_webhook_fields(_json_object(request), creating=False))
        return Response(200, {"status": "success", "data": _render_webhook(hook)}, mutated=True)

    def _delete_webhook(self, hook_id: str) -> Response:
        hook = self._webhook(hook_id)
        self.world.webhooks.remove(hook)
        return Response(200, {"status": "success", "data": _render_webhook(hook)}, mutated=True)

    # -- admin ---------------------------------------------------------------------------------------------------

    def admin(self, action: str, params: dict[str, Any]) -> Response | None:
        handler = _ADMIN_ACTIONS.get(action)
        if handler is None:
            return None
        with self._lock:
            self._tick()
            try:
                return Response(200, handler(self, params))
            except (ValueError, KeyError, TypeError) as exc:
                return Response(400, {"error": f"{action}: {exc}"})

    def _admin_reset(self, params: dict[str, Any]) -> dict[str, Any]:
        self.reset()
        return {"ok": True}

    def _admin_seed(self, params: dict[str, Any]) -> dict[str, Any]:
        """A fresh world: the seed's bookings, event types and the rest (replacing what was there)."""
        self.world = calcom_seed.seed_calcom(
            str(params.get("profile", "clean")),
            int(params.get("patients", 50)),
            int(params.get("seed", self._seed)),
            bookings=int(params.get("bookings", 60)),
            patient_share=float(params.get("patient_share", 1 / 3)),
            now=self.now(),
        )
        return self._summary()

    def _summary(self) -> dict[str, Any]:
        world = self.world
        return {
            "bookings": len(world.bookings),
            "uids": [b["uid"] for b in world.bookings],
            "cases": dict(world.cases),
            "event_types": sorted(world.event_types),
            "identities": world.identities(),
            **world.stripe_objects(),
            "stripe_credentials": {str(k): dict(v) for k, v in world.stripe_credentials.items()},
        }

    def _admin_add(self, params: dict[str, Any]) -> dict[str, Any]:
        """New bookings made now (`count`, `event_type_id`, `email`, `name`, `start`, `status`, `paid`,
        `null_updated_at`); paid event types bring their PaymentIntents."""
        before = len(self.world.payment_intents)
        made = []
        for _ in range(int(params.get("count", 1))):
            made.append(
                self.world.book(
                    int(params.get("event_type_id", 4001)),
                    start=_admin_time(params.get("start")),
                    status=str(params.get("status", "accepted")),
                    name=params.get("name"),
                    email=params.get("email"),
                    paid=params.get("paid"),
                    null_updated_at=bool(params.get("null_updated_at", False)),
                )
            )
        return {
            "uids": [b["uid"] for b in made],
            "ids": [b["id"] for b in made],
            "payment_intents": copy.deepcopy(self.world.payment_intents[before:]),
        }

    def _admin_reschedule(self, params: dict[str, Any]) -> dict[str, Any]:
        new = self.world.reschedule(str(params["uid"]), start=_admin_time(params.get("start")), by=params.get("by"))
        return {"old_uid": str(params["uid"]), "new_uid": new["uid"], "new_id": new["id"], "start": new["startTime"]}

    def _admin_cancel(self, params: dict[str, Any]) -> dict[str, Any]:
        uids = [str(u) for u in params.get("uids") or [params["uid"]]]
        for uid in uids:
            self.world.cancel(
                uid, reason=str(params.get("reason", "")), by=params.get("by"), refund=bool(params.get("refund"))
            )
        return {"uids": uids}

    def _admin_edit(self, params: dict[str, Any]) -> dict[str, Any]:
        """Change bookings as a host would (bumps updatedAt): `uids` or `count` random ones, `fields` to set
        (title, description, location, status, notes, attendee_name, attendee_email, metadata) or one random
        change each."""
        if params.get("uids") or params.get("uid"):
            bookings = [self.world.find(str(u)) for u in params.get("uids") or [params["uid"]]]
        else:
            live = sorted((b for b in self.world.bookings if b["status"] != "CANCELLED"), key=lambda b: b["id"])
            bookings = self.world.rng.sample(live, min(int(params.get("count", 1)), len(live)))
        changes = {}
        for booking in bookings:
            fields = params.get("fields") or self._random_edit(booking)
            _apply_edit(booking, fields)
            booking["updatedAt"] = fmt_instant(self.world.now)
            changes[booking["uid"]] = fields
        return {"uids": [b["uid"] for b in bookings], "changes": changes}

    def _random_edit(self, booking: dict[str, Any]) -> dict[str, Any]:
        kind = self.world.rng.choice(("title", "notes", "location"))
        if kind == "title":
            return {"title": booking["title"].split(" (")[0] + f" ({self.world.rng.randrange(100)})"}
        if kind == "notes":
            return {"notes": f"Invented note {self.world.rng.randrange(1000)}"}
        return {"location": f"Room {self.world.rng.randint(1, 6)}, {calcom_seed.CLINIC_ADDRESS}"}

    def _admin_price(self, params: dict[str, Any]) -> dict[str, Any]:
        """Change an event type's Stripe price (metadata.apps.stripe; the deprecated top-level price is left
        alone, so the two disagree afterwards, as they can on Cal.com)."""
        event_type = self._event_type_for_admin(params)
        app = stripe_app(event_type)
        if app is None:
            app = {"enabled": True, "paymentOption": "ON_BOOKING", "credentialId": 42, "appCategories": ["payment"]}
            event_type["metadata"].setdefault("apps", {})["stripe"] = app
        if "price" in params:
            price = int(params["price"])
            if price < 0:
                raise ValueError("price must not be negative")
            app["price"] = price
        app["currency"] = str(params.get("currency", app.get("currency", "aud"))).lower()
        if "payment_option" in params:
            if params["payment_option"] not in ("ON_BOOKING", "HOLD"):
                raise ValueError("payment_option must be ON_BOOKING or HOLD")
            app["paymentOption"] = params["payment_option"]
        return {"id": event_type["id"], "stripe": dict(app)}

    def _admin_hide(self, params: dict[str, Any]) -> dict[str, Any]:
        event_type = self._event_type_for_admin(params)
        event_type["hidden"] = bool(params.get("hidden", True))
        return {"id": event_type["id"], "hidden": event_type["hidden"]}

    def _admin_delete_event_type(self, params: dict[str, Any]) -> dict[str, Any]:
        event_type = self._event_type_for_admin(params)
        event_type["deleted"] = True
        return {"id": event_type["id"], "deleted": True}

    def _admin_schedule(self, params: dict[str, Any]) -> dict[str, Any]:
        """Rename a schedule or move it to another time zone (`id`, `name`, `time_zone`), as its owner would."""
        schedule = next((s for s in self.world.schedules if s["id"] == int(params["id"])), None)
        if schedule is None:
            raise KeyError(f"no schedule {params['id']}")
        if "name" in params:
            schedule["name"] = str(params["name"])
        if "time_zone" in params:
            schedule["timeZone"] = str(params["time_zone"])
        return {"id": schedule["id"], "name": schedule["name"], "timeZone": schedule["timeZone"]}

    def _event_type_for_admin(self, params: dict[str, Any]) -> dict[str, Any]:
        raw = int(params["id"] if "id" in params else params["event_type_id"])
        event_type = self.world.event_types.get(raw)
        if event_type is None or event_type["deleted"]:
            raise KeyError(f"no event type {raw}")
        return event_type

    def _admin_revoke_key(self, params: dict[str, Any]) -> dict[str, Any]:
        self.revoked = True
        return {"revoked": True}

    def _admin_restore_key(self, params: dict[str, Any]) -> dict[str, Any]:
        self.revoked = False
        return {"revoked": False}

    def _admin_clock(self, params: dict[str, Any]) -> dict[str, Any]:
        self.clock_offset += timedelta(seconds=float(params.get("advance_s", 0)))
        return {"now": fmt_instant(self._tick()), "offset_s": self.clock_offset.total_seconds()}

    def _admin_rate_limit(self, params: dict[str, Any]) -> dict[str, Any]:
        """The limit the server enforces when rate limits are on (default 120 per 60 s, 60 s block). Turn limits
        on (or toggle them) with POST /_sandbox/config afterwards to start from a fresh window."""
        if "limit" in params:
            self.rate_limit_per_window = int(params["limit"])
        if "window_s" in params:
            self.rate_window_s = float(params["window_s"])
        if "block_s" in params:
            self.block_s = float(params["block_s"])
        if self.rate_limit_per_window < 1 or self.rate_window_s <= 0 or self.block_s < 0:
            raise ValueError("limit must be at least 1, window_s positive, block_s not negative")
        return {"limit": self.rate_limit_per_window, "window_s": self.rate_window_s, "block_s": self.block_s}

    def _admin_dump(self, params: dict[str, Any]) -> dict[str, Any]:
        """Internal records: bookings (Cal.com's column names), event types, payments, and the Stripe objects
        Cal.com's Stripe app created, for a later load into the Stripe sandbox."""
        world = self.world
        return {
            "bookings": copy.deepcopy(world.bookings),
            "event_types": copy.deepcopy(list(world.event_types.values())),
            "schedules": copy.deepcopy(world.schedules),
            "teams": [self._render_team(t) for t in world.teams.values()],
            "users": copy.deepcopy(list(world.users.values())),
            "webhooks": copy.deepcopy(world.webhooks),
            "payments": copy.deepcopy(world.payments),
            **world.stripe_objects(),
            "stripe_credentials": {str(k): dict(v) for k, v in world.stripe_credentials.items()},
            "identities": world.identities(),
            "cases": dict(world.cases),
            "now": fmt_instant(world.now),
        }


_ADMIN_ACTIONS: dict[str, Callable[[CalcomEmulator, dict[str, Any]], dict[str, Any]]] = {
    "reset": CalcomEmulator._admin_reset,
    "seed": CalcomEmulator._admin_seed,
    "add": CalcomEmulator._admin_add,
    "reschedule": CalcomEmulator._admin_reschedule,
    "cancel": CalcomEmulator._admin_cancel,
    "edit": CalcomEmulator._admin_edit,
    "price": CalcomEmulator._admin_price,
    "hide": CalcomEmulator._admin_hide,
    "delete_event_type": CalcomEmulator._admin_delete_event_type,
    "schedule": CalcomEmulator._admin_schedule,
    "revoke_key": CalcomEmulator._admin_revoke_key,
    "restore_key": CalcomEmulator._admin_restore_key,
    "clock": CalcomEmulator._admin_clock,
    "rate_limit": CalcomEmulator._admin_rate_limit,
    "dump": CalcomEmulator._admin_dump,
}

_EDITABLE = ("title", "description", "location", "status", "notes", "attendee_name", "attendee_email", "metadata")


# -- helpers ---------------------------------------------------------------------------------------------------


def _ok(data: Any) -> Response:
    return Response(200, {"status": "success", "data": data})


def _limit_headers(limit: int, remaining: int, reset_epoch: float) -> dict[str, str]:
    seconds = max(0, math.ceil(reset_epoch - time.time()))
    return {
        "X-RateLimit-Limit-Default": str(limit),
        "X-RateLimit-Remaining-Default": str(max(0, remaining)),
        "X-RateLimit-Reset-Default": str(seconds),
    }


def _display(email: str) -> str:
    return _DISPLAY_EMAIL.sub("", email)


def _render_attendee(a: dict[str, Any]) -> dict[str, Any]:
    out = {
        "name": a["name"],
        "email": a["email"],
        "displayEmail": _display(a["email"]),
        "timeZone": a["timeZone"],
        "language": a.get("locale") or "en",
        "absent": bool(a.get("noShow")),
    }
    if a.get("phoneNumber"):
        out["phoneNumber"] = a["phoneNumber"]
    return out


def _render_seat(a: dict[str, Any]) -> dict[str, Any]:
    seat = a["seat"]
    responses = {k: v for k, v in (seat.get("data") or {}).get("responses", {}).items() if k != "email"}
    return {
        **_render_attendee(a),
        "seatUid": seat["referenceUid"],
        "bookingFieldsResponses": responses,  # the email is left out for privacy, as Cal.com does
        "metadata": dict(seat.get("metadata") or {}),
    }


def _render_schedule(s: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(s)


def _render_webhook(hook: dict[str, Any]) -> dict[str, Any]:
    out = {
        "id": hook["id"],
        "userId": hook["userId"],
        "subscriberUrl": hook["subscriberUrl"],
        "triggers": list(hook["triggers"]),
        "active": hook["active"],
        "payloadTemplate": hook["payloadTemplate"],
    }
    if hook.get("secret"):
        out["secret"] = hook["secret"]
    return out


def _webhook_fields(body: dict[str, Any], *, creating: bool) -> dict[str, Any]:
    problems: list[str] = []
    fields: dict[str, Any] = {}
    for name, kind in (("subscriberUrl", str), ("active", bool), ("triggers", list)):
        if name not in body:
            if creating:
                problems.append(f"{name} should not be empty")
            continue
        value = body[name]
        if not isinstance(value, kind):
            problems.append(
                f"{name} must be {'a boolean value' if kind is bool else 'an array' if kind is list else 'a string'}"
            )
            continue
        fields[name] = value
    if isinstance(fields.get("triggers"), list) and any(t not in WEBHOOK_TRIGGERS for t in fields["triggers"]):
        problems.append(f"each value in triggers must be one of the following values: {', '.join(WEBHOOK_TRIGGERS)}")
    for name in ("secret", "payloadTemplate"):
        if name in body:
            if body[name] is not None and not isinstance(body[name], str):
                problems.append(f"{name} must be a string")
            fields[name] = body[name]
    if "version" in body and body["version"] != "2021-10-20":
        problems.append("version must be one of the following values: 2021-10-20")
    if problems:
        raise _bad_request(*problems)
    return fields


def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        raise _bad_request("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _bad_request("the request body must be a JSON object")
    return body


def _int_param(request: Request, name: str, default: int, low: int, high: int | None, problems: list[str]) -> int:
    raw = request.query_value(name)
    if raw is None:
        return default
    if not _NUMBER.match(raw):
        problems.append(f"{name} must be a number conforming to the specified constraints")
        return default
    value = int(float(raw))
    if value < low:
        problems.append(f"{name} must not be less than {low}")
    if high is not None and value > high:
        problems.append(f"{name} must not be greater than {high}")
    return value


def _iso(value: str | None) -> datetime | None:
    if not value or not _ISO.match(value):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def _csv_ints(raw: str | None) -> set[int]:
    if not raw:
        return set()
    return {int(part) for part in raw.split(",") if part.strip().isdigit()}


def _sorted(rows: list[dict[str, Any]], sorts: list[tuple[str, bool]]) -> list[dict[str, Any]]:
    """Stable sorts from the last key to the first; empty values last when ascending and first when descending
    (PostgreSQL's default); ties by id."""
    rows = sorted(rows, key=lambda b: b["id"])
    for column, descending in reversed(sorts):
        present = sorted((b for b in rows if b[column]), key=lambda b: b[column], reverse=descending)
        empty = [b for b in rows if not b[column]]
        rows = empty + present if descending else present + empty
    return rows


def _admin_time(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    moment = _iso(str(value))
    if moment is None:
        raise ValueError(f"not an ISO 8601 time: {value!r}")
    return moment


def _apply_edit(booking: dict[str, Any], fields: dict[str, Any]) -> None:
    unknown = set(fields) - set(_EDITABLE)
    if unknown:
        raise ValueError(f"cannot edit {sorted(unknown)}; editable: {', '.join(_EDITABLE)}")
    for name, value in fields.items():
        if name == "status":
            if value not in ("accepted", "pending", "cancelled", "rejected"):
                raise ValueError("status must be accepted, pending, cancelled or rejected")
            booking["status"] = str(value).upper()
        elif name == "notes":
            booking["responses"]["notes"] = str(value)
        elif name in ("attendee_name", "attendee_email"):
            if not booking["attendees"]:
                raise ValueError("this booking has no attendee to edit")
            booking["attendees"][0]["name" if name == "attendee_name" else "email"] = str(value)
            booking["responses"]["name" if name == "attendee_name" else "email"] = str(value)
        elif name == "metadata":
            if not isinstance(value, dict):
                raise ValueError("metadata must be an object")
            booking["metadata"] = {**{k: v for k, v in booking["metadata"].items() if k == "videoCallUrl"}, **value}
        else:
            booking[name] = str(value)
