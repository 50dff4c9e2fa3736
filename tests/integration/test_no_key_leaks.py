"""API keys live only in the keyring or the environment, and clinical fields never leave the source.

After syncs of the hard and hostile profiles (with transient faults, so retries get logged), a Stripe key
revoked in the middle of a run, a Cliniko key revoked in the middle of a run, and failing CLI runs, no API
key — as it is, or in the base64 form HTTP Basic auth uses — may appear in any file of the profile (database,
-wal, -shm, settings, every log including rotated ones) or in anything the CLI printed. The in-process runs
log at DEBUG into tiny log files (2 kB: the HTTP and SQL libraries stay at WARNING), so rotation happens and
third-party output is covered too.
"""

from __future__ import annotations

import base64
import logging
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clinicsync import app, logging_setup
from clinicsync.sync.service import run_sync
from tests.support import admin, profile_env, stats, sync_once

PATIENTS = "cliniko.patients"

REPO = Path(__file__).resolve().parents[2]
# Transient faults on both services, so retries (and the errors behind them) get logged. A sync makes only a few
# Cliniko requests, so Cliniko's rate is higher (and its first request fails with this seed).
FAULTS = "before:5xx=0.06,before:429=0.03,after:reset=0.02,seed=11"
CLINIKO_FAULTS = "before:5xx=0.3,before:429=0.05,seed=1"
OTHER_STRIPE_KEY = "sk_test_sandbox_clinic_b"
WRONG_STRIPE_KEY = "sk_test_sandbox_wrong"
WRONG_CLINIKO_KEY = "WrongClinikoKey0000Sandbox-au1"
CLINICAL_FIELDS = ("notes", "medicare", "date_of_birth", "dva_card_number", "appointment_notes", "emergency_contact")


def key_forms(key: str) -> set[str]:
    """The key as is (and without a Cliniko shard suffix), and base64 as Basic auth sends it."""
    variants = {key}
    if "-" in key and len(key.rsplit("-", 1)[0]) >= 8:
        variants.add(key.rsplit("-", 1)[0])
    forms = set(variants)
    for variant in variants:
        for text in (variant + ":", variant, ":" + variant):
            encoded = base64.b64encode(text.encode()).decode()
            urlsafe = base64.urlsafe_b64encode(text.encode()).decode()
            forms |= {encoded, encoded.rstrip("="), urlsafe, urlsafe.rstrip("=")}
        # The fully determined part of base64 of anything that starts with the key ("key:" or "key:password").
        whole = len(variant) // 3 * 4
        forms.add(base64.b64encode(variant.encode()).decode()[:whole])
    return forms


def files_under(home: Path) -> list[Path]:
    return sorted(path for path in home.rglob("*") if path.is_file())


def leaks(blobs: Iterable[tuple[str, bytes]], needles: dict[str, set[str]]) -> list[str]:
    found = []
    for where, blob in blobs:
        for key, forms in needles.items():
            for form in forms:
                if form.encode() in blob:
                    found.append(f"{key!r} as {form!r} in {where}")
    return found


@pytest.fixture
def tiny_debug_logs(monkeypatch) -> Iterator[None]:
    """In-process runs log at DEBUG into 2 kB files, keeping every rotated file."""
    root = logging.getLogger()
    level = root.level

    def setup(paths, *, level: int = logging.INFO, console: bool = False) -> None:
        logging_setup.setup_logging(paths, level=logging.DEBUG, console=console, max_bytes=2_048, backup_count=5000)

    monkeypatch.setattr(app, "setup_logging", setup)
    yield
    logging_setup.teardown_logging()
    root.setLevel(level)


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "clinicsync", *args], env=env, cwd=REPO, capture_output=True, timeout=120
    )


def revoke_when_reading(url: str, action: str, **params: Any):
    """A progress callback that revokes a key once the run is under way (after the accounts were read)."""
    done: list[bool] = []

    def progress(stream: str, count: int, total: int | None, step: str) -> None:
        if not done:
            done.append(True)
            admin(url, action, **params)

    return progress


