"""Deterministic, invented seed data for the Cliniko emulator (no real people; same seed → same data).

Profiles:
- `clean`   — N ordinary Australian patients.
- `hard`    — fixed named edge cases (see `HARD_CASES` for each case's expected sync outcome), ordinary
              patients to fill up to N, and Stripe customers to pre-seed so matching has something to find.
- `hostile` — data no validator should have let in (invalid emails, huge strings, control characters, NUL
              bytes, nulls everywhere) interleaved with ordinary records; the app must neither crash nor
              send anything Stripe would reject (see `HOSTILE_CASES`).

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
from typing import Any
from zoneinfo import ZoneInfo

PROFILES = ("clean", "hard", "hostile")
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
class SeedResult:
    patients: list[dict[str, Any]]
    cases: dict[str, str] = field(default_factory=dict)  # patient id -> case name
    stripe_customers: list[dict[str, Any]] = field(default_factory=list)
    # Activity, dated relative to the `now` given to seed_profile (see seed_activity).
    invoices: list[dict[str, Any]] = field(default_factory=list)
    appointments: list[dict[str, Any]] = field(default_factory=list)
    inactive_ids: list[str] = field(default_factory=list)  # no invoice or appointment in the last 24 months


def seed_profile(profile: str, n: int = 50, seed: int = 1, now: datetime | None = None) -> SeedResult:
    """Build the named profile with at least `n` patients (hard/hostile may need a few more for their cases), and
    their invoices and appointments over the ~4 years before `now` (default: the real clock)."""
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
    result.inactive_ids = activity.inactive_ids
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


@dataclass
class Activity:
    invoices: list[dict[str, Any]]
    appointments: list[dict[str, Any]]
    inactive_ids: list[str]  # patients with no invoice or appointment in the last ACTIVITY_MONTHS months


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
    return Activity(invoices=invoices, appointments=appointments, inactive_ids=inactive)


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
    total = Decimal(rng.choice(_FEES)).quantize(Decimal("0.01"))
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
        "closed_at": stamp if paid else None,
        "created_at": stamp,
        "updated_at": stamp,
        "archived_at": None,
        "deleted_at": None,
    }
