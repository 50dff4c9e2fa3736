"""The `clinicsync` command as a user runs it: a subprocess against the loopback sandbox, checked by exit code
and output.

Exit codes: 0 ok; 1 record errors or review items; 2 usage or configuration; 3 authentication or permission;
4 another sync is running; 5 a service unreachable.

Every run here uses a test keyring backend named in PYTHON_KEYRING_BACKEND, so no test touches the machine's
real keyring. The backends live in this module so the subprocess can import them by name.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keyring.backend
import pytest

from clinicsync.paths import AppPaths
from clinicsync.profile_lock import ProfileLock
from clinicsync.sandbox.faults import FaultPlan
from clinicsync.secrets import SECRET_NAMES
from clinicsync.store.settings import SPECS
from tests.support import admin, executed_writes, stats

REPO = Path(__file__).resolve().parents[2]
TEST_KEYRING_FILE = "TEST_CLINICSYNC_KEYRING_FILE"
TRAP_FILE = "TEST_CLINICSYNC_KEYRING_TRAP"
FILE_KEYRING = "tests.integration.test_cli.FileKeyring"
TRAP_KEYRING = "tests.integration.test_cli.TrapKeyring"
FAIL_KEYRING = "keyring.backends.fail.Keyring"


# --- keyring backends for the subprocesses ----------------------------------------------------------------


class FileKeyring(keyring.backend.KeyringBackend):
    """A test-only keyring in a JSON file named by $TEST_CLINICSYNC_KEYRING_FILE (outside CLINICSYNC_HOME).

    Not viable unless that variable is set, so keyring's own detection never picks it in other processes.
    """

    @keyring.backend.properties.classproperty
    def priority(cls) -> float:
        if TEST_KEYRING_FILE not in os.environ:
            raise RuntimeError("test-only keyring")
        return 1.5

    def _load(self) -> dict[str, str]:
        path = Path(os.environ[TEST_KEYRING_FILE])
        return json.loads(path.read_text()) if path.exists() else {}

    def _save(self, data: dict[str, str]) -> None:
        Path(os.environ[TEST_KEYRING_FILE]).write_text(json.dumps(data))

    def get_password(self, service: str, username: str) -> str | None:
        return self._load().get(f"{service}/{username}")

    def set_password(self, service: str, username: str, password: str) -> None:
        data = self._load()
        data[f"{service}/{username}"] = password
        self._save(data)

    def delete_password(self, service: str, username: str) -> None:
        data = self._load()
        data.pop(f"{service}/{username}", None)
        self._save(data)


class TrapKeyring(keyring.backend.KeyringBackend):
    """Records that the keyring was opened at all (in the file $TEST_CLINICSYNC_KEYRING_TRAP), then fails."""

    @keyring.backend.properties.classproperty
    def priority(cls) -> float:
        if TRAP_FILE not in os.environ:
            raise RuntimeError("test-only keyring")
        return 1.5

    def __init__(self) -> None:
        super().__init__()
        Path(os.environ[TRAP_FILE]).write_text("the keyring was opened")

    def get_password(self, service: str, username: str) -> str | None:
        raise RuntimeError("the keyring must not be read")

    def set_password(self, service: str, username: str, password: str) -> None:
        raise RuntimeError("the keyring must not be written")

    def delete_password(self, service: str, username: str) -> None:
        raise RuntimeError("the keyring must not be written")


# --- helpers ---------------------------------------------------------------------------------------------


class Ran:
    def __init__(self, args: tuple[str, ...], proc: subprocess.CompletedProcess[str]) -> None:
        self.args = args
        self.code = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    @property
    def text(self) -> str:
        return self.out + self.err

    def __repr__(self) -> str:
        return f"clinicsync {' '.join(self.args)} → {self.code}\nstdout:\n{self.out}\nstderr:\n{self.err}"


def cli(env: Mapping[str, str], *args: str, stdin: str | None = None, timeout: float = 120) -> Ran:
    proc = subprocess.run(
        [sys.executable, "-m", "clinicsync", *args],
        env=dict(env),
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Ran(args, proc)


def expect(ran: Ran, code: int) -> Ran:
    assert ran.code == code, repr(ran)
    return ran


def popen_cli(env: Mapping[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "clinicsync", *args],
        env=dict(env),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_writes(sandbox: Any, process: subprocess.Popen[str], timeout_s: float = 30) -> None:
    """Wait until a sync running in `process` has made its first Stripe write."""
    deadline = time.monotonic() + timeout_s
    while stats(sandbox.stripe_url)["mutations_total"] == 0:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the sync never started writing"
        time.sleep(0.02)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def without(env: Mapping[str, str], *names: str) -> dict[str, str]:
    return {key: value for key, value in env.items() if key not in names}


def customers(sandbox: Any) -> list[dict[str, Any]]:
    return [c for c in admin(sandbox.stripe_url, "dump")["data"] if not c["deleted"]]


def customer_of(sandbox: Any, patient_id: str) -> dict[str, Any] | None:
    found = [c for c in customers(sandbox) if c["metadata"].get("cliniko_patient_id") == patient_id]
    assert len(found) <= 1, f"two customers for patient {patient_id}"
    return found[0] if found else None


@pytest.fixture
def cli_env(env_for, tmp_path):
    """A profile for the CLI: the sandbox's keys in the environment, and an empty test keyring."""

    def make(sandbox: Any, name: str = "profile", **overrides: str) -> dict[str, str]:
        env = env_for(sandbox, name)
        env["PYTHON_KEYRING_BACKEND"] = FILE_KEYRING
        env[TEST_KEYRING_FILE] = str(tmp_path / f"{name}-keyring.json")
        env.update(overrides)
        return env

    return make


