"""Builds the clients a sync needs from settings and secrets, resolves the account pair, and runs streams.

Used by the CLI and (through the runner) by the desktop app; Qt-free.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clinicsync import labels, rate_limits
from clinicsync import secrets as secret_names
from clinicsync.connections import stripe_key_problem
from clinicsync.outcomes import STOPS_EVERY_STREAM, Outcome
from clinicsync.paths import AppPaths
from clinicsync.profile_lock import ProfileLock
from clinicsync.readahead import ReadAhead
from clinicsync.retry import Cancelled, CancelToken, RetryPolicy
from clinicsync.secrets import SecretStore
from clinicsync.sources.base import host_of
from clinicsync.sources.calcom import CalcomClient
from clinicsync.sources.cliniko import ClinikoClient
from clinicsync.sources.errors import SourceConfigError
from clinicsync.sources.ratelimit import RequestBudget
from clinicsync.sources.urls import validate_base_url
from clinicsync.store import mappings as mapping_store
from clinicsync.store import queries
from clinicsync.store.models import AccountPair, StreamState, SyncPlan, SyncRun, utcnow
from clinicsync.store.settings import Settings
from clinicsync.streams import STREAMS, dependency_order
from clinicsync.streams.base import ReadAheadRequest
from clinicsync.stripe_gateway import StripeGateway, livemode_of_key
from clinicsync.sync import plans
from clinicsync.sync.engine import Progress, RunOptions, RunResult, StreamRun

log = logging.getLogger(__name__)


class ConfigProblem(Exception):
    """Something the user must set before a sync can run (a missing key, an invalid address)."""


@dataclass(frozen=True)
class Connected:
    cliniko: ClinikoClient
    gateway: StripeGateway
    pair: AccountPair


def retry_policy(settings: Settings) -> RetryPolicy:
    base = settings.get("retry.base_delay_seconds")
    return RetryPolicy(
        max_attempts=settings.get("retry.max_attempts"),
        base_delay_s=base,
        max_delay_s=max(base, settings.get("retry.max_delay_seconds")),
    )


def _require(secrets: SecretStore, name: str, what: str) -> str:
    value = secrets.get(name)
    if not value:
        raise ConfigProblem(
            f"No {what} API key is set. Add it in Connections, or run `clinicsync config set-secret {name}`."
        )
    return value


def cliniko_client(settings: Settings, secrets: SecretStore, cancel: CancelToken) -> ClinikoClient:
    try:
        return ClinikoClient(
            _require(secrets, secret_names.CLINIKO_API_KEY, "Cliniko"),
            contact_email=settings.get("contact_email"),
            shard=settings.get("cliniko.shard"),
            base_url=settings.get("cliniko.base_url") or None,
            requests_per_minute=settings.get("cliniko.requests_per_minute") or None,
            retry=retry_policy(settings),
            sleep=cancel.sleep,
        )
    except SourceConfigError as exc:
        raise ConfigProblem(str(exc)) from None


def calcom_client(settings: Settings, secrets: SecretStore, cancel: CancelToken) -> CalcomClient:
    try:
        return CalcomClient(
            _require(secrets, secret_names.CALCOM_API_KEY, "Cal.com"),
            base_url=settings.get("calcom.base_url") or None,
            requests_per_minute=settings.get("calcom.requests_per_minute") or None,
            retry=retry_policy(settings),
            sleep=cancel.sleep,
        )
    except SourceConfigError as exc:
        raise ConfigProblem(str(exc)) from None


def stripe_gateway(settings: Settings, secrets: SecretStore, cancel: CancelToken | None = None) -> StripeGateway:
    key = _require(secrets, secret_names.STRIPE_API_KEY, "Stripe")
    if (problem := stripe_key_problem(key)) is not None:  # e.g. a publishable key: say so before any request
        raise ConfigProblem(problem)
    base_url = settings.get("stripe.base_url") or None
    if base_url:
        try:
            base_url = validate_base_url(base_url, "Stripe")
        except SourceConfigError as exc:
            raise ConfigProblem(str(exc)) from None
    per_second = settings.get("stripe.requests_per_second") or (
        rate_limits.budget_per_second("stripe_live" if livemode_of_key(key) else "stripe_test")
    )
    budget = RequestBudget(limit=per_second, per_seconds=1.0, burst=rate_limits.per_second_burst(per_second))
    return StripeGateway(
        key,
        base_url=base_url,
        timeout_s=settings.get("stripe.timeout_seconds"),
        budget=budget,
        read_retry=retry_policy(settings),
        sleep=(cancel or CancelToken()).sleep,
    )


def resolve_pair(cliniko: ClinikoClient, gateway: StripeGateway) -> AccountPair:
    """The state scope for these two accounts; a new pair (another clinic, or Stripe test vs live) starts clean."""
    return _pair("cliniko", *cliniko_identity(cliniko), gateway)


def cliniko_identity(cliniko: ClinikoClient) -> tuple[str, str, str]:
    """(account, region, name) of the Cliniko account the key belongs to."""
    clinic = cliniko.get_account()
    return clinic.id, cliniko.shard, clinic.name


def calcom_identity(calcom: CalcomClient) -> tuple[str, str, str]:
    """(account, region, name) of the Cal.com user the key belongs to; the region is the API's host."""
    user = calcom.get_me()
    return user.id, host_of(calcom.base_url), user.display_name


