"""The Cal.com webhook receiver, run by the scheduler's host as the window and `clinicsync serve` run it, against
the Cal.com and Stripe sandboxes over real HTTP:

- a valid delivery is accepted and its booking's attendee is in Stripe within 5 s;
- a wrong signature (403), a missing one (401), a body over 1 MB (413, refused unread) and a stale delivery (400)
  are refused, and nothing from them reaches the database or the sync;
- a repeated delivery is answered 200 and triggers nothing.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from clinicsync.app import bootstrap
from clinicsync.secrets import SYNC_SECRETS
from clinicsync.store.models import SyncRun, WebhookDelivery
from clinicsync.sync.history import WEBHOOK
from clinicsync.sync.host import SchedulerHost
from clinicsync.sync.runner import read_credentials
from clinicsync.sync.service import run_sync
from clinicsync.sync.webhook import MAX_BODY_BYTES, SIGNATURE_HEADER, signature, url_for
from tests.support import admin

SECRET = "sandbox-webhook-secret-not-real-0001"
QUIET = {  # no scheduled run or reconciliation during the test: every run it sees, a delivery asked for
    "CLINICSYNC_SCHEDULE_INTERVAL_SECONDS": "3600",
    "CLINICSYNC_SCHEDULE_RECONCILE_FREQUENCY": "off",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def delivery(uid: str, *, trigger: str = "BOOKING_CREATED", created: datetime | None = None) -> bytes:
    created_at = (created or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    payload = {"uid": uid, "status": "ACCEPTED"}
    return json.dumps({"triggerEvent": trigger, "createdAt": created_at, "payload": payload}).encode()


def post(url: str, body: bytes | str, signed: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if signed is not None:
        headers[SIGNATURE_HEADER] = signed
    return httpx.post(url, content=body, headers=headers, timeout=10)


def post_oversized(port: int) -> int:
    """Announce a body over the limit and send only its first KB: the answer's status comes without the rest."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(
            (
                f"POST /calcom/webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"{SIGNATURE_HEADER}: {'0' * 64}\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n"
            ).encode()
            + b"{" * 1024
        )
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := conn.recv(4096):  # the receiver answers and closes without waiting for the rest
                answer += chunk
    return int(answer.split(b" ", 2)[1])


def stripe_emails(sandbox: Any) -> set[str]:
    return {c.get("email") for c in admin(sandbox.stripe_url, "dump")["data"] if not c.get("deleted")}


def webhook_runs() -> list[SyncRun]:
    return list(SyncRun.select().where(SyncRun.trigger == WEBHOOK))


@pytest.fixture
def receiving(make_sandbox: Any, env_for: Any) -> Iterator[tuple[Any, SchedulerHost, str]]:
    sandbox = make_sandbox(profile="clean", patients=4, calcom=True, calcom_bookings=8)
    port = free_port()
    env = env_for(
        sandbox,
        CLINICSYNC_CALCOM_WEBHOOK_ENABLED="true",
        CLINICSYNC_CALCOM_WEBHOOK_PORT=str(port),
        CLINICSYNC_CALCOM_WEBHOOK_SECRET=SECRET,
        **QUIET,
    )
    ctx = bootstrap(env)
    run_sync(ctx.paths, ctx.settings, ctx.secrets, trigger="test")  # connected and synced once, as in a clinic
    host = SchedulerHost(ctx.paths, ctx.settings, credentials=lambda: read_credentials(ctx.secrets, SYNC_SECRETS))
    host.start()
    stop = threading.Event()
    thread = threading.Thread(target=host.run_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while host.webhook.listener is None:
            assert time.monotonic() < deadline, f"the receiver did not start: {host.webhook.problem}"
            time.sleep(0.02)
        yield sandbox, host, url_for("127.0.0.1", port)
    finally:
        stop.set()
        host.wake()
        thread.join(30)
        host.stop(30)


def test_refused_deliveries_get_their_status_and_reach_nothing(receiving) -> None:
    sandbox, host, url = receiving
    (uid,) = admin(sandbox.calcom_url, "add", email="refused.visitor@example.test", name="Refused Visitor")["uids"]
    body = delivery(uid)

    wrong = post(url, body, signature(body, "another-secret"))
    assert wrong.status_code == 403, wrong.text
    assert post(url, body, None).status_code == 401
    assert post(url, body, "no-secret-provided").status_code == 401
    assert post_oversized(host.webhook.listener.bound_port) == 413
    stale = delivery(uid, created=datetime.now(UTC) - timedelta(days=1, minutes=1))
    answer = post(url, stale, signature(stale, SECRET))
    assert answer.status_code == 400 and "more than a day" in answer.json()["message"]
    assert post(url, b"{not json", signature(b"{not json", SECRET)).status_code == 400

    # The listener notes a booking before it answers: had any been accepted, it would show by now.
    assert host.webhook_notices == 0
    assert WebhookDelivery.select().count() == 0, "a refused delivery is not remembered"
    assert host.wait_idle(30) and webhook_runs() == [], "no sync was asked for"
    assert "refused.visitor@example.test" not in stripe_emails(sandbox)


def test_a_valid_delivery_syncs_its_booking_within_five_seconds_and_a_repeat_triggers_nothing(receiving) -> None:
    sandbox, host, url = receiving
    email = "webhook.visitor@example.test"
    (uid,) = admin(sandbox.calcom_url, "add", email=email, name="Webhook Visitor")["uids"]
    body = delivery(uid)

    started = time.monotonic()
    answer = post(url, body, signature(body, SECRET).upper())  # hex compares in either letter case
    assert answer.status_code == 200 and answer.json()["message"].startswith("Accepted"), answer.text
    while email not in stripe_emails(sandbox):
        assert time.monotonic() - started < 5, "the booking's attendee is not in Stripe within 5 s"
        time.sleep(0.05)
    assert host.wait_idle(30)
    (run,) = webhook_runs()
    assert run.stream == "calcom.bookings" and run.created >= 1, (run.outcome, run.message)

    again = post(url, body, signature(body, SECRET))
    assert again.status_code == 200 and again.json()["message"] == "Already received.", again.text
    assert host.webhook_notices == 1
    assert host.wait_idle(30) and len(webhook_runs()) == 1, "a repeat asks for no second sync"

    files = [path for folder in host.paths.directories() for path in folder.rglob("*") if path.is_file()]
    assert any(path.suffix == ".sqlite3" for path in files)
    assert not [path for path in files if SECRET.encode() in path.read_bytes()], "the secret is never stored"
