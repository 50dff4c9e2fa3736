"""How long does a clinic's first sync take, and how close is that to what the APIs allow?

One `sync --once` (in-process, through the same service the CLI calls) of N patients (default 2,000) into an
empty Stripe account, against the loopback sandboxes — in their own process, so the CPU, memory and disk figures
printed are the app's alone — with emulated latency on every request (default 80 ms) and the services' rate
limits enforced: Stripe LIVE mode (100 requests/s) and Cliniko (200 requests/min).
The app runs with its real defaults (retry policy, Stripe budget = 90% of the live limit, `stripe.workers`);
the Cliniko budget is set explicitly to its default, 150/min. The sync scope is set explicitly to "all" (saved
as a person would): a new live connection's default, recent activity, would leave a fifth of the sandbox's
patients out and read invoices and appointments too, and the figures would no longer compare with earlier runs.

A first sync to a LIVE account is two runs: the plan (reads every Cliniko page and lists the Stripe account, writes
nothing) and, once approved, the sync that carries the plan out (tops the index up, reads only what changed since
the plan, and writes). Printed for each and for the two together: the wall time, the requests each service
received, the writes Stripe executed, floors computed from the minimal request counts, and wall/floor. Then, for
comparison, the same with sequential writes (`stripe.workers` = 1).

With `--stripe-mode test` the Stripe sandbox enforces the test-mode limit (25 requests/s), the app uses its
test-mode budget (it reads the mode from the key), and the first sync is one run: a test-mode account needs no
approved plan. Its floor is one run reading and writing everything at that budget. Every measured run is repeated
(`--runs`, default 3) and judged on the median (benchmarks/medians.py); the baseline runs once.

    .venv/bin/python benchmarks/initial_sync.py [--patients 2000] [--latency-ms 80] [--workers 4] [--no-baseline]
        [--stripe-mode live|test] [--runs 3]

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import floors  # benchmarks/floors.py: the one floor function
import medians
from app_figures import (
    Figures,
    first_sync_arguments,
    peak_rss_kib,
    peak_rss_mib,
    reset_peak_rss,
    sandbox_process,
    sandbox_stats,
    stats_since,
)

from clinicsync import rate_limits
from clinicsync.app import bootstrap
from clinicsync.logging_setup import teardown_logging
from clinicsync.mapping.fields import FieldCatalogue
from clinicsync.mapping.spec import SyncScope
from clinicsync.sources.cliniko import PER_PAGE as CLINIKO_PER_PAGE
from clinicsync.store import mappings as mapping_store
from clinicsync.store import queries
from clinicsync.sync.service import run_sync

STRIPE_LIMIT_PER_SECOND = rate_limits.STRIPE_PER_SECOND["live"]
CLINIKO_LIMIT_PER_MINUTE = rate_limits.CLINIKO_PER_MINUTE
CLINIKO_BUDGET_PER_MINUTE = rate_limits.CLINIKO_BUDGET_PER_MINUTE
STRIPE_BUDGET_FRACTION = rate_limits.STRIPE_BUDGET_FRACTION
STREAMS = ["cliniko.patients"]


@dataclass
class Measured:
    patients: int
    latency_s: float
    workers: int
    planning_s: float
    plan_cliniko_pages: int
    plan_stripe_requests: int
    plan_app: Figures
    plan_peak_rss_kib: int  # the process's peak resident set when the plan had finished
    wall_s: float
    outcome: str
    created: int
    cliniko_requests: int
    cliniko_pages: int
    stripe_requests: int
    stripe_writes: int
    rate_limited: int
    app: Figures
    stripe_mode: str = "live"


def minimal_loads(patients: int, workers: int, stripe: str = "stripe_live") -> list[floors.Load]:
    """The fewest requests a first sync of `patients` needs, read and written in one run (a test-mode account's,
    which needs no approval). Cliniko: ceil(N / 100) pages (100 a page is the maximum) + 1 request for the account
    and the server's clock, each page waiting for the one before (its `next` link); a listing with
    q[]=archived_at:* returns live and archived patients in one pass. Stripe: the account and one listing page
    (the account is empty), one after the other, then one create per patient, `workers` at a time (with one
    worker, every create waits for the one before)."""
    pages = math.ceil(patients / CLINIKO_PER_PAGE) + 1
    waiting = 2 + (math.ceil(patients / workers) if workers == 1 else 0)
    return [floors.Load("cliniko", pages, dependent=pages), floors.Load(stripe, patients + 2, dependent=waiting)]


def plan_loads(patients: int) -> list[floors.Load]:
    """The plan's floor: every Cliniko page read once (as above) and the Stripe account listed once (the account
    and one listing page of an empty account, one after the other)."""
    pages = math.ceil(patients / CLINIKO_PER_PAGE) + 1
    return [floors.Load("cliniko", pages, dependent=pages), floors.Load("stripe_live", 2, dependent=2)]


def approved_loads(patients: int, workers: int) -> list[floors.Load]:
    """The approved sync's floor: Cliniko's account and clock, then one page of what changed since the plan
    (nothing); Stripe's account and one top-up listing, then one create per patient, `workers` at a time."""
    waiting = 2 + (math.ceil(patients / workers) if workers == 1 else 0)
    return [floors.Load("cliniko", 2, dependent=2), floors.Load("stripe_live", patients + 2, dependent=waiting)]


