"""Helpers for the reliability tests: the sandbox as a separate process, the sync as a subprocess, and one check
that Stripe mirrors Cliniko exactly (no duplicates, nothing missing, no orphans, every field current).
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clinicsync.sandbox.launcher import SandboxStartError, spawn
from tests import support
from tests.support import admin

ARCHIVED_MARKER = "cliniko_archived"
CROSS_REF = "cliniko_patient_id"


# --- Cliniko and Stripe state, read through the sandbox admin API ------------------------------------------
def live_customers(stripe_url: str) -> list[dict[str, Any]]:
    return [c for c in admin(stripe_url, "dump")["data"] if not c["deleted"]]


def all_patients(cliniko_url: str) -> dict[str, dict[str, Any]]:
    """Every patient the emulator holds (archived, merged and deleted ones too), by id."""
    return {p["id"]: p for p in admin(cliniko_url, "dump")["patients"]}


def is_live(patient: Mapping[str, Any]) -> bool:
    return not (patient.get("archived_at") or patient.get("deleted_at") or patient.get("merged_at"))


def expected_customer_fields(patient: Mapping[str, Any]) -> dict[str, Any]:
    """The patient's mapped values as Stripe should hold them, and whether it should be marked archived."""
    return {**support.expected_customer_fields(patient), "archived": not is_live(patient)}


def actual_customer_fields(customer: Mapping[str, Any]) -> dict[str, Any]:
    archived = bool((customer.get("metadata") or {}).get(ARCHIVED_MARKER))
    return {**support.actual_customer_fields(customer), "archived": archived}


@dataclass
class MirrorReport:
    duplicated: dict[str, list[str]] = field(default_factory=dict)  # patient id → its customer ids
    missing: list[str] = field(default_factory=list)  # live patients without a customer
    orphans: list[dict[str, Any]] = field(default_factory=list)  # customers naming no known patient
    stale: dict[str, dict[str, tuple[Any, Any]]] = field(default_factory=dict)  # pid → field → (want, have)
    customers: int = 0
    live_patients: int = 0

    @property
    def ok(self) -> bool:
        return not (self.duplicated or self.missing or self.orphans or self.stale)

    def describe(self, limit: int = 10) -> str:
        def head(items: Any) -> str:
            items = list(items.items()) if isinstance(items, dict) else list(items)
            more = f" … and {len(items) - limit} more" if len(items) > limit else ""
            return f"{items[:limit]}{more}"

        return (
            f"{self.live_patients} live patients, {self.customers} customers; "
            f"duplicated ({len(self.duplicated)}): {head(self.duplicated)}; "
            f"missing ({len(self.missing)}): {head(self.missing)}; "
            f"orphans ({len(self.orphans)}): {head(self.orphans)}; "
            f"stale ({len(self.stale)}): {head(self.stale)}"
        )


def mirror_report(cliniko_url: str, stripe_url: str) -> MirrorReport:
    """Compare both sides in full: every live patient has exactly one customer, every customer names a patient,
    and every customer's mapped fields (and archived marker) equal the patient's latest values."""
    patients = all_patients(cliniko_url)
    customers = live_customers(stripe_url)
    report = MirrorReport(customers=len(customers), live_patients=sum(1 for p in patients.values() if is_live(p)))
    by_pid: dict[str, list[dict[str, Any]]] = {}
    for customer in customers:
        pid = (customer.get("metadata") or {}).get(CROSS_REF)
        if not pid or pid not in patients or patients[pid].get("deleted_at"):
            report.orphans.append({key: customer.get(key) for key in ("id", "name", "email", "metadata", "created")})
            continue
        by_pid.setdefault(pid, []).append(customer)
    for pid, found in by_pid.items():
        if len(found) > 1:
            report.duplicated[pid] = [c["id"] for c in found]
    for pid, patient in patients.items():
        if is_live(patient) and pid not in by_pid:
            report.missing.append(pid)
    for pid, found in by_pid.items():
        want = expected_customer_fields(patients[pid])
        for customer in found:
            have = actual_customer_fields(customer)
            diff = {key: (want[key], have[key]) for key in want if want[key] != have[key]}
            if diff:
                report.stale[pid] = diff
    return report


