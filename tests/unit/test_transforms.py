"""Every mapping transform, on the values Cliniko actually returns."""

from __future__ import annotations

import pytest

from clinicsync.mapping.transforms import (
    TRANSFORM_ARITY,
    TRANSFORM_OPTIONS,
    TRANSFORMS,
    TRUNCATION_MARKER,
    TransformContext,
    TransformError,
    au_phone_e164,
    local_date_of,
    render_template,
    template_fields,
    to_minor_units,
    truncate_text,
)

MELBOURNE = TransformContext("Australia/Melbourne")


def run(name: str, *values: object, ctx: TransformContext = MELBOURNE, **options: object) -> object:
    return TRANSFORMS[name](list(values), options, ctx)


def test_every_transform_declares_its_options_and_arity():
    assert set(TRANSFORMS) == set(TRANSFORM_OPTIONS) == set(TRANSFORM_ARITY)


# --- copy, join, email, constant --------------------------------------------------------------------------
def test_copy_trims_and_turns_blank_into_none():
    assert run("copy", "  Fitzroy ") == "Fitzroy"
    assert run("copy", "   ") is None
    assert run("copy", None) is None
    assert run("copy", 3065) == "3065"


def test_join_skips_empty_parts_without_doubling_the_separator():
    assert run("join", "Unit 4", None, " Rear ", separator=", ") == "Unit 4, Rear"
    assert run("join", "Ada", "Lovelace") == "Ada Lovelace"
    assert run("join", None, "", separator=", ") is None


def test_email_trims_and_lowercases_only_when_asked():
    assert run("email", "  Olivia.Nguyen@Example.com ") == "Olivia.Nguyen@Example.com"
    assert run("email", "  Olivia.Nguyen@Example.com ", lowercase=True) == "olivia.nguyen@example.com"
    assert run("email", "") is None


def test_constant_ignores_the_sources():
    assert run("constant", value="cliniko") == "cliniko"
    assert run("constant", "ignored", value=" x ") == "x"


# --- template ---------------------------------------------------------------------------------------------
def test_template_fills_fields_in_order_and_tidies_empty_ones():
    assert template_fields("{first_name} {last_name}") == ["first_name", "last_name"]
    assert run("template", "Ada", "Lovelace", template="{first_name} {last_name}") == "Ada Lovelace"
    assert run("template", None, "Ada", "Lovelace", template="{title} {first_name} {last_name}") == "Ada Lovelace"
    assert run("template", "Lovelace", None, template="{last_name}, {first_name}") == "Lovelace"
    assert run("template", None, None, template="{first_name} {last_name}") is None


def test_template_repeats_and_literal_braces():
    assert template_fields("{a} and {a} {{not}}") == ["a"]
    assert render_template("{a}/{a} {{x}}", {"a": "1"}) == "1/1 {x}"


def test_template_is_plain_substitution_not_str_format():
    # str.format would evaluate attribute access from a user-written template.
    assert render_template("{first_name.__class__}", {"first_name": "Ada"}) is None
    assert render_template("{first_name!r:>20}", {"first_name": "Ada"}) is None


def test_template_custom_field_placeholders():
    fields = template_fields("{custom_fields.7d0e-1} / {id}")
    assert fields == ["custom_fields.7d0e-1", "id"]
    assert run("template", "Bupa", "12", template="{custom_fields.7d0e-1} / {id}") == "Bupa / 12"


# --- truncate ---------------------------------------------------------------------------------------------
def test_truncate_marks_what_it_cut():
    assert truncate_text("x" * 600, 500) == "x" * 499 + TRUNCATION_MARKER
    assert len(truncate_text("x" * 600, 500)) == 500
    assert truncate_text("short", 500) == "short"
    assert truncate_text("ab cd", 4) == "ab" + TRUNCATION_MARKER  # no space left before the marker
    assert run("truncate", "abcdef", max_chars=4, marker="...") == "a..."
    assert run("truncate", None, max_chars=4) is None