# --- sync, status and review -----------------------------------------------------------------------------


def test_clean_sync_exits_0_and_a_second_run_writes_nothing(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=25)
    env = cli_env(sandbox)

    first = expect(cli(env, "sync", "--once"), 0)
    assert "cliniko.patients: ok — 25 created" in first.out
    assert executed_writes(sandbox.stripe_url) == 25
    # Invoice linking is on by default: the sandbox's invoices have no Stripe payment, and the summary says so.
    invoices = len(admin(sandbox.cliniko_url, "dump")["invoices"])
    summary = f"cliniko.invoices: ok — 0 created, 0 linked, 0 updated, 0 unchanged, {invoices} not paid through Stripe"
    assert summary in first.out

    second = expect(cli(env, "sync", "--once", "--json"), 0)
    assert "0 created" in second.out and "0 updated" in second.out
    rows = [json.loads(line) for line in second.out.splitlines() if line.startswith("{")]
    assert [row["stream"] for row in rows] == ["cliniko.patients", "cliniko.products", "cliniko.invoices"]
    history = expect(cli(env, "history", "--stream", "cliniko.invoices"), 0)
    assert f"{invoices} not paid through Stripe" in history.out, "the first run's, in the history's words too"
    assert rows[0]["outcome"] == "ok" and rows[0]["created"] == 0
    assert executed_writes(sandbox.stripe_url) == 25


def test_review_item_exits_1_then_status_review_link_and_the_next_sync_links_it(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="hard", patients=20)
    env = cli_env(sandbox)
    cases = {case: pid for pid, case in sandbox.seeded["cases"].items()}

    synced = expect(cli(env, "sync", "--once"), 1)
    assert "cliniko.patients: attention" in synced.out and "1 review" in synced.out

    status = expect(cli(env, "status"), 0)
    assert "cliniko.patients  [cliniko:au1:" in status.out and "stripe:acct_sandbox_clinic_a:test]" in status.out
    assert re.search(r"last run:\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\s+attention", status.out), status.out
    assert re.search(
        r"counts:\s+\d+ created, 1 linked, 0 updated, 0 unchanged, 2 skipped, 0 failed, 1 review", status.out
    )
    assert re.search(r"cursor:\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", status.out), status.out
    assert re.search(r"queued:\s+0 write\(s\) waiting for Stripe", status.out)
    assert re.search(r"review:\s+1 record\(s\) need a decision", status.out)

    listed = expect(cli(env, "review", "list"), 0)
    pid = cases["stripe_duplicate_email"]
    match = re.search(rf"#(\d+)\s+cliniko\.patients\s+{pid}\s+(.+)", listed.out)
    assert match, listed.out
    item_id = match.group(1)
    assert "ambiguous_email" in listed.out
    candidates = re.search(r"candidates: (cus_\w+), (cus_\w+)", listed.out)
    assert candidates, listed.out
    chosen = candidates.group(2)

    # A customer that already belongs to another record is refused, and nothing is decided.
    taken = customer_of(sandbox, cases["stripe_email_case_match"])
    assert taken is not None
    refused = expect(cli(env, "review", "link", item_id, taken["id"]), 2)
    assert f"{taken['id']} is already linked" in refused.err
    assert "There is no open review item #9999" in expect(cli(env, "review", "link", "9999", chosen), 2).err
    assert f"#{item_id}" in expect(cli(env, "review", "list"), 0).out, "a refused link must leave the item open"

    decided = expect(cli(env, "review", "link", item_id, chosen), 0)
    assert f"Review #{item_id}" in decided.out and "link" in decided.out
    assert customer_of(sandbox, pid) is None, "the decision is carried out by the next sync, not at once"

    writes_before = executed_writes(sandbox.stripe_url)
    linked = expect(cli(env, "sync", "--once"), 0)
    assert "1 linked" in linked.out and "0 review" in linked.out
    assert customer_of(sandbox, pid)["id"] == chosen
    assert executed_writes(sandbox.stripe_url) == writes_before + 1

    assert "Nothing needs review." in expect(cli(env, "review", "list"), 0).out
    assert re.search(r"review:\s+0 record\(s\) need a decision", expect(cli(env, "status"), 0).out)
    # The item is no longer open, so deciding about it again is refused.
    assert "no open review item" in expect(cli(env, "review", "link", item_id, chosen), 2).err


