"""A loopback emulator of the slice of Stripe's v1 API that ClinicSync uses: the account, customers, products, prices.

It speaks what the official `stripe` SDK sends (form-encoded bodies, `Authorization: Bearer`, an
`Idempotency-Key` on every POST) and answers with objects shaped like Stripe's own examples
(`tests/specs/stripe.json`). The behaviour the app's reliability rests on is reproduced on purpose:
idempotent replay (including a saved 500), 400/409 idempotency errors, a Search index that lags behind
writes, restricted keys, revoked keys, and per-(account, mode) data separation. See docs/sandbox-stripe.md.

The emulator knows nothing about sockets: `handle(Request) -> Response` (see `sandbox/http.py`); the
server adds latency, rate limiting (through `rate_limit`/`rate_limited_response`) and faults around it.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import dataclasses
import hashlib
import json
import random
import re
import string
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from clinicsync import stripe_limits as limits
from clinicsync.sandbox.http import RateLimit, Request, Response
from clinicsync.sandbox.stripe_billing import BILLING_SEARCH_FIELDS, BillingObject, BillingRoutes
from clinicsync.sandbox.stripe_catalog import (
    PRICE_ENTRY_FIELDS,
    PRICE_EXPANDABLE,
    PRODUCT_ENTRY_FIELDS,
    PRODUCT_EXPANDABLE,
    Price,
    Product,
    price_changes,
    product_changes,
)
from clinicsync.sandbox.stripe_forms import (
    FieldParser,
    StripeApiError,
    apply_metadata,
    as_boolean,
    as_integer,
    as_list,
    as_string,
    created_filter,
    expand_fields,
    form_value,
    invalid,
    list_limit,
    metadata_update,
    no_such,
    one_of,
    optional_string,
    parse_fields,
    parse_form,
    reject_unknown,
    unknown_param,
)

ACCOUNT_A = "acct_sandbox_clinic_a"
ACCOUNT_B = "acct_sandbox_clinic_b"

_ALNUM = string.ascii_letters + string.digits
_ADDRESS_FIELDS = ("city", "country", "line1", "line2", "postal_code", "state")
_TAX_EXEMPT = ("none", "exempt", "reverse")
# Stripe: keys on GET and DELETE "have no effect" (those are idempotent by definition); only POST is saved.
_IDEMPOTENT_METHODS = frozenset({"POST"})
# Expansions that name fields the emulator always renders as null: accepted and harmless, as on Stripe.
_EXPANDABLE = frozenset({"default_source", "test_clock", "invoice_settings.default_payment_method", "discount"})
_LIST_PARAMS = ("limit", "starting_after", "ending_before", "expand")
# Seeded objects model data that existed long before: Search sees them at once.
_LONG_AGO = float("-inf")
_SUPPORT = "Please see https://stripe.com/docs or we can help at https://support.stripe.com/."
_GENERIC_500 = (
    "Sorry, something went wrong. We've already been notified of the problem, but if you need any help, "
    "you can reach us at https://support.stripe.com/contact/."
)
_LOCK_TIMEOUT = (
    "This object cannot be accessed right now because another API request or Stripe process is currently "
    "accessing it. If you see this error intermittently, retry the request. If you see this error frequently "
    "and are making multiple concurrent requests to a single object, make your requests serially or at a "
    "lower rate."
)


# -- keys ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiKey:
    """One fake key: which account and mode it opens, and what a restricted key may do."""

    secret: str
    account: str
    livemode: bool
    can_write: bool = True
    can_read_account: bool = True

    @property
    def mode(self) -> str:
        return "live" if self.livemode else "test"


KEYS: dict[str, ApiKey] = {
    k.secret: k
    for k in (
        ApiKey("sk_test_sandbox_clinic_a", ACCOUNT_A, livemode=False),
        ApiKey("sk_test_sandbox_clinic_b", ACCOUNT_B, livemode=False),
        ApiKey("sk_live_sandbox_clinic_a", ACCOUNT_A, livemode=True),
        ApiKey("sk_live_sandbox_clinic_b", ACCOUNT_B, livemode=True),
        ApiKey("rk_test_sandbox_readonly_a", ACCOUNT_A, livemode=False, can_write=False),
        ApiKey("rk_test_sandbox_noaccount_a", ACCOUNT_A, livemode=False, can_read_account=False),
    )
}

_ACCOUNT_PROFILES = {
    ACCOUNT_A: ("Harbourside Physio (sandbox)", "accounts@harbourside.example"),
    ACCOUNT_B: ("Northside Allied Health (sandbox)", "admin@northside.example"),
}


def mask_key(key: str) -> str:
    """Mask a key the way Stripe's error messages do: the prefix and the last four characters survive."""
    match = re.match(r"^((?:sk|rk|pk)_(?:test|live)_)(.*)$", key)
    prefix, rest = (match.group(1), match.group(2)) if match else ("", key)
    if len(rest) <= 4:
        return prefix + "*" * len(rest)
    return prefix + "*" * (len(rest) - 4) + rest[-4:]


# -- customer parameters ------------------------------------------------------------------------------

_EMAIL = re.compile(r"^[^\s@]+@[^\s@.]+(?:\.[^\s@.]+)+$")


def _text(value: Any, param: str, cap_name: str | None = None) -> str | None:
    """A customer string: "" unsets it; the cap is the customer's, by field name (dotted for address parts)."""
    return optional_string(value, param, limits.CUSTOMER_FIELD_MAX_CHARS.get(cap_name or param))


def _email(value: Any, param: str) -> str | None:
    email = _text(value, param)
    if email is not None and not _EMAIL.match(email):
        raise invalid(f"Invalid email address: {email}", param=param, code="email_invalid")
    return email


def _address(value: Any, param: str) -> dict[str, str | None] | None:
    if value == "":
        return None
    if not isinstance(value, dict):
        raise invalid(f"Invalid hash: {param}", param=param)
    for sub in value:
        if sub not in _ADDRESS_FIELDS:
            raise unknown_param(f"{param}[{sub}]")
    # The whole address is replaced (unsent subfields become null) — the conservative reading of Stripe.
    return {
        sub: _text(value[sub], f"{param}[{sub}]", f"address.{sub}") if sub in value else None for sub in _ADDRESS_FIELDS
    }


def _shipping(value: Any, param: str) -> dict[str, Any] | None:
    if value == "":
        return None
    if not isinstance(value, dict):
        raise invalid(f"Invalid hash: {param}", param=param)
    for sub in value:
        if sub not in ("name", "phone", "address"):
            raise unknown_param(f"{param}[{sub}]")
    for required in ("name", "address"):
        if not value.get(required):
            raise invalid(f"Missing required param: {param}[{required}].", param=f"{param}[{required}]")
    return {
        "address": _address(value["address"], f"{param}[address]"),
        "name": as_string(value["name"], f"{param}[name]", limits.CUSTOMER_FIELD_MAX_CHARS["name"]),
        "phone": _text(value["phone"], f"{param}[phone]", "phone") if "phone" in value else None,
    }


def _invoice_prefix(value: Any, param: str) -> str:
    prefix = as_string(value, param)
    if not re.fullmatch(r"[A-Z0-9]{3,12}", prefix):
        raise invalid("Invoice prefix must be 3 to 12 uppercase letters or numbers.", param=param)
    return prefix


# Each writable customer parameter -> a parser giving the field's new value ("" already means unset).
_CUSTOMER_FIELDS: dict[str, FieldParser] = {
    "address": _address,
    "balance": as_integer,
    "description": _text,
    "email": _email,
    "invoice_prefix": _invoice_prefix,
    "metadata": metadata_update,
    "name": _text,
    "next_invoice_sequence": lambda v, p: as_integer(v, p, minimum=1),
    "phone": _text,
    "preferred_locales": lambda v, p: [as_string(x, p) for x in as_list(v, p)],
    "shipping": _shipping,
    "tax_exempt": lambda v, p: one_of(v, p, _TAX_EXEMPT),
}


def customer_changes(params: dict[str, Any]) -> dict[str, Any]:
    """Validate create/update params; the result maps customer fields to new values (metadata as an update)."""
    reject_unknown(params, [*_CUSTOMER_FIELDS, "expand"])
    expand_fields(params, _EXPANDABLE)
    return parse_fields(params, _CUSTOMER_FIELDS)


