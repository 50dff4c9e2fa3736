"""Default field mappings, as design.md's stream table describes them.

A stream's mapping lives in the database once a person saves one (mapping/store.py); until then, and whenever they
"reset to defaults", it is the one here.
"""

from __future__ import annotations

from clinicsync.mapping import invoice_status
from clinicsync.mapping.spec import StreamMapping, rule

CLINIKO_PATIENTS = StreamMapping(
    stream="cliniko.patients",
    source_system="cliniko",
    source_type="patient",
    stripe_object="customer",
    rules=(
        # A name over Stripe's limit is still the patient's name when shortened with a visible marker.
        rule("name", "first_name", "last_name", transform="join", separator=" ", overflow="truncate"),
        rule("email", "email", transform="email", role="match_key"),
        rule("phone", "patient_phone_numbers", transform="preferred_phone", prefer="Mobile"),
        rule("address.line1", "address_1"),
        rule("address.line2", "address_2", "address_3", transform="join", separator=", "),
        rule("address.city", "city"),
        rule("address.state", "state"),
        rule("address.postal_code", "post_code"),
        rule("address.country", "country_code"),
        rule("metadata.cliniko_patient_id", "id", role="cross_ref"),
    ),
    display_target="name",
    archived_marker="cliniko_archived",
)

# A product's selling price is not a mapped field: it becomes a Stripe Price of its own (streams/
# cliniko_products.py), from the price the setting `cliniko.products.price_basis` names.
CLINIKO_PRODUCTS = StreamMapping(
    stream="cliniko.products",
    source_system="cliniko",
    source_type="product",
    stripe_object="product",
    rules=(
        # Matched to a product made by hand in Stripe by its exact name (compared case-insensitively).
        rule("name", "name", role="match_key"),
        rule("metadata.cliniko_product_id", "id", role="cross_ref"),
        rule("metadata.cliniko_item_code", "item_code", overflow="truncate"),
        rule("metadata.cliniko_supplier", "product_supplier_name", overflow="truncate"),
        rule("metadata.cliniko_stock_level", "stock_level"),
    ),
    display_target="name",
    archived_marker="cliniko_archived",
)

# Cliniko invoice status (cliniko-api.md §5.2) → the value Stripe metadata holds.
INVOICE_STATUS_TABLE = {str(code): name for code, name in invoice_status.NAMES.items()}

# The invoices stream to come, in the same declarative form (not yet run: the Stripe gateway does not write
# invoices). It exercises what that stream needs: a cross-reference, status through a lookup table, a pure date
# that must not shift, a date-time shown as the clinic-local date, and a decimal amount as integer cents.
CLINIKO_INVOICES_DRAFT = StreamMapping(
    stream="cliniko.invoices",
    source_system="cliniko",
    source_type="invoice",
    stripe_object="invoice",
    rules=(
        rule("metadata.cliniko_invoice_id", "id", role="cross_ref"),
        rule("description", transform="template", template="Cliniko invoice {number}"),
        rule(
            "metadata.cliniko_status",
            "status",
            transform="lookup",
            table=INVOICE_STATUS_TABLE,
        ),
        rule("metadata.issue_date", "issue_date", transform="local_date"),
        rule("metadata.closed_on", "closed_at", transform="local_date"),
        rule("metadata.total_cents", "total_amount", transform="minor_units"),
        rule("metadata.cliniko_patient_id", "patient", transform="link_id"),
    ),
    display_target="description",
    archived_marker="cliniko_archived",
)

# A Cliniko invoice mirrored as a Stripe invoice (streams/cliniko_invoice_mirror.py adds its lines, total and
# state). The issue date is a pure date, copied as it is (never shifted); notes never leave the clinic.
CLINIKO_INVOICE_MIRROR = StreamMapping(
    stream="cliniko.invoice_mirror",
    source_system="cliniko",
    source_type="invoice",
    stripe_object="invoice",
    rules=(
        rule("metadata.cliniko_invoice_id", "id", role="cross_ref"),
        rule("description", transform="template", template="Cliniko invoice {number}"),
        rule("metadata.cliniko_invoice_number", "number"),
        rule("metadata.cliniko_issue_date", "issue_date"),
        rule(
            "metadata.cliniko_invoice_status",
            "status",
            transform="lookup",
            table=INVOICE_STATUS_TABLE,
        ),
    ),
    display_target="description",
    archived_marker="cliniko_archived",
)

# A priced Cal.com event type is a Stripe product whose price comes from `metadata.apps.stripe` (streams/
# calcom_event_types.py). Matched by name only to a product no other stream or source is linked to.
CALCOM_EVENT_TYPES = StreamMapping(
    stream="calcom.event_types",
    source_system="calcom",
    source_type="event_type",
    stripe_object="product",
    rules=(
        rule("name", "title", role="match_key"),
        rule("metadata.calcom_event_type_id", "id", role="cross_ref"),
        rule("metadata.calcom_slug", "slug", overflow="truncate"),
        rule("metadata.calcom_length_minutes", "lengthInMinutes"),
        rule("metadata.calcom_owner_email", "owner_email", overflow="truncate"),
        rule("metadata.calcom_team", "team_name", overflow="truncate"),
    ),
    display_target="name",
    archived_marker="calcom_archived",
)

