"""How long does a clinic's first invoice linking run take, and how close is that to what the APIs allow?

One `sync --once --stream cliniko.invoices` (in-process, through the same service the CLI calls) of N Cliniko
invoices (default 5,000; the invoices ↔ payments scenario of clinicsync/sandbox/invoice_seed.py, scaled from its
1,000-invoice acceptance mix, for N x 0.3 patients) whose payments are already in Stripe. The sandboxes run in
their own process (see benchmarks/app_figures.py: the app's CPU, disk and memory figures are its own), with
latency on every request (default 80 ms) and the services' rate limits enforced: Stripe LIVE mode (100
requests/s) and Cliniko (200 requests/min). The app runs with its real defaults (retry policy, Stripe budget = 90%
of the live limit, `stripe.workers`, the 7/30-day window); the Cliniko budget is set explicitly to its default,
150/min. Before the measurement, not counted: `cliniko.patients` runs (plan-only, approval, sync) so the invoices'
patients have their customers' links, and the invoices stream's own plan-only first run and its approval.

The floor counts the fewest requests a first linking run needs:

- Cliniko: the server's clock, one page of businesses (each invoice's zone, and the clinic's country), then
  `ceil((live + archived) / 100)` pages of one `q[]=archived_at:*` pass and `ceil(deleted / 100)` pages of the
  `q[]=deleted_at:?` pass, each page waiting for the one before. Linking reads no invoice items (only the
  mirror needs lines).
- Stripe: the account, `ceil(P / 100)` pages of one charge listing over the run's window (P: the payments in it,
  every one the scenario made), each waiting for the one before, then one metadata write per invoice linked
  (the scenario's certain ones, and the ones whose payment already names the invoice: that metadata lacks the
  number and status), `workers` at a time.
- Both services' floors overlap (benchmarks/floors.py): the stream lists Stripe at its first invoice and sends
  each link as soon as no invoice still to come can change it (the first read is in issue-date order, so one
  whose exact payment another invoice may fit waits only until the read passes the last issue date that could;
  one a larger payment may cover with another waits for the live pass's end), so writes drain while Cliniko is
  read.

Printed: the wall time and the app's own figures, the requests each service received (Cliniko invoice pages per
pass, invoice item pages; Stripe charge listing pages, metadata writes), both floors (at the published limits and
at the app's budgets) and wall / floor. The target is wall <= 1.15 x the floor at the app's budgets.

    .venv/bin/python benchmarks/invoice_sync.py [--invoices 5000] [--latency-ms 80] [--workers 12]

Not part of the test suite.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

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
from clinicsync.app import AppContext, bootstrap
from clinicsync.logging_setup import teardown_logging
from clinicsync.sandbox.invoice_seed import scaled_counts
from clinicsync.sources.cliniko import PER_PAGE as CLINIKO_PER_PAGE
from clinicsync.store import queries
from clinicsync.sync.engine import RunResult
from clinicsync.sync.service import run_sync

STREAM = "cliniko.invoices"
PATIENTS = "cliniko.patients"
STRIPE_PER_PAGE = 100
PATIENTS_PER_INVOICE = 0.3  # the acceptance mix: 1,000 invoices for 300 patients


@dataclass
class Measured:
    invoices: int
    shown: int  # live and archived: the archived_at:* pass
    deleted: int
    payments: int  # in Stripe, all inside the run's window
    linkable: int  # invoices a first run links
    latency_s: float
    workers: int
    setup_s: float
    wall_s: float
    outcome: str
    counts: dict[str, int]
    cliniko_requests: int
    cliniko_by_endpoint: dict[str, int]
    stripe_requests: int
    stripe_writes: int
    stripe_by_endpoint: dict[str, int]
    rate_limited: int
    app: Figures  # what the app itself cost: CPU, disk, memory
    phases: dict[str, float] = field(default_factory=dict)  # when each phase ended, s after the start (±0.25 s)


class PhaseClock:
    """Samples both sandboxes' counters (their admin API, which costs no API request) four times a second during
    the run, to tell when the Cliniko read ended and when Stripe's listing and writes began and ended."""

    def __init__(self, cliniko_url: str, stripe_url: str) -> None:
        self.urls = (cliniko_url, stripe_url)
        self.samples: list[tuple[float, int, int, int]] = []  # (s, Cliniko requests, charge pages, Stripe writes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._started = 0.0

    def __enter__(self) -> PhaseClock:
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            cliniko, stripe = (sandbox_stats(url) for url in self.urls)
            charges = stripe["by_endpoint"].get("GET /v1/charges", 0)
            moment = time.perf_counter() - self._started
            self.samples.append((moment, cliniko["requests"], charges, stripe["mutations_total"]))
            if self._stop.wait(0.25):
                return

    def phases(self) -> dict[str, float]:
        if not self.samples:
            return {}
        first, last = self.samples[0], self.samples[-1]

        def when(column: int, reached: int) -> float:
            return next(s[0] for s in self.samples if s[column] >= reached)

        out = {"Cliniko read ended": when(1, last[1])}  # its last request (the clock, businesses, invoice pages)
        if last[2] > first[2]:
            out["Stripe listing began"] = when(2, first[2] + 1)
            out["Stripe listing ended"] = when(2, last[2])
        if last[3] > first[3]:
            out["Stripe writes began"] = when(3, first[3] + 1)
            out["Stripe writes ended"] = when(3, last[3])
        return out


