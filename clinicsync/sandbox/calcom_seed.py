"""Deterministic, invented seed data for the Cal.com emulator (same arguments → same data; no real people).

One clinic on Cal.com: its owner's user (the API key's), two practitioners, a team, event types (paid through
Cal.com's Stripe app, free, seated, recurring, hidden, a HOLD no-show fee, a foreign currency, a stale deprecated
price, and team event types), two schedules, a webhook subscription, and bookings in every status: reschedule
chains, seated and recurring bookings, bookings whose `updatedAt` is empty.

Built for the identity and payment tests to come:
- About a third of attendees are patients of the Cliniko sandbox's seed for the same (profile, patients, seed):
  `seed.seed_profile` is run here to read their emails, and each such attendee books with the patient's email in
  other letter case. `SeedResult.identities` says which attendee email belongs to which Cliniko patient(s).
- Paid bookings carry the Payment rows Cal.com keeps (`payments`) and the Stripe objects Cal.com's Stripe app
  would have created on the host's connected account (`payment_intents`, `setup_intents`, `customers`):
  PaymentIntent metadata `identifier: "cal.com"`, `bookingId` (the numeric booking id, as Stripe's string),
  `bookerEmail` and the rest (docs/calcom-api.md §8). Most live on the clinic's own Stripe account
  (`CLINIC_ACCOUNT`); the team's massage therapist takes payments on her own connected account
  (`OTHER_ACCOUNT`). Each Stripe object has a `sandbox` block of loader hints (account, booking, case) that is
  not part of Stripe's object.
"""

from __future__ import annotations

import copy
import random
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from clinicsync.sandbox import seed as cliniko_seed

CLINIC_ACCOUNT = "acct_sandbox_clinic_a"  # the clinic's Stripe account (the Stripe sandbox's clinic A)
OTHER_ACCOUNT = "acct_sandbox_clinic_b"  # a practitioner's own connected account (the Stripe sandbox's clinic B)
CLINIC_TZ = "Australia/Melbourne"
_MELBOURNE = ZoneInfo(CLINIC_TZ)

OWNER_ID = 1001  # the API key's user
THERAPIST_ID = 1002  # takes team massage payments on OTHER_ACCOUNT
PHYSIO_ID = 1003
TEAM_ID = 3001
DEFAULT_SCHEDULE_ID = 2001
# Cal.com credential ids of the Stripe app, and the connected account each one charges.
STRIPE_CREDENTIALS: dict[int, dict[str, Any]] = {
    42: {"userId": OWNER_ID, "stripe_account": CLINIC_ACCOUNT},
    43: {"userId": THERAPIST_ID, "stripe_account": OTHER_ACCOUNT},
}

USERS: dict[int, dict[str, Any]] = {
    OWNER_ID: {
        "id": OWNER_ID,
        "username": "harbourside-physio",
        "name": "Harbourside Physio",
        "email": "bookings@harbourside.example",
        "timeZone": CLINIC_TZ,
        "weekStart": "Monday",
        "timeFormat": 24,
        "defaultScheduleId": DEFAULT_SCHEDULE_ID,
    },
    THERAPIST_ID: {
        "id": THERAPIST_ID,
        "username": "mei-lin-massage",
        "name": "Mei Lin",
        "email": "mei.lin@harbourside.example",
        "timeZone": CLINIC_TZ,
        "weekStart": "Monday",
        "timeFormat": 24,
        "defaultScheduleId": None,
    },
    PHYSIO_ID: {
        "id": PHYSIO_ID,
        "username": "sam-okafor",
        "name": "Sam Okafor",
        "email": "sam.okafor@harbourside.example",
        "timeZone": "Australia/Sydney",
        "weekStart": "Monday",
        "timeFormat": 12,
        "defaultScheduleId": None,
    },
}

TEAMS: dict[int, dict[str, Any]] = {
    TEAM_ID: {
        "id": TEAM_ID,
        "name": "Harbourside Allied Health",
        "slug": "harbourside-allied-health",
        "bio": "Physiotherapy, massage and pilates (invented clinic).",
        "isOrganization": False,
        "isPrivate": False,
        "hideBranding": False,
        "hideBookATeamMember": False,
        "timeZone": CLINIC_TZ,
        "weekStart": "Monday",
        "theme": "light",
        "brandColor": "#0f766e",
        "darkBrandColor": "#5eead4",
        "logoUrl": "https://harbourside.example/logo.png",
        "bannerUrl": "https://harbourside.example/banner.png",
        "metadata": {},
        "members": {OWNER_ID: "OWNER", THERAPIST_ID: "MEMBER", PHYSIO_ID: "MEMBER"},
    }
}

CLINIC_ADDRESS = "Suite 4, 88 Wattle Avenue, Fitzroy VIC 3065"


def _stripe(price: int, currency: str = "aud", option: str = "ON_BOOKING", credential: int = 42) -> dict[str, Any]:
    """The Stripe app's event type settings (packages/app-store/stripepayment/zod.ts): price in minor units."""
    return {
        "stripe": {
            "enabled": True,
            "price": price,
            "currency": currency,
            "paymentOption": option,
            "credentialId": credential,
            "appCategories": ["payment"],
        }
    }


