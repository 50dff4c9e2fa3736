"""Deterministic, invented seed data for the Cliniko emulator (no real people; same seed → same data).

Profiles:
- `clean`   — N ordinary Australian patients.
- `hard`    — fixed named edge cases (see `HARD_CASES` for each case's expected sync outcome), ordinary
              patients to fill up to N, and Stripe customers to pre-seed so matching has something to find.
- `hostile` — data no validator should have let in (invalid emails, huge strings, control characters, NUL
              bytes, nulls everywhere) interleaved with ordinary records; the app must neither crash nor
              send anything Stripe would reject (see `HOSTILE_CASES`).

Every profile also has a product catalogue (`seed_products`: products, suppliers, taxes, stock adjustments, with
the named cases in `PRODUCT_CASES`); the hard profile adds Stripe products made "by hand" (`stripe_products`).

Patients come out in the emulator's internal form: the Patient schema's scalar fields (timestamps as
`YYYY-MM-DDTHH:MM:SSZ` strings), `patient_phone_numbers` as [{number, phone_type}], `custom_fields` as
{field_token: value}, and `merged_with_patient_id` for merged records. Phone numbers come from the 0491 57x
mobile block and the (03) 7010 landline block that Australia sets aside for fiction; emails use the
reserved example.com/.net/.org domains.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

PROFILES = ("clean", "hard", "hostile")
DEFAULT_PRODUCTS = 200
_MELBOURNE = ZoneInfo("Australia/Melbourne")

# Seeded records are dated inside this window, so anything the emulator stamps "now" is strictly newer.
_EPOCH_START = datetime(2021, 1, 4, tzinfo=UTC)
_EPOCH_SPAN_DAYS = 1500

FIRST_NAMES = (
    "Olivia", "Charlotte", "Amelia", "Isla", "Mia", "Ava", "Grace", "Chloe", "Sophie", "Ruby",
    "Jack", "Oliver", "Noah", "William", "Henry", "Leo", "Thomas", "Lucas", "Harrison", "Lachlan",
    "Matilda", "Harper", "Zara", "Evie", "Willow", "Archie", "Hudson", "Cooper", "Riley", "Xavier",
)  # fmt: skip
LAST_NAMES = (
    "Smith", "Jones", "Williams", "Brown", "Wilson", "Taylor", "Nguyen", "Johnson", "Martin", "White",
    "Anderson", "Walker", "Thompson", "Harris", "Lee", "Ryan", "Robinson", "Kelly", "King", "Tran",
    "Mitchell", "Campbell", "Papadopoulos", "Rossi", "Singh", "Murphy", "O'Brien", "Clarke", "Young", "Wright",
)  # fmt: skip
STREETS = (
    "Smith Street", "Brunswick Road", "Chapel Street", "King William Road", "Hay Street", "Oxford Street",
    "Sandy Bay Road", "Lonsdale Street", "Mitchell Street", "Wattle Avenue", "Banksia Crescent", "Jacaranda Way",
)  # fmt: skip
# (suburb, state, postcode): real places, invented street numbers.
SUBURBS = (
    ("Fitzroy", "VIC", "3065"),
    ("Geelong", "VIC", "3220"),
    ("Newtown", "NSW", "2042"),
    ("Parramatta", "NSW", "2150"),
    ("Fortitude Valley", "QLD", "4006"),
    ("Norwood", "SA", "5067"),
    ("Subiaco", "WA", "6008"),
    ("Sandy Bay", "TAS", "7005"),
    ("Braddon", "ACT", "2612"),
    ("Parap", "NT", "0820"),
)
EMAIL_DOMAINS = ("example.com", "example.net", "example.org")
OCCUPATIONS = ("Teacher", "Nurse", "Electrician", "Student", "Retired", "Barista", "Engineer", None)

# Custom field definitions the emulator serves from /settings (tokens are fixed so tests can use them).
CUSTOM_SECTION_TOKEN = "7d0e7a52-3b1f-4c55-9a40-5a1d0c0f1e01"
CUSTOM_FIELD_STRIPE_ID_TOKEN = "7d0e7a52-3b1f-4c55-9a40-5a1d0c0f1e02"
CUSTOM_FIELD_HEALTH_FUND_TOKEN = "7d0e7a52-3b1f-4c55-9a40-5a1d0c0f1e03"
CUSTOM_FIELD_FIRST_VISIT_TOKEN = "7d0e7a52-3b1f-4c55-9a40-5a1d0c0f1e04"

# Each hard case and what the sync should do with it. Keys are the case names in `SeedResult.cases`.
HARD_CASES: dict[str, str] = {
    "no_email": "created in Stripe without an email; never matched by email",
    "family_shared_email_1": "three family members share one email (case differs): three separate customers,"
    " never auto-linked to each other",
    "family_shared_email_2": "see family_shared_email_1",
    "family_shared_email_3": "see family_shared_email_1",
    "unicode_accents": "name with accents kept exactly (NFC)",
    "unicode_cjk": "CJK name kept exactly",
    "unicode_rtl": "Arabic (right-to-left) name kept exactly",
    "long_names_255": "first_name and last_name are 255 chars each: the Stripe name is cut to Stripe's limit,"
    " not rejected",
    "plus_addressed_email": "plus-addressed email kept as-is, matched casefolded",
    "upper_case_email": "UPPER-CASE email matched casefolded",
    "archived": "archived before the first sync: hidden from default lists, never linked or created",
    "merged_away": "merged into merge_survivor (archived, merged_at, merged_with_patient link): never created;"
    " only the survivor has a customer",
    "merge_survivor": "the patient merged_away was merged into: synced normally",
    "home_phone_only": "only a Home phone: that number becomes the Stripe phone",
    "mobile_and_home": "Mobile and Home phones: the Mobile number wins",
    "address_lines_2_and_3": "address_2 and address_3 both set: both reach Stripe line2",
    "stripe_email_case_match": "a Stripe customer already has this email in other case: linked, not created",
    "stripe_duplicate_email": "two Stripe customers share this email: sent to review, nothing created",
}

HOSTILE_CASES: dict[str, str] = {
    "email_not_an_email": "email 'not-an-email': customer created without it or reported, never a crash",
    "email_a_at_b": "email 'a@b' (no TLD): as above",
    "email_double_at": "email 'x@@y.example': as above",
    "email_600_chars": "600-char email (over Stripe's 512): as above",
    "email_padded_whitespace": "email with surrounding spaces: trimmed or reported",
    "name_5000_chars": "5000-char first_name: cut to Stripe's name limit",
    "emoji_and_rtl": "emoji and Hebrew/Arabic text in names and address: kept exactly",
    "control_characters": "ESC/BEL/CR/TAB in names and address: cleaned before Stripe, never a crash",
    "nul_bytes": "NUL bytes inside name and address (Stripe rejects NUL): removed before sending, never a crash",
    "all_nulls": "every nullable field null and first_name empty: a customer named from last_name only",
    "address_6000_chars": "6000-char address_1: cut to Stripe's line1 limit",
    "markup_and_sql": "HTML and SQL-looking text in names: stored verbatim, never interpreted",
}


@dataclass
class ProductSeed:
    """A clinic's product catalogue in the emulator's internal form (see `seed_products`)."""

    products: list[dict[str, Any]] = field(default_factory=list)
    suppliers: list[dict[str, Any]] = field(default_factory=list)
    taxes: list[dict[str, Any]] = field(default_factory=list)
    stock_adjustments: list[dict[str, Any]] = field(default_factory=list)
    cases: dict[str, str] = field(default_factory=dict)  # product id -> case name (PRODUCT_CASES)


@dataclass
class SeedResult:
    patients: list[dict[str, Any]]
    cases: dict[str, str] = field(default_factory=dict)  # patient id -> case name
    stripe_customers: list[dict[str, Any]] = field(default_factory=list)
    # Activity, dated relative to the `now` given to seed_profile (see seed_activity).
    invoices: list[dict[str, Any]] = field(default_factory=list)
    invoice_items: list[dict[str, Any]] = field(default_factory=list)
    appointments: list[dict[str, Any]] = field(default_factory=list)
    inactive_ids: list[str] = field(default_factory=list)  # no invoice or appointment in the last 24 months
    catalogue: ProductSeed = field(default_factory=ProductSeed)
    # Hard profile: products (with prices) to pre-create in Stripe, as the Stripe emulator's admin `seed` takes them.
    stripe_products: list[dict[str, Any]] = field(default_factory=list)


def seed_profile(
    profile: str, n: int = 50, seed: int = 1, now: datetime | None = None, products: int = DEFAULT_PRODUCTS
) -> SeedResult:
    """Build the named profile with at least `n` patients (hard/hostile may need a few more for their cases), and
    their invoices and appointments over the ~4 years before `now` (default: the real clock); plus a catalogue of
    `products` products (at least the named product cases, unless 0)."""
    builders: dict[str, Callable[[_Gen, int], SeedResult]] = {
        "clean": _clean,
        "hard": _hard,
        "hostile": _hostile,
    }
    if profile not in builders:
        raise ValueError(f"unknown seed profile {profile!r} (choose from {', '.join(PROFILES)})")
    if n < 0:
        raise ValueError("patient count must not be negative")
    result = builders[profile](_Gen(seed), n)
    activity = seed_activity(result.patients, now or datetime.now(UTC), seed, keep_active=set(result.cases))
    result.invoices, result.appointments = activity.invoices, activity.appointments
    result.invoice_items = activity.invoice_items
    result.inactive_ids = activity.inactive_ids
    if products < 0:
        raise ValueError("product count must not be negative")
    if products:
        result.catalogue = seed_products(products, seed)
        if profile == "hard":
            result.stripe_products = hand_made_stripe_products(result.catalogue)
    return result


# -- generator -----------------------------------------------------------------------------------------


class _Gen:
    """Seeded source of ids, timestamps and ordinary invented people."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self._ids: set[str] = set()
        self._emails: set[str] = set()

    def new_id(self) -> str:
        # 18-19 digit int64-like ids, deliberately not in creation order (Cliniko ids are no cursor).
        while True:
            candidate = str(self.rng.randrange(10**17, 9 * 10**18))
            if candidate not in self._ids:
                self._ids.add(candidate)
                return candidate

    def timestamps(self) -> tuple[str, str]:
        created = _EPOCH_START + timedelta(days=self.rng.randrange(_EPOCH_SPAN_DAYS), seconds=self.rng.randrange(86400))
        updated = created + timedelta(seconds=self.rng.randrange(0, 90 * 86400))
        return fmt_time(created), fmt_time(updated)

    def unique_email(self, first: str, last: str) -> str:
        # ASCII only: an address built from a CJK or Arabic name would not be a valid Cliniko email.
        base = "".join(ch for ch in f"{first}.{last}".lower() if (ch.isascii() and ch.isalnum()) or ch == ".")
        base = base.strip(".").replace("..", ".") or "patient"
        domain = self.rng.choice(EMAIL_DOMAINS)
        email, n = f"{base}@{domain}", 1
        while email in self._emails:
            n += 1
            email = f"{base}{n}@{domain}"
        self._emails.add(email)
        return email

    def reserve_email(self, email: str | None) -> None:
        """Keep ordinary records off a named case's email, so each case stays the only one of its kind."""
        if email:
            self._emails.add(email.strip().casefold())

    def mobile(self) -> str:
        local = f"049157{self.rng.randrange(10000):04d}"
        return self.rng.choice((f"{local[:4]} {local[4:7]} {local[7:]}", "+61" + local[1:], local))

    def landline(self) -> str:
        return f"(03) 7010 {self.rng.randrange(10000):04d}"

    def person(self, **overrides: Any) -> dict[str, Any]:
        first, last = self.rng.choice(FIRST_NAMES), self.rng.choice(LAST_NAMES)
        suburb, state, post_code = self.rng.choice(SUBURBS)
        created, updated = self.timestamps()
        record = blank_patient()
        record.update(
            id=self.new_id(),
            title=self.rng.choice(("Mr", "Ms", "Mrs", "Dr", None)),
            first_name=first,
            last_name=last,
            email=self.unique_email(first, last),
            date_of_birth=f"{self.rng.randint(1940, 2015)}-{self.rng.randint(1, 12):02d}-{self.rng.randint(1, 28):02d}",
            address_1=f"{self.rng.randint(1, 250)} {self.rng.choice(STREETS)}",
            city=suburb,
            state=state,
            post_code=post_code,
            country_code="AU",
            occupation=self.rng.choice(OCCUPATIONS),
            # Clinical fields are filled on purpose: the sync must never send them to Stripe.
            notes=f"Invented clinical note {self.rng.randrange(10**6)}: lower back rehab, review in 6 weeks.",
            medicare=f"9{self.rng.randrange(10**8):08d}1",
            medicare_reference_number=str(self.rng.randint(1, 9)),
            patient_phone_numbers=[{"number": self.mobile(), "phone_type": "Mobile"}],
            reminder_type=self.rng.choice(("SMS", "Email", "SMS & Email", "None")),
            accepted_privacy_policy=self.rng.choice((True, None)),
            receives_confirmation_emails=True,
            receives_cancellation_emails=True,
            time_zone="Australia/Melbourne",
            custom_fields={CUSTOM_FIELD_HEALTH_FUND_TOKEN: self.rng.choice(("Medibank", "Bupa", "HCF", "nib"))},
            created_at=created,
            updated_at=updated,
        )
        record.update(overrides)
        return record


