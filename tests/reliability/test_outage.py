"""Outage (issue 8): Stripe stops answering in the middle of a sync while Cliniko keeps changing.

The scheduler service runs on a ManualClock that stands in for the minutes (nothing here waits on the wall clock):
each poll moves it 60 s, ticks, and waits for the runner to finish. The Stripe sandbox's fault plan lets the
first requests of the run through (`skip`) and then answers 503 to everything, so the outage starts after some
writes went out. While it lasts, patients change again, some of them ones whose change is already queued.

Then: nothing is lost (Stripe mirrors Cliniko exactly, no duplicate), the queue replays in order per record (no
older version of a patient reaches Stripe after a newer one), and `alerts.outage_minutes` (2 here) decides the
alert: exactly one when the outage outlasts it, none when it does not.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl

import pytest

from clinicsync.app import bootstrap
from clinicsync.secrets import SYNC_SECRETS
from clinicsync.store.models import Alert
from clinicsync.sync import alerts
from clinicsync.sync.clock import ManualClock
from clinicsync.sync.host import SchedulerHost
from clinicsync.sync.runner import read_credentials
from tests.reliability.helpers import mirror_report, outbox_status
from tests.support import admin, profile_env, stats

POLL_S = 60  # the default sync interval
OUTAGE_MINUTES = 2
PATIENTS = 30
WRITES_BEFORE_THE_OUTAGE = 4
_CUSTOMER_UPDATE = re.compile(r"^/v1/customers/(cus_[A-Za-z0-9]+)$")


class Service:
    """`clinicsync serve` for one profile, on a clock the test moves."""

    def __init__(self, env: dict[str, str]) -> None:
        self.clock = ManualClock()
        self.ctx = bootstrap(env)
        self.host = SchedulerHost(
            self.ctx.paths,
            self.ctx.settings,
            credentials=lambda: read_credentials(self.ctx.secrets, SYNC_SECRETS),
            clock=self.clock,
        )
        self.host.start()
        self.notices: list[alerts.AlertView] = []

    def poll(self, seconds: float = POLL_S) -> None:
        """A minute passes: the scheduled sync runs to its end, and whoever shows alerts takes the due ones."""
        if seconds:
            self.clock.advance(seconds)
        self.host.tick()
        assert self.host.wait_idle(60), "the runner did not finish"
        self.notices += alerts.take_due_notices(self.clock.now())


@pytest.fixture
def service(make_sandbox, tmp_path: Path) -> Iterator[tuple[object, Service]]:
    sandbox = make_sandbox(profile="clean", patients=PATIENTS, seed=8)
    env = profile_env(
        tmp_path / "profile",
        sandbox.env(),
        # The patients stream alone: the outage is set to start after its reads and a known number of its writes.
        CLINICSYNC_STREAMS_CLINIKO_PRODUCTS_ENABLED="false",
        CLINICSYNC_STREAMS_CLINIKO_INVOICES_ENABLED="false",
        CLINICSYNC_ALERTS_OUTAGE_MINUTES=str(OUTAGE_MINUTES),
        CLINICSYNC_STRIPE_WORKERS="1",  # one write at a time, so the outage starts after a known number of them
    )
    made = Service(env)
    yield sandbox, made
    made.host.stop(30)


def _stripe_requests(sandbox) -> list[dict[str, object]]:
    return admin(sandbox.stripe_url, "request_log")["requests"]


def _last_names_sent(requests: list[dict[str, object]], customer_of: dict[str, str]) -> dict[str, list[str]]:
    """Per patient, the names of the customer updates Stripe carried out, in the order it received them."""
    sent: dict[str, list[str]] = {}
    for request in requests:
        match = _CUSTOMER_UPDATE.match(str(request["path"]))
        if request["method"] != "POST" or match is None:
            continue
        name = dict(parse_qsl(str(request["body"]), keep_blank_values=True)).get("name")
        if name is not None and match.group(1) in customer_of:
            sent.setdefault(customer_of[match.group(1)], []).append(name)
    return sent


@pytest.mark.parametrize(
    ("failed_polls", "alerted"),
    [(2, False), (4, True)],  # down for 1 minute after the first failure (under 2), or for 3 (over 2)
    ids=["outage-shorter-than-the-threshold", "outage-longer-than-the-threshold"],
)
def test_stripe_down_mid_sync_while_cliniko_changes_loses_nothing_and_alerts_once_if_it_lasts(
    service, failed_polls: int, alerted: bool
) -> None:
    sandbox, svc = service
    svc.poll(0)  # never synced: the first run is due now
    assert len(mirror_report(sandbox.cliniko_url, sandbox.stripe_url).missing) == 0

    admin(sandbox.stripe_url, "request_log", enabled=True)
    svc.poll()  # nothing changed: only the reads every sync makes
    reads = len(_stripe_requests(sandbox))
    assert reads >= 1

    patients = sorted(p["id"] for p in admin(sandbox.cliniko_url, "dump")["patients"])
    first, second = patients[:12], patients[6:18]  # six patients change twice, six once each time
    for n, pid in enumerate(first):
        admin(sandbox.cliniko_url, "edit", ids=[pid], fields={"last_name": f"First{n:02d}"})
    admin(sandbox.stripe_url, "request_log", enabled=True)
    admin(sandbox.stripe_url, "faults", spec=f"before:503=1,skip={reads + WRITES_BEFORE_THE_OUTAGE}")
    svc.poll()  # Stripe stops answering after the run's reads and four updates
    updated = [r for r in _stripe_requests(sandbox) if r["method"] == "POST"]
    assert len(updated) == WRITES_BEFORE_THE_OUTAGE, "the outage began mid-sync"
    assert outbox_status(svc.ctx.paths.home)["pending"] >= 1, "the changes Stripe did not take wait in the queue"

    for n, pid in enumerate(second):  # the clinic works on while Stripe is down
        admin(sandbox.cliniko_url, "edit", ids=[pid], fields={"last_name": f"Second{n:02d}"})
    for _ in range(failed_polls - 1):
        svc.poll()
    raised = Alert.select().where((Alert.kind == "unreachable") & Alert.raised_at.is_null(False)).count()
    assert raised == (1 if alerted else 0)
    assert len(svc.notices) == (1 if alerted else 0), [n.title for n in svc.notices]
    if alerted:
        assert svc.notices[0].title == "Can't reach Stripe" and "Nothing is lost" in svc.notices[0].message

    admin(sandbox.stripe_url, "faults", spec="")  # Stripe answers again
    svc.poll()
    svc.poll()  # a record skipped while its queued change waited for confirmation is read again
    report = mirror_report(sandbox.cliniko_url, sandbox.stripe_url)
    print(
        f"outage figures: {PATIENTS} patients, {len(set(first) | set(second))} changed ({len(first) + len(second)} "
        f"edits), {failed_polls} failed polls ({(failed_polls - 1) * POLL_S} s after the first), "
        f"503s answered: {stats(sandbox.stripe_url)['faulted_total']}, alert raised: {alerted}, "
        f"duplicates: {len(report.duplicated)}, missing: {len(report.missing)}, stale: {len(report.stale)}"
    )
    assert report.ok, report.describe()
    assert report.customers == PATIENTS, "no duplicate, nothing missing"
    assert outbox_status(svc.ctx.paths.home).get("pending", 0) == 0
    assert alerts.active_alerts() == [], "the outage alert (if any) cleared once Stripe answered"
    assert len(svc.notices) == (1 if alerted else 0), "one notice for the whole outage, never a second"

    customer_of = {
        c["id"]: c["metadata"]["cliniko_patient_id"]
        for c in admin(sandbox.stripe_url, "dump")["data"]
        if not c["deleted"]
    }
    sent = _last_names_sent(_stripe_requests(sandbox), customer_of)
    for pid in set(first) | set(second):
        names = [name.rsplit(" ", 1)[-1] for name in sent.get(pid, [])]
        assert names, f"patient {pid}'s change never reached Stripe"
        latest = "Second" if pid in second else "First"
        assert names[-1].startswith(latest), (pid, names)
        versions = [name[:-2] for name in names]
        assert versions == sorted(versions, key=["First", "Second"].index), f"out of order for {pid}: {names}"