# -- the data -----------------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Customer:
    """One version of a customer. Versions are immutable so the lagging Search index can keep old ones."""

    id: str
    livemode: bool
    created: int
    invoice_prefix: str
    changed_at: float  # when this version became current (drives Search visibility)
    email: str | None = None
    name: str | None = None
    phone: str | None = None
    description: str | None = None
    address: dict[str, str | None] | None = None
    shipping: dict[str, Any] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    preferred_locales: list[str] = field(default_factory=list)
    tax_exempt: str = "none"
    balance: int = 0
    next_invoice_sequence: int = 1
    deleted: bool = False

    def render(self) -> dict[str, Any]:
        """The full customer object, keyed like Stripe's fixture; fresh containers so callers can't alias."""
        return {
            "id": self.id,
            "object": "customer",
            "address": dict(self.address) if self.address is not None else None,
            "balance": self.balance,
            "created": self.created,
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": self.description,
            "discount": None,
            "email": self.email,
            "invoice_prefix": self.invoice_prefix,
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": self.livemode,
            "metadata": dict(self.metadata),
            "name": self.name,
            "next_invoice_sequence": self.next_invoice_sequence,
            "phone": self.phone,
            "preferred_locales": list(self.preferred_locales),
            "shipping": _copy_shipping(self.shipping),
            "tax_exempt": self.tax_exempt,
            "test_clock": None,
        }

    def render_deleted(self) -> dict[str, Any]:
        return {"id": self.id, "object": "customer", "deleted": True}


def _copy_shipping(shipping: dict[str, Any] | None) -> dict[str, Any] | None:
    if shipping is None:
        return None
    address = shipping.get("address")
    return {**shipping, "address": dict(address) if address is not None else None}


# Every object the emulator keeps: immutable versions with an id, a `changed_at` and a `deleted` flag.
StripeObject = Customer | Product | Price | BillingObject


class _Record:
    """An object's versions (oldest first, pruned as Search catches up) and its creation position."""

    __slots__ = ("seq", "versions")

    def __init__(self, seq: int, first: StripeObject) -> None:
        self.seq = seq
        self.versions: list[StripeObject] = [first]

    @property
    def current(self) -> Any:
        return self.versions[-1]

    def push(self, version: StripeObject, index_horizon: float) -> None:
        self.versions.append(version)
        # Keep only what Search can still see: the newest version at/before the horizon and anything newer.
        while len(self.versions) > 1 and self.versions[1].changed_at <= index_horizon:
            self.versions.pop(0)

    def visible_at(self, horizon: float) -> Any:
        for version in reversed(self.versions):
            if version.changed_at <= horizon:
                return None if version.deleted else version
        return None


@dataclass
class _Table:
    """One kind of object in a scope, by id and in creation order (`order[record.seq] == id`)."""

    kind: str  # as Stripe names it in messages: "customer", "product", "price"
    records: dict[str, _Record] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)

    def seq_of(self, object_id: str) -> int:
        return self.records[object_id].seq

    def current(self, object_id: str) -> Any:
        record = self.records.get(object_id)
        return None if record is None else record.current

    def insert(self, obj: StripeObject) -> None:
        self.records[obj.id] = _Record(len(self.order), obj)
        self.order.append(obj.id)


@dataclass
class _Saved:
    fingerprint: str
    status: int
    body: str  # JSON text: compact, and immune to later mutation of the live objects
    headers: dict[str, str]
    saved_at: float


@dataclass
class _Scope:
    """Everything one (account, livemode) owns: Stripe keeps test and live data, and accounts, apart."""

    account: str
    livemode: bool
    customers: _Table = field(default_factory=lambda: _Table("customer"))
    products: _Table = field(default_factory=lambda: _Table("product"))
    prices: _Table = field(default_factory=lambda: _Table("price"))
    payment_intents: _Table = field(default_factory=lambda: _Table("payment_intent"))
    charges: _Table = field(default_factory=lambda: _Table("charge"))
    refunds: _Table = field(default_factory=lambda: _Table("refund"))
    invoiceitems: _Table = field(default_factory=lambda: _Table("invoiceitem"))
    invoices: _Table = field(default_factory=lambda: _Table("invoice"))
    credit_notes: _Table = field(default_factory=lambda: _Table("credit_note"))
    # What Stripe would have emailed the scope's customers, and the customer balance credits made (stripe_billing).
    emails: list[dict[str, Any]] = field(default_factory=list)
    balance_transactions: list[dict[str, Any]] = field(default_factory=list)
    by_email: dict[str, list[str]] = field(default_factory=dict)  # exact email -> live customer ids by creation
    prices_by_product: dict[str, list[str]] = field(default_factory=dict)  # product id -> price ids by creation
    lookup_keys: dict[str, str] = field(default_factory=dict)  # lookup key -> the one price holding it
    prefixes: set[str] = field(default_factory=set)
    saved: OrderedDict[str, _Saved] = field(default_factory=OrderedDict)  # idempotency key -> response
    in_flight: set[str] = field(default_factory=set)

    def table(self, kind: str) -> _Table:
        tables = {
            "customer": self.customers,
            "product": self.products,
            "price": self.prices,
            "payment_intent": self.payment_intents,
            "charge": self.charges,
            "refund": self.refunds,
            "invoiceitem": self.invoiceitems,
            "invoice": self.invoices,
            "credit_note": self.credit_notes,
        }
        return tables[kind]

    def index_email(self, customer_id: str, email: str | None) -> None:
        if email is not None:
            bisect.insort(self.by_email.setdefault(email, []), customer_id, key=self.customers.seq_of)

    def unindex_email(self, customer_id: str, email: str | None) -> None:
        ids = self.by_email.get(email or "")
        if ids and customer_id in ids:
            ids.remove(customer_id)
            if not ids:
                del self.by_email[email or ""]


# -- search query language ----------------------------------------------------------------------------

# The fields Search takes for each resource (besides `created` and `metadata['key']`), and their kind.
SEARCH_FIELDS: dict[str, dict[str, str]] = {
    "customer": {"email": "string", "name": "string", "phone": "string"},
    "product": {"active": "boolean", "description": "string", "name": "string", "url": "string"},
    "price": {"active": "boolean", "currency": "string", "lookup_key": "string", "product": "string", "type": "string"},
    **BILLING_SEARCH_FIELDS,
}
_SEARCH_MAX_CLAUSES = 10
_CLAUSE = re.compile(
    r"""(?P<neg>-)?
        (?:metadata\[(?P<mq>['"])(?P<mkey>(?:(?!(?P=mq)).)*)(?P=mq)\]|(?P<field>[A-Za-z_][A-Za-z0-9_.]*))
        (?P<op>>=|<=|:|~|>|<)
        (?:(?P<q>['"])(?P<sval>(?:\\.|(?!(?P=q)).)*)(?P=q)|(?P<num>-?\d+))""",
    re.VERBOSE,
)
_CONJUNCTION = re.compile(r"\s+(?:(AND|OR)\s+)?", re.IGNORECASE)


@dataclass(frozen=True)
class Clause:
    field: str  # one of the resource's SEARCH_FIELDS, "created" or "metadata"
    op: str
    value: str
    negate: bool = False
    metadata_key: str | None = None
    kind: str = "string"  # the field's kind in SEARCH_FIELDS

    def matches(self, obj: StripeObject) -> bool:
        return self._test(obj) != self.negate

    def _test(self, obj: StripeObject) -> bool:
        if self.field == "created":
            return _compare(obj.created, self.op, int(self.value))
        if self.field == "metadata":
            return obj.metadata.get(self.metadata_key or "") == self.value
        actual = obj.search_value(self.field) if isinstance(obj, BillingObject) else getattr(obj, self.field)
        if actual is None:
            return False
        if self.kind == "number":
            return _compare(int(actual), self.op, int(self.value))
        if isinstance(actual, bool):
            return self.value == ("true" if actual else "false")
        # Stripe's string fields match case-insensitively; `~` is a substring match.
        if self.op == "~":
            return self.value.casefold() in actual.casefold()
        return actual.casefold() == self.value.casefold()


def _compare(actual: int, op: str, wanted: int) -> bool:
    return {
        ":": actual == wanted,
        ">": actual > wanted,
        "<": actual < wanted,
        ">=": actual >= wanted,
        "<=": actual <= wanted,
    }[op]


def _query_error(detail: str) -> StripeApiError:
    return invalid(f"Invalid search query: {detail}", param="query")


def parse_search_query(query: str, kind: str = "customer") -> tuple[str, list[Clause]]:
    """Parse Stripe's Search query language (the subset for `kind`'s SEARCH_FIELDS); returns ("AND"|"OR", clauses)."""
    text = query.strip()
    if not text:
        raise _query_error("the query is empty.")
    clauses: list[Clause] = []
    joins: set[str] = set()
    pos = 0
    while True:
        match = _CLAUSE.match(text, pos)
        if match is None:
            raise _query_error(f"could not parse the query at position {pos}: {text[pos : pos + 30]!r}.")
        clauses.append(_clause(match, kind))
        pos = match.end()
        if pos == len(text):
            break
        join = _CONJUNCTION.match(text, pos)
        if join is None or join.end() == len(text):
            raise _query_error(f"expected AND, OR or a space at position {pos}.")
        joins.add((join.group(1) or "AND").upper())
        pos = join.end()
    if len(joins) > 1:
        raise _query_error("AND and OR operators are mutually exclusive; use only one of them in a query.")
    if len(clauses) > _SEARCH_MAX_CLAUSES:
        raise _query_error(f"a query can have at most {_SEARCH_MAX_CLAUSES} clauses.")
    return (joins.pop() if joins else "AND"), clauses