def fmt_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def blank_patient() -> dict[str, Any]:
    """Every internal patient field, with Cliniko's defaults for a bare record."""
    return {
        "id": "",
        "title": None,
        "first_name": "",
        "last_name": "",
        "preferred_first_name": None,
        "date_of_birth": None,
        "email": None,
        "sex": None,
        "gender": None,
        "gender_identity": None,
        "pronouns": None,
        "occupation": None,
        "emergency_contact": None,
        "address_1": None,
        "address_2": None,
        "address_3": None,
        "city": None,
        "state": None,
        "post_code": None,
        "country": None,
        "country_code": None,
        "notes": None,
        "appointment_notes": None,
        "old_reference_id": None,
        "medicare": None,
        "medicare_reference_number": None,
        "dva_card_number": None,
        "referral_source": None,
        "invoice_default_to": None,
        "invoice_email": None,
        "invoice_extra_information": None,
        "reminder_type": None,
        "receives_confirmation_emails": None,
        "receives_cancellation_emails": None,
        "accepted_privacy_policy": None,
        "accepted_email_marketing": None,
        "accepted_sms_marketing": None,
        "time_zone": None,
        "patient_phone_numbers": [],
        "custom_fields": {},
        "created_at": "",
        "updated_at": "",
        "archived_at": None,
        "deleted_at": None,
        "merged_at": None,
        "merged_with_patient_id": None,
    }


