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
from functools import partial
from pathlib import Path
from typing import Any

from clinicsync.sandbox.launcher import SandboxStartError, spawn
from tests import support
from tests.support import admin

ARCHIVED_MARKER = "cliniko_archived"
CROSS_REF = "cliniko_patient_id"
ATTENDEE_REF = "calcom_attendee_ref"  # a customer only Cal.com knows is the Cal.com report's, not an orphan here


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


def shown_head(items: Any, limit: int) -> str:
    """The first `limit` of a report's entries (a dict's items, or a list), and how many more there are."""
    items = list(items.items()) if isinstance(items, dict) else list(items)
    more = f" … and {len(items) - limit} more" if len(items) > limit else ""
    return f"{items[:limit]}{more}"


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
        head = partial(shown_head, limit=limit)

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
        if not pid and (customer.get("metadata") or {}).get(ATTENDEE_REF):
            continue  # a Cal.com-only person's customer: calcom_people_report accounts for it
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
EVENT_TYPE_REF = "calcom_event_type_id"  # a Cal.com event type's product: event_type_report's, not an orphan here
DUPLICATE_OF = "clinicsync_duplicate_of"  # a twin of a race that could not be deleted: retired, not a duplicate


def cliniko_listing(sandbox_env: Mapping[str, str], path: str) -> dict[str, dict[str, Any]]:
    """Every record of a Cliniko listing as its API renders it, live and archived, by id."""
    from clinicsync.sources.cliniko import ClinikoClient

    client = ClinikoClient(
        sandbox_env["CLINICSYNC_CLINIKO_API_KEY"],
        contact_email="tests@example.com",
        base_url=sandbox_env["CLINICSYNC_CLINIKO_BASE_URL"],
    )
    try:
        return {r["id"]: r for r in client.iter_live_and_archived(path, None)}
    finally:
        client.close()


