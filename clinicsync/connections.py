"""Connection tests for the Connections screen: one cheap read per service, turned into a plain-English report.

Qt-free, so it is unit-tested against the sandbox and usable from the CLI. Each `test_*` function makes a few
small requests with the real clients, never writes anything, and never raises for a problem the person can fix:
a wrong key, a wrong Cliniko shard, no network, a revoked key or a restricted Stripe key missing a permission
all come back as a `ConnectionReport` whose message says what happened and what to do.
"""

from __future__ import annotations

import re
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

import httpx

from clinicsync.logging_setup import register_secret
from clinicsync.retry import RetryPolicy
from clinicsync.secrets import SECRET_NAMES, SecretStore, SecretStoreError
from clinicsync.sources import calcom as calcom_source
from clinicsync.sources import cliniko as cliniko_source
from clinicsync.sources.errors import (
    SourceAuthError,
    SourceConfigError,
    SourceError,
    SourceNotFound,
    SourcePermissionError,
    SourceRateLimited,
    SourceUnavailable,
)
from clinicsync.sources.urls import is_loopback_host, validate_base_url
from clinicsync.stripe_gateway import StripeFailure, StripeGateway, livemode_of_key

CLINIKO = "Cliniko"
STRIPE = "Stripe"
CALCOM = "Cal.com"

KNOWN_SHARDS = cliniko_source.KNOWN_SHARDS

# Cal.com regions offered in Connections; anything else is a self-hosted API v2 address.
CALCOM_REGIONS: dict[str, str] = {"cloud": calcom_source.CLOUD_BASE_URL, "eu": calcom_source.EU_BASE_URL}

STRIPE_KEY_PREFIXES = ("sk_test_", "sk_live_", "rk_test_", "rk_live_")

# A customer id that cannot exist: updating it proves write permission (404) or its absence (403) without
# writing anything either way.
PERMISSION_PROBE_CUSTOMER = "cus_clinicsync_permission_probe"
# An address no customer has (.invalid is reserved): listing by it is a one-request read that returns nothing.
PERMISSION_PROBE_EMAIL = "clinicsync-permission-probe@example.invalid"

# What a missing Stripe permission stops, and what the Dashboard calls it.
_STRIPE_PERMISSIONS: dict[str, tuple[str, str]] = {
    "rak_customer_write": ("create and update customers", "Customers: Write"),
    "rak_customer_read": ("read customers", "Customers: Read"),
    "rak_account_read": ("read the account's name", "Account: Read"),
}
_PERMISSION_NAME = re.compile(r"'(rak_[a-z0-9_]+)'")
_CLINIKO_KEY_SHARD = re.compile(r"-([a-z]{2}\d{1,2})$", re.IGNORECASE)
_KEY_PREFIXES = (*STRIPE_KEY_PREFIXES, "pk_test_", "pk_live_", "cal_live_", "cal_test_", "cal_")

# A connection test should answer quickly: one retry for a blip, short timeouts, no long backoff.
_TEST_RETRY = RetryPolicy(max_attempts=2, base_delay_s=0.3, max_delay_s=1.0)
DEFAULT_TIMEOUT_S = 15.0

Problem = Literal[
    "config",  # something to fill in or correct before any request (key format, email, address)
    "wrong_key",  # the key was rejected (401)
    "revoked_key",  # the key was valid once and has been revoked or has expired
    "wrong_shard",  # Cliniko: the key does not belong to the shard (host) that was asked
    "unreachable",  # no network, unknown host, refused connection, timeout, server errors
    "permission",  # the key works but lacks a permission a sync needs
    "rate_limited",  # the service asked us to slow down
    "error",  # the service answered with something unusable
]

Resolver = Callable[[str], bool]


@dataclass(frozen=True)
class ConnectionReport:
    """The outcome of one connection test, ready to show. `ok` means a sync could run with this key."""

    service: str
    ok: bool
    message: str
    problem: Problem | None = None
    account_name: str | None = None
    account_id: str | None = None
    shard: str | None = None  # Cliniko
    livemode: bool | None = None  # Stripe
    missing_permission: str | None = None  # Stripe restricted keys, e.g. rak_customer_write
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def mode_label(self) -> str | None:
        """ "LIVE" or "TEST" for Stripe (from the key), None for the other services."""
        if self.livemode is None:
            return None
        return "LIVE" if self.livemode else "TEST"


# --- key helpers ---------------------------------------------------------------------------------------------


