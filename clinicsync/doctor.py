"""`clinicsync doctor`: one read-only look at everything a sync depends on, for the practice manager or whoever
helps them: the profile's folder and free space, the database, the keyring, each key and connection, the sync
lock and what is waiting. It never writes to Stripe or Cliniko and never prints a key.
"""

from __future__ import annotations

import platform
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from clinicsync import __version__
from clinicsync.paths import AppPaths, ProfileFolderError
from clinicsync.secrets import CALCOM_API_KEY, CLINIKO_API_KEY, STRIPE_API_KEY, LayeredSecrets, SecretStoreError
from clinicsync.store.settings import Settings

if TYPE_CHECKING:
    from clinicsync.connections import ConnectionReport

Status = Literal["ok", "warning", "problem"]
MARK: dict[Status, str] = {"ok": "✓", "warning": "!", "problem": "✗"}

# Below these, a sync may stop half-way with "the disk is full" (history and the outbox grow with every run).
LOW_SPACE_BYTES = 500 * 1024 * 1024
TOO_LITTLE_SPACE_BYTES = 50 * 1024 * 1024

# What each failing connection means for the command's exit code (the CLI's documented codes).
EXIT_OF_PROBLEM = {
    "config": 2,
    "wrong_key": 3,
    "revoked_key": 3,
    "wrong_shard": 3,
    "permission": 3,
    "unreachable": 5,
    "rate_limited": 5,
}


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    exit_code: int = 0  # for a problem: the CLI exit code it stands for (1 when no more specific one fits)
    blocking: bool = False  # the checks that need what this one checked are not run

    def line(self) -> str:
        return f"{MARK[self.status]} {self.name}: {self.detail}"


def worst_exit_code(checks: list[Check]) -> int:
    """0 when nothing is a problem; else the first problem's code (they are listed in dependency order)."""
    return next((check.exit_code or 1 for check in checks if check.status == "problem"), 0)


def check_folder(paths: AppPaths, *, disk_usage: Callable[[Path], tuple[int, int, int]] = shutil.disk_usage) -> Check:
    folder = paths.data_dir
    try:
        paths.ensure()
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".doctor-"):
            pass
    except ProfileFolderError as exc:
        return Check("Data folder", "problem", str(exc), 2, blocking=True)
    except OSError as exc:
        return Check("Data folder", "problem", paths.folder_problem(folder, exc), 2, blocking=True)
    free = disk_usage(folder)[2]
    detail = f"{folder} ({_size(free)} free)"
    if free < TOO_LITTLE_SPACE_BYTES:
        return Check("Data folder", "problem", f"{detail}: too little space to sync; free some space", 2)
    if free < LOW_SPACE_BYTES:
        return Check("Data folder", "warning", f"{detail}: space is running low")
    return Check("Data folder", "ok", detail)


def check_database(paths: AppPaths) -> Check:
    """Open (and migrate) the database, then ask SQLite to check it."""
    from clinicsync.store import migrations
    from clinicsync.store.db import open_database, storage_problem

    try:
        db = open_database(paths.db_path)
        verdict = db.execute_sql("PRAGMA quick_check").fetchone()[0]
    except Exception as exc:
        message = storage_problem(exc)
        if message is None:
            raise
        return Check("Database", "problem", message, 2)
    # With WAL, recent writes live in the -wal file until a checkpoint: count both.
    files = (paths.db_path, paths.db_path.with_name(paths.db_path.name + "-wal"))
    size = sum(file.stat().st_size for file in files if file.exists())
    version = f"schema v{migrations.current_version(db)}"
    if verdict != "ok":
        return Check("Database", "problem", f"{paths.db_path} is damaged ({verdict}); restore it from a backup", 2)
    return Check("Database", "ok", f"{paths.db_path} ({_size(size)}, {version}, integrity ok)")


def check_keyring(secrets: LayeredSecrets, *, keys_all_from_environment: bool) -> Check:
    try:
        backend = secrets.keyring().backend_name
    except SecretStoreError as exc:
        if keys_all_from_environment:
            return Check("Keyring", "warning", f"not usable ({exc}); the keys come from the environment")
        return Check("Keyring", "problem", str(exc), 2)
    return Check("Keyring", "ok", backend)


def check_keys(secrets: LayeredSecrets) -> Iterator[Check]:
    # A clinic syncs from Cliniko, Cal.com or both: the Cliniko key is needed unless the Cal.com key is set.
    calcom_only = _is_set(secrets, CALCOM_API_KEY) and not _is_set(secrets, CLINIKO_API_KEY)
    for name, label, required in (
        (CLINIKO_API_KEY, "Cliniko key", not calcom_only),
        (STRIPE_API_KEY, "Stripe key", True),
        (CALCOM_API_KEY, "Cal.com key", False),
    ):
        try:
            source = secrets.source(name)
        except SecretStoreError:
            source = None  # the keyring check above says why
        problem = _key_problem(secrets, name) if source is not None else None
        if problem is not None:
            yield Check(label, "problem", f"set (from the {source}), but unusable: {problem}", 2)
        elif source is not None:
            yield Check(label, "ok", f"set (from the {source})")
        elif required:
            yield Check(label, "problem", f"not set: `clinicsync config set-secret {name}` or Connections", 2)
        elif name == CLINIKO_API_KEY:
            yield Check(label, "ok", "not set (this clinic syncs from Cal.com only)")
        else:
            yield Check(label, "ok", "not set (optional until a Cal.com stream is on)")


