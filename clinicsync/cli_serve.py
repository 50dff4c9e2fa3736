"""`clinicsync serve`: the scheduler, runner and history of the desktop app, without a window.

Keys come from the keyring or the environment (read on this, the main, thread); logs go to the usual log file.
SIGTERM or SIGINT (Ctrl+C) stops it cleanly: the write being sent finishes, queued writes stay queued for the
next start. One scheduler per profile: while a window or another `serve` runs the schedule, this one refuses
(exit 4) and says who does.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clinicsync.store.settings import Settings
    from clinicsync.sync.clock import FileClock

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 120.0  # a write in flight has its own timeout (stripe.timeout_seconds); this is the backstop
# Tests of `serve` move its clock through this file (clinicsync.sync.clock.FileClock); honoured only while Stripe
# is the sandbox on this computer, so a real account's schedule can never run on simulated time.
SANDBOX_CLOCK_VAR = "CLINICSYNC_SANDBOX_CLOCK_FILE"


def add_parser(sub: Any) -> None:
    sub.add_parser(
        "serve",
        help="sync on schedule without a window, until stopped (Ctrl+C, SIGTERM, or the service manager)",
        description="Run ClinicSync's schedule headless: the same syncs, history and alerts as the desktop app.",
    )


def run(args: argparse.Namespace, out: Callable[[str], None], err: Callable[[str], None]) -> int:
    from clinicsync.app import bootstrap
    from clinicsync.cli import EXIT_CONFIG, EXIT_LOCKED, EXIT_OK
    from clinicsync.secrets import SYNC_SECRETS, missing_for_sync
    from clinicsync.sync.clock import FileClock
    from clinicsync.sync.host import SchedulerHost
    from clinicsync.sync.instance import SERVE, SchedulerLock, SchedulerTaken
    from clinicsync.sync.runner import read_credentials

    ctx = bootstrap()
    missing = missing_for_sync(read_credentials(ctx.secrets, SYNC_SECRETS))
    if missing:
        err(
            "ClinicSync cannot sync without " + " and ".join(missing) + " (a Cal.com key, calcom_api_key, serves "
            "instead of Cliniko's for a clinic on Cal.com alone). Store them with `clinicsync config set-secret "
            "<name>` (the keyring), or set CLINICSYNC_CLINIKO_API_KEY (or CLINICSYNC_CALCOM_API_KEY) and "
            "CLINICSYNC_STRIPE_API_KEY in the service's environment."
        )
        return EXIT_CONFIG
    try:
        clock = sandbox_clock(os.environ, ctx.settings, err)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        err(f"The sandbox clock file in {SANDBOX_CLOCK_VAR} cannot be read: {exc}")
        return EXIT_CONFIG
    lock = SchedulerLock(ctx.paths)
    try:
        lock.acquire(SERVE)
    except SchedulerTaken as taken:
        err(str(taken))
        return EXIT_LOCKED
    stop = threading.Event()
    host = SchedulerHost(
        ctx.paths, ctx.settings, credentials=lambda: read_credentials(ctx.secrets, SYNC_SECRETS), clock=clock
    )

    def handle(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping after the write in flight", signum)
        stop.set()
        host.wake()

    if isinstance(clock, FileClock):
        clock.watch(host.busy)
    previous = {sig: signal.signal(sig, handle) for sig in _stop_signals()}
    try:
        host.start()
        config = host.scheduler.config
        every = f"every {config.interval_s} s" if config is not None else "on schedule"
        out(f"ClinicSync is syncing {every} for {ctx.paths.data_dir} (log: {ctx.paths.log_file}). Stop: Ctrl+C.")
        log.info("clinicsync serve started")
        host.run_forever(stop)
    finally:
        joined = host.stop(STOP_TIMEOUT_S)
        lock.release()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("clinicsync serve stopped (worker joined: %s)", joined)
    out("ClinicSync stopped; anything not yet sent waits for the next start.")
    return EXIT_OK


def sandbox_clock(env: Mapping[str, str], settings: Settings, err: Callable[[str], None]) -> FileClock | None:
    """The simulated clock a test gave (SANDBOX_CLOCK_VAR), or None: the real one. Ignored, with a warning,
    unless Stripe's address is on this computer (the sandbox)."""
    path = env.get(SANDBOX_CLOCK_VAR)
    if not path:
        return None
    from urllib.parse import urlsplit

    from clinicsync.sources.urls import is_loopback_host
    from clinicsync.sync.clock import FileClock

    if not is_loopback_host(urlsplit(settings.get("stripe.base_url") or "").hostname):
        err(f"{SANDBOX_CLOCK_VAR} is ignored: it is for tests against the sandbox only. Syncing on the real clock.")
        return None
    log.warning("running on the simulated clock in %s (a sandbox test)", path)
    return FileClock(Path(path))


def _stop_signals() -> list[int]:
    signals = [signal.SIGINT, signal.SIGTERM]
    if hasattr(signal, "SIGBREAK"):  # Ctrl+Break in a Windows console
        signals.append(signal.SIGBREAK)
    return signals
