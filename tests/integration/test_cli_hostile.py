"""The `clinicsync` command under hostile conditions: a paused profile, unusable folders and databases, damaged
stored rows, bad setting values, killed runs and inputs that never end. Every case ends in a specific message and
a documented exit code, never a traceback.

Runs the command as a user does (a subprocess), with the helpers and keyring backends of test_cli.py.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from clinicsync.paths import AppPaths
from clinicsync.sync.runner import PAUSED_MESSAGE
from tests.integration.test_cli import FILE_KEYRING, REPO, TEST_KEYRING_FILE, Ran, cli, expect, popen_cli
from tests.support import executed_writes, stats


@pytest.fixture
def cli_env(env_for, tmp_path):
    """A profile for the CLI, as in test_cli.py: the sandbox's keys in the environment, an empty test keyring. These
    tests break the patients stream's profile on purpose; the products and invoice linking streams are off so what
    they read is its."""

    def make(sandbox, name: str = "profile", **overrides: str) -> dict[str, str]:
        off = {
            "CLINICSYNC_STREAMS_CLINIKO_PRODUCTS_ENABLED": "false",
            "CLINICSYNC_STREAMS_CLINIKO_INVOICES_ENABLED": "false",
        }
        env = env_for(sandbox, name, **off)
        env["PYTHON_KEYRING_BACKEND"] = FILE_KEYRING
        env[TEST_KEYRING_FILE] = str(tmp_path / f"{name}-keyring.json")
        return env | overrides

    return make


def _no_traceback(ran) -> None:
    assert "Traceback" not in ran.text, ran


# --- 1. pause --------------------------------------------------------------------------------------------------


def test_a_paused_profile_makes_cli_sync_exit_2_writing_nothing_unless_told_to_ignore_the_pause(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=3)
    env = cli_env(sandbox)
    expect(cli(env, "config", "set", "sync.paused", "true"), 0)
    for args in (("sync", "--once"), ("sync", "--once", "--dry-run")):
        paused = expect(cli(env, *args), 2)
        assert PAUSED_MESSAGE in paused.err, paused
        assert "clinicsync config set sync.paused false" in paused.err and "--ignore-pause" in paused.err, paused
        _no_traceback(paused)
    assert stats(sandbox.cliniko_url)["requests"] == 0
    assert stats(sandbox.stripe_url)["requests"] == 0
    assert "No sync has run yet" in expect(cli(env, "status"), 0).out, "not even a run row is written"

    # Paused by the environment: the way out is the variable, not the stored setting.
    by_env = expect(cli(env | {"CLINICSYNC_SYNC_PAUSED": "yes"}, "sync", "--once"), 2)
    assert PAUSED_MESSAGE in by_env.err and "CLINICSYNC_SYNC_PAUSED" in by_env.err, by_env

    forced = expect(cli(env, "sync", "--once", "--ignore-pause"), 0)
    assert "3 created" in forced.out
    assert executed_writes(sandbox.stripe_url) == 3


# --- 2. a profile folder that cannot be used -------------------------------------------------------------------

EVERY_COMMAND = (("status",), ("config", "list"), ("sync", "--once"), ("mapping", "show"), ("review", "list"))


def _unusable_home(env, home: str, *, says: str, commands=EVERY_COMMAND, doctor_goes_on: bool = True) -> None:
    env = env | {"CLINICSYNC_HOME": home}
    for command in commands:
        failed = expect(cli(env, *command), 2)
        assert says in failed.err, failed
        _no_traceback(failed)
    doctor = expect(cli(env, "doctor", "--offline"), 2)
    assert "✗ Data folder:" in doctor.out and says in doctor.out, doctor
    if doctor_goes_on:
        assert "✓ Stripe key: set (from the environment)" in doctor.out, "the checks that need no folder still run"
    _no_traceback(doctor)


def test_a_home_that_is_a_file_exits_2_saying_so(make_sandbox, cli_env, tmp_path):
    sandbox = make_sandbox(profile="clean", patients=1)
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("hello")
    _unusable_home(cli_env(sandbox), str(a_file), says="is a file, not a folder")
    _unusable_home(cli_env(sandbox), str(a_file / "below"), says="is a file, not a folder", commands=(("status",),))
    assert a_file.read_text() == "hello"
    assert stats(sandbox.cliniko_url)["requests"] == 0


def test_dev_null_as_home_exits_2_saying_it_is_not_a_folder(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=1)
    _unusable_home(cli_env(sandbox), "/dev/null", says="/dev/null is a file, not a folder")


def test_a_home_whose_name_is_not_utf8_exits_2_saying_so(make_sandbox, cli_env, tmp_path):
    sandbox = make_sandbox(profile="clean", patients=1)
    home = os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9")  # Latin-1 bytes: what a legacy shell may pass
    # Not even the keyring's name can be made from it, so the doctor stops at the folder.
    _unusable_home(cli_env(sandbox), home, says="is not UTF-8", doctor_goes_on=False)
    assert not os.path.exists(os.fsencode(home)), "nothing was created under a name ClinicSync cannot use"


def _read_only_runner(folder: Path) -> list[str] | None:
    """A command prefix that runs the CLI with `folder` read-only, or None when this machine cannot make one.

    As root, permissions do not stop a write, so the folder is bind-mounted read-only in a private mount
    namespace (as a read-only disk or share would be); otherwise the folder's write permission is removed."""
    if os.geteuid() != 0:
        return []
    if shutil.which("unshare") is None:
        return None
    script = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"'
    prefix = ["unshare", "-rm", "sh", "-c", script, str(folder)]
    if subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        return None
    return prefix


