"""The `clinicsync` command: the desktop app by default, and headless commands for servers and scripts.

Exit codes (also in the README): 0 ok; 1 finished with record errors or review items; 2 usage or configuration
error; 3 authentication or permission; 4 another sync is running; 5 a service unreachable.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from clinicsync import labels
from clinicsync.outcomes import Outcome, StopKind

EXIT_OK = 0
EXIT_ATTENTION = 1
EXIT_CONFIG = 2
EXIT_AUTH = 3
EXIT_LOCKED = 4
EXIT_UNREACHABLE = 5

_EXIT_OF_STOP = {
    StopKind.AUTH: EXIT_AUTH,
    StopKind.PERMISSION: EXIT_AUTH,
    StopKind.SOURCE_AUTH: EXIT_AUTH,
    StopKind.SOURCE_PERMISSION: EXIT_AUTH,
    StopKind.UNAVAILABLE: EXIT_UNREACHABLE,
    StopKind.SOURCE_UNAVAILABLE: EXIT_UNREACHABLE,
    StopKind.MAPPING: EXIT_CONFIG,  # the stream's stored field mapping cannot be used (the message says which row)
    StopKind.STORAGE: EXIT_CONFIG,  # the database could not be written or read: something to fix on this machine
}


MAX_SECRET_CHARS = 4096  # real API keys are a few hundred characters at most


class UsageError(Exception):
    pass


def out(text: str = "") -> None:
    from clinicsync.logging_setup import redact

    print(redact(text))


def err(text: str) -> None:
    from clinicsync.logging_setup import redact

    print(redact(text), file=sys.stderr)


# --- sync ------------------------------------------------------------------------------------------------
def cmd_sync(args: argparse.Namespace) -> int:
    from clinicsync.app import bootstrap
    from clinicsync.sync.service import describe, run_sync

    ctx = bootstrap()
    if not args.ignore_pause and (why := _paused(ctx)) is not None:
        err(why)
        return EXIT_CONFIG
    streams = [args.stream] if args.stream else None
    results = run_sync(ctx.paths, ctx.settings, ctx.secrets, streams=streams, trigger="cli", dry_run=args.dry_run)
    code = EXIT_OK
    for result in results:
        out(f"{result.stream}: {result.outcome} — {labels.counts_words(result.counts, result.stream)}")
        if result.message:
            out(f"  {result.message}")
        if result.plan is not None:
            out("  plan: " + json.dumps(result.plan, ensure_ascii=False, indent=2).replace("\n", "\n  "))
        if args.json:
            out(json.dumps(describe(result)))
        code = max(code, _exit_for(result.outcome, result.stop_kind))
    return code


def _paused(ctx: Any) -> str | None:
    """Why `sync --once` must not start (the pause every trigger honours, in the runner's words), or None."""
    from clinicsync.store.settings import spec_for
    from clinicsync.sync.runner import PAUSED_MESSAGE

    item = ctx.settings.lookup("sync.paused")
    if not item.value:
        return None
    if item.source == "environment":
        resume = f"unset {spec_for('sync.paused').env_name} (or set it to false)"
    else:
        resume = "run `clinicsync config set sync.paused false` (or untick Pause syncing in the app)"
    return (
        f"{PAUSED_MESSAGE} Nothing was read or sent. To resume, {resume}; to sync once while paused, run "
        "`clinicsync sync --once --ignore-pause`."
    )


def _exit_for(outcome: str, stop_kind: str | None) -> int:
    if stop_kind in _EXIT_OF_STOP:
        return _EXIT_OF_STOP[stop_kind]
    return EXIT_OK if outcome == Outcome.OK else EXIT_ATTENTION


# --- status ----------------------------------------------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    from clinicsync.app import bootstrap
    from clinicsync.store import queries

    ctx = bootstrap()
    queries.close_interrupted_runs_if_idle(ctx.paths)  # a run whose process died is not "running"
    _print_attention(ctx.paths)
    rows = queries.stream_status()
    if not rows and queries.real_runs_exist():  # runs that stopped before reading anything
        out("No sync has got as far as reading records yet; `clinicsync history` shows each attempt and why.")
        return EXIT_OK
    if not rows:
        out("No sync has run yet. Run `clinicsync sync --once`, or try the sandbox: `clinicsync sandbox`.")
        return EXIT_OK
    for row in rows:
        out(f"{row['stream']}  [{row['pair']}]")
        out(f"  last run:   {row['last_run'] or 'never'}  {row['last_outcome'] or ''}")
        if row["last_counts"]:
            out("  counts:     " + labels.counts_words(row["last_counts"], row["stream"]))
        out(f"  cursor:     {row['cursor'] or '(full read next time)'}")
        out(f"  queued:     {row['queued']} write(s) waiting for Stripe")
        out(f"  review:     {row['review']} record(s) need a decision")
    return EXIT_OK


# --- history ---------------------------------------------------------------------------------------------
def cmd_history(args: argparse.Namespace) -> int:
    from clinicsync.app import bootstrap
    from clinicsync.store import queries

    ctx = bootstrap()
    queries.close_interrupted_runs_if_idle(ctx.paths)
    runs = queries.history_runs(limit=args.limit)
    if args.stream:
        runs = [run for run in runs if run.stream == args.stream]
    if args.failed:
        runs = [run for run in runs if run.failed or run.outcome in ("failed", "interrupted")]
    if not runs:
        out("No failed records in the recent runs." if args.failed else "No sync has run yet.")
        return EXIT_OK
    for run in runs:
        outcome = queries.OUTCOME_WORDS.get(run.outcome, run.outcome)
        if run.dry_run:
            outcome += " (plan only, nothing written)"
        took = f", {(run.finished_at - run.started_at).total_seconds():.1f} s" if run.finished_at else ""
        trigger = _TRIGGER_WORDS.get(run.trigger, run.trigger)
        out(f"#{run.id}  {run.started_at:%Y-%m-%d %H:%M:%S} UTC  {run.stream}  {trigger}: {outcome}{took}")
        out("    " + labels.counts_words({name: getattr(run, name) for name in queries.COUNT_FIELDS}, run.stream))
        if run.message:
            out("    " + run.message.replace("\n", "\n    "))
        if args.failed:
            for event in queries.failed_events(run.id):
                name = f" {event.display_name}" if event.display_name else ""
                out(f"      {event.source_id}{name}: {event.message or 'no reason recorded'}")
    return EXIT_OK


_TRIGGER_WORDS = {"manual": "Sync now", "schedule": "Scheduled", "cli": "Command line", "retry": "Retry failed"}


def _positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of runs (1 or more)")
    return number


def _print_attention(paths: Any) -> None:
    """Active alerts first (what a person must do), then who runs the schedule."""
    from clinicsync.sync import attach

    alerts = attach.active_alerts()
    if alerts:
        out("Needs your attention:")
        for alert in alerts:
            out(f"  ! {alert.title} (since {alert.since:%Y-%m-%d %H:%M} UTC)")
            out(f"    {alert.message}")
        out()
    holder = attach.scheduler_holder(paths)
    if holder is None:
        out("Schedule: not running (start the app, or `clinicsync serve`).")
    else:
        who = "the ClinicSync window" if holder.kind == "window" else "`clinicsync serve`"
        nexts = sorted(t for t in holder.next_runs.values() if t)
        when = f", next check {nexts[0].replace('T', ' ')} UTC" if nexts else ""
        out(f"Schedule: run by {who} (pid {holder.pid}), {holder.state}{when}.")
    out()


# --- review ----------------------------------------------------------------------------------------------
def cmd_review(args: argparse.Namespace) -> int:
    from clinicsync.app import bootstrap
    from clinicsync.store import queries

    bootstrap()
    if args.action == "list":
        items = queries.open_reviews()
        if not items:
            out("Nothing needs review.")
        for item in items:
            candidates = ", ".join(item.candidates) or "-"
            out(f"#{item.id}  {item.stream}  {item.source_id}  {item.display_name}")
            out(f"     {item.reason}: {item.detail}")
            out(f"     candidates: {candidates}")
        return EXIT_OK
    if args.action == "create":
        from clinicsync.labels import stripe_object_words
        from clinicsync.store.models import ReviewItem
        from clinicsync.streams import STREAMS

        item = ReviewItem.get_or_none(ReviewItem.id == args.id)
        stream = STREAMS.get(item.stream) if item is not None else None
        if stream is not None and not stream.creates:
            kind = stripe_object_words(stream.stripe_object)
            err(
                f"Review #{args.id}: ClinicSync never creates a Stripe {kind} for this kind of record; link one of "
                "the candidates, or ignore it."
            )
            return EXIT_CONFIG
    try:
        item = queries.resolve_review(args.id, args.action, getattr(args, "stripe_id", None))
    except queries.ReviewError as exc:
        err(str(exc))
        return EXIT_CONFIG
    out(f"Review #{item.id} ({item.display_name}): {args.action} — the next sync carries it out.")
    return EXIT_OK


# --- plan ------------------------------------------------------------------------------------------------
def cmd_plan(args: argparse.Namespace) -> int:
    from clinicsync.app import bootstrap
    from clinicsync.store import queries

    bootstrap()
    streams = [args.stream] if args.stream else queries.streams_with_plans()
    if not streams:
        out("No plan yet; run `clinicsync sync --once --dry-run`.")
        return EXIT_OK
    for stream in streams:
        code = _approve_plan(stream) if args.action == "approve" else _show_plan(stream)
        if code != EXIT_OK:
            return code
    return EXIT_OK


def _approve_plan(stream: str) -> int:
    from clinicsync.store import queries

    try:
        plan = queries.approve_latest_plan(stream)
    except queries.PlanError as exc:
        err(str(exc))
        return EXIT_CONFIG
    out(f"Plan #{plan.id} for {stream} approved; the next sync writes to Stripe.")
    return EXIT_OK


def _show_plan(stream: str) -> int:
    from clinicsync.store import queries

    plan = queries.latest_plan(stream)
    if plan is None:
        out(f"No plan for {stream} yet; run `clinicsync sync --once --dry-run`.")
        return EXIT_OK
    summary = plan.summary
    state = f"approved {plan.approved_at:%Y-%m-%d %H:%M} UTC" if plan.approved_at else "not approved"
    out(
        f"Plan #{plan.id} for {stream} ({summary.get('stripe_mode', '?')} mode), made "
        f"{plan.created_at:%Y-%m-%d %H:%M} UTC, {state}"
    )
    out("  " + labels.counts_words(summary["counts"], stream))
    out("  fields sent to Stripe: " + ", ".join(summary.get("fields", [])))
    if summary.get("stream_note"):
        out(f"  in Stripe: {summary['stream_note']}")
    if summary.get("scope"):
        out(f"  records synced: {summary['scope']} ({summary.get('out_of_scope', 0)} left out)")
        if summary.get("scope_note"):
            out(f"    ({summary['scope_note']})")
    for action, rows in summary.get("samples", {}).items():
        out(f"  {action}:")
        for row in rows:
            target = f" → {row['stripe_id']}" if row.get("stripe_id") else ""
            out(f"    {row['source_id']}  {row['name']}{target}  {row.get('message') or ''}".rstrip())
    return EXIT_OK


# --- config ----------------------------------------------------------------------------------------------
def cmd_config(args: argparse.Namespace) -> int:
    from clinicsync.app import bootstrap
    from clinicsync.secrets import SECRET_NAMES
    from clinicsync.store.settings import SettingError

    ctx = bootstrap()
    try:
        if args.action == "list":
            unusable = []
            for item in ctx.settings.all():
                if item.problem:  # never shown as the default: that is not what a sync would do
                    unusable.append(item)
                    out(f"{item.key} = (unusable, see below)  ({item.source})")
                else:
                    out(f"{item.key} = {json.dumps(item.value)}  ({item.source})")
            for name in SECRET_NAMES:
                source = _secret_source(ctx, name)
                out(f"secret {name}: {'set in the ' + source if source else 'not set'}")
            for item in unusable:
                err(item.problem)
            return EXIT_CONFIG if unusable else EXIT_OK
        elif args.action == "get":
            item = ctx.settings.lookup(args.key)
            if item.problem:
                err(item.problem)
                return EXIT_CONFIG
            out(f"{json.dumps(item.value)}  ({item.source})")
        elif args.action == "set":
            value = ctx.settings.set(args.key, args.value)
            note = ""
            if ctx.settings.lookup(args.key).source == "environment":
                note = " (the environment overrides it while its variable is set)"
            out(f"{args.key} = {json.dumps(value)}{note}")
        elif args.action == "unset":
            ctx.settings.unset(args.key)
            out(f"{args.key} reset to its default")
        elif args.action == "set-secret":
            return _set_secret(ctx, args.name, SECRET_NAMES)
    except SettingError as exc:
        err(str(exc))
        return EXIT_CONFIG
    return EXIT_OK


def _secret_source(ctx: Any, name: str) -> str | None:
    from clinicsync.secrets import SecretStoreError

    try:
        return ctx.secrets.source(name)
    except SecretStoreError:
        return None


def _set_secret(ctx: Any, name: str, known: Sequence[str]) -> int:
    from clinicsync.connections import stripe_key_problem
    from clinicsync.secrets import STRIPE_API_KEY

    if name not in known:
        err(f"Unknown secret {name!r}; known: {', '.join(known)}")
        return EXIT_CONFIG
    if sys.stdin.isatty():
        value = getpass.getpass(f"{name} (input hidden): ").strip()
    else:
        line = sys.stdin.readline(MAX_SECRET_CHARS + 1)  # bounded: a pipe from /dev/zero has no line end
        if len(line.rstrip("\r\n")) > MAX_SECRET_CHARS:
            err(f"The input is longer than any API key ({MAX_SECRET_CHARS:,} characters); the secret was not changed.")
            return EXIT_CONFIG
        value = line.strip()
    if not value:
        err("Nothing entered; the secret was not changed.")
        return EXIT_CONFIG
    if name == STRIPE_API_KEY and (problem := stripe_key_problem(value)) is not None:
        err(f"{problem} The secret was not changed.")
        return EXIT_CONFIG
    ctx.secrets.set(name, value)
    out(f"{name} saved in the system keyring ({ctx.secrets.backend_name}).")
    return EXIT_OK


# --- mapping ---------------------------------------------------------------------------------------------
def cmd_mapping(args: argparse.Namespace) -> int:
    from clinicsync.cli_mapping import run

    return run(args, out, err)


# --- reconcile -------------------------------------------------------------------------------------------
def cmd_reconcile(args: argparse.Namespace) -> int:
    from clinicsync.cli_reconcile import run

    return run(args, out, err)


# --- sandbox and GUI -------------------------------------------------------------------------------------
def cmd_sandbox(args: argparse.Namespace, rest: list[str]) -> int:
    from clinicsync.sandbox.launcher import main as sandbox_main

    return sandbox_main(rest) or EXIT_OK


def cmd_gui(args: argparse.Namespace) -> int:
    if getattr(args, "home", None):  # what a start-at-login entry passes for a profile other than the default
        from clinicsync.paths import HOME_ENV_VAR

        os.environ[HOME_ENV_VAR] = args.home
    try:
        from clinicsync.ui.main import run_gui
    except ImportError as exc:  # a broken install or bundle: say so, and fail, rather than exit as if all is well
        err(f"The desktop window cannot start: {exc}. Reinstall ClinicSync (`make run` from a checkout does it).")
        err("Headless use still works: `clinicsync sync --once`, `clinicsync status`, `clinicsync doctor`.")
        return EXIT_CONFIG
    return run_gui(minimized=bool(getattr(args, "minimized", False)))


# --- serve and start at login ------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from clinicsync.cli_serve import run

    return run(args, out, err)


def cmd_autostart(args: argparse.Namespace) -> int:
    from clinicsync import autostart
    from clinicsync.paths import AppPaths

    paths = AppPaths.resolve(os.environ)
    try:
        if args.action == "on":
            where = autostart.enable(paths)
            out(f"ClinicSync will start in the tray when you log in ({where}).")
        elif args.action == "off":
            removed = autostart.disable(paths)
            out("ClinicSync will no longer start when you log in." if removed else "It was not set to start at login.")
        else:
            enabled = autostart.is_enabled(paths)
            out("Starts at login: " + ("yes" if enabled else "no"))
    except autostart.AutostartError as exc:
        err(str(exc))
        return EXIT_CONFIG
    return EXIT_OK


# --- doctor ----------------------------------------------------------------------------------------------
def cmd_doctor(args: argparse.Namespace) -> int:
    """Check everything a sync depends on; reads only. Not through bootstrap: a damaged database is a finding."""
    import logging

    from clinicsync import doctor
    from clinicsync.logging_setup import register_secret, setup_logging
    from clinicsync.paths import AppPaths, ProfileFolderError
    from clinicsync.secrets import open_secrets
    from clinicsync.store.settings import Settings

    env = dict(os.environ)
    try:
        paths = AppPaths.resolve(env)
    except ProfileFolderError as exc:  # a folder name ClinicSync cannot use: nothing else can be checked
        out(doctor.Check("Data folder", "problem", str(exc)).line())
        return EXIT_CONFIG
    try:
        paths.ensure()
    except ProfileFolderError:
        pass  # the folder check says why; the checks that need no folder still run
    else:
        setup_logging(paths, level=logging.INFO)
    secrets = open_secrets(paths, env, on_secret=register_secret)
    checks = []
    for check in doctor.run_checks(paths, secrets, Settings(env), offline=args.offline):
        out(check.line())
        checks.append(check)
    problems = sum(check.status == "problem" for check in checks)
    warnings = sum(check.status == "warning" for check in checks)
    if problems:
        out(f"\n{problems} problem(s) to fix" + (f", {warnings} warning(s)." if warnings else "."))
    else:
        out("\nEverything a sync needs is in place" + (f" ({warnings} warning(s))." if warnings else "."))
    return doctor.worst_exit_code(checks)


# --- parsing ---------------------------------------------------------------------------------------------
def _review_id(text: str) -> int:
    try:
        return int(text.strip().removeprefix("#"))  # `review list` prints them as "#3"
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a review item number; `clinicsync review list` shows them"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clinicsync", description="Keep Cliniko and Stripe in agreement.")
    sub = parser.add_subparsers(dest="command")
    gui = sub.add_parser("gui", help="open the desktop app (the default)")
    gui.add_argument("--minimized", action="store_true", help="start in the tray, without showing the window")
    gui.add_argument("--home", help="use the profile in this folder (as CLINICSYNC_HOME does)")

    sync = sub.add_parser("sync", help="run a sync")
    sync.add_argument("--once", action="store_true", help="run each stream once and exit")
    sync.add_argument("--stream", help="only this stream, e.g. cliniko.patients")
    sync.add_argument("--dry-run", action="store_true", help="compute and save the plan; change nothing")
    sync.add_argument("--json", action="store_true", help="also print each run's counts as JSON")
    sync.add_argument("--ignore-pause", action="store_true", help="sync even though syncing is paused")

    plan = sub.add_parser("plan", help="the saved plan of the last dry run; approve it before a first live sync")
    plan.add_argument("action", choices=("show", "approve"))
    plan.add_argument("--stream", help="only this stream's plan (default: every stream that has one)")

    sub.add_parser("status", help="per stream: last run, counts, cursor, queue, review items")

    history = sub.add_parser("history", help="recent runs, newest first; --failed: the failed records and why")
    history.add_argument("--failed", action="store_true", help="only runs with failed records, and those records")
    history.add_argument("--limit", type=_positive, default=20, help="how many recent runs to look at (default 20)")
    history.add_argument("--stream", help="only this stream, e.g. cliniko.patients")

    review = sub.add_parser("review", help="records waiting for a person's decision")
    review_sub = review.add_subparsers(dest="action", required=True)
    review_sub.add_parser("list")
    link = review_sub.add_parser("link", help="link the record to this Stripe object")
    link.add_argument("id", type=_review_id)
    link.add_argument("stripe_id")
    review_sub.add_parser("create", help="create a new Stripe object for the record").add_argument(
        "id", type=_review_id
    )
    review_sub.add_parser("ignore", help="never sync this record").add_argument("id", type=_review_id)

    config = sub.add_parser("config", help="settings (secrets go to the system keyring)")
    config_sub = config.add_subparsers(dest="action", required=True)
    config_sub.add_parser("list")
    config_sub.add_parser("get").add_argument("key")
    config_set = config_sub.add_parser("set")
    config_set.add_argument("key")
    config_set.add_argument("value")
    config_sub.add_parser("unset").add_argument("key")
    config_sub.add_parser("set-secret", help="prompt for an API key and store it in the keyring").add_argument("name")

    sub.add_parser("sandbox", help="start the built-in sandbox clinic (Cliniko and Stripe emulators)", add_help=False)

    doctor = sub.add_parser("doctor", help="check the folder, database, keyring, keys and connections (reads only)")
    doctor.add_argument("--offline", action="store_true", help="skip the connection tests")

    from clinicsync.cli_serve import add_parser as add_serve_parser

    add_serve_parser(sub)
    autostart = sub.add_parser("autostart", help="start ClinicSync in the tray when you log in")
    autostart.add_argument("action", choices=("on", "off", "status"))

    from clinicsync.cli_mapping import add_parser as add_mapping_parser

    add_mapping_parser(sub)
    from clinicsync.cli_reconcile import add_parser as add_reconcile_parser

    add_reconcile_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sandbox"]:  # the sandbox parses its own options
        return cmd_sandbox(argparse.Namespace(), argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_CONFIG if exc.code else EXIT_OK
    if args.command == "sync" and not args.once:
        err(
            "Scheduled syncing runs in the desktop app, or headless with `clinicsync serve`; use "
            "`clinicsync sync --once` for a single run."
        )
        return EXIT_CONFIG
    try:
        return _dispatch(args)
    except BrokenPipeError:
        # The reader went away (`clinicsync mapping show | head`): stop quietly, as other command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


_EXIT_OF_FAILURE = {
    "locked": EXIT_LOCKED,
    "config": EXIT_CONFIG,
    "storage": EXIT_CONFIG,
    "cancelled": EXIT_ATTENTION,
    "auth": EXIT_AUTH,
    "unreachable": EXIT_UNREACHABLE,
    "error": EXIT_ATTENTION,
}


def _dispatch(args: argparse.Namespace) -> int:
    from clinicsync.sync.service import failure_of
    from clinicsync.wording import use_cli_wording

    handlers = {"sync": cmd_sync, "plan": cmd_plan, "status": cmd_status, "review": cmd_review, "config": cmd_config}
    handlers["history"] = cmd_history
    handlers |= {"mapping": cmd_mapping, "doctor": cmd_doctor, "serve": cmd_serve, "autostart": cmd_autostart}
    handlers["reconcile"] = cmd_reconcile
    handler = handlers.get(args.command, cmd_gui)
    try:
        if handler is cmd_gui:
            return handler(args)
        with use_cli_wording():  # messages name `clinicsync` commands, not the window's tabs
            return handler(args)
    except Exception as exc:
        failure = failure_of(exc)
        if failure is None:
            raise
        kind, message = failure
        err(message)
        return _EXIT_OF_FAILURE[kind]
