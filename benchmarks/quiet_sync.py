"""What does a sync cost when nothing changed? 0 Stripe writes, and one page of each pass a stream reads.

One clinic with every stream on (Cliniko patients, products, invoices with their links to payments and the invoice
mirror; Cal.com event types, bookings, booking payments and the reference notes) is synced once, then each stream
is synced again alone with nothing changed, and then all of them together. The sandboxes run in their own process
(`clinicsync.sandbox.launcher.spawn`), Stripe in test mode (no plan to approve). Printed per stream: the Stripe
writes it executed (must be 0), the source requests it sent, and the reads it needs: its passes (one page each when
nothing changed) plus the fixed reads every run of it makes (Cliniko's clock and business, Cal.com's `/me`).
Exit status 1 when a stream writes, or reads an endpoint more often than it needs.

The incremental overlap (`sync.cursor_overlap_seconds`, 120 s by default) is set to 0: the sandbox seeds its
records moments before the first sync, so with the overlap they would count as changed (a re-read within the
overlap is the app being careful, not a cost of a quiet sync). The request budgets are lifted (only counts are
measured). Sizes are chosen so that each full read is more than one page.

    .venv/bin/python benchmarks/quiet_sync.py [--patients 250] [--bookings 300] [--invoices 300]

Not part of the test suite (tests/integration/test_quiet_sync.py asserts the same on small data).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from app_figures import sandbox_process, sandbox_stats, stats_since

from clinicsync.app import bootstrap
from clinicsync.logging_setup import teardown_logging
from clinicsync.sync.service import run_sync

TEAM_EVENT_TYPES = "GET /v2/teams/{id}/event-types"  # one request per team
TEAMS = "<teams>"  # stands for the number of Cal.com teams in PASSES

# The passes each stream reads when nothing changed, one page each (endpoint → requests). One source of truth for
# this benchmark, its integration test and the table in benchmarks/README.md.
PASSES: dict[str, dict[str, int | str]] = {
    # q[]=archived_at:* (lists no live patient when nothing changed, so:) the live pass
    "cliniko.patients": {"GET /v1/patients": 2},
    # products: archived_at:* and live passes; stock adjustments since the cursor
    "cliniko.products": {"GET /v1/products": 2, "GET /v1/stock_adjustments": 1},
    # invoices: archived_at:*, live, deleted_at:? passes
    "cliniko.invoices": {"GET /v1/invoices": 3},
    # the same three passes, and the invoice items changed since
    "cliniko.invoice_mirror": {"GET /v1/invoices": 3, "GET /v1/invoice_items": 1},
    # the user's event types, the teams, each team's event types (none is paged)
    "calcom.event_types": {"GET /v2/event-types": 1, "GET /v2/teams": 1, TEAM_EVENT_TYPES: TEAMS},
    # bookings updated since, bookings created since (a booking's updatedAt may be empty)
    "calcom.bookings": {"GET /v2/bookings": 2},
    # the same two passes, and the event types (which are paid)
    "calcom.booking_payments": {
        "GET /v2/bookings": 2,
        "GET /v2/event-types": 1,
        "GET /v2/teams": 1,
        TEAM_EVENT_TYPES: TEAMS,
    },
    # the event types and the schedules
    "calcom.reference": {"GET /v2/event-types": 1, "GET /v2/teams": 1, TEAM_EVENT_TYPES: TEAMS, "GET /v2/schedules": 1},
}
# The reads every run of a stream makes before its passes: the server's clock (Cliniko's cursor), the business
# (Cliniko's currency), the user (Cal.com's time zone and owner).
FIXED_READS: dict[str, dict[str, int]] = {
    "cliniko.patients": {"GET /v1/settings/public": 1},
    **{
        name: {"GET /v1/settings/public": 1, "GET /v1/businesses": 1}
        for name in ("cliniko.products", "cliniko.invoices", "cliniko.invoice_mirror")
    },
    **{name: {"GET /v2/me": 1} for name in PASSES if name.startswith("calcom.")},
}
STREAMS = tuple(PASSES)
QUIET_SETTINGS = {
    "CLINICSYNC_SYNC_CURSOR_OVERLAP_SECONDS": "0",
    "CLINICSYNC_CLINIKO_INVOICES_MIRROR": "true",
    "CLINICSYNC_CLINIKO_REQUESTS_PER_MINUTE": "0",
    "CLINICSYNC_CALCOM_REQUESTS_PER_MINUTE": "0",
    "CLINICSYNC_STRIPE_REQUESTS_PER_SECOND": "100000",
}


def needed_reads(stream: str, teams: int) -> dict[str, int]:
    """The source requests a sync of `stream` with nothing changed needs, by endpoint: its passes, one page each,
    and its fixed reads."""
    needed = dict(FIXED_READS[stream])
    for endpoint, count in PASSES[stream].items():
        needed[endpoint] = needed.get(endpoint, 0) + (teams if count == TEAMS else int(count))
    return needed


@dataclass
class Quiet:
    """One sync with nothing changed: what it cost."""

    streams: tuple[str, ...]
    outcomes: list[str]
    stripe_writes: int
    stripe_reads: int
    source: dict[str, int]  # endpoint → requests, Cliniko's and Cal.com's
    needed: dict[str, int] = field(default_factory=dict)

    @property
    def source_requests(self) -> int:
        return sum(self.source.values())

    @property
    def passes(self) -> int:
        return sum(self.needed.values())

    def over(self) -> list[str]:
        """What this sync did beyond a quiet sync's needs, in words; [] when nothing."""
        found = [f"{self.stripe_writes} Stripe writes"] if self.stripe_writes else []
        found += [
            f"{endpoint} {count}x (needs {self.needed.get(endpoint, 0)})"
            for endpoint, count in sorted(self.source.items())
            if count > self.needed.get(endpoint, 0)
        ]
        return found