def test_dry_run_writes_nothing_and_prints_the_plan(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=12)
    env = cli_env(sandbox)

    planned = expect(cli(env, "sync", "--once", "--dry-run"), 0)
    assert stats(sandbox.stripe_url)["mutations_total"] == 0
    assert customers(sandbox) == []
    assert "cliniko.patients: ok — 12 created" in planned.out
    plan_text = planned.out.split("plan:", 1)[1].split("\ncliniko.products:", 1)[0]
    plan = json.loads(plan_text)
    assert plan["counts"]["created"] == 12 and plan["stream"] == "cliniko.patients"
    assert plan["stripe_mode"] == "test" and plan["queued_writes"] == 0
    assert "email" in plan["fields"] and len(plan["samples"]["created"]) == 12
    # No sync state was kept either: the next real run still reads everything.
    assert "No sync has run yet" in expect(cli(env, "status"), 0).out

    real = expect(cli(env, "sync", "--once"), 0)
    assert "12 created" in real.out
    assert stats(sandbox.stripe_url)["mutations"] == {"POST /v1/customers": 12}


# --- config ----------------------------------------------------------------------------------------------


def test_config_list_shows_every_setting_its_source_and_which_secrets_are_set(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=3)
    env = cli_env(sandbox)
    expect(cli(env, "config", "set", "sync.email_match", "review"), 0)

    listed = expect(cli(env, "config", "list"), 0)
    lines = listed.out.splitlines()
    for spec in SPECS:
        (line,) = [line for line in lines if line.startswith(f"{spec.key} = ")]
        source = "environment" if spec.env_name in env else ("stored" if spec.key == "sync.email_match" else "default")
        assert line.endswith(f"({source})"), line
    assert 'sync.email_match = "review"  (stored)' in lines
    assert "stripe.workers = 12  (default)" in lines
    assert "retry.max_attempts = 8  (environment)" in lines
    assert "secret cliniko_api_key: set in the environment" in lines
    assert "secret stripe_api_key: set in the environment" in lines
    assert "secret calcom_api_key: not set" in lines
    assert len([line for line in lines if line.startswith("secret ")]) == len(SECRET_NAMES)
    assert sandbox.stripe_key not in listed.text and sandbox.cliniko_key not in listed.text


def test_config_set_get_unset_and_it_changes_what_the_sync_does(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="hard", patients=20)
    env = cli_env(sandbox)

    assert expect(cli(env, "config", "set", "sync.email_match", "review"), 0).out.strip() == (
        'sync.email_match = "review"'
    )
    assert expect(cli(env, "config", "get", "sync.email_match"), 0).out.strip() == '"review"  (stored)'

    # With "review", the customer whose email matches is not auto-linked: a person is asked.
    synced = expect(cli(env, "sync", "--once"), 1)
    assert "0 linked" in synced.out and "2 review" in synced.out

    expect(cli(env, "config", "unset", "sync.email_match"), 0)
    assert expect(cli(env, "config", "get", "sync.email_match"), 0).out.strip() == '"auto_link"  (default)'


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("sync.email_match", "maybe"), "sync.email_match must be one of auto_link, review, not 'maybe'"),
        (("cliniko.shard", "zz999"), "cliniko.shard: 'zz999' is not a Cliniko shard"),
        (("cliniko.base_url", "http://example.com"), "cliniko.base_url: The service address must start with https://"),
        (("stripe.workers", "0"), "stripe.workers must be at least 1"),
        (("stripe.workers", "lots"), "stripe.workers must be a whole number"),
        (("sync.nope", "1"), "Unknown setting 'sync.nope'. Known settings: "),
    ],
)
def test_config_set_refuses_bad_values_with_exit_2(make_sandbox, cli_env, args, message):
    sandbox = make_sandbox(profile="clean", patients=1)
    env = cli_env(sandbox)
    refused = expect(cli(env, "config", "set", *args), 2)
    assert message in refused.err, refused
    assert refused.out == ""
    listed = expect(cli(env, "config", "list"), 0).out
    assert "(stored)" not in listed, "a refused value must not be stored"


