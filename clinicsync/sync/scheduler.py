"""Background syncs: one APScheduler job per scheduled stream and one for reconciliation, rebuilt from the
settings, with the time read from a Clock so tests move it instead of waiting.

The scheduler never runs a sync itself: when jobs come due it asks the runner (`SyncRunner.request`), which
decides (paused, already running, a live plan waiting for approval) and records every refusal as a skipped run.

Late and missed runs: every job has coalesce=True, max_instances=1 and misfire_grace_time=None, and its first
run time comes from the last recorded run (SyncRun rows). A laptop that slept three hours, or an app closed
overnight, runs each stream once on wake or start — never once per missed interval, never not at all. Sleep is
noticed without Qt (clock.WakeDetector), so the headless service catches up the same way; after a wake the
scheduler waits a few seconds for the network to come back before it catches up.

Streams of one source run in one job, in dependency order: when one comes due, the others due within half an
interval join it, so their polls stay together and never overlap (the runner runs one job at a time anyway).
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Protocol

from apscheduler.executors.base import BaseExecutor, run_job
from apscheduler.job import Job as ApsJob
from apscheduler.schedulers.base import STATE_RUNNING, STATE_STOPPED, BaseScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from clinicsync import rate_limits
from clinicsync.store.settings import MIN_INTERVAL_SECONDS, WEEKDAYS, Settings
from clinicsync.streams import STREAMS, dependency_order
from clinicsync.sync.clock import Clock, WakeDetector, aware_utc
from clinicsync.sync.history import SCHEDULE, awaiting_approval, last_ran_at
from clinicsync.sync.reconcile_hook import RECONCILE
from clinicsync.sync.runner import APPROVAL_MESSAGE, BUSY_MESSAGE, Job, JobOutcome
from clinicsync.sync.service import CONNECTED_SOURCES, enabled_streams, sources_with_keys

log = logging.getLogger(__name__)

UTC_ZONE: tzinfo = UTC
TICK_S = 1.0  # the longest the loop sleeps: service requests and settings changes are noticed this fast
WAKE_SETTLE_S = 15.0  # after a wake, let the network come back before catching up (Vorta #1815)
RECONCILE_RETRY = timedelta(minutes=5)  # a reconciliation refused because a sync was running is asked again
APPROVAL_RECHECK_S = 30.0

# What connecting costs on every poll, in requests to each service: each source's account pair is resolved on every
# sync (with Stripe too, once per source polled). Each stream declares what its own idle poll adds
# (Stream.idle_poll); tests/integration/test_scheduler.py measures both against the sandbox.
CONNECT_REQUESTS = {"cliniko": 1, "calcom": 1, "stripe": 1}
# Idle polling may use at most this share of a service's request budget: the rest is for syncs that find
# changes, the clinic's other integrations, and people using the dashboards.
POLL_SHARE = 0.25


def poll_cost(service: str, streams: Sequence[str]) -> int:
    """Requests one idle poll of `streams` sends to `service`: connecting, plus what each stream declares."""
    sources = {STREAMS[name].source_system for name in streams}
    connects = len(sources) if service == "stripe" else int(service in sources)
    declared = sum(STREAMS[name].idle_poll.get(service, 0) for name in streams)
    return CONNECT_REQUESTS.get(service, 1) * connects + declared


def minimum_interval(streams: Sequence[str]) -> float:
    """The shortest poll interval (seconds) at which polling these streams stays within POLL_SHARE of every
    service's budget (each source's, and Stripe's in live mode, the tighter one)."""
    needed = 0.0
    for source in {STREAMS[name].source_system for name in streams}:
        needed = max(needed, poll_cost(source, streams) / (POLL_SHARE * rate_limits.budget_per_second(source)))
    if streams:
        stripe = poll_cost("stripe", streams) / (POLL_SHARE * rate_limits.budget_per_second("stripe_live"))
        needed = max(needed, stripe)
    return needed


