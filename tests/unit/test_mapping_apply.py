"""The declarative patient mapping: what each Cliniko field becomes in Stripe, and how bad values are handled."""

from __future__ import annotations

from clinicsync import stripe_limits
from clinicsync.mapping.apply import TRUNCATION_MARKER, create_params, map_record, update_params
from clinicsync.mapping.defaults import CLINIKO_PATIENTS


def patient(**fields):
    base = {
        "id": "1000000000000000001",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "email": "ada@example.com",
        "patient_phone_numbers": [
            {"number": "03 9000 0000", "phone_type": "Home", "normalized_number": "+61390000000"},
            {"number": "0412 345 678", "phone_type": "Mobile", "normalized_number": "+61412345678"},
        ],
        "address_1": "1 Example St",
        "address_2": "Unit 4",
        "address_3": "Rear",
        "city": "Fitzroy",
        "state": "VIC",
        "post_code": "3065",
        "country_code": "AU",
        "notes": "clinical note that must never leave",
        "medicare": "1234567890",
    }
    base.update(fields)
    return base


def test_default_patient_mapping_builds_the_customer_fields():
    mapped = map_record(CLINIKO_PATIENTS, patient())
    assert mapped.error is None
    assert create_params(mapped.payload) == {
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "phone": "0412 345 678",
        "address": {
            "line1": "1 Example St",
            "line2": "Unit 4, Rear",
            "city": "Fitzroy",
            "state": "VIC",
            "postal_code": "3065",
            "country": "AU",
        },
        "metadata": {"cliniko_patient_id": "1000000000000000001"},
    }


def test_unmapped_clinical_fields_never_appear_in_the_payload():
    mapped = map_record(CLINIKO_PATIENTS, patient())
    text = repr(create_params(mapped.payload)) + repr(update_params(mapped.payload))
    assert "clinical note" not in text
    assert "1234567890" not in text


def test_first_phone_is_used_when_there_is_no_mobile():
    mapped = map_record(
        CLINIKO_PATIENTS, patient(patient_phone_numbers=[{"number": "03 1111 2222", "phone_type": "Home"}])
    )
    assert mapped.payload["phone"] == "03 1111 2222"


def test_empty_fields_are_left_out_of_a_create_and_unset_in_an_update():
    mapped = map_record(
        CLINIKO_PATIENTS,
        patient(
            email=None,
            patient_phone_numbers=[],
            address_1=None,
            address_2=None,
            address_3=None,
            city=None,
            state=None,
            post_code=None,
            country_code=None,
        ),
    )
    params = create_params(mapped.payload)
    assert "email" not in params and "phone" not in params and "address" not in params
    update = update_params(mapped.payload)
    assert update["email"] == "" and update["phone"] == ""
    assert update["address"] == ""  # an address with no parts is unset as a whole
    assert update["metadata"] == {"cliniko_patient_id": "1000000000000000001", "cliniko_archived": ""}


def test_archived_marker_is_set_and_changes_the_hash():
    live = map_record(CLINIKO_PATIENTS, patient())
    archived = map_record(CLINIKO_PATIENTS, patient(), archived_value="archived 2026-01-02T03:04:05Z")
    assert archived.archived and not live.archived
    assert create_params(archived.payload)["metadata"]["cliniko_archived"] == "archived 2026-01-02T03:04:05Z"
    assert live.payload_hash != archived.payload_hash


def test_payload_hash_ignores_unmapped_fields_but_not_mapped_ones():
    base = map_record(CLINIKO_PATIENTS, patient())
    assert base.payload_hash == map_record(CLINIKO_PATIENTS, patient(notes="changed")).payload_hash
    assert base.payload_hash != map_record(CLINIKO_PATIENTS, patient(city="Carlton")).payload_hash


def test_an_overlong_name_is_shortened_with_a_marker_and_a_note():
    mapped = map_record(CLINIKO_PATIENTS, patient(first_name="A" * 255, last_name="B" * 255))
    limit = stripe_limits.CUSTOMER_FIELD_MAX_CHARS["name"]
    assert mapped.error is None
    assert len(mapped.payload["name"]) == limit
    assert mapped.payload["name"].endswith(TRUNCATION_MARKER)
    assert any("shortened from 511" in note for note in mapped.notes)


def test_an_invalid_email_rejects_the_record_with_a_specific_message():
    mapped = map_record(CLINIKO_PATIENTS, patient(email="not-an-email"))
    assert mapped.error is not None and "not a valid email address" in mapped.error


def test_an_overlong_email_is_rejected_not_cut():
    mapped = map_record(CLINIKO_PATIENTS, patient(email="a" * 600 + "@example.com"))
    assert mapped.error is not None and "over Stripe's limit of 512" in mapped.error


def test_an_overlong_address_line_rejects_the_record():
    mapped = map_record(CLINIKO_PATIENTS, patient(address_1="x" * 6000))
    assert mapped.error is not None and "address.line1" in mapped.error


def test_control_characters_are_removed_with_a_note():
    mapped = map_record(CLINIKO_PATIENTS, patient(first_name="Ad\x00a\x07", city="Fitz\u0000roy"))
    assert mapped.payload["name"] == "Ada Lovelace"
    assert mapped.payload["address.city"] == "Fitzroy"
    assert any("control character" in note for note in mapped.notes)