# --- products: Cliniko's catalogue against Stripe's products and prices ---------------------------------------
PRODUCT_REF = "cliniko_product_id"
DUPLICATE_OF = "clinicsync_duplicate_of"  # a twin of a race that could not be deleted: retired, not a duplicate


def cliniko_products(sandbox_env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Every product as Cliniko's API renders it (the archived pass lists live and archived ones), by id."""
    from clinicsync.sources.cliniko import ClinikoClient

    client = ClinikoClient(
        sandbox_env["CLINICSYNC_CLINIKO_API_KEY"],
        contact_email="tests@example.com",
        base_url=sandbox_env["CLINICSYNC_CLINIKO_BASE_URL"],
    )
    try:
        return {p["id"]: p for p in client.iter_changed("/products", None, archived=True)}
    finally:
        client.close()


@dataclass
class ProductReport:
    duplicated: dict[str, list[str]] = field(default_factory=dict)  # product id → its Stripe products
    duplicate_prices: dict[str, list[str]] = field(default_factory=dict)  # Stripe product → prices of one content
    missing: list[str] = field(default_factory=list)  # live products without a Stripe product
    orphans: list[str] = field(default_factory=list)  # Stripe products naming no known product
    stale: dict[str, dict[str, tuple[Any, Any]]] = field(default_factory=dict)  # pid → field → (want, have)
    products: int = 0
    live_products: int = 0
    retired_twins: int = 0

    @property
    def ok(self) -> bool:
        return not (self.duplicated or self.duplicate_prices or self.missing or self.orphans or self.stale)

    def describe(self, limit: int = 5) -> str:
        def head(items: Any) -> str:
            items = list(items.items()) if isinstance(items, dict) else list(items)
            return f"{items[:limit]}{f' … and {len(items) - limit} more' if len(items) > limit else ''}"

        return (
            f"{self.live_products} live products, {self.products} Stripe products ({self.retired_twins} retired "
            f"twins); duplicated: {head(self.duplicated)}; duplicate prices: {head(self.duplicate_prices)}; "
            f"missing: {head(self.missing)}; orphans: {head(self.orphans)}; stale: {head(self.stale)}"
        )


def product_report(sandbox_env: Mapping[str, str], stripe_url: str, currency: str = "aud") -> ProductReport:
    """Every live Cliniko product is one active Stripe product with its name and stock level, whose one active price
    is its default and equals Cliniko's price including tax; an archived one synced before is inactive; no Stripe
    product holds two prices of one amount, currency and tax behaviour (a price made twice)."""
    from clinicsync import money

    products = cliniko_products(sandbox_env)
    dump = admin(stripe_url, "dump")
    prices: dict[str, list[dict[str, Any]]] = {}
    for price in dump["prices"]:
        prices.setdefault(price["product"], []).append(price)
    report = ProductReport(live_products=sum(1 for p in products.values() if not p.get("archived_at")))
    named: dict[str, list[dict[str, Any]]] = {}
    for stripe in dump["products"]:
        metadata = stripe.get("metadata") or {}
        if stripe.get("deleted") or (metadata.get(DUPLICATE_OF) and stripe["active"] is False):
            report.retired_twins += not stripe.get("deleted")
            continue
        report.products += 1
        ref = metadata.get(PRODUCT_REF)
        if ref not in products:
            report.orphans.append(stripe["id"])
            continue
        named.setdefault(ref, []).append(stripe)
        contents = Counter((p["unit_amount"], p["currency"], p["tax_behavior"]) for p in prices.get(stripe["id"], []))
        if any(count > 1 for count in contents.values()):
            report.duplicate_prices[stripe["id"]] = [p["id"] for p in prices[stripe["id"]]]
    for pid, product in products.items():
        found = named.get(pid, [])
        live = not product.get("archived_at")
        if len(found) > 1:
            report.duplicated[pid] = [p["id"] for p in found]
        if not found:
            if live:
                report.missing.append(pid)
            continue
        stripe = found[0]
        active = [p for p in prices.get(stripe["id"], []) if p["active"]]
        want = {
            "active": live,
            "name": product["name"],
            "stock": product.get("stock_level") or None,
            "prices": [(money.to_minor_units(product["price_including_tax"], currency), currency, "inclusive")],
            "default is the active price": True,
        }
        have = {
            "active": stripe["active"],
            "name": stripe["name"],
            "stock": (stripe.get("metadata") or {}).get("cliniko_stock_level") or None,
            "prices": [(p["unit_amount"], p["currency"], p["tax_behavior"]) for p in active],
            "default is the active price": [p["id"] for p in active] == [stripe.get("default_price")],
        }
        diff = {key: (want[key], have[key]) for key in want if want[key] != have[key]}
        if diff:
            report.stale[pid] = diff
    return report


def events_by_record(home: Path, stream: str) -> set[str]:
    """Records of `stream` whose Stripe object this installation's history says it created, linked or updated."""
    with sqlite3.connect(db_path(home), timeout=10) as con:
        rows = con.execute(
            "SELECT DISTINCT source_id FROM sync_event WHERE stream = ? AND action IN ('created', 'linked', 'updated')",
            (stream,),
        )
        return {row[0] for row in rows.fetchall()}


# --- the profile's own database (read directly, so the test process never binds the app's models) ---------
def db_path(home: Path) -> Path:
    return home / "data" / "clinicsync.sqlite3"


def outbox_status(home: Path) -> Counter[str]:
    path = db_path(home)
    if not path.exists():
        return Counter()
    with sqlite3.connect(path, timeout=10) as con:
        return Counter(dict(con.execute("SELECT status, COUNT(*) FROM outbox_entry GROUP BY status").fetchall()))


def pending_source_ids(home: Path) -> list[str]:
    """Records with a write stored in the outbox but not confirmed: the ones a crash left mid-write."""
    path = db_path(home)
    if not path.exists():
        return []
    with sqlite3.connect(path, timeout=10) as con:
        rows = con.execute("SELECT DISTINCT source_id FROM outbox_entry WHERE status = 'pending' ORDER BY id")
        return [row[0] for row in rows.fetchall()]


def log_tail(home: Path, lines: int = 30) -> str:
    path = home / "logs" / "clinicsync.log"
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


# --- the sandbox in another process --------------------------------------------------------------------------
@dataclass
class SandboxProcess:
    process: subprocess.Popen[bytes]
    info: dict[str, Any]
    output: Path

    @property
    def cliniko_url(self) -> str:
        return str(self.info["cliniko_url"])

    @property
    def stripe_url(self) -> str:
        return str(self.info["stripe_url"])

    @property
    def env(self) -> dict[str, str]:
        return dict(self.info["env"])

    def stop(self) -> int | None:
        """SIGTERM, as a user's Ctrl+C or a service manager would; SIGKILL only if it ignores that."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        return self.process.returncode


def start_sandbox_process(
    workdir: Path,
    *,
    profile: str = "clean",
    patients: int = 50,
    products: int = 0,
    seed: int = 1,
    faults: str = "",
    timeout_s: float = 30,
) -> SandboxProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    output = workdir / "sandbox.out"
    args = ["--profile", profile, "--patients", str(patients), "--products", str(products), "--seed", str(seed)]
    if faults:
        args += ["--faults", faults]
    try:
        with output.open("wb") as sink:
            process, info = spawn(
                args, workdir / "sandbox.json", timeout_s=timeout_s, stdout=sink, stderr=subprocess.STDOUT
            )
    except SandboxStartError as exc:
        raise SandboxStartError(f"{exc}: {output.read_text(errors='replace')[-2000:]}") from None
    return SandboxProcess(process=process, info=info, output=output)


def sync_command() -> list[str]:
    return [sys.executable, "-m", "clinicsync", "sync", "--once"]