def cliniko_products(sandbox_env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Every product as Cliniko's API renders it, live and archived, by id."""
    return cliniko_listing(sandbox_env, "/products")


@dataclass
class CatalogueReport:
    """A source's priced records (Cliniko products, Cal.com event types) against Stripe products and prices."""

    duplicated: dict[str, list[str]] = field(default_factory=dict)  # record id → its Stripe products
    duplicate_prices: dict[str, list[str]] = field(default_factory=dict)  # Stripe product → prices of one content
    missing: list[str] = field(default_factory=list)  # live (priced, visible) records without a Stripe product
    orphans: list[str] = field(default_factory=list)  # Stripe products naming no record the source has
    stale: dict[str, dict[str, tuple[Any, Any]]] = field(default_factory=dict)  # id → field → (want, have)
    products: int = 0

    @property
    def ok(self) -> bool:
        return not (self.duplicated or self.duplicate_prices or self.missing or self.orphans or self.stale)


@dataclass
class ProductReport(CatalogueReport):
    live_products: int = 0
    retired_twins: int = 0

    def describe(self, limit: int = 5) -> str:
        head = partial(shown_head, limit=limit)

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
        if metadata.get(EVENT_TYPE_REF) and not metadata.get(PRODUCT_REF):
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


# --- Cal.com: event types against products and prices, attendees against customers --------------------------
@dataclass
class EventTypeReport(CatalogueReport):
    priced: int = 0

    def describe(self, limit: int = 5) -> str:
        head = partial(shown_head, limit=limit)

        return (
            f"{self.priced} priced visible event types, {self.products} products; duplicated: {head(self.duplicated)}; "
            f"duplicate prices: {head(self.duplicate_prices)}; missing: {head(self.missing)}; "
            f"orphans: {head(self.orphans)}; stale: {head(self.stale)}"
        )


def calcom_app_price(event_type: Mapping[str, Any]) -> dict[str, Any] | None:
    """The enabled Stripe app settings of an event type with a price, else None (a free event type)."""
    app = ((event_type.get("metadata") or {}).get("apps") or {}).get("stripe")
    return app if app and app.get("enabled") and app.get("price") else None


def calcom_live_event_types(calcom_url: str) -> dict[str, dict[str, Any]]:
    """Priced event types that are neither hidden nor deleted (each should be one active product), by id."""
    return {
        str(et["id"]): et
        for et in admin(calcom_url, "dump")["event_types"]
        if calcom_app_price(et) and not et["hidden"] and not et["deleted"]
    }


def event_type_report(calcom_url: str, stripe_url: str) -> EventTypeReport:
    """Every priced, visible event type is one active Stripe product with its title, whose one active price is its
    default and equals the Stripe app's price; a hidden or deleted one synced before is inactive with its one price
    still the default; no product holds two prices of one amount, currency and tax behaviour."""
    event_types = {str(et["id"]): et for et in admin(calcom_url, "dump")["event_types"]}
    dump = admin(stripe_url, "dump")
    prices: dict[str, list[dict[str, Any]]] = {}
    for price in dump["prices"]:
        prices.setdefault(price["product"], []).append(price)
    report = EventTypeReport()
    named: dict[str, list[dict[str, Any]]] = {}
    for stripe in dump["products"]:
        metadata = stripe.get("metadata") or {}
        ref = metadata.get(EVENT_TYPE_REF)
        if not ref or stripe.get("deleted") or (metadata.get(DUPLICATE_OF) and stripe["active"] is False):
            continue
        report.products += 1
        if ref not in event_types:
            report.orphans.append(stripe["id"])
            continue
        named.setdefault(ref, []).append(stripe)
        contents = Counter((p["unit_amount"], p["currency"], p["tax_behavior"]) for p in prices.get(stripe["id"], []))
        if any(count > 1 for count in contents.values()):
            report.duplicate_prices[stripe["id"]] = [p["id"] for p in prices[stripe["id"]]]
    for eid, event_type in event_types.items():
        app = calcom_app_price(event_type)
        live = app is not None and not event_type["hidden"] and not event_type["deleted"]
        report.priced += live
        found = named.get(eid, [])
        if len(found) > 1:
            report.duplicated[eid] = [p["id"] for p in found]
        if not found:
            if live:
                report.missing.append(eid)
            continue
        stripe = found[0]
        active = [p for p in prices.get(stripe["id"], []) if p["active"]]
        want: dict[str, Any] = {"active": live, "default is the one active price": True}
        have: dict[str, Any] = {
            "active": stripe["active"],
            "default is the one active price": [p["id"] for p in active] == [stripe.get("default_price")],
        }
        if live:
            want |= {"name": event_type["title"], "prices": [(app["price"], app["currency"])]}
            have |= {"name": stripe["name"], "prices": [(p["unit_amount"], p["currency"]) for p in active]}
        diff = {key: (want[key], have[key]) for key in want if want[key] != have[key]}
        if diff:
            report.stale[eid] = diff
    return report


@dataclass
class PeopleReport:
    duplicated: dict[str, list[str]] = field(default_factory=dict)  # attendee ref → its customers
    missing: list[str] = field(default_factory=list)  # people without a customer
    orphans: list[str] = field(default_factory=list)  # customers naming a person no booking has
    unjoined: dict[str, tuple[str, Any]] = field(default_factory=dict)  # ref → (patient id, customer's patient id)
    stale: dict[str, dict[str, tuple[Any, Any]]] = field(default_factory=dict)  # ref → field → (want, have)
    shared_emails: list[str] = field(default_factory=list)  # customers of one email (a person twice)
    people: int = 0
    joined: int = 0  # people whose customer is a Cliniko patient's

    @property
    def ok(self) -> bool:
        return not (
            self.duplicated or self.missing or self.orphans or self.unjoined or self.stale or self.shared_emails
        )

    def describe(self, limit: int = 5) -> str:
        head = partial(shown_head, limit=limit)

        return (
            f"{self.people} people ({self.joined} also patients); duplicated: {head(self.duplicated)}; "
            f"missing: {head(self.missing)}; orphans: {head(self.orphans)}; unjoined: {head(self.unjoined)}; "
            f"stale: {head(self.stale)}; emails on two customers: {head(self.shared_emails)}"
        )


def calcom_people(calcom_url: str) -> dict[str, list[tuple[dict[str, Any], dict[str, Any]]]]:
    """Every attendee, by casefolded email → (booking, attendee entry) pairs, in start order."""
    from clinicsync.matchkey import normalized

    found: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    bookings = sorted(admin(calcom_url, "dump")["bookings"], key=lambda b: (b["startTime"], b["uid"]))
    for booking in bookings:
        for attendee in booking.get("attendees") or []:
            if attendee.get("email") and normalized(attendee["email"]):
                found.setdefault(normalized(attendee["email"]), []).append((booking, attendee))
    return found


def calcom_people_report(cliniko_url: str, calcom_url: str, stripe_url: str) -> PeopleReport:
    """Each person who booked is exactly one customer carrying their attendee ref and booking summary: the Cliniko
    patient's of the same email (in any letter case), or one joined to a patient earlier (whose email changed
    since: Cliniko's details are then mirror_report's to check), else one with Cal.com's name, email and phone."""
    from clinicsync.matchkey import normalized
    from clinicsync.streams.calcom_bookings import attendee_ref

    people = calcom_people(calcom_url)
    patients = all_patients(cliniko_url)
    patient_by_email: dict[str, list[str]] = {}
    for pid, patient in patients.items():
        if is_live(patient) and patient.get("email"):
            patient_by_email.setdefault(normalized(patient["email"]), []).append(pid)
    customers = [c for c in live_customers(stripe_url) if not (c.get("metadata") or {}).get(DUPLICATE_OF)]
    by_ref: dict[str, list[dict[str, Any]]] = {}
    for customer in customers:
        ref = (customer.get("metadata") or {}).get(ATTENDEE_REF)
        if ref:
            by_ref.setdefault(ref, []).append(customer)
    report = PeopleReport(people=len(people))
    refs = {attendee_ref(email): email for email in people}
    report.orphans = [c["id"] for ref, found in by_ref.items() if ref not in refs for c in found]
    for ref, email in refs.items():
        found = by_ref.get(ref, [])
        if len(found) > 1:
            report.duplicated[ref] = [c["id"] for c in found]
        if not found:
            report.missing.append(ref)
            continue
        customer, entries = found[0], people[email]
        metadata = customer.get("metadata") or {}
        counted = [b for b, _ in entries if b["status"] not in ("CANCELLED", "REJECTED")]
        want: dict[str, Any] = {
            "booking count": str(len({b["uid"] for b in counted})),
            "last booking": counted[-1]["uid"] if counted else None,
        }
        have: dict[str, Any] = {
            "booking count": metadata.get("calcom_booking_count"),
            "last booking": metadata.get("calcom_last_booking_uid") or None,
        }
        matching = patient_by_email.get(email, [])
        joined = metadata.get(CROSS_REF)
        if len(matching) == 1 and joined != matching[0]:
            report.unjoined[ref] = (matching[0], joined)
        if joined:
            report.joined += 1
        else:  # Cal.com's own details, as given in the person's latest booking (a phone from the latest with one)
            _, latest = entries[-1]
            phone = next((a.get("phoneNumber") for _, a in reversed(entries) if a.get("phoneNumber")), None)
            want |= {"email": email, "name": latest.get("name") or None, "phone": phone}
            have |= {
                "email": normalized(customer.get("email") or ""),
                "name": customer.get("name") or None,
                "phone": customer.get("phone") or None,
            }
        diff = {key: (want[key], have[key]) for key in want if want[key] != have[key]}
        if diff:
            report.stale[ref] = diff
    emails = Counter(normalized(c["email"]) for c in customers if c.get("email"))
    report.shared_emails = sorted(email for email, count in emails.items() if count > 1)
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
    def calcom_url(self) -> str:
        if not self.info.get("calcom_url"):
            raise AssertionError("this sandbox was started without Cal.com (calcom_bookings=0)")
        return str(self.info["calcom_url"])

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
    calcom_bookings: int = 0,
    calcom_payments: bool = False,
    timeout_s: float = 30,
) -> SandboxProcess:
    """`calcom_bookings` > 0 also runs the Cal.com emulator with about that many bookings (a third of their
    attendees Cliniko's patients, seeded from the same profile, patient count and seed); `calcom_payments` also puts
    the payments Cal.com's Stripe app took on the clinic's account into Stripe."""
    workdir.mkdir(parents=True, exist_ok=True)
    output = workdir / "sandbox.out"
    args = ["--profile", profile, "--patients", str(patients), "--products", str(products), "--seed", str(seed)]
    if calcom_bookings:
        args += ["--calcom", "--calcom-bookings", str(calcom_bookings)]
    if calcom_payments:
        args += ["--calcom-payments"]
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