def _clause(match: re.Match[str], kind: str) -> Clause:
    op = match.group("op")
    negate = bool(match.group("neg"))
    string_value = match.group("sval")
    if string_value is not None:
        string_value = re.sub(r"\\(.)", r"\1", string_value)
    if match.group("mkey") is not None:
        if op != ":" or string_value is None:
            raise _query_error("metadata supports only exact matching with ':' and a quoted value.")
        return Clause("metadata", op, string_value, negate, match.group("mkey"))
    name = match.group("field")
    if name == "created":
        if op == "~" or match.group("num") is None:
            raise _query_error("created takes a number with ':', '>', '<', '>=' or '<='.")
        return Clause(name, op, match.group("num"), negate)
    field_kind = SEARCH_FIELDS[kind].get(name)
    if field_kind is None:
        raise _query_error(f"field `{name}` is an unsupported search field for resource `{kind}s`.")
    if field_kind == "boolean":
        if op != ":" or string_value not in ("true", "false"):
            raise _query_error(f"{name} takes 'true' or 'false' with ':'.")
        return Clause(name, op, string_value, negate)
    if field_kind == "number":
        number = match.group("num") if match.group("num") is not None else string_value
        if op == "~" or number is None or not re.fullmatch(r"-?\d+", number):
            raise _query_error(f"{name} takes a number with ':', '>', '<', '>=' or '<='.")
        return Clause(name, op, number, negate, kind="number")
    if op not in (":", "~") or string_value is None:
        raise _query_error(f"{name} takes a quoted string with ':' or '~'.")
    if op == "~" and len(string_value) < 3:
        raise _query_error("substring matching ('~') needs at least 3 characters.")
    return Clause(name, op, string_value, negate)


def _page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode().rstrip("=")


def _page_offset(token: str) -> int:
    try:
        decoded = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        decoded = ""
    label, _, number = decoded.partition(":")
    if label != "offset" or not number.isdigit():
        raise invalid(f"Invalid page: {token}", param="page")
    return int(number)


# -- the emulator -------------------------------------------------------------------------------------


@dataclass
class _Call:
    """What a route handler gets: the authenticated key, its data, the parsed params and the path id."""

    key: ApiKey
    scope: _Scope
    pairs: list[tuple[str, str]]  # the raw form/query pairs, for the idempotency fingerprint
    params: dict[str, Any]
    ident: str | None
    request: Request


Handler = Callable[["StripeEmulator", _Call], Response]