def test_a_value_from_the_environment_shows_environment_and_wins(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=1)
    env = cli_env(sandbox, CLINICSYNC_SYNC_EMAIL_MATCH="review")
    assert expect(cli(env, "config", "get", "sync.email_match"), 0).out.strip() == '"review"  (environment)'
    assert expect(cli(env, "config", "get", "retry.max_attempts"), 0).out.strip() == "8  (environment)"

    set_anyway = expect(cli(env, "config", "set", "sync.email_match", "auto_link"), 0)
    assert "the environment overrides it while its variable is set" in set_anyway.out
    assert expect(cli(env, "config", "get", "sync.email_match"), 0).out.strip() == '"review"  (environment)'
    plain = without(env, "CLINICSYNC_SYNC_EMAIL_MATCH")
    assert expect(cli(plain, "config", "get", "sync.email_match"), 0).out.strip() == '"auto_link"  (stored)'


def test_an_invalid_value_in_the_environment_exits_2(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=2)
    env = cli_env(sandbox, CLINICSYNC_STRIPE_WORKERS="0")
    failed = expect(cli(env, "sync", "--once"), 2)
    assert "stripe.workers must be at least 1" in failed.err
    assert executed_writes(sandbox.stripe_url) == 0


def test_set_secret_stores_in_the_keyring_and_a_sync_can_use_it(make_sandbox, cli_env, tmp_path):
    sandbox = make_sandbox(profile="clean", patients=4)
    env = cli_env(sandbox)
    keyless = without(env, "CLINICSYNC_STRIPE_API_KEY", "CLINICSYNC_CLINIKO_API_KEY")

    saved = expect(cli(keyless, "config", "set-secret", "stripe_api_key", stdin=sandbox.stripe_key + "\n"), 0)
    assert "stripe_api_key saved in the system keyring" in saved.out
    expect(cli(keyless, "config", "set-secret", "cliniko_api_key", stdin=sandbox.cliniko_key + "\n"), 0)
    assert sandbox.stripe_key not in saved.text
    assert "Unknown secret" in expect(cli(keyless, "config", "set-secret", "nope", stdin="x\n"), 2).err
    assert "Nothing entered" in expect(cli(keyless, "config", "set-secret", "stripe_api_key", stdin="\n"), 2).err

    listed = expect(cli(keyless, "config", "list"), 0).out
    assert "secret stripe_api_key: set in the keyring" in listed
    assert "secret cliniko_api_key: set in the keyring" in listed
    assert "4 created" in expect(cli(keyless, "sync", "--once"), 0).out
    # The key went to the keyring, never into the profile's files.
    for path in Path(env["CLINICSYNC_HOME"]).rglob("*"):
        if path.is_file():
            assert sandbox.stripe_key.encode() not in path.read_bytes(), path


# --- keys, permissions and reachability ------------------------------------------------------------------


def test_a_wrong_stripe_key_exits_3(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=3)
    env = cli_env(sandbox, CLINICSYNC_STRIPE_API_KEY="sk_test_sandbox_wrong")
    failed = expect(cli(env, "sync", "--once"), 3)
    assert "Stripe rejected the API key (HTTP 401)" in failed.err
    assert "sk_test_sandbox_wrong" not in failed.text
    assert executed_writes(sandbox.stripe_url) == 0


def test_a_revoked_stripe_key_exits_3(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=3)
    env = cli_env(sandbox)
    admin(sandbox.stripe_url, "revoke", key=sandbox.stripe_key)
    failed = expect(cli(env, "sync", "--once"), 3)
    assert "Stripe rejected the API key" in failed.err and "revoked" in failed.err


def test_a_wrong_cliniko_key_exits_3(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=3)
    env = cli_env(sandbox, CLINICSYNC_CLINIKO_API_KEY="NotTheClinikoKey0000-au1")
    failed = expect(cli(env, "sync", "--once"), 3)
    assert "Cliniko rejected the API key (HTTP 401)" in failed.err
    assert "NotTheClinikoKey0000" not in failed.text
    assert executed_writes(sandbox.stripe_url) == 0


def test_a_cliniko_key_revoked_mid_life_exits_3(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=3)
    env = cli_env(sandbox)
    expect(cli(env, "sync", "--once"), 0)
    admin(sandbox.cliniko_url, "revoke_key")
    admin(sandbox.cliniko_url, "edit", count=2)
    failed = expect(cli(env, "sync", "--once"), 3)
    assert "Cliniko rejected the API key" in failed.err