def test_a_read_only_home_exits_2_for_every_command_including_doctor(make_sandbox, cli_env, tmp_path):
    sandbox = make_sandbox(profile="clean", patients=2)
    env = cli_env(sandbox)
    home = Path(env["CLINICSYNC_HOME"])
    expect(cli(env, "sync", "--once"), 0)  # an existing profile…
    fresh = tmp_path / "fresh"  # …and one that does not exist yet, inside a read-only folder
    fresh.mkdir()
    for folder, profile in ((home, home), (fresh, fresh / "profile")):
        prefix = _read_only_runner(folder)
        if prefix is None:
            pytest.skip("cannot make a folder read-only here (root without unshare)")
        if not prefix:
            for path in (folder, *folder.rglob("*")):
                if path.is_dir():
                    path.chmod(0o500)
        try:
            for command in (*EVERY_COMMAND, ("doctor", "--offline")):
                ran = _run(prefix, env | {"CLINICSYNC_HOME": str(profile)}, *command)
                assert ran.code == 2, ran
                assert "read-only" in ran.text or "may not write" in ran.text, ran
                _no_traceback(ran)
        finally:
            for path in (folder, *folder.rglob("*")):
                if path.is_dir():
                    path.chmod(0o700)
    assert stats(sandbox.stripe_url)["mutations_total"] == 2, "only the first sync wrote"


def _run(prefix: list[str], env, *args: str) -> Ran:
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "clinicsync", *args],
        env=dict(env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Ran(args, proc)


# --- 2. a database this version must not touch, and two first starts at once ---------------------------------


def test_a_database_from_a_newer_clinicsync_is_refused_untouched_with_exit_2(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=1)
    env = cli_env(sandbox)
    expect(cli(env, "status"), 0)
    db_file = AppPaths.resolve(env).db_path
    with sqlite3.connect(db_file) as con:
        con.execute("INSERT INTO schema_version (version) VALUES (99)")
    con.close()
    before = _database_files(db_file)
    for command in (("status",), ("sync", "--once"), ("config", "list"), ("doctor", "--offline")):
        refused = expect(cli(env, *command), 2)
        assert "made by a newer ClinicSync" in refused.text and "schema 99" in refused.text, refused
        _no_traceback(refused)
    assert _database_files(db_file) == before, "the newer database was changed"
    assert stats(sandbox.cliniko_url)["requests"] == 0


def _database_files(db_file: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in db_file.parent.glob(db_file.name + "*") if p.stat().st_size}


def test_commands_started_together_on_a_new_profile_all_work(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=1)
    for attempt in range(4):  # the race is narrow: give it several chances to show
        env = cli_env(sandbox, name=f"together-{attempt}")
        started = [popen_cli(env, *command) for command in (("status",), ("config", "list"), ("review", "list")) * 2]
        for process in started:
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0, (process.args, out, err)
            assert "Traceback" not in err, err


# --- 2. a log file that cannot be written ----------------------------------------------------------------------


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a disk that is always full)")
def test_a_log_file_on_a_full_disk_costs_one_line_on_stderr_and_the_sync_carries_on(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=20, faults="before:5xx=0.3,seed=3")  # retries get logged
    env = cli_env(sandbox)
    log_dir = Path(env["CLINICSYNC_HOME"]) / "logs"
    log_dir.mkdir(parents=True)
    (log_dir / "clinicsync.log").symlink_to("/dev/full")  # every write fails with "No space left on device"
    synced = expect(cli(env, "sync", "--once"), 0)
    assert "20 created" in synced.out
    (line,) = synced.err.splitlines()
    assert "log file" in line and "No space left on device" in line and "without" in line, synced