def exercise_profile(make_sandbox, tmp_path: Path, profile: str, outputs: list[tuple[str, bytes]]) -> tuple[Path, Any]:
    sandbox = make_sandbox(profile=profile, patients=40, faults=FAULTS)
    admin(sandbox.cliniko_url, "faults", spec=CLINIKO_FAULTS)
    home = tmp_path / profile
    env = profile_env(home, sandbox.env(), PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring")

    def cli(*args: str, **overrides: str) -> int:
        done = run_cli(env | overrides, *args)
        outputs.append((f"{profile}: clinicsync {' '.join(args)} stdout", done.stdout))
        outputs.append((f"{profile}: clinicsync {' '.join(args)} stderr", done.stderr))
        return done.returncode

    # A full sync in-process (DEBUG logs), then the CLI's view of it.
    first = sync_once(env)
    assert first.counts["created"] > 20, first
    assert stats(sandbox.stripe_url)["faulted_total"] > 0, "the run was meant to meet faults"
    assert stats(sandbox.cliniko_url)["faulted_total"] > 0, "the run was meant to meet faults"
    assert cli("sync", "--once") in (0, 1)
    assert cli("config", "set", "retry.max_attempts", "7") == 0
    for args in (("status",), ("review", "list"), ("config", "list"), ("sync", "--once", "--dry-run")):
        assert cli(*args) in (0, 1), args

    # Stripe revokes the key while the run is under way: queued writes fail with a 401.
    admin(sandbox.cliniko_url, "edit", count=8)
    ctx = app.bootstrap(env)
    progress = revoke_when_reading(sandbox.stripe_url, "revoke", key=sandbox.stripe_key)
    (revoked,) = run_sync(ctx.paths, ctx.settings, ctx.secrets, streams=[PATIENTS], trigger="test", progress=progress)
    assert (revoked.outcome, revoked.stop_kind) == ("failed", "auth"), revoked
    assert cli("sync", "--once") == 3
    assert cli("sync", "--once", CLINICSYNC_STRIPE_API_KEY=WRONG_STRIPE_KEY) == 3

    # Another Stripe account (so a full read again), and Cliniko revokes its key in the middle of it.
    other = env | {"CLINICSYNC_STRIPE_API_KEY": OTHER_STRIPE_KEY}
    ctx = app.bootstrap(other)
    progress = revoke_when_reading(sandbox.cliniko_url, "revoke_key")
    (cut_off,) = run_sync(ctx.paths, ctx.settings, ctx.secrets, streams=[PATIENTS], trigger="test", progress=progress)
    assert (cut_off.outcome, cut_off.stop_kind) == ("failed", "source_auth"), cut_off
    assert cli("sync", "--once", CLINICSYNC_STRIPE_API_KEY=OTHER_STRIPE_KEY) == 3
    admin(sandbox.cliniko_url, "restore_key")
    assert cli("sync", "--once", CLINICSYNC_CLINIKO_API_KEY=WRONG_CLINIKO_KEY) == 3
    return home, sandbox


def test_no_api_key_or_clinical_field_reaches_the_profile_or_the_output(make_sandbox, tmp_path, tiny_debug_logs):
    outputs: list[tuple[str, bytes]] = []
    homes, clinical = [], set()
    keys = {OTHER_STRIPE_KEY, WRONG_STRIPE_KEY, WRONG_CLINIKO_KEY}
    for profile in ("hard", "hostile"):
        home, sandbox = exercise_profile(make_sandbox, tmp_path, profile, outputs)
        homes.append(home)
        keys |= {sandbox.stripe_key, sandbox.cliniko_key}
        for patient in admin(sandbox.cliniko_url, "dump")["patients"]:
            for field in CLINICAL_FIELDS:
                value = patient.get(field)
                if isinstance(value, str) and len(value.strip()) >= 6:
                    clinical.add(value)
    logging_setup.teardown_logging()  # flush and close the log files before reading them

    files = [path for home in homes for path in files_under(home)]
    names = {path.name for path in files}
    assert "clinicsync.sqlite3" in names and "clinicsync.log" in names
    assert "clinicsync.log.1" in names, "the logs never rotated, so rotated files were not covered"
    assert any(name.endswith("-wal") for name in names), "the WAL file was expected (and is checked)"
    log_text = b"".join(path.read_bytes() for path in files if ".log" in path.name)
    # (The 401s themselves are no longer logged: httpx's request lines stay off, as they carry patient data.)
    assert b"failed" in log_text and b"retry" in log_text.lower(), "the runs were meant to log failures and retries"

    blobs = [(str(path), path.read_bytes()) for path in files] + outputs
    needles = {key: key_forms(key) for key in keys}
    found = leaks(blobs, needles)
    assert not found, "API keys leaked:\n" + "\n".join(found[:20])

    # Clinical fields: never in the database (nor its WAL), nor anywhere else in the profile.
    assert len(clinical) > 50, "the seed was expected to fill clinical fields"
    for where, blob in blobs:
        hits = [value for value in clinical if value.encode() in blob]
        assert not hits, f"clinical values in {where}: {hits[:5]}"


def test_the_leak_check_would_see_a_key_in_any_of_its_forms(tmp_path):
    """The scanner itself: every form it looks for is found, in a file as in output."""
    key = "cliniko_sandbox_key-au1"
    basic = base64.b64encode(f"{key}:".encode()).decode()
    samples = {
        "plain": f"key={key}".encode(),
        "no suffix": b"cliniko_sandbox_key was used",
        "basic": f"Authorization: Basic {basic}".encode(),
        "basic unpadded": f"Basic {basic.rstrip('=')}".encode(),
        "basic with password": b"Basic " + base64.b64encode(f"{key}:secret".encode()),
    }
    for name, blob in samples.items():
        path = tmp_path / f"{name}.log"
        path.write_bytes(b"\x00binary\x00" + blob + b"\n")
        assert leaks([(name, path.read_bytes())], {key: key_forms(key)}), name
    assert not leaks([("clean", b"Authorization: Basic [redacted]")], {key: key_forms(key)})


def test_every_secret_form_is_covered_by_the_app_redactor():
    """What the redactor registers for a key includes every form this test searches for."""
    redactor = logging_setup.Redactor()
    for key in ("cliniko_sandbox_key-au1", "sk_test_sandbox_clinic_a"):
        redactor.register_secret(key)
        for form in key_forms(key) - {key.rsplit("-", 1)[0]}:
            text = f"seen: {form} end"
            assert form not in redactor.redact(text), (key, form)