def measure(patients: int, latency_ms: float, workers: int, seed: int, stripe_mode: str = "live") -> Measured:
    args = ["--profile", "clean", "--patients", str(patients), "--products", "0", "--latency-ms", str(latency_ms)]
    args += ["--stripe-mode", stripe_mode, "--rate-limits", "--seed", str(seed)]
    with tempfile.TemporaryDirectory(prefix="clinicsync-bench-") as work, sandbox_process(args, Path(work)) as info:
        home = str(Path(work) / "profile")
        # The app's real defaults: only the sandbox's addresses and keys, a fresh profile, and the two settings
        # this benchmark is about. Nothing from the caller's CLINICSYNC_* environment is used.
        env = {key: value for key, value in os.environ.items() if not key.startswith("CLINICSYNC_")}
        env.update(info["env"])
        env["CLINICSYNC_HOME"] = home
        env["CLINICSYNC_CLINIKO_REQUESTS_PER_MINUTE"] = str(CLINIKO_BUDGET_PER_MINUTE)
        env["CLINICSYNC_STRIPE_WORKERS"] = str(workers)
        ctx = bootstrap(env)
        try:
            every_patient = replace(mapping_store.default_mapping("cliniko.patients"), scope=SyncScope(kind="all"))
            mapping_store.save(every_patient, FieldCatalogue.for_source("cliniko", "patient"), who="benchmark")
            # A first sync to a LIVE account only plans until a person approves the plan: do that first
            # (it reads everything but writes nothing), outside the measurement. A test-mode account needs no
            # approval (service.needs_approval): its first sync reads and writes in one run.
            plan_before = sandbox_stats(info["cliniko_url"]), sandbox_stats(info["stripe_url"])
            plan_app_before = Figures.now()
            started = time.perf_counter()
            if stripe_mode == "live":
                (planned,) = run_sync(ctx.paths, ctx.settings, ctx.secrets, streams=STREAMS, trigger="benchmark")
                if planned.outcome == "needs_approval":
                    queries.approve_latest_plan(planned.stream)
            planning = time.perf_counter() - started
            plan_app = Figures.now().since(plan_app_before)
            plan_peak = peak_rss_kib()
            plan_cliniko, plan_stripe = (
                stats_since(sandbox_stats(url), earlier)
                for url, earlier in zip((info["cliniko_url"], info["stripe_url"]), plan_before, strict=True)
            )
            before = sandbox_stats(info["cliniko_url"]), sandbox_stats(info["stripe_url"])
            app_before = Figures.now()
            started = time.perf_counter()
            (result,) = run_sync(ctx.paths, ctx.settings, ctx.secrets, streams=STREAMS, trigger="benchmark")
            wall = time.perf_counter() - started
            app = Figures.now().since(app_before)
        finally:
            ctx.db.close()
            teardown_logging()
        cliniko, stripe = (
            stats_since(sandbox_stats(url), earlier)
            for url, earlier in zip((info["cliniko_url"], info["stripe_url"]), before, strict=True)
        )
    return Measured(
        patients=patients,
        latency_s=latency_ms / 1000,
        workers=workers,
        planning_s=planning,
        plan_cliniko_pages=plan_cliniko["by_endpoint"].get("GET /v1/patients", 0),
        plan_stripe_requests=plan_stripe["requests"],
        plan_app=plan_app,
        plan_peak_rss_kib=plan_peak,
        wall_s=wall,
        outcome=result.outcome,
        created=result.counts["created"],
        cliniko_requests=cliniko["requests"],
        cliniko_pages=cliniko["by_endpoint"].get("GET /v1/patients", 0),
        stripe_requests=stripe["requests"],
        stripe_writes=stripe["mutations_total"],
        rate_limited=cliniko["rate_limited"] + stripe["rate_limited"],
        app=app,
        stripe_mode=stripe_mode,
    )