def test_a_restricted_stripe_key_without_write_permission_exits_3_naming_the_permission(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=3)
    env = cli_env(sandbox, CLINICSYNC_STRIPE_API_KEY="rk_test_sandbox_readonly_a")
    failed = expect(cli(env, "sync", "--once"), 3)
    assert "rak_customer_write" in failed.text, failed
    assert "lacks a permission" in failed.text
    assert executed_writes(sandbox.stripe_url) == 0
    # The writes are kept for the next run, which (with a full key) sends them.
    assert re.search(r"queued:\s+[1-9]\d* write\(s\) waiting for Stripe", expect(cli(env, "status"), 0).out)
    expect(cli(env | {"CLINICSYNC_STRIPE_API_KEY": sandbox.stripe_key}, "sync", "--once"), 0)
    assert len(customers(sandbox)) == 3


def test_a_restricted_stripe_key_that_cannot_read_the_account_exits_3(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=3)
    env = cli_env(sandbox, CLINICSYNC_STRIPE_API_KEY="rk_test_sandbox_noaccount_a")
    failed = expect(cli(env, "sync", "--once"), 3)
    assert "rak_account_read" in failed.err, failed


@pytest.mark.parametrize("service", ["cliniko", "stripe"])
def test_an_unreachable_service_exits_5(make_sandbox, cli_env, service):
    sandbox = make_sandbox(profile="clean", patients=3)
    port = closed_port()
    address = f"http://127.0.0.1:{port}/v1" if service == "cliniko" else f"http://127.0.0.1:{port}"
    env = cli_env(sandbox, **{f"CLINICSYNC_{service.upper()}_BASE_URL": address})
    failed = expect(cli(env, "sync", "--once"), 5)
    if service == "cliniko":
        assert "Cliniko could not be reached" in failed.err
    else:
        assert "Stripe could not be reached" in failed.err and "ConnectError" not in failed.err
    assert executed_writes(sandbox.stripe_url) == 0


def test_stripe_failing_mid_run_exits_5_and_the_queued_writes_go_out_next_time(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=40)
    env = cli_env(sandbox, CLINICSYNC_STRIPE_WORKERS="1")
    admin(sandbox.stripe_url, "config", latency_ms=40)
    running = popen_cli(env, "sync", "--once")
    try:
        wait_for_writes(sandbox, running)
        admin(sandbox.stripe_url, "faults", spec="before:5xx=1,seed=1")
    finally:
        out, err = running.communicate(timeout=120)
    assert running.returncode == 5, (out, err)
    assert "Stripe could not be reached or kept failing" in out
    made = len(customers(sandbox))
    assert 0 < made < 40
    queued = re.search(r"queued:\s+(\d+) write", expect(cli(env, "status"), 0).out)
    assert queued and int(queued.group(1)) >= 1

    admin(sandbox.stripe_url, "faults", spec="")
    admin(sandbox.stripe_url, "config", latency_ms=0)
    expect(cli(env, "sync", "--once"), 0)
    assert len(customers(sandbox)) == 40, "every patient once: nothing lost, nothing duplicated"
    assert re.search(r"queued:\s+0 write", expect(cli(env, "status"), 0).out)


def test_stripe_failing_from_the_start_exits_5(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=3)
    env = cli_env(sandbox)
    admin(sandbox.stripe_url, "faults", spec="before:5xx=1,seed=1")
    expect(cli(env, "sync", "--once"), 5)
    assert executed_writes(sandbox.stripe_url) == 0


def test_one_stripe_5xx_on_the_account_read_is_retried_not_fatal(make_sandbox, cli_env):
    """Design: transient failures (429, 5xx, resets) retry with backoff, reads included (before bbfd6be one 503
    on GET /v1/account ended the run with exit 5)."""
    sandbox = make_sandbox(profile="clean", patients=3)
    env = cli_env(sandbox)
    admin(sandbox.stripe_url, "faults", spec="before:503=1,max=1,seed=1")  # only the first request fails
    synced = cli(env, "sync", "--once")
    assert stats(sandbox.stripe_url)["faulted_total"] == 1
    assert synced.code == 0, synced
    assert len(customers(sandbox)) == 3


