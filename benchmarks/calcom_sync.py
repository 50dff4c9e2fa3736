"""How long does a Cal.com-only clinic's first sync take, and how close is that to what the APIs allow?

One `sync --once` (in-process, through the same service the CLI calls) of a clinic with Cal.com and no Cliniko key:
its four streams (calcom.event_types, calcom.bookings, calcom.booking_payments, calcom.reference) over N seeded
Cal.com bookings (default 5,000) into a Stripe account that holds only what Cal.com's own Stripe app put there
before ClinicSync was connected: the customers it made for paying bookers and the PaymentIntents of paid bookings.
The sandboxes run in their own process (see benchmarks/app_figures.py: the app's CPU, disk and memory figures are
its own), with latency on every request (default 80 ms) and the services' rate limits enforced: Stripe LIVE mode
(100 requests/s) and Cal.com (120 requests/min). The app runs with its real defaults (Cal.com budget 100/min,
Stripe budget = 90% of the live limit, `stripe.workers`). A first sync to a live account only plans until a
person approves each stream's plan: that plan-only run and the approvals come first, outside the measurement.

The fewest requests a first sync needs (the floor, benchmarks/floors.py), counted from the sandbox's own data:

- Cal.com: `/me` (the clinic's zone and the owner), the user's event types, the teams, each team's event types,
  the schedules (the reference stream's), and one read of every booking, ceil(N / 250) pages (`take` is at most
  250). Every request waits for the one before (a page's `skip` follows the previous page), so all are dependent.
- Stripe: the account, one listing page of products (none yet), ceil(C / 100) pages of the customers Cal.com's
  app made (to adopt them), ceil(P / 100) pages of PaymentIntents (to match paid bookings by `bookingId`; Search
  is not used), each page waiting for the one before; then one create per priced, visible event type (a product
  and its price are one request, `default_price_data`; its reference notes could ride on the same create, so
  they cost nothing more), one create per person with no customer yet, one update per customer the app made
  (the cross-reference), and one update per paid booking chain (or seat of a seated booking) whose PaymentIntent
  is on the clinic's account (its metadata), `workers` at a time.

Printed: the wall time and the app's own figures, each stream's outcome and counts, the requests each service
received (by endpoint), both floors (at the published limits and at the app's budgets) and wall / floor against
each. The target is wall <= 1.15 x the floor at the app's budgets.

    .venv/bin/python benchmarks/calcom_sync.py [--bookings 5000] [--latency-ms 80] [--workers 12]

Not part of the test suite.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import floors  # benchmarks/floors.py: the one floor function
import httpx
import medians
from app_figures import (
    Figures,
    first_sync_arguments,
    peak_rss_mib,
    reset_peak_rss,
    sandbox_process,
    sandbox_stats,
    stats_since,
)

from clinicsync import rate_limits
from clinicsync.app import bootstrap
from clinicsync.logging_setup import teardown_logging
from clinicsync.matchkey import normalized
from clinicsync.sandbox import calcom_seed
from clinicsync.sources.calcom import MAX_TAKE as CALCOM_TAKE
from clinicsync.store import queries
from clinicsync.store.models import SyncRun
from clinicsync.sync.service import run_sync

STREAMS = ("calcom.event_types", "calcom.bookings", "calcom.booking_payments", "calcom.reference")
STRIPE_PAGE = 100  # Stripe's largest list page


@dataclass(frozen=True)
class Minimal:
    """What the sandbox holds that a first sync must read or write (counted from its admin dumps)."""

    bookings: int
    people: int  # distinct attendee emails, casefolded
    adopted: int  # customers Cal.com's Stripe app made on the clinic's account: updated, not created
    products: int  # priced, visible event types
    teams: int
    payment_intents: int  # on the clinic's account, listed to be matched
    paid_chains: int  # paid booking chains (and seats) whose PaymentIntent is on the clinic's account

    def loads(self, workers: int) -> list[floors.Load]:
        calcom = 4 + self.teams + math.ceil(self.bookings / CALCOM_TAKE)  # me, event types, teams, schedules
        listings = 2 + math.ceil(self.adopted / STRIPE_PAGE) + math.ceil(self.payment_intents / STRIPE_PAGE)
        writes = self.products + (self.people - self.adopted) + self.adopted + self.paid_chains
        waiting = listings + (writes if workers == 1 else 0)
        return [
            floors.Load("calcom", calcom, dependent=calcom),
            floors.Load("stripe_live", listings + writes, dependent=waiting),
        ]


@dataclass
class Measured:
    minimal: Minimal
    latency_s: float
    workers: int
    planning_s: float
    wall_s: float
    outcomes: dict[str, str]
    counts: dict[str, dict[str, int]]
    stream_s: dict[str, float]  # each stream's own run (SyncRun.started_at → finished_at)
    calcom: dict[str, Any]
    stripe: dict[str, Any]
    app: Figures  # what the app itself cost: CPU, disk, memory


def _origin(url: str) -> str:
    parsed = httpx.URL(url)
    return f"{parsed.scheme}://{parsed.host}:{parsed.port}"


def _admin(url: str, action: str, **params: Any) -> Any:
    response = httpx.post(f"{_origin(url)}/_sandbox/{action}", json=params, timeout=120)
    response.raise_for_status()
    return response.json() if response.content else None


def _duration(run_id: int) -> float:
    run = SyncRun.get_by_id(run_id)
    return (run.finished_at - run.started_at).total_seconds() if run.finished_at else math.nan


def _minimal(world: dict[str, Any], adopted: int) -> Minimal:
    """The records a first sync must touch, from the Cal.com sandbox's dump (`world`)."""
    bookings = world["bookings"]
    people = {normalized(a["email"]) for b in bookings for a in b.get("attendees") or [] if a.get("email")}
    products = sum(
        1
        for et in world["event_types"]
        if calcom_seed.stripe_app(et) and calcom_seed.stripe_app(et).get("price") and not et.get("hidden")
    )
    by_uid = {b["uid"]: b for b in bookings}
    seated = {b["uid"] for b in bookings if any(a.get("seatUid") or a.get("seat") for a in b.get("attendees") or [])}
    clinic = [
        intent
        for intent in world["payment_intents"]
        if intent["sandbox"]["account"] == calcom_seed.CLINIC_ACCOUNT and intent["status"] == "succeeded"
    ]
    chains = set()
    for intent in clinic:
        uid = intent["sandbox"].get("booking_uid")
        while uid in by_uid and by_uid[uid].get("fromReschedule") in by_uid:  # back to the chain's first booking
            uid = by_uid[uid]["fromReschedule"]
        if uid is not None:
            chains.add(intent["id"] if uid in seated else uid)  # each seat's own payment, or the chain's one
    return Minimal(
        bookings=len(bookings),
        people=len(people),
        adopted=adopted,
        products=products,
        teams=len(world["teams"]),
        payment_intents=len(clinic),
        paid_chains=len(chains),
    )