def _origin(url: str) -> str:
    parsed = httpx.URL(url)
    return f"{parsed.scheme}://{parsed.host}:{parsed.port}"


def minimal_loads(shown: int, deleted: int, payments: int, linkable: int, workers: int) -> list[floors.Load]:
    """The fewest requests a first linking run needs (see the module's docstring)."""
    cliniko = 2 + math.ceil(shown / CLINIKO_PER_PAGE) + math.ceil(deleted / CLINIKO_PER_PAGE)
    listing = 1 + math.ceil(payments / STRIPE_PER_PAGE)
    waiting = listing + (linkable if workers == 1 else 0)
    return [
        floors.Load("cliniko", cliniko, dependent=cliniko),
        floors.Load("stripe_live", listing + linkable, dependent=waiting),
    ]


def _once(ctx: AppContext, stream: str) -> RunResult:
    """`sync --once --stream STREAM`: the service runs the streams it depends on first; this is the stream's."""
    results = run_sync(ctx.paths, ctx.settings, ctx.secrets, streams=[stream], trigger="benchmark")
    (result,) = [r for r in results if r.stream == stream]
    return result


def _first_run(ctx: AppContext, stream: str) -> None:
    """A live account's first run only plans: approve it and run again."""
    if _once(ctx, stream).outcome == "needs_approval":
        queries.approve_latest_plan(stream)
        _once(ctx, stream)


def measure(invoices: int, latency_ms: float, workers: int, seed: int) -> Measured:
    counts = scaled_counts(invoices)
    customers = max(1, round(invoices * PATIENTS_PER_INVOICE))
    args = ["--profile", "clean", "--patients", str(customers), "--products", "20", "--latency-ms", str(latency_ms)]
    args += ["--invoices", str(invoices), "--invoice-customers", str(customers)]
    args += ["--stripe-mode", "live", "--rate-limits", "--seed", str(seed)]
    with tempfile.TemporaryDirectory(prefix="clinicsync-bench-") as work, sandbox_process(args, Path(work)) as info:
        dump = httpx.post(f"{_origin(info['cliniko_url'])}/_sandbox/dump", json={}, timeout=120).json()
        deleted = sum(1 for i in dump["invoices"] if i.get("deleted_at"))
        shown = len(dump["invoices"]) - deleted
        # Every payment the scenario made (all inside the window the run lists): single cases one each, ambiguous
        # and split two, a multi-invoice payment one for two invoices.
        payments = sum(counts[c] for c in counts if c != "paid_no_payment") + counts["ambiguous"] + counts["split"]
        linkable = counts["certain"] + counts["linked_metadata"]
        # The app's real defaults: only the sandbox's addresses and keys, a fresh profile, and the settings this
        # benchmark is about. Nothing from the caller's CLINICSYNC_* environment is used.
        env = {key: value for key, value in os.environ.items() if not key.startswith("CLINICSYNC_")}
        env.update(info["env"])
        env["CLINICSYNC_HOME"] = str(Path(work) / "profile")
        env["CLINICSYNC_CLINIKO_REQUESTS_PER_MINUTE"] = str(rate_limits.CLINIKO_BUDGET_PER_MINUTE)
        env["CLINICSYNC_STRIPE_WORKERS"] = str(workers)
        ctx = bootstrap(env)
        try:
            # Not measured: the patients' customers (the invoices match through their links), then the invoices
            # stream's plan-only first run, which reads everything and writes nothing, and its approval.
            started = time.perf_counter()
            _first_run(ctx, PATIENTS)
            if _once(ctx, STREAM).outcome == "needs_approval":
                queries.approve_latest_plan(STREAM)
            setup = time.perf_counter() - started
            urls = (info["cliniko_url"], info["stripe_url"])
            before = [sandbox_stats(url) for url in urls]
            app_before = Figures.now()
            started = time.perf_counter()
            with PhaseClock(*urls) as clock:
                result = _once(ctx, STREAM)
            wall = time.perf_counter() - started
            app = Figures.now().since(app_before)
            cliniko, stripe = (
                stats_since(sandbox_stats(url), earlier) for url, earlier in zip(urls, before, strict=True)
            )
        finally:
            ctx.db.close()
            teardown_logging()
    return Measured(
        invoices=invoices,
        shown=shown,
        deleted=deleted,
        payments=payments,
        linkable=linkable,
        latency_s=latency_ms / 1000,
        workers=workers,
        setup_s=setup,
        wall_s=wall,
        outcome=result.outcome,
        counts={action: count for action, count in result.counts.items() if count},
        cliniko_requests=cliniko["requests"],
        cliniko_by_endpoint=cliniko["by_endpoint"],
        stripe_requests=stripe["requests"],
        stripe_writes=stripe["mutations_total"],
        stripe_by_endpoint=stripe["by_endpoint"],
        rate_limited=cliniko["rate_limited"] + stripe["rate_limited"],
        app=app,
        phases=clock.phases(),
    )


