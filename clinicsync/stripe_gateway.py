"""The one module that calls Stripe, through the official SDK's StripeClient.

The gateway makes single attempts and classifies failures; the sync engine owns retries (the SDK's client makes
none by default, and an app-level retry can honour our rate budget and cancellation). Parameters are checked
against Stripe's limits before they are sent.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import stripe

from clinicsync import stripe_limits
from clinicsync.retry import PERMANENT, RetryDecision, RetryPolicy, call_with_retries

log = logging.getLogger(__name__)

# The SDK's HTTPXClient hands httpx an encoded form string as `data=`; httpx warns on every call. Harmless.
warnings.filterwarnings("ignore", message=r"Use 'content=<\.\.\.>'", category=DeprecationWarning)

DEFAULT_API_ORIGIN = "https://api.stripe.com"


class Budget(Protocol):
    def acquire(self) -> None: ...


class StripeFailure(Exception):
    """A Stripe call failed. `kind` tells the engine what to do about it.

    kinds: transient (retry later), auth (key rejected: stop), permission (restricted key lacks a permission:
    stop), not_found, invalid (this request will never succeed), unknown_outcome (a saved 500 is being replayed:
    the write may or may not have happened).
    """

    def __init__(self, kind: str, message: str, *, retry_after_s: float | None = None, param: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after_s = retry_after_s
        self.param = param
        # Filled in by classify(): the HTTP status (None: no answer at all) and Stripe's error code, e.g.
        # api_key_expired for a revoked key, so a connection test can say which problem it is.
        self.status: int | None = None
        self.code: str | None = None


@dataclass(frozen=True)
class StripeAccount:
    id: str
    livemode: bool
    name: str


# Writes that name an action on an existing object (POST /v1/<objects>/<id>/<action>): the outbox's op → the SDK
# method, and the statuses in which the object has had the action done (Stripe refuses to finalize a finalized
# invoice: a replay of a finished action then finds it done rather than failing).
ACTIONS: dict[str, dict[str, tuple[str, frozenset[str]]]] = {
    "invoice": {
        "finalize": ("finalize_invoice", frozenset({"open", "paid", "uncollectible", "void"})),
        "pay": ("pay", frozenset({"paid"})),
        "void": ("void_invoice", frozenset({"void"})),
    },
}


def is_action(stripe_object: str, op: str) -> bool:
    """Whether `op` is an action on a `stripe_object` (rather than create, update or link)."""
    return op in ACTIONS.get(stripe_object, {})


@dataclass(frozen=True)
class WriteResult:
    object: dict[str, Any]
    replayed: bool


def retry_decision(exc: BaseException) -> RetryDecision:
    """Retry transient Stripe failures, honouring the server's hint; everything else is final."""
    if isinstance(exc, StripeFailure) and exc.kind == "transient":
        return RetryDecision(retry=True, hint_s=exc.retry_after_s)
    return PERMANENT


def livemode_of_key(api_key: str) -> bool:
    return api_key.startswith(("sk_live_", "rk_live_"))


def validate_params(params: dict[str, Any], stripe_object: str = "customer") -> None:
    """Refuse parameters Stripe would refuse for this kind of object, before sending them (raises StripeFailure
    kind=invalid)."""
    metadata = params.get("metadata")
    if isinstance(metadata, dict):
        if len(metadata) > stripe_limits.METADATA_MAX_KEYS:
            raise StripeFailure("invalid", f"{len(metadata)} metadata keys; Stripe allows 50", param="metadata")
        for key, value in metadata.items():
            if len(key) > stripe_limits.METADATA_KEY_MAX_CHARS or any(
                ch in key for ch in stripe_limits.METADATA_KEY_FORBIDDEN_CHARS
            ):
                raise StripeFailure("invalid", f"metadata key {key!r} is not allowed", param=f"metadata[{key}]")
            if len(str(value)) > stripe_limits.METADATA_VALUE_MAX_CHARS:
                raise StripeFailure("invalid", f"metadata {key} is too long", param=f"metadata[{key}]")
    for dotted, limit in stripe_limits.FIELD_MAX_CHARS.get(stripe_object, {}).items():
        head, _, rest = dotted.partition(".")
        value = params.get(head)
        if rest:
            value = value.get(rest) if isinstance(value, dict) else None
        if isinstance(value, str) and len(value) > limit:
            raise StripeFailure("invalid", f"{dotted} is longer than Stripe's {limit} characters", param=dotted)