def teams_of(calcom_url: str) -> int:
    """Cal.com teams in the sandbox (its admin API, which costs no API request)."""
    origin = httpx.URL(calcom_url)
    response = httpx.post(f"{origin.scheme}://{origin.host}:{origin.port}/_sandbox/dump", json={}, timeout=60)
    response.raise_for_status()
    return len(response.json()["teams"])


def sync(env: Mapping[str, str], urls: Mapping[str, str], streams: tuple[str, ...], teams: int) -> Quiet:
    """One sync of `streams` through the service the CLI calls, and the requests each sandbox received for it.
    `urls`: the sandboxes' base URLs by service ("cliniko", "calcom", "stripe")."""
    before = {service: sandbox_stats(url) for service, url in urls.items()}
    ctx = bootstrap(env)
    try:
        results = run_sync(ctx.paths, ctx.settings, ctx.secrets, streams=list(streams), trigger="benchmark")
    finally:
        ctx.db.close()
        teardown_logging()
    spent = {service: stats_since(sandbox_stats(url), before[service]) for service, url in urls.items()}
    source: dict[str, int] = {}
    for service in ("cliniko", "calcom"):
        for endpoint, count in spent[service]["by_endpoint"].items():
            source[endpoint] = source.get(endpoint, 0) + count
    needed: dict[str, int] = {}
    for stream in streams:
        for endpoint, count in needed_reads(stream, teams).items():
            needed[endpoint] = needed.get(endpoint, 0) + count
    stripe = spent["stripe"]
    return Quiet(
        streams=streams,
        outcomes=[result.outcome for result in results],
        stripe_writes=stripe["mutations_total"],
        stripe_reads=stripe["requests"] - stripe["mutations_total"],
        source=source,
        needed=needed,
    )


def move_clock_past_the_seed(calcom_url: str) -> None:
    """Move the Cal.com sandbox's clock on two seconds. Cal.com's clock (its Date header, which the app's cursor is
    read from) has whole seconds, so a booking changed in the second a run starts is read again by the next run, as
    it must be; the sandbox seeds some bookings as changed "now", moments before the first sync, and without this
    they would share its second (a re-read that depends on when the seed happens to fall, not a cost of a quiet
    sync)."""
    origin = httpx.URL(calcom_url)
    response = httpx.post(f"{origin.scheme}://{origin.host}:{origin.port}/_sandbox/clock", json={"advance_s": 2})
    response.raise_for_status()