def report(run: Measured) -> float:
    """Print the run and its floors; return the ratio its target is judged on."""
    if run.stripe_mode == "test":
        return report_test_mode(run)
    ms = run.latency_s * 1000
    print(f"Initial sync: {run.patients} patients, {ms:.0f} ms latency per request, stripe.workers = {run.workers}")
    print(
        f"  limits enforced by the sandbox: Stripe live {STRIPE_LIMIT_PER_SECOND}/s, "
        f"Cliniko {CLINIKO_LIMIT_PER_MINUTE}/min"
    )
    print(
        f"  app budgets (defaults): Stripe {STRIPE_LIMIT_PER_SECOND * STRIPE_BUDGET_FRACTION:g}/s, "
        f"Cliniko {CLINIKO_BUDGET_PER_MINUTE}/min"
    )
    print(f"  outcome: {run.outcome}, {run.created} created")
    print(f"  the plan (the first run a live account requires; reads, writes nothing): {run.planning_s:.2f} s")
    print(f"    requests sent: Cliniko {run.plan_cliniko_pages} patient pages, Stripe {run.plan_stripe_requests}")
    after_plan = f"{run.plan_peak_rss_kib / 1024:.0f} MiB after the plan"
    print(f"    {run.plan_app.describe(run.patients)} (at the end; {after_plan})")
    plan = floors.report(run.planning_s, plan_loads(run.patients), run.latency_s, indent="    ")
    print(f"  the approved sync, carrying the plan out: wall time {run.wall_s:.2f} s")
    print(f"  Stripe writes executed: {run.stripe_writes}")
    print(f"  {run.app.describe(run.patients)}")
    print(
        f"  requests sent: Cliniko {run.cliniko_requests} ({run.cliniko_pages} patient pages), "
        f"Stripe {run.stripe_requests}; answered 429: {run.rate_limited}"
    )
    print("  floors (benchmarks/floors.py) from the minimal requests of the approved sync:")
    sync = floors.report(run.wall_s, approved_loads(run.patients, run.workers), run.latency_s, indent="    ")
    floors.print_target(run.wall_s, sync, indent="    ")
    both, floor = run.planning_s + run.wall_s, plan.budget_s + sync.budget_s
    print(
        f"  plan + approved sync: {both:.2f} s against {floor:.2f} s (the plan's floor + the sync's, at the app's "
        f"budgets) → {floors.ratio(both, floor):.2f} (target <= {floors.TARGET_RATIO})"
    )
    print("  for comparison, the floor of one run reading and writing everything (a test-mode first sync):")
    floors.report(both, minimal_loads(run.patients, run.workers), run.latency_s, indent="    ")
    return floors.ratio(both, floor)