def test_a_log_file_that_cannot_be_opened_costs_one_line_on_stderr(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=2)
    env = cli_env(sandbox)
    (Path(env["CLINICSYNC_HOME"]) / "logs" / "clinicsync.log").mkdir(parents=True)  # a folder where the file goes
    synced = expect(cli(env, "sync", "--once"), 0)
    assert "2 created" in synced.out
    (line,) = synced.err.splitlines()
    assert "log file" in line and "without" in line, synced


# --- 2. a stored mapping row that cannot be read ---------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    ["{not json", "[1, 2]", '{"rules": 5}', '{"rules": [{"target": 3}]}', '"just a string"', ""],
    ids=["not-json", "a-list", "rules-not-a-list", "bad-rule", "a-string", "empty"],
)
def test_a_damaged_stored_mapping_is_reported_by_name_and_the_rest_keeps_working(make_sandbox, cli_env, body):
    sandbox = make_sandbox(profile="clean", patients=3)
    env = cli_env(sandbox)
    expect(cli(env, "status"), 0)
    with sqlite3.connect(AppPaths.resolve(env).db_path) as con:
        con.execute(
            "INSERT INTO stream_mapping (stream, version, body, saved_at, saved_by) "
            "VALUES ('cliniko.patients', 3, ?, '2025-01-01 00:00:00', 'someone')",
            (body,),
        )
    con.close()

    synced = expect(cli(env, "sync", "--once"), 2)
    assert "cliniko.patients: failed" in synced.out, synced
    assert "stored field mapping of cliniko.patients (version 3) cannot be read" in synced.out, synced
    assert "clinicsync mapping reset" in synced.out and "clinicsync mapping import" in synced.out, synced
    _no_traceback(synced)
    assert stats(sandbox.stripe_url)["mutations_total"] == 0, "nothing is sent without a usable mapping"

    shown = expect(cli(env, "mapping", "show"), 2)
    assert "stored field mapping of cliniko.patients (version 3) cannot be read" in shown.err, shown
    exported = expect(cli(env, "mapping", "export", "-"), 2)
    assert "cannot be read" in exported.err, exported
    for ran in (shown, exported):
        _no_traceback(ran)
    assert "clinicsync history" in expect(cli(env, "status"), 0).out, 'not "no sync has run"'
    assert "cannot be read" in expect(cli(env, "history"), 0).out
    expect(cli(env, "config", "list"), 0)
    expect(cli(env, "review", "list"), 0)

    expect(cli(env, "mapping", "reset"), 0)  # the way out the message names
    assert "3 created" in expect(cli(env, "sync", "--once"), 0).out


# --- 2. inputs that are not what they should be ----------------------------------------------------------------


def test_a_preview_of_a_record_id_that_is_not_a_number_is_a_usage_error(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=1)
    env = cli_env(sandbox)
    for record in ("not-a-number", "12 34", "-5", ""):
        refused = expect(cli(env, "mapping", "preview", "--record", record), 2)
        assert "is not a Cliniko patient id" in refused.err and "usage:" in refused.err, refused
        _no_traceback(refused)
    assert stats(sandbox.cliniko_url)["requests"] == 0


def test_a_mapping_file_that_never_ends_is_refused_at_1_mb(make_sandbox, cli_env, tmp_path):
    sandbox = make_sandbox(profile="clean", patients=1)
    env = cli_env(sandbox)
    huge = tmp_path / "huge.json"
    huge.write_text('{"rules": []' + " " * 1_100_000 + "}")
    for source, stdin in (("/dev/zero", None), (str(huge), None), ("-", huge.read_text())):
        refused = expect(cli(env, "mapping", "import", source, stdin=stdin, timeout=30), 2)
        assert "larger than 1 MB" in refused.err, refused
        _no_traceback(refused)
    assert "built-in default" in expect(cli(env, "mapping", "show"), 0).out, "nothing was imported"