def test_one_stripe_5xx_while_listing_customers_is_retried_not_an_internal_error(make_sandbox, cli_env):
    """The one-time customer listing (build_index) is retried too. Before bbfd6be one 503 there made the engine
    report "ClinicSync hit an unexpected problem (StripeFailure)", exit 1, with a traceback in the log."""
    spec = "before:503=0.5,seed=10,max=1"
    plan = FaultPlan.parse(spec)
    assert [plan.choose() for _ in range(3)] == [None, "before:503", None], "only the 2nd request fails"
    sandbox = make_sandbox(profile="clean", patients=3)
    env = cli_env(sandbox)
    admin(sandbox.stripe_url, "faults", spec=spec)
    synced = cli(env, "sync", "--once")
    assert stats(sandbox.stripe_url)["faulted"] == {"before:503": 1}
    assert stats(sandbox.stripe_url)["by_endpoint"]["GET /v1/customers"] >= 1
    assert "unexpected problem" not in synced.text, synced
    assert synced.code == 0, synced
    assert len(customers(sandbox)) == 3


def test_cliniko_rate_limiting_that_outlasts_the_retries_exits_5_and_the_next_sync_carries_on(make_sandbox, cli_env):
    """A 429 that outlasts the retries is transient, like an outage: exit 5 ("unreachable"), not a record error
    (before, it stopped the stream as "source_error" and the CLI exited 1)."""
    spec = "before:429=0.6,seed=42,max=3"
    plan = FaultPlan.parse(spec)
    assert [plan.choose() for _ in range(4)] == [None, "before:429", "before:429", "before:429"]
    sandbox = make_sandbox(profile="clean", patients=3)
    env = cli_env(sandbox, CLINICSYNC_RETRY_MAX_ATTEMPTS="3")
    admin(sandbox.cliniko_url, "faults", spec=spec)  # the settings read passes, the patient listing is limited
    limited = expect(cli(env, "sync", "--once"), 5)
    assert "kept limiting how fast" in limited.text, limited
    assert stats(sandbox.cliniko_url)["faulted"] == {"before:429": 3}

    assert cli(env, "sync", "--once").code == 0
    assert len(customers(sandbox)) == 3


# --- configuration problems --------------------------------------------------------------------------------


def test_a_damaged_database_exits_2_saying_how_to_recover_without_a_traceback(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=1)
    env = cli_env(sandbox)
    db_file = AppPaths.resolve(env).db_path
    db_file.parent.mkdir(parents=True, exist_ok=True)
    db_file.write_bytes(b"\x00not a database\xff" * 512)
    for command in (("status",), ("sync", "--once")):
        failed = expect(cli(env, *command), 2)
        assert "is damaged" in failed.err and str(db_file) in failed.err, failed
        assert "Traceback" not in failed.text
    assert stats(sandbox.cliniko_url)["requests"] == 0


def test_no_keys_at_all_exits_2_naming_the_missing_key(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=1)
    env = without(cli_env(sandbox), "CLINICSYNC_CLINIKO_API_KEY", "CLINICSYNC_STRIPE_API_KEY")
    failed = expect(cli(env, "sync", "--once"), 2)
    assert "No Cliniko API key is set" in failed.err
    assert "clinicsync config set-secret cliniko_api_key" in failed.err

    only_cliniko = env | {"CLINICSYNC_CLINIKO_API_KEY": sandbox.cliniko_key}
    assert "No Stripe API key is set" in expect(cli(only_cliniko, "sync", "--once"), 2).err


def test_no_keys_and_no_usable_keyring_exits_2_with_what_to_do(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=1)
    env = without(cli_env(sandbox, PYTHON_KEYRING_BACKEND=FAIL_KEYRING), "CLINICSYNC_CLINIKO_API_KEY")
    failed = expect(cli(env, "sync", "--once"), 2)
    assert "no keyring backend is available" in failed.err
    assert "CLINICSYNC_CLINIKO_API_KEY" in failed.err, "the message says how to run headless"


@pytest.mark.parametrize("email", [None, ""])
def test_no_contact_email_exits_2(make_sandbox, cli_env, email):
    sandbox = make_sandbox(profile="clean", patients=1)
    env = without(cli_env(sandbox), "CLINICSYNC_CONTACT_EMAIL")
    if email is not None:
        env["CLINICSYNC_CONTACT_EMAIL"] = email
    failed = expect(cli(env, "sync", "--once"), 2)
    assert "contact email" in failed.err
    assert stats(sandbox.cliniko_url)["requests"] == 0, "nothing is sent to Cliniko without a contact email"


def test_an_insecure_base_url_in_the_environment_exits_2(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=1)
    env = cli_env(sandbox, CLINICSYNC_STRIPE_BASE_URL="http://stripe.example.com")
    failed = expect(cli(env, "sync", "--once"), 2)
    assert "must start with https://" in failed.err


