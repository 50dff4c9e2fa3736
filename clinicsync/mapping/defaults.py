"""Default field mappings, as design.md's stream table describes them."""

from __future__ import annotations

from clinicsync.mapping.spec import StreamMapping, rule

CLINIKO_PATIENTS = StreamMapping(
    stream="cliniko.patients",
    source_system="cliniko",
    source_type="patient",
    stripe_object="customer",
    rules=(
        rule("name", "first_name", "last_name", transform="join", separator=" "),
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

DEFAULT_MAPPINGS: dict[str, StreamMapping] = {CLINIKO_PATIENTS.stream: CLINIKO_PATIENTS}