def test_a_secret_from_an_input_that_never_ends_is_refused(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=1)
    env = cli_env(sandbox)
    with open(os.devnull if not os.path.exists("/dev/zero") else "/dev/zero", "rb") as endless:
        proc = subprocess.run(
            [sys.executable, "-m", "clinicsync", "config", "set-secret", "stripe_api_key"],
            env=env,
            cwd=REPO,
            stdin=endless,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stderr, proc.stderr


# --- 3. setting values that cannot work ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("nan", "must be a finite number"),
        ("inf", "must be a finite number"),
        ("-inf", "must be a finite number"),
        ("-1", "must be at least 1"),
        ("1e9", "must be at most 120"),
    ],
)
def test_config_set_refuses_a_timeout_that_cannot_work(make_sandbox, cli_env, value, says):
    env = cli_env(make_sandbox(profile="clean", patients=1))
    refused = expect(cli(env, "config", "set", "stripe.timeout_seconds", "--", value), 2)  # "--": "-inf" is no option
    assert f"stripe.timeout_seconds {says}" in refused.err, refused
    assert "(stored)" not in expect(cli(env, "config", "list"), 0).out, "nothing was stored"


def test_a_hand_edited_setting_is_reported_by_list_get_doctor_and_sync(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=2)
    env = cli_env(sandbox)
    expect(cli(env, "config", "set", "sync.email_match", "review"), 0)
    with sqlite3.connect(AppPaths.resolve(env).db_path) as con:
        con.executemany(
            "INSERT OR REPLACE INTO setting (key, value) VALUES (?, ?)",
            [("stripe.timeout_seconds", "NaN"), ("stripe.workers", '"lots"'), ("retry.max_attempts", "{oops")],
        )
    con.close()
    env = {key: value for key, value in env.items() if not key.startswith("CLINICSYNC_RETRY_")}
    env = {key: value for key, value in env.items() if key != "CLINICSYNC_STRIPE_TIMEOUT_SECONDS"}

    listed = expect(cli(env, "config", "list"), 2)
    assert 'sync.email_match = "review"  (stored)' in listed.out, "the usable ones are listed as ever"
    for key in ("stripe.timeout_seconds", "stripe.workers", "retry.max_attempts"):
        assert f"The stored setting {key} cannot be used" in listed.err, listed
        assert f"{key} = " not in listed.out.replace(f"{key} = (unusable", ""), "never shown as the default"
    got = expect(cli(env, "config", "get", "stripe.timeout_seconds"), 2)
    assert "The stored setting stripe.timeout_seconds cannot be used" in got.err
    doctor = expect(cli(env, "doctor", "--offline"), 2)
    assert "✗ Settings:" in doctor.out and "stripe.timeout_seconds" in doctor.out, doctor
    synced = expect(cli(env, "sync", "--once"), 2)
    assert "The stored setting" in synced.err, synced
    assert stats(sandbox.stripe_url)["requests"] == 0
    for ran in (listed, got, doctor, synced):
        _no_traceback(ran)

    for key in ("stripe.timeout_seconds", "stripe.workers", "retry.max_attempts"):
        expect(cli(env, "config", "unset", key), 0)
    assert "2 created" in expect(cli(env, "sync", "--once"), 0).out


# --- 4. history stays true after kills -------------------------------------------------------------------------


def test_a_killed_sync_shows_as_interrupted_in_status_doctor_and_history(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=12)
    env = cli_env(sandbox, CLINICSYNC_STRIPE_WORKERS="1")
    killed = cli(env | {"CLINICSYNC_CRASH_AT": "after_stripe_ok:5"}, "sync", "--once")  # as a power cut would
    assert killed.code == -9, killed

    status = expect(cli(env, "status"), 0)
    last_run = next(line for line in status.out.splitlines() if "last run:" in line)
    assert "interrupted" in last_run and "running" not in last_run, status
    doctor = expect(cli(env, "doctor", "--offline"), 0)
    assert "(interrupted)" in doctor.out and "free (no sync is running" in doctor.out, doctor
    history = expect(cli(env, "history"), 0)
    assert "Interrupted" in history.out and "stopped before it finished" in history.out, history
    counts = _history_counts(history.out)
    # Finished writes are recorded in batches, so a run killed early may have recorded none of them yet; the next
    # run replays those writes with their own keys and records them (the 12 customers below).
    assert sum(counts) <= 12, history

    synced = expect(cli(env, "sync", "--once"), 0)
    assert "ok" in synced.out
    assert "OK" in expect(cli(env, "history"), 0).out.split("\n#")[0]
    assert len(customers_of(sandbox)) == 12