def test_usage_errors_exit_2(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=1)
    env = cli_env(sandbox)
    assert "sync --once" in expect(cli(env, "sync"), 2).err
    expect(cli(env, "frobnicate"), 2)
    expect(cli(env, "review", "link", "1"), 2)
    not_a_number = expect(cli(env, "review", "link", "first", "cus_1"), 2)
    assert "'first' is not a review item number" in not_a_number.err and "Traceback" not in not_a_number.err
    assert "no open review item #7" in expect(cli(env, "review", "ignore", "#7"), 2).err, "as `review list` prints it"
    assert "Unknown stream" in expect(cli(env, "sync", "--once", "--stream", "cliniko.nope"), 2).err
    assert "usage: clinicsync" in expect(cli(env, "--help"), 0).out
    assert stats(sandbox.cliniko_url)["requests"] == 0


def test_sandbox_help_and_bad_options(cli_env, make_sandbox):
    sandbox = make_sandbox(profile="clean", patients=1)
    env = cli_env(sandbox)
    helped = expect(cli(env, "sandbox", "--help"), 0)
    assert "usage: clinicsync sandbox" in helped.out and "--profile" in helped.out
    assert "invalid choice" in expect(cli(env, "sandbox", "--profile", "nope"), 2).err


# --- the profile lock --------------------------------------------------------------------------------------


def test_another_sync_holding_the_profile_lock_exits_4(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=3)
    env = cli_env(sandbox)
    paths = AppPaths.resolve(env)
    with ProfileLock(paths.lock_file):
        locked = expect(cli(env, "sync", "--once"), 4)
        assert "Another sync is already running for this profile" in locked.err
        assert stats(sandbox.cliniko_url)["requests"] == 0
        # Reading the state is not a sync: it works while the lock is held.
        expect(cli(env, "status"), 0)
    assert "3 created" in expect(cli(env, "sync", "--once"), 0).out


def test_a_slow_sync_in_another_process_makes_a_second_one_exit_4(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=30)
    env = cli_env(sandbox)
    admin(sandbox.stripe_url, "config", latency_ms=60)
    slow = popen_cli(env | {"CLINICSYNC_STRIPE_WORKERS": "1"}, "sync", "--once")
    try:
        wait_for_writes(sandbox, slow)
        second = expect(cli(env, "sync", "--once"), 4)
        assert "Another sync is already running" in second.err
    finally:
        out, err = slow.communicate(timeout=120)
    assert slow.returncode == 0, (out, err)
    assert len(customers(sandbox)) == 30


# --- no keyring needed when the environment has the keys ---------------------------------------------------


def test_keys_from_the_environment_need_no_keyring_at_all(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=5)
    env = without(cli_env(sandbox, PYTHON_KEYRING_BACKEND=FAIL_KEYRING), "DBUS_SESSION_BUS_ADDRESS")
    env["DBUS_SESSION_BUS_ADDRESS"] = "unix:path=/nonexistent/clinicsync-test-bus"
    synced = expect(cli(env, "sync", "--once"), 0)
    assert "5 created" in synced.out
    assert "keyring" not in synced.text.lower()
    expect(cli(env, "status"), 0)
    listed = expect(cli(env, "config", "list"), 0)
    assert "secret stripe_api_key: set in the environment" in listed.out


def test_keys_from_the_environment_never_open_the_keyring(make_sandbox, cli_env, tmp_path):
    sandbox = make_sandbox(profile="clean", patients=5)
    trap = tmp_path / "keyring-opened"
    env = without(cli_env(sandbox, PYTHON_KEYRING_BACKEND=TRAP_KEYRING), "DBUS_SESSION_BUS_ADDRESS")
    env[TRAP_FILE] = str(trap)
    assert "5 created" in expect(cli(env, "sync", "--once"), 0).out
    expect(cli(env, "status"), 0)
    expect(cli(env, "review", "list"), 0)
    assert not trap.exists(), "a run with every key in its environment opened the keyring"
    # The trap works: a run that does need the keyring opens it.
    cli(without(env, "CLINICSYNC_STRIPE_API_KEY"), "sync", "--once")
    assert trap.exists()


# --- doctor ------------------------------------------------------------------------------------------------


def test_doctor_on_a_working_profile_exits_0_names_the_accounts_and_never_prints_a_key(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=4)
    env = cli_env(sandbox)
    expect(cli(env, "sync", "--once"), 0)
    doctor = expect(cli(env, "doctor"), 0)
    lines = doctor.out.splitlines()
    assert any(line.startswith("✓ Database:") and "integrity ok" in line for line in lines), doctor
    assert any(line.startswith("✓ Stripe connection:") and "TEST" in line for line in lines), doctor
    assert any(line.startswith("✓ Cliniko connection:") for line in lines), doctor
    assert any(line.startswith("✓ cliniko.patients:") and "0 write(s) queued" in line for line in lines), doctor
    assert "Everything a sync needs is in place" in doctor.out
    for key in (sandbox.stripe_key, sandbox.cliniko_key):
        assert key not in doctor.text