def measure(bookings: int, latency_ms: float, workers: int, seed: int) -> Measured:
    args = ["--profile", "clean", "--patients", "200", "--products", "0", "--latency-ms", str(latency_ms)]
    args += ["--stripe-mode", "live", "--rate-limits", "--seed", str(seed)]
    args += ["--calcom", "--calcom-bookings", str(bookings), "--calcom-payments"]
    with tempfile.TemporaryDirectory(prefix="clinicsync-bench-") as work, sandbox_process(args, Path(work)) as info:
        world = _admin(info["calcom_url"], "dump")
        # The customers Cal.com's Stripe app made on the clinic's account, there before ClinicSync (as the tests
        # load them): the sync adopts them rather than making a second customer for the same person.
        made = [
            {"email": c["email"], "name": c["name"]}
            for c in world["customers"]
            if c["sandbox"]["account"] == calcom_seed.CLINIC_ACCOUNT
        ]
        _admin(info["stripe_url"], "seed", customers=made, livemode=True)
        minimal = _minimal(world, len(made))
        # The app's real defaults: only the sandbox's addresses and keys (no Cliniko key: a Cal.com-only clinic),
        # a fresh profile and the settings this benchmark is about. Nothing from the caller's CLINICSYNC_*.
        env = {key: value for key, value in os.environ.items() if not key.startswith("CLINICSYNC_")}
        env.update({k: v for k, v in info["env"].items() if k != "CLINICSYNC_CLINIKO_API_KEY"})
        env["CLINICSYNC_HOME"] = str(Path(work) / "profile")
        env["CLINICSYNC_STRIPE_WORKERS"] = str(workers)
        ctx = bootstrap(env)
        try:
            # A first sync to a LIVE account only plans until a person approves each stream's plan: that run
            # reads everything but writes nothing, and is not measured.
            started = time.perf_counter()
            planned = run_sync(ctx.paths, ctx.settings, ctx.secrets, trigger="benchmark")
            planning = time.perf_counter() - started
            for result in planned:
                if result.outcome == "needs_approval":
                    queries.approve_latest_plan(result.stream)
            urls = (info["calcom_url"], info["stripe_url"])
            before = [sandbox_stats(url) for url in urls]
            app_before = Figures.now()
            started = time.perf_counter()
            results = run_sync(ctx.paths, ctx.settings, ctx.secrets, trigger="benchmark")
            wall = time.perf_counter() - started
            app = Figures.now().since(app_before)
            calcom, stripe = (
                stats_since(sandbox_stats(url), earlier) for url, earlier in zip(urls, before, strict=True)
            )
            stream_s = {r.stream: _duration(r.run_id) for r in results}
        finally:
            ctx.db.close()
            teardown_logging()
    return Measured(
        minimal=minimal,
        latency_s=latency_ms / 1000,
        workers=workers,
        planning_s=planning,
        wall_s=wall,
        outcomes={r.stream: r.outcome for r in results},
        counts={r.stream: {action: n for action, n in r.counts.items() if n} for r in results},
        stream_s=stream_s,
        calcom=calcom,
        stripe=stripe,
        app=app,
    )