def resolve_calcom_pair(calcom: CalcomClient, gateway: StripeGateway) -> AccountPair:
    """The state scope of a Cal.com user (the API key's) and the Stripe account, as for Cliniko."""
    return _pair("calcom", *calcom_identity(calcom), gateway)


def _pair(system: str, account: str, region: str, name: str, gateway: StripeGateway) -> AccountPair:
    stripe_account = gateway.account()
    pair, created = AccountPair.get_or_create(
        source_system=system,
        source_account=account,
        source_region=region,
        stripe_account=stripe_account.id,
        stripe_livemode=stripe_account.livemode,
        defaults={"uuid": uuid.uuid4().hex, "source_name": name, "stripe_name": stripe_account.name},
    )
    if not created:
        AccountPair.update(last_used_at=utcnow(), source_name=name, stripe_name=stripe_account.name).where(
            AccountPair.id == pair.id
        ).execute()
    return pair


@dataclass(frozen=True)
class SourceKind:
    """How a sync connects to one source: its key, its client, and the account pair its state belongs to."""

    secret: str
    client: Callable[[Settings, SecretStore, CancelToken], Any]
    resolve_pair: Callable[[Any, StripeGateway], AccountPair]
    identity: Callable[[Any], tuple[str, str, str]]  # (account, region, name), as the pair records them


SOURCES: dict[str, SourceKind] = {
    "cliniko": SourceKind(secret_names.CLINIKO_API_KEY, cliniko_client, resolve_pair, cliniko_identity),
    "calcom": SourceKind(secret_names.CALCOM_API_KEY, calcom_client, resolve_calcom_pair, calcom_identity),
}


# Settings that stream declarations read (through StreamSettings), resolved once per run.
STREAM_SETTING_KEYS = (
    "cliniko.products.price_basis",
    "identity.primary_source",
    "cliniko.invoices.match_days_before",
    "cliniko.invoices.match_days_after",
)


def run_options(settings: Settings, *, trigger: str, dry_run: bool, keep_plan: bool = False) -> RunOptions:
    return RunOptions(
        keep_plan=keep_plan,
        currency=settings.get("currency"),
        stream_values={key: settings.get(key) for key in STREAM_SETTING_KEYS},
        trigger=trigger,
        dry_run=dry_run,
        overlap_s=settings.get("sync.cursor_overlap_seconds"),
        email_match=settings.get("sync.email_match"),
        search_settle_s=settings.get("stripe.search_settle_seconds"),
        workers=settings.get("stripe.workers"),
        policy=retry_policy(settings),
    )