def test_doctor_names_a_revoked_key_with_exit_3_and_a_missing_service_with_exit_5(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=1)
    env = cli_env(sandbox)
    admin(sandbox.stripe_url, "revoke", key=sandbox.stripe_key)
    revoked = expect(cli(env, "doctor"), 3)
    assert "✗ Stripe connection:" in revoked.out and "revoked" in revoked.out
    nothing_there = f"http://127.0.0.1:{_free_port()}/v1"
    unreachable = expect(cli(env | {"CLINICSYNC_CLINIKO_BASE_URL": nothing_there}, "doctor"), 5)
    assert "✗ Cliniko connection:" in unreachable.out and "✗ Stripe connection:" in unreachable.out
    offline = expect(cli(env, "doctor", "--offline"), 0)
    assert "connection:" not in offline.out, "--offline sends no request"


def test_doctor_reports_a_damaged_database_and_carries_on_with_the_other_checks(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=1)
    env = cli_env(sandbox)
    db_file = AppPaths.resolve(env).db_path
    db_file.parent.mkdir(parents=True, exist_ok=True)
    db_file.write_bytes(b"\x00not a database\xff" * 512)
    doctor = expect(cli(env, "doctor"), 2)
    assert "✗ Database:" in doctor.out and "is damaged" in doctor.out and "Traceback" not in doctor.text
    assert "✓ Stripe key: set (from the environment)" in doctor.out, "the checks that need no database still run"
    assert stats(sandbox.stripe_url)["requests"] == 0, "no connection test without a usable database"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_reader_that_stops_early_ends_the_output_quietly(make_sandbox, cli_env):
    """`clinicsync mapping show | head -1`: no BrokenPipeError traceback. The pipe's reading end is closed before
    the command starts, so its first write already finds nobody reading (deterministic, unlike a real `head`)."""
    env = cli_env(make_sandbox(profile="clean", patients=1))
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "clinicsync", "mapping", "show"],
            env=dict(env),
            cwd=REPO,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


@pytest.mark.skipif(os.name == "nt", reason="checks the POSIX `export` lines; Windows gets PowerShell ones")
def test_the_sandbox_prints_export_lines_that_work_in_one_paste(tmp_path):
    """`clinicsync sandbox` as the README shows it: its export lines, pasted into a shell as they are, point a
    sync at the sandbox in a demo profile of its own (not the user's real one), which goes when it stops."""
    port_file, output = tmp_path / "sandbox.json", tmp_path / "sandbox.out"
    clean = {name: value for name, value in os.environ.items() if not name.startswith("CLINICSYNC_")}
    with output.open("w") as sink:
        sandbox = subprocess.Popen(
            [
                *(sys.executable, "-m", "clinicsync", "sandbox", "--patients", "4", "--products", "3"),
                *("--port-file", str(port_file)),
            ],
            env=clean,
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():  # written after the banner is printed and flushed
            assert sandbox.poll() is None and time.monotonic() < deadline, output.read_text()
            time.sleep(0.05)
        info = json.loads(port_file.read_text())
        exports = [line for line in output.read_text().splitlines() if line.startswith("export ")]
        names = [line.split(" ", 1)[1].split("=", 1)[0] for line in exports]
        assert names == ["CLINICSYNC_HOME", *info["env"]]
        home = Path(exports[0].split("=", 1)[1])
        assert home.is_dir() and home.parent.resolve() == Path(tempfile.gettempdir()).resolve()
        assert home.name.startswith("clinicsync-sandbox-")

        pasted = "\n".join([*exports, f"exec {shlex.quote(sys.executable)} -m clinicsync sync --once"])
        synced = subprocess.run(
            ["sh", "-c", pasted],
            env={**clean, "PYTHON_KEYRING_BACKEND": FAIL_KEYRING},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert synced.returncode == 0, synced.stdout + synced.stderr
        assert stats(info["stripe_url"])["mutations"].get("POST /v1/customers") == 4
        assert AppPaths.under(home).db_path.is_file()  # the demo profile was used, not the default one
    finally:
        sandbox.send_signal(signal.SIGTERM)
        sandbox.wait(timeout=20)
    assert sandbox.returncode == 0, output.read_text()
    assert not home.exists(), "the demo profile is removed with the sandbox"
