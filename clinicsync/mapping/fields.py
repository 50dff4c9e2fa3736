"""What can be mapped: each source type's real fields with their privacy class, and each Stripe object's writable
fields with their limits.

The privacy class is an allow-list, not a block-list: a field is mappable without a person's explicit decision only
if it is listed here as identity, contact, billing or system. Clinical fields, every custom field (ClinicSync
cannot know what a clinic keeps in one) and anything not listed need an explicit, recorded allowance.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from clinicsync import stripe_limits
from clinicsync.labels import SOURCE_SYSTEMS
from clinicsync.mapping.spec import CUSTOM_FIELD_PREFIX
from clinicsync.mapping.transforms import kind_of

IDENTITY, CONTACT, BILLING, CLINICAL, SYSTEM = "identity", "contact", "billing", "clinical", "system"
INTERNAL = "internal"  # the clinic's own business data (a product's cost price): not for Stripe without a decision
CLASSES = (IDENTITY, CONTACT, BILLING, CLINICAL, SYSTEM, INTERNAL)
NEEDS_ALLOWANCE = frozenset({CLINICAL, INTERNAL})


@dataclass(frozen=True)
class SourceField:
    name: str  # the path a rule names: "first_name", "patient_phone_numbers", "custom_fields.<token>"
    cls: str
    label: str
    kind: str = "text"  # text, date, datetime, decimal, integer, boolean, object, list, link

    @property
    def needs_allowance(self) -> bool:
        return self.cls in NEEDS_ALLOWANCE


def _fields(cls: str, *entries: tuple[str, str] | tuple[str, str, str]) -> list[SourceField]:
    return [SourceField(entry[0], cls, entry[1], *(entry[2:])) for entry in entries]


# Cliniko patients (docs/cliniko-api.md §5.1, from Cliniko's OpenAPI Patient schema).
CLINIKO_PATIENT_FIELDS: tuple[SourceField, ...] = (
    *_fields(
        SYSTEM,
        ("id", "Cliniko patient id"),
        ("created_at", "Created at", "datetime"),
        ("updated_at", "Updated at", "datetime"),
        ("archived_at", "Archived at", "datetime"),
        ("deleted_at", "Deleted at", "datetime"),
        ("merged_at", "Merged at", "datetime"),
        ("merged_with_patient", "Merged into patient", "link"),
    ),
    *_fields(
        IDENTITY,
        ("title", "Title"),
        ("first_name", "First name"),
        ("last_name", "Last name"),
        ("preferred_first_name", "Preferred first name"),
        ("label", "Full name (label)"),
        ("pronouns", "Pronouns", "object"),
        ("occupation", "Occupation"),
    ),
    *_fields(
        CONTACT,
        ("email", "Email"),
        ("patient_phone_numbers", "Phone numbers", "list"),
        ("address_1", "Address line 1"),
        ("address_2", "Address line 2"),
        ("address_3", "Address line 3"),
        ("city", "City / suburb"),
        ("state", "State"),
        ("post_code", "Post code"),
        ("country", "Country (deprecated)"),
        ("country_code", "Country code"),
        ("time_zone", "Time zone"),
        ("emergency_contact", "Emergency contact"),
        ("reminder_type", "Reminder type"),
        ("receives_confirmation_emails", "Receives confirmation emails", "boolean"),
        ("receives_cancellation_emails", "Receives cancellation emails", "boolean"),
        ("accepted_privacy_policy", "Accepted privacy policy", "boolean"),
        ("accepted_email_marketing", "Accepted email marketing", "boolean"),
        ("accepted_sms_marketing", "Accepted SMS marketing", "boolean"),
    ),
    *_fields(
        BILLING,
        ("invoice_default_to", "Invoice to"),
        ("invoice_email", "Invoice email"),
        ("invoice_extra_information", "Invoice extra information"),
        ("old_reference_id", "Old reference id"),
        ("concession_type", "Concession type", "link"),
    ),
    # Health information, or information a clinic holds because of a patient's health (Privacy Act "sensitive").
    *_fields(
        CLINICAL,
        ("notes", "Notes"),
        ("appointment_notes", "Appointment notes"),
        ("medical_alerts", "Medical alerts", "link"),
        ("medicare", "Medicare number"),
        ("medicare_reference_number", "Medicare reference number (IRN)"),
        ("dva_card_number", "DVA card number"),
        ("date_of_birth", "Date of birth", "date"),
        ("sex", "Sex"),
        ("gender_identity", "Gender identity"),
        ("gender", "Gender (deprecated)"),
        ("referral_source", "Referral source"),
        ("referring_doctor", "Referring doctor", "link"),
        ("appointments", "Appointments", "link"),
        ("attendees", "Attendances", "link"),
        ("invoices", "Invoices", "link"),
        ("latest_booking", "Latest booking", "link"),
        ("patient_attachments", "Attachments", "link"),
        ("relationships", "Relationships", "link"),
    ),
)

# Cliniko invoices (§5.2), for the invoices stream to come.
CLINIKO_INVOICE_FIELDS: tuple[SourceField, ...] = (
    *_fields(
        SYSTEM,
        ("id", "Cliniko invoice id"),
        ("created_at", "Created at", "datetime"),
        ("updated_at", "Updated at", "datetime"),
        ("archived_at", "Archived at", "datetime"),
        ("deleted_at", "Deleted at", "datetime"),
        ("business", "Business", "link"),
        ("practitioner", "Practitioner", "link"),
    ),
    *_fields(IDENTITY, ("patient", "Patient", "link")),
    *_fields(
        BILLING,
        ("number", "Invoice number", "integer"),
        ("issue_date", "Issue date", "date"),
        ("closed_at", "Closed at", "datetime"),
        ("status", "Status", "integer"),
        ("status_description", "Status description"),
        ("total_amount", "Total", "decimal"),
        ("net_amount", "Net", "decimal"),
        ("tax_amount", "Tax", "decimal"),
        ("discounted_amount", "Discount", "decimal"),
        ("calculation_method", "Calculation method", "integer"),
        ("invoice_to", "Invoice to"),
        ("online_payment_url", "Online payment URL"),
        ("original_invoice", "Original invoice", "link"),
    ),
    *_fields(
        CLINICAL,
        ("notes", "Notes"),
        ("patient_extra_information", "Patient extra information"),
        ("appointment", "Appointment", "link"),
        ("attendee", "Attendee", "link"),
        ("invoice_items", "Invoice items (services given)", "link"),
    ),
)

# Cliniko products (§5.4). Cost prices and notes are the clinic's own business, not the customer's: they leave
# only with a person's recorded allowance, like clinical fields.
CLINIKO_PRODUCT_FIELDS: tuple[SourceField, ...] = (
    *_fields(
        SYSTEM,
        ("id", "Cliniko product id"),
        ("created_at", "Created at", "datetime"),
        ("updated_at", "Updated at", "datetime"),
        ("archived_at", "Archived at", "datetime"),
        ("tax", "Tax", "link"),
        ("product_supplier", "Supplier", "link"),
    ),
    *_fields(
        IDENTITY,
        ("name", "Product name"),
        ("item_code", "Item code"),
        ("serial_number", "Serial number"),
        ("product_supplier_name", "Supplier name"),
    ),
    *_fields(
        BILLING,
        ("price_including_tax", "Price including tax", "decimal"),
        ("price_ex_tax", "Price excluding tax", "decimal"),
        ("stock_level", "Stock level", "decimal"),
    ),
    *_fields(INTERNAL, ("cost_price", "Cost price", "decimal"), ("notes", "Notes")),
)

# Cal.com event types (docs/calcom-api.md §3, EventTypeOutput_2024_06_14), with what the stream adds from the
# key's user and the event type's team. The price is not a mapped field: it becomes a Stripe Price of its own.
CALCOM_EVENT_TYPE_FIELDS: tuple[SourceField, ...] = (
    *_fields(
        SYSTEM,
        ("id", "Cal.com event type id"),
        ("slug", "Link name (slug)"),
        ("lengthInMinutes", "Length (minutes)", "integer"),
        ("hidden", "Hidden", "boolean"),
        ("schedulingType", "Scheduling type"),
    ),
    *_fields(IDENTITY, ("title", "Event type name"), ("description", "Description"), ("team_name", "Team")),
    *_fields(CONTACT, ("owner_email", "Owner's email")),
)

# A Cal.com person: the attendee of a booking, summed up over every booking with their email (streams/
# calcom_bookings.py). Cal.com has no id for an attendee: `id` is a key derived from the email.
CALCOM_ATTENDEE_FIELDS: tuple[SourceField, ...] = (
    *_fields(
        SYSTEM,
        ("id", "Cal.com attendee reference"),
        ("last_booking_uid", "Last booking (Cal.com id)"),
        ("last_booking_start", "Last booking start", "datetime"),
        ("booking_count", "Number of bookings", "integer"),
    ),
    *_fields(IDENTITY, ("name", "Name"), ("timeZone", "Time zone"), ("language", "Language")),
    *_fields(CONTACT, ("email", "Email"), ("phoneNumber", "Phone")),
)

# A paid Cal.com booking followed through its reschedules (streams/calcom_booking_payments.py): `id` is the first
# booking's, the rest are the latest booking's.
CALCOM_PAID_BOOKING_FIELDS: tuple[SourceField, ...] = (
    *_fields(
        SYSTEM,
        ("id", "Cal.com booking id (the first, before any reschedule; with the seat's uid for one seat)"),
        ("booking_uid", "Booking (Cal.com uid of the latest)"),
        ("event_type", "Event type"),
        ("start", "Start", "datetime"),
        ("status", "Status"),
        ("reschedules", "Times rescheduled", "integer"),
    ),
    *_fields(CONTACT, ("owner_email", "Owner's email")),
)

# An event type with where it is offered from (streams/calcom_reference.py): its schedule, its team, its owner.
CALCOM_EVENT_TYPE_DETAIL_FIELDS: tuple[SourceField, ...] = (
    *_fields(
        SYSTEM,
        ("id", "Cal.com event type id"),
        ("title", "Title"),
        ("schedule_name", "Schedule"),
        ("schedule_time_zone", "Schedule time zone"),
        ("team_id", "Team (Cal.com id)"),
        ("team_slug", "Team's web address name"),
        ("owner_name", "Owner"),
        ("owner_time_zone", "Owner's time zone"),
    ),
)

SOURCE_FIELDS: dict[tuple[str, str], tuple[SourceField, ...]] = {
    ("calcom", "event_type"): CALCOM_EVENT_TYPE_FIELDS,
    ("calcom", "event_type_details"): CALCOM_EVENT_TYPE_DETAIL_FIELDS,
    ("calcom", "attendee"): CALCOM_ATTENDEE_FIELDS,
    ("calcom", "paid_booking"): CALCOM_PAID_BOOKING_FIELDS,
    ("cliniko", "patient"): CLINIKO_PATIENT_FIELDS,
    ("cliniko", "product"): CLINIKO_PRODUCT_FIELDS,
    ("cliniko", "invoice"): CLINIKO_INVOICE_FIELDS,
}


def custom_field_entries(settings: Mapping[str, Any] | None) -> list[SourceField]:
    """Cliniko patient custom fields from `GET /settings` (`patient_custom_fields_definition`), by token.

    Every custom field is classed clinical: clinics keep health funds, injuries and consent answers in them, and
    nothing in the definition says which is which.
    """
    definition = (settings or {}).get("patient_custom_fields_definition") or {}
    entries = []
    for section in definition.get("sections") or []:
        if not isinstance(section, Mapping) or section.get("archived"):
            continue
        for item in section.get("fields") or []:
            if isinstance(item, Mapping) and item.get("token") and not item.get("archived"):
                label = f"{section.get('name') or 'Custom'} › {item.get('name') or item['token']}"
                kind = "date" if item.get("type") == "date" else "text"
                entries.append(SourceField(CUSTOM_FIELD_PREFIX + str(item["token"]), CLINICAL, label, kind))
    return entries


# What a record id looks like at each source. Ids go into URL paths, Stripe metadata and the local index, so a
# record whose id has another form is rejected, never synced. Cliniko: a positive int64 held in a string
# (docs/cliniko-api.md §5). Cal.com: a positive whole number too.
_POSITIVE_INT64 = re.compile(r"^[1-9][0-9]{0,18}$")
INT64_MAX = 2**63 - 1
ID_FORMS: dict[str, str] = {"cliniko": "a positive whole number", "calcom": "a positive whole number"}
# Records whose id is not the source's own: a Cal.com attendee has none, so ClinicSync's reference to the person is
# "att_" and 24 hex digits of their email's digest (streams/calcom_bookings.py).
OWN_ID_FORMS: dict[tuple[str, str], tuple[re.Pattern[str], str]] = {
    ("calcom", "attendee"): (re.compile(r"^att_[0-9a-f]{24}$"), "a ClinicSync attendee reference"),
    # A paid booking is its first booking's id; one seat of a seated booking adds the seat's uid.
    ("calcom", "paid_booking"): (
        re.compile(r"^[1-9][0-9]{0,18}(-[A-Za-z0-9_-]{1,100})?$"),
        "a booking id, or a booking id and a seat's uid",
    ),
}


def id_problem(source_system: str, value: Any, source_type: str = "") -> str | None:
    """Why `value` cannot be a record id of `source_system`'s `source_type` records (in words, without repeating a
    value that is not text), or None when it can."""
    own = OWN_ID_FORMS.get((source_system, source_type))
    form = own[1] if own else ID_FORMS.get(source_system, "a positive whole number")
    source = SOURCE_SYSTEMS.get(source_system, source_system)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if value is None or value == "":
        return "the record has no id"
    if not isinstance(value, str):
        return f"the record's id is {kind_of(value)}, not a {source} id ({form})"
    if own is not None:
        return None if own[0].match(value) else f"the record's id is not a {source} id ({form})"
    if not (_POSITIVE_INT64.match(value) and int(value) <= INT64_MAX):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the record's id {shown!r} is not a {source} id ({form})"
    return None


@dataclass(frozen=True)
class FieldCatalogue:
    """The source fields of one stream: the built-in list plus the clinic's custom fields when known."""

    fields: tuple[SourceField, ...]

    @classmethod
    def for_source(cls, source_system: str, source_type: str, custom: Iterable[SourceField] = ()) -> FieldCatalogue:
        return cls((*SOURCE_FIELDS.get((source_system, source_type), ()), *custom))

    def get(self, name: str) -> SourceField | None:
        for entry in self.fields:
            if entry.name == name:
                return entry
        # A custom field while the clinic's custom field definitions are unknown (its settings were not read):
        # accepted, and clinical like every custom field. Once the definitions are known, an unknown token is not.
        if name.startswith(CUSTOM_FIELD_PREFIX) and not self.knows_custom_fields():
            return SourceField(name, CLINICAL, f"Custom field {name.removeprefix(CUSTOM_FIELD_PREFIX)}")
        return None

    def knows_custom_fields(self) -> bool:
        return any(entry.name.startswith(CUSTOM_FIELD_PREFIX) for entry in self.fields)

    def class_of(self, name: str) -> str:
        """The privacy class; anything unknown counts as clinical (allow-list)."""
        entry = self.get(name)
        return entry.cls if entry is not None else CLINICAL


