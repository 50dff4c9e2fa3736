"""Declarative, validated settings. One list says every non-secret setting, its type, default and label.

A value in the environment (`CLINICSYNC_` + the key in upper case with dots as underscores) wins over the stored
one and is never written to the database, so a headless run can be configured entirely from outside.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from clinicsync import rate_limits
from clinicsync.store.db import database_proxy
from clinicsync.store.models import Setting

ENV_PREFIX = "CLINICSYNC_"


class SettingError(ValueError):
    """A setting's key or value is not acceptable; the message says which and why."""


@dataclass(frozen=True)
class SettingSpec:
    key: str
    type: type
    default: Any
    label: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    check: Callable[[Any], str | None] | None = None  # returns an error message or None

    @property
    def env_name(self) -> str:
        return ENV_PREFIX + self.key.upper().replace(".", "_")


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_SHARD = re.compile(r"^[a-z]{2}\d{1,2}$")


def _contact_email(value: str) -> str | None:
    return None if value == "" or _EMAIL.match(value) else f"{value!r} is not an email address"


def _shard(value: str) -> str | None:
    return None if _SHARD.match(value) else f"{value!r} is not a Cliniko shard (such as au1, au2, uk1)"


def _currency(value: str) -> str | None:
    return None if value == "" or re.fullmatch(r"[a-z]{3}", value) else f"{value!r} is not a currency code like aud"


def _base_url(value: str) -> str | None:
    if value == "":
        return None
    from clinicsync.sources.errors import SourceConfigError
    from clinicsync.sources.urls import validate_base_url

    try:
        validate_base_url(value, "service")
    except SourceConfigError as exc:
        return str(exc)
    return None


def _listen_address(value: str) -> str | None:
    import ipaddress

    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"{value!r} is not an IP address of this computer, such as 127.0.0.1 or 192.168.1.20"
    return None


def _clock_time(value: str) -> str | None:
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", value)
    if match and int(match[1]) < 24 and int(match[2]) < 60:
        return None
    return f"{value!r} is not a time of day like 02:00 or 13:30"


def _own_interval(value: int) -> str | None:
    if value == 0 or value >= MIN_INTERVAL_SECONDS:
        return None
    return f"{value} is neither 0 (as every stream) nor at least {MIN_INTERVAL_SECONDS} seconds"


def _stream_schedules() -> tuple[SettingSpec, ...]:
    """Each stream's own schedule, for every stream there is: on or off, and its interval (0: the shared one)."""
    from clinicsync.labels import stream_source
    from clinicsync.streams import STREAMS  # plain declarations; nothing there reads the database

    specs: list[SettingSpec] = []
    for name in STREAMS:
        words = stream_source(name)
        specs.append(SettingSpec(f"schedule.{name}.enabled", bool, True, f"Check {words} for changes on that schedule"))
        specs.append(
            SettingSpec(
                f"schedule.{name}.interval_seconds",
                int,
                0,
                f"Check {words} every (seconds; 0: as every stream)",
                minimum=0,
                maximum=24 * 3600,
                check=_own_interval,
            )
        )
    return tuple(specs)


WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
# The scheduler checks the interval against each source's request budget too (clinicsync/sync/scheduler.py):
# with more streams to poll, it may wait a little longer than this.
MIN_INTERVAL_SECONDS = 15