# Event types. `price`/`currency` are the deprecated top-level columns; `apps` becomes metadata.apps.
EVENT_TYPES: list[dict[str, Any]] = [
    {"id": 4001, "title": "Initial consultation", "slug": "initial-consultation", "length": 60, "owner": OWNER_ID,
     "apps": _stripe(12000), "price": 12000, "currency": "aud", "location": "address"},
    {"id": 4002, "title": "Follow-up consultation", "slug": "follow-up", "length": 30, "owner": OWNER_ID,
     "apps": _stripe(8500), "price": 8000, "currency": "aud", "location": "address",
     "case": "stale_top_level_price"},
    {"id": 4003, "title": "Free discovery call", "slug": "discovery-call", "length": 15, "owner": OWNER_ID,
     "apps": {}, "price": 0, "currency": "usd", "location": "video"},
    {"id": 4004, "title": "Group pilates class", "slug": "group-pilates", "length": 55, "owner": OWNER_ID,
     "apps": _stripe(3000), "price": 3000, "currency": "aud", "location": "address", "seats": 6},
    {"id": 4005, "title": "Rehab program (weekly)", "slug": "rehab-program", "length": 45, "owner": OWNER_ID,
     "apps": {}, "price": 0, "currency": "usd", "location": "address",
     "recurrence": {"interval": 1, "occurrences": 4, "frequency": "weekly"}},
    {"id": 4006, "title": "Protected session (no-show fee)", "slug": "protected-session", "length": 60,
     "owner": OWNER_ID, "apps": _stripe(9000, option="HOLD"), "price": 9000, "currency": "aud",
     "location": "address"},
    {"id": 4007, "title": "Telehealth review", "slug": "telehealth-review", "length": 30, "owner": OWNER_ID,
     "apps": _stripe(6000), "price": 6000, "currency": "aud", "location": "video", "hidden": True},
    {"id": 4008, "title": "Overseas telehealth", "slug": "overseas-telehealth", "length": 30, "owner": OWNER_ID,
     "apps": _stripe(5000, currency="usd"), "price": 5000, "currency": "usd", "location": "video"},
    {"id": 4101, "title": "Remedial massage", "slug": "remedial-massage", "length": 60, "team": TEAM_ID,
     "scheduling": "roundRobin", "hosts": [THERAPIST_ID], "apps": _stripe(11000, credential=43), "price": 11000,
     "currency": "aud", "location": "address"},
    {"id": 4102, "title": "Team assessment", "slug": "team-assessment", "length": 90, "team": TEAM_ID,
     "scheduling": "collective", "hosts": [OWNER_ID, PHYSIO_ID], "apps": _stripe(18000), "price": 18000,
     "currency": "aud", "location": "address"},
]  # fmt: skip

EVENT_TYPE_CASES: dict[str, str] = {
    "stale_top_level_price": "the deprecated top-level price (8000) disagrees with metadata.apps.stripe.price "
    "(8500): the metadata wins",
}

SCHEDULES: list[dict[str, Any]] = [
    {
        "id": DEFAULT_SCHEDULE_ID,
        "ownerId": OWNER_ID,
        "name": "Clinic hours",
        "timeZone": CLINIC_TZ,
        "isDefault": True,
        "availability": [
            {
                "days": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"],
                "startTime": "08:00",
                "endTime": "18:00",
            },
            {"days": ["Saturday"], "startTime": "09:00", "endTime": "13:00"},
        ],
        "overrides": [{"date": "2025-12-24", "startTime": "08:00", "endTime": "12:00"}],
    },
    {
        "id": 2002,
        "ownerId": OWNER_ID,
        "name": "Telehealth evenings",
        "timeZone": CLINIC_TZ,
        "isDefault": False,
        "availability": [{"days": ["Tuesday", "Thursday"], "startTime": "18:00", "endTime": "21:00"}],
        "overrides": [],
    },
]

WEBHOOK_TRIGGERS = ("BOOKING_CREATED", "BOOKING_RESCHEDULED", "BOOKING_CANCELLED", "BOOKING_PAID")

# Booking cases a test can look up in `SeedResult.booking_cases` (uid → case).
BOOKING_CASES: dict[str, str] = {
    "reschedule_chain": "rescheduled once or more: every booking but the last is cancelled with rescheduledToUid; "
    "the payment moved to the last one, while its PaymentIntent's metadata.bookingId names the first",
    "seated": "one booking, several seats: each seat's booker paid separately, so several PaymentIntents share "
    "one bookingId",
    "recurring": "a weekly series: each occurrence is its own booking with recurringBookingUid; one was cancelled",
    "paid_other_account": "a team massage: the PaymentIntent lives on the therapist's connected account "
    "(acct_sandbox_clinic_b), not the clinic's",
    "cancelled_paid_not_refunded": "cancelled after paying, no refund policy: the charge stands",
    "cancelled_refunded": "cancelled after paying, refunded by Cal.com (Payment.refunded)",
    "unpaid_pending": "a paid event type booked but not paid: pending, PaymentIntent requires_payment_method",
    "hold_no_show_charged": "HOLD: a SetupIntent at booking, then a no-show fee charged as a PaymentIntent",
    "hold_card_saved": "HOLD: only a SetupIntent (seti_…) in Payment.externalId, nothing charged",
    "no_updated_at": "updatedAt is empty (null): only a listing by creation time finds it",
    "foreign_currency": "paid in USD while the clinic's Stripe account settles in AUD",
    "guests": "the booker invited guests (their emails are in guests, not attendees)",
    "rejected": "declined by the clinic: listed under the `cancelled` status filter, no payment taken",
}

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_PLAUSIBLE_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")
_LANGUAGES = ("en", "en", "en", "en", "zh-CN", "vi", "it", "el")
_TIME_ZONES = (CLINIC_TZ, CLINIC_TZ, CLINIC_TZ, "Australia/Sydney", "Australia/Brisbane", "Europe/London")
# Hard-profile patients who always get a booking, because their emails are the interesting identity cases.
_FORCED_PATIENT_CASES = (
    "family_shared_email_2",
    "upper_case_email",
    "plus_addressed_email",
    "stripe_email_case_match",
    "stripe_duplicate_email",
)


