"""Shared helpers for tests that run real syncs against the loopback sandbox."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from clinicsync.app import AppContext, bootstrap
from clinicsync.retry import Cancelled, CancelToken
from clinicsync.sync.engine import RunResult
from clinicsync.sync.service import run_sync

# Tests run the sandbox without latency or rate limits and with tiny backoff delays.
FAST_SETTINGS = {
    "CLINICSYNC_RETRY_BASE_DELAY_SECONDS": "0.001",
    "CLINICSYNC_RETRY_MAX_DELAY_SECONDS": "0.01",
    "CLINICSYNC_RETRY_MAX_ATTEMPTS": "8",
    "CLINICSYNC_CLINIKO_REQUESTS_PER_MINUTE": "0",
    "CLINICSYNC_CALCOM_REQUESTS_PER_MINUTE": "0",
    "CLINICSYNC_STRIPE_REQUESTS_PER_SECOND": "100000",
    "CLINICSYNC_STRIPE_TIMEOUT_SECONDS": "5",
    "CLINICSYNC_SYNC_CURSOR_OVERLAP_SECONDS": "5",
}


def origin(url: str) -> str:
    parsed = httpx.URL(url)
    return f"{parsed.scheme}://{parsed.host}:{parsed.port}"


def admin(url: str, action: str, **params: Any) -> Any:
    response = httpx.post(f"{origin(url)}/_sandbox/{action}", json=params, timeout=30)
    response.raise_for_status()
    return response.json() if response.content else None


ARCHIVED_LISTINGS = ("lists_live", "archived_only")


def set_archived_listing(sandbox: Any, listing: str) -> None:
    """Make the Cliniko sandbox's `q[]=archived_at:*` listings hold live and archived records ("lists_live", its
    default) or archived ones only ("archived_only"): Cliniko does not say which (docs/sandbox.md)."""
    assert listing in ARCHIVED_LISTINGS, listing
    answer = admin(sandbox.cliniko_url, "archived_lists_live", enabled=listing == "lists_live")
    assert answer == {"archived_lists_live": listing == "lists_live"}


def stats(url: str) -> dict[str, Any]:
    response = httpx.get(f"{origin(url)}/_sandbox/stats", timeout=30)
    response.raise_for_status()
    return response.json()


def executed_writes(url: str) -> int:
    return sum(stats(url)["mutations"].values())


def profile_env(home: Path, sandbox_env: Mapping[str, str], **overrides: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLINICSYNC_")}
    env.update(FAST_SETTINGS)
    env.update(sandbox_env)
    env["CLINICSYNC_HOME"] = str(home)
    env.update(overrides)
    return env


def sync_once(
    env: Mapping[str, str], *, dry_run: bool = False, trigger: str = "test", stream: str = "cliniko.patients"
) -> RunResult:
    """One run of one stream (the patients stream unless another is named)."""
    ctx = bootstrap(env)
    (result,) = run_sync(ctx.paths, ctx.settings, ctx.secrets, streams=[stream], trigger=trigger, dry_run=dry_run)
    return result


def context(env: Mapping[str, str]) -> AppContext:
    return bootstrap(env)


def expected_customer_fields(patient: Mapping[str, Any]) -> dict[str, Any]:
    """The patient's values as the default mapping puts them on the Stripe customer."""
    phones = patient.get("patient_phone_numbers") or []
    mobile = next((p for p in phones if p["phone_type"] == "Mobile"), phones[0] if phones else None)
    line2 = ", ".join(part for part in (patient.get("address_2"), patient.get("address_3")) if part) or None
    return {
        "name": f"{patient['first_name']} {patient['last_name']}".strip(),
        "email": patient.get("email"),
        "phone": mobile["number"] if mobile else None,
        "line1": patient.get("address_1"),
        "line2": line2,
        "city": patient.get("city"),
        "state": patient.get("state"),
        "postal_code": patient.get("post_code"),
        "country": patient.get("country_code"),
    }


def actual_customer_fields(customer: Mapping[str, Any]) -> dict[str, Any]:
    address = customer.get("address") or {}
    return {
        "name": customer["name"],
        "email": customer["email"],
        "phone": customer["phone"],
        **{key: address.get(key) for key in ("line1", "line2", "city", "state", "postal_code", "country")},
    }


class CutPauses(CancelToken):
    """A run's cancel token (whose sleep every client of the run waits with) that notes each wait cut short:
    (the thread's name, the seconds it was to wait). A test shows a pause was ended, not waited out, by this record,
    never by the time it took."""

    def __init__(self) -> None:
        super().__init__()
        self.cut: list[tuple[str, float]] = []

    def sleep(self, seconds: float) -> None:
        try:
            super().sleep(seconds)
        except Cancelled:
            self.cut.append((threading.current_thread().name, seconds))
            raise


def paused_once(emulator: Any, path: str, paused: threading.Event, retry_after_s: int = 60) -> Any:
    """A handler for `emulator` (a sandbox's) that answers the first GET of `path` with a 429 asking to wait
    `retry_after_s` seconds, sets `paused`, and answers everything else as the emulator does: a listing caught in a
    long rate-limit pause. Install it with monkeypatch.setattr(emulator, "handle", ...)."""
    handle = emulator.handle

    def answer(request: Any) -> Any:
        if request.method == "GET" and request.path == path and not paused.is_set():
            response = emulator.rate_limited_response(request, 0)
            response.headers["Retry-After"] = str(retry_after_s)
            paused.set()
            return response
        return handle(request)

    return answer


def revoked_once_paused(emulator: Any, path_end: str, paused: threading.Event) -> Any:
    """A handler for a source's sandbox `emulator` that, when a GET of a path ending in `path_end` arrives, waits
    for `paused` (another listing is in its pause: `paused_once`) and then revokes the key, failing the run there."""
    handle = emulator.handle

    def answer(request: Any) -> Any:
        if request.method == "GET" and request.path.rstrip("/").endswith(path_end):
            paused.wait(10)
            emulator.admin("revoke_key", {})
        return handle(request)

    return answer