# -- profiles ------------------------------------------------------------------------------------------


def _clean(gen: _Gen, n: int) -> SeedResult:
    patients = [gen.person() for _ in range(n)]
    _restamp_in_order(gen, patients)
    return SeedResult(patients=patients)


def _hard(gen: _Gen, n: int) -> SeedResult:
    named: list[tuple[str, dict[str, Any]]] = []

    def add(case: str, **fields: Any) -> dict[str, Any]:
        record = gen.person(**fields)
        gen.reserve_email(record["email"])
        named.append((case, record))
        return record

    add("no_email", email=None)
    add("family_shared_email_1", first_name="Harriet", last_name="Ashworth", email="ashworth.family@example.com")
    add("family_shared_email_2", first_name="Ivy", last_name="Ashworth", email="Ashworth.Family@example.com")
    add("family_shared_email_3", first_name="Jasper", last_name="Ashworth", email="ASHWORTH.FAMILY@EXAMPLE.COM")
    add("unicode_accents", first_name="Zoë", last_name="Ångström-Nuñez", email="zoe.angstrom@example.org")
    add("unicode_cjk", first_name="小明", last_name="王", email="xiaoming.wang@example.net")
    add("unicode_rtl", first_name="ليلى", last_name="حداد", email="layla.haddad@example.com")
    add("long_names_255", first_name="A" * 254 + "z", last_name="B" * 254 + "y", email="long.names@example.com")
    add("plus_addressed_email", first_name="Mia", last_name="Kowalski", email="mia.kowalski+physio@example.com")
    add("upper_case_email", first_name="Noah", last_name="Tran", email="NOAH.TRAN@EXAMPLE.NET")
    # Archive/merge times are placeholders here; _restamp_in_order moves them after the record's creation.
    archived_at = "2024-03-01T01:02:03Z"
    add("archived", first_name="Arthur", last_name="Archer", archived_at=archived_at)
    survivor = add("merge_survivor", first_name="Sadie", last_name="Merriweather", email="sadie.m@example.org")
    merged_at = "2024-05-06T07:08:09Z"
    add(
        "merged_away",
        first_name="Sadie",
        last_name="Merriweather",
        email="sadie.merriweather.old@example.org",
        archived_at=merged_at,
        merged_at=merged_at,
        merged_with_patient_id=survivor["id"],
    )
    add("home_phone_only", patient_phone_numbers=[{"number": "(03) 7010 4821", "phone_type": "Home"}])
    add(
        "mobile_and_home",
        patient_phone_numbers=[
            {"number": "(03) 7010 5932", "phone_type": "Home"},
            {"number": "0491 570 156", "phone_type": "Mobile"},
        ],
    )
    add("address_lines_2_and_3", address_1="Suite 4", address_2="Level 2", address_3="88 Wattle Avenue")
    linked = add("stripe_email_case_match", first_name="Olivia", last_name="Nguyen", email="olivia.nguyen@example.com")
    dup = add("stripe_duplicate_email", first_name="Ethan", last_name="Brooks", email="ethan.brooks@example.net")

    # Named cases sit between ordinary records, so they are not all on the first page.
    gen.reserve_email("unrelated.customer@example.org")
    ordinary = [gen.person() for _ in range(max(n - len(named), 3))]
    patients, cases = _interleave(gen, named, ordinary)
    stripe_customers = [
        {
            "email": "Olivia.Nguyen@Example.com",
            "name": "Olivia Nguyen",
            "metadata": {"sandbox_case": "stripe_email_case_match"},
            "expected": f"linked to patient {linked['id']}",
        },
        {
            "email": dup["email"],
            "name": "Ethan Brooks",
            "metadata": {"sandbox_case": "stripe_duplicate_email"},
            "expected": "review (one of two customers with this email)",
        },
        {
            "email": dup["email"].upper(),
            "name": "E. Brooks",
            "metadata": {"sandbox_case": "stripe_duplicate_email"},
            "expected": "review (one of two customers with this email)",
        },
        {
            "email": "unrelated.customer@example.org",
            "name": "Unrelated Customer",
            "metadata": {"sandbox_case": "unrelated"},
            "expected": "left alone; reported as not from Cliniko",
        },
    ]
    return SeedResult(patients=patients, cases=cases, stripe_customers=stripe_customers)