# --- phones -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("typed", "e164"),
    [
        ("0491 570 156", "+61491570156"),
        ("0491570156", "+61491570156"),
        ("+61491570156", "+61491570156"),
        ("+61 491 570 156", "+61491570156"),
        ("61444444444", "+61444444444"),  # Cliniko's own documentation example
        ("491 570 156", "+61491570156"),  # mobile typed without the leading 0
        ("(03) 7010 1234", "+61370101234"),
        ("03 7010 1234", "+61370101234"),
        ("03-7010-1234", "+61370101234"),
        ("+61 (0)3 7010 1234", "+61370101234"),
        ("0011 61 3 7010 1234", "+61370101234"),
        ("1300 123 456", "+611300123456"),
        ("1800-123-456", "+611800123456"),
        ("13 12 34", "+61131234"),
        ("+64 21 123 4567", "+64211234567"),  # a New Zealand mobile keeps its country code
    ],
)
def test_australian_phone_numbers_in_the_forms_cliniko_returns(typed: str, e164: str):
    assert au_phone_e164(typed) == e164
    assert run("phone_e164", typed) == e164


def test_a_number_that_is_not_australian_is_kept_or_dropped_as_configured():
    assert au_phone_e164("7010 1234") == "7010 1234"  # no area code: cannot be placed
    assert run("phone_e164", "7010 1234", on_invalid="drop") is None
    assert au_phone_e164("   ") is None
    assert au_phone_e164(None) is None


def test_preferred_phone_picks_the_preferred_type_then_the_first_and_can_format():
    phones = [
        {"number": "03 7010 1234", "phone_type": "Home", "normalized_number": "+61370101234"},
        {"number": "0491 570 156", "phone_type": "Mobile", "normalized_number": "+61491570156"},
    ]
    assert run("preferred_phone", phones) == "0491 570 156"
    assert run("preferred_phone", phones, prefer="Home") == "03 7010 1234"
    assert run("preferred_phone", phones, format="e164") == "+61491570156"
    assert run("preferred_phone", phones[:1]) == "03 7010 1234"
    assert run("preferred_phone", [{"number": " ", "phone_type": "Mobile"}]) is None
    assert run("preferred_phone", None) is None


# --- dates ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("utc", "melbourne", "fixed_zone", "fixed"),
    [
        # DST ends 5 April 2026 03:00 AEDT: just after local midnight, still at +11.
        ("2026-04-04T13:30:00Z", "2026-04-05", "Etc/GMT-10", "2026-04-04"),
        ("2026-04-04T12:59:59Z", "2026-04-04", "Etc/GMT-10", "2026-04-04"),
        ("2026-04-04T13:00:00Z", "2026-04-05", "Etc/GMT-10", "2026-04-04"),
        # After the switch Melbourne is +10, so 13:30Z the next day is 23:30 local (same date as fixed +10).
        ("2026-04-05T13:30:00Z", "2026-04-05", "Etc/GMT-10", "2026-04-05"),
        ("2026-04-05T14:00:00Z", "2026-04-06", "Etc/GMT-10", "2026-04-06"),
        # DST starts 4 October 2026 02:00 AEST: before it Melbourne is +10.
        ("2026-10-03T13:30:00Z", "2026-10-03", "Etc/GMT-11", "2026-10-04"),
        ("2026-10-03T14:00:00Z", "2026-10-04", "Etc/GMT-11", "2026-10-04"),
        # After the switch, +11: 13:30Z is already the next local day.
        ("2026-10-04T13:30:00Z", "2026-10-05", "Etc/GMT-11", "2026-10-05"),
        ("2026-10-04T12:59:59Z", "2026-10-04", "Etc/GMT-11", "2026-10-04"),
    ],
)
def test_local_date_is_dst_correct_on_both_sides_of_each_melbourne_switch(utc, melbourne, fixed_zone, fixed):
    assert run("local_date", utc) == melbourne
    assert local_date_of(utc, "Australia/Melbourne") == melbourne
    # The same instant at a fixed offset (Etc/GMT-10 is UTC+10) gives the naive answer the issue warns about.
    assert run("local_date", utc, ctx=TransformContext(fixed_zone)) == fixed