class StripeEmulator(BillingRoutes):
    """Stripe customers, products, prices, payments and invoicing + account, in memory, thread-safe. See the module
    docstring and docs/sandbox-stripe.md."""

    name = "stripe"
    # Runtime-only: the trial's saved snapshot (sandbox/persist.py) keeps every other attribute.
    # `_revoked` holds key strings, and keys are never written to disk.
    SNAPSHOT_TRANSIENT = ("clock", "_request_log", "_revoked")

    def __init__(
        self,
        mode: str = "test",
        search_delay_s: float = 60.0,
        idempotency_ttl_s: float = 86400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if mode not in limits.RATE_LIMIT_PER_SECOND:
            raise ValueError(f"mode must be one of {sorted(limits.RATE_LIMIT_PER_SECOND)}, not {mode!r}")
        self.mode = mode
        self.initial_search_delay_s = search_delay_s
        self.search_delay_s = search_delay_s
        self.idempotency_ttl_s = idempotency_ttl_s
        self.clock = clock
        self.faults: Any = None  # the server sets its FaultPlan here; only "stored500" is rolled
        self._lock = threading.RLock()
        self._rng = random.Random()
        self._scopes: dict[tuple[str, bool], _Scope] = {}
        self._revoked: set[str] = set()
        # Opt-in (admin `request_log`): every request exactly as received, so a test can prove what never left.
        self._request_log: list[dict[str, Any]] | None = None

    def restored(self) -> None:
        """After persist.load: requests in flight when the snapshot was taken ended with their process."""
        for scope in self._scopes.values():
            scope.in_flight.clear()

    @property
    def default_key(self) -> str:
        """The secret key a launcher should print for this emulator's mode."""
        return f"sk_{self.mode}_sandbox_clinic_a"

    # -- the HTTP entry point ------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        if self._request_log is not None:
            with self._lock:
                self._request_log.append(
                    {
                        "method": request.method,
                        "path": request.path,
                        "query": [list(pair) for pair in request.query],
                        "body": request.body.decode("utf-8", errors="replace"),
                    }
                )
        request_id = "req_" + self._random(14)
        headers = {"Request-Id": request_id}
        if "stripe-version" in request.headers:
            headers["Stripe-Version"] = request.headers["stripe-version"]
        idem_key = request.headers.get("idempotency-key") or None
        if idem_key is not None and request.method in _IDEMPOTENT_METHODS:
            headers["Idempotency-Key"] = idem_key
        key: ApiKey | None = None
        try:
            _require_complete_body(request)
            key = self._authenticate(request)
            handler, ident = self._route(request)
            self._authorize(key, request, handler)
            pairs = self._pairs(request)
            call = _Call(key, self._scope(key.account, key.livemode), pairs, parse_form(pairs), ident, request)
            if idem_key is not None and request.method in _IDEMPOTENT_METHODS:
                return self._idempotent(call, handler, idem_key, headers, request_id)
            response = self._execute(handler, call)
        except StripeApiError as exc:
            return self._error_response(exc, headers, request_id, key)
        response.headers.update(headers)
        return response

    def _error_response(
        self, exc: StripeApiError, headers: dict[str, str], request_id: str, key: ApiKey | None
    ) -> Response:
        body = exc.body(request_id, key.livemode if key is not None else None)
        return Response(exc.status, body, {**headers, **exc.headers})

    def _execute(self, handler: Handler, call: _Call) -> Response:
        """Run one route handler under the state lock (tests override this to hold a request in flight)."""
        with self._lock:
            return handler(self, call)

    # -- authentication and routing ------------------------------------------------------------------

    def _authenticate(self, request: Request) -> ApiKey:
        secret = _bearer_or_basic(request.headers.get("authorization", ""))
        if not secret:
            raise StripeApiError(
                401,
                "authentication_error",
                "You did not provide an API key. You need to provide your API key in the Authorization header, "
                "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). " + _SUPPORT,
            )
        key = KEYS.get(secret)
        if key is None:
            raise StripeApiError(401, "authentication_error", f"Invalid API Key provided: {mask_key(secret)}")
        with self._lock:
            revoked = secret in self._revoked
        if revoked:
            raise StripeApiError(
                401,
                "authentication_error",
                f"Expired API Key provided: {mask_key(secret)}. This API key has expired/been revoked.",
                code="api_key_expired",
            )
        on_behalf = request.headers.get("stripe-account")
        if on_behalf and on_behalf != key.account:
            raise StripeApiError(
                403,
                "permission_error",
                f"The provided key '{mask_key(secret)}' does not have access to account '{on_behalf}' "
                "(or that account does not exist). Application access may have been revoked.",
            )
        return key

    def _route(self, request: Request) -> tuple[Handler, str | None]:
        method, path = request.method.upper(), request.path
        if (method, path) in _ROUTES:
            return _ROUTES[(method, path)], None
        match = _OBJECT_PATH.fullmatch(path)
        if match and match.group(3):
            action = _ACTION_ROUTES.get((method, match.group(1), match.group(3)))
            if action is not None:
                return action, match.group(2)
        per_id = _OBJECT_ROUTES.get(match.group(1), {}) if match and not match.group(3) else {}
        if match and method in per_id:
            return per_id[method], match.group(2)
        raise StripeApiError(404, "invalid_request_error", f"Unrecognized request URL ({method}: {path}). {_SUPPORT}")

    def _authorize(self, key: ApiKey, request: Request, handler: Handler) -> None:
        """Restricted keys: the message names the missing permission, as Stripe's does."""
        if handler is StripeEmulator._get_account:
            needed = None if key.can_read_account else "rak_account_read"
        elif request.method.upper() != "GET":
            resource = request.path.split("/")[2]  # "customers", "products", "prices"
            needed = None if key.can_write else f"rak_{resource.removesuffix('s')}_write"
        else:
            needed = None
        if needed is not None:
            raise StripeApiError(
                403,
                "permission_error",
                f"The provided key '{mask_key(key.secret)}' does not have the required permissions for this "
                f"endpoint on account '{key.account}'. Having the '{needed}' permission would allow this "
                "request to continue.",
            )

    def _pairs(self, request: Request) -> list[tuple[str, str]]:
        pairs = list(request.query)
        if request.method.upper() == "POST":
            try:
                pairs += request.form()
            except UnicodeDecodeError as exc:
                raise invalid("Invalid request body: it is not UTF-8 form data.") from exc
        return pairs

    # -- idempotency ---------------------------------------------------------------------------------

    def _idempotent(
        self, call: _Call, handler: Handler, idem_key: str, headers: dict[str, str], request_id: str
    ) -> Response:
        if len(idem_key) > limits.IDEMPOTENCY_KEY_MAX_CHARS:
            raise invalid(
                f"Invalid Idempotency-Key: keys can be at most {limits.IDEMPOTENCY_KEY_MAX_CHARS} characters long, "
                f"but this one has {len(idem_key)}."
            )
        scope = call.scope
        fingerprint = _fingerprint(call.request.method, call.request.path, call.pairs)
        with self._lock:
            saved = self._saved(scope, idem_key)
            if saved is not None:
                return self._replay(saved, idem_key, fingerprint)
            if idem_key in scope.in_flight:
                raise StripeApiError(
                    409,
                    "idempotency_error",
                    "There is currently another in-progress request using this Idempotent Key (that probably "
                    "means you submitted twice, and the other request is still going through): "
                    f"{idem_key}. Please try again later.",
                    headers={"Stripe-Should-Retry": "true"},
                )
            scope.in_flight.add(idem_key)
        try:
            try:
                response = self._execute(handler, call)
            except StripeApiError as exc:
                if not exc.committed:
                    raise
                response = self._error_response(exc, headers, request_id, call.key)
                response.mutated = True
            response.headers.update(headers)
            if 200 <= response.status < 300 and response.mutated and self._roll_stored500():
                # The change stays committed, but the saved answer is a 500 that every replay repeats.
                body = StripeApiError(500, "api_error", _GENERIC_500).body(request_id, call.key.livemode)
                response = Response(500, body, dict(headers), mutated=True)
            if 200 <= response.status < 300 or response.status >= 500 or response.mutated:
                with self._lock:
                    self._save(scope, idem_key, fingerprint, response)
            return response
        finally:
            with self._lock:
                scope.in_flight.discard(idem_key)

    def _saved(self, scope: _Scope, idem_key: str) -> _Saved | None:
        saved = scope.saved.get(idem_key)
        if saved is not None and saved.saved_at + self.idempotency_ttl_s <= self.clock():
            del scope.saved[idem_key]
            return None
        return saved

    def _replay(self, saved: _Saved, idem_key: str, fingerprint: str) -> Response:
        if saved.fingerprint != fingerprint:
            raise StripeApiError(
                400,
                "idempotency_error",
                "Keys for idempotent requests can only be used with the same parameters they were first used "
                f"with. Try using a key other than '{idem_key}' if you meant to execute a different request.",
            )
        headers = {**saved.headers, "Idempotent-Replayed": "true", "Idempotency-Key": idem_key}
        return Response(saved.status, json.loads(saved.body), headers, replayed=True)

    def _save(self, scope: _Scope, idem_key: str, fingerprint: str, response: Response) -> None:
        now = self.clock()
        # Keys are saved in time order, so expired ones sit at the front: prune them here, O(1) amortised.
        while scope.saved:
            oldest = next(iter(scope.saved.values()))
            if oldest.saved_at + self.idempotency_ttl_s > now:
                break
            scope.saved.popitem(last=False)
        kept = {k: v for k, v in response.headers.items() if k in ("Request-Id", "Stripe-Version")}
        body = json.dumps(response.body, separators=(",", ":"))
        scope.saved[idem_key] = _Saved(fingerprint, response.status, body, kept, now)

    def _roll_stored500(self) -> bool:
        return self.faults is not None and bool(self.faults.roll("stored500"))

    # -- account -------------------------------------------------------------------------------------

    def _get_account(self, call: _Call) -> Response:
        reject_unknown(call.params, ["expand"])
        expand_fields(call.params, frozenset())
        return Response(200, account_object(call.key.account))

    # -- objects of every kind ----------------------------------------------------------------------

    def _find(self, scope: _Scope, kind: str, object_id: str, param: str = "id", status: int = 404) -> Any:
        """The current version of an object (possibly a deleted one), or Stripe's "No such ..." error, with its
        hint when the id exists in the other mode of the same account."""
        found = scope.table(kind).current(object_id)
        if found is not None:
            return found
        other = self._scopes.get((scope.account, not scope.livemode))
        if other is not None and object_id in other.table(kind).records:
            used, exists = ("live", "test") if scope.livemode else ("test", "live")
            raise StripeApiError(
                status,
                "invalid_request_error",
                f"No such {kind}: '{object_id}'; a similar object exists in {exists} mode, "
                f"but a {used} mode key was used to make this request.",
                param=param,
                code="resource_missing",
            )
        raise no_such(kind, object_id, param=param, status=status)

    def _live(self, scope: _Scope, kind: str, object_id: str, param: str = "id", status: int = 404) -> Any:
        found = self._find(scope, kind, object_id, param, status)
        if found.deleted:
            raise no_such(kind, object_id, param=param, status=status)
        return found

    def _change(self, scope: _Scope, kind: str, obj: Any, changes: dict[str, Any], changed_at: float) -> Any:
        """A new current version of `obj`; Search keeps seeing the old one until the delay has passed."""
        if "metadata" in changes:
            changes["metadata"] = apply_metadata(obj.metadata, changes["metadata"])
        updated = dataclasses.replace(obj, changed_at=changed_at, **changes)
        scope.table(kind).records[obj.id].push(updated, changed_at - self.search_delay_s)
        return updated

    def _remove(self, scope: _Scope, kind: str, obj: Any, now: float) -> None:
        gone = dataclasses.replace(obj, changed_at=now, deleted=True)
        scope.table(kind).records[obj.id].push(gone, now - self.search_delay_s)
        if kind == "customer":
            scope.unindex_email(obj.id, obj.email)

    def _render(self, scope: _Scope, obj: Any, expand: Iterable[str] = ()) -> dict[str, Any]:
        """An object as the API returns it, with its expandable ids replaced by the objects they name."""
        wanted = {name.removeprefix("data.") for name in expand}
        body: dict[str, Any] = obj.render()
        if isinstance(obj, Product) and "default_price" in wanted and obj.default_price:
            body["default_price"] = scope.prices.records[obj.default_price].current.render()
        if isinstance(obj, Price) and "product" in wanted:
            body["product"] = scope.products.records[obj.product].current.render()
        if isinstance(obj, BillingObject):
            return self.render_billing(scope, obj, expand)
        return body

    def _retrieve(self, call: _Call, kind: str, expandable: frozenset[str]) -> Response:
        reject_unknown(call.params, ["expand"])
        expand = expand_fields(call.params, expandable)
        return Response(200, self._render(call.scope, self._live(call.scope, kind, call.ident or ""), expand))

    def _written(self, call: _Call, obj: Any, expandable: frozenset[str]) -> Response:
        """The answer to a create or update that changed `obj`, expanded as the request asked."""
        expand = expand_fields(call.params, expandable)
        return Response(200, self._render(call.scope, obj, expand), mutated=True)

    def _new_id(self, table: _Table, prefix: str, length: int = 14) -> str:
        while True:
            object_id = prefix + self._random(length)
            if object_id not in table.records:
                return object_id

    # -- customers -----------------------------------------------------------------------------------

    def _create_customer(self, call: _Call) -> Response:
        changes = customer_changes(call.params)
        customer = self._insert(call.scope, changes, self.clock(), created=None)
        return Response(200, customer.render(), mutated=True)

    def _retrieve_customer(self, call: _Call) -> Response:
        reject_unknown(call.params, ["expand"])
        expand_fields(call.params, _EXPANDABLE)
        customer = self._find(call.scope, "customer", call.ident or "")
        return Response(200, customer.render_deleted() if customer.deleted else customer.render())

    def _update_customer(self, call: _Call) -> Response:
        changes = customer_changes(call.params)
        customer = self._live(call.scope, "customer", call.ident or "")
        updated = self._change_customer(call.scope, customer, changes, self.clock())
        return Response(200, updated.render(), mutated=True)

    def _delete_customer(self, call: _Call) -> Response:
        reject_unknown(call.params, [])
        customer = self._live(call.scope, "customer", call.ident or "")
        self._remove(call.scope, "customer", customer, self.clock())
        return Response(200, customer.render_deleted(), mutated=True)

    def _insert(self, scope: _Scope, changes: dict[str, Any], changed_at: float, created: int | None) -> Customer:
        metadata = apply_metadata({}, changes.pop("metadata", {}))
        prefix = changes.pop("invoice_prefix", None) or self._new_prefix(scope)
        customer = Customer(
            id=self._new_id(scope.customers, "cus_"),
            livemode=scope.livemode,
            created=int(self.clock()) if created is None else created,
            invoice_prefix=prefix,
            changed_at=changed_at,
            metadata=metadata,
            **changes,
        )
        scope.prefixes.add(prefix)
        scope.customers.insert(customer)
        scope.index_email(customer.id, customer.email)
        return customer

    def _change_customer(self, scope: _Scope, customer: Customer, changes: dict[str, Any], now: float) -> Customer:
        updated: Customer = self._change(scope, "customer", customer, changes, now)
        if updated.email != customer.email:
            scope.unindex_email(customer.id, customer.email)
            scope.index_email(customer.id, updated.email)
        return updated

    def _list_customers(self, call: _Call) -> Response:
        params = call.params
        reject_unknown(params, [*_LIST_PARAMS, "email", "created"])
        expand = expand_fields(params, frozenset(f"data.{name}" for name in _EXPANDABLE))
        created = created_filter(params.get("created"))
        scope = call.scope
        if "email" in params:
            candidates = scope.by_email.get(as_string(params["email"], "email"), [])
        else:
            candidates = scope.customers.order
        return self._list(call, scope.customers, candidates, lambda c: created(c.created), expand, "/v1/customers")

    def _search_customers(self, call: _Call) -> Response:
        return self._search(call, "customer", _EXPANDABLE)

    # -- products ------------------------------------------------------------------------------------

    def _create_product(self, call: _Call) -> Response:
        changes = product_changes(call.params, creating=True)
        price_data = changes.pop("default_price_data", None)
        prices = [(price_data, True)] if price_data is not None else []
        product = self._new_product(call.scope, changes, prices, self.clock())
        return self._written(call, product, PRODUCT_EXPANDABLE)

    def _retrieve_product(self, call: _Call) -> Response:
        return self._retrieve(call, "product", PRODUCT_EXPANDABLE)

    def _update_product(self, call: _Call) -> Response:
        changes = product_changes(call.params, creating=False)
        product = self._live(call.scope, "product", call.ident or "")
        return self._written(call, self._change_product(call.scope, product, changes, self.clock()), PRODUCT_EXPANDABLE)

    def _delete_product(self, call: _Call) -> Response:
        reject_unknown(call.params, [])
        product = self._live(call.scope, "product", call.ident or "")
        if call.scope.prices_by_product.get(product.id):
            raise invalid("This product cannot be deleted because it has one or more user-created prices.")
        self._remove(call.scope, "product", product, self.clock())
        return Response(200, product.render_deleted(), mutated=True)

    def _new_product(
        self,
        scope: _Scope,
        changes: dict[str, Any],
        prices: list[tuple[dict[str, Any], bool]],
        changed_at: float,
        created: int | None = None,
    ) -> Product:
        """A product and its `prices` ((validated price changes, is the default?), made with it in one step)."""
        product_id = changes.pop("id", None) or self._new_id(scope.products, "prod_")
        if product_id in scope.products.records:
            raise invalid("Product already exists.", param="id", code="resource_already_exists")
        stamp = int(self.clock()) if created is None else created
        default = None
        for price_fields, is_default in prices:
            price = self._new_price(scope, {**price_fields, "product": product_id}, changed_at, created)
            default = price.id if is_default else default
        metadata = apply_metadata({}, changes.pop("metadata", {}))
        product = Product(
            id=product_id,
            livemode=scope.livemode,
            created=stamp,
            updated=stamp,
            changed_at=changed_at,
            default_price=default,
            metadata=metadata,
            **changes,
        )
        scope.products.insert(product)
        return product

    def _change_product(self, scope: _Scope, product: Product, changes: dict[str, Any], changed_at: float) -> Product:
        default = changes.get("default_price")
        if default is not None and default != product.default_price:
            price = self._find(scope, "price", default, param="default_price", status=400)
            if price.product != product.id:
                # Our wording: Stripe's exact message for a price of another product is not in our notes.
                raise invalid(
                    f"The price {default} belongs to another product ({price.product}); a product's default price "
                    "must be one of its own prices.",
                    param="default_price",
                )
            if not price.active:
                raise invalid(
                    "The price specified is inactive. This field only accepts active prices.", param="default_price"
                )
        result: Product = self._change(scope, "product", product, {**changes, "updated": int(self.clock())}, changed_at)
        return result

    def _list_products(self, call: _Call) -> Response:
        params = call.params
        reject_unknown(params, [*_LIST_PARAMS, "active", "created", "ids"])
        expand = expand_fields(params, frozenset(f"data.{name}" for name in PRODUCT_EXPANDABLE))
        created = created_filter(params.get("created"))
        active = as_boolean(params["active"], "active") if "active" in params else None
        table = call.scope.products
        candidates = table.order
        if "ids" in params:
            wanted = {as_string(item, "ids") for item in as_list(params["ids"], "ids")}
            candidates = sorted((pid for pid in wanted if pid in table.records), key=table.seq_of)

        def keep(product: Product) -> bool:
            return created(product.created) and active in (None, product.active)

        return self._list(call, table, candidates, keep, expand, "/v1/products")

    def _search_products(self, call: _Call) -> Response:
        return self._search(call, "product", PRODUCT_EXPANDABLE)

    # -- prices --------------------------------------------------------------------------------------

    def _create_price(self, call: _Call) -> Response:
        changes = price_changes(call.params, creating=True)
        self._live(call.scope, "product", changes["product"], param="product", status=400)
        return self._written(call, self._new_price(call.scope, changes, self.clock()), PRICE_EXPANDABLE)

    def _retrieve_price(self, call: _Call) -> Response:
        return self._retrieve(call, "price", PRICE_EXPANDABLE)

    def _update_price(self, call: _Call) -> Response:
        changes = price_changes(call.params, creating=False)
        price = self._live(call.scope, "price", call.ident or "")
        return self._written(call, self._change_price(call.scope, price, changes, self.clock()), PRICE_EXPANDABLE)

    def _new_price(
        self, scope: _Scope, changes: dict[str, Any], changed_at: float, created: int | None = None
    ) -> Price:
        fields = dict(changes)
        transfer = fields.pop("transfer_lookup_key", False)
        metadata = apply_metadata({}, fields.pop("metadata", {}))
        price_id = self._new_id(scope.prices, "price_", 24)
        if fields.get("lookup_key") is not None:
            self._claim_lookup_key(scope, fields["lookup_key"], price_id, transfer, changed_at)
        price = Price(
            id=price_id,
            livemode=scope.livemode,
            created=int(self.clock()) if created is None else created,
            changed_at=changed_at,
            metadata=metadata,
            **fields,
        )
        scope.prices.insert(price)
        scope.prices_by_product.setdefault(price.product, []).append(price.id)
        return price

    def _change_price(self, scope: _Scope, price: Price, changes: dict[str, Any], changed_at: float) -> Price:
        """Only what Stripe lets change on a price: the amount, currency and product never reach here."""
        fields = dict(changes)
        transfer = fields.pop("transfer_lookup_key", False)
        behavior = fields.get("tax_behavior", price.tax_behavior)
        if behavior != price.tax_behavior and price.tax_behavior != "unspecified":
            # Our wording; Stripe documents the rule ("Once specified as either inclusive or exclusive, it cannot
            # be changed"), not its message.
            raise invalid(
                f"tax_behavior is {price.tax_behavior} and cannot be changed once it is inclusive or exclusive.",
                param="tax_behavior",
            )
        if fields.get("active") is False:
            product = scope.products.current(price.product)
            if product is not None and product.default_price == price.id:
                raise invalid("This price cannot be archived because it is the default price of its product.")
        new_key = fields.get("lookup_key")
        if new_key is not None and new_key != price.lookup_key:
            self._claim_lookup_key(scope, new_key, price.id, transfer, changed_at)
            if price.lookup_key is not None:
                scope.lookup_keys.pop(price.lookup_key, None)
        result: Price = self._change(scope, "price", price, fields, changed_at)
        return result

    def _claim_lookup_key(self, scope: _Scope, key: str, price_id: str, transfer: bool, changed_at: float) -> None:
        """A lookup key belongs to one price of the account, active or not; `transfer_lookup_key` moves it."""
        holder_id = scope.lookup_keys.get(key)
        if holder_id is not None and holder_id != price_id:
            if not transfer:
                raise invalid(f"A price (`{holder_id}`) already uses that lookup key.", param="lookup_key")
            self._change(scope, "price", scope.prices.records[holder_id].current, {"lookup_key": None}, changed_at)
        scope.lookup_keys[key] = price_id

    def _list_prices(self, call: _Call) -> Response:
        params = call.params
        reject_unknown(params, [*_LIST_PARAMS, "active", "created", "currency", "lookup_keys", "product", "type"])
        expand = expand_fields(params, frozenset(f"data.{name}" for name in PRICE_EXPANDABLE))
        created = created_filter(params.get("created"))
        active = as_boolean(params["active"], "active") if "active" in params else None
        currency = as_string(params["currency"], "currency").lower() if "currency" in params else None
        kind = one_of(params["type"], "type", ("one_time", "recurring")) if "type" in params else None
        scope, table = call.scope, call.scope.prices
        candidates = table.order
        if "product" in params:
            candidates = scope.prices_by_product.get(as_string(params["product"], "product"), [])
        if "lookup_keys" in params:
            keys = [as_string(item, "lookup_keys") for item in as_list(params["lookup_keys"], "lookup_keys")]
            held = {scope.lookup_keys[key] for key in keys if key in scope.lookup_keys}
            candidates = [pid for pid in candidates if pid in held]

        def keep(price: Price) -> bool:
            return (
                created(price.created)
                and active in (None, price.active)
                and currency in (None, price.currency)
                and kind in (None, price.type)
            )

        return self._list(call, table, candidates, keep, expand, "/v1/prices")

    def _search_prices(self, call: _Call) -> Response:
        return self._search(call, "price", PRICE_EXPANDABLE)

    # -- listing and search ---------------------------------------------------------------------------

    def _list(
        self,
        call: _Call,
        table: _Table,
        candidates: list[str],
        keep: Callable[[Any], bool],
        expand: list[str],
        url: str,
    ) -> Response:
        """One page, newest first, of the live objects among `candidates` (ids in creation order) that `keep`
        accepts, with Stripe's `starting_after` / `ending_before` cursors."""
        params = call.params
        limit = list_limit(params)
        if "starting_after" in params and "ending_before" in params:
            raise invalid(
                "You may only specify one of these parameters: ending_before, starting_after.", param="ending_before"
            )

        def wanted(object_id: str) -> bool:
            obj = table.records[object_id].current
            return not obj.deleted and keep(obj)

        if "ending_before" in params:
            cursor = self._cursor(call.scope, table, params["ending_before"], "ending_before")
            start = bisect.bisect_right(candidates, cursor, key=table.seq_of)
            found = _take(candidates, range(start, len(candidates)), wanted, limit + 1)
            page, has_more = list(reversed(found[:limit])), len(found) > limit
        else:
            end = len(candidates)
            if "starting_after" in params:
                cursor = self._cursor(call.scope, table, params["starting_after"], "starting_after")
                end = bisect.bisect_left(candidates, cursor, key=table.seq_of)
            found = _take(candidates, range(end - 1, -1, -1), wanted, limit + 1)
            page, has_more = found[:limit], len(found) > limit
        data = [self._render(call.scope, table.records[object_id].current, expand) for object_id in page]
        return Response(200, {"object": "list", "data": data, "has_more": has_more, "url": url})

    def _cursor(self, scope: _Scope, table: _Table, value: Any, param: str) -> int:
        object_id = as_string(value, param)
        record = table.records.get(object_id)
        if record is None:
            raise no_such(table.kind, object_id, param=param, status=400)
        return record.seq

    def _search(self, call: _Call, kind: str, expandable: frozenset[str]) -> Response:
        params = call.params
        reject_unknown(params, ["query", "limit", "page", "expand"])
        expand = expand_fields(params, frozenset({"total_count", *(f"data.{name}" for name in expandable)}))
        if "query" not in params:
            raise invalid("Missing required param: query.", param="query", code="parameter_missing")
        join, clauses = parse_search_query(as_string(params["query"], "query"), kind)
        limit = list_limit(params)
        offset = _page_offset(as_string(params["page"], "page")) if "page" in params else 0
        test = all if join == "AND" else any
        # The index lags: a version is searchable only once it is older than the delay.
        horizon = self.clock() - self.search_delay_s
        table = call.scope.table(kind)
        hits: list[Any] = []
        for object_id in reversed(table.order):
            version = table.records[object_id].visible_at(horizon)
            if version is not None and test(clause.matches(version) for clause in clauses):
                hits.append(version)
        page = hits[offset : offset + limit]
        has_more = offset + limit < len(hits)
        body: dict[str, Any] = {
            "object": "search_result",
            "data": [self._render(call.scope, obj, expand) for obj in page],
            "has_more": has_more,
            "next_page": _page_token(offset + limit) if has_more else None,
            "url": f"/v1/{kind}s/search",
        }
        if "total_count" in expand:
            body["total_count"] = len(hits)
        return Response(200, body)

    # -- server hooks --------------------------------------------------------------------------------

    def rate_limit(self, request: Request) -> RateLimit | None:
        """Per (account, mode) bucket; Search has its own. Unknown keys share one bucket at this mode's rate."""
        if not request.path.startswith("/v1/"):
            return None
        key = KEYS.get(_bearer_or_basic(request.headers.get("authorization", "")) or "")
        if key is None:
            return RateLimit("anonymous", limits.RATE_LIMIT_PER_SECOND[self.mode], 1)
        if request.path.startswith("/v1/") and request.path.endswith("/search"):
            return RateLimit(f"{key.account}:{key.mode}:search", limits.SEARCH_RATE_LIMIT_PER_SECOND, 1)
        return RateLimit(f"{key.account}:{key.mode}", limits.RATE_LIMIT_PER_SECOND[key.mode], 1)

    def rate_limited_response(self, request: Request, reset_epoch: float) -> Response:
        exc = StripeApiError(
            429,
            "rate_limit_error",
            "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.",
            code="rate_limit",
        )
        return self._fault(request, exc, {"Stripe-Should-Retry": "true", "Retry-After": "1"})

    def fault_response(self, request: Request, status: int) -> Response:
        """An answer given *instead of* executing (the server's before-faults): nothing is saved."""
        if status == 429:
            exc = StripeApiError(429, "rate_limit_error", _LOCK_TIMEOUT, code="lock_timeout")
        else:
            exc = StripeApiError(status, "api_error", _GENERIC_500)
        return self._fault(request, exc, {"Stripe-Should-Retry": "true"})

    def _fault(self, request: Request, exc: StripeApiError, extra: dict[str, str]) -> Response:
        request_id = "req_" + self._random(14)
        key = KEYS.get(_bearer_or_basic(request.headers.get("authorization", "")) or "")
        headers = {"Request-Id": request_id, **extra}
        idem_key = request.headers.get("idempotency-key")
        if idem_key and request.method.upper() in _IDEMPOTENT_METHODS:
            headers["Idempotency-Key"] = idem_key
        return Response(exc.status, exc.body(request_id, key.livemode if key else None), headers)

    def fault_eligible(self, request: Request) -> bool:
        return request.path.startswith("/v1/")

    def endpoint_name(self, request: Request) -> str:
        path = request.path
        match = _OBJECT_PATH.fullmatch(path)
        if match and match.group(2) != "search":
            path = f"/v1/{match.group(1)}/{{id}}" + (f"/{match.group(3)}" if match.group(3) else "")
        return f"{request.method.upper()} {path}"

    # -- admin ---------------------------------------------------------------------------------------

    def admin(self, action: str, params: dict[str, Any]) -> Response | None:
        actions: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "reset": self._admin_reset,
            "seed": self._admin_seed,
            "dump": self._admin_dump,
            "set_search_delay": self._admin_set_search_delay,
            "expire_idempotency": self._admin_expire_idempotency,
            "revoke": self._admin_revoke,
            "delete": self._admin_delete,
            "keys": self._admin_keys,
            "request_log": self._admin_request_log,
            "add_product": self._admin_add_product,
            "add_price": self._admin_add_price,
            "edit_product": self._admin_edit_product,
            "edit_price": self._admin_edit_price,
            "add_payment": self._admin_add_payment,
            "emails": self._admin_emails,
            "ledger": self._admin_ledger,
        }
        run = actions.get(action)
        if run is None:
            return None
        try:
            with self._lock:
                return Response(200, run(params))
        except StripeApiError as exc:
            return Response(exc.status, exc.body("req_admin", None))
        except (TypeError, ValueError) as exc:
            return Response(400, invalid(f"Bad admin parameters for {action}: {exc}").body("req_admin", None))

    def _admin_reset(self, params: dict[str, Any]) -> dict[str, Any]:
        self._scopes.clear()
        self._revoked.clear()
        self.search_delay_s = self.initial_search_delay_s
        return {"ok": True}

    def _admin_seed(self, params: dict[str, Any]) -> dict[str, Any]:
        scope = self._admin_scope(params)
        ids: list[str] = []
        ignored: set[str] = set()
        for position, entry in enumerate(params.get("customers") or []):
            if not isinstance(entry, dict):
                raise invalid(f"customers[{position}] must be an object")
            # Seed files annotate entries (e.g. "expected"); only customer fields are sent, the rest reported.
            ignored.update(k for k in entry if k not in _CUSTOMER_FIELDS and k != "created")
            fields = {k: form_value(v) for k, v in entry.items() if v is not None and k in _CUSTOMER_FIELDS}
            created = int(entry["created"]) if entry.get("created") is not None else None
            # Seeded customers model data that already existed, so Search sees them at once.
            customer = self._insert(scope, customer_changes(fields), _LONG_AGO, created)
            ids.append(customer.id)
        products = [
            self._admin_product(scope, entry, f"products[{position}]", _LONG_AGO, ignored)
            for position, entry in enumerate(params.get("products") or [])
        ]
        # Customers may carry a `ref` (any string) that payments name as `customer_ref`.
        refs = {
            str(entry["ref"]): ids[position]
            for position, entry in enumerate(params.get("customers") or [])
            if isinstance(entry, dict) and entry.get("ref") is not None
        }
        ignored.discard("ref")
        payments = [self._admin_payment(scope, entry, refs, _LONG_AGO) for entry in params.get("payments") or []]
        return {
            "ids": ids,
            "refs": refs,
            "products": products,
            "payments": payments,
            "ignored_fields": sorted(ignored),
        }

    def _admin_payment(self, scope: _Scope, entry: Any, refs: dict[str, str], changed_at: float) -> dict[str, Any]:
        if not isinstance(entry, dict):
            raise invalid("each payment must be an object")
        customer = entry.get("customer")
        if entry.get("customer_ref") is not None:
            customer = refs.get(str(entry["customer_ref"]))
            if customer is None:
                raise invalid(f"customer_ref {entry['customer_ref']!r} names no seeded customer")
        made = self.seed_payment(scope, entry, customer, changed_at)
        return {**made, **({"ref": entry["ref"]} if entry.get("ref") is not None else {})}

    def _admin_add_payment(self, params: dict[str, Any]) -> dict[str, Any]:
        """A card payment taken just now outside ClinicSync (see `seed_payment` for the fields): Search sees it
        after the delay."""
        scope = self._admin_scope(params)
        entry = {k: v for k, v in params.items() if k not in ("account", "livemode")}
        return self._admin_payment(scope, entry, {}, self.clock())

    def _admin_emails(self, params: dict[str, Any]) -> dict[str, Any]:
        """Every email Stripe would have sent the scope's customers (see stripe_billing), oldest first."""
        scope = self._admin_scope(params)
        return {"emails": [dict(e) for e in scope.emails], "count": len(scope.emails)}

    def _admin_ledger(self, params: dict[str, Any]) -> dict[str, Any]:
        """Money that moved back to customers: every refund and every customer balance credit of the scope."""
        scope = self._admin_scope(params)
        refunds = [self.render_billing(scope, scope.refunds.records[r].current) for r in scope.refunds.order]
        return {"refunds": refunds, "balance_transactions": [dict(t) for t in scope.balance_transactions]}

    def _admin_add_product(self, params: dict[str, Any]) -> dict[str, Any]:
        """A product (with `prices`) made by hand in the Dashboard just now: Search sees it after the delay."""
        ignored: set[str] = set()
        entry = {k: v for k, v in params.items() if k not in ("account", "livemode")}
        made = self._admin_product(self._admin_scope(params), entry, "product", self.clock(), ignored)
        return {**made, "ignored_fields": sorted(ignored)}

    def _admin_product(
        self, scope: _Scope, entry: Any, where: str, changed_at: float, ignored: set[str]
    ) -> dict[str, Any]:
        """One product entry of `seed`/`add_product`: product fields, `created`, and `prices` (price fields,
        `created`, `default: true` for the product's default price), validated as the API would."""
        if not isinstance(entry, dict):
            raise invalid(f"{where} must be an object")
        # Seed files annotate entries (e.g. "expected", "sandbox_case"): only API fields are sent, the rest reported.
        ignored.update(k for k in entry if k not in PRODUCT_ENTRY_FIELDS and k not in ("created", "prices"))
        fields = {k: form_value(v) for k, v in entry.items() if v is not None and k in PRODUCT_ENTRY_FIELDS}
        changes = product_changes(fields, creating=True)
        changes["id"] = changes.get("id") or self._new_id(scope.products, "prod_")
        prices = []
        for position, price_entry in enumerate(entry.get("prices") or []):
            if not isinstance(price_entry, dict):
                raise invalid(f"{where}.prices[{position}] must be an object")
            price_fields = self._admin_price_fields(price_entry, changes["id"], ignored)
            prices.append((price_changes(price_fields, creating=True), bool(price_entry.get("default"))))
        created = int(entry["created"]) if entry.get("created") is not None else None
        product = self._new_product(scope, changes, prices, changed_at, created)
        return {
            "id": product.id,
            "prices": list(scope.prices_by_product.get(product.id, [])),
            "default_price": product.default_price,
        }

    @staticmethod
    def _admin_price_fields(entry: dict[str, Any], product_id: str, ignored: set[str]) -> dict[str, Any]:
        ignored.update(k for k in entry if k not in PRICE_ENTRY_FIELDS and k != "default")
        fields = {k: form_value(v) for k, v in entry.items() if v is not None and k in PRICE_ENTRY_FIELDS}
        return {**fields, "product": product_id}

    def _admin_add_price(self, params: dict[str, Any]) -> dict[str, Any]:
        """A price made by hand on an existing product (`product`), its default if `default` is true."""
        scope = self._admin_scope(params)
        product = self._live(scope, "product", str(params["product"]), param="product", status=400)
        ignored: set[str] = set()
        entry = {k: v for k, v in params.items() if k not in ("account", "livemode", "product")}
        now = self.clock()
        price = self._new_price(
            scope, price_changes(self._admin_price_fields(entry, product.id, ignored), creating=True), now
        )
        if params.get("default"):
            self._change_product(scope, product, {"default_price": price.id}, now)
        return {"id": price.id, "ignored_fields": sorted(ignored)}

    def _admin_edit_product(self, params: dict[str, Any]) -> dict[str, Any]:
        """A Dashboard edit of product `id`: any product update parameter (e.g. `active`, `name`, `default_price`)."""
        scope = self._admin_scope(params)
        product = self._live(scope, "product", str(params["id"]))
        fields = {k: form_value(v) for k, v in params.items() if k not in ("account", "livemode", "id")}
        updated = self._change_product(scope, product, product_changes(fields, creating=False), self.clock())
        return updated.render()

    def _admin_edit_price(self, params: dict[str, Any]) -> dict[str, Any]:
        """A Dashboard edit of price `id`, held to the same rules as the API (e.g. `active: false`)."""
        scope = self._admin_scope(params)
        price = self._find(scope, "price", str(params["id"]))
        fields = {k: form_value(v) for k, v in params.items() if k not in ("account", "livemode", "id")}
        return self._change_price(scope, price, price_changes(fields, creating=False), self.clock()).render()

    def _admin_dump(self, params: dict[str, Any]) -> dict[str, Any]:
        """Every object of the scope, oldest first, deleted ones included: customers (as `data`), products and
        prices."""
        scope = self._admin_scope(params)

        def every(table: _Table) -> list[dict[str, Any]]:
            return [
                {**table.records[oid].current.render(), "deleted": table.records[oid].current.deleted}
                for oid in table.order
            ]

        return {
            "object": "list",
            "account": scope.account,
            "livemode": scope.livemode,
            "data": every(scope.customers),
            "products": every(scope.products),
            "prices": every(scope.prices),
            **{
                name: [
                    {**self.render_billing(scope, obj), "deleted": obj.deleted}
                    for obj in (table.records[oid].current for oid in table.order)
                ]
                for name, table in (
                    ("payment_intents", scope.payment_intents),
                    ("charges", scope.charges),
                    ("refunds", scope.refunds),
                    ("invoiceitems", scope.invoiceitems),
                    ("invoices", scope.invoices),
                    ("credit_notes", scope.credit_notes),
                )
            },
        }

    def _admin_set_search_delay(self, params: dict[str, Any]) -> dict[str, Any]:
        seconds = float(params["seconds"])
        if seconds < 0:
            raise ValueError("seconds must not be negative")
        self.search_delay_s = seconds
        return {"search_delay_s": seconds}

    def _admin_expire_idempotency(self, params: dict[str, Any]) -> dict[str, Any]:
        expired = sum(len(scope.saved) for scope in self._scopes.values())
        for scope in self._scopes.values():
            scope.saved.clear()
        return {"expired": expired}

    def _admin_revoke(self, params: dict[str, Any]) -> dict[str, Any]:
        self._revoked.add(str(params["key"]))
        return {"revoked": mask_key(str(params["key"]))}

    def _admin_delete(self, params: dict[str, Any]) -> dict[str, Any]:
        ids = params.get("ids") or []
        if isinstance(ids, str):
            ids = [ids]
        deleted, missing = [], []
        now = self.clock()
        for customer_id in ids:
            scope = next((s for s in self._scopes.values() if customer_id in s.customers.records), None)
            customer = scope.customers.current(customer_id) if scope is not None else None
            if scope is None or customer is None or customer.deleted:
                missing.append(customer_id)
                continue
            self._remove(scope, "customer", customer, now)
            deleted.append(customer_id)
        return {"deleted": deleted, "missing": missing}

    def _admin_keys(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "default": self.default_key,
            "keys": [
                {
                    "key": k.secret,
                    "account": k.account,
                    "livemode": k.livemode,
                    "can_write": k.can_write,
                    "can_read_account": k.can_read_account,
                    "revoked": k.secret in self._revoked,
                }
                for k in KEYS.values()
            ],
        }

    def _admin_request_log(self, params: dict[str, Any]) -> dict[str, Any]:
        """`{"enabled": true}` starts a fresh log, `{"enabled": false}` stops it; either way (or with `{}`) the
        answer holds the requests logged so far (raw method, path, query pairs and body text)."""
        entries = list(self._request_log or [])
        if "enabled" in params:
            self._request_log = [] if params["enabled"] else None
        return {"enabled": self._request_log is not None, "requests": entries}

    def _admin_scope(self, params: dict[str, Any]) -> _Scope:
        account = str(params.get("account") or ACCOUNT_A)
        if account not in _ACCOUNT_PROFILES:
            raise invalid(f"Unknown sandbox account: {account}", param="account")
        livemode = params.get("livemode", False)
        if isinstance(livemode, str):
            livemode = livemode.lower() in ("1", "true", "yes")
        return self._scope(account, bool(livemode))

    # -- helpers -------------------------------------------------------------------------------------

    def _scope(self, account: str, livemode: bool) -> _Scope:
        with self._lock:
            scope = self._scopes.get((account, livemode))
            if scope is None:
                scope = self._scopes[(account, livemode)] = _Scope(account, livemode)
            return scope

    def _random(self, length: int, alphabet: str = _ALNUM) -> str:
        with self._lock:
            return "".join(self._rng.choices(alphabet, k=length))

    def _new_prefix(self, scope: _Scope) -> str:
        while True:
            prefix = self._random(8, "0123456789ABCDEF")
            if prefix not in scope.prefixes:
                return prefix


