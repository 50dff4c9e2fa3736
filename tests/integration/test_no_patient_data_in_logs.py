"""No patient field reaches a log line, at any level.

Full sandbox syncs (the hard and hostile profiles, with transient faults so retries are logged, then edits so
updates are sent, a dry run and an email lookup) run in-process with logging at DEBUG; then every log file,
rotated ones too, is searched for every seeded patient's email, phone numbers and names. The HTTP libraries'
request lines (`GET /v1/customers?email=…`), the Stripe SDK's request bodies and peewee's SQL parameters all
carried them before.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest

from clinicsync import app, logging_setup
from clinicsync.sync.service import run_sync
from tests.support import admin, profile_env

FAULTS = "before:5xx=0.05,before:429=0.03,seed=7"


@pytest.fixture
def debug_logs(monkeypatch) -> Iterator[None]:
    """Every bootstrap logs at DEBUG into small files, keeping every rotated one."""
    root = logging.getLogger()
    level = root.level

    def setup(paths, *, level: int = logging.INFO, console: bool = False) -> None:
        logging_setup.setup_logging(paths, level=logging.DEBUG, console=console, max_bytes=65_536, backup_count=5000)

    monkeypatch.setattr(app, "setup_logging", setup)
    yield
    logging_setup.teardown_logging()
    root.setLevel(level)


def patient_values(cliniko_url: str) -> tuple[set[str], set[str]]:
    """(exact strings, whole words) a log must never contain: emails and phone numbers, and names."""
    exact: set[str] = set()
    words: set[str] = set()
    for patient in admin(cliniko_url, "dump")["patients"]:
        for value in (patient.get("email"), *(p.get("number") for p in patient.get("patient_phone_numbers") or [])):
            if isinstance(value, str) and len(value.strip()) >= 5:
                exact.add(value.strip())
        first, last = (str(patient.get(key) or "").strip() for key in ("first_name", "last_name"))
        for name in (first, last, f"{first} {last}".strip()):
            if len(name) >= 4 and name.replace(" ", "").replace("-", "").replace("'", "").isalpha():
                words.add(name)
    return exact, words


@pytest.mark.parametrize("profile", ["hard", "hostile"])
def test_a_debug_log_of_full_syncs_holds_no_patient_email_phone_or_name(make_sandbox, tmp_path, debug_logs, profile):
    sandbox = make_sandbox(profile=profile, patients=40, faults=FAULTS)
    env = profile_env(tmp_path / profile, sandbox.env(), PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring")
    ctx = app.bootstrap(env)
    logging.getLogger().setLevel(logging.DEBUG)
    run_sync(ctx.paths, ctx.settings, ctx.secrets, trigger="test")
    admin(sandbox.cliniko_url, "edit", count=10)
    run_sync(ctx.paths, ctx.settings, ctx.secrets, trigger="test")
    run_sync(ctx.paths, ctx.settings, ctx.secrets, trigger="test", dry_run=True)

    logs = sorted(ctx.paths.log_dir.glob("clinicsync.log*"))
    text = "\n".join(path.read_text(encoding="utf-8", errors="replace") for path in logs)
    assert "DEBUG" in text, "the runs did log at DEBUG"
    exact, words = patient_values(sandbox.cliniko_url)
    assert exact and words
    found = sorted(value for value in exact if value in text)
    found += sorted(name for name in words if re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text))
    assert not found, f"{len(found)} patient value(s) in the log, e.g. {found[:8]}"