def _is_set(secrets: LayeredSecrets, name: str) -> bool:
    try:
        return secrets.source(name) is not None
    except SecretStoreError:
        return False


def check_settings(settings: Settings) -> Iterator[Check]:
    """Every setting a sync would refuse to use (a hand-edited row, NaN, a bad environment value), by name."""
    problems = settings.problems()
    if not problems:
        stored = sum(item.source == "stored" for item in settings.all())
        yield Check("Settings", "ok", f"{stored} stored, all usable" if stored else "all defaults")
        return
    for item in problems:
        yield Check("Settings", "problem", item.problem, 2)


def _key_problem(secrets: LayeredSecrets, name: str) -> str | None:
    """What is wrong with a key's shape (a publishable Stripe key), without any request; None when fine."""
    if name != STRIPE_API_KEY:
        return None
    from clinicsync.connections import stripe_key_problem

    try:
        return stripe_key_problem(secrets.get(name) or "")
    except SecretStoreError:
        return None


def check_connections(secrets: LayeredSecrets, settings: Settings) -> Iterator[Check]:
    """Each configured service's own test-connection (the one the Connections tab runs): reads only."""
    from clinicsync import connections

    def get(key: str) -> object:  # an unusable value is reported by the Settings check; test with the default
        return settings.lookup(key).value

    tests: list[tuple[str, str, Callable[[str], connections.ConnectionReport]]] = [
        (
            "Cliniko",
            CLINIKO_API_KEY,
            lambda key: connections.test_cliniko(
                key,
                shard=get("cliniko.shard") or None,
                contact_email=get("contact_email") or "",
                base_url=get("cliniko.base_url") or None,
            ),
        ),
        ("Stripe", STRIPE_API_KEY, lambda key: connections.test_stripe(key, base_url=get("stripe.base_url") or None)),
        ("Cal.com", CALCOM_API_KEY, lambda key: connections.test_calcom(key, base_url=get("calcom.base_url") or None)),
    ]
    for label, name, test in tests:
        try:
            key = secrets.get(name)
        except SecretStoreError:
            key = None
        if not key:
            continue
        report = test(key)
        if report.ok:
            yield Check(f"{label} connection", "ok", _connected(report))
        else:
            yield Check(f"{label} connection", "problem", report.message, EXIT_OF_PROBLEM.get(report.problem or "", 1))


def check_sync_lock(paths: AppPaths) -> Check:
    from clinicsync.profile_lock import ProfileLock, SyncLocked
    from clinicsync.store import queries

    try:
        with ProfileLock(paths.lock_file):
            # Nobody syncs: a run still marked running died with its process; say so rather than "running".
            queries.close_interrupted_runs()
            return Check("Sync lock", "ok", "free (no sync is running for this profile)")
    except SyncLocked:
        return Check("Sync lock", "ok", "held: a sync is running for this profile right now")


def check_work_waiting() -> Iterator[Check]:
    """Per stream of the most recently used account pair: the last run, queued writes and open reviews."""
    from clinicsync.store import queries

    rows = queries.stream_status()
    if not rows:
        yield Check("Syncs", "ok", "none has run yet")
        return
    pair_id = rows[0]["pair_id"]
    for row in (r for r in rows if r["pair_id"] == pair_id):
        last = f"last run {row['last_run']} ({row['last_outcome']})" if row["last_run"] else "never run"
        waiting = f"{row['queued']} write(s) queued, {row['review']} record(s) for review"
        status: Status = "warning" if row["review"] or row["last_outcome"] == "failed" else "ok"
        yield Check(row["stream"], status, f"{last}; {waiting}")


def run_checks(paths: AppPaths, secrets: LayeredSecrets, settings: Settings, *, offline: bool) -> Iterator[Check]:
    """Every check, in dependency order; later ones that need the database are skipped if it cannot open."""
    yield Check("ClinicSync", "ok", f"{__version__} on Python {platform.python_version()} ({platform.system()})")
    folder = check_folder(paths)
    yield folder
    # No database to open in a folder that cannot be used; the checks that need neither still run.
    database = folder if folder.blocking else check_database(paths)
    if database is not folder:
        yield database
    env_only = _from_environment(secrets, STRIPE_API_KEY) and any(
        _from_environment(secrets, name) for name in (CLINIKO_API_KEY, CALCOM_API_KEY)
    )
    yield check_keyring(secrets, keys_all_from_environment=env_only)
    yield from check_keys(secrets)
    if database.status == "problem":
        return
    yield from check_settings(settings)
    if not offline:
        yield from check_connections(secrets, settings)
    yield check_sync_lock(paths)
    yield from check_work_waiting()


def _from_environment(secrets: LayeredSecrets, name: str) -> bool:
    try:
        return secrets.source(name) == "environment"
    except SecretStoreError:
        return False


def _connected(report: ConnectionReport) -> str:
    extras = [report.mode_label, report.shard and f"shard {report.shard}"]
    return (report.account_name or "connected") + "".join(f" · {extra}" for extra in extras if extra)


def _size(count: int) -> str:
    if count < 1024 * 1024:
        return f"{count / 1024:.0f} KB"
    if count < 1024**3:
        return f"{count / 1024**2:.1f} MB"
    return f"{count / 1024**3:.1f} GB"