def run_sync(
    paths: AppPaths,
    settings: Settings,
    secrets: SecretStore,
    *,
    streams: Sequence[str] | None = None,
    trigger: str = "cli",
    dry_run: bool = False,
    cancel: CancelToken | None = None,
    progress: Progress | None = None,
) -> list[RunResult]:
    """Run the given streams once, holding the profile's sync lock (raises SyncLocked if another sync runs)."""
    cancel = cancel or CancelToken()
    unknown = [name for name in streams or () if name not in STREAMS]
    if unknown:
        raise ConfigProblem(f"Unknown stream {', '.join(unknown)}; known streams: {', '.join(STREAMS)}")
    switched_off = [name for name in streams or () if (key := STREAMS[name].enabled_by) and not settings.get(key)]
    if switched_off:  # an optional stream writes nothing until a person turns it on, even when asked by name
        raise ConfigProblem(
            f"{', '.join(labels.stream_source(name) for name in switched_off)}: turned off; turn it on first "
            f"(setting {', '.join(str(STREAMS[name].enabled_by) for name in switched_off)})."
        )
    connected = connected_sources(secrets)
    names = dependency_order(STREAMS, list(streams) if streams else enabled_streams(settings, connected))
    with ProfileLock(paths.lock_file):
        queries.close_interrupted_runs()  # under the lock: a run still "running" now is one whose process died
        clients: dict[str, Any] = {}
        reading_ahead: list[ReadAhead[Any]] = []
        try:
            for system in dict.fromkeys(STREAMS[name].source_system for name in names):
                clients[system] = SOURCES[system].client(settings, secrets, cancel)
            gateway = stripe_gateway(settings, secrets, cancel)
            pairs = {system: SOURCES[system].resolve_pair(client, gateway) for system, client in clients.items()}
            if streams:  # a stream asked for alone still needs what it stands on
                check_dependencies(pairs, names, connected)
            reading_ahead = start_reading_ahead(names, pairs, clients, gateway, cancel)
            results = []
            for name in names:
                system = STREAMS[name].source_system
                pair, source = pairs[system], clients[system]
                # Live Stripe is nobody's staging area: a stream's first live sync only plans until approved, and
                # the approved sync carries out the plan that was approved (or refuses it and plans again).
                plan_only = dry_run or needs_approval(pair, name)
                approved, refused = (None, "") if plan_only else approved_plan(pair, name)
                plan_only = plan_only or bool(refused)
                options = run_options(
                    settings, trigger=trigger, dry_run=plan_only, keep_plan=plan_only and needs_approval(pair, name)
                )
                try:
                    result = StreamRun(
                        STREAMS[name], pair, source, gateway, options, cancel=cancel, progress=progress, plan=approved
                    ).run()
                finally:
                    if approved is not None:
                        approved.close()
                if plan_only and not dry_run and result.outcome not in ("failed", "cancelled"):
                    result.outcome = Outcome.NEEDS_APPROVAL
                    result.message = " ".join(filter(None, [refused, APPROVAL_MESSAGE]))
                    SyncRun.update(outcome=result.outcome, message=result.message).where(
                        SyncRun.id == result.run_id
                    ).execute()
                results.append(result)
                if result.outcome == "cancelled" or result.stop_kind in STOPS_EVERY_STREAM:
                    break  # the next streams would meet the same wall; they run on the next sync
            return results
        finally:
            stop_reading_ahead(reading_ahead, settings.get("stripe.timeout_seconds"))
            for client in clients.values():
                client.close()


def start_reading_ahead(
    names: Sequence[str],
    pairs: Mapping[str, AccountPair],
    clients: Mapping[str, Any],
    gateway: StripeGateway,
    cancel: CancelToken,
) -> list[ReadAhead[Any]]:
    """Let each stream whose first, full read is due start it now, on a thread of its own (Stream.read_ahead), so
    that it overlaps the streams before it; what was started, for the run to stop when it ends. A read from a
    cursor, or limited by the mapping's scope, is the stream's own when it runs."""
    started: list[ReadAhead[Any]] = []
    for name in names:
        stream = STREAMS[name]
        if stream.read_ahead is None:
            continue
        pair = pairs[stream.source_system]
        state = StreamState.get_or_none((StreamState.pair == pair) & (StreamState.stream == name))
        mapping, _ = mapping_store.load_for_pair(name, livemode=pair.stripe_livemode)
        if (state is None or not state.cursor) and mapping.scope.kind == "all":
            first_run = state is None or state.last_run_at is None  # as the stream's matcher will judge it
            request = ReadAheadRequest(clients[stream.source_system], gateway, first_run, cancel.raise_if_cancelled)
            started += stream.read_ahead(request)
    return started


