"""Soak: every stream that exists (Cliniko's patients and a few dozen products; Cal.com's event types and the
people who booked, a third of them Cliniko patients booking with their email in other letter case), together,
under faults on every service (10% 5xx, 5% 429, 2% resets after the server executed, on Stripe and Cal.com; 1%
timeouts), with two installations syncing the same accounts at once and SIGKILLs at random points, while staff
keep editing (patients, product names and prices, archiving; bookings made, cancelled and rescheduled, event type
prices changed, an event type hidden and shown again). The end state is exact: every record once in Stripe with its
latest values (each product, of Cliniko or Cal.com, with one active price, its default; each person one customer,
the patient's when they are one), 0 duplicate customers, products or prices, nothing lost, and each installation's
links and history account for every record of every stream.

Sized for CI by default; `CLINICSYNC_SOAK_SCALE=10` makes it a benchmark-sized run. The sandbox runs in its own
process; the syncs are `clinicsync sync --once` subprocesses. Reproduce with CLINICSYNC_TEST_SEED=<printed seed>.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from clinicsync.matchkey import normalized
from clinicsync.streams.calcom_bookings import attendee_ref
from tests.reliability.helpers import (
    SandboxProcess,
    all_patients,
    calcom_live_event_types,
    calcom_people,
    calcom_people_report,
    cliniko_products,
    db_path,
    event_type_report,
    events_by_record,
    is_live,
    mirror_report,
    product_report,
    start_sandbox_process,
    sync_command,
)
from tests.support import admin, profile_env, stats

FAULTS = "before:5xx=0.10,before:429=0.05,before:timeout=0.01,timeout_s=0.3"
STRIPE_FAULTS = FAULTS + ",after:reset=0.02"
CALCOM_FAULTS = STRIPE_FAULTS  # ClinicSync only reads Cal.com: a reset after it answered loses the answer
KILLS = 5
ROUNDS = 8
SPARE_ROUNDS = 4  # more rounds while a kill came too late (its process had finished): the soak has its 5 kills
STREAMS = ("cliniko.patients", "cliniko.products", "calcom.event_types", "calcom.bookings")  # in running order
PRODUCTS = 36
BOOKINGS = 40
PRICED = (4001, 4002, 4008)  # the clinic's own paid event types (4008 in another currency)
PRICES = (6500, 8000, 9900, 12000)  # few, so that a price goes back to an earlier amount now and then


def _seed() -> int:
    seed = int(os.environ.get("CLINICSYNC_TEST_SEED") or random.SystemRandom().randrange(1, 1_000_000))
    print(f"soak: seed {seed} (CLINICSYNC_TEST_SEED={seed} reproduces it)")
    return seed


def _start(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(sync_command(), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _linked(home: Path, stream: str) -> set[str]:
    with sqlite3.connect(db_path(home), timeout=10) as con:
        rows = con.execute("SELECT source_id FROM record_link WHERE stream = ? AND stripe_id IS NOT NULL", (stream,))
        return {row[0] for row in rows.fetchall()}


def _runs_since(home: Path, after: int) -> set[str]:
    """The streams this installation started a run of after run `after` (none while its database is not there)."""
    try:
        with sqlite3.connect(f"file:{db_path(home)}?mode=ro", uri=True, timeout=10) as con:
            rows = con.execute("SELECT DISTINCT stream FROM sync_run WHERE id > ?", (after,)).fetchall()
    except sqlite3.Error:
        return set()
    return {row[0] for row in rows}


def _last_run(home: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db_path(home)}?mode=ro", uri=True, timeout=10) as con:
            return int(con.execute("SELECT COALESCE(MAX(id), 0) FROM sync_run").fetchone()[0])
    except sqlite3.Error:
        return 0


def _kill_during(process: subprocess.Popen[bytes], home: Path, stream: str, after: int, rng: random.Random) -> bool:
    """SIGKILL `process` at a random moment once its run of `stream` has started (a random point of the sync, not
    an order to prove: a kill that comes after the process finished is not counted)."""
    while process.poll() is None and stream not in _runs_since(home, after):
        time.sleep(0.02)
    time.sleep(rng.uniform(0, 0.15))
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGKILL)
    return True


def _what_became_of(home: Path, stream: str, source_ids: set[str]) -> dict[str, list[Any]]:
    """The open reviews, unfinished outbox rows and last history rows of these records, for a failure message."""
    found: dict[str, list[Any]] = {}
    with sqlite3.connect(db_path(home), timeout=10) as con:
        for source_id in sorted(source_ids)[:5]:
            key = (stream, source_id)
            found[source_id] = [
                *con.execute("SELECT reason, status, detail FROM review_item WHERE stream=? AND source_id=?", key),
                *con.execute(
                    "SELECT op, status, last_error FROM outbox_entry WHERE stream=? AND source_id=? "
                    "AND status != 'done'",
                    key,
                ),
                *con.execute(
                    "SELECT action, message FROM sync_event WHERE stream=? AND source_id=? ORDER BY id DESC LIMIT 3",
                    key,
                ),
            ]
    return found


def _live_products(sandbox_env: dict[str, str]) -> list[str]:
    return sorted(pid for pid, p in cliniko_products(sandbox_env).items() if not p.get("archived_at"))


def _load_calcom_app_customers(sandbox: SandboxProcess) -> set[str]:
    """The customers Cal.com's own Stripe app made on the clinic's account, there before ClinicSync was connected
    (each person's is adopted, not duplicated); their emails, casefolded."""
    from clinicsync.sandbox import calcom_seed

    made = [
        {"email": c["email"], "name": c["name"]}
        for c in admin(sandbox.calcom_url, "dump")["customers"]
        if c["sandbox"]["account"] == calcom_seed.CLINIC_ACCOUNT
    ]
    assert made, "the Cal.com seed has customers made by its Stripe app"
    admin(sandbox.stripe_url, "seed", customers=made)
    return {normalized(c["email"]) for c in made}


def _live_patients(sandbox: SandboxProcess) -> dict[str, dict[str, Any]]:
    return {pid: p for pid, p in all_patients(sandbox.cliniko_url).items() if is_live(p)}


def _edit_calcom(sandbox: SandboxProcess, rng: random.Random, scale: int, number: int) -> None:
    """People book (again, in other letter case; Cliniko patients for the first time, some with an email staff
    just changed; new people), cancel and reschedule; an event type's price changes."""
    from clinicsync.sandbox.calcom_seed import other_case

    dump = admin(sandbox.calcom_url, "dump")
    known = sorted({a["email"] for b in dump["bookings"] for a in b["attendees"]})
    patients = sorted(p["email"] for p in _live_patients(sandbox).values() if p["email"])
    for n in range(rng.randint(2, 4) * scale):
        email = rng.choice((other_case(rng.choice(known), rng), other_case(rng.choice(patients), rng), None))
        email = email or f"soak.person.{number}.{n}@example.org"
        admin(sandbox.calcom_url, "add", event_type_id=rng.choice((*PRICED, 4003)), email=email)
    live = sorted(
        b["uid"]
        for b in dump["bookings"]
        if b["status"] == "ACCEPTED" and not any(a.get("seat") for a in b["attendees"])
    )
    picked = rng.sample(live, min(len(live), 2 * scale))
    admin(sandbox.calcom_url, "cancel", uids=picked[: len(picked) // 2])
    for uid in picked[len(picked) // 2 :]:
        admin(sandbox.calcom_url, "reschedule", uid=uid)
    admin(sandbox.calcom_url, "price", id=rng.choice(PRICED), price=rng.choice(PRICES))


def test_soak_every_stream_faults_two_installations_and_kills_end_exact(tmp_path: Path) -> None:
    seed = _seed()
    rng = random.Random(seed)
    scale = int(os.environ.get("CLINICSYNC_SOAK_SCALE", "1"))
    patients = 150 * scale
    sandbox = start_sandbox_process(
        tmp_path / "sandbox",
        patients=patients,
        products=PRODUCTS * scale,
        seed=seed % 10_000 + 1,
        calcom_bookings=BOOKINGS * scale,
    )
    services = {"stripe": sandbox.stripe_url, "cliniko": sandbox.cliniko_url, "calcom": sandbox.calcom_url}
    try:
        _load_calcom_app_customers(sandbox)
        admin(sandbox.stripe_url, "faults", spec=f"{STRIPE_FAULTS},seed={seed}")
        admin(sandbox.cliniko_url, "faults", spec=f"{FAULTS},seed={seed + 1}")
        admin(sandbox.calcom_url, "faults", spec=f"{CALCOM_FAULTS},seed={seed + 2}")
        envs = [profile_env(tmp_path / name, sandbox.env, CLINICSYNC_RETRY_MAX_ATTEMPTS="4") for name in ("a", "b")]
        kills = 0
        killed_in: list[str] = []
        for round_number in range(ROUNDS + SPARE_ROUNDS):
            if round_number >= ROUNDS and kills >= KILLS:
                break
            homes = [Path(env["CLINICSYNC_HOME"]) for env in envs]
            last_runs = [_last_run(home) for home in homes]
            running = [_start(env) for env in envs]
            if kills < KILLS:
                victim, stream = rng.randrange(2), rng.choice(STREAMS)
                if _kill_during(running[victim], homes[victim], stream, last_runs[victim], rng):
                    kills += 1
                    killed_in.append(stream)
            for process in running:
                process.wait(timeout=300)
            # Staff edit patients (name, phone, address or email), those whose customer Cal.com's app made included.
            editable = sorted(_live_patients(sandbox))
            edited = admin(sandbox.cliniko_url, "edit", ids=rng.sample(editable, rng.randint(5, 15) * scale))["ids"]
            assert edited
            # A new name or a new price (a new Stripe price, the old one deactivated) on a few products.
            assert admin(sandbox.cliniko_url, "edit_products", count=rng.randint(1, 4) * scale)["ids"]
            _edit_calcom(sandbox, rng, scale, round_number)
            if round_number == 3:
                live = sorted(pid for pid, p in all_patients(sandbox.cliniko_url).items() if not p["archived_at"])
                admin(sandbox.cliniko_url, "archive", ids=rng.sample(live, 3))
                archived_products = rng.sample(_live_products(sandbox.env), 3)
                admin(sandbox.cliniko_url, "archive_products", ids=archived_products)
                hidden = rng.sample(sorted(calcom_live_event_types(sandbox.calcom_url)), 2)
                for event_type_id in hidden:
                    admin(sandbox.calcom_url, "hide", id=int(event_type_id))
            if round_number == 5:
                admin(sandbox.cliniko_url, "unarchive_products", ids=archived_products[:1])
                admin(sandbox.calcom_url, "hide", id=int(hidden[0]), hidden=False)
        faults = {name: stats(url)["faulted"] for name, url in services.items()}
        for url in services.values():
            admin(url, "faults", spec="")
        for _ in range(2):  # the storm is over: each installation finishes what it queued, then repairs twins
            for env in envs:
                subprocess.run(sync_command(), env=env, capture_output=True, timeout=300)
        report = mirror_report(sandbox.cliniko_url, sandbox.stripe_url)
        catalogue = product_report(sandbox.env, sandbox.stripe_url)
        event_types = event_type_report(sandbox.calcom_url, sandbox.stripe_url)
        people = calcom_people_report(sandbox.cliniko_url, sandbox.calcom_url, sandbox.stripe_url)
        duplicated = (report.duplicated, catalogue.duplicated, catalogue.duplicate_prices, event_types.duplicated)
        duplicated += (event_types.duplicate_prices, people.duplicated, people.shared_emails)
        duplicates = sum(map(len, duplicated))
        print(
            f"soak: seed {seed}; records: {report.live_patients} live patients, {catalogue.live_products} live "
            f"products, {event_types.priced} priced event types, {people.people} people who booked "
            f"({people.joined} of them patients); {kills} kills (during {', '.join(killed_in)}); faults injected "
            f"{faults}; at the end {report.customers} customers, {catalogue.products} + {event_types.products} "
            f"products; {duplicates} duplicates"
        )
        assert kills == KILLS
        assert all(sum(fired.values()) > 0 for fired in faults.values()), faults
        assert not report.duplicated, f"duplicates: {list(report.duplicated.items())[:5]}"
        assert not report.missing, f"lost: {report.missing[:5]}"
        assert not report.stale, f"stale: {list(report.stale.items())[:3]}"
        assert not report.orphans, f"orphans: {report.orphans[:3]}"
        assert catalogue.ok, catalogue.describe()
        assert event_types.ok, event_types.describe()
        assert people.ok, people.describe()
        assert people.joined >= 5 and people.people - people.joined >= 5, "people in both, and Cal.com's only"
        assert duplicates == 0
        live = {
            "cliniko.patients": {pid for pid, p in all_patients(sandbox.cliniko_url).items() if not p["archived_at"]},
            "cliniko.products": set(_live_products(sandbox.env)),
            "calcom.event_types": set(calcom_live_event_types(sandbox.calcom_url)),
            "calcom.bookings": {attendee_ref(email) for email in calcom_people(sandbox.calcom_url)},
        }
        for env in envs:
            home = Path(env["CLINICSYNC_HOME"])
            for stream, records in live.items():
                lost = records - _linked(home, stream)
                assert not lost, f"{home.name} lost track of {stream} records: {_what_became_of(home, stream, lost)}"
                unaccounted = records - events_by_record(home, stream)
                assert not unaccounted, f"{stream}: no history row says what happened to {sorted(unaccounted)[:5]}"
    finally:
        sandbox.stop()