def _hostile(gen: _Gen, n: int) -> SeedResult:
    named: list[tuple[str, dict[str, Any]]] = []

    def add(case: str, **fields: Any) -> None:
        record = gen.person(**fields)
        gen.reserve_email(record["email"])
        named.append((case, record))

    add("email_not_an_email", email="not-an-email")
    add("email_a_at_b", email="a@b")
    add("email_double_at", email="x@@y.example")
    add("email_600_chars", email="l" * (600 - len("@example.com")) + "@example.com")
    add("email_padded_whitespace", email="  padded.email@example.com \t")
    add("name_5000_chars", first_name="N" * 5000)
    add(
        "emoji_and_rtl",
        first_name="🦘 Skip 🐨",
        last_name="שָׁלוֹם Ali علي 👩‍⚕️",
        address_1="12 \u202eteertS nworB\u202c 🏥",
    )
    add(
        "control_characters",
        first_name="Ann\x07e",
        last_name="\x1b[31mRed\x1b[0m\ttab\rreturn",
        address_1="3 Line\nBreak Street\x0b",
    )
    add("nul_bytes", first_name="Bo\x00b", last_name="Nul\x00l", address_1="7 Nul\x00 Lane")
    created, updated = gen.timestamps()
    nulls = blank_patient()
    nulls.update(id=gen.new_id(), first_name="", last_name="Nullfield", created_at=created, updated_at=updated)
    nulls.update(patient_phone_numbers=None, custom_fields=None)
    named.append(("all_nulls", nulls))
    add("address_6000_chars", address_1="A" * 5990 + " Long Road")
    add("markup_and_sql", first_name="<script>alert(1)</script>", last_name="Robert'); DROP TABLE patients;--")

    ordinary = [gen.person() for _ in range(max(n - len(named), 3))]
    patients, cases = _interleave(gen, named, ordinary)
    return SeedResult(patients=patients, cases=cases)


