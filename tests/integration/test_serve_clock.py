"""`clinicsync serve` in its own process on a simulated clock (clinicsync.sync.clock.FileClock): a three-hour sleep
gives one catch-up run per stream, and a Stripe outage in the middle loses nothing and alerts once, only when it
outlasts `alerts.outage_minutes`.

The test moves the service's time through a small file and waits (with a deadline) until the service reports it
got there with nothing left running; nothing here waits on the wall clock to prove an order. What the service did
is read from the database, the sandbox and `clinicsync status`.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
import stripe

from clinicsync import cli
from clinicsync.cli_serve import SANDBOX_CLOCK_VAR
from clinicsync.sync.scheduler import WAKE_SETTLE_S
from tests.integration.test_serve import ONLY_PATIENTS, Service, rows
from tests.reliability.helpers import log_tail, mirror_report, outbox_status
from tests.support import admin, profile_env

PATIENTS, PRODUCTS, INVOICES = "cliniko.patients", "cliniko.products", "cliniko.invoices"
POLL_S = 15  # the shortest interval allowed: fewer simulated seconds for the service to step through
OUTAGE_MINUTES = 1
QUIET = {  # the poll interval, and no full comparison coming due in the simulated hours
    "CLINICSYNC_SCHEDULE_INTERVAL_SECONDS": str(POLL_S),
    "CLINICSYNC_SCHEDULE_RECONCILE_FREQUENCY": "off",
}

if os.name == "nt":  # pragma: no cover - the service is stopped with SIGTERM
    pytestmark = pytest.mark.skip("SIGTERM is a POSIX signal")


class SimulatedClock:
    """The test's end of the service's FileClock: `advance` (awake) and `sleep_for` (suspended) move its time and
    return once the service has caught up and finished whatever came due."""

    def __init__(self, path: Path, home: Path) -> None:
        self.path, self.home = path, home
        self.start = datetime.now(UTC).replace(microsecond=0)
        self.awake = self.asleep = 0.0
        self.seq = 0
        self._write()

    def _write(self) -> None:
        self.seq += 1
        data = {"start": self.start.isoformat(), "awake": self.awake, "asleep": self.asleep, "seq": self.seq}
        partial = self.path.with_name(self.path.name + ".part")
        partial.write_text(json.dumps(data), encoding="utf-8")
        os.replace(partial, self.path)

    def reached(self) -> bool:
        try:
            seen = json.loads(self.path.with_name(self.path.name + ".reached").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return seen == {"seq": self.seq, "awake": self.awake, "asleep": self.asleep}

    def settle(self, what: str = "the service settling", timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.reached():
            if time.monotonic() > deadline:
                pytest.fail(f"{what} did not happen within {timeout:.0f} s. Log:\n{log_tail(self.home, 40)}")
            time.sleep(0.02)  # polling a file the service writes; the order comes from the clock, not this

    def advance(self, seconds: float) -> None:
        self.awake += seconds
        self._write()
        self.settle(f"the service reaching +{self.awake:.0f} s")

    def sleep_for(self, seconds: float) -> None:
        self.asleep += seconds
        self._write()
        self.settle(f"the service seeing a {seconds:.0f} s sleep")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., tuple[Service, SimulatedClock, Path]]]:
    started: list[Service] = []

    def start(sandbox: object, **settings: str) -> tuple[Service, SimulatedClock, Path]:
        home = tmp_path / "profile"
        clock = SimulatedClock(tmp_path / "clock.json", home)
        env = profile_env(home, sandbox.env(), **{SANDBOX_CLOCK_VAR: str(clock.path), **QUIET, **settings})  # type: ignore[attr-defined]
        started.append(Service(env, tmp_path))
        clock.settle("the first sync at start")  # never synced: due at once
        return started[-1], clock, home

    yield start
    for service in started:
        if service.process.poll() is None:
            service.process.kill()
            service.process.wait(10)


def scheduled_checks(home: Path) -> dict[str, int]:
    """Per stream, the scheduled polls the history counts (idle polls fold into one row, each still a check)."""
    sql = "SELECT stream, SUM(checks) FROM sync_run WHERE trigger = 'schedule' GROUP BY stream"
    return dict(rows(home, sql))


def test_serve_catches_up_once_per_stream_after_a_three_hour_sleep(make_sandbox, serve) -> None:
    from clinicsync.sync.scheduler import shortest_interval

    sandbox = make_sandbox(profile="clean", patients=5)
    poll_s = shortest_interval([PATIENTS, PRODUCTS, INVOICES])  # the shortest the budget allows for these three
    service, clock, home = serve(sandbox, CLINICSYNC_SCHEDULE_INTERVAL_SECONDS=str(poll_s))  # the defaults' streams
    assert scheduled_checks(home) == {PATIENTS: 1, PRODUCTS: 1, INVOICES: 1}
    clock.advance(poll_s)
    assert scheduled_checks(home) == {PATIENTS: 2, PRODUCTS: 2, INVOICES: 2}, "one poll per interval"

    clock.sleep_for(3 * 3600)  # the lid is closed: the wall clock jumps, the monotonic clock does not
    clock.advance(WAKE_SETTLE_S - 5)
    assert scheduled_checks(home) == {PATIENTS: 2, PRODUCTS: 2, INVOICES: 2}, "the network gets a moment after waking"
    clock.advance(5)
    assert scheduled_checks(home) == {PATIENTS: 3, PRODUCTS: 3, INVOICES: 3}, "one catch-up run per stream"
    clock.advance(poll_s - 1)
    assert scheduled_checks(home) == {PATIENTS: 3, PRODUCTS: 3, INVOICES: 3}, "and no second one"
    clock.advance(1)
    expected = {PATIENTS: 4, PRODUCTS: 4, INVOICES: 4}
    assert scheduled_checks(home) == expected, "then on the interval again, counted from the wake"
    assert rows(home, "SELECT COUNT(*) FROM sync_run WHERE outcome = 'skipped'") == [(0,)]
    assert "the computer was away for about 3.0 hours" in log_tail(home, 200)
    assert service.stop() == 0, service.errors.read_text()


def _updates_by_name(sandbox: object) -> Counter[str]:
    """How many customer updates Stripe carried out with each name (faulted requests never reach it)."""
    sent: Counter[str] = Counter()
    for request in admin(sandbox.stripe_url, "request_log")["requests"]:  # type: ignore[attr-defined]
        if request["method"] == "POST" and str(request["path"]).startswith("/v1/customers/cus_"):
            name = dict(parse_qsl(str(request["body"]), keep_blank_values=True)).get("name")
            if name is not None:
                sent[name] += 1
    return sent


def _unreachable_alerts(home: Path) -> list[tuple[str, str | None]]:
    return rows(home, "SELECT state, raised_at FROM alert WHERE key = 'unreachable:stripe' ORDER BY id")


def _failed_polls(home: Path) -> int:
    return rows(home, "SELECT COUNT(*) FROM sync_run WHERE trigger = 'schedule' AND outcome = 'failed'")[0][0]


def test_serve_survives_stripe_outages_loses_nothing_and_alerts_once_only_past_the_threshold(
    make_sandbox, serve, monkeypatch, capsys
) -> None:
    sandbox = make_sandbox(profile="clean", patients=20, seed=3)
    service, clock, home = serve(
        sandbox,
        CLINICSYNC_ALERTS_OUTAGE_MINUTES=str(OUTAGE_MINUTES),
        CLINICSYNC_STRIPE_WORKERS="1",  # one write at a time, so the outage starts after a known number of them
        **ONLY_PATIENTS,
    )
    assert mirror_report(sandbox.cliniko_url, sandbox.stripe_url).ok
    admin(sandbox.stripe_url, "request_log", enabled=True)
    clock.advance(POLL_S)  # nothing changed: only the reads every poll makes
    reads = len(admin(sandbox.stripe_url, "request_log")["requests"])
    patients = sorted(p["id"] for p in admin(sandbox.cliniko_url, "dump")["patients"])
    edited: dict[str, str] = {}  # patient → the last name it has now

    def edit(ids: list[str], tag: str) -> None:
        for n, pid in enumerate(ids):
            edited[pid] = f"{tag}{n:02d}"
            admin(sandbox.cliniko_url, "edit", ids=[pid], fields={"last_name": edited[pid]})

    # A short outage, starting mid-sync: three updates get through, then Stripe answers 503 to everything.
    edit(patients[:6], "Short")
    admin(sandbox.stripe_url, "request_log", enabled=True)
    admin(sandbox.stripe_url, "faults", spec=f"before:503=1,skip={reads + 3}")
    clock.advance(POLL_S)
    assert sum(_updates_by_name(sandbox).values()) == 3, "the outage began mid-sync"
    assert outbox_status(home)["pending"] >= 1, "the changes Stripe did not take wait in the queue"
    assert _unreachable_alerts(home) == [("pending", None)], "seen, not yet worth anyone's time"
    edit(patients[6:9], "During")  # the clinic works on
    clock.advance(POLL_S)  # down for 15 s since the first failure: under the threshold
    assert _failed_polls(home) == 2
    admin(sandbox.stripe_url, "faults", spec="")
    clock.advance(POLL_S)
    assert _unreachable_alerts(home) == [], "over before anyone needed to hear of it: no alert, not even a cleared one"

    # A long outage: down from the start of a poll, for over a minute after the first failure.
    edit(patients[9:12], "Long")
    admin(sandbox.stripe_url, "faults", spec="before:503=1")
    for _ in range(4):
        clock.advance(POLL_S)
    assert _failed_polls(home) == 6
    assert _unreachable_alerts(home) == [("pending", None)], "45 s: still under the threshold"
    clock.advance(POLL_S)
    assert _failed_polls(home) == 7
    assert [state for state, _ in _unreachable_alerts(home)] == ["active"], "raised once the threshold passed"
    for name, value in service.env.items():  # `clinicsync status` for this profile, in this process (quicker)
        if name.startswith("CLINICSYNC_"):
            monkeypatch.setenv(name, value)
    assert cli.main(["status"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("Needs your attention:\n  ! Can't reach Stripe (since "), shown
    clock.advance(POLL_S)  # still down: the same alert, not a second one
    assert _failed_polls(home) == 8
    assert [state for state, _ in _unreachable_alerts(home)] == ["active"]

    admin(sandbox.stripe_url, "faults", spec="")
    clock.advance(POLL_S)
    clock.advance(POLL_S)  # a record skipped while its queued change waited for confirmation is read again
    alerts = _unreachable_alerts(home)
    assert len(alerts) == 1 and alerts[0][0] == "cleared" and alerts[0][1] is not None, alerts

    # Nothing lost, nothing twice: every change reached Stripe exactly once, and each patient is one customer.
    sent = _updates_by_name(sandbox)
    sdk = stripe.StripeClient(sandbox.stripe_key, base_addresses={"api": sandbox.stripe_url}, max_network_retries=0)
    customers = list(sdk.v1.customers.list({"limit": 100}).auto_paging_iter())
    by_patient = Counter(c.metadata["cliniko_patient_id"] for c in customers)
    assert len(customers) == 20 and set(by_patient.values()) == {1}, by_patient
    names = {c.metadata["cliniko_patient_id"]: c.name for c in customers}
    for pid, last_name in edited.items():
        assert names[pid].endswith(f" {last_name}"), (pid, names[pid])
        assert sent[names[pid]] == 1, f"{names[pid]} reached Stripe {sent[names[pid]]} times"
    report = mirror_report(sandbox.cliniko_url, sandbox.stripe_url)
    assert report.ok, report.describe()

    # SIGTERM: a clean stop, and no write left half-sent.
    assert service.stop() == 0, service.errors.read_text()
    assert set(outbox_status(home)) <= {"done", "superseded"}, outbox_status(home)
    assert rows(home, "SELECT state FROM scheduler_state WHERE id = 1") == [("stopped",)]