def stop_reading_ahead(started: Sequence[ReadAhead[Any]], wait_s: float) -> None:
    """Stop what the run read ahead and nobody took (its stream failed, was cancelled, or did not run): none goes
    on listing (holding what it read, spending the account's allowance) after the run. Each is told first, which
    ends a pause it is in (a rate limit's, a wait to retry), then waited for (at most a request's time, for the one
    in flight; one read to its end is over already)."""
    for ahead in started:
        ahead.stop(0)
    for ahead in started:
        ahead.stop(wait_s)


# The sources whose streams the callers that know no keys (alerts, reconciliation) run.
CONNECTED_SOURCES = ("cliniko",)


def connected_sources(secrets: SecretStore) -> tuple[str, ...]:
    """The sources whose API key is set: a source without one is not connected, and its streams do not run, so a
    clinic with only Cal.com syncs without a Cliniko connection. With no source key at all, Cliniko (whose missing
    key the sync then names, as before)."""
    keyed = tuple(name for name, kind in SOURCES.items() if _has_key(secrets, kind.secret))
    return keyed or CONNECTED_SOURCES


def _has_key(secrets: SecretStore, name: str) -> bool:
    """Whether the key is set. A headless run with its Stripe key in the environment has its sources' keys there
    too: the keyring is not opened to look for others. No usable keyring counts as not set (a missing key a sync
    needs is said when it is read)."""
    from clinicsync.secrets import SecretStoreError, environment_only

    reader = environment_only(secrets)
    if reader is not None:
        return bool(reader(name))
    try:
        return bool(secrets.get(name))
    except SecretStoreError:
        return False


def sources_with_keys(keys: Mapping[str, str]) -> tuple[str, ...]:
    """The sources whose key is among `keys` (credentials read for a run); Cliniko when none is."""
    found = tuple(name for name, kind in SOURCES.items() if keys.get(kind.secret))
    return found or CONNECTED_SOURCES


@dataclass(frozen=True)
class NotRunning:
    """Why a stream does not run in this setup: its source is not connected (`source`, the one to connect), or the
    setting that switches it on is off (`setting`; `given_at_start` when that came with the process, so the window
    cannot turn it on). labels.not_running_words says it in words."""

    source: str = ""
    setting: str = ""
    given_at_start: bool = False


def why_not_running(settings: Settings, name: str, connected: Sequence[str] = CONNECTED_SOURCES) -> NotRunning | None:
    """None when the stream runs with these sources connected; else what it waits for. A stream is off when its
    source is not connected, or when its switch (`streams.<name>.enabled`, or the setting an optional stream names
    in `enabled_by`) is off; a stream without such a setting is on whenever its source is connected."""
    from clinicsync.store.settings import SPECS_BY_KEY

    stream = STREAMS[name]
    if stream.source_system not in connected:
        return NotRunning(source=stream.source_system)
    key = stream.enabled_by or f"streams.{name}.enabled"
    if key in SPECS_BY_KEY and not settings.get(key):  # get: a damaged value refuses, as using it would
        return NotRunning(setting=key, given_at_start=settings.lookup(key).source == "environment")
    return None


def enabled_streams(settings: Settings, connected: Sequence[str] = CONNECTED_SOURCES) -> list[str]:
    """Every stream that runs with these sources connected (`why_not_running` says why the others do not)."""
    return [name for name in STREAMS if why_not_running(settings, name, connected) is None]


def check_dependencies(
    pairs: dict[str, AccountPair], names: Sequence[str], connected: Sequence[str] = CONNECTED_SOURCES
) -> None:
    """Refuse a stream whose dependencies never completed for these accounts (their links are not there yet). A
    dependency on a source that is not connected counts as met: a Cal.com-only clinic has no patients to wait for."""
    missing = []
    for name in names:
        for dependency in STREAMS[name].depends_on:
            system = STREAMS[dependency].source_system
            if dependency in names or system not in connected:
                continue
            pair = pairs.get(system)
            if pair is not None:
                same_accounts = SyncRun.pair == pair
            else:  # a run of one source's streams (the schedule polls each source apart): its pairs, same Stripe
                stripe_accounts = {other.stripe_account for other in pairs.values()}
                same_accounts = SyncRun.pair.in_(
                    AccountPair.select(AccountPair.id).where(
                        (AccountPair.source_system == system) & AccountPair.stripe_account.in_(stripe_accounts)
                    )
                )
            completed = SyncRun.select().where(
                same_accounts
                & (SyncRun.stream == dependency)
                & (SyncRun.dry_run == False)  # noqa: E712 (peewee expression)
                & SyncRun.outcome.in_(("ok", "attention"))
            )
            if not completed.exists():
                missing.append((name, dependency))
    if missing:
        raise ConfigProblem(
            "; ".join(f"{name} needs {dependency} to have synced at least once" for name, dependency in missing)
            + ". Sync every stream once first (run the sync without choosing a stream), then this one alone."
        )