def _interleave(
    gen: _Gen, named: list[tuple[str, dict[str, Any]]], ordinary: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Mix named and ordinary records, then give them creation times in list order."""
    slots: list[tuple[str | None, dict[str, Any]]] = [(None, p) for p in ordinary]
    for case, record in named:
        slots.insert(gen.rng.randrange(len(slots) + 1), (case, record))
    patients = [record for _, record in slots]
    _restamp_in_order(gen, patients)
    cases = {record["id"]: case for case, record in slots if case is not None}
    return patients, cases


def _restamp_in_order(gen: _Gen, patients: list[dict[str, Any]]) -> None:
    """Creation times follow list order; an archive or merge happens at the record's last update."""
    stamps = sorted(gen.timestamps() for _ in patients)
    for record, (created, updated) in zip(patients, stamps, strict=True):
        record["created_at"], record["updated_at"] = created, updated
        for key in ("archived_at", "merged_at"):
            if record.get(key) is not None:
                record[key] = updated


# -- activity: invoices and individual appointments ------------------------------------------------------

PRACTITIONER_IDS = ("700000000000000301", "700000000000000302", "700000000000000303")
APPOINTMENT_TYPE_IDS = ("700000000000000401", "700000000000000402")
ACTIVITY_MONTHS = 24  # the default "recent activity" window; seeded activity keeps clear of its edge
_RECENT_DAYS = (0, 690)  # recent activity: this many days before the clock (24 months is at least 730 days)
_OLD_DAYS = (770, 1450)  # old activity: clearly outside 24 months, within ~4 years
_FEES = ("85.00", "95.00", "120.00", "65.50", "150.00", "81.818")


CONSULTATION_BILLABLE_ITEM_ID = "700000000000000501"


@dataclass
class Activity:
    invoices: list[dict[str, Any]]
    appointments: list[dict[str, Any]]
    inactive_ids: list[str]  # patients with no invoice or appointment in the last ACTIVITY_MONTHS months
    invoice_items: list[dict[str, Any]] = field(default_factory=list)  # one consultation line per invoice


def seed_activity(
    patients: list[dict[str, Any]], now: datetime, seed: int = 1, *, keep_active: Collection[str] = ()
) -> Activity:
    """Invoices and individual appointments for most patients, dated over the ~4 years before `now` (the
    emulator's clock), deterministic by `seed` and independent of the patients' own random draws.

    One patient in five (at least one) has no activity in the last 24 months (half of those none at all, half only
    older than that); patients in `keep_active` (the named cases) always have recent activity. Every recent
    appointment is at least 40 days from the 24-month edge, so a test run minutes later sees the same split.
    """
    rng = random.Random(seed * 7_368_787 + 1_299_709)
    ids = _Gen(seed * 104_729 + 3)
    invoices: list[dict[str, Any]] = []
    appointments: list[dict[str, Any]] = []
    inactive: list[str] = []
    number = 1000
    candidates = [p["id"] for p in patients if p["id"] not in keep_active]
    chosen = rng.sample(candidates, max(1, round(len(candidates) / 5)) if candidates else 0)
    quiet = {pid: ("none" if n % 2 == 0 else "old") for n, pid in enumerate(chosen)}
    for patient in patients:
        pid = patient["id"]
        kind = quiet.get(pid, "recent")
        if kind != "recent":
            inactive.append(pid)
        if kind == "none":
            continue
        visits = [rng.randint(*_OLD_DAYS) for _ in range(rng.randint(0 if kind == "recent" else 1, 3))]
        if kind == "recent":
            visits += [rng.randint(*_RECENT_DAYS) for _ in range(rng.randint(1, 3))]
        for days_ago in sorted(visits, reverse=True):
            start = (now - timedelta(days=days_ago)).replace(
                hour=rng.randint(21, 30) % 24, minute=rng.choice((0, 15, 30, 45)), second=0, microsecond=0
            )
            appointment = _appointment(ids, rng, patient, start, now)
            appointments.append(appointment)
            # Most visits are invoiced on the day; a recent patient sometimes only has the appointment, or only
            # the invoice (e.g. a product sale), so both sources of activity matter.
            if appointment["cancelled_at"] is None and rng.random() < 0.8:
                number += 1
                invoices.append(_invoice(ids, rng, patient, appointment, number, now))
                if rng.random() < 0.1 and kind == "recent":  # a product sale: an invoice without a visit
                    appointments.pop()
                    invoices[-1]["appointment_id"] = None
    # Each visit's invoice has one consultation line; its ids come from their own stream so nothing above changes.
    from clinicsync.sandbox.cliniko_invoices import make_item

    item_ids = _Gen(seed * 1_000_003 + 17)
    line = {"name": "Standard consultation", "code": "CONSULT", "billable_item_id": CONSULTATION_BILLABLE_ITEM_ID}
    items = [
        make_item(item_ids.new_id(), invoice, {**line, "unit_price": invoice["unit_price"]}, invoice["created_at"])
        for invoice in invoices
    ]
    for invoice in invoices:
        del invoice["unit_price"]
    return Activity(invoices=invoices, appointments=appointments, inactive_ids=inactive, invoice_items=items)


def _appointment(
    ids: _Gen, rng: random.Random, patient: dict[str, Any], start: datetime, now: datetime
) -> dict[str, Any]:
    created = start - timedelta(days=rng.randint(1, 30), seconds=rng.randrange(86400))
    cancelled = rng.random() < 0.08
    updated = min(start + timedelta(hours=rng.randint(1, 48)), now)
    name = " ".join(part for part in (patient.get("first_name"), patient.get("last_name")) if part) or None
    return {
        "id": ids.new_id(),
        "patient_id": patient["id"],
        "patient_name": name,
        "practitioner_id": rng.choice(PRACTITIONER_IDS),
        "appointment_type_id": rng.choice(APPOINTMENT_TYPE_IDS),
        "starts_at": fmt_time(start),
        "ends_at": fmt_time(start + timedelta(minutes=rng.choice((30, 45, 60)))),
        "cancelled_at": fmt_time(created + timedelta(days=1)) if cancelled else None,
        "cancellation_reason": 50 if cancelled else None,
        "cancellation_reason_description": "Other" if cancelled else None,
        "cancellation_note": None,
        "did_not_arrive": False,
        "patient_arrived": not cancelled,
        "email_reminder_sent": patient.get("reminder_type") in ("Email", "SMS & Email"),
        "sms_reminder_sent": patient.get("reminder_type") in ("SMS", "SMS & Email"),
        "notes": None,
        "has_patient_appointment_notes": False,
        "online_booking_policy_accepted": None,
        "booking_ip_address": None,
        "invoice_status": None,
        "treatment_note_status": None,
        "telehealth_url": None,
        "created_at": fmt_time(created),
        "updated_at": fmt_time(updated),
        "archived_at": None,
        "deleted_at": None,
    }


def _invoice(
    ids: _Gen, rng: random.Random, patient: dict[str, Any], appointment: dict[str, Any], number: int, now: datetime
) -> dict[str, Any]:
    from decimal import Decimal

    start = datetime.fromisoformat(appointment["starts_at"].replace("Z", "+00:00"))
    local_day = start.astimezone(_MELBOURNE).date()  # issue_date is the clinic's local date of the visit
    fee = rng.choice(_FEES)
    total = Decimal(fee).quantize(Decimal("0.01"))
    paid = rng.random() < 0.85
    stamp = fmt_time(min(start + timedelta(hours=1), now))
    name = " ".join(part for part in (patient.get("first_name"), patient.get("last_name")) if part) or None
    return {
        "id": ids.new_id(),
        "number": number,
        "patient_id": patient["id"],
        "practitioner_id": appointment["practitioner_id"],
        "appointment_id": appointment["id"],
        "issue_date": local_day.isoformat(),
        "status": 20 if paid else 10,
        "invoice_to": name,
        "notes": None,
        "patient_extra_information": None,
        "calculation_method": 3,
        "net_amount": str(total),
        "tax_amount": "0.00",
        "discounted_amount": "0.00",
        "total_amount": str(total),
        "unit_price": fee,  # the consultation line's price (seed_activity makes the line, then drops this)
        "original_invoice_id": None,
        "closed_at": stamp if paid else None,
        "created_at": stamp,
        "updated_at": stamp,
        "archived_at": None,
        "deleted_at": None,
    }


# -- products: a clinic's retail catalogue -------------------------------------------------------------

# Each named product case and what the products stream should do with it. Every profile has them; the
# `stripe_*` and `same_name_*` cases meet Stripe products only in the hard profile (`hand_made_stripe_products`).
PRODUCT_CASES: dict[str, str] = {
    "gst_inclusive_3dp": "entered as 90.00 including 10% GST: price_ex_tax is 81.818 (three decimals), "
    "price_including_tax 90.0; converted to cents without a float error",
    "gst_exclusive": "entered as 40.00 excluding 10% GST: price_including_tax 44.0",
    "gst_free": "the GST Free tax (rate 0.0): both prices equal",
    "no_tax": "no tax at all (no tax link): both prices equal",
    "zero_price": "a free item (0.0): a Stripe price of 0, which Stripe allows",
    "name_255": "a 255-character name (Cliniko's maximum), within Stripe's product name limit",
    "unicode_accents": "accented name kept exactly (NFC)",
    "unicode_cjk": "CJK name kept exactly",
    "unicode_emoji": "emoji in the name kept exactly",
    "same_name_1": "two Cliniko products share one name: never linked to one Stripe product; in the hard profile two"
    " hand-made Stripe products have that name too, so matching goes to review and nothing is created",
    "same_name_2": "see same_name_1",
    "archived": "archived before the first sync: hidden from default lists, listed with q[]=archived_at:*",
    "no_supplier": "no supplier: no product_supplier link or product_supplier_id, product_supplier_name null",
    "untracked_stock": "stock_level null (stock not tracked)",
    "stock_adjusted": "four stock adjustments (purchase, sale, damage, return) that sum to its stock_level",
    "stripe_name_match": "hard profile: the only Stripe product with exactly this name was made by hand, with its own"
    " two prices (75.00 default, 69.95 'Staff price'): never duplicated, and those prices are never edited or"
    " deactivated",
    "stripe_linked_earlier": "hard profile: a Stripe product already carries metadata.cliniko_product_id = this id (an"
    " earlier install), with a price equal to Cliniko's: linked, nothing created",
}

SUPPLIER_NAMES = (
    "Harbourside Rehab Supplies",
    "Coastal Physio Wholesale",
    "Southern Cross Orthotics",
    "Kinetic Health Distributors",
)
GST, GST_FREE = "GST", "GST Free"
_TAX_RATES = {GST: "10.0", GST_FREE: "0.0"}
# Retail items a physio or allied-health clinic sells, and their variants (invented catalogue).
_ITEMS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Resistance band", ("light", "medium", "heavy", "extra heavy")),
    ("Foam roller", ("30 cm", "45 cm", "90 cm")),
    ("Kinesiology tape", ("5 cm × 5 m beige", "5 cm × 5 m black", "5 cm × 5 m blue")),
    ("Hot/cold pack", ("small", "large")),
    ("Massage ball", ("spiky", "smooth", "peanut")),
    ("Knee brace", ("S", "M", "L", "XL")),
    ("Ankle support", ("S", "M", "L")),
    ("Wrist splint", ("left", "right")),
    ("Lumbar roll", ("standard", "firm")),
    ("Heel cups", ("small", "medium", "large")),
    ("Orthotic insoles", ("EU 36–38", "EU 39–41", "EU 42–44", "EU 45–47")),
    ("Arnica gel", ("100 g", "250 g")),
    ("Magnesium cream", ("125 ml", "250 ml")),
    ("Exercise mat", ("blue", "grey")),
    ("Hand grip trainer", ("light", "heavy")),
    ("Wobble board", ("round", "rocker")),
    ("Compression sleeve", ("calf S", "calf M", "calf L", "knee S", "knee M", "knee L")),
    ("Tubular bandage", ("size B", "size C", "size D", "size E", "size F")),
    ("Sports tape", ("25 mm", "38 mm", "50 mm")),
    ("Balance disc", ("33 cm",)),
)
_PACKS = ("", " (pack of 3)", " (pack of 5)", " (pack of 10)")
PRODUCT_PRICES = (
    "9.95",
    "12.50",
    "14.95",
    "19.95",
    "24.00",
    "29.95",
    "34.50",
    "39.95",
    "49.00",
    "59.95",
    "89.00",
    "120.00",
)
_NOTES = (None, None, None, "Reorder when below 5.", "Display stock only.", "Supplier lead time 2 weeks.")
# Cliniko's adjustment types: a positive quantity needs an increase type, a negative one a decrease type.
INCREASE_TYPES = ("Stock Purchase", "Returned", "Other")
DECREASE_TYPES = ("Damaged", "Out of Date", "Item Sold", "Other", "Correction")
_THOUSANDTH = Decimal("0.001")