def report(run: Measured) -> float:
    """Print the run and its floors; return wall / the floor at the app's budgets."""
    ms = run.latency_s * 1000
    print(
        f"Invoice linking: {run.invoices} invoices ({run.shown} live or archived, {run.deleted} deleted), "
        f"{run.payments} Stripe payments, {run.linkable} linkable; {ms:.0f} ms latency per request, "
        f"stripe.workers = {run.workers}"
    )
    print(
        f"  limits enforced by the sandbox: Stripe live {rate_limits.STRIPE_PER_SECOND['live']}/s, "
        f"Cliniko {rate_limits.CLINIKO_PER_MINUTE}/min; app budgets: Stripe "
        f"{rate_limits.budget_per_second('stripe_live'):g}/s, Cliniko {rate_limits.CLINIKO_BUDGET_PER_MINUTE}/min"
    )
    print(f"  outcome: {run.outcome}, {run.counts}")
    print(f"  (before it, the patients' sync and the plan-only first run took {run.setup_s:.2f} s; not counted)")
    print(f"  wall time: {run.wall_s:.2f} s; {run.app.describe(run.invoices)}")
    invoice_pages = run.cliniko_by_endpoint.get("GET /v1/invoices", 0)
    item_pages = run.cliniko_by_endpoint.get("GET /v1/invoice_items", 0)
    listings = run.stripe_by_endpoint.get("GET /v1/charges", 0)
    print(
        f"  requests: Cliniko {run.cliniko_requests} ({invoice_pages} invoice pages, {item_pages} invoice item "
        f"pages), Stripe {run.stripe_requests} ({listings} charge listing pages, {run.stripe_writes} writes); "
        f"answered 429: {run.rate_limited}"
    )
    if run.phases:
        print("  phases (s after the start): " + ", ".join(f"{name} {at:.1f}" for name, at in run.phases.items()))
    print(f"  Cliniko requests by endpoint: {run.cliniko_by_endpoint}")
    print(f"  Stripe requests by endpoint: {run.stripe_by_endpoint}")
    print("  floors (benchmarks/floors.py) from the minimal requests:")
    loads = minimal_loads(run.shown, run.deleted, run.payments, run.linkable, run.workers)
    result = floors.report(run.wall_s, loads, run.latency_s, indent="    ")
    return floors.print_target(run.wall_s, result)


def main(argv: list[str] | None = None) -> int:
    parser = first_sync_arguments(__doc__, "--invoices", 5000, "Cliniko invoices (at least 26)")
    medians.add_runs_option(parser)
    args = parser.parse_args(argv)

    def once(_: int) -> medians.RunFigures:
        reset_peak_rss()
        run = measure(args.invoices, args.latency_ms, args.workers, args.seed)
        ratio = report(run)
        requests = {"cliniko": run.cliniko_requests, "stripe": run.stripe_requests}
        # "attention": the seeded plausible matches wait in review, as they should (before, every run was a miss)
        finished = run.outcome in ("ok", "attention")
        kb = run.app.kb_per_record(run.invoices)
        return medians.RunFigures(run.wall_s, ratio, finished, peak_rss_mib(), kb, requests)

    return medians.exit_status(medians.repeat(args.runs, once))


if __name__ == "__main__":
    raise SystemExit(main())
