"""`clinicsync serve` in its own process against the sandbox: it syncs at start and on schedule, a request written
by another process (the window's Sync now) makes it sync, a second `serve` or a window holding the schedule makes
it refuse, and SIGTERM stops it after the write in flight with the outbox consistent.

These wait for things to happen in another process (polling the database or the sandbox, with a deadline); they
never sleep to prove an order.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clinicsync.sync.webhook import send_test
from tests.integration.test_cli import FILE_KEYRING, TEST_KEYRING_FILE
from tests.reliability.helpers import live_customers, log_tail, mirror_report, outbox_status
from tests.support import admin, profile_env

ONLY_PATIENTS = {
    "CLINICSYNC_STREAMS_CLINIKO_PRODUCTS_ENABLED": "false",
    "CLINICSYNC_STREAMS_CLINIKO_INVOICES_ENABLED": "false",
}
SERVE = [sys.executable, "-m", "clinicsync", "serve"]
REPO = Path(__file__).resolve().parents[2]  # the test keyring backend is imported from tests/


def rows(home: Path, sql: str, *args: object) -> list[tuple]:
    path = home / "data" / "clinicsync.sqlite3"
    if not path.exists():
        return []
    with sqlite3.connect(path, timeout=10) as con:
        try:
            return con.execute(sql, args).fetchall()
        except sqlite3.OperationalError:  # the service has not created its tables yet
            return []


def wait_until(check: Callable[[], object], timeout: float, what: str, home: Path) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"{what} did not happen within {timeout:.0f} s. Log:\n{log_tail(home, 40)}")


class Service:
    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.output = workdir / "serve.out"
        self.errors = workdir / "serve.err"
        with self.output.open("wb") as out, self.errors.open("wb") as err:
            self.process = subprocess.Popen(SERVE, env=env, stdout=out, stderr=err)

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
                pytest.fail("serve did not stop within a minute of SIGTERM")
        return self.process.returncode


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Service]]:
    started: list[Service] = []

    def start(env: dict[str, str]) -> Service:
        started.append(Service(env, tmp_path))
        return started[-1]

    yield start
    for service in started:
        if service.process.poll() is None:
            service.process.kill()
            service.process.wait(10)


def run_cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clinicsync", *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def test_serve_syncs_on_schedule_answers_a_window_request_refuses_a_twin_and_stops_on_sigterm(
    make_sandbox, services, tmp_path: Path
) -> None:
    sandbox = make_sandbox(profile="clean", patients=10)
    home = tmp_path / "profile"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    webhook_secret = "sandbox-webhook-secret-not-real-0003"
    env = profile_env(
        home,
        sandbox.env(),
        CLINICSYNC_SCHEDULE_INTERVAL_SECONDS="15",
        CLINICSYNC_CALCOM_WEBHOOK_ENABLED="true",
        CLINICSYNC_CALCOM_WEBHOOK_PORT=str(port),
        CLINICSYNC_CALCOM_WEBHOOK_SECRET=webhook_secret,
        **ONLY_PATIENTS,
    )
    service = services(env)

    # At start: the profile never synced, so the first run is due at once.
    wait_until(lambda: len(live_customers(sandbox.stripe_url)) == 10, 60, "the first sync", home)
    # Receiving Cal.com's notices is turned on: the service listens, and checks the signature.
    assert send_test("127.0.0.1", port, webhook_secret) == (True, "ClinicSync received the signed test notice.")
    assert not send_test("127.0.0.1", port, "another-secret")[0]

    # One scheduler per profile: a second `serve` refuses and says who runs the schedule.
    twin = run_cli(env, "serve")
    assert twin.returncode == 4, twin.stderr
    assert "`clinicsync serve` is already running for this profile" in twin.stderr

    # On schedule: an edit in Cliniko reaches Stripe at the next poll.
    patient = admin(sandbox.cliniko_url, "edit", count=1)["ids"][0]

    def edited() -> bool:
        return any(
            (c.get("metadata") or {}).get("cliniko_patient_id") == patient and c.get("address", {}).get("city")
            for c in live_customers(sandbox.stripe_url)
        ) and bool(rows(home, "SELECT id FROM sync_run WHERE trigger = 'schedule' AND updated = 1"))

    wait_until(edited, 45, "the scheduled poll picking up the edit", home)

    # The window's Sync now, written by another process, reaches the service through the database.
    ask = run_cli(env, "status")  # any other process may read; the request itself:
    assert ask.returncode == 0, ask.stderr
    assert "run by `clinicsync serve`" in ask.stdout
    sent = subprocess.run(
        [sys.executable, "-c", "from clinicsync.app import bootstrap; from clinicsync.sync import attach; "
         "bootstrap(); print(attach.sync_now(origin='test window'))"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    request_id = int(sent.stdout.strip())
    done = "SELECT status, result, job_id FROM service_request WHERE id = ? AND status = 'done'"
    answered = wait_until(lambda: rows(home, done, request_id), 10, "the service carrying out the request", home)
    assert answered[0][2] is not None and "cliniko.patients: ok" in answered[0][1]
    assert (
        rows(home, "SELECT COUNT(*) FROM sync_run WHERE trigger = 'manual' AND stream = 'cliniko.patients'")[0][0] == 1
    )

    assert service.stop() == 0, service.errors.read_text()
    assert "ClinicSync stopped" in service.output.read_text()
    assert outbox_status(home).get("pending", 0) == 0
    assert rows(home, "SELECT state FROM scheduler_state WHERE id = 1") == [("stopped",)]


def test_sigterm_mid_sync_stops_after_the_write_in_flight_and_nothing_is_lost(
    make_sandbox, services, tmp_path: Path
) -> None:
    sandbox = make_sandbox(profile="clean", patients=300)
    admin(sandbox.stripe_url, "config", latency_ms=25)  # slow enough to stop it half-way
    home = tmp_path / "profile"
    env = profile_env(home, sandbox.env(), CLINICSYNC_STRIPE_WORKERS="2", **ONLY_PATIENTS)
    service = services(env)
    wait_until(lambda: len(live_customers(sandbox.stripe_url)) >= 30, 60, "the sync getting under way", home)

    assert service.stop() == 0, service.errors.read_text()
    stopped_at = len(live_customers(sandbox.stripe_url))
    assert stopped_at < 300, "it stopped part-way, as asked, instead of finishing the whole sync first"
    status = outbox_status(home)
    assert status.get("done", 0) <= stopped_at, "no write marked done that Stripe does not have"
    runs = rows(home, "SELECT outcome FROM sync_run WHERE stream = 'cliniko.patients'")
    assert runs and runs[-1][0] == "cancelled", runs

    # The next start carries on: every patient exactly once, nothing duplicated.
    admin(sandbox.stripe_url, "config", latency_ms=0)
    finished = run_cli(env, "sync", "--once", timeout=120)
    assert finished.returncode == 0, finished.stderr
    report = mirror_report(sandbox.cliniko_url, sandbox.stripe_url)
    assert report.ok, report.describe()


def test_serve_refuses_while_the_window_runs_the_schedule(make_sandbox, tmp_path: Path) -> None:
    sandbox = make_sandbox(profile="clean", patients=2)
    home = tmp_path / "profile"
    env = profile_env(home, sandbox.env(), **ONLY_PATIENTS)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from clinicsync.app import bootstrap; "
         "from clinicsync.sync.instance import WINDOW, SchedulerLock; ctx = bootstrap(); "
         "lock = SchedulerLock(ctx.paths); lock.acquire(WINDOW); print('held', flush=True); sys.stdin.read()"],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        refused = run_cli(env, "serve")
        assert refused.returncode == 4
        assert "ClinicSync's window is open for this profile and already syncs on schedule" in refused.stderr
        assert f"pid {holder.pid}" in refused.stderr
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(30)
    assert rows(home, "SELECT COUNT(*) FROM sync_run")[0][0] == 0, "the refused service synced nothing"


def test_serve_without_keys_says_how_to_give_them(tmp_path: Path) -> None:
    env = profile_env(tmp_path / "profile", {"CLINICSYNC_CLINIKO_API_KEY": "sandbox-only-au1"})
    env |= {"PYTHON_KEYRING_BACKEND": FILE_KEYRING, TEST_KEYRING_FILE: str(tmp_path / "empty-keyring.json")}
    result = run_cli(env, "serve")
    assert result.returncode == 2, result.stderr
    assert "stripe_api_key" in result.stderr and "CLINICSYNC_STRIPE_API_KEY" in result.stderr


if os.name == "nt":  # pragma: no cover - signals differ; the service manager ends the process there
    pytestmark = pytest.mark.skip("SIGTERM is a POSIX signal")


def test_status_lists_active_alerts_first(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from clinicsync.app import bootstrap
    from clinicsync.sync import alerts

    env = profile_env(tmp_path / "profile", {})
    ctx = bootstrap(env)
    alerts.report_reconciliation(ctx.settings, 2, "2 customers are missing in Stripe.", datetime.now(UTC))
    shown = run_cli(env, "status")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "Needs your attention:"
    assert lines[1].startswith("  ! Stripe and Cliniko disagree (since ")
    assert lines[2] == "    2 customers are missing in Stripe."
    assert "Schedule: not running" in shown.stdout