# --- Stripe targets --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TargetSpec:
    max_chars: int | None
    kind: str = "text"  # text, integer, email, country


# Writable fields per Stripe object (Stripe API reference, create/update parameters). Metadata keys are free
# (`metadata.<key>`, checked against Stripe's metadata limits) and are not listed.
STRIPE_TARGETS: dict[str, dict[str, TargetSpec]] = {
    "customer": {
        **{
            name: TargetSpec(limit, "email" if name == "email" else "text")
            for name, limit in stripe_limits.CUSTOMER_FIELD_MAX_CHARS.items()
        },
        "shipping.name": TargetSpec(stripe_limits.CUSTOMER_FIELD_MAX_CHARS["name"]),
        "shipping.phone": TargetSpec(stripe_limits.CUSTOMER_FIELD_MAX_CHARS["phone"]),
        **{
            f"shipping.address.{part}": TargetSpec(stripe_limits.CUSTOMER_FIELD_MAX_CHARS[f"address.{part}"])
            for part in ("line1", "line2", "city", "state", "postal_code", "country")
        },
    },
    "product": {name: TargetSpec(limit) for name, limit in stripe_limits.FIELD_MAX_CHARS["product"].items()},
    # A payment's own fields are never ours (streams/cliniko_invoices.py writes metadata only).
    "payment_intent": {},
    "charge": {},
    # For the invoice stream to come; the gateway does not write these objects yet.
    "invoice": {
        "description": TargetSpec(1500),
        "footer": TargetSpec(5000),
        "due_date": TargetSpec(None, "integer"),
        "custom_fields.0.value": TargetSpec(140),
    },
    "invoiceitem": {
        "description": TargetSpec(500),
        "amount": TargetSpec(None, "integer"),
        "unit_amount": TargetSpec(None, "integer"),
        "quantity": TargetSpec(None, "integer"),
    },
}


# The Stripe field records are matched on, per object; objects without one are matched by cross-reference only.
MATCH_KEY_TARGETS: dict[str, str] = {"customer": "email", "product": "name"}


def target_spec(stripe_object: str, target: str) -> TargetSpec | None:
    """The spec of a writable target; metadata keys get the metadata value limit."""
    if target.startswith("metadata."):
        return TargetSpec(stripe_limits.METADATA_VALUE_MAX_CHARS)
    return STRIPE_TARGETS.get(stripe_object, {}).get(target)


def target_limit(stripe_object: str, target: str) -> int | None:
    spec = target_spec(stripe_object, target)
    return spec.max_chars if spec is not None else None
