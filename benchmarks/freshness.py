"""How fresh is Stripe with the default schedule, and what does the idle schedule cost?

Starts the sandbox in its own process (clinicsync.sandbox.launcher.spawn, with latency on every request) and
`clinicsync serve` on a fresh profile with the app's default settings (every 60 s), waits for the first sync, then:

1. **Idle cost**: counts the requests each sandbox received while nothing changed, over `--idle-minutes`, and
   prints them per hour (what a clinic's quiet day costs its Cliniko and Stripe request budgets).
2. **Freshness**: edits one patient in Cliniko at a time, at moments spread over the poll interval, and measures
   how long until the Stripe customer shows the edit (the sandbox's admin API, which costs no API request).
   Prints the median and the worst delay, next to what the schedule predicts (half an interval plus one sync,
   and a whole interval plus one sync).

The products stream is off: the Stripe sandbox has no products yet, so that stream would only fail each poll.

    .venv/bin/python benchmarks/freshness.py [--edits 12] [--idle-minutes 5] [--latency-ms 80] [--patients 200]

Not part of the test suite. Takes about `idle-minutes + edits` minutes.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from clinicsync.sandbox.launcher import spawn
from clinicsync.store.settings import spec_for

INTERVAL_S = spec_for("schedule.interval_seconds").default


def _origin(url: str) -> str:
    parsed = httpx.URL(url)
    return f"{parsed.scheme}://{parsed.host}:{parsed.port}"


def admin(url: str, action: str, **params: Any) -> Any:
    response = httpx.post(f"{_origin(url)}/_sandbox/{action}", json=params, timeout=60)
    response.raise_for_status()
    return response.json() if response.content else None


def requests_served(url: str) -> int:
    response = httpx.get(f"{_origin(url)}/_sandbox/stats", timeout=60)
    response.raise_for_status()
    return int(response.json()["requests"])


def customer_city(stripe_url: str, patient_id: str) -> str | None:
    for customer in admin(stripe_url, "dump")["data"]:
        if not customer.get("deleted") and (customer.get("metadata") or {}).get("cliniko_patient_id") == patient_id:
            return (customer.get("address") or {}).get("city")
    return None


def wait_for(check: Any, timeout_s: float, what: str) -> float:
    """Seconds until `check()` is true (polled every 0.25 s)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise SystemExit(f"{what} did not happen within {timeout_s:.0f} s")
        time.sleep(0.25)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=12)
    parser.add_argument("--idle-minutes", type=float, default=5.0)
    parser.add_argument("--latency-ms", type=float, default=80.0)
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="clinicsync-freshness-"))
    sandbox, info = spawn(
        ["--profile", "clean", "--patients", str(args.patients), "--latency-ms", str(args.latency_ms)],
        work / "sandbox.json",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLINICSYNC_")}
    env |= info["env"] | {"CLINICSYNC_HOME": str(work / "profile"), "CLINICSYNC_STREAMS_CLINIKO_PRODUCTS_ENABLED": "0"}
    cliniko_url, stripe_url = info["cliniko_url"], info["stripe_url"]
    serve = subprocess.Popen(
        [sys.executable, "-m", "clinicsync", "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        first = wait_for(
            lambda: len([c for c in admin(stripe_url, "dump")["data"] if not c.get("deleted")]) >= args.patients,
            600,
            "the first sync",
        )
        print(f"first sync of {args.patients} patients: {first:.1f} s (latency {args.latency_ms:.0f} ms per request)")
        time.sleep(INTERVAL_S)  # let the first idle poll pass, so the window below starts in a quiet state

        window = args.idle_minutes * 60
        before = requests_served(cliniko_url), requests_served(stripe_url)
        time.sleep(window)
        after = requests_served(cliniko_url), requests_served(stripe_url)
        per_hour = [(b - a) * 3600 / window for a, b in zip(before, after, strict=True)]
        print(
            f"idle schedule (every {INTERVAL_S} s): Cliniko {per_hour[0]:.0f} requests/hour "
            f"({per_hour[0] / 60:.1f}/min of a 150/min budget), Stripe {per_hour[1]:.0f} requests/hour"
        )

        rng = random.Random(args.seed)
        ids = admin(cliniko_url, "dump")["patients"]
        live = [p["id"] for p in ids if not (p.get("archived_at") or p.get("deleted_at") or p.get("merged_at"))]
        delays = []
        for n in range(args.edits):
            time.sleep(rng.uniform(0, INTERVAL_S))  # edits land anywhere in the poll cycle
            patient = rng.choice(live)
            city = f"Freshness {n}"
            admin(cliniko_url, "edit", ids=[patient], fields={"city": city})
            delay = wait_for(lambda p=patient, c=city: customer_city(stripe_url, p) == c, 5 * INTERVAL_S, "an edit")
            delays.append(delay)
            print(f"  edit {n + 1}/{args.edits}: in Stripe after {delay:.1f} s")
        print(
            f"edit to Stripe ({len(delays)} edits): median {statistics.median(delays):.1f} s, "
            f"worst {max(delays):.1f} s; the schedule predicts about {INTERVAL_S / 2:.0f} s plus one sync, "
            f"and at most {INTERVAL_S} s plus one sync"
        )
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            serve.kill()
        sandbox.send_signal(signal.SIGTERM)
        sandbox.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