def report_test_mode(run: Measured) -> float:
    """A test-mode first sync: one run reads and writes everything (no plan to approve), its floor at Stripe's
    test limit (25/s) and the app's test-mode budget; return wall / that floor at the budgets."""
    ms = run.latency_s * 1000
    print(
        f"Initial sync, Stripe test mode: {run.patients} patients, {ms:.0f} ms latency per request, "
        f"stripe.workers = {run.workers}"
    )
    print(
        f"  limits enforced by the sandbox: Stripe test {rate_limits.STRIPE_PER_SECOND['test']}/s, "
        f"Cliniko {CLINIKO_LIMIT_PER_MINUTE}/min; app budgets: Stripe "
        f"{rate_limits.budget_per_second('stripe_test'):g}/s, Cliniko {CLINIKO_BUDGET_PER_MINUTE}/min"
    )
    print(f"  outcome: {run.outcome}, {run.created} created; wall time {run.wall_s:.2f} s (no plan to approve)")
    print(f"  Stripe writes executed: {run.stripe_writes}")
    print(f"  {run.app.describe(run.patients)}")
    print(
        f"  requests sent: Cliniko {run.cliniko_requests} ({run.cliniko_pages} patient pages), "
        f"Stripe {run.stripe_requests}; answered 429: {run.rate_limited}"
    )
    print("  floors (benchmarks/floors.py) from the minimal requests of one run reading and writing everything:")
    result = floors.report(run.wall_s, minimal_loads(run.patients, run.workers, "stripe_test"), run.latency_s, "    ")
    return floors.print_target(run.wall_s, result, indent="    ")


def main(argv: list[str] | None = None) -> int:
    parser = first_sync_arguments(__doc__, "--patients", 2000, "Cliniko patients")
    parser.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run with sequential writes (stripe.workers = 1) for comparison",
    )
    parser.add_argument(
        "--stripe-mode",
        choices=("live", "test"),
        default="live",
        help="the Stripe account's mode: live (100/s; a plan to approve first) or test (25/s; one run)",
    )
    medians.add_runs_option(parser)
    args = parser.parse_args(argv)

    def once(_: int) -> medians.RunFigures:
        reset_peak_rss()
        run = measure(args.patients, args.latency_ms, args.workers, args.seed, args.stripe_mode)
        ratio = report(run)  # live: the plan + approved sync target (before: never judged)
        requests = {"cliniko": run.cliniko_requests, "stripe": run.stripe_requests}
        kb = run.app.kb_per_record(run.patients)
        wall = run.planning_s + run.wall_s  # live: the plan and the approved sync, as the ratio counts them
        return medians.RunFigures(wall, ratio, run.outcome == "ok", peak_rss_mib(), kb, requests)

    middle = medians.repeat(args.runs, once)
    if args.baseline and args.workers != 1:  # once, not per run: it is only a comparison
        base = measure(args.patients, args.latency_ms, 1, args.seed, args.stripe_mode)
        print(f"Baseline, sequential writes (stripe.workers = 1): {base.wall_s:.2f} s, {base.stripe_writes} writes")
        loads = (
            approved_loads(args.patients, 1)
            if args.stripe_mode == "live"
            else minimal_loads(args.patients, 1, "stripe_test")
        )
        floors.report(base.wall_s, loads, base.latency_s, indent="    ")
        print(f"  speed-up of stripe.workers = {args.workers} over sequential (plan + sync, median run): "
              f"{(base.planning_s + base.wall_s) / middle.wall_s:.2f}x")  # fmt: skip
    return medians.exit_status(middle)


if __name__ == "__main__":
    raise SystemExit(main())