_ROUTES: dict[tuple[str, str], Handler] = {
    ("GET", "/v1/account"): StripeEmulator._get_account,
    ("GET", "/v1/customers"): StripeEmulator._list_customers,
    ("POST", "/v1/customers"): StripeEmulator._create_customer,
    ("GET", "/v1/customers/search"): StripeEmulator._search_customers,
    ("GET", "/v1/products"): StripeEmulator._list_products,
    ("POST", "/v1/products"): StripeEmulator._create_product,
    ("GET", "/v1/products/search"): StripeEmulator._search_products,
    ("GET", "/v1/prices"): StripeEmulator._list_prices,
    ("POST", "/v1/prices"): StripeEmulator._create_price,
    ("GET", "/v1/prices/search"): StripeEmulator._search_prices,
    ("GET", "/v1/payment_intents"): StripeEmulator._list_payment_intents,
    ("POST", "/v1/payment_intents"): StripeEmulator._create_payment_intent,
    ("GET", "/v1/payment_intents/search"): StripeEmulator._search_payment_intents,
    ("GET", "/v1/charges"): StripeEmulator._list_charges,
    ("GET", "/v1/charges/search"): StripeEmulator._search_charges,
    ("GET", "/v1/refunds"): StripeEmulator._list_refunds,
    ("POST", "/v1/refunds"): StripeEmulator._create_refund,
    ("GET", "/v1/invoiceitems"): StripeEmulator._list_invoiceitems,
    ("POST", "/v1/invoiceitems"): StripeEmulator._create_invoiceitem,
    ("GET", "/v1/invoices"): StripeEmulator._list_invoices,
    ("POST", "/v1/invoices"): StripeEmulator._create_invoice,
    ("GET", "/v1/invoices/search"): StripeEmulator._search_invoices,
    ("GET", "/v1/credit_notes"): StripeEmulator._list_credit_notes,
    ("POST", "/v1/credit_notes"): StripeEmulator._create_credit_note,
}
_OBJECT_PATH = re.compile(
    r"/v1/(customers|products|prices|payment_intents|charges|refunds|invoiceitems|invoices|credit_notes)"
    r"/([^/]+)(?:/([a-z_]+))?"
)
# POST /v1/<resource>/{id}/<action> (and GET /v1/invoices/{id}/lines).
_ACTION_ROUTES: dict[tuple[str, str, str], Handler] = {
    ("POST", "payment_intents", "confirm"): StripeEmulator._confirm_payment_intent,
    ("POST", "payment_intents", "cancel"): StripeEmulator._cancel_payment_intent,
    ("POST", "invoices", "finalize"): StripeEmulator._finalize_invoice,
    ("POST", "invoices", "pay"): StripeEmulator._pay_invoice,
    ("POST", "invoices", "void"): StripeEmulator._void_invoice,
    ("POST", "invoices", "mark_uncollectible"): StripeEmulator._mark_uncollectible,
    ("POST", "invoices", "send"): StripeEmulator._send_invoice,
    ("GET", "invoices", "lines"): StripeEmulator._list_invoice_lines,
    ("POST", "credit_notes", "void"): StripeEmulator._void_credit_note,
}
_OBJECT_ROUTES: dict[str, dict[str, Handler]] = {
    "customers": {
        "GET": StripeEmulator._retrieve_customer,
        "POST": StripeEmulator._update_customer,
        "DELETE": StripeEmulator._delete_customer,
    },
    "products": {
        "GET": StripeEmulator._retrieve_product,
        "POST": StripeEmulator._update_product,
        "DELETE": StripeEmulator._delete_product,
    },
    "prices": {"GET": StripeEmulator._retrieve_price, "POST": StripeEmulator._update_price},  # prices are never deleted
    "payment_intents": {"GET": StripeEmulator._retrieve_payment_intent, "POST": StripeEmulator._update_payment_intent},
    "charges": {"GET": StripeEmulator._retrieve_charge, "POST": StripeEmulator._update_charge},
    "refunds": {"GET": StripeEmulator._retrieve_refund, "POST": StripeEmulator._update_refund},
    "invoiceitems": {
        "GET": StripeEmulator._retrieve_invoiceitem,
        "POST": StripeEmulator._update_invoiceitem,
        "DELETE": StripeEmulator._delete_invoiceitem,
    },
    "invoices": {
        "GET": StripeEmulator._retrieve_invoice,
        "POST": StripeEmulator._update_invoice,
        "DELETE": StripeEmulator._delete_invoice,
    },
    "credit_notes": {"GET": StripeEmulator._retrieve_credit_note, "POST": StripeEmulator._update_credit_note},
}