def mask_key(key: str | None) -> str:
    """A key as it may be shown: its type prefix, an ellipsis and its last four characters (and a Cliniko
    shard suffix), e.g. `sk_test_…a1b2`. Keys too short to hide anything show only their prefix."""
    key = (key or "").strip()
    if not key:
        return ""
    prefix = next((p for p in _KEY_PREFIXES if key.startswith(p)), "")
    match = _CLINIKO_KEY_SHARD.search(key)
    suffix = match.group(0) if match and not prefix else ""
    body = key[len(prefix) : len(key) - len(suffix)]
    # Showing four characters of a short key would give away too much of it.
    if len(body) < 12:
        return f"{prefix}…{suffix}"
    return f"{prefix}…{body[-4:]}{suffix}"


def key_shard(key: str | None) -> str | None:
    """The shard named by a Cliniko key's ending (`…-au2` → au2), or None when it has none."""
    match = _CLINIKO_KEY_SHARD.search((key or "").strip())
    return match.group(1).lower() if match else None


def has_any_key(secrets: SecretStore) -> bool:
    """True when any API key is set (environment or keyring). An unusable keyring counts as no keys: the
    first-run flow then leads to Connections, which shows the keyring's problem."""
    for name in SECRET_NAMES:
        try:
            if secrets.get(name):
                return True
        except SecretStoreError:
            return False
    return False


def calcom_region(base_url: str | None) -> str:
    """ "cloud", "eu" or "self_hosted" for a configured Cal.com base URL (blank means cloud)."""
    url = (base_url or "").strip().rstrip("/")
    if not url:
        return "cloud"
    for region, preset in CALCOM_REGIONS.items():
        if url == preset:
            return region
    return "self_hosted"


def host_resolves(host: str) -> bool:
    """True when the name resolves. Used only after a connection failed, to tell "no such server" (a wrong
    shard or address) from "no network"."""
    try:
        socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    return True


# --- Cliniko -------------------------------------------------------------------------------------------------


def test_cliniko(
    key: str,
    *,
    shard: str | None = None,
    contact_email: str,
    base_url: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    transport: httpx.BaseTransport | None = None,
    resolve: Resolver = host_resolves,
) -> ConnectionReport:
    """Read the account behind a Cliniko key (`GET /settings/public`, allowed for every user role)."""
    key = (key or "").strip()
    register_secret(key)  # whatever happens below, this key never reaches the log
    if not key:
        return _failed(CLINIKO, "config", "Enter the Cliniko API key first (Cliniko: My Info → Manage API keys).")
    try:
        client = cliniko_source.ClinikoClient(
            key,
            contact_email=contact_email,
            shard=shard,
            base_url=base_url or None,
            requests_per_minute=None,
            retry=_TEST_RETRY,
            timeout_s=timeout_s,
            transport=transport,
        )
    except SourceConfigError as exc:
        return _failed(CLINIKO, "config", exc.message)
    with client:
        try:
            account = client.get_account()
        except SourceError as exc:
            return _cliniko_failure(exc, client, key, custom_address=bool(base_url), resolve=resolve)
    name = account.name or f"account {account.id}"
    return ConnectionReport(
        CLINIKO,
        True,
        f"Connected to {name} (Cliniko shard {account.shard}).",
        account_name=account.name or None,
        account_id=account.id,
        shard=account.shard,
    )