def test_unicode_and_rtl_names_pass_through_unchanged():
    mapped = map_record(CLINIKO_PATIENTS, patient(first_name="Zoë 李", last_name="محمد 😀"))
    assert mapped.error is None
    assert mapped.payload["name"] == "Zoë 李 محمد 😀"


def test_nulls_everywhere_do_not_crash():
    record = {key: None for key in patient()}
    record["id"] = "1000000000000000009"
    mapped = map_record(CLINIKO_PATIENTS, record)
    assert mapped.error is None
    assert mapped.display_name.startswith("(no name")
    assert create_params(mapped.payload) == {"metadata": {"cliniko_patient_id": "1000000000000000009"}}


def test_a_record_without_id_is_rejected():
    mapped = map_record(CLINIKO_PATIENTS, patient(id=None))
    assert mapped.error == "the record has no id"


def test_control_characters_between_words_become_one_space_and_others_are_removed():
    mapped = map_record(
        CLINIKO_PATIENTS,
        patient(first_name="Ann\x07e", last_name="\ttab\rreturn", address_1=" 3 Line \n\x0b Break St\x0b"),
    )
    assert mapped.payload["name"] == "Anne tab return"
    assert mapped.payload["address.line1"] == "3 Line Break St"
    assert any("control character" in note for note in mapped.notes)


def test_a_value_of_the_wrong_type_rejects_the_record_naming_the_source_field():
    for fields, field in (
        ({"first_name": {"evil": "object"}}, "first_name"),
        ({"first_name": True, "last_name": 12.5}, "first_name"),
        ({"city": ["Fitzroy"]}, "city"),
        ({"patient_phone_numbers": "0412 345 678"}, "patient_phone_numbers"),
    ):
        mapped = map_record(CLINIKO_PATIENTS, patient(**fields))
        assert mapped.error is not None and mapped.error.startswith(f"{field}: Cliniko sent "), mapped.error
        assert "{'" not in mapped.error and "True" not in mapped.error


def test_numbers_where_text_is_expected_are_read_as_their_digits():
    mapped = map_record(CLINIKO_PATIENTS, patient(post_code=3065, last_name=12.5))
    assert mapped.error is None
    assert mapped.payload["address.postal_code"] == "3065"
    assert mapped.payload["name"] == "Ada 12.5"


def test_ids_not_of_clinikos_form_are_rejected():
    for bad in ("../../v1/customers", "-1", "0", "", "1e5", " 12", "9223372036854775808", True, {"id": 1}):
        mapped = map_record(CLINIKO_PATIENTS, patient(id=bad))
        assert mapped.error is not None and ("not a Cliniko id" in mapped.error or "no id" in mapped.error), bad
    assert map_record(CLINIKO_PATIENTS, patient(id=9223372036854775807)).error is None
    assert map_record(CLINIKO_PATIENTS, patient(id="1")).source_id == "1"


def test_a_cal_com_attendee_is_known_by_clinicsyncs_reference_and_nothing_else():
    from clinicsync.mapping.defaults import CALCOM_ATTENDEES
    from clinicsync.streams.calcom_bookings import attendee_ref

    person = {"name": "Ann Lee", "email": "Ann.Lee@example.org", "booking_count": 2}
    ref = attendee_ref("ann.lee@EXAMPLE.org")
    mapped = map_record(CALCOM_ATTENDEES, {**person, "id": ref})
    assert mapped.error is None and mapped.source_id == ref
    for bad in ("12", "att_../../customers", ref.upper(), ref + "0", 7):
        mapped = map_record(CALCOM_ATTENDEES, {**person, "id": bad})
        assert mapped.error is not None and "not a Cal.com id (a ClinicSync attendee reference)" in mapped.error, bad


def test_a_custom_field_holding_an_object_is_rejected_not_sent_as_python_text():
    from clinicsync.mapping.spec import StreamMapping, rule

    token = "tok-1"
    mapping = StreamMapping(
        stream="cliniko.patients",
        source_system="cliniko",
        source_type="patient",
        stripe_object="customer",
        rules=(
            rule("metadata.fund", f"custom_fields.{token}"),
            rule("metadata.cliniko_patient_id", "id", role="cross_ref"),
        ),
        display_target="metadata.fund",
        archived_marker="cliniko_archived",
    )
    record = patient(custom_fields={"sections": [{"fields": [{"token": token, "value": {"evil": "object"}}]}]})
    mapped = map_record(mapping, record)
    assert mapped.error is not None and "an object where text was expected" in mapped.error


def test_an_archive_time_that_is_not_text_marks_the_record_without_spelling_the_value():
    from clinicsync.streams.cliniko_patients import CLINIKO_PATIENTS as PATIENT_STREAM
    from clinicsync.streams.cliniko_products import CLINIKO_PRODUCTS as PRODUCT_STREAM

    assert PATIENT_STREAM.archived_value({"archived_at": "2024-01-02T03:04:05Z"}) == "archived 2024-01-02T03:04:05Z"
    assert PATIENT_STREAM.archived_value({"archived_at": {"evil": "object"}}) == "archived"
    assert PRODUCT_STREAM.archived_value({"deleted_at": True}) == "deleted"
    assert PATIENT_STREAM.archived_value({"archived_at": None, "merged_at": ""}) is None