def test_the_run_after_a_kill_counts_no_more_than_the_records_it_read(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=12)
    env = cli_env(sandbox, CLINICSYNC_STRIPE_WORKERS="1")
    assert cli(env | {"CLINICSYNC_CRASH_AT": "after_stripe_ok:5"}, "sync", "--once").code == -9
    expect(cli(env, "sync", "--once"), 0)
    newest = expect(cli(env, "history"), 0).out.split("\n#")[0]
    assert sum(_history_counts(newest)) <= 12, newest


def _history_counts(text: str) -> list[int]:
    first_run = text.split("\n#")[0]
    return [int(n) for n in re.findall(r"(\d+) (?:created|linked|updated|unchanged|skipped|failed|review)", first_run)]


def customers_of(sandbox) -> list[dict]:
    from tests.support import admin

    return [c for c in admin(sandbox.stripe_url, "dump")["data"] if not c["deleted"]]


def test_history_failed_lists_each_failed_record_with_its_reason(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="hostile", patients=30)
    env = cli_env(sandbox)
    synced = expect(cli(env, "sync", "--once"), 1)
    failed_count = int(re.search(r"(\d+) failed", synced.out).group(1))
    assert failed_count > 0, synced
    listed = expect(cli(env, "history", "--failed"), 0)
    rows = [line for line in listed.out.splitlines() if line.startswith("      ")]
    assert len(rows) == failed_count, listed
    assert all(": " in row for row in rows), "each failed record says why"
    everything = expect(cli(env, "history"), 0)
    assert "Command line" in everything.out and "Needs attention" in everything.out, everything
    expect(cli(env, "history", "--limit", "0"), 2)


# --- 6. messages in ClinicSync's own words ---------------------------------------------------------------------

PUBLISHABLE = "pk_test_sandbox_publishable_a"


def test_a_publishable_stripe_key_is_named_as_such_everywhere_before_any_request(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=1)
    env = cli_env(sandbox, CLINICSYNC_STRIPE_API_KEY=PUBLISHABLE)
    synced = expect(cli(env, "sync", "--once"), 2)
    doctor = expect(cli(env, "doctor", "--offline"), 2)
    assert "✗ Stripe key:" in doctor.out
    stored = expect(cli(cli_env(sandbox), "config", "set-secret", "stripe_api_key", stdin=PUBLISHABLE + "\n"), 2)
    for ran in (synced, doctor, stored):
        assert "publishable key (pk_" in ran.text and "secret key (sk_" in ran.text and "(rk_" in ran.text, ran
        assert PUBLISHABLE not in ran.text, "never the key itself"
        _no_traceback(ran)
    assert stats(sandbox.stripe_url)["requests"] == 0


def test_the_cli_says_which_command_sets_the_contact_email(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=1)
    env = {key: value for key, value in cli_env(sandbox).items() if key != "CLINICSYNC_CONTACT_EMAIL"}
    failed = expect(cli(env, "sync", "--once"), 2)
    assert "clinicsync config set contact_email" in failed.err, failed
    assert "Connections" not in failed.err, "no tab to point at on the command line"
    doctor = expect(cli(env, "doctor"), 2)
    assert "clinicsync config set contact_email" in doctor.out, doctor


def test_a_cliniko_shard_that_does_not_exist_is_named_as_a_setting_problem(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=1)
    env = {key: value for key, value in cli_env(sandbox).items() if key != "CLINICSYNC_CLINIKO_BASE_URL"}
    env["CLINICSYNC_CLINIKO_API_KEY"] = "fake_cliniko_key_for_tests-zz9"
    failed = cli(env, "sync", "--once")
    if "zz9" not in failed.text:
        pytest.skip(f"this machine resolves api.zz9.cliniko.com: {failed.text[-300:]}")
    assert failed.code == 2, failed
    assert "There is no Cliniko server for the shard 'zz9'" in failed.err, failed
    assert "api.zz9.cliniko.com" in failed.err and "Check the shard" in failed.err, failed
    _no_traceback(failed)


def test_an_unreachable_stripe_is_told_in_clinicsyncs_own_words(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=1)
    nowhere = f"http://127.0.0.1:{_closed_port()}"
    failed = expect(cli(cli_env(sandbox, CLINICSYNC_STRIPE_BASE_URL=nowhere), "sync", "--once"), 5)
    assert "Stripe could not be reached" in failed.err, failed
    for raw in ("support@stripe.com", "ConnectError", "Network error", "Unexpected error communicating"):
        assert raw not in failed.err, failed


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