APPROVAL_MESSAGE = (
    "This is the first sync to a LIVE Stripe account, so nothing was written: review the plan "
    "(`clinicsync plan show`) and approve it (`clinicsync plan approve`), then sync again."
)


def approved_plan(pair: AccountPair, stream: str) -> tuple[plans.ApprovedPlan | None, str]:
    """(the approved plan this stream's sync carries out, or None; why an approved plan was refused, or "").
    A refused plan loses its approval: the run makes a new plan for a person to approve."""
    row = plans.to_carry_out(pair, stream)
    if row is None or not plans.carried_out_by_plan(STREAMS[stream]):
        return None, ""
    mapping, _ = mapping_store.load_for_pair(stream, livemode=pair.stripe_livemode)
    why = plans.refusal(row, pair, mapping.version)
    if why is None:
        try:
            return plans.open_plan(row), ""
        except (OSError, sqlite3.Error, KeyError, ValueError) as exc:
            log.warning("the approved plan %s could not be read: %s", row.id, exc)
            why = "the plan you approved could not be read"
    plans.refuse(row, why)
    return None, f"Nothing was written: {why}. A new plan was made instead."


def needs_approval(pair: AccountPair, stream: str) -> bool:
    """True until a person has approved a plan for this stream on this live-mode account pair."""
    if not pair.stripe_livemode:
        return False
    approved = SyncPlan.select().where(
        (SyncPlan.pair == pair) & (SyncPlan.stream == stream) & SyncPlan.approved_at.is_null(False)
    )
    return not approved.exists()


def describe(result: RunResult) -> dict[str, Any]:
    return {"run": result.run_id, "stream": result.stream, "outcome": result.outcome, **result.counts}


def failure_of(exc: BaseException) -> tuple[str, str] | None:
    """(kind, message) for an error that stops a sync before or between streams; None if it is a bug.

    kinds: config (something to set), auth (a key rejected or lacking a permission), locked (another sync
    runs), unreachable (a service could not be reached), error (a service answered with something unusable),
    storage (ClinicSync's own database could not be written or read: a full disk, a damaged file),
    cancelled (a person stopped it before the streams ran).
    """
    from clinicsync.profile_lock import SyncLocked
    from clinicsync.secrets import SecretStoreError
    from clinicsync.sources import errors
    from clinicsync.store.db import storage_problem
    from clinicsync.store.settings import SettingError
    from clinicsync.stripe_gateway import StripeFailure

    if (storage := storage_problem(exc)) is not None:
        return "storage", storage
    if isinstance(exc, Cancelled):  # a person pressed Cancel, Pause or Quit while ClinicSync was connecting
        return "cancelled", "The sync was cancelled; nothing queued is lost."
    if isinstance(exc, SyncLocked):
        return "locked", str(exc)
    if isinstance(exc, ConfigProblem | errors.SourceConfigError | SettingError | SecretStoreError):
        return "config", str(exc)
    if isinstance(exc, errors.SourceAuthError | errors.SourcePermissionError):
        return "auth", str(exc)
    if isinstance(exc, errors.SourceUnavailable | errors.SourceRateLimited):
        return "unreachable", str(exc)
    if isinstance(exc, errors.SourceError):
        return "error", str(exc)
    if isinstance(exc, StripeFailure):
        if exc.kind in ("auth", "permission"):
            return "auth", exc.message
        return ("unreachable" if exc.kind == "transient" else "error"), exc.message
    return None
