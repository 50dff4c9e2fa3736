"""Soak: every stream that exists, together, under faults on every service (10% 5xx, 5% 429, 2% resets after
Stripe executed, 1% timeouts), with two installations syncing the same accounts at once and SIGKILLs at random
points, while staff keep editing. The end state is exact: every record once in Stripe with its latest values,
0 duplicates, nothing lost, and each installation's history accounts for every record.

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
    db_path,
    mirror_report,
    start_sandbox_process,
    sync_command,
)
from tests.support import admin, profile_env, stats

FAULTS = "before:5xx=0.10,before:429=0.05,before:timeout=0.01,timeout_s=0.3"
STRIPE_FAULTS = FAULTS + ",after:reset=0.02"
KILLS = 5


def _seed() -> int:
    seed = int(os.environ.get("CLINICSYNC_TEST_SEED") or random.SystemRandom().randrange(1, 1_000_000))
    print(f"soak: seed {seed} (CLINICSYNC_TEST_SEED={seed} reproduces it)")
    return seed


def _start(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(sync_command(), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _linked_patients(home: Path) -> set[str]:
    with sqlite3.connect(db_path(home), timeout=10) as con:
        rows = con.execute(
            "SELECT source_id FROM record_link WHERE stream = 'cliniko.patients' AND stripe_id IS NOT NULL"
        )
        return {row[0] for row in rows.fetchall()}


def test_soak_every_stream_faults_two_installations_and_kills_end_exact(tmp_path: Path) -> None:
    seed = _seed()
    rng = random.Random(seed)
    scale = int(os.environ.get("CLINICSYNC_SOAK_SCALE", "1"))
    patients = 150 * scale
    sandbox = start_sandbox_process(tmp_path / "sandbox", patients=patients, seed=seed % 10_000 + 1)
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
            if round_number == 3:
                live = sorted(pid for pid, p in all_patients(sandbox.cliniko_url).items() if not p["archived_at"])
                admin(sandbox.cliniko_url, "archive", ids=rng.sample(live, 3))
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
        print(
            f"soak: {patients} patients, {kills} kills, faults injected {faults}, "
            f"{report.customers} customers at the end"
        )
        assert kills == KILLS
        assert sum(faults["stripe"].values()) > 0 and sum(faults["cliniko"].values()) > 0
        assert not report.duplicated, f"duplicates: {list(report.duplicated.items())[:5]}"
        assert not report.missing, f"lost: {report.missing[:5]}"
        assert not report.stale, f"stale: {list(report.stale.items())[:3]}"
        assert not report.orphans, f"orphans: {report.orphans[:3]}"
        live = {pid for pid, p in all_patients(sandbox.cliniko_url).items() if not p["archived_at"]}
        for env in envs:
            assert live <= _linked_patients(Path(env["CLINICSYNC_HOME"])), "an installation lost track of a record"
    finally:
        sandbox.stop()