# A Cal.com attendee is the person's Stripe customer (one per person, shared with their Cliniko patient record:
# streams.md §3). The booking summary (last booking, its clinic-local start, how many) is added by the stream.
CALCOM_ATTENDEES = StreamMapping(
    stream="calcom.bookings",
    source_system="calcom",
    source_type="attendee",
    stripe_object="customer",
    rules=(
        rule("name", "name", overflow="truncate"),
        rule("email", "email", transform="email", role="match_key"),
        rule("phone", "phoneNumber"),
        rule("metadata.calcom_attendee_ref", "id", role="cross_ref"),
        rule("metadata.calcom_last_booking_uid", "last_booking_uid"),
        rule("metadata.calcom_booking_count", "booking_count"),
    ),
    display_target="name",
    archived_marker="calcom_archived",
)

# A paid Cal.com booking (followed through its reschedules), or one seat of a seated one, is the PaymentIntent
# Cal.com's own Stripe app made for it (streams/calcom_booking_payments.py): never created, only cross-referenced.
# It is found by the `bookingId` the app wrote; ClinicSync's cross-reference is its own key, so Cal.com's keys are
# never written.
CALCOM_BOOKING_PAYMENTS = StreamMapping(
    stream="calcom.booking_payments",
    source_system="calcom",
    source_type="paid_booking",
    stripe_object="payment_intent",
    rules=(
        rule("metadata.calcom_booking_id", "id", role="cross_ref"),
        rule("metadata.calcom_booking_uid", "booking_uid"),
        rule("metadata.calcom_event_type", "event_type", overflow="truncate"),
        rule("metadata.calcom_status", "status"),
        rule("metadata.calcom_owner_email", "owner_email", overflow="truncate"),
    ),
    display_target="metadata.calcom_event_type",
    archived_marker="calcom_archived",
)

# Schedules, teams and owners as notes on the event types' products (streams/calcom_reference.py), which writes
# only its own metadata keys to the product calcom.event_types linked. Its name rule is never sent: it names the
# record in history, and keeps the shared index of the account's products matching by name as the event types
# stream built it (both streams index the same products).
CALCOM_REFERENCE = StreamMapping(
    stream="calcom.reference",
    source_system="calcom",
    source_type="event_type_details",
    stripe_object="product",
    rules=(
        rule("name", "title", role="match_key"),
        rule("metadata.calcom_event_type_id", "id", role="cross_ref"),
        rule("metadata.calcom_schedule", "schedule_name", overflow="truncate"),
        rule("metadata.calcom_schedule_time_zone", "schedule_time_zone"),
        rule("metadata.calcom_team_id", "team_id"),
        rule("metadata.calcom_team_slug", "team_slug", overflow="truncate"),
        rule("metadata.calcom_owner_name", "owner_name", overflow="truncate"),
        rule("metadata.calcom_owner_time_zone", "owner_time_zone"),
    ),
    display_target="name",
    archived_marker="calcom_reference_archived",
)

# A Cliniko invoice is linked to the Stripe payment that paid it (streams/cliniko_invoices.py): only these three
# metadata keys are written to that payment, never its amount or description, and nothing clinical (the invoice's
# notes and patient extra information stay in the clinic: the clinical allow-list).
CLINIKO_INVOICES = StreamMapping(
    stream="cliniko.invoices",
    source_system="cliniko",
    source_type="invoice",
    stripe_object="payment_intent",
    rules=(
        rule("metadata.cliniko_invoice_id", "id", role="cross_ref"),
        rule("metadata.cliniko_invoice_number", "number"),
        rule("metadata.cliniko_invoice_status", "status", transform="lookup", table=INVOICE_STATUS_TABLE),
    ),
    display_target="metadata.cliniko_invoice_number",
    archived_marker="cliniko_archived",
)

DEFAULT_MAPPINGS: dict[str, StreamMapping] = {
    mapping.stream: mapping
    for mapping in (
        CLINIKO_PATIENTS,
        CLINIKO_PRODUCTS,
        CLINIKO_INVOICES,
        CLINIKO_INVOICE_MIRROR,
        CALCOM_EVENT_TYPES,
        CALCOM_ATTENDEES,
        CALCOM_BOOKING_PAYMENTS,
        CALCOM_REFERENCE,
    )
}
DRAFT_MAPPINGS: dict[str, StreamMapping] = {CLINIKO_INVOICES_DRAFT.stream: CLINIKO_INVOICES_DRAFT}


def stripe_object_of_stream(stream: str) -> str:
    """The Stripe object a stream writes ('cliniko.products' → 'product'); a customer for a stream not known."""
    mapping = DEFAULT_MAPPINGS.get(stream)
    return mapping.stripe_object if mapping is not None else "customer"
