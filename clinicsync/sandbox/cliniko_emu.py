"""An in-memory emulator of Cliniko's API v1 (patients, invoices, individual appointments, products, product
suppliers, taxes, stock adjustments, settings, user, businesses) behind `server.serve`.

It agrees with Cliniko's OpenAPI document (tests/integration/test_cliniko_emulator_spec.py checks it) and, where
Cliniko documents nothing (error bodies, edge cases), makes the choices listed in docs/sandbox.md.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import random
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from email.utils import formatdate
from typing import Any
from urllib.parse import urlencode

from clinicsync import rate_limits
from clinicsync.sandbox import cliniko_invoices as inv
from clinicsync.sandbox import seed as seedmod
from clinicsync.sandbox.http import RateLimit, Request, Response

API_PREFIX = "/v1"
DEFAULT_API_KEY = "cliniko_sandbox_key-au1"
DEFAULT_LIMITED_KEY = "cliniko_sandbox_key_limited-au1"
RATE_LIMIT_PER_MINUTE = rate_limits.CLINIKO_PER_MINUTE
MAX_PER_PAGE = 100
DEFAULT_PER_PAGE = 50

_SHARD_SUFFIX = re.compile(r"-([a-z]{2}\d{1,2})$", re.IGNORECASE)
_UA_CONTACT = re.compile(r"\([^()\s]+@[^()\s]+\.[^()\s]+\)")
# The spec's email pattern, applied case-insensitively (its character classes are upper-case only).
EMAIL_PATTERN = re.compile(r"^[A-Z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Z0-9.-]+\.[A-Z]{2,63}$", re.IGNORECASE)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

ACCOUNT_ID = "700000000000000001"
BUSINESS_ID = "700000000000000101"
USER_ID = "700000000000000201"
LIMITED_USER_ID = "700000000000000202"

# Error bodies Cliniko does not document; docs/sandbox.md lists them.
MSG_USER_AGENT = "Requires a user agent with contact details"
MSG_UNAUTHORISED = "HTTP Basic: Access denied.\n"
MSG_FORBIDDEN = "You do not have permission to access this resource."
MSG_NOT_FOUND = "Not found"
MSG_NOT_SEARCHABLE = "This column is not searchable."
MSG_NOT_SORTABLE = "This column is not sortable."
MSG_RATE_LIMITED = "Too many requests. Retry after the time in the X-RateLimit-Reset header."

# Filterable patient columns and their type, from the spec's q[] table for /patients.
PATIENT_FILTERS: dict[str, str] = {
    "accepted_privacy_policy": "boolean",
    "archived_at": "datetime",
    "created_at": "datetime",
    "date_of_birth": "date",
    "email": "string",
    "first_name": "string",
    "id": "int",
    "last_name": "string",
    "old_reference_id": "string",
    "preferred_first_name": "string",
    "updated_at": "datetime",
}
OPERATORS: dict[str, tuple[str, ...]] = {
    "datetime": (">=", ">", "<=", "<", "?", "!?", "*"),
    "date": ("=", ">=", ">", "<=", "<", "?", "!?"),
    "int": ("=", "!=", ">=", ">", "<=", "<", "?", "!?"),
    "string": ("=", "!=", "~~", "~", "?", "!?"),
    "boolean": ("=", "!="),
}
# Longest first, so ">=" is not read as ">" followed by "=...".
_ALL_OPS = ("!?", ">=", "<=", "!=", "~~", "?", "*", ">", "<", "=", "~")
SORTABLE = frozenset(PATIENT_FILTERS) | {"label"}
# The spec's q[] tables for /invoices and /individual_appointments ("integer" and "int64" are both int here).
INVOICE_FILTERS: dict[str, str] = {
    "appointment_id": "int",
    "archived_at": "datetime",
    "attendee_id": "int",
    "business_id": "int",
    "closed_at": "datetime",
    "created_at": "datetime",
    "deleted_at": "datetime",
    "id": "int",
    "issue_date": "date",
    "number": "int",
    "original_invoice_id": "int",
    "patient_id": "int",
    "practitioner_id": "int",
    "status": "int",
    "updated_at": "datetime",
}
INVOICE_ITEM_FILTERS: dict[str, str] = {
    "archived_at": "datetime",
    "created_at": "datetime",
    "deleted_at": "datetime",
    "id": "int",
    "invoice_id": "int",
    "source_item_id": "int",  # the product or billable item the line was made from
    "updated_at": "datetime",
}
BUSINESS_FILTERS: dict[str, str] = {
    "archived_at": "datetime",
    "created_at": "datetime",
    "deleted_at": "datetime",
    "id": "int",
    "show_in_online_bookings": "boolean",
    "updated_at": "datetime",
}
APPOINTMENT_FILTERS: dict[str, str] = {
    "appointment_type_id": "int",
    "archived_at": "datetime",
    "business_id": "int",
    "cancelled_at": "datetime",
    "created_at": "datetime",
    "deleted_at": "datetime",
    "did_not_arrive": "boolean",
    "ends_at": "datetime",
    "id": "int",
    "patient_id": "int",
    "practitioner_id": "int",
    "repeated_from_id": "int",
    "starts_at": "datetime",
    "updated_at": "datetime",
}
# The spec's q[] tables for the product catalogue.
PRODUCT_FILTERS: dict[str, str] = {
    "archived_at": "datetime",
    "created_at": "datetime",
    "id": "int",
    "name": "string",
    "tax_id": "int",
    "updated_at": "datetime",
}
PRODUCT_SUPPLIER_FILTERS: dict[str, str] = {
    "created_at": "datetime",
    "id": "int",
    "name": "string",
    "updated_at": "datetime",
}
TAX_FILTERS: dict[str, str] = {"created_at": "datetime", "id": "int", "updated_at": "datetime"}
STOCK_ADJUSTMENT_FILTERS: dict[str, str] = {
    "archived_at": "datetime",
    "created_at": "datetime",
    "id": "int",
    "product_id": "int",
    "updated_at": "datetime",
}
STOCK_ADJUSTMENT_TYPES = ("Correction", "Damaged", "Item Sold", "Other", "Out of Date", "Returned", "Stock Purchase")
CATALOGUE_FILTERS: dict[str, dict[str, str]] = {
    "products": PRODUCT_FILTERS,
    "product_suppliers": PRODUCT_SUPPLIER_FILTERS,
    "taxes": TAX_FILTERS,
    "stock_adjustments": STOCK_ADJUSTMENT_FILTERS,
}
# Ids of related records are digit strings, sorted as numbers.
_ID_COLUMNS = frozenset(
    c
    for c in (
        *INVOICE_FILTERS,
        *INVOICE_ITEM_FILTERS,
        *APPOINTMENT_FILTERS,
        *PRODUCT_FILTERS,
        *STOCK_ADJUSTMENT_FILTERS,
    )
    if c.endswith("_id")
)
INVOICE_STATUSES = inv.STATUSES
CALCULATION_METHODS = {1: "Legacy", 2: "Tax exclusive", 3: "Tax inclusive"}
# A business's scalar fields as the spec's Business schema has them (links are added when rendering).
BUSINESS_FIELDS = (
    "id",
    "business_name",
    "display_name",
    "label",
    "address_1",
    "address_2",
    "city",
    "state",
    "post_code",
    "country",
    "country_code",
    "time_zone",
    "time_zone_identifier",
    "email_reply_to",
    "website_address",
    "contact_information",
    "additional_information",
    "additional_invoice_information",
    "business_registration_name",
    "business_registration_value",
    "show_in_online_bookings",
    "appointment_reminders_enabled",
    "archived_at",
    "deleted_at",
    "created_at",
    "updated_at",
)
DEFAULT_BUSINESS: dict[str, Any] = {
    "id": BUSINESS_ID,
    "business_name": "Sandbox Allied Health Fitzroy",
    "display_name": "Sandbox Allied Health",
    "label": "Sandbox Allied Health Fitzroy",
    "address_1": "100 Smith Street",
    "address_2": None,
    "city": "Fitzroy",
    "state": "VIC",
    "post_code": "3065",
    "country": "Australia",
    "country_code": "AU",
    "time_zone": "Melbourne",
    "time_zone_identifier": "Australia/Melbourne",
    "email_reply_to": "reception@example.com",
    "website_address": None,
    "contact_information": None,
    "additional_information": None,
    "additional_invoice_information": None,
    "business_registration_name": "ABN",
    "business_registration_value": "00 000 000 000",
    "show_in_online_bookings": True,
    "appointment_reminders_enabled": True,
    "appointment_type_ids": [],
    "archived_at": None,
    "deleted_at": None,
    "created_at": "2020-06-01T00:00:00Z",
    "updated_at": "2020-06-01T00:00:00Z",
}

# Fields a POST/PATCH may set (the spec's Patient request body), grouped by how they are validated.
_STR_255 = (
    "title",
    "preferred_first_name",
    "occupation",
    "emergency_contact",
    "address_1",
    "address_2",
    "address_3",
    "city",
    "old_reference_id",
    "medicare",
    "medicare_reference_number",
    "referral_source",
)
_STR_FREE = (
    "sex",
    "gender_identity",
    "state",
    "post_code",
    "country",
    "country_code",
    "notes",
    "appointment_notes",
    "dva_card_number",
    "invoice_default_to",
    "invoice_extra_information",
    "time_zone",
)
_BOOLS = (
    "accepted_privacy_policy",
    "accepted_email_marketing",
    "receives_confirmation_emails",
    "receives_cancellation_emails",
)
REMINDER_TYPES = ("None", "SMS", "Email", "SMS & Email")
PHONE_TYPES = ("Fax", "Home", "Mobile", "Other", "Work")
_PRONOUN_KEYS = ("accusative", "nominative", "predicative_possessive", "pronominal_possessive", "reflexive")

CUSTOM_FIELD_DEFINITIONS: list[dict[str, Any]] = [
    {
        "name": "Clinic sync",
        "token": seedmod.CUSTOM_SECTION_TOKEN,
        "archived": False,
        "fields": [
            {
                "name": "Stripe customer ID",
                "token": seedmod.CUSTOM_FIELD_STRIPE_ID_TOKEN,
                "type": "text",
                "archived": False,
            },
            {"name": "Health fund", "token": seedmod.CUSTOM_FIELD_HEALTH_FUND_TOKEN, "type": "text", "archived": False},
            {"name": "First visit", "token": seedmod.CUSTOM_FIELD_FIRST_VISIT_TOKEN, "type": "date", "archived": False},
        ],
    }
]
_CUSTOM_FIELDS = {f["token"]: f for s in CUSTOM_FIELD_DEFINITIONS for f in s["fields"]}


class ApiError(Exception):
    """Ends a request with an error response."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.response = Response(status, body, headers or {})


def _message(status: int, message: str) -> ApiError:
    return ApiError(status, {"message": message})


def _validation(errors: dict[str, str]) -> ApiError:
    return ApiError(422, {"message": "Validation Failed", "errors": errors})