SPECS: tuple[SettingSpec, ...] = (
    SettingSpec("contact_email", str, "", "Contact email sent to Cliniko in the User-Agent", check=_contact_email),
    SettingSpec("cliniko.shard", str, "au1", "Cliniko shard for API keys without a suffix", check=_shard),
    SettingSpec("cliniko.base_url", str, "", "Cliniko API base URL (blank: from the shard)", check=_base_url),
    SettingSpec(
        "cliniko.requests_per_minute",
        int,
        rate_limits.CLINIKO_BUDGET_PER_MINUTE,
        "Cliniko requests per minute (0: no client-side limit, for the sandbox)",
        minimum=0,
        maximum=rate_limits.CLINIKO_PER_MINUTE,
    ),
    SettingSpec(
        "calcom.requests_per_minute",
        int,
        rate_limits.CALCOM_BUDGET_PER_MINUTE,
        "Cal.com requests per minute (0: no client-side limit, for the sandbox)",
        minimum=0,
        maximum=rate_limits.CALCOM_PER_MINUTE,
    ),
    SettingSpec("stripe.base_url", str, "", "Stripe API origin (blank: https://api.stripe.com)", check=_base_url),
    SettingSpec(
        "stripe.requests_per_second",
        float,
        0.0,
        "Stripe requests per second (0: 90% of Stripe's limit for the key's mode)",
        minimum=0,
        maximum=100_000,
    ),
    # 12: at 80 ms a request, 8 in flight fell short of the 90/s budget once each write's own CPU time is added
    # (benchmarks/products_sync.py: wall / budget floor 1.95 with 8, 1.48 with 12, no better with 16).
    SettingSpec("stripe.workers", int, 12, "Stripe writes sent in parallel", minimum=1, maximum=16),
    SettingSpec("stripe.timeout_seconds", float, 30.0, "Stripe request timeout (seconds)", minimum=1, maximum=120),
    SettingSpec("calcom.base_url", str, "", "Cal.com API base URL (blank: https://api.cal.com/v2)", check=_base_url),
    SettingSpec("calcom.webhook.enabled", bool, False, "Receive Cal.com booking notices as they happen"),
    SettingSpec(
        "calcom.webhook.address",
        str,
        "127.0.0.1",
        "Address of this computer that receives Cal.com's notices (127.0.0.1: only this computer)",
        check=_listen_address,
    ),
    SettingSpec("calcom.webhook.port", int, 8788, "Port that receives Cal.com's notices", minimum=1024, maximum=65535),
    SettingSpec(
        "sync.email_match",
        str,
        "auto_link",
        "What to do with a single unambiguous email match",
        choices=("auto_link", "review"),
    ),
    SettingSpec(
        "sync.cursor_overlap_seconds", int, 120, "Overlap of incremental reads (seconds)", minimum=0, maximum=86_400
    ),
    SettingSpec("sync.paused", bool, False, "Pause all syncing"),
    SettingSpec(
        "retry.max_attempts", int, 6, "Attempts per request before giving up for this run", minimum=1, maximum=100
    ),
    SettingSpec("retry.base_delay_seconds", float, 0.5, "First retry delay (seconds)", minimum=0, maximum=600),
    SettingSpec("retry.max_delay_seconds", float, 60.0, "Longest retry delay (seconds)", minimum=0, maximum=3600),
    SettingSpec(
        "currency", str, "", "Currency of the clinic's prices (blank: from Cliniko's country)", check=_currency
    ),
    SettingSpec(
        "cliniko.products.price_basis",
        str,
        "including_tax",
        "Which Cliniko product price becomes the Stripe price",
        choices=("including_tax", "ex_tax"),
    ),
    SettingSpec("streams.cliniko.products.enabled", bool, True, "Sync Cliniko products to Stripe products"),
    SettingSpec(
        "streams.cliniko.invoices.enabled", bool, True, "Link Cliniko invoices to the Stripe payments that paid them"
    ),
    SettingSpec(
        "cliniko.invoices.match_days_before",
        int,
        7,
        "Link an invoice to a payment made up to this many days before its issue date",
        minimum=0,
        maximum=90,
    ),
    SettingSpec(
        "cliniko.invoices.match_days_after",
        int,
        30,
        "Link an invoice to a payment made up to this many days after its issue date",
        minimum=0,
        maximum=365,
    ),
    SettingSpec(
        "cliniko.invoices.mirror",
        bool,
        False,
        "Mirror Cliniko invoices as Stripe invoices (never emailed; paid, voided or credited as in Cliniko)",
    ),
    SettingSpec(
        "identity.primary_source",
        str,
        "cliniko",
        "Which source's name, email, phone and address a shared Stripe customer keeps",
        choices=("cliniko", "calcom"),
    ),
    SettingSpec(
        "schedule.interval_seconds",
        int,
        60,
        "Check Cliniko for changes every (seconds)",
        minimum=MIN_INTERVAL_SECONDS,
        maximum=24 * 3600,
    ),
    *_stream_schedules(),
    SettingSpec(
        "schedule.reconcile.frequency",
        str,
        "daily",
        "How often to compare Stripe with Cliniko in full",
        choices=("daily", "weekly", "off"),
    ),
    SettingSpec(
        "schedule.reconcile.time",
        str,
        "02:00",
        "Time of day for the full comparison (24-hour, this computer's clock; run at start if missed)",
        check=_clock_time,
    ),
    SettingSpec(
        "schedule.reconcile.day", str, "monday", "Day of the week for a weekly full comparison", choices=WEEKDAYS
    ),
    SettingSpec(
        "alerts.outage_minutes",
        int,
        30,
        "Tell me when Cliniko or Stripe cannot be reached for longer than (minutes)",
        minimum=1,
        maximum=7 * 24 * 60,
    ),
    SettingSpec("alerts.notify", bool, True, "Show a desktop notification when something needs a person"),
    SettingSpec(
        "stripe.search_settle_seconds",
        float,
        90.0,
        "How long Stripe's search index may lag behind a write (seconds)",
        minimum=0,
        maximum=3600,
    ),
)
SPECS_BY_KEY: dict[str, SettingSpec] = {spec.key: spec for spec in SPECS}