def decimal_text(value: Decimal) -> str:
    """A decimal as Cliniko's JSON has it (Rails' BigDecimal): no exponent, at least one decimal ("90.0",
    "81.818")."""
    text = format(value.normalize(), "f")
    return text if "." in text else f"{text}.0"


def product_prices(price: str, includes_tax: bool, rate: str | None) -> tuple[str, str]:
    """(price_ex_tax, price_including_tax) from the one price staff entered and the tax rate (percent). The side
    that was not entered is computed and kept to three decimals, half up, as Cliniko's "81.818" shows."""
    entered = Decimal(price)
    factor = 1 + Decimal(rate or "0") / 100
    if includes_tax:
        return decimal_text((entered / factor).quantize(_THOUSANDTH, ROUND_HALF_UP)), decimal_text(entered)
    return decimal_text(entered), decimal_text((entered * factor).quantize(_THOUSANDTH, ROUND_HALF_UP))


def blank_product() -> dict[str, Any]:
    """Every internal product field. The price is kept as staff entered it (`price`, `price_includes_tax`); the
    emulator renders price_ex_tax and price_including_tax from it and the tax's rate."""
    return {
        "id": "",
        "name": "",
        "item_code": None,
        "serial_number": None,
        "notes": None,
        "price": "0.0",
        "price_includes_tax": False,
        "cost_price": None,
        "stock_level": None,
        "tax_id": None,
        "product_supplier_id": None,
        "created_at": "",
        "updated_at": "",
        "archived_at": None,
    }