class ClinikoEmulator:
    """Cliniko API v1 for one invented clinic; thread-safe; state lives in memory."""

    name = "cliniko"
    # Runtime-only (keys are never written to disk; the list cache is rebuilt): the trial's snapshot
    # (sandbox/persist.py) keeps the rest.
    SNAPSHOT_TRANSIENT = ("api_key", "limited_key", "_version", "_list_cache")

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        limited_key: str | None = DEFAULT_LIMITED_KEY,
        seed: int = 1,
        stock_adjustment_touches_product: bool = True,
        archived_filter_lists_live: bool = True,
    ) -> None:
        self.api_key = api_key
        self.limited_key = limited_key
        self._seed = seed
        # Cliniko does not document whether a stock adjustment moves its product's updated_at; the default
        # models that it does (stock_level is the product's own column), and the switch models that it does not,
        # so a client is tested against both (docs/sandbox.md).
        self._stock_touch_default = stock_adjustment_touches_product
        # Nor whether a listing with `q[]=archived_at:*` ("any value") lists live records beside the archived ones
        # (the default) or archived ones only (the switch): the client must lose nothing in either (docs/sandbox.md).
        self._archived_lists_live_default = archived_filter_lists_live
        self._lock = threading.RLock()
        self.reset()

    # -- state ---------------------------------------------------------------------------------------

    def reset(self) -> None:
        with self._lock:
            self.patients: dict[str, dict[str, Any]] = {}
            self.invoices: dict[str, dict[str, Any]] = {}
            self.invoice_items: dict[str, dict[str, Any]] = {}
            self.businesses: dict[str, dict[str, Any]] = {BUSINESS_ID: dict(DEFAULT_BUSINESS)}
            self.appointments: dict[str, dict[str, Any]] = {}
            self.products: dict[str, dict[str, Any]] = {}
            self.product_suppliers: dict[str, dict[str, Any]] = {}
            self.taxes: dict[str, dict[str, Any]] = {}
            self.stock_adjustments: dict[str, dict[str, Any]] = {}
            self.stock_touches_product = self._stock_touch_default
            self.archived_lists_live = self._archived_lists_live_default
            self.revoked: set[str] = set()
            # Hostile knob (admin `list_twice`): record id → fields of a second copy listed right after it.
            self.listed_twice: dict[str, dict[str, Any]] = {}
            # Hostile knob (admin `shuffle_ties`): records a listing's sort leaves tied come in a fresh order on
            # every page asked for, as PostgreSQL may give them across LIMIT/OFFSET pages.
            self.tie_shuffler: random.Random | None = None
            self.clock_offset = timedelta(0)
            # Filtered, sorted rows of recent list queries, so paging through thousands of invoices or items
            # filters and sorts once, not once a page (emptied by every write: see `touch`).
            self._version = 0
            self._list_cache: OrderedDict[tuple[Any, ...], list[dict[str, Any]]] = OrderedDict()
            self.rng = random.Random(self._seed)
            self._gen = seedmod._Gen(self._seed + 7919)  # ids and people for POSTs and edits

    def now(self) -> datetime:
        """The emulator's clock: real UTC time (plus any admin offset), whole seconds like Cliniko's."""
        return (datetime.now(UTC) + self.clock_offset).replace(microsecond=0)

    def now_text(self) -> str:
        return seedmod.fmt_time(self.now())

    def load(self, patients: list[dict[str, Any]]) -> None:
        with self._lock:
            self.touch()
            for record in patients:
                full = seedmod.blank_patient()
                full.update(record)
                self.patients[full["id"]] = full
                self._gen._ids.add(full["id"])

    def load_activity(
        self,
        invoices: list[dict[str, Any]],
        appointments: list[dict[str, Any]],
        invoice_items: list[dict[str, Any]] = (),  # type: ignore[assignment]
    ) -> None:
        """Invoices, their items and individual appointments in seed.py's internal form (ids of related records as
        `*_id`)."""
        with self._lock:
            self.touch()
            for invoice in invoices:
                self.invoices[invoice["id"]] = {**inv.blank_invoice(), "business_id": BUSINESS_ID, **invoice}
                self._gen._ids.add(invoice["id"])
            for item in invoice_items:
                self.invoice_items[item["id"]] = dict(item)
                self._gen._ids.add(item["id"])
            for appointment in appointments:
                self.appointments[appointment["id"]] = {"business_id": BUSINESS_ID, **appointment}
                self._gen._ids.add(appointment["id"])

    def load_catalogue(self, catalogue: seedmod.ProductSeed) -> None:
        """Products, suppliers, taxes and stock adjustments in seed.py's internal form."""
        with self._lock:
            self.touch()
            for table, records in (
                (self.products, catalogue.products),
                (self.product_suppliers, catalogue.suppliers),
                (self.taxes, catalogue.taxes),
                (self.stock_adjustments, catalogue.stock_adjustments),
            ):
                for record in records:
                    table[record["id"]] = dict(record)
                    self._gen._ids.add(record["id"])

    # -- server hooks --------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        with self._lock:
            try:
                response = self._route(request)
            except ApiError as exc:
                response = exc.response
            finally:
                if request.method != "GET":
                    self.touch()
            return self._finish(response)

    def restored(self) -> None:
        """After persist.load: cached list rows belong to the process that saved them."""
        self.touch()

    def touch(self) -> None:
        """Forget cached list results: call after changing records other than through `handle` or `admin`."""
        self._version += 1
        self._list_cache.clear()

    def _finish(self, response: Response) -> Response:
        # The Date header comes from the same clock as updated_at, so an edit made after a response is
        # never stamped earlier than that response's Date.
        response.headers.setdefault("Date", formatdate(self.now().timestamp(), usegmt=True))
        if response.body is not None and not isinstance(response.body, bytes | str):
            response.headers.setdefault("Content-Type", "application/json; charset=utf-8")
        return response

    def rate_limit(self, request: Request) -> RateLimit | None:
        user = self._user_for(request)
        if user is None:
            return None  # unauthenticated requests get their 401 instead
        return RateLimit(key=f"cliniko:{user}", limit=RATE_LIMIT_PER_MINUTE, per_seconds=60.0)

    def rate_limited_response(self, request: Request, reset_epoch: float) -> Response:
        # The limiter counts in real time; the reset is stated on this emulator's clock, like the Date header
        # beside it (the admin `clock` action can move it), as Cliniko states both from one clock.
        headers = {"X-RateLimit-Reset": str(int(reset_epoch + self.clock_offset.total_seconds()))}
        return self._finish(Response(429, {"message": MSG_RATE_LIMITED}, headers))

    def fault_response(self, request: Request, status: int) -> Response:
        if status == 429:
            return self.rate_limited_response(request, self.now().timestamp() + 1)
        if status == 500:
            return self._finish(Response(500, {"message": "Internal Server Error"}))
        # Gateways in front of Cliniko answer 502/503 with HTML, not JSON.
        title = {502: "502 Bad Gateway", 503: "503 Service Unavailable"}.get(status, f"{status} Error")
        html = f"<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>"
        return self._finish(Response(status, html, {"Content-Type": "text/html; charset=utf-8"}))

    def fault_eligible(self, request: Request) -> bool:
        return request.path.startswith(API_PREFIX + "/")

    # -- auth ----------------------------------------------------------------------------------------

    def _user_for(self, request: Request) -> str | None:
        """'admin' or 'limited' for a valid, unrevoked key; None otherwise."""
        key = _basic_username(request.headers.get("authorization", ""))
        if key is None:
            return None
        for role, configured in (("admin", self.api_key), ("limited", self.limited_key)):
            if configured and _same_key(key, configured) and role not in self.revoked:
                return role
        return None

    def _authenticate(self, request: Request) -> str:
        if not _UA_CONTACT.search(request.headers.get("user-agent", "")):
            raise _message(403, MSG_USER_AGENT)
        user = self._user_for(request)
        if user is None:
            raise ApiError(
                401,
                MSG_UNAUTHORISED,
                {"WWW-Authenticate": 'Basic realm="Application"', "Content-Type": "text/plain; charset=utf-8"},
            )
        return user

    # -- routing -------------------------------------------------------------------------------------

    def _route(self, request: Request) -> Response:
        if not request.path.startswith(API_PREFIX + "/"):
            raise _message(404, MSG_NOT_FOUND)
        user = self._authenticate(request)
        parts = request.path[len(API_PREFIX) + 1 :].strip("/").split("/")
        method = request.method
        handler = self._resolve(method, parts, user)
        return handler(request)

    def _resolve(self, method: str, parts: list[str], user: str) -> Callable[[Request], Response]:
        head, rest = parts[0], parts[1:]
        if head == "patients":
            return self._resolve_patients(method, rest)
        if head in ("invoices", "individual_appointments") and method == "GET" and len(rest) <= 1:
            return self._resolve_activity(head, rest)
        if head == "invoices" and method == "GET" and len(rest) == 2 and rest[1] == "invoice_items":
            # Deprecated in the spec, still served: the items of one invoice.
            return lambda r: self._invoice_items_of(r, rest[0])
        if head in ("invoice_items", "businesses") and method == "GET" and len(rest) <= 1:
            return self._resolve_billing(head, rest)
        if head in CATALOGUE_FILTERS:
            return self._resolve_catalogue(method, head, rest)
        if method == "GET" and parts == ["settings", "public"]:
            return lambda r: Response(200, self._public_settings())
        if method == "GET" and parts == ["settings"]:
            if user != "admin":
                raise _message(403, MSG_FORBIDDEN)
            return lambda r: Response(200, self._settings())
        if method == "GET" and parts == ["user"]:
            return lambda r: Response(200, self._user(r, user))
        raise _message(404, MSG_NOT_FOUND)

    def _resolve_patients(self, method: str, rest: list[str]) -> Callable[[Request], Response]:
        if not rest:
            if method == "GET":
                return self._list_patients
            if method == "POST":
                return self._create_patient
        elif len(rest) == 1:
            pid = rest[0]
            if method == "GET":
                return lambda r: self._get_patient(r, pid)
            if method == "PATCH":
                return lambda r: self._update_patient(r, pid)
            if method == "DELETE":  # deprecated; the spec summarises it as "Archive patient"
                return lambda r: self._archive(self._find(pid))
        elif len(rest) == 2 and method == "GET" and rest[1] == "invoices":
            return lambda r: self._invoices_of_patient(r, rest[0])
        elif len(rest) == 2 and method == "POST" and rest[1] in ("archive", "unarchive"):
            pid, action = rest
            if action == "archive":
                return lambda r: self._archive(self._find(pid))
            return lambda r: self._unarchive(r, pid)
        raise _message(404, MSG_NOT_FOUND)

    def _resolve_catalogue(self, method: str, head: str, rest: list[str]) -> Callable[[Request], Response]:
        """Reads of every catalogue resource; writes as the spec has them for products (POST, PATCH, POST
        archive, deprecated DELETE = archive) and stock adjustments (POST). Supplier and tax writes are not
        emulated (404)."""
        columns = CATALOGUE_FILTERS[head]
        table, render = {
            "products": (self.products, self.render_product),
            "product_suppliers": (self.product_suppliers, self.render_supplier),
            "taxes": (self.taxes, self.render_tax),
            "stock_adjustments": (self.stock_adjustments, self.render_stock_adjustment),
        }[head]
        if method == "GET" and not rest:
            return lambda r: self._list_table(r, head, table, columns, render)
        if method == "GET" and len(rest) == 1:
            return lambda r: Response(200, render(r, self._visible(r, _find_in(table, rest[0]))))
        if head == "stock_adjustments" and method == "POST" and not rest:
            return self._create_stock_adjustment
        if head == "products":
            if method == "POST" and not rest:
                return self._create_product
            if method == "PATCH" and len(rest) == 1:
                return lambda r: self._update_product(r, rest[0])
            if (method == "DELETE" and len(rest) == 1) or (method == "POST" and rest[1:] == ["archive"]):
                return lambda r: self._archive(_find_in(self.products, rest[0]))
        raise _message(404, MSG_NOT_FOUND)

    def _resolve_activity(self, head: str, rest: list[str]) -> Callable[[Request], Response]:
        table, columns, render = (
            (self.invoices, INVOICE_FILTERS, self.render_invoice)
            if head == "invoices"
            else (self.appointments, APPOINTMENT_FILTERS, self.render_appointment)
        )
        if not rest:
            return lambda r: self._list_table(r, head, table, columns, render)
        rid = rest[0]
        return lambda r: Response(200, render(r, self._hidden_unless_asked(r, table.get(rid))))

    def _resolve_billing(self, head: str, rest: list[str]) -> Callable[[Request], Response]:
        table, columns, render = (
            (self.invoice_items, INVOICE_ITEM_FILTERS, self.render_invoice_item)
            if head == "invoice_items"
            else (self.businesses, BUSINESS_FILTERS, self.render_business)
        )
        if not rest:
            return lambda r: self._list_table(r, head, table, columns, render)
        return lambda r: Response(200, render(r, self._hidden_unless_asked(r, table.get(rest[0]))))

    @staticmethod
    def _hidden_unless_asked(request: Request, record: dict[str, Any] | None) -> dict[str, Any]:
        """One record by id: an archived or deleted one only when the request filters on that column (the spec lists
        archived_at and deleted_at as filters on /invoices/{id}), e.g. q[]=deleted_at:*."""
        allowed = {"archived_at": "datetime", "deleted_at": "datetime"}
        filters = [parse_filter(text, allowed=allowed) for text in request.query_values("q[]")]
        named = {f.column for f in filters}
        if record is None:
            raise _message(404, MSG_NOT_FOUND)
        for column in ("archived_at", "deleted_at"):
            if record.get(column) is not None and column not in named:
                raise _message(404, MSG_NOT_FOUND)
        if not all(f.matches(record) for f in filters):
            raise _message(404, MSG_NOT_FOUND)
        return record

    def _invoices_of_patient(self, request: Request, patient_id: str) -> Response:
        """GET /patients/{id}/invoices: /invoices narrowed to one patient (its filters apply too)."""
        self._find(patient_id)
        own = {k: v for k, v in self.invoices.items() if v["patient_id"] == patient_id}
        return self._list_table(request, "invoices", own, INVOICE_FILTERS, self.render_invoice, f"patient {patient_id}")

    def _invoice_items_of(self, request: Request, invoice_id: str) -> Response:
        self._hidden_unless_asked(request, self.invoices.get(invoice_id))
        rows = [i for i in self.invoice_items.values() if i["invoice_id"] == invoice_id and i["deleted_at"] is None]
        rows = sort_records(rows, None, None, frozenset(INVOICE_ITEM_FILTERS))
        return Response(200, self._page(request, "invoice_items", rows, self.render_invoice_item))

    # -- invoices and individual appointments: reads -----------------------------------------------------

    def _list_table(
        self,
        request: Request,
        name: str,
        table: dict[str, dict[str, Any]],
        columns: dict[str, str],
        render: Callable[[Request, dict[str, Any]], dict[str, Any]],
        narrowed_to: str = "",
    ) -> Response:
        """Like /patients: archived and deleted records are hidden unless a filter names that column (the catalogue
        has no deleted_at; taxes and suppliers are never archived)."""
        terms = tuple(request.query_values("q[]"))
        sort, order = request.query_value("sort"), request.query_value("order")
        # `narrowed_to` tells apart the throwaway tables a nested list makes (their ids can be reused).
        key = (self._version, name, narrowed_to, id(table), len(table), terms, sort, order)
        rows = self._list_cache.get(key)
        if rows is None:
            filters = [parse_filter(text, allowed=columns) for text in terms]
            named = {f.column for f in filters}
            tests = [f.matches for f in filters]
            rows = [
                row
                for row in table.values()
                if ("deleted_at" in named or row.get("deleted_at") is None)
                and ("archived_at" in named or row.get("archived_at") is None)
                and all(test(row) for test in tests)
                and self._listed_with_archived(filters, row)
            ]
            rows = sort_records(rows, sort, order, frozenset(columns))
            self._list_cache[key] = rows
            while len(self._list_cache) > 16:
                self._list_cache.popitem(last=False)
        return Response(200, self._page(request, name, self._shuffled_ties(rows, sort), render))

    def _shuffled_ties(self, rows: list[dict[str, Any]], sort: str | None) -> list[dict[str, Any]]:
        """With `shuffle_ties` on, the sorted rows with records the sort leaves tied in a fresh order (a sort that
        names the id leaves none tied)."""
        if self.tie_shuffler is None:
            return rows
        columns = [term.strip().partition(":")[0] for term in (sort or "created_at").split(",")]
        if "id" in columns:
            return rows
        shuffled: list[dict[str, Any]] = []
        for _, tied in itertools.groupby(rows, key=lambda row: [_sort_key(row, c) for c in columns]):
            run = list(tied)
            self.tie_shuffler.shuffle(run)
            shuffled.extend(run)
        return shuffled

    def render_invoice(self, request: Request, row: dict[str, Any]) -> dict[str, Any]:
        """An Invoice exactly as the spec's schema has it (belongs-to links only when there is a target)."""
        base = f"{request.base_url}{API_PREFIX}"
        own = f"{base}/invoices/{row['id']}"
        out: dict[str, Any] = {
            key: row.get(key)
            for key in (
                "id",
                "number",
                "issue_date",
                "status",
                "invoice_to",
                "notes",
                "patient_extra_information",
                "calculation_method",
                "net_amount",
                "tax_amount",
                "discounted_amount",
                "total_amount",
                "closed_at",
                "created_at",
                "updated_at",
                "archived_at",
                "deleted_at",
            )
        }
        out["status_description"] = INVOICE_STATUSES.get(row.get("status"))  # type: ignore[arg-type]
        out["calculation_method_description"] = CALCULATION_METHODS.get(row.get("calculation_method"))  # type: ignore[arg-type]
        out["online_payment_url"] = None
        out["patient"] = _link(f"{base}/patients/{row['patient_id']}")
        out["practitioner"] = _link(f"{base}/practitioners/{row['practitioner_id']}")
        out["business"] = _link(f"{base}/businesses/{row['business_id']}")
        if row.get("appointment_id"):
            out["appointment"] = _link(f"{base}/individual_appointments/{row['appointment_id']}")
        if row.get("original_invoice_id"):
            out["original_invoice"] = _link(f"{base}/invoices/{row['original_invoice_id']}")
        out["invoice_items"] = _link(f"{base}/invoice_items?q%5B%5D=invoice_id%3A%3D{row['id']}")
        out["reversed_invoices"] = _link(f"{base}/invoices?q%5B%5D=original_invoice_id%3A%3D{row['id']}")
        out["links"] = {"self": own}
        return out

    def render_appointment(self, request: Request, row: dict[str, Any]) -> dict[str, Any]:
        """An IndividualAppointment exactly as the spec's schema has it (one-off: no repeat rule)."""
        base = f"{request.base_url}{API_PREFIX}"
        own = f"{base}/individual_appointments/{row['id']}"
        out: dict[str, Any] = {
            key: row.get(key)
            for key in (
                "id",
                "starts_at",
                "ends_at",
                "patient_name",
                "cancelled_at",
                "cancellation_reason",
                "cancellation_reason_description",
                "cancellation_note",
                "did_not_arrive",
                "patient_arrived",
                "email_reminder_sent",
                "sms_reminder_sent",
                "notes",
                "has_patient_appointment_notes",
                "online_booking_policy_accepted",
                "booking_ip_address",
                "invoice_status",
                "treatment_note_status",
                "telehealth_url",
                "created_at",
                "updated_at",
                "archived_at",
                "deleted_at",
            )
        }
        out["patient"] = _link(f"{base}/patients/{row['patient_id']}")
        out["practitioner"] = _link(f"{base}/practitioners/{row['practitioner_id']}")
        out["business"] = _link(f"{base}/businesses/{row['business_id']}")
        out["appointment_type"] = _link(f"{base}/appointment_types/{row['appointment_type_id']}")
        out["attendees"] = _link(f"{own}/attendees")
        out["conflicts"] = _link(f"{own}/conflicts")
        out["repeat_rule"] = None
        out["repeats"] = None
        out["links"] = {"self": own}
        return out

    # -- patients: reads -----------------------------------------------------------------------------

    def _list_patients(self, request: Request) -> Response:
        filters = [parse_filter(text) for text in request.query_values("q[]")]
        touches_archived = any(f.column == "archived_at" for f in filters)
        rows = [
            p
            for p in self.patients.values()
            if p["deleted_at"] is None
            and (touches_archived or p["archived_at"] is None)
            and all(f.matches(p) for f in filters)
            and self._listed_with_archived(filters, p)
        ]
        sort = request.query_value("sort")
        rows = self._shuffled_ties(sort_records(rows, sort, request.query_value("order"), SORTABLE), sort)
        return Response(200, self._page(request, "patients", rows, self.render_patient))

    def _page(
        self,
        request: Request,
        name: str,
        rows: list[dict[str, Any]],
        render: Callable[[Request, dict[str, Any]], dict[str, Any]],
    ) -> dict[str, Any]:
        page, per_page = _paging(request)
        start = (page - 1) * per_page
        chunk = rows[start : start + per_page]
        links = {"self": _page_url(request, page, per_page)}
        if start + per_page < len(rows):
            links["next"] = _page_url(request, page + 1, per_page)
        if page > 1:
            links["previous"] = _page_url(request, page - 1, per_page)
        rendered: list[dict[str, Any]] = []
        for row in chunk:
            rendered.append(render(request, row))
            twice = self.listed_twice.get(str(row.get("id")))
            if twice is not None:  # the hostile knob: the same record twice on one page
                rendered.append({**rendered[-1], **twice})
        return {name: rendered, "total_entries": len(rows), "links": links}

    def _listed_with_archived(self, filters: list[PatientFilter], row: dict[str, Any]) -> bool:
        """With `archived_lists_live` off, a listing filtered on `archived_at:*` lists archived records only."""
        if self.archived_lists_live or row.get("archived_at") is not None:
            return True
        return not any(f.column == "archived_at" and f.op == "*" for f in filters)

    def _get_patient(self, request: Request, pid: str) -> Response:
        return Response(200, self.render_patient(request, self._visible(request, self._find(pid))))

    @staticmethod
    def _visible(request: Request, record: dict[str, Any]) -> dict[str, Any]:
        """An archived record is hidden unless the request filters on archived_at (e.g. q[]=archived_at:*), the
        reading of the spec that lists archived_at as a filter on single-record GETs (/patients/{id},
        /products/{id}, /stock_adjustments/{id})."""
        filters = [parse_filter(text, allowed={"archived_at": "datetime"}) for text in request.query_values("q[]")]
        if record.get("archived_at") is not None and not filters:
            raise _message(404, MSG_NOT_FOUND)
        if not all(f.matches(record) for f in filters):
            raise _message(404, MSG_NOT_FOUND)
        return record

    def _find(self, pid: str) -> dict[str, Any]:
        record = self.patients.get(pid)
        if record is None or record["deleted_at"] is not None:
            raise _message(404, MSG_NOT_FOUND)
        return record

    # -- patients: writes ----------------------------------------------------------------------------

    def _create_patient(self, request: Request) -> Response:
        body = _json_body(request)
        record = seedmod.blank_patient()
        record["id"] = self._gen.new_id()
        # New patients take the account's default reminder type; the spec's enum has no null.
        record["reminder_type"] = self._public_settings()["reminders"]["default_reminder_type"]
        changes = validate_patient_body(body, creating=True)
        record.update(changes)
        record["created_at"] = record["updated_at"] = self.now_text()
        self.patients[record["id"]] = record
        rendered = self.render_patient(request, record)
        return Response(201, rendered, {"Location": rendered["links"]["self"]}, mutated=True)

    def _update_patient(self, request: Request, pid: str) -> Response:
        record = self._find(pid)
        changes = validate_patient_body(_json_body(request), creating=False)
        if changes.get("custom_fields"):
            changes["custom_fields"] = {**(record["custom_fields"] or {}), **changes["custom_fields"]}
        changed = self._apply(record, changes)
        return Response(200, self.render_patient(request, record), mutated=changed)

    def _apply(self, record: dict[str, Any], changes: dict[str, Any]) -> bool:
        """Write changes; like Rails, updated_at moves only when a value really changed."""
        changed = {k: v for k, v in changes.items() if record.get(k) != v}
        if not changed:
            return False
        record.update(changed)
        record["updated_at"] = max(self.now_text(), record["updated_at"])
        return True

    def _archive(self, record: dict[str, Any]) -> Response:
        changed = record["archived_at"] is None
        if changed:
            now = self.now_text()
            record["archived_at"] = record["updated_at"] = now
        return Response(204, None, mutated=changed)

    def _unarchive(self, request: Request, pid: str) -> Response:
        record = self._find(pid)
        if record["merged_at"] is not None:
            raise _validation({"base": "A merged patient cannot be unarchived"})
        changed = self._apply(record, {"archived_at": None})
        return Response(200, self.render_patient(request, record), mutated=changed)

    # -- products and stock: writes --------------------------------------------------------------------

    def _create_product(self, request: Request) -> Response:
        record = self._insert_product(self._product_changes(_json_body(request, "product"), creating=True))
        rendered = self.render_product(request, record)
        return Response(201, rendered, {"Location": rendered["links"]["self"]}, mutated=True)

    def _update_product(self, request: Request, pid: str) -> Response:
        record = _find_in(self.products, pid)
        changed = self._apply(record, self._product_changes(_json_body(request, "product"), creating=False))
        return Response(200, self.render_product(request, record), mutated=changed)

    def _product_changes(self, body: dict[str, Any], *, creating: bool) -> dict[str, Any]:
        return validate_product_body(
            body, creating=creating, tax_ids=set(self.taxes), supplier_ids=set(self.product_suppliers)
        )

    def _insert_product(self, fields: dict[str, Any]) -> dict[str, Any]:
        record = seedmod.blank_product()
        record.update(fields)
        record["id"] = self._gen.new_id()
        record["created_at"] = record["updated_at"] = self.now_text()
        self.products[record["id"]] = record
        return record

    def _create_stock_adjustment(self, request: Request) -> Response:
        body = _json_body(request, "stock_adjustment")
        adjustment = self._adjust_stock(validate_stock_adjustment_body(body, set(self.products)))
        rendered = self.render_stock_adjustment(request, adjustment)
        return Response(201, rendered, {"Location": rendered["links"]["self"]}, mutated=True)

    def _adjust_stock(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Record an adjustment and move its product's stock level; the product's updated_at moves only while
        `stock_touches_product` is on (Cliniko does not document which it does)."""
        now = self.now_text()
        adjustment = {"id": self._gen.new_id(), **changes, "created_at": now, "updated_at": now, "archived_at": None}
        self.stock_adjustments[adjustment["id"]] = adjustment
        product = self.products[adjustment["product_id"]]
        level = Decimal(product["stock_level"] or "0") + Decimal(adjustment["quantity"])
        product["stock_level"] = seedmod.decimal_text(level)
        if self.stock_touches_product:
            product["updated_at"] = max(now, product["updated_at"])
        return adjustment

    # -- rendering -----------------------------------------------------------------------------------

    def render_patient(self, request: Request, p: dict[str, Any]) -> dict[str, Any]:
        """A Patient exactly as the spec's schema has it; every field present, null where empty."""
        base = f"{request.base_url}{API_PREFIX}"
        own = f"{base}/patients/{p['id']}"
        out: dict[str, Any] = {k: p[k] for k in _RENDERED_SCALARS}
        # (Only text parts: `put_raw_patients` may have stored anything in a name.)
        out["label"] = " ".join(part for part in (p["first_name"], p["last_name"]) if isinstance(part, str) and part)
        out["label"] = out["label"] or None
        out["gender"] = p.get("gender")
        out["patient_phone_numbers"] = _render_phones(p["patient_phone_numbers"], p["country_code"])
        out["custom_fields"] = _render_custom_fields(p["custom_fields"])
        for rel in ("appointments", "attendees", "invoices", "medical_alerts", "patient_attachments", "relationships"):
            out[rel] = {"links": {"self": f"{own}/{rel}"}}
        # Belongs-to links appear only when there is something to point at.
        if p.get("merged_with_patient_id"):
            out["merged_with_patient"] = {"links": {"self": f"{base}/patients/{p['merged_with_patient_id']}"}}
        out["links"] = {"self": own}
        return out

    def render_product(self, request: Request, p: dict[str, Any]) -> dict[str, Any]:
        """A Product exactly as the spec's schema has it. Both prices come from the one price staff entered and
        the tax's rate; the supplier and tax links (and product_supplier_id) appear only when there is one."""
        base = f"{request.base_url}{API_PREFIX}"
        own = f"{base}/products/{p['id']}"
        tax = self.taxes.get(p["tax_id"] or "")
        supplier = self.product_suppliers.get(p["product_supplier_id"] or "")
        price_ex_tax, price_including_tax = seedmod.product_prices(
            p["price"], p["price_includes_tax"], tax["rate"] if tax else None
        )
        out: dict[str, Any] = {
            key: p[key]
            for key in (
                "id",
                "name",
                "item_code",
                "serial_number",
                "notes",
                "cost_price",
                "stock_level",
                "archived_at",
                "created_at",
                "updated_at",
            )
        }
        out["price_ex_tax"], out["price_including_tax"] = price_ex_tax, price_including_tax
        out["product_supplier_name"] = supplier["name"] if supplier else None  # deprecated, still served
        if supplier:
            out["product_supplier"] = _link(f"{base}/product_suppliers/{supplier['id']}")
            out["product_supplier_id"] = supplier["id"]
        if tax:
            out["tax"] = _link(f"{base}/taxes/{tax['id']}")
        out["stock_adjustments"] = _link(f"{base}/stock_adjustments?q%5B%5D=product_id%3A%3D{p['id']}")
        out["links"] = {"self": own}
        return out

    def render_supplier(self, request: Request, row: dict[str, Any]) -> dict[str, Any]:
        own = f"{request.base_url}{API_PREFIX}/product_suppliers/{row['id']}"
        return {**{k: row[k] for k in ("id", "name", "created_at", "updated_at")}, "links": {"self": own}}

    def render_tax(self, request: Request, row: dict[str, Any]) -> dict[str, Any]:
        own = f"{request.base_url}{API_PREFIX}/taxes/{row['id']}"
        # `amount` is the deprecated name of the rate, still in the schema.
        fields = {k: row[k] for k in ("id", "name", "rate", "created_at", "updated_at")}
        return {**fields, "amount": row["rate"], "links": {"self": own}}

    def render_stock_adjustment(self, request: Request, row: dict[str, Any]) -> dict[str, Any]:
        base = f"{request.base_url}{API_PREFIX}"
        fields = ("id", "adjustment_type", "quantity", "notes", "archived_at", "created_at", "updated_at")
        out: dict[str, Any] = {k: row[k] for k in fields}
        out["comment"] = row["notes"]  # deprecated: "Use notes attribute instead"
        out["product"] = _link(f"{base}/products/{row['product_id']}")
        out["user"] = _link(f"{base}/users/{row.get('user_id') or USER_ID}")
        out["links"] = {"self": f"{base}/stock_adjustments/{row['id']}"}
        return out

    def _public_settings(self) -> dict[str, Any]:
        return {
            "account": {
                "id": ACCOUNT_ID,
                "name": "Sandbox Allied Health",
                "subdomain": "sandbox-allied-health",
                "country": "Australia",
                "country_code": "AU",
                "currency_symbol": "$",
                "time_zone_support": False,
                "has_time_travelers": False,
            },
            "patient_custom_fields_definition": {"sections": CUSTOM_FIELD_DEFINITIONS},
            "reminders": {"default_reminder_type": "SMS & Email"},
            "terminology": {"patient": "patient", "titles": ["Mr", "Mrs", "Ms", "Miss", "Dr"]},
            "online_payments": {"activated": False},
        }

    def _settings(self) -> dict[str, Any]:
        public = self._public_settings()
        public["account"] = {
            **public["account"],
            "email_from": "reception@example.com",
            "first_name": "Sandy",
            "last_name": "Box",
        }
        return public

    def _user(self, request: Request, user: str) -> dict[str, Any]:
        uid = USER_ID if user == "admin" else LIMITED_USER_ID
        return {
            "id": uid,
            "title": None,
            "first_name": "Sandy" if user == "admin" else "Robin",
            "last_name": "Box" if user == "admin" else "Reception",
            "email": "sandy.box@example.com" if user == "admin" else "robin.reception@example.com",
            "role": "administrator" if user == "admin" else "receptionist",
            "active": True,
            "user_active": True,
            "phone_numbers": [],
            "time_zone": "Melbourne",
            "time_zone_identifier": "Australia/Melbourne",
            "created_at": "2020-06-01T00:00:00Z",
            "updated_at": "2020-06-01T00:00:00Z",
            "links": {"self": f"{request.base_url}{API_PREFIX}/users/{uid}"},
        }

    def render_invoice_item(self, request: Request, row: dict[str, Any]) -> dict[str, Any]:
        """An InvoiceItem as the spec's schema has it: a product or billable item link (whichever it was made
        from), `total_including_tax` a JSON number as the spec types it."""
        base = f"{request.base_url}{API_PREFIX}"
        out: dict[str, Any] = {
            key: row.get(key)
            for key in (
                "id",
                "name",
                "code",
                "quantity",
                "unit_price",
                "discount_percentage",
                "discounted_amount",
                "is_monetary_discount",
                "net_price",
                "tax_name",
                "tax_rate",
                "tax_amount",
                "concession_type_name",
                "created_at",
                "updated_at",
                "archived_at",
                "deleted_at",
            )
        }
        total = row.get("total_including_tax")
        out["total_including_tax"] = float(total) if total is not None else None
        out["invoice"] = _link(f"{base}/invoices/{row['invoice_id']}")
        if row.get("product_id"):
            out["product"] = _link(f"{base}/products/{row['product_id']}")
        if row.get("billable_item_id"):
            out["billable_item"] = _link(f"{base}/billable_items/{row['billable_item_id']}")
        out["links"] = {"self": f"{base}/invoice_items/{row['id']}"}
        return out

    def render_business(self, request: Request, row: dict[str, Any]) -> dict[str, Any]:
        own = f"{request.base_url}{API_PREFIX}/businesses/{row['id']}"
        return {
            **{k: row.get(k) for k in BUSINESS_FIELDS},
            "appointment_type_ids": list(row.get("appointment_type_ids") or []),
            "appointments": {"links": {"self": f"{own}/appointments"}},
            "practitioners": {"links": {"self": f"{own}/practitioners"}},
            "links": {"self": own},
        }

    # -- admin ---------------------------------------------------------------------------------------

    def admin(self, action: str, params: dict[str, Any]) -> Response | None:
        handler = _ADMIN_ACTIONS.get(action)
        if handler is None:
            return None
        with self._lock:
            try:
                return Response(200, handler(self, params))
            except ApiError as exc:  # e.g. `fields` that fail the API's validation: the API's own 422
                return exc.response
            except (ValueError, KeyError, TypeError) as exc:
                return Response(400, {"error": f"{action}: {exc}"})
            finally:
                self.touch()

    def _admin_reset(self, params: dict[str, Any]) -> dict[str, Any]:
        self.reset()
        return {"ok": True}

    def _admin_seed(self, params: dict[str, Any]) -> dict[str, Any]:
        result = seedmod.seed_profile(
            str(params.get("profile", "clean")),
            int(params.get("patients", 50)),
            int(params.get("seed", 1)),
            now=self.now(),
            products=int(params.get("products", seedmod.DEFAULT_PRODUCTS)),
        )
        if params.get("replace", True):
            for table in self._tables():
                table.clear()
            self.businesses[BUSINESS_ID] = dict(DEFAULT_BUSINESS)  # the main clinic is always there
        self.load(result.patients)
        self.load_activity(result.invoices, result.appointments, result.invoice_items)
        catalogue = result.catalogue
        self.load_catalogue(catalogue)
        return {
            "ids": [p["id"] for p in result.patients],
            "cases": result.cases,
            "stripe_customers": result.stripe_customers,
            "inactive_ids": result.inactive_ids,
            "invoices": len(result.invoices),
            "appointments": len(result.appointments),
            "product_ids": [p["id"] for p in catalogue.products],
            "product_cases": catalogue.cases,
            "stripe_products": result.stripe_products,
            "taxes": {tax["name"]: tax["id"] for tax in catalogue.taxes},
            "supplier_ids": [supplier["id"] for supplier in catalogue.suppliers],
            "stock_adjustments": len(catalogue.stock_adjustments),
        }

    def _tables(self) -> tuple[dict[str, dict[str, Any]], ...]:
        return (
            self.patients,
            self.invoices,
            self.invoice_items,
            self.businesses,
            self.appointments,
            self.products,
            self.product_suppliers,
            self.taxes,
            self.stock_adjustments,
        )

    def _admin_book(self, params: dict[str, Any]) -> dict[str, Any]:
        """A new individual appointment for `patient_id`, starting `starts_at` (default: an hour from now).

        Booking does not touch the patient record (its updated_at stays), as on Cliniko."""
        patient = self._find_any(str(params["patient_id"]))
        now = self.now()
        start = _parse_datetime(params["starts_at"]) if params.get("starts_at") else now + timedelta(hours=1)
        appointment = seedmod._appointment(self._gen, self.rng, patient, start, now)
        appointment.update(cancelled_at=None, cancellation_reason=None, cancellation_reason_description=None)
        appointment["created_at"] = appointment["updated_at"] = seedmod.fmt_time(now)
        self.load_activity([], [appointment])
        return {"id": appointment["id"], "starts_at": appointment["starts_at"]}

    def _admin_edit(self, params: dict[str, Any]) -> dict[str, Any]:
        ids = self._pick_live(params)
        fields = params.get("fields")
        changes: dict[str, dict[str, Any]] = {}
        for pid in ids:
            change = validate_patient_body(fields, creating=False) if fields else self._random_edit(self.patients[pid])
            self._apply(self.patients[pid], change)
            changes[pid] = change
        return {"ids": ids, "changes": changes}

    def _pick_live(self, params: dict[str, Any], kind: str = "patient") -> list[str]:
        """`ids` (each must exist), or `count` live records of `kind` ("patient" or "product") picked at random."""
        table = self.products if kind == "product" else self.patients
        if params.get("ids"):
            ids = [str(i) for i in params["ids"]]
            for rid in ids:
                self._find_any(rid, kind)
            return ids
        live = sorted(rid for rid, r in table.items() if r["archived_at"] is None and r.get("deleted_at") is None)
        return self.rng.sample(live, min(int(params.get("count", 1)), len(live)))

    def _random_edit(self, record: dict[str, Any]) -> dict[str, Any]:
        """Change one mapped field group (name, phone, address or email), as staff would."""
        kind = self.rng.choice(("name", "phone", "address", "email"))
        if kind == "name":
            other = self.rng.choice(seedmod.LAST_NAMES)
            double_barrelled = f"{record['last_name']}-{other}"
            return {"last_name": double_barrelled if len(double_barrelled) <= 255 else other}
        if kind == "phone":
            return {"patient_phone_numbers": [{"number": self._gen.mobile(), "phone_type": "Mobile"}]}
        if kind == "address":
            suburb, state, post_code = self.rng.choice(seedmod.SUBURBS)
            street = f"{self.rng.randint(1, 400)} {self.rng.choice(seedmod.STREETS)}"
            return {"address_1": street, "city": suburb, "state": state, "post_code": post_code}
        return {"email": self._gen.unique_email(record["first_name"] or "patient", f"{record['last_name']}.new")}

    def _find_any(self, rid: str, kind: str = "patient") -> dict[str, Any]:
        table = self.products if kind == "product" else self.patients
        if rid not in table:
            raise KeyError(f"no {kind} {rid}")
        return table[rid]

    def _admin_archive(self, params: dict[str, Any]) -> dict[str, Any]:
        ids = [str(i) for i in params.get("ids", [])]
        for pid in ids:
            if self._find_any(pid)["archived_at"] is None:
                self._apply(self.patients[pid], {"archived_at": self.now_text()})
        return {"ids": ids}

    def _admin_unarchive(self, params: dict[str, Any]) -> dict[str, Any]:
        ids = [str(i) for i in params.get("ids", [])]
        for pid in ids:
            self._apply(self._find_any(pid), {"archived_at": None, "merged_at": None, "merged_with_patient_id": None})
        return {"ids": ids}

    def _admin_merge(self, params: dict[str, Any]) -> dict[str, Any]:
        """Merge each of `ids` into `into` (default: the oldest other live patient)."""
        ids = [str(i) for i in params.get("ids", [])]
        merged: dict[str, str] = {}
        for pid in ids:
            record = self._find_any(pid)
            into = str(params["into"]) if params.get("into") else self._oldest_live(exclude=set(ids))
            self._find_any(into)
            now = self.now_text()
            self._apply(record, {"archived_at": now, "merged_at": now, "merged_with_patient_id": into})
            merged[pid] = into
        for into in set(merged.values()):  # the survivor gains the merged records' history
            self.patients[into]["updated_at"] = max(self.now_text(), self.patients[into]["updated_at"])
        return {"merged": merged}

    def _oldest_live(self, exclude: set[str]) -> str:
        live = [p for p in self.patients.values() if p["archived_at"] is None and p["deleted_at"] is None]
        live = [p for p in live if p["id"] not in exclude]
        if not live:
            raise ValueError("no live patient to merge into")
        return min(live, key=lambda p: (p["created_at"], int(p["id"])))["id"]

    def _admin_delete(self, params: dict[str, Any]) -> dict[str, Any]:
        ids = [str(i) for i in params.get("ids", [])]
        for pid in ids:
            self._apply(self._find_any(pid), {"deleted_at": self.now_text()})
        return {"ids": ids}

    def _admin_revoke_key(self, params: dict[str, Any]) -> dict[str, Any]:
        role = str(params.get("key", "admin"))
        if role not in ("admin", "limited"):
            raise ValueError("key must be 'admin' or 'limited'")
        self.revoked.add(role)
        return {"revoked": sorted(self.revoked)}

    def _admin_restore_key(self, params: dict[str, Any]) -> dict[str, Any]:
        self.revoked.discard(str(params.get("key", "admin")))
        return {"revoked": sorted(self.revoked)}

    def _admin_clock(self, params: dict[str, Any]) -> dict[str, Any]:
        self.clock_offset += timedelta(seconds=float(params.get("advance_s", 0)))
        return {"now": self.now_text(), "offset_s": self.clock_offset.total_seconds()}

    def _admin_put_raw_patients(self, params: dict[str, Any]) -> dict[str, Any]:
        """Hostile knob: store `patients` (partial internal records, each with an `id` and `updated_at`) as given,
        with no validation — ids and values a real Cliniko would never hold (`-1`, an object for a name)."""
        records = list(params["patients"])
        self.load(records)
        return {"ids": [str(record["id"]) for record in records]}

    def _admin_list_twice(self, params: dict[str, Any]) -> dict[str, Any]:
        """Hostile knob: list each of `ids` twice on its page, the second copy with `fields` put over it (none:
        an identical copy). `ids: []` stops it."""
        fields = dict(params.get("fields") or {})
        ids = [str(rid) for rid in params["ids"]]
        self.listed_twice = {rid: dict(fields) for rid in ids}
        return {"ids": ids}

    def _admin_shuffle_ties(self, params: dict[str, Any]) -> dict[str, Any]:
        """Hostile knob: `{"seed": N}` makes every listing whose sort does not name the id give the records it leaves
        tied (one `updated_at`, one `issue_date`) in a fresh order on each page asked for, from that seed, as a real
        server may across offset pages; `{"seed": null}` stops it (`reset` too)."""
        seed = params.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError("seed must be a whole number or null")
        self.tie_shuffler = None if seed is None else random.Random(seed)
        return {"shuffle_ties": seed is not None}

    def _admin_dump(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "patients": [dict(p) for p in self.patients.values()],
            "invoices": [dict(i) for i in self.invoices.values()],
            "invoice_items": [dict(i) for i in self.invoice_items.values()],
            "businesses": [dict(b) for b in self.businesses.values()],
            "appointments": [dict(a) for a in self.appointments.values()],
            "products": [dict(p) for p in self.products.values()],
            "product_suppliers": [dict(s) for s in self.product_suppliers.values()],
            "taxes": [dict(t) for t in self.taxes.values()],
            "stock_adjustments": [dict(a) for a in self.stock_adjustments.values()],
            "stock_touches_product": self.stock_touches_product,
            "archived_lists_live": self.archived_lists_live,
            "now": self.now_text(),
        }

    # -- admin: products -----------------------------------------------------------------------------

    def _admin_add_products(self, params: dict[str, Any]) -> dict[str, Any]:
        """New products made now: each of `products` (bodies validated like POST /products), and `count` ordinary
        ones (default 1 when no bodies are given)."""
        records = [
            self._insert_product(self._product_changes(body, creating=True)) for body in params.get("products") or []
        ]
        count = int(params.get("count", 0 if records else 1))
        taxes = {tax["name"]: tax["id"] for tax in self.taxes.values()}
        taken = {p["name"] for p in self.products.values()}
        for name in seedmod.product_names(self.rng, count, taken):
            fields = seedmod.ordinary_product(self._gen, name, taxes, sorted(self.product_suppliers))
            records.append(
                self._insert_product({k: v for k, v in fields.items() if k not in ("id", "created_at", "updated_at")})
            )
        return {"ids": [r["id"] for r in records]}

    def _admin_set_product_price(self, params: dict[str, Any]) -> dict[str, Any]:
        """Staff change product `id`'s price to `price`, entered including tax if `includes_tax` (default: as the
        product's price was entered); both prices follow from it and the product's tax rate."""
        record = self._find_any(str(params["id"]), "product")
        body = {"price": params["price"]}
        if "includes_tax" in params:
            body["price_includes_tax"] = params["includes_tax"]
        self._apply(record, self._product_changes(body, creating=False))
        tax = self.taxes.get(record["tax_id"] or "")
        ex_tax, including_tax = seedmod.product_prices(
            record["price"], record["price_includes_tax"], tax and tax["rate"]
        )
        return {
            "id": record["id"],
            "price_ex_tax": ex_tax,
            "price_including_tax": including_tax,
            "updated_at": record["updated_at"],
        }

    def _admin_edit_products(self, params: dict[str, Any]) -> dict[str, Any]:
        """Like `edit` for patients: `fields` (validated like a PATCH) on `ids`/`count` products, or one random
        staff change each (a new name or a new price)."""
        ids = self._pick_live(params, "product")
        fields = params.get("fields")
        changes: dict[str, dict[str, Any]] = {}
        for pid in ids:
            record = self.products[pid]
            if fields:
                change = self._product_changes(fields, creating=False)
            elif self.rng.random() < 0.5:
                taken = {p["name"] for p in self.products.values()}
                change = {"name": seedmod.product_names(self.rng, 1, taken)[0]}
            else:
                current = seedmod.decimal_text(Decimal(record["price"]))
                change = {"price": seedmod.decimal_text(Decimal(self.rng.choice(seedmod.PRODUCT_PRICES)))}
                if change["price"] == current:
                    change["price"] = seedmod.decimal_text(Decimal(current) + 1)
            self._apply(record, change)
            changes[pid] = change
        return {"ids": ids, "changes": changes}

    def _admin_archive_products(self, params: dict[str, Any]) -> dict[str, Any]:
        ids = [str(i) for i in params.get("ids", [])]
        for pid in ids:
            record = self._find_any(pid, "product")
            if record["archived_at"] is None:
                self._apply(record, {"archived_at": self.now_text()})
        return {"ids": ids}

    def _admin_unarchive_products(self, params: dict[str, Any]) -> dict[str, Any]:
        ids = [str(i) for i in params.get("ids", [])]
        for pid in ids:
            self._apply(self._find_any(pid, "product"), {"archived_at": None})
        return {"ids": ids}

    def _admin_adjust_stock(self, params: dict[str, Any]) -> dict[str, Any]:
        """A stock adjustment as staff make one: `product_id`, a signed `quantity`, and optionally
        `adjustment_type` (default Stock Purchase when adding, Item Sold when removing) and `notes`."""
        body = dict(params)
        if "adjustment_type" not in body:
            body["adjustment_type"] = "Item Sold" if Decimal(str(params["quantity"])) < 0 else "Stock Purchase"
        adjustment = self._adjust_stock(validate_stock_adjustment_body(body, set(self.products)))
        product = self.products[adjustment["product_id"]]
        return {
            "id": adjustment["id"],
            "stock_level": product["stock_level"],
            "product_updated_at": product["updated_at"],
        }

    def _admin_stock_touches_product(self, params: dict[str, Any]) -> dict[str, Any]:
        """`{"enabled": false}`: stock adjustments stop moving their product's updated_at (`true`: they move it, the
        default). Without `enabled`, just says which is on."""
        if "enabled" in params:
            enabled = params["enabled"]
            if not isinstance(enabled, bool):
                raise ValueError("enabled must be true or false")
            self.stock_touches_product = enabled
        return {"stock_touches_product": self.stock_touches_product}

    def _admin_archived_lists_live(self, params: dict[str, Any]) -> dict[str, Any]:
        """`{"enabled": false}`: listings filtered on `archived_at:*` list archived records only (`true`: live ones
        too, the default). Only listings: a record read by id is as before. Without `enabled`, just says which."""
        if "enabled" in params:
            enabled = params["enabled"]
            if not isinstance(enabled, bool):
                raise ValueError("enabled must be true or false")
            self.archived_lists_live = enabled
        return {"archived_lists_live": self.archived_lists_live}

    # -- admin: invoices and businesses -----------------------------------------------------------------

    def _admin_add_business(self, params: dict[str, Any]) -> dict[str, Any]:
        """A business (clinic location) with its own `time_zone_identifier` (IANA, e.g. Australia/Brisbane); other
        Business fields may be given too."""
        zone = str(params.get("time_zone_identifier") or "Australia/Melbourne")
        from zoneinfo import ZoneInfo

        ZoneInfo(zone)  # an unknown zone is a bad request
        unknown = sorted(set(params) - set(BUSINESS_FIELDS) - {"appointment_type_ids"})
        if unknown:
            raise ValueError(f"unknown business fields: {', '.join(unknown)}")
        name = str(params.get("business_name") or f"Sandbox Allied Health {zone.rsplit('/', 1)[-1]}")
        now = self.now_text()
        record = {
            **DEFAULT_BUSINESS,
            "label": name,
            "display_name": name,
            "time_zone": zone.rsplit("/", 1)[-1].replace("_", " "),
            **params,
            "id": self._gen.new_id(),
            "business_name": name,
            "time_zone_identifier": zone,
            "created_at": now,
            "updated_at": now,
        }
        self.businesses[record["id"]] = record
        return {"id": record["id"], "time_zone_identifier": zone}

    def _admin_add_invoices(self, params: dict[str, Any]) -> dict[str, Any]:
        """Invoices as staff raise them: each of `invoices` has `patient_id`, `lines` (see
        cliniko_invoices.make_item; none makes a $0 invoice) and optionally `status` (10, 20 or 30; paid and closed
        ones get `closed_at`, default now), `issue_date` (default: today in the business's zone), `business_id`,
        `practitioner_id`, `appointment_id`, `calculation_method` (2 tax exclusive, 3 inclusive), `invoice_to`,
        `notes`, `patient_extra_information`, and `created_at`/`closed_at` (UTC) to date it in the past."""
        made = [self._insert_invoice(spec) for spec in params.get("invoices") or []]
        return {
            "ids": [i["id"] for i in made],
            "invoices": [
                {k: i[k] for k in ("id", "number", "status", "issue_date", "total_amount", "updated_at")} for i in made
            ],
        }

    def _insert_invoice(self, spec: dict[str, Any]) -> dict[str, Any]:
        patient = self._find_any(str(spec["patient_id"]))
        business_id = str(spec.get("business_id") or BUSINESS_ID)
        if business_id not in self.businesses:
            raise KeyError(f"no business {business_id}")
        status = int(spec.get("status", inv.OPEN))
        if status not in (inv.OPEN, inv.PAID, inv.CLOSED):
            raise ValueError("status must be 10, 20 or 30 (40 comes from reversing a paid invoice)")
        stamp = str(spec.get("created_at") or self.now_text())
        _parse_datetime(stamp)
        zone = self.businesses[business_id]["time_zone_identifier"]
        from zoneinfo import ZoneInfo

        local_today = _parse_datetime(stamp).astimezone(ZoneInfo(zone)).date().isoformat()
        name = " ".join(part for part in (patient.get("first_name"), patient.get("last_name")) if part) or None
        invoice = {
            **inv.blank_invoice(),
            **inv.check_invoice_fields({k: v for k, v in spec.items() if k in inv.EDITABLE_FIELDS}),
            "id": self._gen.new_id(),
            "number": self._next_invoice_number(),
            "patient_id": patient["id"],
            "business_id": business_id,
            "practitioner_id": str(spec.get("practitioner_id") or seedmod.PRACTITIONER_IDS[0]),
            "issue_date": str(spec.get("issue_date") or local_today),
            "status": status,
            "invoice_to": spec.get("invoice_to", name),
            "calculation_method": int(spec.get("calculation_method", inv.TAX_INCLUSIVE)),
            "created_at": stamp,
            "updated_at": stamp,
        }
        if invoice["calculation_method"] not in CALCULATION_METHODS:
            raise ValueError(f"calculation_method must be one of {sorted(CALCULATION_METHODS)}")
        if status != inv.OPEN:
            invoice["closed_at"] = str(spec.get("closed_at") or stamp)
            invoice["updated_at"] = max(invoice["updated_at"], invoice["closed_at"])
        items = [inv.make_item(self._gen.new_id(), invoice, line, stamp) for line in spec.get("lines") or []]
        invoice.update(inv.invoice_totals(items))
        self.invoices[invoice["id"]] = invoice
        for item in items:
            self.invoice_items[item["id"]] = item
        return invoice

    def _admin_seed_invoices(self, params: dict[str, Any]) -> dict[str, Any]:
        """The invoices ↔ payments scenario (sandbox/invoice_seed.py): `invoices` invoices (default 1000) for
        `customers` live patients with usable emails (default 300), replacing every invoice and item unless
        `replace` is false; a second business in Brisbane takes some. Returns the cases and, under `stripe`, the
        customers and payments for the Stripe emulator's admin `seed`."""
        from clinicsync.sandbox.invoice_seed import seed_invoice_scenario

        wanted = int(params.get("customers", 300))
        usable = [
            p
            for p in sorted(self.patients.values(), key=lambda p: (p["created_at"], p["id"]))
            if p["archived_at"] is None
            and p["deleted_at"] is None
            and isinstance(p.get("email"), str)
            and EMAIL_PATTERN.match(p["email"])
            and len(p["email"]) <= 255
        ][:wanted]
        if params.get("replace", True):
            self.invoices.clear()
            self.invoice_items.clear()
        brisbane = next(
            (b["id"] for b in self.businesses.values() if b["time_zone_identifier"] == "Australia/Brisbane"), None
        )
        if brisbane is None:
            brisbane = self._admin_add_business(
                {"time_zone_identifier": "Australia/Brisbane", "business_name": "Sandbox Allied Health Brisbane"}
            )["id"]
        zones = [(BUSINESS_ID, self.businesses[BUSINESS_ID]["time_zone_identifier"]), (brisbane, "Australia/Brisbane")]
        scenario = seed_invoice_scenario(
            usable,
            invoices=int(params.get("invoices", 1000)),
            seed=int(params.get("seed", self._seed)),
            now=self.now(),
            businesses=zones,
            product_ids=sorted(pid for pid, p in self.products.items() if p["archived_at"] is None),
        )
        offset = self._next_invoice_number() - min((i["number"] for i in scenario.invoices), default=0)
        for record in scenario.invoices:
            record["number"] += max(offset, 0)
        self.load_activity(scenario.invoices, [], scenario.items)
        return {**scenario.as_dict(), "business_ids": {zone: bid for bid, zone in zones}}

    def _next_invoice_number(self) -> int:
        return max((i["number"] for i in self.invoices.values()), default=1000) + 1

    def _find_invoice(self, invoice_id: Any) -> dict[str, Any]:
        record = self.invoices.get(str(invoice_id))
        if record is None or record["deleted_at"] is not None:
            raise KeyError(f"no invoice {invoice_id}")
        return record

    def _invoice_ids(self, params: dict[str, Any]) -> list[str]:
        ids = [str(i) for i in params.get("ids") or []]
        for invoice_id in ids:
            self._find_invoice(invoice_id)
        return ids

    def _admin_pay_invoices(self, params: dict[str, Any]) -> dict[str, Any]:
        """Staff record payment of open invoices `ids` (in Cliniko, not through Stripe): status Paid, closed now. An
        Open credit (a reversal of a paid invoice) is settled by closing it, not paying it."""
        ids = self._invoice_ids(params)
        for invoice_id in ids:
            record = self.invoices[invoice_id]
            if record["status"] != inv.OPEN:
                raise ValueError(f"invoice {invoice_id} is {inv.STATUSES[record['status']]}, not open")
            self._apply(record, {"status": inv.PAID, "closed_at": self.now_text()})
        return {"ids": ids}

    def _admin_close_invoices(self, params: dict[str, Any]) -> dict[str, Any]:
        """Staff close invoices `ids` without payment (written off): status Closed, closed now."""
        ids = self._invoice_ids(params)
        for invoice_id in ids:
            record = self.invoices[invoice_id]
            if record["status"] == inv.CLOSED:
                raise ValueError(f"invoice {invoice_id} is already closed")
            self._apply(record, {"status": inv.CLOSED, "closed_at": self.now_text()})
        return {"ids": ids}

    def _admin_reverse_invoices(self, params: dict[str, Any]) -> dict[str, Any]:
        """Staff reverse invoices `ids`: each gets a reversal invoice with its lines negated (see
        cliniko_invoices for the statuses). Returns original id -> reversal id."""
        reversals: dict[str, str] = {}
        for invoice_id in self._invoice_ids(params):
            original = self.invoices[invoice_id]
            if original["original_invoice_id"] is not None:
                raise ValueError(f"invoice {invoice_id} is itself a reversal")
            if any(i["original_invoice_id"] == invoice_id and i["deleted_at"] is None for i in self.invoices.values()):
                raise ValueError(f"invoice {invoice_id} is already reversed")
            was_paid = original["status"] == inv.PAID
            lines = [
                inv.negated_line(item)
                for item in self.invoice_items.values()
                if item["invoice_id"] == invoice_id and item["deleted_at"] is None
            ]
            now = self.now_text()
            reversal = self._insert_invoice(
                {
                    "patient_id": original["patient_id"],
                    "business_id": original["business_id"],
                    "practitioner_id": original["practitioner_id"],
                    "appointment_id": original["appointment_id"],
                    "calculation_method": original["calculation_method"],
                    "invoice_to": original["invoice_to"],
                    "status": inv.OPEN if was_paid else inv.CLOSED,
                    "lines": lines,
                }
            )
            reversal["original_invoice_id"] = invoice_id
            if was_paid:
                reversal.update(status=inv.OPEN_CREDIT, closed_at=None)
            else:
                self._apply(original, {"status": inv.CLOSED, "closed_at": now})
            original["updated_at"] = max(now, original["updated_at"])  # its reversed_invoices changed
            reversals[invoice_id] = reversal["id"]
        return {"reversals": reversals}

    def _admin_delete_invoices(self, params: dict[str, Any]) -> dict[str, Any]:
        ids = self._invoice_ids(params)
        for invoice_id in ids:
            now = self.now_text()
            self._apply(self.invoices[invoice_id], {"deleted_at": now})
            for item in self.invoice_items.values():
                if item["invoice_id"] == invoice_id and item["deleted_at"] is None:
                    self._apply(item, {"deleted_at": now})
        return {"ids": ids}

    def _admin_archive_invoices(self, params: dict[str, Any]) -> dict[str, Any]:
        ids = self._invoice_ids(params)
        for invoice_id in ids:
            if self.invoices[invoice_id]["archived_at"] is None:
                self._apply(self.invoices[invoice_id], {"archived_at": self.now_text()})
        return {"ids": ids}

    def _admin_edit_invoices(self, params: dict[str, Any]) -> dict[str, Any]:
        """Staff edit invoices `ids`: `fields` (cliniko_invoices.EDITABLE_FIELDS; a status of 20 or 30 closes the
        invoice now, 10 reopens it) and/or `lines` (replace every line; the totals follow)."""
        ids = self._invoice_ids(params)
        changes = inv.check_invoice_fields(params.get("fields") or {})
        for invoice_id in ids:
            record = self.invoices[invoice_id]
            change = dict(changes)
            if "status" in change:
                change["closed_at"] = None if change["status"] == inv.OPEN else record["closed_at"] or self.now_text()
            if "lines" in params:
                now = self.now_text()
                for item in self.invoice_items.values():
                    if item["invoice_id"] == invoice_id and item["deleted_at"] is None:
                        self._apply(item, {"deleted_at": now})
                new_items = [inv.make_item(self._gen.new_id(), record, line, now) for line in params["lines"] or []]
                for item in new_items:
                    self.invoice_items[item["id"]] = item
                change.update(
                    inv.invoice_totals(i for i in self.invoice_items.values() if i["invoice_id"] == invoice_id)
                )
            self._apply(record, change)
        return {"ids": ids, "invoices": {i: self.invoices[i]["total_amount"] for i in ids}}


_ADMIN_ACTIONS: dict[str, Callable[[ClinikoEmulator, dict[str, Any]], dict[str, Any]]] = {
    "reset": ClinikoEmulator._admin_reset,
    "seed": ClinikoEmulator._admin_seed,
    "book": ClinikoEmulator._admin_book,
    "edit": ClinikoEmulator._admin_edit,
    "archive": ClinikoEmulator._admin_archive,
    "unarchive": ClinikoEmulator._admin_unarchive,
    "merge": ClinikoEmulator._admin_merge,
    "delete": ClinikoEmulator._admin_delete,
    "revoke_key": ClinikoEmulator._admin_revoke_key,
    "restore_key": ClinikoEmulator._admin_restore_key,
    "clock": ClinikoEmulator._admin_clock,
    "put_raw_patients": ClinikoEmulator._admin_put_raw_patients,
    "list_twice": ClinikoEmulator._admin_list_twice,
    "dump": ClinikoEmulator._admin_dump,
    "add_products": ClinikoEmulator._admin_add_products,
    "set_product_price": ClinikoEmulator._admin_set_product_price,
    "edit_products": ClinikoEmulator._admin_edit_products,
    "archive_products": ClinikoEmulator._admin_archive_products,
    "unarchive_products": ClinikoEmulator._admin_unarchive_products,
    "adjust_stock": ClinikoEmulator._admin_adjust_stock,
    "stock_touches_product": ClinikoEmulator._admin_stock_touches_product,
    "archived_lists_live": ClinikoEmulator._admin_archived_lists_live,
    "add_business": ClinikoEmulator._admin_add_business,
    "add_invoices": ClinikoEmulator._admin_add_invoices,
    "seed_invoices": ClinikoEmulator._admin_seed_invoices,
    "pay_invoices": ClinikoEmulator._admin_pay_invoices,
    "close_invoices": ClinikoEmulator._admin_close_invoices,
    "reverse_invoices": ClinikoEmulator._admin_reverse_invoices,
    "delete_invoices": ClinikoEmulator._admin_delete_invoices,
    "archive_invoices": ClinikoEmulator._admin_archive_invoices,
    "edit_invoices": ClinikoEmulator._admin_edit_invoices,
    "shuffle_ties": ClinikoEmulator._admin_shuffle_ties,
}

_RENDERED_SCALARS = tuple(
    k
    for k in seedmod.blank_patient()
    if k not in ("patient_phone_numbers", "custom_fields", "merged_with_patient_id", "gender")
)


# -- helpers: auth, paging, bodies ---------------------------------------------------------------------


def _basic_username(header: str) -> str | None:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, _, _password = decoded.partition(":")
    return username or None


def _same_key(given: str, configured: str) -> bool:
    """The configured key matches with its shard suffix or without it (Cliniko routes by host, not suffix)."""
    bare = _SHARD_SUFFIX.sub("", configured)
    return given in (configured, bare)


def _paging(request: Request) -> tuple[int, int]:
    try:
        page = int(request.query_value("page", "1") or "1")
        per_page = int(request.query_value("per_page", str(DEFAULT_PER_PAGE)) or DEFAULT_PER_PAGE)
    except ValueError as exc:
        raise _message(400, "page and per_page must be integers") from exc
    if page < 1:
        raise _message(400, "page must be 1 or more")
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise _message(400, f"per_page must be between 1 and {MAX_PER_PAGE}")
    return page, per_page


def _page_url(request: Request, page: int, per_page: int) -> str:
    kept = [(k, v) for k, v in request.query if k not in ("page", "per_page")]
    query = urlencode([*kept, ("page", str(page)), ("per_page", str(per_page))])
    return f"{request.base_url}{request.path}?{query}"


def _find_in(table: dict[str, dict[str, Any]], record_id: str) -> dict[str, Any]:
    record = table.get(record_id)
    if record is None or record.get("deleted_at") is not None:
        raise _message(404, MSG_NOT_FOUND)
    return record


def _json_body(request: Request, wrapper: str = "patient") -> dict[str, Any]:
    # Cliniko (Rails) reads a body only as JSON when it says so; otherwise the change would be silently lost.
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if request.body and media_type != "application/json":
        raise _message(415, "Send the request body as JSON, with the header Content-Type: application/json")
    try:
        body = json.loads(request.body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _message(400, "The request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise _message(400, "The request body must be a JSON object")
    # Rails' wrap_parameters also accepts the body wrapped in the resource's name: {"patient": {...}}.
    if set(body) == {wrapper} and isinstance(body[wrapper], dict):
        return dict(body[wrapper])
    return body


# -- helpers: rendering --------------------------------------------------------------------------------


def _link(url: str) -> dict[str, Any]:
    return {"links": {"self": url}}


def normalize_phone(number: str, country_code: str | None) -> str:
    """E.164 for Australian numbers ("0491 570 156" → "+61491570156"); other digits kept with a '+'."""
    digits = re.sub(r"\D", "", number or "")
    if number.strip().startswith("+"):
        return f"+{digits}"
    if digits.startswith("0") and (country_code or "AU") == "AU":
        return f"+61{digits[1:]}"
    return f"+{digits}" if digits else ""


def _render_phones(phones: Any, country_code: str | None) -> Any:
    if not isinstance(phones, list):
        return phones  # None, or whatever `put_raw_patients` stored: served as it is
    return [
        {
            "number": ph["number"],
            "phone_type": ph["phone_type"],
            "normalized_number": normalize_phone(ph["number"], country_code) if isinstance(ph["number"], str) else None,
        }
        if isinstance(ph, dict)
        else ph
        for ph in phones
    ]


def _render_custom_fields(values: dict[str, Any] | None) -> dict[str, Any] | None:
    if not values:
        return None
    sections = []
    for section in CUSTOM_FIELD_DEFINITIONS:
        fields = [
            {"name": f["name"], "token": f["token"], "type": f["type"], "archived": False, "value": values[f["token"]]}
            for f in section["fields"]
            if values.get(f["token"]) not in (None, "")
        ]
        if fields:
            sections.append({"name": section["name"], "token": section["token"], "archived": False, "fields": fields})
    return {"sections": sections}


# -- helpers: validation -------------------------------------------------------------------------------


def validate_patient_body(body: dict[str, Any], *, creating: bool) -> dict[str, Any]:
    """Check a POST/PATCH body like Cliniko would; return internal changes or raise a 422."""
    errors: dict[str, str] = {}
    changes: dict[str, Any] = {}
    for name in ("first_name", "last_name"):
        if name in body or creating:
            value = body.get(name)
            if not isinstance(value, str) or not value.strip():
                errors[name] = "can't be blank"
            elif len(value) > 255:
                errors[name] = "is too long (maximum is 255 characters)"
            else:
                changes[name] = value
    for name, check in _FIELD_CHECKS.items():
        if name in body:
            problem = check(body[name])
            if problem:
                errors[name] = problem
            else:
                changes[name] = body[name]
    if "patient_phone_numbers" in body:
        problem, phones = _check_phones(body["patient_phone_numbers"])
        _record(errors, changes, "patient_phone_numbers", problem, phones)
    if "custom_fields" in body:
        problem, values = _check_custom_fields(body["custom_fields"])
        _record(errors, changes, "custom_fields", problem, values)
    if errors:
        raise _validation(errors)
    return changes


def validate_product_body(
    body: dict[str, Any], *, creating: bool, tax_ids: set[str], supplier_ids: set[str]
) -> dict[str, Any]:
    """Check a product POST/PATCH body (the spec's Product request body) like Cliniko would; return internal
    changes or raise a 422. `price` is kept as entered, with `price_includes_tax` saying which side it is.
    `stock_level` counts only on create: Cliniko's docs say an update cannot change it (use a stock adjustment)."""
    errors: dict[str, str] = {}
    changes: dict[str, Any] = {}
    if "name" in body or creating:
        value = body.get("name")
        if not isinstance(value, str) or not value.strip():
            errors["name"] = "can't be blank"
        elif len(value) > 255:
            errors["name"] = "is too long (maximum is 255 characters)"
        else:
            changes["name"] = value
    for name, check in _PRODUCT_TEXT_CHECKS.items():
        if name in body:
            _record(errors, changes, name, check(body[name]), body[name])
    amounts = {"price": False, "cost_price": True, **({"stock_level": True} if creating else {})}
    for name, nullable in amounts.items():
        if name in body:
            problem, value = _check_amount(body[name], nullable=nullable, minimum=None if name == "stock_level" else 0)
            _record(errors, changes, name, problem, value)
    if "price_includes_tax" in body:
        _record(
            errors,
            changes,
            "price_includes_tax",
            _check_bool(body["price_includes_tax"]),
            bool(body["price_includes_tax"]),
        )
    for field, relation, known in (
        ("tax_id", "tax", tax_ids),
        ("product_supplier_id", "product_supplier", supplier_ids),
    ):
        if field in body:
            value = body[field]
            if value in (None, ""):
                changes[field] = None
            elif str(value) not in known:
                errors[relation] = "must exist"
            else:
                changes[field] = str(value)
    if errors:
        raise _validation(errors)
    return changes


def validate_stock_adjustment_body(body: dict[str, Any], product_ids: set[str]) -> dict[str, Any]:
    """Check a POST /stock_adjustments body: an existing product, a known type, and a non-zero quantity whose sign
    fits the type (increase: Stock Purchase, Returned, Other; decrease: Damaged, Out of Date, Item Sold, Other,
    Correction). `comment` is the deprecated name of `notes`."""
    errors: dict[str, str] = {}
    product_id = body.get("product_id")
    if product_id is None or str(product_id) not in product_ids:
        errors["product"] = "must exist"
    kind = body.get("adjustment_type")
    if kind not in STOCK_ADJUSTMENT_TYPES:
        errors["adjustment_type"] = "is not included in the list"
    problem, quantity = _check_amount(body.get("quantity"), nullable=False, minimum=None)
    if problem is None and quantity is not None:
        amount = Decimal(quantity)
        if amount == 0:
            problem = "must not be zero"
        elif amount > 0 and kind in STOCK_ADJUSTMENT_TYPES and kind not in seedmod.INCREASE_TYPES:
            problem = "must be negative for a decreasing adjustment type"
        elif amount < 0 and kind in STOCK_ADJUSTMENT_TYPES and kind not in seedmod.DECREASE_TYPES:
            problem = "must be positive for an increasing adjustment type"
    if problem:
        errors["quantity"] = problem
    notes = body.get("notes", body.get("comment"))
    if _check_str(None)(notes):
        errors["notes"] = "must be a string"
    if errors:
        raise _validation(errors)
    return {"product_id": str(product_id), "adjustment_type": kind, "quantity": quantity, "notes": notes or None}


def _check_amount(value: Any, *, nullable: bool, minimum: int | None) -> tuple[str | None, str | None]:
    """A decimal sent as a JSON number or numeric string (Rails casts both); the value as Cliniko renders it."""
    if value is None or value == "":
        return (None, None) if nullable else ("is not a number", None)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return "is not a number", None
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        return "is not a number", None
    if not amount.is_finite():
        return "is not a number", None
    if minimum is not None and amount < minimum:
        return f"must be greater than or equal to {minimum}", None
    return None, seedmod.decimal_text(amount)


def _record(errors: dict[str, str], changes: dict[str, Any], name: str, problem: str | None, value: Any) -> None:
    if problem:
        errors[name] = problem
    else:
        changes[name] = value


def _check_str(limit: int | None) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            return "must be a string"
        if limit is not None and len(value) > limit:
            return f"is too long (maximum is {limit} characters)"
        return None

    return check


def _check_bool(value: Any) -> str | None:
    return None if value is None or isinstance(value, bool) else "must be true, false or null"


def _check_email(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 255 or not EMAIL_PATTERN.match(value):
        return "is invalid"
    return None


def _check_date(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _DATE.match(value):
        return "is not a date (YYYY-MM-DD)"
    try:
        date.fromisoformat(value)
    except ValueError:
        return "is not a date (YYYY-MM-DD)"
    return None


def _check_reminder(value: Any) -> str | None:
    return None if value in REMINDER_TYPES else f"must be one of {', '.join(REMINDER_TYPES)}"


def _check_pronouns(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != set(_PRONOUN_KEYS):
        return f"must have exactly {', '.join(_PRONOUN_KEYS)}"
    if any(not isinstance(v, str) or len(v) > 50 for v in value.values()):
        return "values must be strings of at most 50 characters"
    return None


_PRODUCT_TEXT_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "item_code": _check_str(100),
    "serial_number": _check_str(255),
    "notes": _check_str(None),
}

_FIELD_CHECKS: dict[str, Callable[[Any], str | None]] = {
    **{name: _check_str(255) for name in _STR_255},
    **{name: _check_str(None) for name in _STR_FREE},
    **{name: _check_bool for name in _BOOLS},
    "email": _check_email,
    "invoice_email": _check_email,
    "date_of_birth": _check_date,
    "reminder_type": _check_reminder,
    "pronouns": _check_pronouns,
}


def _check_phones(value: Any) -> tuple[str | None, list[dict[str, str]]]:
    if value is None:
        return None, []
    if not isinstance(value, list):
        return "must be a list", []
    phones = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("number"), str) or not item["number"].strip():
            return "each phone number needs a number", []
        if item.get("phone_type") not in PHONE_TYPES:
            return f"phone_type must be one of {', '.join(PHONE_TYPES)}", []
        phones.append({"number": item["number"], "phone_type": item["phone_type"]})
    return None, phones


def _check_custom_fields(value: Any) -> tuple[str | None, dict[str, Any]]:
    """Only tokens and values count (names and types are ignored), as Cliniko documents."""
    if value is None:
        return None, {}
    sections = value.get("sections") if isinstance(value, dict) else None
    if not isinstance(sections, list):
        return "must be an object with a sections list", {}
    values: dict[str, Any] = {}
    for section in sections:
        for item in section.get("fields", []) if isinstance(section, dict) else []:
            token = item.get("token") if isinstance(item, dict) else None
            definition = _CUSTOM_FIELDS.get(token) if isinstance(token, str) else None
            if definition is None:
                return f"unknown custom field token {token!r}", {}
            field_value = item.get("value")
            if not isinstance(field_value, str) or not field_value:
                return f"value for {token} can't be blank (leave the field out instead)", {}
            if definition["type"] == "date" and _check_date(field_value):
                return f"value for {token} is not a date (YYYY-MM-DD)", {}
            values[token] = field_value
    return None, values


# -- helpers: filtering and sorting --------------------------------------------------------------------


class PatientFilter:
    """One `q[]` term, `COLUMN:OPERATOR VALUE`, checked against the column's type."""

    def __init__(self, column: str, kind: str, op: str, value: str) -> None:
        self.column, self.kind, self.op, self.value = column, kind, op, value
        self._test = _build_test(kind, op, value)

    def matches(self, record: dict[str, Any]) -> bool:
        return self._test(record.get(self.column))


def parse_filter(text: str, allowed: dict[str, str] | None = None) -> PatientFilter:
    columns = PATIENT_FILTERS if allowed is None else allowed
    column, sep, rest = text.partition(":")
    if not sep or column not in columns:
        raise _message(400, MSG_NOT_SEARCHABLE)
    kind = columns[column]
    op = next((o for o in _ALL_OPS if rest.startswith(o)), None)
    if op is None or op not in OPERATORS[kind]:
        raise _message(400, f"The operator is not supported for the {kind} column {column}.")
    return PatientFilter(column, kind, op, rest[len(op) :])


def _build_test(kind: str, op: str, raw: str) -> Callable[[Any], bool]:
    if op == "*":
        return lambda v: True
    if op == "?":
        return lambda v: v is not None
    if op == "!?":
        return lambda v: v is None
    parse = _VALUE_PARSERS[kind]
    if kind == "string":
        return _string_test(op, raw)
    if kind == "date" and op == "=" and "*" in raw:
        pattern = re.compile("^" + re.escape(raw).replace(r"\*", r"\d") + "$")
        return lambda v: v is not None and bool(pattern.match(v))
    if kind == "int" and op == "=":
        wanted = {parse(part) for part in raw.split(",")}
        return lambda v: v is not None and parse(v) in wanted
    target = parse(raw)
    compare = _COMPARISONS[op]
    if kind == "datetime" and target.microsecond == 0:
        # Stored times are all canonical UTC text ("2024-01-31T09:30:00Z"), which sorts as the time does: compare the
        # text and parse only what is not canonical (a listing of thousands of records parses none).
        text = seedmod.fmt_time(target)
        return lambda v: (
            v is not None
            and (
                compare(v, text) if isinstance(v, str) and len(v) == 20 and v[-1] == "Z" else compare(parse(v), target)
            )
        )
    return lambda v: v is not None and compare(parse(v), target)


def _string_test(op: str, raw: str) -> Callable[[Any], bool]:
    if op == "=":
        return lambda v: v == raw
    if op == "!=":
        return lambda v: v != raw
    if op == "~":
        needle = raw.casefold()
        return lambda v: v is not None and needle in v.casefold()
    pattern = re.compile("^" + ".*".join(re.escape(part) for part in raw.split("%")) + "$", re.IGNORECASE | re.DOTALL)
    return lambda v: v is not None and bool(pattern.match(v))


def _parse_datetime(value: Any) -> datetime:
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError as exc:
        raise _message(400, f"Invalid date-time {value!r}: use UTC like 2024-01-31T09:30:00Z") from exc
    if moment.tzinfo is None:
        raise _message(400, f"Invalid date-time {value!r}: use UTC like 2024-01-31T09:30:00Z")
    return moment


def _parse_date(value: Any) -> date:
    try:
        return date.fromisoformat(str(value))
    except ValueError as exc:
        raise _message(400, f"Invalid date {value!r}: use YYYY-MM-DD") from exc


def _parse_int(value: Any) -> int:
    try:
        return int(str(value).strip())
    except ValueError as exc:
        raise _message(400, f"Invalid number {value!r}") from exc


def _parse_bool(value: Any) -> bool | None:
    if isinstance(value, bool) or value is None:
        return value
    if str(value).lower() in ("true", "false"):
        return str(value).lower() == "true"
    raise _message(400, f"Invalid boolean {value!r}: use true or false")


_VALUE_PARSERS: dict[str, Callable[[Any], Any]] = {
    "datetime": _parse_datetime,
    "date": _parse_date,
    "int": _parse_int,
    "string": str,
    "boolean": _parse_bool,
}
_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
}


def sort_records(
    rows: list[dict[str, Any]], sort: str | None, order: str | None, sortable: frozenset[str]
) -> list[dict[str, Any]]:
    """Sort by `sort` (default created_at), then id; nulls last ascending, first descending (PostgreSQL)."""
    default_desc = (order or "asc").lower() == "desc"
    keys: list[tuple[str, bool]] = []
    for term in (sort or "created_at").split(","):
        column, _, direction = term.strip().partition(":")
        if column not in sortable:
            raise _message(400, MSG_NOT_SORTABLE)
        keys.append((column, direction.lower() == "desc" if direction else default_desc))
    ordered = sorted(rows, key=_id_order)
    for column, desc in reversed(keys):
        ordered.sort(key=lambda p, c=column: _sort_key(p, c), reverse=desc)
    return ordered


def _id_order(record: dict[str, Any]) -> tuple[int, str]:
    """Ids in numeric order; an id of another form (stored by `put_raw_patients`) after them, by its text."""
    text = str(record["id"])
    return (int(text), "") if text.isdigit() else (2**63, text)


def _sort_key(record: dict[str, Any], column: str) -> tuple[bool, Any]:
    if column == "label":  # patients only
        value: Any = f"{record['first_name']} {record['last_name']}"
    else:
        value = record.get(column)
    if value is None:
        return (True, "")
    if column == "id":  # an id of another form (`put_raw_patients`) sorts after the others, not a crash
        return (False, _id_order(record))
    if column in _ID_COLUMNS:
        return (False, int(value))
    return (False, value)
