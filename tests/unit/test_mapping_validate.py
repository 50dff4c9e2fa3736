"""Validation of whole mappings: every problem names its row and the rule it breaks."""

from __future__ import annotations

from dataclasses import replace

from clinicsync.mapping.defaults import CLINIKO_INVOICES_DRAFT, CLINIKO_PATIENTS
from clinicsync.mapping.fields import CLINICAL, FieldCatalogue, SourceField, custom_field_entries
from clinicsync.mapping.spec import FieldRule, StreamMapping, SyncScope, WritebackConfig, rule
from clinicsync.mapping.validate import allowance_warning, validate_mapping

PATIENTS = FieldCatalogue.for_source("cliniko", "patient")
SETTINGS = {
    "patient_custom_fields_definition": {
        "sections": [
            {
                "name": "Clinic sync",
                "token": "s1",
                "fields": [
                    {"name": "Stripe customer ID", "token": "f-stripe", "type": "text"},
                    {"name": "First visit", "token": "f-date", "type": "date"},
                    {"name": "Old", "token": "f-old", "type": "text", "archived": True},
                ],
            },
            {"name": "Gone", "token": "s2", "archived": True, "fields": [{"name": "x", "token": "f-x"}]},
        ]
    }
}
WITH_CUSTOM = FieldCatalogue.for_source("cliniko", "patient", custom_field_entries(SETTINGS))


def problems(mapping: StreamMapping, catalogue: FieldCatalogue = PATIENTS, allowed: set[str] | None = None):
    return [(p.row, p.rule) for p in validate_mapping(mapping, catalogue, allowed or set())]


def add(*extra: FieldRule, base: StreamMapping = CLINIKO_PATIENTS) -> StreamMapping:
    return base.with_rules((*base.rules, *extra))


def test_the_defaults_are_valid():
    assert problems(CLINIKO_PATIENTS) == []
    assert problems(CLINIKO_INVOICES_DRAFT, FieldCatalogue.for_source("cliniko", "invoice")) == []


def test_targets_must_exist_on_the_stripe_object():
    assert problems(add(rule("nickname", "first_name"))) == [(11, "unknown-target")]
    assert problems(add(rule("shipping.address.city", "city"))) == []
    # The address is set part by part; mapping it whole would also collide with the parts.
    assert set(problems(add(rule("address", "city")))) == {(11, "unknown-target")} | {
        (n, "target-conflict") for n in range(4, 10)
    }


def test_metadata_keys_follow_stripes_rules():
    assert problems(add(rule("metadata." + "k" * 41, "city"))) == [(11, "metadata-key")]
    assert problems(add(rule("metadata." + "k" * 40, "city"))) == []
    assert problems(add(rule("metadata.a[b]", "city"))) == [(11, "metadata-key")]
    assert problems(add(rule("metadata.", "city"))) == [(11, "metadata-key")]


def test_at_most_fifty_metadata_keys_counting_the_archived_marker():
    forty_nine = [rule(f"metadata.k{n}", "city") for n in range(48)]  # + cross-ref + archived marker = 50
    assert problems(add(*forty_nine)) == []
    assert problems(add(*forty_nine, rule("metadata.one_more", "city"))) == [(0, "metadata-count")]


def test_exactly_one_cross_reference_and_one_match_key():
    no_ref = CLINIKO_PATIENTS.with_rules(tuple(r for r in CLINIKO_PATIENTS.rules if r.role != "cross_ref"))
    assert problems(no_ref) == [(0, "cross-ref-count")]
    two = add(rule("metadata.again", "id", role="cross_ref"))
    assert problems(two) == [(0, "cross-ref-count")]
    no_key = CLINIKO_PATIENTS.with_rules(tuple(r for r in CLINIKO_PATIENTS.rules if r.role != "match_key"))
    assert problems(no_key) == [(0, "match-key")]
    assert (11, "cross-ref-target") in problems(add(rule("description", "id", role="cross_ref")))
    assert (11, "match-key-target") in problems(add(rule("phone", "email", role="match_key")))


def test_identifiers_cannot_be_truncated():
    mapping = CLINIKO_PATIENTS.with_rules(
        tuple(replace(r, overflow="truncate") if r.role == "cross_ref" else r for r in CLINIKO_PATIENTS.rules)
    )
    assert problems(mapping) == [(10, "overflow")]


def test_duplicate_targets_name_the_first_row():
    found = validate_mapping(add(rule("email", "invoice_email")), PATIENTS)
    assert [(p.row, p.rule) for p in found] == [(11, "duplicate-target")]
    assert "already mapped in row 2" in found[0].message


def test_transforms_and_their_options_are_checked():
    assert problems(add(rule("description", "city", transform="shout"))) == [(11, "unknown-transform")]
    assert problems(add(rule("description", "city", transform="copy", colour="red"))) == [(11, "transform-options")]
    assert problems(add(rule("description", "city", "state", transform="copy"))) == [(11, "transform-options")]
    assert set(problems(add(rule("description", transform="template")))) == {(11, "transform-options")}
    assert problems(add(rule("description", transform="template", template="{first_name} {surname}"))) == [
        (11, "unknown-source")
    ]
    wrong_order = FieldRule(
        "description",
        ("last_name", "first_name"),
        "template",
        rule("x", transform="template", template="{first_name} {last_name}").options,
    )
    assert problems(add(wrong_order)) == [(11, "transform-options")]
    assert problems(add(rule("description", "city", transform="truncate", max_chars="10"))) == [
        (11, "transform-options")
    ]
    assert problems(add(rule("description", "city", transform="truncate", max_chars=True))) == [
        (11, "transform-options")
    ]
    assert problems(add(rule("description", "city", transform="local_date", time_zone="Mars/Base"))) == [
        (11, "transform-options")
    ]
    assert problems(add(rule("description", "city", transform="lookup", table={}))) == [(11, "transform-options")]
    assert problems(add(rule("shipping.phone", "patient_phone_numbers", transform="preferred_phone", format="x"))) == [
        (11, "transform-options")
    ]