def product_names(rng: random.Random, count: int, taken: Collection[str] = ()) -> list[str]:
    """`count` distinct catalogue names, none of them in `taken`, in a seeded order."""
    names = [f"{item} {variant}{pack}" for pack in _PACKS for item, variants in _ITEMS for variant in variants]
    rng.shuffle(names)
    chosen = [name for name in names if name not in taken][:count]
    extra = 2
    while len(chosen) < count:  # more than the catalogue has: numbered repeats, still distinct
        chosen += [f"{name} #{extra}" for name in names if f"{name} #{extra}" not in taken][: count - len(chosen)]
        extra += 1
    return chosen


def ordinary_product(gen: _Gen, name: str, taxes: dict[str, str], suppliers: list[str]) -> dict[str, Any]:
    """An everyday retail product: mostly GST, prices entered either way, a supplier and a stock level. `taxes`
    maps tax names (GST, GST_FREE) to ids; a missing one means no tax."""
    rng = gen.rng
    price = decimal_text(Decimal(rng.choice(PRODUCT_PRICES)))  # as Cliniko stores it, so a PATCH of it is no change
    created, updated = gen.timestamps()
    record = blank_product()
    record.update(
        id=gen.new_id(),
        name=name,
        item_code=f"SKU-{rng.randrange(10000, 99999)}" if rng.random() < 0.9 else None,
        serial_number=f"SN{rng.randrange(10**7):07d}" if rng.random() < 0.1 else None,
        notes=rng.choice(_NOTES),
        price=price,
        price_includes_tax=rng.random() < 0.6,
        cost_price=_cost_of(price) if rng.random() < 0.8 else None,
        stock_level=decimal_text(Decimal(rng.randrange(0, 60))) if rng.random() < 0.9 else None,
        tax_id=rng.choices((taxes.get(GST), taxes.get(GST_FREE), None), weights=(7, 2, 1))[0],
        product_supplier_id=rng.choice(suppliers) if suppliers and rng.random() < 0.9 else None,
        created_at=created,
        updated_at=updated,
    )
    return record


def _cost_of(price: str) -> str:
    return decimal_text((Decimal(price) * Decimal("0.45")).quantize(Decimal("0.01")))


def seed_products(n: int = DEFAULT_PRODUCTS, seed: int = 1) -> ProductSeed:
    """At least `n` products (the named PRODUCT_CASES among ordinary ones, in creation order), four suppliers,
    the taxes GST (10.0) and GST Free (0.0), and stock adjustments that add up to each stocked product's level.
    Deterministic by `seed`, from its own random stream (the patients of a profile do not change)."""
    gen = _Gen(seed * 15_485_863 + 101)
    suppliers = [_catalogue_entry(gen, name=name) for name in SUPPLIER_NAMES]
    taxes = [_catalogue_entry(gen, name=name, rate=rate) for name, rate in _TAX_RATES.items()]
    tax_ids = {tax["name"]: tax["id"] for tax in taxes}
    supplier_ids = [supplier["id"] for supplier in suppliers]
    named = _named_products(gen, tax_ids, supplier_ids)
    taken = {record["name"] for _, record in named}
    ordinary = [
        ordinary_product(gen, name, tax_ids, supplier_ids)
        for name in product_names(gen.rng, max(n - len(named), 3), taken)
    ]
    for record in ordinary:
        if gen.rng.random() < 0.03:
            record["archived_at"] = record["updated_at"]  # restamped to the record's last update below
    products, cases = _interleave(gen, named, ordinary)
    adjustments = [
        adjustment
        for product in products
        for adjustment in _stock_history(gen, product, heavy=cases.get(product["id"]) == "stock_adjusted")
    ]
    return ProductSeed(products, suppliers, taxes, adjustments, cases)


def _catalogue_entry(gen: _Gen, **fields: Any) -> dict[str, Any]:
    created, updated = gen.timestamps()
    return {"id": gen.new_id(), **fields, "created_at": created, "updated_at": updated}