def fmt_instant(moment: datetime) -> str:
    """Cal.com's timestamps: UTC with milliseconds, `2024-08-13T15:30:00.000Z`."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def other_case(email: str, rng: random.Random) -> str:
    """The same address in other letter case (how a patient may type it when booking online)."""
    local, _, domain = email.partition("@")
    options = [
        ".".join(part[:1].upper() + part[1:] for part in local.split(".")) + "@" + domain,
        email.upper(),
        local + "@" + domain.upper(),
        email.lower(),
        local.capitalize() + "@" + domain.capitalize(),
    ]
    candidates = sorted({option for option in options if option != email})
    return rng.choice(candidates) if candidates else email


class _Ids:
    """Seeded uids (Cal.com's are 22 base-62 characters), uuids and Stripe-like ids."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.counters: dict[str, int] = {}
        self.used: set[str] = set()

    def uid(self) -> str:
        while True:
            value = "".join(self.rng.choice(_ALPHABET) for _ in range(22))
            if value not in self.used:
                self.used.add(value)
                return value

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def stripe(self, prefix: str) -> str:
        # Underscores after the prefix: never mistaken for (or colliding with) a real Stripe id.
        self.counters[prefix] = self.counters.get(prefix, 0) + 1
        return f"{prefix}_sandbox_cal_{self.counters[prefix]:04d}"


class _People:
    """Attendees: about `patient_share` of them Cliniko patients (email in other case), the rest invented."""

    def __init__(self, rng: random.Random, profile: str, patients: int, seed: int, share: float) -> None:
        self.rng = rng
        self.share = share
        result = cliniko_seed.seed_profile(profile, patients, seed, now=datetime(2025, 1, 1, tzinfo=UTC))
        live = [
            p
            for p in result.patients
            if p["archived_at"] is None and p["deleted_at"] is None and _PLAUSIBLE_EMAIL.match(p["email"] or "")
        ]
        by_case = {case: pid for pid, case in result.cases.items()}
        forced = [by_case[c] for c in _FORCED_PATIENT_CASES if c in by_case]
        rest = [p["id"] for p in live if p["id"] not in forced]
        rng.shuffle(rest)
        self.patient_order = [pid for pid in forced if any(p["id"] == pid for p in live)] + rest
        self.patients = {p["id"]: p for p in live}
        self.patient_cases = result.cases
        self.by_email: dict[str, list[str]] = {}
        for p in result.patients:  # every patient, so a family's shared email lists all of them
            if p["email"]:
                self.by_email.setdefault(p["email"].strip().casefold(), []).append(p["id"])
        self.taken = set(self.by_email)
        self.invented: list[dict[str, Any]] = []
        self.patient_people: dict[str, dict[str, Any]] = {}
        self.known: dict[str, dict[str, Any]] = {}  # every person who booked, by email as typed
        self.next_patient = 0

    def pick(self) -> dict[str, Any]:
        """A person to book: sometimes one who booked before (people come back)."""
        if self.patient_order and self.rng.random() < self.share:
            if self.patient_people and self.rng.random() < 0.3:
                return self.rng.choice(sorted(self.patient_people.values(), key=lambda p: p["email"]))
            pid = self.patient_order[self.next_patient % len(self.patient_order)]
            self.next_patient += 1
            return self._as_patient(pid)
        if self.invented and self.rng.random() < 0.25:
            return self.rng.choice(self.invented)
        return self._invent()

    def _as_patient(self, pid: str) -> dict[str, Any]:
        if pid in self.patient_people:
            return self.patient_people[pid]
        patient = self.patients[pid]
        name = " ".join(part for part in (patient["first_name"], patient["last_name"]) if part).strip()
        phones = patient.get("patient_phone_numbers") or []
        person = {
            "name": (name or "Patient")[:120],
            "email": other_case(patient["email"], self.rng),
            "timeZone": CLINIC_TZ,
            "locale": "en",
            "phoneNumber": _e164(phones[0]["number"]) if phones and self.rng.random() < 0.5 else None,
            "patient_ids": self.by_email[patient["email"].strip().casefold()],
            "patient_case": self.patient_cases.get(pid),
        }
        self.patient_people[pid] = person
        self.known[person["email"]] = person
        return person

    def named(self, name: str, email: str | None) -> dict[str, Any]:
        """A person an admin action names (a patient when the email is a patient's, in any case)."""
        email = email or f"{re.sub(r'[^a-z0-9.]', '', name.lower()) or 'booker'}.books@example.org"
        if email in self.known:
            return self.known[email]
        patient_ids = self.by_email.get(email.strip().casefold(), [])
        person = {
            "name": name,
            "email": email,
            "timeZone": CLINIC_TZ,
            "locale": "en",
            "phoneNumber": None,
            "patient_ids": list(patient_ids),
            "patient_case": self.patient_cases.get(patient_ids[0]) if patient_ids else None,
        }
        self.known[email] = person
        return person

    def _invent(self) -> dict[str, Any]:
        first = self.rng.choice(cliniko_seed.FIRST_NAMES)
        last = self.rng.choice(cliniko_seed.LAST_NAMES)
        base = "".join(ch for ch in f"{first}.{last}".lower() if ch.isalnum() or ch == ".")
        domain = self.rng.choice(("example.org", "example.net"))
        email, n = f"{base}.books@{domain}", 1
        while email.casefold() in self.taken:  # never a patient's address, in any case
            n += 1
            email = f"{base}.books{n}@{domain}"
        self.taken.add(email.casefold())
        person = {
            "name": f"{first} {last}",
            "email": email,
            "timeZone": self.rng.choice(_TIME_ZONES),
            "locale": self.rng.choice(_LANGUAGES),
            "phoneNumber": f"+6149157{self.rng.randrange(10000):04d}" if self.rng.random() < 0.4 else None,
            "patient_ids": [],
            "patient_case": None,
        }
        self.invented.append(person)
        self.known[email] = person
        return person


def _e164(number: str) -> str:
    digits = "".join(ch for ch in number if ch.isdigit())
    if number.strip().startswith("+"):
        return "+" + digits
    return "+61" + digits[1:] if digits.startswith("0") else "+" + digits


def seed_calcom(
    profile: str = "clean",
    patients: int = 50,
    seed: int = 1,
    *,
    bookings: int = 60,
    patient_share: float = 1 / 3,
    now: datetime | None = None,
) -> CalcomWorld:
    """The clinic's Cal.com data, dated around `now` (the emulator's clock): bookings from ~6 months before it to
    ~2 months after. `profile`, `patients` and `seed` name the Cliniko seed whose patients some attendees are."""
    if bookings < 0:
        raise ValueError("booking count must not be negative")
    if not 0 <= patient_share <= 1:
        raise ValueError("patient_share must be between 0 and 1")
    world = CalcomWorld(profile, patients, seed, patient_share=patient_share, now=now)
    world.build(bookings)
    return world


def stripe_app(event_type: dict[str, Any] | None) -> dict[str, Any] | None:
    """An event type's enabled Stripe app settings (metadata.apps.stripe), or None for a free one."""
    apps = ((event_type or {}).get("metadata") or {}).get("apps") or {}
    app = apps.get("stripe")
    return app if isinstance(app, dict) and app.get("enabled") else None


class CalcomWorld:
    """Everything the Cal.com emulator serves, plus the changes that touch payments (booking, rescheduling,
    cancelling), so the seed and the emulator's admin actions make them the same way.

    Bookings are kept in the emulator's internal form (named like Cal.com's Booking columns: `startTime`,
    `fromReschedule`, `rescheduled`, upper-case `status`, attendees with `locale`/`noShow`/`seat`, `responses`).
    """

    def __init__(
        self,
        profile: str = "clean",
        patients: int = 50,
        seed: int = 1,
        *,
        patient_share: float = 1 / 3,
        now: datetime | None = None,
    ) -> None:
        self.now = (now or datetime.now(UTC)).astimezone(UTC)
        self.rng = random.Random(seed * 104_723 + 17)
        self.people = _People(self.rng, profile, patients, seed, patient_share)
        self.ids = _Ids(self.rng)
        self.users = copy.deepcopy(USERS)
        self.teams = copy.deepcopy(TEAMS)
        self.event_types: dict[int, dict[str, Any]] = {et["id"]: _event_type_record(et) for et in EVENT_TYPES}
        self.schedules = copy.deepcopy(SCHEDULES)
        self.stripe_credentials = copy.deepcopy(STRIPE_CREDENTIALS)
        self.webhooks: list[dict[str, Any]] = [
            {
                "id": self.ids.uuid(),  # a string: the spec says number, the database column is a string
                "userId": OWNER_ID,
                "subscriberUrl": "https://hooks.example.com/calcom/harbourside",
                "triggers": list(WEBHOOK_TRIGGERS),
                "active": True,
                "payloadTemplate": None,
                "secret": None,
            }
        ]
        self.bookings: list[dict[str, Any]] = []
        self.payments: list[dict[str, Any]] = []
        self.payment_intents: list[dict[str, Any]] = []
        self.setup_intents: list[dict[str, Any]] = []
        self.customers: dict[tuple[str, str], dict[str, Any]] = {}
        self.cases: dict[str, str] = {}  # booking uid -> BOOKING_CASES key

    # -- the seed ------------------------------------------------------------------------------------------------

    def build(self, count: int) -> None:
        """About `count` bookings: the special cases below (~25), then ordinary ones up to `count`; 0 means none."""
        if count <= 0:
            return
        specials = [
            self._reschedule_chain(2),
            self._reschedule_chain(3),
            self._seated(past=True),
            self._seated(past=False),
            self._recurring(),
            self._paid(4101, "accepted", case="paid_other_account"),
            self._paid(4101, "accepted", case="paid_other_account"),
            self._paid(4001, "cancelled", case="cancelled_paid_not_refunded"),
            self._paid(4002, "cancelled", refunded=True, case="cancelled_refunded"),
            self._paid(4001, "pending", case="unpaid_pending", future=True),
            self._hold(charged=True),
            self._hold(charged=False),
            self._paid(4008, "accepted", case="foreign_currency"),
            self._paid(4003, "accepted", case="guests", guests=2),
            self._paid(4002, "rejected", case="rejected"),
        ]
        made = sum(len(batch) for batch in specials)
        for _ in range(max(0, count - made)):
            self._ordinary()
        # About one booking in ten never had updatedAt set (an old row): the column is nullable.
        plain = [b for b in self.bookings if b["uid"] not in self.cases and not b["rescheduled"]]
        for booking in self.rng.sample(plain, max(1, len(plain) // 10)) if plain else []:
            booking["updatedAt"] = None
            self.cases[booking["uid"]] = "no_updated_at"
        self._number()

    def _ordinary(self) -> None:
        event_type = self.rng.choice((4001, 4001, 4002, 4002, 4002, 4003, 4007, 4101, 4102))
        paid = stripe_app(self.event_types[event_type]) is not None
        roll = self.rng.random()
        if paid:
            status = (
                "accepted" if roll < 0.78 else "pending" if roll < 0.86 else "cancelled" if roll < 0.97 else "rejected"
            )
        else:
            status = "accepted" if roll < 0.8 else "cancelled" if roll < 0.95 else "rejected"
        self._paid(event_type, status, refunded=status == "cancelled" and self.rng.random() < 0.5)

    def _paid(
        self,
        event_type: int,
        status: str,
        *,
        refunded: bool = False,
        case: str | None = None,
        future: bool = False,
        guests: int = 0,
    ) -> list[dict[str, Any]]:
        """A booking of `event_type`, with the payment its Stripe app took (none when free or rejected)."""
        booking = self._booking(event_type, self._start(future=future), status, guests=guests)
        if stripe_app(self.event_types[event_type]) and status != "rejected":
            self._payment(booking, booking["attendees"][0], success=status != "pending", refunded=refunded)
        if case:
            self.cases[booking["uid"]] = case
        return [booking]

    def _reschedule_chain(self, length: int) -> list[dict[str, Any]]:
        first = self._booking(4001, self._start(past_only=True), "accepted")
        self._payment(first, first["attendees"][0], success=True)
        chain = [first]
        for _ in range(length - 1):
            previous = chain[-1]
            moved_at = min(_parse(previous["createdAt"]) + timedelta(days=self.rng.randint(1, 5)), self.now)
            new_start = _parse(previous["startTime"]) + timedelta(days=self.rng.randint(2, 14))
            chain.append(self._move(previous, new_start, moved_at, by=previous["attendees"][0]["email"]))
        for booking in chain:
            self.cases[booking["uid"]] = "reschedule_chain"
        return chain

    def _seated(self, *, past: bool) -> list[dict[str, Any]]:
        booking = self._booking(4004, self._start(past_only=past, future=not past), "accepted", seated=True)
        for _ in range(self.rng.randint(3, 5)):
            person = self.people.pick()
            attendee = _attendee(person)
            attendee["seat"] = {
                "referenceUid": self.ids.uuid(),
                "data": {"responses": {"name": person["name"], "email": person["email"]}},
                "metadata": {},
            }
            booking["attendees"].append(attendee)
            self._payment(booking, attendee, success=True)  # every seat pays for itself
        first = booking["attendees"][0]
        booking["responses"] = {"name": first["name"], "email": first["email"]}
        self.cases[booking["uid"]] = "seated"
        return [booking]

    def _recurring(self) -> list[dict[str, Any]]:
        series = self.ids.uuid()
        start = self._start(past_only=True)
        person = self.people.pick()
        created = start - timedelta(days=3)
        occurrences = []
        for n in range(4):
            booking = self._booking(4005, start + timedelta(weeks=n), "accepted", person=person, created=created)
            booking["recurringEventId"] = series
            occurrences.append(booking)
            self.cases[booking["uid"]] = "recurring"
        occurrences[2].update(
            status="CANCELLED",
            cancellationReason="Away that week",
            cancelledBy=person["email"],
            updatedAt=fmt_instant(min(created + timedelta(days=5), self.now)),
        )
        return occurrences

    def _hold(self, *, charged: bool) -> list[dict[str, Any]]:
        booking = self._booking(4006, self._start(past_only=True), "accepted")
        attendee = booking["attendees"][0]
        setup = self.ids.stripe("seti")
        customer = self._customer(CLINIC_ACCOUNT, attendee)
        self.setup_intents.append(
            {
                "id": setup,
                "object": "setup_intent",
                "status": "succeeded",
                "customer": customer["id"],
                "created": int(_parse(booking["createdAt"]).timestamp()),
                "livemode": False,
                "metadata": self._metadata(booking, attendee),
                "sandbox": {"account": CLINIC_ACCOUNT, "booking_uid": booking["uid"]},
            }
        )
        payment = self._payment_row(booking, external_id=setup, success=charged, option="HOLD")
        if charged:  # the no-show fee: a PaymentIntent stored only in Payment.data
            intent = self._intent(booking, attendee, CLINIC_ACCOUNT, status="succeeded", case="hold_no_show_charged")
            payment["data"] = {"paymentIntent": intent["id"], "setupIntent": setup}
        self.cases[booking["uid"]] = "hold_no_show_charged" if charged else "hold_card_saved"
        return [booking]

    # -- changes at run time (the emulator's admin actions) ------------------------------------------------------

    def book(
        self,
        event_type_id: int,
        *,
        start: datetime | None = None,
        status: str = "accepted",
        name: str | None = None,
        email: str | None = None,
        paid: bool | None = None,
        null_updated_at: bool = False,
    ) -> dict[str, Any]:
        """A booking made now; a paid event type's booking comes with its payment (paid unless `pending` or
        `paid=False`)."""
        if event_type_id not in self.event_types or self.event_types[event_type_id].get("deleted"):
            raise KeyError(f"no event type {event_type_id}")
        if status not in ("accepted", "pending", "cancelled", "rejected"):
            raise ValueError("status must be accepted, pending, cancelled or rejected")
        person = None
        if email or name:
            person = self.people.named(name or (email or "").split("@")[0], email)
        start = start or self.now + timedelta(days=self.rng.randint(1, 30))
        booking = self._booking(event_type_id, start, status, person=person, created=self.now)
        if null_updated_at:
            booking["updatedAt"] = None
        if stripe_app(self.event_types[event_type_id]) and status != "rejected":
            success = paid if paid is not None else status != "pending"
            self._payment(booking, booking["attendees"][0], success=success)
        self._number()
        return booking

    def reschedule(self, uid: str, *, start: datetime | None = None, by: str | None = None) -> dict[str, Any]:
        """Move a booking now: a new booking (new uid and id) replaces it; its payment moves along."""
        old = self.find(uid)
        if old["status"] in ("CANCELLED", "REJECTED"):
            raise ValueError(f"booking {uid} is {old['status'].lower()}; only a live booking can be rescheduled")
        if any(a.get("seat") for a in old["attendees"]):
            raise ValueError("a seated booking is rescheduled seat by seat; not emulated")
        new_start = start or _parse(old["startTime"]) + timedelta(days=7)
        new = self._move(
            old, new_start, self.now, by=by or (old["attendees"][0]["email"] if old["attendees"] else None)
        )
        self._number()
        return new

    def cancel(self, uid: str, *, reason: str = "", by: str | None = None, refund: bool = False) -> dict[str, Any]:
        booking = self.find(uid)
        booking.update(
            status="CANCELLED",
            cancellationReason=reason,
            cancelledBy=by or (booking["attendees"][0]["email"] if booking["attendees"] else None),
            updatedAt=fmt_instant(self.now),
        )
        if refund:  # Cal.com's refund policy: Payment.refunded, and a refund on the charge
            for payment in self.payments:
                if payment["bookingUid"] == uid and payment["success"]:
                    payment["refunded"] = True
                    for intent in self.payment_intents:
                        if intent["id"] == payment["externalId"]:
                            intent["sandbox"]["refunded"] = True
        return booking

    def find(self, uid: str) -> dict[str, Any]:
        for booking in self.bookings:
            if booking["uid"] == uid:
                return booking
        raise KeyError(f"no booking {uid}")

    def identities(self) -> list[dict[str, Any]]:
        """Each attendee email as booked: the Cliniko patient(s) it belongs to (casefolded), and its bookings."""
        found: dict[str, dict[str, Any]] = {}
        for booking in self.bookings:
            for attendee in booking["attendees"]:
                person = self.people.known.get(attendee["email"])
                entry = found.setdefault(
                    attendee["email"],
                    {
                        "email": attendee["email"],
                        "patient_ids": list(person["patient_ids"]) if person else [],
                        "patient_case": person["patient_case"] if person else None,
                        "booking_uids": [],
                    },
                )
                entry["booking_uids"].append(booking["uid"])
        return sorted(found.values(), key=lambda e: e["email"].casefold())

    def stripe_objects(self) -> dict[str, list[dict[str, Any]]]:
        """What Cal.com's Stripe app created, for a later load into the Stripe sandbox."""
        return {
            "payment_intents": copy.deepcopy(self.payment_intents),
            "setup_intents": copy.deepcopy(self.setup_intents),
            "customers": copy.deepcopy(list(self.customers.values())),
        }

    # -- records -------------------------------------------------------------------------------------------------

    def _start(self, *, future: bool = False, past_only: bool = False) -> datetime:
        """A clinic-hours slot on a weekday, ~6 months back to ~2 months ahead (or only ahead / only back)."""
        low, high = (-180, -2) if past_only else (1, 60) if future else (-180, 60)
        day = (self.now + timedelta(days=self.rng.randint(low, high))).astimezone(_MELBOURNE).date()
        while day.weekday() >= 5:
            day += timedelta(days=1)
        local = datetime(day.year, day.month, day.day, self.rng.randint(8, 16), self.rng.choice((0, 15, 30, 45)))
        return local.replace(tzinfo=_MELBOURNE).astimezone(UTC)

    def _booking(
        self,
        event_type_id: int,
        start: datetime,
        status: str,
        *,
        person: dict[str, Any] | None = None,
        created: datetime | None = None,
        seated: bool = False,
        guests: int = 0,
    ) -> dict[str, Any]:
        event_type = self.event_types[event_type_id]
        host = event_type.get("owner") or self.rng.choice(event_type["hosts"])
        if created is None:
            created = min(start, self.now) - timedelta(days=self.rng.randint(1, 30), seconds=self.rng.randrange(86400))
        updated = min(created + timedelta(seconds=self.rng.randrange(3 * 86400)), self.now)
        attendees: list[dict[str, Any]] = []
        responses: dict[str, Any] = {}
        if not seated:  # one booker, who may invite guests
            person = person or self.people.pick()
            attendees.append(_attendee(person))
            guest_emails = [f"guest{self.rng.randrange(1000):03d}@example.org" for _ in range(guests)]
            responses = {"name": person["name"], "email": person["email"], "guests": guest_emails}
            if self.rng.random() < 0.3:
                responses["notes"] = "Invented note: please use the side entrance."
        booking = new_booking(
            uid=self.ids.uid(),
            event_type=event_type,
            host=self.users[host],
            start=start,
            status=status,
            attendees=attendees,
            responses=responses,
            created=created,
            updated=updated,
        )
        if status == "cancelled":
            booking["cancellationReason"] = self.rng.choice(("Feeling better", "Work clash", ""))
            booking["cancelledBy"] = attendees[0]["email"] if attendees else None
        if status == "rejected":
            booking["rejectionReason"] = "Outside the clinic's scope"
        if event_type.get("location") == "video":
            booking["metadata"] = {"videoCallUrl": f"https://app.cal.com/video/{booking['uid']}"}
        if attendees and status == "accepted" and _parse(booking["endTime"]) < self.now and self.rng.random() < 0.1:
            attendees[0]["noShow"] = True
        self.bookings.append(booking)
        return booking

    def _move(self, old: dict[str, Any], start: datetime, at: datetime, *, by: str | None) -> dict[str, Any]:
        """A reschedule at time `at`: the new booking points back with fromReschedule; the old one is cancelled
        with rescheduled=True. Cal.com reconnects the successful payment to the new booking (Payment.bookingId),
        while the PaymentIntent's metadata keeps the original booking id."""
        duration = _parse(old["endTime"]) - _parse(old["startTime"])
        uid = self.ids.uid()
        new = {
            **copy.deepcopy(old),
            "id": 0,
            "uid": uid,
            "startTime": fmt_instant(start),
            "endTime": fmt_instant(start + duration),
            "responses": {**old["responses"], "rescheduledReason": "Clashed with work"},
            "createdAt": fmt_instant(at),
            "updatedAt": fmt_instant(at),
            "fromReschedule": old["uid"],
            "rescheduled": False,
            "rescheduledBy": by,
            "status": "ACCEPTED",
            "iCalUID": f"{uid}@Cal.com",
        }
        if old.get("metadata", {}).get("videoCallUrl"):
            new["metadata"] = {**old["metadata"], "videoCallUrl": f"https://app.cal.com/video/{uid}"}
        old.update(status="CANCELLED", rescheduled=True, rescheduledBy=by, updatedAt=fmt_instant(at))
        for payment in self.payments:
            if payment["bookingUid"] == old["uid"] and payment["success"]:
                payment["bookingUid"] = uid
                payment["bookingId"] = None  # numbered with the new booking
        self.bookings.append(new)
        return new

    def _payment(
        self, booking: dict[str, Any], attendee: dict[str, Any], *, success: bool, refunded: bool = False
    ) -> None:
        app = stripe_app(self.event_types[booking["eventTypeId"]])
        assert app is not None
        account = self.stripe_credentials[app["credentialId"]]["stripe_account"]
        status = "succeeded" if success else "requires_payment_method"
        intent = self._intent(booking, attendee, account, status=status, refunded=refunded)
        self._payment_row(booking, external_id=intent["id"], success=success, refunded=refunded)
        if success:
            booking["paid"] = True

    def _payment_row(
        self,
        booking: dict[str, Any],
        *,
        external_id: str,
        success: bool,
        refunded: bool = False,
        option: str = "ON_BOOKING",
    ) -> dict[str, Any]:
        app = stripe_app(self.event_types[booking["eventTypeId"]])
        assert app is not None
        row = {
            "id": len(self.payments) + 1,
            "uid": self.ids.uuid(),
            "appId": "stripe",
            "bookingUid": booking["uid"],
            "bookingId": None,  # filled in when bookings are numbered
            "amount": app["price"],
            "fee": 0,
            "currency": app["currency"],
            "success": success,
            "refunded": refunded,
            "externalId": external_id,
            "paymentOption": option,
            "data": {},
        }
        self.payments.append(row)
        return row

    def _intent(
        self,
        booking: dict[str, Any],
        attendee: dict[str, Any],
        account: str,
        *,
        status: str,
        refunded: bool = False,
        case: str | None = None,
    ) -> dict[str, Any]:
        app = stripe_app(self.event_types[booking["eventTypeId"]])
        assert app is not None
        intent = {
            "id": self.ids.stripe("pi"),
            "object": "payment_intent",
            "amount": app["price"],
            "amount_received": app["price"] if status == "succeeded" else 0,
            "currency": app["currency"],
            "status": status,
            "customer": self._customer(account, attendee)["id"],
            "description": booking["title"],
            "created": int(_parse(booking["createdAt"]).timestamp()),
            "livemode": False,
            "capture_method": "automatic",
            "payment_method_types": ["card"],
            "metadata": self._metadata(booking, attendee),
            "sandbox": {"account": account, "booking_uid": booking["uid"], "refunded": refunded, "case": case},
        }
        self.payment_intents.append(intent)
        return intent

    def _metadata(self, booking: dict[str, Any], attendee: dict[str, Any]) -> dict[str, str]:
        """PaymentService's PaymentIntent metadata; bookingId is filled in when bookings are numbered. Stripe keeps
        metadata values as strings and drops empty ones, so a booker without a phone has no bookerPhoneNumber."""
        host = self.users[booking["userId"]]
        metadata = {
            "identifier": "cal.com",
            "bookingId": "",
            "calAccountId": str(host["id"]),
            "calUsername": host["username"],
            "bookerName": attendee["name"],
            "bookerEmail": attendee["email"],
            "bookerPhoneNumber": attendee.get("phoneNumber") or "",
            "eventTitle": self.event_types[booking["eventTypeId"]]["title"],
            "bookingTitle": booking["title"],
        }
        return {key: value for key, value in metadata.items() if value != "" or key == "bookingId"}

    def _customer(self, account: str, attendee: dict[str, Any]) -> dict[str, Any]:
        """One Stripe customer per booker email on each account: the app looks the email up before creating one."""
        key = (account, attendee["email"])
        if key not in self.customers:
            self.customers[key] = {
                "id": self.ids.stripe("cus"),
                "object": "customer",
                "email": attendee["email"],
                "name": attendee["name"],
                "sandbox": {"account": account},
            }
        return self.customers[key]

    def _number(self) -> None:
        """Give new bookings ids in creation order (Cal.com's are autoincrement), then fill in the ids that
        payments and PaymentIntents point to."""
        next_id = max([10_000, *(b["id"] for b in self.bookings)]) + 1
        for booking in sorted((b for b in self.bookings if not b["id"]), key=lambda b: (b["createdAt"], b["uid"])):
            booking["id"] = next_id
            next_id += 1
        ids = {b["uid"]: b["id"] for b in self.bookings}
        for intent in (*self.payment_intents, *self.setup_intents):
            if "booking_id" not in intent["sandbox"]:  # the booking paid for, even after it is rescheduled
                intent["sandbox"]["booking_id"] = ids[intent["sandbox"]["booking_uid"]]
                intent["metadata"]["bookingId"] = str(ids[intent["sandbox"]["booking_uid"]])
        for payment in self.payments:
            if payment["bookingId"] is None:
                payment["bookingId"] = ids[payment["bookingUid"]]


# -- records ---------------------------------------------------------------------------------------------------


def clinic_payments(intents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The paid PaymentIntents among `intents` that Cal.com's Stripe app made on the clinic's own account, as
    payments for the Stripe sandbox's admin `seed` (which gives them its own ids): the same amount, currency,
    metadata, creation time and refund. Unpaid ones and those on another account are not in the clinic's Stripe."""
    return [
        {
            "amount": intent["amount"],
            "currency": intent["currency"],
            "metadata": intent["metadata"],
            "description": intent["description"],
            "created": intent["created"],
            "refunded": intent["amount"] if intent["sandbox"].get("refunded") else 0,
        }
        for intent in intents
        if intent["sandbox"]["account"] == CLINIC_ACCOUNT and intent["status"] == "succeeded"
    ]


def _attendee(person: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": person["name"],
        "email": person["email"],
        "timeZone": person["timeZone"],
        "locale": person["locale"],
        "phoneNumber": person["phoneNumber"],
        "noShow": False,
        "seat": None,
    }


def new_booking(
    *,
    uid: str,
    event_type: dict[str, Any],
    host: dict[str, Any],
    start: datetime,
    status: str,
    attendees: list[dict[str, Any]],
    responses: dict[str, Any],
    created: datetime,
    updated: datetime | None,
) -> dict[str, Any]:
    """A booking row in the emulator's internal form (named like Cal.com's Booking columns); id 0 until numbered."""
    end = start + timedelta(minutes=event_type["length"])
    title_name = attendees[0]["name"] if attendees else "Group"
    return {
        "id": 0,
        "uid": uid,
        "title": f"{event_type['title']} between {host['name']} and {title_name}",
        "description": "",
        "status": status.upper(),
        "startTime": fmt_instant(start),
        "endTime": fmt_instant(end),
        "eventTypeId": event_type["id"],
        "userId": host["id"],
        "attendees": attendees,
        "responses": responses,
        "location": CLINIC_ADDRESS if event_type.get("location") == "address" else "integrations:daily",
        "metadata": {},
        "createdAt": fmt_instant(created),
        "updatedAt": fmt_instant(updated) if updated is not None else None,
        "fromReschedule": None,
        "rescheduled": False,
        "rescheduledBy": None,
        "cancellationReason": None,
        "cancelledBy": None,
        "rejectionReason": None,
        "recurringEventId": None,
        "iCalUID": f"{uid}@Cal.com",
        "rating": None,
        "noShowHost": False,
        "paid": False,
    }


def _event_type_record(spec: dict[str, Any]) -> dict[str, Any]:
    """An EVENT_TYPES entry as the emulator stores it: the Stripe app's settings under metadata.apps."""
    record = {k: v for k, v in spec.items() if k != "apps"}
    record["metadata"] = {"apps": copy.deepcopy(spec["apps"])} if spec["apps"] else {}
    record.setdefault("hidden", False)
    record.setdefault("deleted", False)
    return record


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