def _cliniko_failure(
    exc: SourceError,
    client: cliniko_source.ClinikoClient,
    key: str,
    *,
    custom_address: bool,
    resolve: Resolver,
) -> ConnectionReport:
    shard = client.shard
    host = urlsplit(client.base_url).hostname or client.base_url
    suffix = key_shard(key)
    # With a custom address (the sandbox, a proxy) the shard does not choose the server, so it can't be wrong.
    shard_may_be_wrong = not custom_address
    if isinstance(exc, SourceAuthError):
        if shard_may_be_wrong and suffix is None:
            return _failed(
                CLINIKO,
                "wrong_shard",
                f"Cliniko did not accept this API key on the {shard} shard ({host}, HTTP {exc.status}). The key "
                "has no region ending (such as -au2), so ClinicSync used the shard chosen here: check the shard. "
                "If the shard is right, the key is wrong or has been revoked; create a new one in Cliniko under "
                "My Info → Manage API keys.",
                shard=shard,
            )
        return _failed(
            CLINIKO,
            "wrong_key",
            f"Cliniko rejected the API key (HTTP {exc.status}): it is wrong or has been revoked. Check that you "
            "copied the whole key, or create a new one in Cliniko under My Info → Manage API keys.",
            shard=shard,
        )
    if isinstance(exc, SourceNotFound):
        if not shard_may_be_wrong:
            return _failed(
                CLINIKO,
                "config",
                f"There is no Cliniko API at {client.base_url} (HTTP 404). Check the Cliniko address setting.",
            )
        hint = (
            f"check that the key was copied in full, including its ending (-{suffix})" if suffix else "check the shard"
        )
        return _failed(
            CLINIKO,
            "wrong_shard",
            f"Cliniko answered 'not found' on the {shard} shard ({host}): the key does not belong to this "
            f"region. {hint[0].upper()}{hint[1:]}.",
            shard=shard,
        )
    if isinstance(exc, cliniko_source.NoSuchShard):
        return _failed(CLINIKO, "wrong_shard", exc.message, shard=shard)
    if isinstance(exc, SourceConfigError) and exc.status is not None and 300 <= exc.status < 400:
        return _failed(CLINIKO, "wrong_shard", exc.message, shard=shard)
    if isinstance(exc, SourceUnavailable):
        return _unreachable(CLINIKO, exc, client.base_url, resolve, shard=shard, shard_may_be_wrong=shard_may_be_wrong)
    if isinstance(exc, SourcePermissionError):
        return _failed(CLINIKO, "permission", exc.message, shard=shard)
    if isinstance(exc, SourceRateLimited):
        return _failed(CLINIKO, "rate_limited", exc.message, shard=shard)
    return _failed(CLINIKO, "error", exc.message, shard=shard)


def _unreachable(
    service: str,
    exc: SourceUnavailable,
    url: str,
    resolve: Resolver,
    *,
    shard: str | None = None,
    shard_may_be_wrong: bool = False,
) -> ConnectionReport:
    """No answer (or only server errors): say whether the server does not exist, or could not be reached."""
    parts = urlsplit(url)
    host = parts.hostname or url
    if exc.status is not None:  # the server answered, with 5xx: its problem, not the clinic's
        return _failed(
            service,
            "unreachable",
            f"{service} is having problems right now (HTTP {exc.status}). Try again in a few minutes.",
            shard=shard,
        )
    if is_loopback_host(host):  # the sandbox (or a local proxy): the network is not the problem
        return _failed(
            service,
            "unreachable",
            f"{service} could not be reached: nothing answered at {parts.netloc} (this computer). If this is the "
            "sandbox clinic, it has stopped: start it again.",
            shard=shard,
        )
    if not resolve(host):
        if shard_may_be_wrong and shard not in KNOWN_SHARDS:
            return _failed(
                service,
                "wrong_shard",
                f"There is no Cliniko server for the shard '{shard}' ({host} could not be found). Check the "
                f"shard: Cliniko's regions are {', '.join(KNOWN_SHARDS)}. (Or this computer is offline.)",
                shard=shard,
            )
        return _failed(
            service,
            "unreachable",
            f"{service} could not be reached: the server {host} could not be found. This computer seems to be "
            "offline, or the address is wrong: check the internet connection (and the address, if you changed it).",
            shard=shard,
        )
    return _failed(
        service,
        "unreachable",
        f"{service} could not be reached at {host}: the connection failed or timed out. Check this computer's "
        "internet connection, and any firewall or proxy.",
        shard=shard,
    )


# --- Stripe --------------------------------------------------------------------------------------------------