# -- small pure helpers -------------------------------------------------------------------------------


def account_object(account: str) -> dict[str, Any]:
    """The account, with the fixture's top-level keys; AUD and AU because the clinics are Australian."""
    display, email = _ACCOUNT_PROFILES[account]
    return {
        "id": account,
        "object": "account",
        "business_profile": {"name": display, "support_email": email, "url": None, "mcc": None},
        "business_type": "company",
        "capabilities": {"card_payments": "active", "transfers": "active"},
        "charges_enabled": True,
        "controller": {"type": "account"},
        "country": "AU",
        "created": 1_700_000_000,
        "default_currency": "aud",
        "details_submitted": True,
        "email": email,
        "external_accounts": {
            "object": "list",
            "data": [],
            "has_more": False,
            "url": f"/v1/accounts/{account}/external_accounts",
        },
        "future_requirements": _no_requirements(),
        "metadata": {},
        "payouts_enabled": True,
        "requirements": _no_requirements(),
        "settings": {"dashboard": {"display_name": display, "timezone": "Australia/Sydney"}},
        "tos_acceptance": {"date": None, "ip": None, "user_agent": None},
        "type": "standard",
    }


def _no_requirements() -> dict[str, Any]:
    return {
        "alternatives": [],
        "current_deadline": None,
        "currently_due": [],
        "disabled_reason": None,
        "errors": [],
        "eventually_due": [],
        "past_due": [],
        "pending_verification": [],
    }


def _require_complete_body(request: Request) -> None:
    """A client killed mid-request leaves a body shorter than its Content-Length. Stripe never acts on such a
    request; executing it would create an object from partial parameters that no client ever saw."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) != len(request.body):
        raise invalid(f"Incomplete request body: {len(request.body)} of {int(declared)} bytes arrived.")


def _bearer_or_basic(header: str) -> str:
    """The key from `Bearer <key>` (the SDK) or `Basic base64(<key>:)` (curl -u)."""
    scheme, _, credential = header.strip().partition(" ")
    if scheme.lower() == "bearer":
        return credential.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credential.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return ""
        return decoded.partition(":")[0]
    return ""


def _fingerprint(method: str, path: str, pairs: list[tuple[str, str]]) -> str:
    """Method, path and parameters; order-insensitive because Stripe compares parameters, not bytes."""
    material = json.dumps([method.upper(), path, sorted(pairs)], separators=(",", ":"))
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def _take(ids: list[str], positions: Iterable[int], keep: Callable[[str], bool], count: int) -> list[str]:
    found: list[str] = []
    for position in positions:
        if keep(ids[position]):
            found.append(ids[position])
            if len(found) == count:
                break
    return found
