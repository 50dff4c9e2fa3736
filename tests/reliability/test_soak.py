"""Soak: every stream that exists (patients and a few dozen products), together, under faults on every service
(10% 5xx, 5% 429, 2% resets after Stripe executed, 1% timeouts), with two installations syncing the same accounts
at once and SIGKILLs at random points, while staff keep editing (patients, product names and prices, archiving).
The end state is exact: every record once in Stripe with its latest values (each product with one active price,
its default), 0 duplicate customers, products or prices, nothing lost, and each installation's links and history
account for every record.

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

from tests.reliability.helpers import (
    all_patients,
    cliniko_products,
    db_path,
    events_by_record,
    mirror_report,
    product_report,
    start_sandbox_process,
    sync_command,
)
from tests.support import admin, profile_env, stats

FAULTS = "before:5xx=0.10,before:429=0.05,before:timeout=0.01,timeout_s=0.3"
STRIPE_FAULTS = FAULTS + ",after:reset=0.02"
KILLS = 5
PRODUCTS = 36


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


def _live_products(sandbox_env: dict[str, str]) -> list[str]:
    return sorted(pid for pid, p in cliniko_products(sandbox_env).items() if not p.get("archived_at"))


def test_soak_every_stream_faults_two_installations_and_kills_end_exact(tmp_path: Path) -> None:
    seed = _seed()
    rng = random.Random(seed)
    scale = int(os.environ.get("CLINICSYNC_SOAK_SCALE", "1"))
    patients = 150 * scale
    sandbox = start_sandbox_process(
        tmp_path / "sandbox", patients=patients, products=PRODUCTS * scale, seed=seed % 10_000 + 1
    )
    try:
        admin(sandbox.stripe_url, "faults", spec=f"{STRIPE_FAULTS},seed={seed}")
        admin(sandbox.cliniko_url, "faults", spec=f"{FAULTS},seed={seed + 1}")
        envs = [profile_env(tmp_path / name, sandbox.env, CLINICSYNC_RETRY_MAX_ATTEMPTS="4") for name in ("a", "b")]
        kills = 0
        for round_number in range(8):
            running = [_start(env) for env in envs]
            if kills < KILLS:
                time.sleep(rng.uniform(0.05, 0.6))  # a random point of the sync: not an order to prove
                victim = running[rng.randrange(2)]
                if victim.poll() is None:
                    victim.send_signal(signal.SIGKILL)
                    kills += 1
            for process in running:
                process.wait(timeout=300)
            edited = admin(sandbox.cliniko_url, "edit", count=rng.randint(5, 15) * scale)["ids"]
            assert edited
            # A new name or a new price (a new Stripe price, the old one deactivated) on a few products.
            assert admin(sandbox.cliniko_url, "edit_products", count=rng.randint(1, 4) * scale)["ids"]
            if round_number == 3:
                live = sorted(pid for pid, p in all_patients(sandbox.cliniko_url).items() if not p["archived_at"])
                admin(sandbox.cliniko_url, "archive", ids=rng.sample(live, 3))
                archived_products = rng.sample(_live_products(sandbox.env), 3)
                admin(sandbox.cliniko_url, "archive_products", ids=archived_products)
            if round_number == 5:
                admin(sandbox.cliniko_url, "unarchive_products", ids=archived_products[:1])
        faults = {
            name: stats(url)["faulted"]
            for name, url in (("stripe", sandbox.stripe_url), ("cliniko", sandbox.cliniko_url))
        }
        admin(sandbox.stripe_url, "faults", spec="")
        admin(sandbox.cliniko_url, "faults", spec="")
        for _ in range(2):  # the storm is over: each installation finishes what it queued, then repairs twins
            for env in envs:
                subprocess.run(sync_command(), env=env, capture_output=True, timeout=300)
        report = mirror_report(sandbox.cliniko_url, sandbox.stripe_url)
        catalogue = product_report(sandbox.env, sandbox.stripe_url)
        print(
            f"soak: {patients} patients, {PRODUCTS * scale} products, {kills} kills, faults injected {faults}, "
            f"{report.customers} customers and {catalogue.products} products at the end"
        )
        assert kills == KILLS
        assert sum(faults["stripe"].values()) > 0 and sum(faults["cliniko"].values()) > 0
        assert not report.duplicated, f"duplicates: {list(report.duplicated.items())[:5]}"
        assert not report.missing, f"lost: {report.missing[:5]}"
        assert not report.stale, f"stale: {list(report.stale.items())[:3]}"
        assert not report.orphans, f"orphans: {report.orphans[:3]}"
        assert catalogue.ok, catalogue.describe()
        live = {
            "cliniko.patients": {pid for pid, p in all_patients(sandbox.cliniko_url).items() if not p["archived_at"]},
            "cliniko.products": set(_live_products(sandbox.env)),
        }
        for env in envs:
            home = Path(env["CLINICSYNC_HOME"])
            for stream, records in live.items():
                assert records <= _linked(home, stream), f"an installation lost track of a record of {stream}"
                unaccounted = records - events_by_record(home, stream)
                assert not unaccounted, f"{stream}: no history row says what happened to {sorted(unaccounted)[:5]}"
    finally:
        sandbox.stop()