def test_stripe(
    key: str,
    *,
    base_url: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    resolve: Resolver = host_resolves,
) -> ConnectionReport:
    """Read the account, read customers, and probe customer-write permission without writing anything.

    A restricted key may be refused `GET /v1/account`; that is not a reason to fail, only to leave the account
    name out. A key that can read but not write customers cannot sync, so it is reported as not OK.
    """
    key = (key or "").strip()
    register_secret(key)
    problem = stripe_key_problem(key)
    if problem:
        return _failed(STRIPE, "config", problem)
    livemode = livemode_of_key(key)
    try:
        origin = validate_base_url(base_url, STRIPE) if base_url else None
    except SourceConfigError as exc:
        return _failed(STRIPE, "config", exc.message, livemode=livemode)
    address = origin or "https://api.stripe.com"
    gateway = StripeGateway(key, base_url=origin, timeout_s=timeout_s)
    notes: list[str] = []
    account_name: str | None = None
    account_id: str | None = None
    try:
        account = gateway.account()
        account_name, account_id = account.name, account.id
    except StripeFailure as failure:
        if failure.kind != "permission":
            return _stripe_failure(failure, livemode, address, resolve)
        notes.append(
            "This restricted key may not read the account's details, so the account name is not shown; "
            "that does not stop syncing."
        )
    try:
        gateway.list_by_email("customer", PERMISSION_PROBE_EMAIL)
    except StripeFailure as failure:
        return _stripe_failure(failure, livemode, address, resolve, account_name=account_name, notes=notes)
    write_problem = _probe_customer_write(gateway)
    if write_problem is not None:
        return _stripe_failure(write_problem, livemode, address, resolve, account_name=account_name, notes=notes)
    name = account_name or "the Stripe account"
    mode = "LIVE" if livemode else "TEST"
    return ConnectionReport(
        STRIPE,
        True,
        f"Connected to {name} in {mode} mode. The key may read and write customers.",
        account_name=account_name,
        account_id=account_id,
        livemode=livemode,
        notes=tuple(notes),
    )


def stripe_key_problem(key: str) -> str | None:
    """Why `key` cannot be a key ClinicSync syncs with (empty, a publishable key, not a Stripe key), else None.
    Checked before any request: the sync, `config set-secret` and `doctor` use it too."""
    if not key:
        return (
            "Enter the Stripe secret key (sk_…) or restricted key (rk_…) first "
            "(Stripe Dashboard: Developers → API keys)."
        )
    if key.startswith(("pk_test_", "pk_live_")):
        return (
            "That is a publishable key (pk_…), which can't read or write customers. ClinicSync needs the secret "
            "key (sk_…) or a restricted key (rk_…) from the Stripe Dashboard: Developers → API keys."
        )
    if not key.startswith(STRIPE_KEY_PREFIXES):
        return (
            "That does not look like a Stripe API key: they start with sk_test_, sk_live_, rk_test_ or rk_live_. "
            "Check that you copied the whole key."
        )
    return None


def _probe_customer_write(gateway: StripeGateway) -> StripeFailure | None:
    """Update a customer that cannot exist: 404 means the key may write customers, 403 that it may not.

    Nothing is written either way (and the empty update would change nothing even if the id existed).
    """
    try:
        gateway.write(
            "update",
            "customer",
            PERMISSION_PROBE_CUSTOMER,
            {},
            idempotency_key=f"clinicsync-permission-probe-{uuid.uuid4().hex}",
        )
    except StripeFailure as failure:
        return None if failure.kind == "not_found" else failure
    return None


def _stripe_failure(
    failure: StripeFailure,
    livemode: bool,
    address: str,
    resolve: Resolver,
    *,
    account_name: str | None = None,
    notes: list[str] | None = None,
) -> ConnectionReport:
    extra = {"livemode": livemode, "account_name": account_name, "notes": tuple(notes or ())}
    if failure.kind == "auth":
        if failure.code == "api_key_expired":
            return _failed(
                STRIPE,
                "revoked_key",
                "This Stripe key has been revoked or has expired (HTTP 401). Create a new key in the Stripe "
                "Dashboard (Developers → API keys) and save it here.",
                **extra,
            )
        return _failed(
            STRIPE,
            "wrong_key",
            "Stripe rejected the API key (HTTP 401): it is not a valid key. Check that you copied the whole key "
            "from the Stripe Dashboard (Developers → API keys).",
            **extra,
        )
    if failure.kind == "permission":
        return _permission_failure(failure, **extra)
    if failure.kind == "transient":
        if failure.status == 429:
            return _failed(
                STRIPE, "rate_limited", "Stripe asked ClinicSync to slow down (HTTP 429); try again.", **extra
            )
        unavailable = SourceUnavailable(failure.message, service=STRIPE, status=failure.status)
        report = _unreachable(STRIPE, unavailable, address, resolve)
        return _failed(STRIPE, report.problem or "unreachable", report.message, **extra)
    return _failed(STRIPE, "error", f"Stripe refused the test request: {failure.message}", **extra)