def test_local_date_takes_the_clinic_zone_from_the_context_or_the_rule():
    assert run("local_date", "2026-01-10T20:00:00Z", ctx=TransformContext("Australia/Perth")) == "2026-01-11"
    assert run("local_date", "2026-01-10T20:00:00Z", ctx=TransformContext("Australia/Perth"), time_zone="UTC") == (
        "2026-01-10"
    )
    assert run("local_date", "2026-01-10T12:00:00+00:00") == "2026-01-10"
    assert run("local_date", "2026-01-10T14:00:00") == "2026-01-11"  # no zone: Cliniko's are UTC


def test_pure_dates_pass_through_unshifted_in_every_zone():
    for zone in ("Australia/Melbourne", "Pacific/Kiritimati", "Pacific/Pago_Pago", "UTC"):
        assert run("local_date", "1985-04-05", ctx=TransformContext(zone)) == "1985-04-05"
        assert run("local_date", "2026-10-04", ctx=TransformContext(zone)) == "2026-10-04"


def test_bad_dates_and_zones_are_errors_not_guesses():
    with pytest.raises(TransformError, match="not a valid date"):
        run("local_date", "2026-02-30")
    with pytest.raises(TransformError, match="not a date-time"):
        run("local_date", "yesterday")
    with pytest.raises(TransformError, match="unknown time zone"):
        run("local_date", "2026-01-01T00:00:00Z", ctx=TransformContext("Mars/Olympus"))
    assert run("local_date", None) is None


# --- money ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("amount", "cents"),
    [
        ("81.818", 8182),
        ("2367.18", 236718),
        ("18.1818", 1818),
        ("50.0", 5000),
        ("0.005", 1),  # half up
        ("0.004", 0),
        ("-12.5", -1250),
        ("100", 10000),
        (" 9.99 ", 999),
        (90.0, 9000),  # total_including_tax comes as a JSON number
        (2367.18, 236718),  # a float read through its repr, never float arithmetic
        (7, 700),
    ],
)
def test_decimal_amounts_become_integer_minor_units(amount, cents):
    assert to_minor_units(amount) == cents
    assert run("minor_units", amount) == cents
    assert isinstance(run("minor_units", amount), int)


def test_minor_units_with_another_exponent_and_bad_input():
    assert run("minor_units", "1234", exponent=0) == 1234
    assert run("minor_units", "1.5", exponent=3) == 1500
    assert run("minor_units", None) is None
    assert run("minor_units", "") is None
    for bad in ("12,50", "abc", "NaN", "Infinity", True):
        with pytest.raises(TransformError):
            run("minor_units", bad)


# --- lookup and links -------------------------------------------------------------------------------------
STATUS = {"10": "open", "20": "paid", "30": "closed", "40": "open_credit"}


def test_lookup_maps_cliniko_invoice_statuses():
    assert [run("lookup", code, table=STATUS) for code in (10, 20, 30, 40)] == ["open", "paid", "closed", "open_credit"]
    assert run("lookup", "20", table=STATUS) == "paid"


def test_lookup_unknown_value_is_an_error_unless_there_is_a_default():
    with pytest.raises(TransformError, match="'50' is not in the lookup table"):
        run("lookup", 50, table=STATUS)
    assert run("lookup", 50, table=STATUS, default="other") == "other"
    assert run("lookup", None, table=STATUS) is None


def test_link_id_takes_the_last_path_segment():
    link = {"links": {"self": "https://api.au1.cliniko.com/v1/patients/836447129235883061"}}
    assert run("link_id", link) == "836447129235883061"
    assert run("link_id", {"links": {"self": "https://x/v1/patients/12/?q=1"}}) == "12"
    assert run("link_id", None) is None
    assert run("link_id", {"links": {}}) is None
