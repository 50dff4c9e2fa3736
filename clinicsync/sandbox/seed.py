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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

PROFILES = ("clean", "hard", "hostile")

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


def seed_profile(profile: str, n: int = 50, seed: int = 1) -> SeedResult:
    """Build the named profile with at least `n` patients (hard/hostile may need a few more for their cases)."""
    builders: dict[str, Callable[[_Gen, int], SeedResult]] = {
        "clean": _clean,
        "hard": _hard,
        "hostile": _hostile,
    }
    if profile not in builders:
        raise ValueError(f"unknown seed profile {profile!r} (choose from {', '.join(PROFILES)})")
    if n < 0:
        raise ValueError("patient count must not be negative")
    return builders[profile](_Gen(seed), n)


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