def _permission_failure(
    failure: StripeFailure, *, livemode: bool, account_name: str | None, notes: tuple[str, ...]
) -> ConnectionReport:
    match = _PERMISSION_NAME.search(failure.message)
    permission = match.group(1) if match else None
    if permission is None:
        message = (
            "This restricted key lacks a permission ClinicSync needs (HTTP 403). In the Stripe Dashboard "
            "(Developers → API keys), give it Customers: Write access."
        )
    else:
        purpose, dashboard_name = _STRIPE_PERMISSIONS.get(permission, ("sync", permission))
        message = (
            f"This restricted key lacks the '{permission}' permission, so ClinicSync cannot {purpose} (HTTP 403). "
            f"In the Stripe Dashboard (Developers → API keys), edit the key and allow {dashboard_name}, or use a "
            "key that has it."
        )
    return _failed(
        STRIPE,
        "permission",
        message,
        livemode=livemode,
        account_name=account_name,
        missing_permission=permission,
        notes=notes,
    )


# --- Cal.com -------------------------------------------------------------------------------------------------


def test_calcom(
    key: str,
    *,
    base_url: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    transport: httpx.BaseTransport | None = None,
    resolve: Resolver = host_resolves,
) -> ConnectionReport:
    """Read the user behind a Cal.com key (`GET /v2/me`)."""
    key = (key or "").strip()
    register_secret(key)
    if not key:
        return _failed(CALCOM, "config", "Enter the Cal.com API key first (Cal.com: Settings → Security → API keys).")
    try:
        client = calcom_source.CalcomClient(
            key,
            base_url=base_url or None,
            requests_per_minute=None,
            retry=_TEST_RETRY,
            timeout_s=timeout_s,
            transport=transport,
        )
    except SourceConfigError as exc:
        return _failed(CALCOM, "config", exc.message)
    with client:
        try:
            user = client.get_me()
        except SourceError as exc:
            return _calcom_failure(exc, client.base_url, key, resolve)
    who = user.display_name + (f" ({user.email})" if user.email and user.email != user.display_name else "")
    org = f", organization {user.organization_name}" if user.organization_name else ""
    return ConnectionReport(
        CALCOM,
        True,
        f"Connected to Cal.com as {who}{org}.",
        account_name=user.display_name,
        account_id=user.id,
    )


def _calcom_failure(exc: SourceError, base_url: str, key: str, resolve: Resolver) -> ConnectionReport:
    if isinstance(exc, SourceAuthError):
        if exc.status == 498:
            return _failed(
                CALCOM, "revoked_key", "This Cal.com access token has expired (HTTP 498). Create a new API key."
            )
        hint = "" if key.startswith(calcom_source.KEY_PREFIX) else " Cal.com API keys start with cal_."
        return _failed(
            CALCOM,
            "wrong_key",
            f"Cal.com rejected the API key (HTTP {exc.status}): it is wrong, has expired or has been deleted. "
            f"Create a new one in Cal.com under Settings → Security → API keys.{hint}",
        )
    if isinstance(exc, SourceNotFound):
        return _failed(
            CALCOM,
            "config",
            f"There is no Cal.com API at {base_url} (HTTP 404). For Cal.com's cloud choose Cloud or EU; for a "
            "self-hosted Cal.com enter the address of its API v2 service, ending in /v2.",
        )
    if isinstance(exc, SourceUnavailable):
        return _unreachable(CALCOM, exc, base_url, resolve)
    if isinstance(exc, SourcePermissionError):
        return _failed(
            CALCOM,
            "permission",
            exc.message + " (A self-hosted Cal.com may need a licence that allows API keys.)",
        )
    if isinstance(exc, SourceRateLimited):
        return _failed(CALCOM, "rate_limited", exc.message)
    return _failed(CALCOM, "error", exc.message)


# --- shared --------------------------------------------------------------------------------------------------


def _failed(
    service: str,
    problem: Problem,
    message: str,
    *,
    shard: str | None = None,
    livemode: bool | None = None,
    account_name: str | None = None,
    missing_permission: str | None = None,
    notes: tuple[str, ...] = (),
) -> ConnectionReport:
    return ConnectionReport(
        service,
        False,
        message,
        problem=problem,
        shard=shard,
        livemode=livemode,
        account_name=account_name,
        missing_permission=missing_permission,
        notes=notes,
    )


# pytest would otherwise collect the public test_* functions of this module when a test imports them by name.
test_cliniko.__test__ = False  # type: ignore[attr-defined]
test_stripe.__test__ = False  # type: ignore[attr-defined]
test_calcom.__test__ = False  # type: ignore[attr-defined]
