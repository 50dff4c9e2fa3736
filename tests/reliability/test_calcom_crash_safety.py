"""Crash safety across Cliniko's patients and the Cal.com streams: SIGKILL at named points (counted per write)
and at random moments, with bookings (paid ones with their payments), reschedules and prices changing between
runs. The end state is exact: every priced event type one product with its price, every person one customer with
both references, every paid booking's payment naming its latest booking, no duplicate. Reproduce with
CLINICSYNC_TEST_SEED=<printed seed>."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

from tests.integration.test_calcom_event_types import check_exact
from tests.integration.test_calcom_payments import check_cross_referenced, load_payments
from tests.integration.test_calcom_people import check_one_customer_per_person, start
from tests.support import admin

COMMAND = [sys.executable, "-m", "clinicsync", "sync", "--once"]


def test_kills_at_every_crash_point_leave_one_customer_per_person_and_an_exact_catalogue(make_sandbox, env_for):
    seed = int(os.environ.get("CLINICSYNC_TEST_SEED") or random.SystemRandom().randrange(1, 10**6))
    print(f"Cal.com crash safety: seed {seed} (CLINICSYNC_TEST_SEED={seed} reproduces it)")
    rng = random.Random(seed)
    sandbox = start(make_sandbox)
    env = env_for(sandbox, CLINICSYNC_STRIPE_WORKERS="2")
    emails = sorted({a["email"] for b in admin(sandbox.calcom_url, "dump")["bookings"] for a in b["attendees"]})
    kills = 0
    paid: list[str] = []  # uids of paid bookings made during the test, rescheduled in later rounds
    points = [f"after_stripe_ok:{n}" for n in (1, 3, 7, 20, 45)] + ["after_link_saved:2", "after_outbox_insert:1"]
    for number, point in enumerate(points + ["random"] * 4):
        # Between runs people book (some again, some for the first time, paying), one moves a paid booking, and a
        # price changes.
        added = admin(sandbox.calcom_url, "add", event_type_id=4001, email=rng.choice(emails).upper())
        load_payments(sandbox, added["payment_intents"])
        if paid:
            moved = paid.pop(rng.randrange(len(paid)))
            paid.append(admin(sandbox.calcom_url, "reschedule", uid=moved)["new_uid"])
        paid.extend(added["uids"])
        admin(sandbox.calcom_url, "add", event_type_id=4003, email=f"new.person.{number}@example.org", name="New One")
        admin(sandbox.calcom_url, "price", id=rng.choice((4001, 4002, 4008)), price=rng.choice((5000, 7500, 9900)))
        if point == "random":
            process = subprocess.Popen(COMMAND, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.1, 0.8))  # a random moment of the sync, not an order to prove
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
            process.wait(timeout=60)
        else:
            ran = subprocess.run(COMMAND, env={**env, "CLINICSYNC_CRASH_AT": point}, capture_output=True, timeout=120)
            kills += ran.returncode == -signal.SIGKILL
    assert kills >= 6, f"only {kills} kills"
    for _ in range(2):
        final = subprocess.run(COMMAND, env=env, capture_output=True, text=True, timeout=120)
        assert final.returncode == 0, final.stdout + final.stderr
    check_exact(sandbox)
    check_one_customer_per_person(sandbox)
    assert check_cross_referenced(sandbox) >= 20