def test_source_fields_must_exist():
    found = validate_mapping(add(rule("description", "reference_number")), PATIENTS)
    assert [(p.row, p.rule) for p in found] == [(11, "unknown-source")]
    assert "reference_number is not a field of cliniko patients" in found[0].message


def test_clinical_fields_need_an_explicit_allowance_and_the_error_says_how():
    for field in ("notes", "appointment_notes", "medicare", "medicare_reference_number", "dva_card_number"):
        assert problems(add(rule("metadata.x", field))) == [(11, "clinical-field")], field
        assert problems(add(rule("metadata.x", field)), allowed={field}) == []
    for field in ("date_of_birth", "medical_alerts", "referring_doctor", "sex"):
        assert PATIENTS.class_of(field) == CLINICAL
    found = validate_mapping(add(rule("metadata.dob", "date_of_birth", transform="local_date")), PATIENTS)
    assert "clinicsync mapping allow date_of_birth --stream cliniko.patients" in found[0].message
    assert str(found[0]).startswith("row 11 (metadata.dob ← date_of_birth): ")
    # A template sneaking a clinical field in is caught too.
    assert problems(add(rule("description", transform="template", template="{first_name}: {notes}"))) == [
        (11, "clinical-field")
    ]


def test_custom_fields_are_clinical_and_unknown_tokens_are_refused_once_definitions_are_known():
    assert problems(add(rule("metadata.v", "custom_fields.f-date")), WITH_CUSTOM) == [(11, "clinical-field")]
    assert problems(add(rule("metadata.v", "custom_fields.f-date")), WITH_CUSTOM, {"custom_fields.f-date"}) == []
    assert problems(add(rule("metadata.v", "custom_fields.nope")), WITH_CUSTOM) == [(11, "unknown-source")]
    assert problems(add(rule("metadata.v", "custom_fields.f-old")), WITH_CUSTOM) == [(11, "unknown-source")]
    # Without the definitions (settings not readable) a token is accepted, still as clinical.
    assert problems(add(rule("metadata.v", "custom_fields.nope")), PATIENTS) == [(11, "clinical-field")]
    labels = {entry.name: entry.label for entry in WITH_CUSTOM.fields if entry.name.startswith("custom_fields.")}
    assert labels == {
        "custom_fields.f-stripe": "Clinic sync › Stripe customer ID",
        "custom_fields.f-date": "Clinic sync › First visit",
    }


def test_writeback_needs_a_known_text_field_that_is_not_mapped():
    on = replace(CLINIKO_PATIENTS, writeback=WritebackConfig(enabled=True, field_token="f-stripe"))
    assert problems(on, WITH_CUSTOM) == []
    assert problems(replace(on, writeback=WritebackConfig(enabled=True)), WITH_CUSTOM) == [(0, "writeback-field")]
    assert problems(replace(on, writeback=WritebackConfig(True, "nope")), WITH_CUSTOM) == [(0, "writeback-field")]
    assert problems(replace(on, writeback=WritebackConfig(True, "f-date")), WITH_CUSTOM) == [(0, "writeback-field")]
    echo = add(rule("metadata.s", "custom_fields.f-stripe"), base=on)
    assert problems(echo, WITH_CUSTOM, {"custom_fields.f-stripe"}) == [(11, "writeback-echo")]


def test_scope_and_time_zone():
    assert problems(replace(CLINIKO_PATIENTS, time_zone="Australia/Perth")) == []
    assert problems(replace(CLINIKO_PATIENTS, time_zone="Perth")) == [(0, "time-zone")]
    assert problems(replace(CLINIKO_PATIENTS, scope=SyncScope(kind="since"))) == [(0, "scope")]
    assert problems(
        replace(CLINIKO_INVOICES_DRAFT, scope=SyncScope(kind="recent_activity")),
        FieldCatalogue.for_source("cliniko", "invoice"),
    ) == [(0, "scope")]


def test_archived_marker_is_a_reserved_valid_key():
    assert problems(replace(CLINIKO_PATIENTS, archived_marker="a]")) == [(0, "archived-marker")]
    assert problems(add(rule("metadata.cliniko_archived", "city"))) == [(0, "archived-marker")]


def test_the_allowance_warning_says_what_goes_where():
    text = allowance_warning("Notes", "notes", ["metadata.notes"], "customer")
    assert "Stripe as the customer field metadata.notes" in text
    assert "can then read it" in text and "consent" in text
    assert "whichever customer field" in allowance_warning("Notes", "notes", [], "customer")


def test_an_unlisted_source_field_counts_as_clinical():
    catalogue = FieldCatalogue((SourceField("city", "contact", "City"),))
    assert catalogue.class_of("city") == "contact"
    assert catalogue.class_of("anything_new") == CLINICAL