def shortest_interval(streams: Sequence[str]) -> int:
    """The shortest interval (whole seconds) a person may choose for polling these streams: the setting's own
    minimum, or longer when the services' request budgets need it. The Settings tab offers no less."""
    return max(MIN_INTERVAL_SECONDS, math.ceil(minimum_interval(streams)))


def scheduled_streams(settings: Settings, connected: Sequence[str] = CONNECTED_SOURCES) -> list[str]:
    """The streams polled on schedule, in dependency order: enabled, of a connected source, schedule on."""
    streams = [
        name
        for name in enabled_streams(settings, connected)
        if STREAMS[name].source_system in connected and _scheduled(settings, name)
    ]
    return dependency_order(STREAMS, streams)


@dataclass(frozen=True)
class ScheduleConfig:
    """Everything the jobs are built from; a change to any of it rebuilds them."""

    interval_s: int  # every stream's, unless it has its own
    streams: tuple[str, ...]  # scheduled, in dependency order
    reconcile: str  # daily, weekly, off
    reconcile_time: str  # "HH:MM"
    reconcile_day: str  # monday … sunday
    paused: bool
    own_intervals: tuple[tuple[str, int], ...] = ()  # streams polled at their own interval (seconds)

    def interval_of(self, stream: str) -> int:
        return dict(self.own_intervals).get(stream, self.interval_s)

    @classmethod
    def from_settings(cls, settings: Settings, connected: Sequence[str] = CONNECTED_SOURCES) -> ScheduleConfig:
        streams = scheduled_streams(settings, connected)
        wanted = settings.get("schedule.interval_seconds")
        floor = shortest_interval(streams)  # every interval at least this: then all of them together are safe too
        own = tuple((name, max(seconds, floor)) for name in streams if (seconds := _own_interval(settings, name)))
        return cls(
            own_intervals=own,
            interval_s=max(wanted, floor),
            streams=tuple(streams),
            reconcile=settings.get("schedule.reconcile.frequency"),
            reconcile_time=settings.get("schedule.reconcile.time"),
            reconcile_day=settings.get("schedule.reconcile.day"),
            paused=bool(settings.get("sync.paused")),
        )

    def jobs_part(self) -> tuple[Any, ...]:
        """What the jobs themselves depend on (pausing does not rebuild them)."""
        return (
            self.interval_s,
            self.own_intervals,
            self.streams,
            self.reconcile,
            self.reconcile_time,
            self.reconcile_day,
        )


def _own_interval(settings: Settings, stream: str) -> int:
    """The stream's own interval (0: it follows schedule.interval_seconds)."""
    from clinicsync.store.settings import SPECS_BY_KEY

    key = f"schedule.{stream}.interval_seconds"
    return int(settings.get(key)) if key in SPECS_BY_KEY else 0


def _scheduled(settings: Settings, stream: str) -> bool:
    from clinicsync.store.settings import SPECS_BY_KEY

    key = f"schedule.{stream}.enabled"
    return key not in SPECS_BY_KEY or bool(settings.get(key))


def reconcile_trigger(config: ScheduleConfig, zone: tzinfo) -> CronTrigger | None:
    """Daily at the chosen time, or weekly on the chosen day, on this computer's clock."""
    if config.reconcile == "off":
        return None
    hour, minute = (int(part) for part in config.reconcile_time.split(":"))
    day = "*" if config.reconcile == "daily" else WEEKDAYS[WEEKDAYS.index(config.reconcile_day)][:3]
    return CronTrigger(day_of_week=day, hour=hour, minute=minute, timezone=zone)


# --- APScheduler, with the clock's time -------------------------------------------------------------------
class InlineExecutor(BaseExecutor):
    """Runs a job's function on the scheduler's own thread. Every job here only asks the runner for a run (which
    takes microseconds); running it in place keeps a tick's order deterministic and its max_instances honest."""

    def _do_submit_job(self, job: ApsJob, run_times: list[datetime]) -> None:
        try:
            events = run_job(job, job._jobstore_alias, run_times, self._logger.name)
        except BaseException:
            self._run_job_error(job.id, *sys.exc_info()[1:])
        else:
            self._run_job_success(job.id, events)