def spec_for(key: str) -> SettingSpec:
    try:
        return SPECS_BY_KEY[key]
    except KeyError:
        known = ", ".join(sorted(SPECS_BY_KEY))
        raise SettingError(f"Unknown setting {key!r}. Known settings: {known}") from None


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_value(spec: SettingSpec, raw: Any) -> Any:
    """Turn a raw value (text from the command line or environment, or JSON) into a checked, typed value."""
    value = _coerce(spec, raw)
    if spec.choices and value not in spec.choices:
        raise SettingError(f"{spec.key} must be one of {', '.join(spec.choices)}, not {value!r}")
    if spec.minimum is not None and value < spec.minimum:
        raise SettingError(f"{spec.key} must be at least {spec.minimum}, not {value!r}")
    if spec.maximum is not None and value > spec.maximum:
        raise SettingError(f"{spec.key} must be at most {spec.maximum}, not {value!r}")
    if spec.check is not None and (problem := spec.check(value)):
        raise SettingError(f"{spec.key}: {problem}")
    return value


_KIND_WORDS = {int: "a whole number", float: "a number"}  # what a person calls them


def _coerce(spec: SettingSpec, raw: Any) -> Any:
    """Text from the command line or environment, or a JSON value from the database, as the spec's type. Strict:
    a stored 2.5 is not quietly a whole number 2, True is not 1, 5 is not text."""
    if spec.type is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise SettingError(f"{spec.key} must be true or false, not {raw!r}")
    if spec.type is str:
        if not isinstance(raw, str):
            raise SettingError(f"{spec.key} must be text, not {raw!r}")
        return raw.strip()
    kind = _KIND_WORDS.get(spec.type, spec.type.__name__)
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise SettingError(f"{spec.key} must be {kind}, not {raw!r}")
    try:
        if spec.type is int:
            if isinstance(raw, float) and not (math.isfinite(raw) and raw.is_integer()):
                raise ValueError(raw)
            return int(raw.strip() if isinstance(raw, str) else raw)
        number = float(raw.strip() if isinstance(raw, str) else raw)
    except (TypeError, ValueError, OverflowError):
        raise SettingError(f"{spec.key} must be {kind}, not {raw!r}") from None
    # NaN passes every < and > check, and infinity every minimum: refused before the range check sees them.
    if not math.isfinite(number):
        raise SettingError(f"{spec.key} must be a finite number, not {raw!r}")
    return number


@dataclass(frozen=True)
class SettingValue:
    key: str
    value: Any  # the default when there is a problem
    source: str  # "environment", "stored", "default"
    problem: str = ""  # why the environment's or the stored value cannot be used; it is then never used


class Settings:
    """Typed access to settings: environment first, then the database, then the default.

    A value that is set but unusable (a hand-edited row, NaN, text that is not JSON, a bad environment value) is
    not replaced by the default behind anyone's back: `lookup` reports it in `problem`, and `get`, which is what
    using a setting means, refuses with that message."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def lookup(self, key: str) -> SettingValue:
        spec = spec_for(key)
        if spec.env_name in self._env:
            raw = self._env[spec.env_name]
            try:
                return SettingValue(key, parse_value(spec, raw), "environment")
            except SettingError as exc:
                problem = f"{exc} (from the environment variable {spec.env_name}); fix or unset that variable."
                return SettingValue(key, spec.default, "environment", problem)
        # Raw SQL: the model's JSON field would raise on a damaged row before anything could say which one.
        row = database_proxy.execute_sql("SELECT value FROM setting WHERE key = ?", (key,)).fetchone()
        if row is None:
            return SettingValue(key, spec.default, "default")
        try:
            value = parse_value(spec, _stored_json(spec, row[0]))
        except SettingError as exc:
            return SettingValue(key, spec.default, "stored", _stored_problem(spec, exc))
        return SettingValue(key, value, "stored")

    def get(self, key: str) -> Any:
        item = self.lookup(key)
        if item.problem:
            raise SettingError(item.problem)
        return item.value

    def set(self, key: str, raw: Any) -> Any:
        spec = spec_for(key)
        value = parse_value(spec, raw)
        Setting.insert(key=key, value=value).on_conflict_replace().execute()
        return value

    def unset(self, key: str) -> None:
        spec_for(key)
        Setting.delete().where(Setting.key == key).execute()

    def all(self) -> list[SettingValue]:
        return [self.lookup(spec.key) for spec in SPECS]

    def problems(self) -> list[SettingValue]:
        """Every setting whose environment or stored value cannot be used, in declaration order."""
        return [item for item in self.all() if item.problem]


def _stored_json(spec: SettingSpec, text: Any) -> Any:
    if not isinstance(text, str) or not text.strip():
        raise SettingError(f"{spec.key} is empty")
    try:
        return json.loads(text)
    except ValueError:
        raise SettingError(f"{spec.key} is not readable ({text[:40]!r} is not a JSON value)") from None


def _stored_problem(spec: SettingSpec, exc: SettingError) -> str:
    default = json.dumps(spec.default)
    return (
        f"The stored setting {spec.key} cannot be used: {exc}. ClinicSync will not guess: set it again with "
        f"`clinicsync config set {spec.key} VALUE`, or `clinicsync config unset {spec.key}` for the default "
        f"({default})."
    )
