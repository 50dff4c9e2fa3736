"""Crash safety: the sync is SIGKILLed again and again, mid-run, and restarted; nothing is lost or duplicated.

Both sides are real processes: the sandbox runs in its own process (the launcher, found through --port-file), and
each sync is `python -m clinicsync sync --once` with a profile of its own. The sync is killed

- by the test, with SIGKILL, the moment the Stripe sandbox has executed a randomly chosen number of writes
  ("writes" = executed mutations in the Stripe sandbox's stats), and
- by itself, at each named crash point (`CLINICSYNC_CRASH_AT=after_outbox_insert:K`, `after_stripe_ok:K`,
  `after_link_saved:K`, random K),

and between some crashes and the restart, staff edit patients in Cliniko, including patients whose write was
in flight when the sync died. A final uninterrupted sync must then leave Stripe an exact mirror.

Reproduce a run with CLINICSYNC_TEST_SEED=<the printed seed>.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter, deque
from pathlib import Path

from tests.reliability.helpers import (
    all_patients,
    is_live,
    live_customers,
    log_tail,
    mirror_report,
    outbox_status,
    pending_source_ids,
    start_sandbox_process,
    sync_command,
)
from tests.support import admin, profile_env, stats

PATIENTS = 200
STRIPE_LATENCY_MS = 3  # lets a kill chosen by write count land mid-run; Cliniko stays at 0
CRASH_POINTS = ("after_outbox_insert", "after_stripe_ok", "after_link_saved")
KILLS_BY_WRITE_COUNT = 6
KILLS_PER_CRASH_POINT = 2
MAX_RUNS = 45
RUN_TIMEOUT_S = 30
KILLED = -signal.SIGKILL


def _mutations(stripe_url: str) -> int:
    return int(stats(stripe_url)["mutations_total"])


class SyncRunner:
    """Starts the sync subprocess, kills it when told, and keeps the last outputs for failure messages."""

    def __init__(self, env: dict[str, str], workdir: Path, stripe_url: str) -> None:
        self.env = env
        self.workdir = workdir
        self.stripe_url = stripe_url
        self.runs = 0
        self.history: deque[str] = deque(maxlen=6)

    def run(self, *, crash_at: str | None = None, kill_at_writes: int | None = None) -> tuple[int, int]:
        """Run one sync; return (exit code, executed writes when it ended)."""
        self.runs += 1
        env = dict(self.env, PYTHONFAULTHANDLER="1")  # SIGABRT on a hang dumps every thread's stack
        if crash_at:
            env["CLINICSYNC_CRASH_AT"] = crash_at
        out_path = self.workdir / f"sync-{self.runs:02d}.out"
        with out_path.open("wb") as sink:
            process = subprocess.Popen(sync_command(), env=env, stdout=sink, stderr=subprocess.STDOUT)
            try:
                self._watch(process, out_path, kill_at_writes)
            finally:
                if process.poll() is None:  # never leave a sync running behind a failed test
                    process.kill()
            code = process.wait(timeout=RUN_TIMEOUT_S)
        writes = _mutations(self.stripe_url)
        text = out_path.read_text(encoding="utf-8", errors="replace").strip()
        how = "no crash"
        if crash_at:
            how = f"CLINICSYNC_CRASH_AT={crash_at}"
        elif kill_at_writes is not None:
            how = f"SIGKILL at {kill_at_writes} writes"
        self.history.append(
            f"run {self.runs} ({how}) → exit {code}, {writes} writes so far:\n  {text[-1500:] or '(no output)'}"
        )
        return code, writes

    def _watch(self, process: subprocess.Popen[bytes], out_path: Path, kill_at_writes: int | None) -> None:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while process.poll() is None:
            if time.monotonic() > deadline:
                process.send_signal(signal.SIGABRT)
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                stacks = out_path.read_text(encoding="utf-8", errors="replace")[-6000:]
                raise AssertionError(
                    f"sync run {self.runs} hung for {RUN_TIMEOUT_S}s; its threads:\n{stacks}\n{self.last_outputs()}"
                )
            if kill_at_writes is not None:
                writes = _mutations(self.stripe_url)
                if writes >= kill_at_writes:
                    process.send_signal(signal.SIGKILL)
                    return
                time.sleep(0.002)
            else:
                time.sleep(0.01)

    def last_outputs(self) -> str:
        return "\n".join(self.history)


def test_sigkill_at_random_writes_and_at_every_crash_point_loses_nothing_and_duplicates_nothing(tmp_path):
    seed = int(os.environ.get("CLINICSYNC_TEST_SEED") or random.SystemRandom().randrange(1, 1_000_000))
    print(f"seed={seed}")
    rng = random.Random(seed)
    started = time.monotonic()
    sandbox = start_sandbox_process(tmp_path / "sandbox", patients=PATIENTS, seed=seed % 10_000 + 1)
    try:
        admin(sandbox.stripe_url, "config", latency_ms=STRIPE_LATENCY_MS)
        home = tmp_path / "profile"
        env = profile_env(home, sandbox.env)
        runner = SyncRunner(env, tmp_path, sandbox.stripe_url)

        plan = ["writes"] * KILLS_BY_WRITE_COUNT + [
            point for point in CRASH_POINTS for _ in range(KILLS_PER_CRASH_POINT)
        ]
        rng.shuffle(plan)
        kills: Counter[str] = Counter()
        landed_at: list[str] = []
        edited: set[str] = set()
        mid_write_edited: set[str] = set()
        archived: set[str] = set()

        def context() -> str:
            return (
                f"seed={seed}; kills so far {dict(kills)} at {landed_at}; mid-write edits {len(mid_write_edited)}\n"
                f"outbox: {dict(outbox_status(home))}\nlast sync outputs:\n{runner.last_outputs()}\n"
                f"log tail:\n{log_tail(home)}"
            )

        def outstanding_work() -> int:
            """Writes the next run has to make at least: patients not yet in Stripe plus queued writes."""
            mirrored = {c["metadata"].get("cliniko_patient_id") for c in live_customers(sandbox.stripe_url)}
            live = [pid for pid, p in all_patients(sandbox.cliniko_url).items() if is_live(p)]
            return sum(1 for pid in live if pid not in mirrored) + len(pending_source_ids(home))

        def staff_edits(fresh_work: int) -> None:
            """Edit patients between a crash and the restart, the mid-write ones first."""
            in_flight = pending_source_ids(home)
            chosen = rng.sample(in_flight, min(len(in_flight), rng.randint(1, 4))) if in_flight else []
            if chosen:
                admin(sandbox.cliniko_url, "edit", ids=chosen)
                mid_write_edited.update(chosen)
                edited.update(chosen)
            if fresh_work:
                edited.update(admin(sandbox.cliniko_url, "edit", count=fresh_work)["ids"])
            if in_flight and rng.random() < 0.25:  # now and then a mid-write patient is archived instead
                victim = rng.choice(in_flight)
                if victim not in archived:
                    admin(sandbox.cliniko_url, "archive", ids=[victim])
                    archived.add(victim)

        while plan:
            assert runner.runs < MAX_RUNS, f"the kill plan did not finish in {MAX_RUNS} runs\n{context()}"
            kind = plan[0]
            work = outstanding_work()
            if work < 12:  # keep the sync busy, or there is nothing to kill it in the middle of
                edited.update(admin(sandbox.cliniko_url, "edit", count=rng.randint(15, 30))["ids"])
                work = outstanding_work() + 15
            before = _mutations(sandbox.stripe_url)
            if kind == "writes":
                target = before + rng.randint(1, max(1, min(work - 1, 150)))
                code, after = runner.run(kill_at_writes=target)
                where = f"writes≥{target}"
            else:
                nth = rng.randint(1, max(1, min(work // 2, 60)))
                code, after = runner.run(crash_at=f"{kind}:{nth}")
                where = f"{kind}:{nth}"
            assert code in (0, KILLED), f"a sync run ended with exit code {code}\n{context()}"
            if code == KILLED:
                plan.pop(0)
                kills[kind] += 1
                landed_at.append(f"{where} (writes {before}→{after})")
                if rng.random() < 0.7:  # staff keep working while the sync is down
                    staff_edits(fresh_work=rng.randint(0, 6))
            # exit 0: the run finished before the kill point; the loop makes more work and tries again

        final_code, _ = runner.run()
        assert final_code == 0, f"the final sync failed\n{context()}"

        report = mirror_report(sandbox.cliniko_url, sandbox.stripe_url)
        assert not report.duplicated, f"DUPLICATES {report.duplicated}\n{report.describe()}\n{context()}"
        assert report.ok, f"Stripe does not mirror Cliniko: {report.describe()}\n{context()}"
        assert report.live_patients == PATIENTS - len(archived)
        assert outbox_status(home).get("pending", 0) == 0, context()
        assert outbox_status(home).get("failed", 0) == 0, context()

        after_final = stats(sandbox.stripe_url)
        total_kills = sum(kills.values())
        assert total_kills >= 10, context()
        assert all(kills[point] >= 1 for point in CRASH_POINTS) and kills["writes"] >= 1, context()
        assert mid_write_edited, f"no patient was edited while its write was in flight\n{context()}"
        assert after_final["replays_total"] > 0, (
            f"no idempotent replay happened: the outbox replay path never ran\n{context()}"
        )
        assert after_final["rejected_total"] == 0, f"Stripe refused requests: {after_final['rejected']}\n{context()}"

        # Nothing was left behind: one more sync finds nothing to do.
        again_code, _ = runner.run()
        assert again_code == 0
        assert stats(sandbox.stripe_url)["mutations_total"] == after_final["mutations_total"], context()

        print(
            f"seed={seed}: {runner.runs} sync runs, {total_kills} SIGKILLs {dict(kills)}, "
            f"replays {after_final['replays_total']}, writes {after_final['mutations']}, "
            f"{len(edited)} patients edited ({len(mid_write_edited)} mid-write), {len(archived)} archived, "
            f"{time.monotonic() - started:.1f}s\nkills at: {landed_at}"
        )
    finally:
        sandbox.stop()