class ClockedScheduler(BaseScheduler):
    """APScheduler 3's job store, triggers, executors and job options, with "now" from a Clock and the waiting
    left to the caller's loop. APScheduler's own loop reads the system time and waits on its own event, which a
    test cannot move; `run_due` is that loop's one step, taking the time from the clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.woken = threading.Event()
        super().__init__(
            timezone=UTC_ZONE,
            executors={"default": InlineExecutor()},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )

    def shutdown(self, wait: bool = True) -> None:
        super().shutdown(wait)
        self.wakeup()

    def wakeup(self) -> None:
        self.woken.set()

    def _process_jobs(self) -> float | None:  # APScheduler's own entry point, should anything call it
        self.run_due()
        return None

    def run_due(self) -> datetime | None:
        """Run every job due by the clock's time — once, however many of its run times were missed — and move it
        to its next run time. Returns the earliest next run time (None: nothing scheduled)."""
        if self.state != STATE_RUNNING:
            return None
        now = self.clock.now()
        for job in self.get_jobs():
            if job.next_run_time is None or job.next_run_time > now:
                continue
            run_times = [job.next_run_time]  # coalesce=True: one run stands for every missed one
            # Moved before it runs, so the job's function may move it again (hold it while its run is in flight).
            following = job.trigger.get_next_fire_time(None, now + timedelta(microseconds=1))
            if following is None:
                self.remove_job(job.id)
            else:
                job.modify(next_run_time=following)
            try:
                self._lookup_executor(job.executor).submit_job(job, run_times)
            except Exception:
                log.exception("scheduled job %s could not run", job.id)
        return self.next_time()

    def next_time(self) -> datetime | None:
        times = [job.next_run_time for job in self.get_jobs() if job.next_run_time is not None]
        return min(times) if times else None


# --- the sync scheduler -------------------------------------------------------------------------------------
class RunRequester(Protocol):
    """The runner, as the scheduler sees it (clinicsync.sync.runner.SyncRunner)."""

    @property
    def busy(self) -> bool: ...

    def request(
        self,
        *,
        trigger: str,
        credentials: Mapping[str, str],
        streams: Sequence[str] | None = None,
        when_busy: str = "skip",
    ) -> tuple[Job | None, str]: ...


Credentials = Callable[[], Mapping[str, str]]


@dataclass
class _Batch:
    streams: set[str] = field(default_factory=set)
    reconcile: bool = False


class SyncScheduler:
    """The jobs of one profile, rebuilt from its settings, asking `runner` for runs as they come due.

    Call `tick()` from one thread (the service's main loop, or the window's timer): it notices sleep and settings
    changes, runs what is due and returns how long it may wait before the next tick. `job_finished` may be
    called from any thread (the runner's listener); its effect is applied on the next tick.
    """

    def __init__(
        self,
        runner: RunRequester,
        settings: Settings,
        clock: Clock,
        *,
        credentials: Credentials,
        zone: tzinfo | None = None,
    ) -> None:
        # APScheduler logs every job it runs at INFO: twice a minute per stream. This module logs what matters.
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        self.runner = runner
        self.settings = settings
        self.clock = clock
        self.credentials = credentials
        self.zone = zone or _local_zone()
        self.aps = ClockedScheduler(clock)
        self.wake = WakeDetector(clock)
        self.config: ScheduleConfig | None = None
        self._connected: tuple[str, ...] = CONNECTED_SOURCES  # the sources whose key was there at the last read
        self._batch = _Batch()
        self._in_flight: dict[int, tuple[str, ...]] = {}  # runner job id → the streams it runs for the schedule
        self._held: set[str] = set()  # streams whose first live sync waits for approval
        self._finished: list[JobOutcome] = []
        self._finished_lock = threading.Lock()
        self._last_done: dict[str, datetime] = {}  # stream → when its last run finished (by this clock)
        self._settle_until: datetime | None = None
        self._reconcile_job: int | None = None  # the runner job of the reconciliation in flight
        self._reconcile_owed = False  # due, but a sync was running: asked for as soon as it ends
        self._approval_checked = clock.monotonic()
        # What was asked of the runner, newest last: (at, trigger, streams, "queued" or why not). For tests and
        # support; bounded, as a service runs for months.
        self.fired: deque[tuple[datetime, str, tuple[str, ...], str]] = deque(maxlen=1000)

    # --- life -------------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.aps.start(paused=True)
        with contextlib.suppress(Exception):  # no keys yet: the first request says so in the history
            self._note_connected(self.credentials())
        self._apply(ScheduleConfig.from_settings(self.settings, self._connected))

    def shutdown(self) -> None:
        if self.aps.state != STATE_STOPPED:
            self.aps.shutdown(wait=False)

    def job_finished(self, outcome: JobOutcome) -> None:
        """Runner listener hook (any thread): the run's end re-arms its streams on the next tick."""
        with self._finished_lock:
            self._finished.append(outcome)
        self.aps.wakeup()

    # --- one step -----------------------------------------------------------------------------------------
    def tick(self) -> float:
        now = self.clock.now()
        away = self.wake.check()
        if away is not None:
            self.woke(away)
        elif self.wake.went_back_s:
            self._clock_went_back()
        self._apply(ScheduleConfig.from_settings(self.settings, self._connected))
        self._take_finished()
        if self._held and self.clock.monotonic() - self._approval_checked >= APPROVAL_RECHECK_S:
            self._recheck_approvals()
        if self._settle_until is not None and now < self._settle_until:
            return min(TICK_S, (self._settle_until - now).total_seconds())
        self._settle_until = None
        following = self.aps.run_due()
        self._flush()
        if following is None:
            return TICK_S
        return max(0.0, min(TICK_S, (following - self.clock.now()).total_seconds()))

    def woke(self, away_s: float) -> None:
        """The machine was asleep (or this process frozen) for about `away_s`: catch up once, shortly."""
        log.info("the computer was away for about %s; catching up once in %.0f s", _duration(away_s), WAKE_SETTLE_S)
        self._settle_until = self.clock.now() + timedelta(seconds=WAKE_SETTLE_S)

    def _clock_went_back(self) -> None:
        """Next run times are wall-clock times: after the clock is turned back, none may lie further ahead than
        its own interval (or the reconciliation's next slot), or polling would stop for as long."""
        log.info("the clock was turned back by %s; moving the next checks to match", _duration(self.wake.went_back_s))
        now = self.clock.now()
        config = self.config
        if config is None:
            return
        for job in self.aps.get_jobs():
            if job.next_run_time is None:
                continue
            if job.id == RECONCILE:
                slot = job.trigger.get_next_fire_time(None, now)
                if slot is not None and slot < job.next_run_time:
                    self._rearm(RECONCILE, slot)
                continue
            latest = now + timedelta(seconds=config.interval_of(job.id))
            if job.next_run_time > latest:
                self._rearm(job.id, latest)

    # --- what the window and `status` show ------------------------------------------------------------------
    def next_runs(self) -> dict[str, datetime | None]:
        """Job id (a stream, or "reconcile") → its next run (None: running now, or waiting for approval)."""
        return {job.id: job.next_run_time for job in self.aps.get_jobs()}

    def in_flight(self) -> tuple[str, ...]:
        return tuple(stream for streams in self._in_flight.values() for stream in streams)

    # --- building jobs from the settings ------------------------------------------------------------------------
    def _apply(self, config: ScheduleConfig) -> None:
        previous, self.config = self.config, config
        if previous is None or previous.jobs_part() != config.jobs_part():
            self._build(config, rebuilt=previous is not None)
        if config.paused and self.aps.state == STATE_RUNNING:
            self.aps.pause()
            log.info("syncing is paused: the schedule waits")
        elif not config.paused and self.aps.state != STATE_RUNNING:
            self.aps.resume()  # whatever came due meanwhile runs once now

    def _build(self, config: ScheduleConfig, *, rebuilt: bool) -> None:
        self.aps.remove_all_jobs()
        now = self.clock.now()
        in_flight = set(self.in_flight())
        for stream in config.streams:
            held = stream in in_flight or stream in self._held
            seconds = config.interval_of(stream)
            interval = timedelta(seconds=seconds)
            self.aps.add_job(
                self._stream_due,
                trigger=IntervalTrigger(seconds=seconds, start_date=now, timezone=UTC_ZONE),
                args=(stream,),
                id=stream,
                name=f"sync {stream}",
                next_run_time=None if held else max(now, self._last_done_at(stream) + interval),
            )
        trigger = reconcile_trigger(config, self.zone)
        if trigger is not None:
            self.aps.add_job(
                self._reconcile_due,
                trigger=trigger,
                id=RECONCILE,
                name="reconcile",
                next_run_time=self._first_reconcile(trigger, now),
            )
        log.info(
            "%s the schedule: %s every %d s%s; reconciliation %s",
            "rebuilt" if rebuilt else "built",
            ", ".join(config.streams) or "no streams",
            config.interval_s,
            "".join(f" ({name} every {seconds} s)" for name, seconds in config.own_intervals),
            "off" if trigger is None else f"{config.reconcile} at {config.reconcile_time}",
        )

    def _last_done_at(self, stream: str) -> datetime:
        """When the stream last ran: this scheduler's own memory, else the history (a restart)."""
        if stream in self._last_done:
            return self._last_done[stream]
        stored = last_ran_at(stream)
        return aware_utc(stored) if stored is not None else datetime.min.replace(tzinfo=UTC_ZONE)

    def _first_reconcile(self, trigger: CronTrigger, now: datetime) -> datetime | None:
        """The first slot after the last reconciliation asked for: in the past (missed while closed or asleep)
        means once, now. Never asked for: the next slot."""
        from clinicsync.outcomes import Outcome
        from clinicsync.store.models import SyncRun
        from clinicsync.sync.reconcile_hook import NOT_AVAILABLE

        # A run counts as done if it ran, or was answered "not available yet"; one skipped because a sync was
        # running (or paused) is still owed.
        done = (SyncRun.outcome != Outcome.SKIPPED) | (SyncRun.message == NOT_AVAILABLE)
        last = (
            SyncRun.select(SyncRun.started_at)
            .where((SyncRun.stream == RECONCILE) & done)
            .order_by(SyncRun.id.desc())
            .first()
        )
        since = aware_utc(last.started_at) if last is not None else now
        slot = trigger.get_next_fire_time(None, since + timedelta(microseconds=1))
        return None if slot is None else max(now, slot)

    # --- jobs coming due ----------------------------------------------------------------------------------
    def _stream_due(self, stream: str) -> None:
        self._batch.streams.add(stream)

    def _reconcile_due(self) -> None:
        self._batch.reconcile = True

    def _flush(self) -> None:
        batch, self._batch = self._batch, _Batch()
        if batch.streams:
            self._ask_streams(batch.streams)
        if batch.reconcile:
            self._ask_reconcile()

    def _ask_streams(self, due: set[str]) -> None:
        config = self.config
        assert config is not None
        now = self.clock.now()
        soon = now + timedelta(seconds=min(config.interval_of(name) for name in due) / 2)
        sources = {STREAMS[name].source_system for name in due}
        # Streams of the same source due within half an interval join in: one run, in dependency order.
        for job in self.aps.get_jobs():
            joins = job.id in STREAMS and STREAMS[job.id].source_system in sources
            if joins and job.next_run_time is not None and job.next_run_time <= soon:
                due.add(job.id)
        streams = tuple(name for name in config.streams if name in due)
        job, why_not = self._request(SCHEDULE, streams)
        if job is not None:
            self._in_flight[job.id] = streams
            for name in streams:
                self._hold(name)  # no second run of a stream while its run is in flight
            return
        if why_not == APPROVAL_MESSAGE:
            self._held.update(streams)
            for name in streams:
                self._hold(name)
            return
        for name in streams:  # refused (paused a moment ago, another sync running): the next poll comes as usual
            self._rearm(name, now + timedelta(seconds=config.interval_of(name)))

    def _ask_reconcile(self) -> None:
        if self._in_flight:  # a poll was just queued: the reconciliation goes right after it, not against it
            self._owe_reconcile()
            return
        job, why_not = self._request(RECONCILE, ())
        if job is not None:
            self._reconcile_job = job.id
        elif why_not == BUSY_MESSAGE:  # never dropped: asked again when the running sync ends
            self._owe_reconcile()

    def _note_connected(self, credentials: Mapping[str, str]) -> None:
        """Which sources have a key: their streams are scheduled (a Cal.com key added later joins on the next tick
        after a request reads the keys)."""
        self._connected = sources_with_keys(credentials)

    def _owe_reconcile(self) -> None:
        self._reconcile_owed = True
        self._rearm(RECONCILE, self.clock.now() + RECONCILE_RETRY)  # at the latest

    def _request(self, trigger: str, streams: tuple[str, ...]) -> tuple[Job | None, str]:
        try:
            credentials = self.credentials()
        except Exception as exc:  # a locked keyring: say so in the history, try again on the next poll
            from clinicsync.sync.history import record_skipped

            why = f"Not started: the keys could not be read ({exc})."
            record_skipped(streams or (RECONCILE,), trigger, why)
            self.fired.append((self.clock.now(), trigger, streams, why))
            return None, why
        self._note_connected(credentials)
        if streams:  # a source whose key is gone since the jobs were built: not asked for (rebuilt on the next tick)
            streams = tuple(name for name in streams if STREAMS[name].source_system in self._connected)
            if not streams:
                return None, "no source of these streams is connected"
        job, why_not = self.runner.request(
            trigger=trigger, credentials=credentials, streams=list(streams) or None, when_busy="skip"
        )
        self.fired.append((self.clock.now(), trigger, streams, "queued" if job is not None else why_not))
        if job is None:
            log.info("scheduled %s of %s not started: %s", trigger, ", ".join(streams) or "reconcile", why_not)
        return job, why_not

    # --- runs ending ----------------------------------------------------------------------------------------
    def _take_finished(self) -> None:
        with self._finished_lock:
            finished, self._finished = self._finished, []
        if not finished or self.config is None:
            return
        now = self.clock.now()
        config = self.config
        for outcome in finished:
            if outcome.job.id == self._reconcile_job:
                self._reconcile_job = None
                if outcome.failure_kind == "locked":  # another process was syncing: still owed
                    self._owe_reconcile()
            streams = self._in_flight.pop(outcome.job.id, ())
            ran = {result.stream for result in outcome.results if result.stream in STREAMS} | set(streams)
            for stream in ran:
                self._last_done[stream] = now
                if stream not in self._held:
                    self._rearm(stream, now + timedelta(seconds=config.interval_of(stream)))
        if self._reconcile_owed and not self._in_flight and not self.runner.busy:
            self._reconcile_owed = False
            self._rearm(RECONCILE, now)

    def _recheck_approvals(self) -> None:
        self._approval_checked = self.clock.monotonic()
        still = set(awaiting_approval(sorted(self._held)))
        for stream in self._held - still:
            log.info("the plan for %s was approved: syncing it on schedule again", stream)
            self._rearm(stream, self.clock.now())
        self._held = still

    def _hold(self, job_id: str) -> None:
        if self.aps.get_job(job_id) is not None:
            self.aps.modify_job(job_id, next_run_time=None)

    def _rearm(self, job_id: str, at: datetime) -> None:
        if self.aps.get_job(job_id) is not None:
            self.aps.modify_job(job_id, next_run_time=at)


def _local_zone() -> tzinfo:
    from tzlocal import get_localzone  # APScheduler's own dependency: this computer's IANA zone

    return get_localzone()


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds / 3600:.1f} hours"
