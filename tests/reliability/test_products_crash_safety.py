"""Crash safety across the steps of a product's plan: SIGKILL after the new price, after setting the default,
after deactivating the old one (named crash points, counted per write), and at random moments, with prices
changing between runs. The end state is exact: each live product one Stripe product with one active default
ClinicSync price, no orphan or duplicate product or price. Reproduce with CLINICSYNC_TEST_SEED=<printed seed>."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

from tests.integration.test_products_stream import check_exact, cliniko_products
from tests.support import admin

COMMAND = [sys.executable, "-m", "clinicsync", "sync", "--once", "--stream", "cliniko.products"]


def test_kills_between_every_pair_of_steps_of_a_repricing_leave_an_exact_catalogue(make_sandbox, env_for):
    seed = int(os.environ.get("CLINICSYNC_TEST_SEED") or random.SystemRandom().randrange(1, 10**6))
    print(f"products crash safety: seed {seed} (CLINICSYNC_TEST_SEED={seed} reproduces it)")
    rng = random.Random(seed)
    sandbox = make_sandbox(profile="clean", patients=1, products=24, seed=seed % 1000 + 1)
    env = env_for(sandbox, CLINICSYNC_STRIPE_WORKERS="2")
    assert subprocess.run(COMMAND, env=env, capture_output=True, timeout=120).returncode == 0
    live = sorted(pid for pid, p in cliniko_products(sandbox).items() if not p.get("archived_at"))
    kills = 0
    points = [f"after_stripe_ok:{n}" for n in (1, 2, 3, 4, 5, 7)] + ["after_link_saved:2", "after_outbox_insert:1"]
    for number, point in enumerate(points + ["random"] * 4):
        for pid in rng.sample(live, 4):  # staff change prices between runs, some back to an earlier one
            admin(sandbox.cliniko_url, "set_product_price", id=pid, price=f"{rng.choice((19, 25, 31))}.{number % 10}0")
        if point == "random":
            process = subprocess.Popen(COMMAND, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.05, 0.5))  # a random moment of the sync, not an order to prove
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
            process.wait(timeout=60)
        else:
            ran = subprocess.run(COMMAND, env={**env, "CLINICSYNC_CRASH_AT": point}, capture_output=True, timeout=120)
            kills += ran.returncode == -signal.SIGKILL
    assert kills >= 10, f"only {kills} kills"
    for _ in range(2):
        final = subprocess.run(COMMAND, env=env, capture_output=True, text=True, timeout=120)
        assert final.returncode == 0, final.stdout + final.stderr
    check_exact(sandbox)