def _named_products(gen: _Gen, taxes: dict[str, str], suppliers: list[str]) -> list[tuple[str, dict[str, Any]]]:
    named: list[tuple[str, dict[str, Any]]] = []

    def add(case: str, name: str, price: str, **fields: Any) -> None:
        record = ordinary_product(gen, name, taxes, suppliers)
        entered = decimal_text(Decimal(price))
        record.update(price=entered, price_includes_tax=True, cost_price=_cost_of(price), stock_level="10.0")
        record.update(tax_id=taxes[GST], product_supplier_id=suppliers[0])
        record.update(fields)
        named.append((case, record))

    long_name = "Custom-moulded full-length orthotic insoles with metatarsal dome, medial arch post and heel cup"
    # Exactly 255 characters, ending in a full stop rather than a space a client might trim.
    long_name = (long_name + "; casting, fitting and one review included" * 5)[:254].rstrip().ljust(254, ".") + "."
    add("gst_inclusive_3dp", "Premium foam roller 90 cm", "90.00")
    add("gst_exclusive", "Lumbar support cushion", "40.00", price_includes_tax=False)
    add("gst_free", "Adjustable walking stick", "35.00", tax_id=taxes[GST_FREE])
    add("no_tax", "Gift voucher $50", "50.00", tax_id=None, stock_level=None, cost_price=None)
    add("zero_price", "Printed home exercise program", "0.00", cost_price="0.0")
    add("name_255", long_name, "249.00")
    add("unicode_accents", "Crème de massage à l'arnica — 250 ml", "24.95")
    add("unicode_cjk", "指圧マッサージボール（大）", "18.00")
    add("unicode_emoji", "Reusable ice pack ❄️ 🧊", "16.50")
    add("same_name_1", "Therapy putty – medium", "12.95", product_supplier_id=suppliers[1])
    add("same_name_2", "Therapy putty – medium", "14.50", product_supplier_id=suppliers[2], item_code="TP-MED-2")
    # Archive times are placeholders; _restamp_in_order moves them to the record's last update.
    add("archived", "TENS unit (discontinued model)", "129.00", archived_at="2024-01-01T00:00:00Z")
    add("no_supplier", "Clinic water bottle", "15.00", product_supplier_id=None)
    add("untracked_stock", "Exercise band roll, cut to length (per metre)", "6.50", stock_level=None)
    add("stock_adjusted", "Kinesiology tape 5 cm × 5 m pink", "19.95", stock_level="19.0")
    add("stripe_name_match", "Cervical contour pillow", "79.95")
    add("stripe_linked_earlier", "Posture corrector brace", "45.00")
    return named


def _stock_history(gen: _Gen, product: dict[str, Any], *, heavy: bool) -> list[dict[str, Any]]:
    """Adjustments dated within the product's life, summing to its stock level (none for untracked stock)."""
    if product["stock_level"] is None:
        return []
    level = Decimal(product["stock_level"])
    if heavy:  # the stock_adjusted case: 24 bought, 5 sold, 1 damaged, 1 returned = 19
        moves = [("Stock Purchase", 24), ("Item Sold", -5), ("Damaged", -1), ("Returned", 1)]
    else:
        sold = gen.rng.randrange(0, 6)
        moves = [("Stock Purchase", int(level) + sold)] + ([("Item Sold", -sold)] if sold else [])
    start = datetime.fromisoformat(product["created_at"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(product["updated_at"].replace("Z", "+00:00"))
    span = max(int((end - start).total_seconds()), len(moves))
    offsets = sorted(gen.rng.sample(range(span), len(moves)))
    history = []
    for (kind, quantity), offset in zip(moves, offsets, strict=True):
        stamp = fmt_time(start + timedelta(seconds=offset))
        history.append(
            {
                "id": gen.new_id(),
                "product_id": product["id"],
                "adjustment_type": kind,
                "quantity": decimal_text(Decimal(quantity)),
                "notes": None if kind != "Damaged" else "Dropped in the clinic.",
                "created_at": stamp,
                "updated_at": stamp,
                "archived_at": None,
            }
        )
    return history


def hand_made_stripe_products(catalogue: ProductSeed) -> list[dict[str, Any]]:
    """Stripe products a clinic made by hand before ClinicSync (no ClinicSync metadata), for the Stripe emulator's
    admin `seed` (`products`); `sandbox_case` and `expected` annotate them and are not sent."""
    by_case = {case: next(p for p in catalogue.products if p["id"] == pid) for pid, case in catalogue.cases.items()}
    same_name = by_case["same_name_1"]["name"]
    match, linked = by_case["stripe_name_match"], by_case["stripe_linked_earlier"]

    def price(cents: int, **extra: Any) -> dict[str, Any]:
        return {"currency": "aud", "unit_amount": cents, "tax_behavior": "inclusive", **extra}

    review = "review: two Cliniko products and two Stripe products share this name; nothing linked or created"
    return [
        {"name": same_name, "prices": [price(1295, default=True)], "sandbox_case": "same_name", "expected": review},
        {"name": same_name, "prices": [price(1450, default=True)], "sandbox_case": "same_name", "expected": review},
        {
            "name": match["name"],
            "prices": [price(7500, default=True), price(6995, nickname="Staff price")],
            "sandbox_case": "stripe_name_match",
            "expected": PRODUCT_CASES["stripe_name_match"],
        },
        {
            "name": linked["name"],
            "metadata": {"cliniko_product_id": linked["id"]},
            "prices": [price(4500, default=True)],
            "sandbox_case": "stripe_linked_earlier",
            "expected": PRODUCT_CASES["stripe_linked_earlier"],
        },
    ]