def report(run: Measured) -> float:
    """Print the run and its floors; return wall / the floor at the app's budgets."""
    m, ms = run.minimal, run.latency_s * 1000
    print(
        f"Cal.com-only first sync: {m.bookings} bookings, {m.people} people ({m.adopted} with a customer Cal.com's "
        f"Stripe app made), {m.products} priced event types, {m.paid_chains} paid booking chains with a payment on "
        f"the clinic's account; {ms:.0f} ms latency per request, stripe.workers = {run.workers}"
    )
    print(
        f"  limits enforced by the sandbox: Stripe live {rate_limits.STRIPE_PER_SECOND['live']}/s, "
        f"Cal.com {rate_limits.CALCOM_PER_MINUTE}/min; app budgets: Stripe "
        f"{rate_limits.budget_per_second('stripe_live'):g}/s, Cal.com {rate_limits.CALCOM_BUDGET_PER_MINUTE}/min"
    )
    for stream, outcome in run.outcomes.items():
        print(f"  {stream}: {outcome} in {run.stream_s[stream]:.1f} s, {run.counts[stream]}")
    print(f"  (before it, the plan-only first run a live account requires took {run.planning_s:.2f} s; not counted)")
    print(f"  wall time: {run.wall_s:.2f} s; {run.app.describe(m.people)}")
    print(
        f"  requests: Cal.com {run.calcom['requests']}, Stripe {run.stripe['requests']} "
        f"({run.stripe['mutations_total']} writes); answered 429: "
        f"Cal.com {run.calcom['rate_limited']}, Stripe {run.stripe['rate_limited']}"
    )
    print(f"  Cal.com requests by endpoint: {run.calcom['by_endpoint']}")
    print(f"  Stripe requests by endpoint: {run.stripe['by_endpoint']}")
    print("  floors (benchmarks/floors.py) from the minimal requests:")
    result = floors.report(run.wall_s, m.loads(run.workers), run.latency_s, indent="    ")
    return floors.print_target(run.wall_s, result)


def main(argv: list[str] | None = None) -> int:
    parser = first_sync_arguments(__doc__, "--bookings", 5000, "Cal.com bookings")
    medians.add_runs_option(parser)
    args = parser.parse_args(argv)

    def once(_: int) -> medians.RunFigures:
        reset_peak_rss()
        run = measure(args.bookings, args.latency_ms, args.workers, args.seed)
        ratio = report(run)
        finished = all(outcome == "ok" for outcome in run.outcomes.values())
        requests = {"calcom": run.calcom["requests"], "stripe": run.stripe["requests"]}
        kb = run.app.kb_per_record(run.minimal.people)
        return medians.RunFigures(run.wall_s, ratio, finished, peak_rss_mib(), kb, requests)

    return medians.exit_status(medians.repeat(args.runs, once))


if __name__ == "__main__":
    raise SystemExit(main())