def _header(headers: Any, name: str) -> str | None:
    if not headers:
        return None
    for key, value in dict(headers).items():
        if key.lower() == name.lower():
            return value
    return None


def _retry_after(headers: Any) -> float | None:
    value = _header(headers, "Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def classify(exc: stripe.StripeError) -> StripeFailure:
    """Turn an SDK exception into a StripeFailure with a message a practice manager can act on."""
    failure = _classify(exc)
    failure.status = exc.http_status
    # The SDK fills exc.code only for some exception classes; the parsed error object always has the body's.
    failure.code = getattr(exc.error, "code", None) if exc.error else None
    return failure


# Stripe names a restricted key's missing permission like 'rak_customer_write'; the name is kept (connections.py
# turns it into the Dashboard's wording), nothing else of Stripe's text about the key is.
_PERMISSION = re.compile(r"'(rak_[a-z0-9_]+)'")
_ANSWER_LIMIT = 300

KEY_REFUSED = (
    "Stripe rejected the API key (HTTP 401): it is wrong, or it was revoked or has expired. Check that the whole "
    "key was copied, or create a new one in the Stripe Dashboard (Developers → API keys)."
)
KEY_EXPIRED = (
    "Stripe rejected the API key (HTTP 401): it has been revoked or has expired. Create a new key in the Stripe "
    "Dashboard (Developers → API keys) and save it in ClinicSync."
)
UNREACHABLE = (
    "Stripe could not be reached: the connection failed or timed out before Stripe answered. Check this "
    "computer's internet connection; nothing is lost, and ClinicSync tries again."
)
UNREADABLE = (
    "Stripe's answer could not be read (something between this computer and Stripe answered instead); "
    "the change is sent again"
)
SAVED_ERROR = (
    "Stripe answered this change with a server error and keeps that answer for it, so whether the change was made "
    "is not known; ClinicSync looks for it in Stripe and, if it is not there, sends it again"
)


def _classify(exc: stripe.StripeError) -> StripeFailure:
    """ClinicSync's own words for each kind of failure: the SDK's text ("Unexpected error communicating with
    Stripe… let us know at support@stripe.com", "A ConnectError was raised") never reaches a person. Only what
    Stripe's answer says about a refused request (which field, what is wrong with it) is quoted."""
    headers = exc.headers
    should_retry = _header(headers, "Stripe-Should-Retry")
    param = getattr(exc.error, "param", None) if exc.error else None
    status = exc.http_status or 0
    if isinstance(exc, stripe.AuthenticationError):
        expired = (getattr(exc.error, "code", None) if exc.error else None) == "api_key_expired"
        return StripeFailure("auth", KEY_EXPIRED if expired else KEY_REFUSED)
    if isinstance(exc, stripe.PermissionError):
        return StripeFailure("permission", _permission_message(exc))
    if 200 <= status < 300:
        # A success whose body is not Stripe's (a proxy or captive portal answered, or the body was cut): the
        # write may well have happened. Unknown, not refused: it is sent again with the same idempotency key.
        return StripeFailure("transient", UNREADABLE)
    if _header(headers, "Idempotent-Replayed") == "true" and status >= 500:
        return StripeFailure("unknown_outcome", SAVED_ERROR)
    if should_retry == "false":
        return StripeFailure("invalid", _refusal(exc, status), param=param)
    if isinstance(exc, stripe.APIConnectionError):
        return StripeFailure("transient", UNREACHABLE)
    if isinstance(exc, stripe.RateLimitError) or status == 429:
        return StripeFailure(
            "transient",
            "Stripe asked ClinicSync to slow down (HTTP 429); it waits and tries again.",
            retry_after_s=_retry_after(headers),
        )
    if should_retry == "true" or status == 409 or status >= 500:
        return StripeFailure(
            "transient",
            f"Stripe could not answer just now (HTTP {status or 'with no status'}); this is usually brief, and "
            "ClinicSync tries again.",
            retry_after_s=_retry_after(headers),
        )
    if status == 404:
        return StripeFailure("not_found", _refusal(exc, status), param=param)
    return StripeFailure("invalid", _refusal(exc, status), param=param)


def _permission_message(exc: stripe.StripeError) -> str:
    said = (getattr(exc.error, "message", None) if exc.error else None) or ""
    match = _PERMISSION.search(str(said))
    needed = f" ('{match.group(1)}')" if match else ""
    return (
        f"The Stripe key lacks a permission ClinicSync needs{needed} (HTTP 403). In the Stripe Dashboard "
        "(Developers → API keys), edit this restricted key to allow it, or use a key that has it."
    )


def _refusal(exc: stripe.StripeError, status: int) -> str:
    """Stripe refused this one request: what its answer says about it (the field and the problem), which is
    what a person needs to correct the record; never the SDK's own wording around it."""
    said = (getattr(exc.error, "message", None) if exc.error else None) or ""
    said = " ".join(str(said).split())
    if len(said) > _ANSWER_LIMIT:
        said = said[: _ANSWER_LIMIT - 1] + "…"
    return said or f"Stripe refused the request (HTTP {status or 'with no status'}) without saying why"


class StripeGateway:
    """Typed single-attempt calls to Stripe for one API key."""

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str | None = None,
        timeout_s: float = 30.0,
        budget: Budget | None = None,
        read_retry: RetryPolicy | None = None,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        """Reads are retried here with `read_retry` (they are safe to repeat); writes are single attempts,
        because the outbox decides how a write is retried or settled."""
        self.livemode = livemode_of_key(api_key)
        self._budget = budget
        self._read_retry = read_retry
        self._sleep = sleep
        http_client = stripe.HTTPXClient(timeout=timeout_s, allow_sync_methods=True)
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": base_url or DEFAULT_API_ORIGIN},
            max_network_retries=0,
            http_client=http_client,
        )

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self._budget is not None:
            self._budget.acquire()
        try:
            return fn(*args, **kwargs)
        except stripe.StripeError as exc:
            raise classify(exc) from None

    def _read(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self._read_retry is None:
            return self._call(fn, *args, **kwargs)
        return call_with_retries(
            lambda: self._call(fn, *args, **kwargs),
            policy=self._read_retry,
            classify=retry_decision,
            sleep=self._sleep,
        )

    def account(self) -> StripeAccount:
        account = self._read(self._client.v1.accounts.retrieve_current).to_dict()
        profile = account.get("business_profile") or {}
        settings = account.get("settings") or {}
        dashboard = settings.get("dashboard") or {}
        name = profile.get("name") or dashboard.get("display_name") or account.get("email") or account["id"]
        return StripeAccount(id=account["id"], livemode=self.livemode, name=str(name))

    def iter_objects(
        self, stripe_object: str, created_since: int | None = None, filters: dict[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every object of one kind (or those `created` at or after `created_since`, and matching the listing's
        own `filters`, e.g. a price's `product`), newest first, by 100."""
        self._service(stripe_object)  # refuses a kind ClinicSync does not handle
        path = f"/v1/{stripe_object}s"
        base: dict[str, Any] = {"limit": stripe_limits.LIST_MAX_LIMIT, **(filters or {})}
        if created_since is not None:
            base["created"] = {"gte": created_since}
        params = base
        while True:
            # The same GET the SDK's `list` sends, its JSON taken as it is: building the SDK's objects for a page
            # of 100, then turning each back into a dict, cost more CPU than the rest of a listing.
            page = self._read(self._client.raw_request, "get", path, **params).data
            yield from page["data"]
            if not page.get("has_more") or not page["data"]:
                return
            params = base | {"starting_after": page["data"][-1]["id"]}

    def iter_newer(self, stripe_object: str, than_id: str) -> Iterator[dict[str, Any]]:
        """The objects of one kind made after the object `than_id` (Stripe's `ending_before`), by 100: what a listing
        read earlier in the run did not see yet."""
        self._service(stripe_object)
        path, before = f"/v1/{stripe_object}s", than_id
        while True:
            params = {"limit": stripe_limits.LIST_MAX_LIMIT, "ending_before": before}
            page = self._read(self._client.raw_request, "get", path, **params).data
            yield from page["data"]
            if not page.get("has_more") or not page["data"]:
                return
            before = page["data"][0]["id"]  # each page is newest first: the next one is newer still

    def list_by_email(self, stripe_object: str, email: str) -> list[dict[str, Any]]:
        """Objects whose email is exactly `email` (Stripe compares case-sensitively); read-after-write safe."""
        service = self._service(stripe_object)
        page = self._read(service.list, params={"email": email, "limit": stripe_limits.LIST_MAX_LIMIT})
        return [item.to_dict() for item in page.data]

    def search(self, stripe_object: str, query: str) -> list[dict[str, Any]]:
        """Stripe Search: lags behind writes, so only for objects older than the index delay."""
        page = self._read(self._service(stripe_object).search, params={"query": query, "limit": 100})
        return [item.to_dict() for item in page.data]

    def retrieve(self, stripe_object: str, stripe_id: str) -> dict[str, Any] | None:
        """The object, or None if it does not exist or was deleted."""
        try:
            obj = self._read(self._service(stripe_object).retrieve, stripe_id)
        except StripeFailure as failure:
            if failure.kind == "not_found":
                return None
            raise
        data = obj.to_dict()
        return None if data.get("deleted") else data

    def delete(self, stripe_object: str, stripe_id: str) -> bool:
        """Delete an object; True if it was deleted now, False if it was gone already (a repeat is harmless)."""
        try:
            self._call(self._service(stripe_object).delete, stripe_id)
        except StripeFailure as failure:
            if failure.kind == "not_found":
                return False
            raise
        return True

    def any_of(self, stripe_object: str, filters: dict[str, Any]) -> bool:
        """Whether a listing with these filters has anything (e.g. a customer's payments); a listing this
        Stripe does not serve counts as empty."""
        try:
            page = self._read(self._service(stripe_object).list, params={"limit": 1, **filters})
        except StripeFailure as failure:
            if failure.kind == "not_found":
                return False
            raise
        return bool(page.data)

    def write(
        self, op: str, stripe_object: str, stripe_id: str | None, params: dict[str, Any], idempotency_key: str
    ) -> WriteResult:
        validate_params(params, stripe_object)
        service = self._service(stripe_object)
        options = {"idempotency_key": idempotency_key}
        if op == "create":
            obj = self._call(service.create, params=params, options=options)
        elif op in ("update", "link") and stripe_id:
            obj = self._call(service.update, stripe_id, params=params, options=options)
        elif is_action(stripe_object, op) and stripe_id:
            method = getattr(service, ACTIONS[stripe_object][op][0])
            obj = self._call(method, stripe_id, params=params, options=options)
        else:
            raise ValueError(f"unsupported Stripe write {op!r} on {stripe_object}")
        replayed = _header(obj.last_response.headers if obj.last_response else None, "Idempotent-Replayed")
        return WriteResult(object=obj.to_dict(), replayed=replayed == "true")

    def action_done(self, stripe_object: str, op: str, stripe_id: str) -> dict[str, Any] | None:
        """The object when it is already in a state the action leads to (the action was done before), else None."""
        obj = self.retrieve(stripe_object, stripe_id)
        return obj if obj is not None and obj.get("status") in ACTIONS[stripe_object][op][1] else None

    def _service(self, stripe_object: str) -> Any:
        services = {
            "customer": self._client.v1.customers,
            "product": self._client.v1.products,
            "price": self._client.v1.prices,
            "payment_intent": self._client.v1.payment_intents,
            "charge": self._client.v1.charges,
            "refund": self._client.v1.refunds,  # read only: refunds of linked payments are recorded, never made
            "invoice": self._client.v1.invoices,
            "invoiceitem": self._client.v1.invoice_items,
            "credit_note": self._client.v1.credit_notes,
            # read only: whether a customer holds a saved card or a plan before a duplicate of it is deleted
            "setup_intent": self._client.v1.setup_intents,
            "payment_method": self._client.v1.payment_methods,
            "subscription": self._client.v1.subscriptions,
        }
        try:
            return services[stripe_object]
        except KeyError:
            raise ValueError(f"ClinicSync does not write Stripe {stripe_object} objects yet") from None