def quiet_syncs(env: Mapping[str, str], urls: Mapping[str, str]) -> tuple[Quiet, list[Quiet], Quiet]:
    """Sync every stream once (the first sync), then each stream again alone, then all of them together, nothing
    having changed: the first sync, each stream's quiet sync, and the one of all together."""
    teams = teams_of(urls["calcom"])
    move_clock_past_the_seed(urls["calcom"])
    first = sync(env, urls, STREAMS, teams)
    bad = [f"{name} {outcome}" for name, outcome in zip(STREAMS, first.outcomes, strict=True) if outcome == "failed"]
    if bad or len(first.outcomes) != len(STREAMS):
        raise RuntimeError(f"the first sync did not run every stream: {first.outcomes}")
    alone = [sync(env, urls, (stream,), teams) for stream in STREAMS]
    return first, alone, sync(env, urls, STREAMS, teams)


def report(alone: list[Quiet], together: Quiet) -> int:
    """Print the per-stream table; return the exit status (1 when any quiet sync did more than it needs)."""
    print(f"{'stream':<26} {'outcome':<10} {'Stripe writes':>13} {'source requests':>15} {'needs':>5} "
          f"{'Stripe reads':>12}")  # fmt: skip
    for row in [*alone, together]:
        name = row.streams[0] if len(row.streams) == 1 else "all together"
        outcome = ",".join(sorted(set(row.outcomes)))
        print(
            f"{name:<26} {outcome:<10} {row.stripe_writes:>13} {row.source_requests:>15} {row.passes:>5} "
            f"{row.stripe_reads:>12}"
        )
    missed = 0
    for row in [*alone, together]:
        name = row.streams[0] if len(row.streams) == 1 else "all together"
        print(f"  {name}: {', '.join(f'{e} {n}' for e, n in sorted(row.source.items())) or 'no source request'}")
        if row.over() or any(outcome not in ("ok",) for outcome in row.outcomes):
            missed = 1
            print(f"    MORE than a quiet sync needs: {'; '.join(row.over()) or 'outcome ' + ','.join(row.outcomes)}")
    print("target: 0 Stripe writes and no more source requests than the passes (one page each) and fixed reads: "
          + ("met" if not missed else "MISSED"))  # fmt: skip
    return missed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=250, help="Cliniko patients (100 a page)")
    parser.add_argument("--products", type=int, default=150, help="Cliniko products")
    parser.add_argument("--invoices", type=int, default=300, help="Cliniko invoices (the invoices/payments scenario)")
    parser.add_argument("--bookings", type=int, default=300, help="Cal.com bookings (250 a page)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    sandbox = ["--profile", "clean", "--patients", str(args.patients), "--products", str(args.products)]
    sandbox += ["--invoices", str(args.invoices), "--invoice-customers", str(max(1, args.invoices // 3))]
    sandbox += ["--calcom", "--calcom-bookings", str(args.bookings), "--calcom-payments", "--seed", str(args.seed)]
    with tempfile.TemporaryDirectory(prefix="clinicsync-bench-") as work, sandbox_process(sandbox, Path(work)) as info:
        env = {key: value for key, value in os.environ.items() if not key.startswith("CLINICSYNC_")}
        env.update(info["env"])
        env["CLINICSYNC_HOME"] = str(Path(work) / "profile")
        env.update(QUIET_SETTINGS)
        urls = {"cliniko": info["cliniko_url"], "calcom": info["calcom_url"], "stripe": info["stripe_url"]}
        first, alone, together = quiet_syncs(env, urls)
    print(f"Quiet sync (nothing changed since the first sync): {args.patients} patients, {args.products} products, "
          f"{args.invoices} invoices, {args.bookings} Cal.com bookings; Stripe test mode")  # fmt: skip
    print(f"the first sync: {first.stripe_writes} Stripe writes, {first.source_requests} source requests")
    return report(alone, together)


if __name__ == "__main__":
    raise SystemExit(main())
